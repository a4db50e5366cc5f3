/* SPDX-License-Identifier: MIT */
/* porcupine-decide.c - the decisions of a mailbox sync (porcupine-decide.h):
 * plain C, no Dovecot header, so they are tested on their own
 * (tests/porcupine-decide-test.c, ctest plugin.decide). */
#include "porcupine-decide.h"

#include <strings.h>

unsigned int pcp_flags_from_cluster(uint32_t f)
{
	unsigned int m = 0;

	if ((f & 1) != 0) m |= PCP_MAIL_SEEN;
	if ((f & 2) != 0) m |= PCP_MAIL_ANSWERED;
	if ((f & 4) != 0) m |= PCP_MAIL_FLAGGED;
	if ((f & 8) != 0) m |= PCP_MAIL_DELETED;
	if ((f & 16) != 0) m |= PCP_MAIL_DRAFT;
	return m;
}

uint32_t pcp_flags_to_cluster(unsigned int m)
{
	uint32_t f = 0;

	if ((m & PCP_MAIL_SEEN) != 0) f |= 1;
	if ((m & PCP_MAIL_ANSWERED) != 0) f |= 2;
	if ((m & PCP_MAIL_FLAGGED) != 0) f |= 4;
	if ((m & PCP_MAIL_DELETED) != 0) f |= 8;
	if ((m & PCP_MAIL_DRAFT) != 0) f |= 16;
	return f;
}

bool pcp_keyword_in(const char *name, const char *const *list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (strcasecmp(name, list[i]) == 0)
			return true;
	}
	return false;
}

bool pcp_keywords_equal(const char *const *a, size_t na,
			const char *const *b, size_t nb)
{
	size_t i;

	if (na != nb)
		return false;
	for (i = 0; i < na; i++) {
		if (!pcp_keyword_in(a[i], b, nb))
			return false;
	}
	return true;
}

bool pcp_decide_reset(uint32_t local_uidvalidity, uint32_t cluster_uidvalidity)
{
	/* 0: the cluster has no such folder (deleted meanwhile, or not yet
	   created): nothing to follow. */
	return cluster_uidvalidity != 0 && local_uidvalidity != cluster_uidvalidity;
}

bool pcp_decide_flags(uint32_t cluster_flags, unsigned int local_flags,
		      unsigned int *want_r)
{
	unsigned int want = pcp_flags_from_cluster(cluster_flags);

	*want_r = want;
	return want != (local_flags & PCP_MAIL_FLAGS_NONRECENT);
}

static bool pcp_node_in(const uint32_t *sorted, size_t n, uint32_t node)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (sorted[mid] == node)
			return true;
		if (sorted[mid] < node)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

bool pcp_decide_out_of_reach(const uint32_t *reachable, size_t nreachable,
			     uint32_t origin, const uint32_t *replicas,
			     uint32_t nreplicas)
{
	uint32_t i;

	if (nreachable == 0 || reachable == NULL)
		return false;
	if (origin == 0 || nreplicas == 0)
		return false;
	for (i = 0; i < nreplicas && i < PCP_DECIDE_MAX_REPLICAS; i++) {
		if (pcp_node_in(reachable, nreachable, replicas[i]))
			return false;
	}
	return true;
}

void pcp_decide_merge(const struct pcp_decide_listing *listing,
		      const struct pcp_decide_local *local, size_t nlocal,
		      uint32_t next_uid, struct pcp_decide_result *res)
{
	size_t ci = 0, li;

	res->nadd = 0;
	res->nbelow = 0;
	res->nout_of_reach = 0;
	/* Both in UID order: a listed message below the next cached one is
	   missing from the cache. */
#define PCP_MISSING(idx) do { \
		if (listing->uids[idx] < next_uid) \
			res->below_next_uid[res->nbelow++] = (idx); \
		else \
			res->add[res->nadd++] = (idx); \
	} while (0)
	for (li = 0; li < nlocal; li++) {
		const struct pcp_decide_local *l = &local[li];

		res->listed[li] = 0;
		for (; ci < listing->count && listing->uids[ci] < l->uid; ci++)
			PCP_MISSING(ci);
		if (!l->present) {
			/* In the index but not in this transaction's view (saved
			   or expunged by another process meanwhile): the next
			   sync decides; the listed message of its UID is not
			   missing either. */
			res->action[li] = PCP_KEEP_SKIPPED;
			if (ci < listing->count && listing->uids[ci] == l->uid)
				ci++;
		} else if (ci < listing->count && listing->uids[ci] == l->uid &&
			   listing->origins != NULL && l->origin != 0 &&
			   (listing->origins[ci] != l->origin || listing->seqs[ci] != l->seq)) {
			/* The UID now names another message: the cached one
			   is not listed (gone, or moved to a new UID), the
			   listed one is missing. */
			PCP_MISSING(ci);
			ci++;
			res->action[li] = pcp_decide_out_of_reach(listing->reachable,
				listing->nreachable, l->origin, l->replicas, l->nreplicas) ?
				PCP_KEEP_OUT_OF_REACH : PCP_EXPUNGE;
			if (res->action[li] == PCP_KEEP_OUT_OF_REACH)
				res->nout_of_reach++;
		} else if (ci < listing->count && listing->uids[ci] == l->uid) {
			res->action[li] = PCP_KEEP_LISTED;
			res->listed[li] = ci;
			ci++;
		} else if (pcp_decide_out_of_reach(listing->reachable,
						   listing->nreachable, l->origin,
						   l->replicas, l->nreplicas)) {
			res->action[li] = PCP_KEEP_OUT_OF_REACH;
			res->nout_of_reach++;
		} else {
			res->action[li] = PCP_EXPUNGE;
		}
	}
	for (; ci < listing->count; ci++)
		PCP_MISSING(ci);
#undef PCP_MISSING
}

size_t pcp_decide_batch(const uint64_t *sizes, size_t n, size_t max_count,
			uint64_t max_bytes)
{
	uint64_t bytes = 0;
	size_t k = 0;

	while (k < n && (k == 0 || (k < max_count && bytes + sizes[k] <= max_bytes))) {
		bytes += sizes[k];
		k++;
	}
	return k;
}
