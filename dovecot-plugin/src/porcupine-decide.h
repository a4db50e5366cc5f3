/* SPDX-License-Identifier: MIT */
/* porcupine-decide.h - the decisions of a mailbox sync, apart from Dovecot.
 *
 * A sync compares the cluster's listing of a folder with the local cache
 * (Dovecot's index) and changes the cache to match. What to change is
 * decided here, on plain C arrays, with no Dovecot header and no call into
 * Dovecot or the agent; porcupine-sync.c gathers the inputs from the
 * index, calls these functions and carries the decisions out. So every
 * rule can be tested on its own (tests: plugin.decide).
 *
 * The rules:
 *   - a UIDVALIDITY other than the cache's empties the cache, which takes
 *     the cluster's (pcp_decide_reset);
 *   - a cached message the listing has keeps its place and gets the
 *     cluster's flags and keywords where they differ;
 *   - a cached message the listing lacks is expunged, unless none of the
 *     nodes holding it (its replica set, kept in the index) is among those
 *     the listing covers: then it is out of reach, not gone, and stays;
 *   - a listed message the cache lacks is added, unless its UID is below
 *     the cache's next UID (the index has used that UID: it cannot take
 *     the message without renumbering it);
 *   - the messages to add are fetched in pipelined batches of at most a
 *     number of messages and about a number of bytes. */
#ifndef PORCUPINE_DECIDE_H
#define PORCUPINE_DECIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* As PORCUPINE_MAX_REPLICAS (porcupine_client.h); checked where both are
   seen (porcupine-plugin.h). */
#define PCP_DECIDE_MAX_REPLICAS 8

/* IMAP system flags with Dovecot's values (enum mail_flags; checked in
   porcupine-plugin.h). */
#define PCP_MAIL_ANSWERED 0x01u
#define PCP_MAIL_FLAGGED 0x02u
#define PCP_MAIL_DELETED 0x04u
#define PCP_MAIL_SEEN 0x08u
#define PCP_MAIL_DRAFT 0x10u
#define PCP_MAIL_FLAGS_NONRECENT 0x1fu

/* The cluster's flag bits (0 \Seen, 1 \Answered, 2 \Flagged, 3 \Deleted,
   4 \Draft) as IMAP system flags, and back. */
unsigned int pcp_flags_from_cluster(uint32_t f);
uint32_t pcp_flags_to_cluster(unsigned int m);

/* TRUE if `name` is in `list` (IMAP keywords compare without case, as
   Dovecot's index does). */
bool pcp_keyword_in(const char *name, const char *const *list, size_t n);
/* TRUE if both lists hold the same keywords (neither repeats one). */
bool pcp_keywords_equal(const char *const *a, size_t na,
			const char *const *b, size_t nb);

/* TRUE if the cache must be emptied and take the cluster's UIDVALIDITY
   (never for 0: the cluster has no such folder). */
bool pcp_decide_reset(uint32_t local_uidvalidity, uint32_t cluster_uidvalidity);

/* TRUE if a cached message with `local_flags` must take the cluster's
   `cluster_flags` (both compared without \Recent); *want_r is then what
   it gets. */
bool pcp_decide_flags(uint32_t cluster_flags, unsigned int local_flags,
		      unsigned int *want_r);

/* TRUE if a cached message the listing lacks may still exist in the
   cluster: no node holding it is among the `nreachable` nodes (sorted)
   the listing covers. A listing that does not say which nodes it covers
   (nreachable 0) and a message with no known holders (origin 0 or no
   replicas: cached before its reference was kept) make it gone. */
bool pcp_decide_out_of_reach(const uint32_t *reachable, size_t nreachable,
			     uint32_t origin, const uint32_t *replicas,
			     uint32_t nreplicas);

/* One cached message, in UID order (the index's sequence order). */
struct pcp_decide_local {
	uint32_t uid;
	/* FALSE: in the index, but not in the view the sync changes (saved or
	   expunged meanwhile by another process): skipped, and so is a listed
	   message of the same UID (the next sync decides). */
	bool present;
	/* Where the cluster keeps it (the index extension), or origin 0:
	   its identity (origin, seq) and holders. */
	uint32_t origin;
	uint64_t seq;
	uint32_t nreplicas;
	uint32_t replicas[PCP_DECIDE_MAX_REPLICAS];
};

enum pcp_decide_action {
	PCP_KEEP_SKIPPED = 0, /* not present: nothing to do */
	PCP_KEEP_LISTED,      /* in the listing: update flags, keywords, stamp */
	PCP_KEEP_OUT_OF_REACH,/* not listed, holders out of reach: stays */
	PCP_EXPUNGE           /* not listed, gone from the cluster */
};

/* The listing as the merge sees it. */
struct pcp_decide_listing {
	const uint32_t *uids; /* the listed messages' UIDs, ascending */
	size_t count;
	const uint32_t *reachable; /* the nodes it covers, sorted */
	size_t nreachable;
	/* The listed messages' identities (origin, seq), or NULL: a listed
	   message under a cached UID whose cached message has another
	   identity is not that message (the cached one is gone or moved; the
	   listed one is missing). */
	const uint32_t *origins;
	const uint64_t *seqs;
};

struct pcp_decide_result {
	/* Per cached message (same order as the input): what to do, and for
	   PCP_KEEP_LISTED the index of its listed message. */
	enum pcp_decide_action *action;
	size_t *listed;
	/* Indexes of the listed messages to add, ascending UID. */
	size_t *add;
	size_t nadd;
	/* Indexes of listed messages the cache lacks whose UID is below its
	   next UID: the cache cannot take them there (the cluster is asked to
	   move each to a new UID). */
	size_t *below_next_uid;
	size_t nbelow;
	/* How many cached messages stay because they are out of reach. */
	size_t nout_of_reach;
};

/* Merges the listing with the `nlocal` cached messages of a cache whose
   next UID is `next_uid`. The caller gives the arrays of `res`:
   action and listed of nlocal entries, add and below_next_uid of
   listing->count entries. */
void pcp_decide_merge(const struct pcp_decide_listing *listing,
		      const struct pcp_decide_local *local, size_t nlocal,
		      uint32_t next_uid, struct pcp_decide_result *res);

/* How many of the messages of `sizes` (n of them, in fetch order) go into
   the next fetch batch: at least one, at most max_count, and no more than
   max_bytes in all unless the first alone is larger. 0 only when n is 0. */
size_t pcp_decide_batch(const uint64_t *sizes, size_t n, size_t max_count,
			uint64_t max_bytes);

#endif
