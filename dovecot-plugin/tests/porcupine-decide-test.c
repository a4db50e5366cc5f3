/* SPDX-License-Identifier: MIT */
/* porcupine-decide-test.c - unit test of the sync's decisions
 * (src/porcupine-decide.c), ctest plugin.decide. Plain C: each check
 * prints what failed; the last line is "N passed, N failed" and the exit
 * status is 1 when any failed. */
#include "porcupine-decide.h"

#include <stdio.h>
#include <string.h>

static unsigned int passed, failed;

#define CHECK(cond) do { \
		if (cond) { \
			passed++; \
		} else { \
			failed++; \
			printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
		} \
	} while (0)
#define CHECK_EQ(a, b) do { \
		unsigned long long a_ = (unsigned long long)(a); \
		unsigned long long b_ = (unsigned long long)(b); \
		if (a_ == b_) { \
			passed++; \
		} else { \
			failed++; \
			printf("FAIL %s:%d: %s == %s (%llu != %llu)\n", __FILE__, \
			       __LINE__, #a, #b, a_, b_); \
		} \
	} while (0)

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* A merge with room for up to 32 cached and 32 listed messages. */
struct merge {
	enum pcp_decide_action action[32];
	size_t listed[32];
	size_t add[32];
	size_t below[32];
	struct pcp_decide_result res;
};

static void merge_run(struct merge *m, const struct pcp_decide_listing *listing,
		      const struct pcp_decide_local *local, size_t nlocal,
		      uint32_t next_uid)
{
	memset(m, 0xa5, sizeof(*m)); /* no leftovers pass for results */
	m->res.action = m->action;
	m->res.listed = m->listed;
	m->res.add = m->add;
	m->res.below_next_uid = m->below;
	pcp_decide_merge(listing, local, nlocal, next_uid, &m->res);
}

static struct pcp_decide_local cached(uint32_t uid, uint32_t origin,
				      uint32_t r1, uint32_t r2)
{
	struct pcp_decide_local l;

	memset(&l, 0, sizeof(l));
	l.uid = uid;
	l.present = true;
	l.origin = origin;
	if (r1 != 0)
		l.replicas[l.nreplicas++] = r1;
	if (r2 != 0)
		l.replicas[l.nreplicas++] = r2;
	return l;
}

static void test_flags(void)
{
	unsigned int want = 0;

	/* Cluster bits 0 \Seen, 1 \Answered, 2 \Flagged, 3 \Deleted, 4 \Draft. */
	CHECK_EQ(pcp_flags_from_cluster(0), 0);
	CHECK_EQ(pcp_flags_from_cluster(1), PCP_MAIL_SEEN);
	CHECK_EQ(pcp_flags_from_cluster(2), PCP_MAIL_ANSWERED);
	CHECK_EQ(pcp_flags_from_cluster(4), PCP_MAIL_FLAGGED);
	CHECK_EQ(pcp_flags_from_cluster(8), PCP_MAIL_DELETED);
	CHECK_EQ(pcp_flags_from_cluster(16), PCP_MAIL_DRAFT);
	CHECK_EQ(pcp_flags_from_cluster(1 | 4), PCP_MAIL_SEEN | PCP_MAIL_FLAGGED);
	/* Bits the cluster does not define are dropped. */
	CHECK_EQ(pcp_flags_from_cluster(0xffffffe0u), 0);
	CHECK_EQ(pcp_flags_to_cluster(PCP_MAIL_SEEN | PCP_MAIL_DRAFT), 1 | 16);
	CHECK_EQ(pcp_flags_to_cluster(0x20 /* \Recent */), 0);
	for (uint32_t f = 0; f < 32; f++)
		CHECK_EQ(pcp_flags_to_cluster(pcp_flags_from_cluster(f)), f);

	/* Same flags: nothing to change; \Recent is not compared. */
	CHECK(!pcp_decide_flags(1, PCP_MAIL_SEEN, &want));
	CHECK(!pcp_decide_flags(1, PCP_MAIL_SEEN | 0x20, &want));
	CHECK_EQ(want, PCP_MAIL_SEEN);
	/* Different: the cluster's replace the local ones. */
	CHECK(pcp_decide_flags(1 | 4, PCP_MAIL_SEEN, &want));
	CHECK_EQ(want, PCP_MAIL_SEEN | PCP_MAIL_FLAGGED);
	CHECK(pcp_decide_flags(0, PCP_MAIL_DELETED, &want));
	CHECK_EQ(want, 0);
}

static void test_keywords(void)
{
	const char *a[] = { "$Label1", "Junk" };
	const char *b[] = { "junk", "$label1" };
	const char *c[] = { "$Label1" };
	const char *d[] = { "$Label1", "NonJunk" };

	CHECK(pcp_keyword_in("JUNK", a, 2));
	CHECK(!pcp_keyword_in("Junk", a, 1));
	CHECK(!pcp_keyword_in("Junk", NULL, 0));
	/* Without case and order, as Dovecot's index compares them. */
	CHECK(pcp_keywords_equal(a, 2, b, 2));
	CHECK(pcp_keywords_equal(NULL, 0, NULL, 0));
	CHECK(!pcp_keywords_equal(a, 2, c, 1));
	CHECK(!pcp_keywords_equal(c, 1, a, 2));
	CHECK(!pcp_keywords_equal(a, 2, d, 2));
	CHECK(!pcp_keywords_equal(c, 1, NULL, 0));
}

static void test_reset(void)
{
	CHECK(!pcp_decide_reset(1700000000, 1700000000));
	CHECK(pcp_decide_reset(1700000000, 1700000001));
	/* A new mailbox's index (UIDVALIDITY 0) takes the cluster's. */
	CHECK(pcp_decide_reset(0, 1700000000));
	/* A folder the cluster does not have (deleted on another node): the
	   cache is left alone, not given UIDVALIDITY 0. */
	CHECK(!pcp_decide_reset(1700000000, 0));
	CHECK(!pcp_decide_reset(0, 0));
}

static void test_out_of_reach(void)
{
	const uint32_t reachable[] = { 1, 3, 5 };
	const uint32_t r24[] = { 2, 4 };
	const uint32_t r43[] = { 4, 3 };
	const uint32_t r6[] = { 6 };
	uint32_t nine[PCP_DECIDE_MAX_REPLICAS + 1] = { 2, 2, 2, 2, 2, 2, 2, 2, 5 };

	/* No holder among the covered nodes: out of reach. */
	CHECK(pcp_decide_out_of_reach(reachable, 3, 2, r24, 2));
	CHECK(pcp_decide_out_of_reach(reachable, 3, 6, r6, 1));
	/* One holder covered (any position): gone. */
	CHECK(!pcp_decide_out_of_reach(reachable, 3, 4, r43, 2));
	/* A listing that does not say what it covers: gone. */
	CHECK(!pcp_decide_out_of_reach(reachable, 0, 2, r24, 2));
	CHECK(!pcp_decide_out_of_reach(NULL, 0, 2, r24, 2));
	/* No known holders (unstamped): gone. */
	CHECK(!pcp_decide_out_of_reach(reachable, 3, 0, r24, 2));
	CHECK(!pcp_decide_out_of_reach(reachable, 3, 2, r24, 0));
	/* Only the first PCP_DECIDE_MAX_REPLICAS replicas count. */
	CHECK(pcp_decide_out_of_reach(reachable, 3, 2, nine, N_ELEMS(nine)));
	nine[PCP_DECIDE_MAX_REPLICAS - 1] = 5;
	CHECK(!pcp_decide_out_of_reach(reachable, 3, 2, nine, N_ELEMS(nine)));
}

/* Cache and listing equal: every cached message kept against its own
   listed one, nothing added or expunged. */
static void test_merge_equal(void)
{
	const uint32_t uids[] = { 1, 2, 5 };
	const uint32_t reachable[] = { 1, 2 };
	struct pcp_decide_listing listing = { uids, 3, reachable, 2, NULL, NULL };
	struct pcp_decide_local local[3];
	struct merge m;

	local[0] = cached(1, 1, 1, 2);
	local[1] = cached(2, 1, 1, 2);
	local[2] = cached(5, 2, 2, 1);
	merge_run(&m, &listing, local, 3, 6);
	for (size_t i = 0; i < 3; i++) {
		CHECK_EQ(m.action[i], PCP_KEEP_LISTED);
		CHECK_EQ(m.listed[i], i);
	}
	CHECK_EQ(m.res.nadd, 0);
	CHECK_EQ(m.res.nbelow, 0);
	CHECK_EQ(m.res.nout_of_reach, 0);
}

/* An empty cache gets every listed message, in order. */
static void test_merge_empty_cache(void)
{
	const uint32_t uids[] = { 3, 4, 9 };
	struct pcp_decide_listing listing = { uids, 3, NULL, 0, NULL, NULL };
	struct merge m;

	merge_run(&m, &listing, NULL, 0, 1);
	CHECK_EQ(m.res.nadd, 3);
	CHECK_EQ(m.add[0], 0);
	CHECK_EQ(m.add[1], 1);
	CHECK_EQ(m.add[2], 2);
	CHECK_EQ(m.res.nbelow, 0);
}

/* Listed messages missing before, between and after the cached ones are
   added; cached ones the listing lacks are expunged when a holder is
   covered, kept when none is. */
static void test_merge_mixed(void)
{
	const uint32_t uids[] = { 1, 3, 4, 7, 8 };
	const uint32_t reachable[] = { 1, 2 };
	struct pcp_decide_listing listing = { uids, 5, reachable, 2, NULL, NULL };
	struct pcp_decide_local local[4];
	struct merge m;

	local[0] = cached(2, 1, 1, 3);   /* holder 1 covered: gone */
	local[1] = cached(3, 1, 1, 2);   /* listed */
	local[2] = cached(5, 3, 3, 4);   /* holders 3, 4 out of reach */
	local[3] = cached(6, 0, 0, 0);   /* unstamped: gone */
	merge_run(&m, &listing, local, 4, 7);
	CHECK_EQ(m.action[0], PCP_EXPUNGE);
	CHECK_EQ(m.action[1], PCP_KEEP_LISTED);
	CHECK_EQ(m.listed[1], 1);
	CHECK_EQ(m.action[2], PCP_KEEP_OUT_OF_REACH);
	CHECK_EQ(m.action[3], PCP_EXPUNGE);
	CHECK_EQ(m.res.nout_of_reach, 1);
	/* UIDs 1 and 4 are missing but below the next UID 7: not cached,
	   warned about; 7 and 8 are added. */
	CHECK_EQ(m.res.nbelow, 2);
	CHECK_EQ(uids[m.below[0]], 1);
	CHECK_EQ(uids[m.below[1]], 4);
	CHECK_EQ(m.res.nadd, 2);
	CHECK_EQ(uids[m.add[0]], 7);
	CHECK_EQ(uids[m.add[1]], 8);
}

/* A listing without its covered nodes (an agent that does not say)
   makes every cached message it lacks gone. */
static void test_merge_no_reachable(void)
{
	const uint32_t uids[] = { 10 };
	struct pcp_decide_listing listing = { uids, 1, NULL, 0, NULL, NULL };
	struct pcp_decide_local local[2];
	struct merge m;

	local[0] = cached(4, 3, 3, 4);
	local[1] = cached(10, 1, 1, 2);
	merge_run(&m, &listing, local, 2, 11);
	CHECK_EQ(m.action[0], PCP_EXPUNGE);
	CHECK_EQ(m.action[1], PCP_KEEP_LISTED);
	CHECK_EQ(m.res.nadd, 0);
	CHECK_EQ(m.res.nout_of_reach, 0);
}

/* A message in the index that the sync's view cannot see (another process
   saved or expunged it meanwhile) is skipped, and so is the listed message
   of its UID: it is not missing (asking the cluster to move it would move
   a message that is cached), the next sync decides. */
static void test_merge_expunged_meanwhile(void)
{
	const uint32_t uids[] = { 1, 2, 3 };
	const uint32_t reachable[] = { 1 };
	struct pcp_decide_listing listing = { uids, 3, reachable, 1, NULL, NULL };
	struct pcp_decide_local local[3];
	struct merge m;

	local[0] = cached(1, 1, 1, 0);
	local[1] = cached(2, 1, 1, 0);
	local[1].present = false;
	local[2] = cached(3, 1, 1, 0);
	merge_run(&m, &listing, local, 3, 4);
	CHECK_EQ(m.action[0], PCP_KEEP_LISTED);
	CHECK_EQ(m.action[1], PCP_KEEP_SKIPPED);
	CHECK_EQ(m.action[2], PCP_KEEP_LISTED);
	CHECK_EQ(m.listed[2], 2);
	CHECK_EQ(m.res.nadd, 0);
	CHECK_EQ(m.res.nbelow, 0);
}

/* The cluster emptied the folder: every cached message is expunged (all
   holders covered) and nothing is added. */
static void test_merge_empty_listing(void)
{
	const uint32_t reachable[] = { 1, 2, 3 };
	struct pcp_decide_listing listing = { NULL, 0, reachable, 3, NULL, NULL };
	struct pcp_decide_local local[2];
	struct merge m;

	local[0] = cached(1, 1, 1, 2);
	local[1] = cached(2, 2, 2, 3);
	merge_run(&m, &listing, local, 2, 3);
	CHECK_EQ(m.action[0], PCP_EXPUNGE);
	CHECK_EQ(m.action[1], PCP_EXPUNGE);
	CHECK_EQ(m.res.nadd, 0);
	CHECK_EQ(m.res.nbelow, 0);
}

/* A UID that now names another message (the cluster moved the cached
   one to a new UID, or another group handed the UID out again): the cached
   message is not kept under it, and the listed one is missing, below the
   next UID (the cluster is asked to move it). */
static void test_merge_uid_names_another_message(void)
{
	const uint32_t uids[] = { 1, 2, 9 };
	const uint32_t origins[] = { 1, 4, 2 };
	const uint64_t seqs[] = { 10, 70, 11 };
	const uint32_t reachable[] = { 1, 2 };
	struct pcp_decide_listing listing = { uids, 3, reachable, 2, origins, seqs };
	struct pcp_decide_local local[2];
	struct merge m;

	local[0] = cached(1, 1, 1, 2);
	local[0].seq = 10;
	local[1] = cached(2, 2, 1, 2);  /* was 2:11, now listed under UID 9 */
	local[1].seq = 11;
	merge_run(&m, &listing, local, 2, 3);
	CHECK_EQ(m.action[0], PCP_KEEP_LISTED);
	CHECK_EQ(m.action[1], PCP_EXPUNGE);
	CHECK_EQ(m.res.nbelow, 1);
	CHECK_EQ(uids[m.below[0]], 2);
	CHECK_EQ(m.res.nadd, 1);
	CHECK_EQ(uids[m.add[0]], 9);
	/* Without identities (an older caller), the UID alone decides. */
	listing.origins = NULL;
	listing.seqs = NULL;
	merge_run(&m, &listing, local, 2, 3);
	CHECK_EQ(m.action[1], PCP_KEEP_LISTED);
	CHECK_EQ(m.res.nbelow, 0);
}

static void test_batch(void)
{
	uint64_t small[40], big[3] = { 20, 5, 5 }, mixed[4] = { 3, 3, 3, 3 };

	for (size_t i = 0; i < N_ELEMS(small); i++)
		small[i] = 100;
	CHECK_EQ(pcp_decide_batch(small, 0, 16, 1000000), 0);
	/* At most max_count messages... */
	CHECK_EQ(pcp_decide_batch(small, 40, 16, 1000000), 16);
	CHECK_EQ(pcp_decide_batch(small, 5, 16, 1000000), 5);
	/* ...and max_bytes in all: 10 of 100 bytes fit 1000. */
	CHECK_EQ(pcp_decide_batch(small, 40, 16, 1000), 10);
	CHECK_EQ(pcp_decide_batch(small, 40, 16, 999), 9);
	/* A first message larger than max_bytes goes alone. */
	CHECK_EQ(pcp_decide_batch(big, 3, 16, 10), 1);
	CHECK_EQ(pcp_decide_batch(big + 1, 2, 16, 10), 2);
	CHECK_EQ(pcp_decide_batch(mixed, 4, 16, 10), 3);
	/* Never fewer than one while any is left. */
	CHECK_EQ(pcp_decide_batch(mixed, 4, 0, 10), 1);
}

int main(void)
{
	test_flags();
	test_keywords();
	test_reset();
	test_out_of_reach();
	test_merge_equal();
	test_merge_empty_cache();
	test_merge_mixed();
	test_merge_no_reachable();
	test_merge_expunged_meanwhile();
	test_merge_empty_listing();
	test_merge_uid_names_another_message();
	test_batch();
	printf("%u passed, %u failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
