/* SPDX-License-Identifier: MIT */
/* porcupine_client.h - the C ABI of the client of porcupine-agent's local
 * API, for C callers (the Dovecot plugin, the milter).
 *
 * Every call is blocking with the deadline given to porcupine_open, and
 * returns a porcupine_code; on anything but PORCUPINE_OK,
 * porcupine_error() says why in one line. No C++ exception crosses this
 * interface. A client is one connection: use it from one thread at a time.
 * Memory handed out (bodies, folder listings) is freed with the matching
 * porcupine_*_free function. */
#ifndef PORCUPINE_CLIENT_H
#define PORCUPINE_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

enum porcupine_code {
  PORCUPINE_OK = 0,
  PORCUPINE_TEMPFAIL = 1,      /* the cluster could not answer in time: a 4xx */
  PORCUPINE_NO_SUCH_USER = 2,
  PORCUPINE_EXISTS = 3,
  PORCUPINE_BAD_REQUEST = 4,
  PORCUPINE_OVER_QUOTA = 5,
  PORCUPINE_AUTH_FAILED = 6,
  PORCUPINE_NOT_FOUND = 7,     /* the message was expunged */
  PORCUPINE_INTERNAL = 8,
  PORCUPINE_TOO_LARGE = 9,     /* a delivery over the agent's size limit: 552 5.3.4 */
  PORCUPINE_FORBIDDEN = 10,    /* this process may not do that (user administration) */
  PORCUPINE_UNREACHABLE = 100  /* no agent on the socket, or it did not answer */
};

#define PORCUPINE_MAX_REPLICAS 8

typedef struct porcupine_client porcupine_client;

struct porcupine_user {
  char user[256];
  uint64_t quota_bytes; /* 0: no quota */
  uint64_t used_bytes;  /* bytes of live mail; gathered only when quota_bytes > 0 */
  int enabled;
};

/* Names one message: what a listing returns and fetch/flags/expunge take. */
struct porcupine_msgref {
  uint32_t origin;
  uint64_t seq;
  uint32_t nreplicas;
  uint32_t replicas[PORCUPINE_MAX_REPLICAS];
};

struct porcupine_message {
  struct porcupine_msgref ref;
  uint32_t uid;
  uint32_t flags; /* bit 0 \Seen, 1 \Answered, 2 \Flagged, 3 \Deleted, 4 \Draft */
  uint64_t size;
  int64_t internal_date_ms;
  size_t nkeywords;
  char** keywords; /* IMAP keywords, sorted; freed by porcupine_folder_free */
  /* The size with CRLF line ends (every bare LF counts 2: IMAP's
     RFC822.SIZE) and the header's bytes up to and including the blank
     line; 0 when the cluster does not know them (a message stored before
     they were counted): read the body then. */
  uint64_t vsize;
  uint32_t hdr_size;
  /* The meta its delivery carried (porcupine_deliver_options.meta), given
     only by porcupine_folder_list_meta for UIDs from its meta_from_uid on;
     NULL otherwise. Freed by porcupine_folder_free. */
  char* meta;
  size_t meta_len;
};

struct porcupine_folder {
  uint32_t uidvalidity;
  uint32_t next_uid;
  size_t count;
  struct porcupine_message* messages; /* sorted by UID */
  /* The live nodes whose messages the listing includes, sorted. A message
   * missing from `messages` none of whose replicas is here is out of reach
   * (its nodes are down or did not answer), not necessarily gone. */
  size_t nreachable;
  uint32_t* reachable;
  /* A digest of everything the listing shows: equal digests, no change. */
  uint64_t digest;
};

/* 1 if the listing covers a node holding `ref` (so a message missing from
 * it is gone from the folder), 0 if every replica is out of reach. */
int porcupine_folder_covers(const struct porcupine_folder* f, const struct porcupine_msgref* ref);

struct porcupine_delivered {
  struct porcupine_msgref ref;
  uint32_t uid;
  uint32_t uidvalidity;
};

/* Reads up to len bytes of the message into buf; returns the count, 0 at
 * the end, or -1 on an error (the delivery is then abandoned). */
typedef ssize_t (*porcupine_read_fn)(void* context, char* buf, size_t len);

porcupine_client* porcupine_open(const char* socket_path, int timeout_ms);
void porcupine_close(porcupine_client* c);
const char* porcupine_error(const porcupine_client* c);

int porcupine_user_lookup(porcupine_client* c, const char* user, struct porcupine_user* out);

/* The largest delivery the agent takes, in bytes (message_size_limit and
 * its margin for trace headers); a larger one gets PORCUPINE_TOO_LARGE.
 * 0 from an agent too old to say. */
int porcupine_deliver_size_limit(porcupine_client* c, uint64_t* limit_r);
int porcupine_user_auth(porcupine_client* c, const char* user, const char* password);

int porcupine_deliver(porcupine_client* c, const char* user, const char* folder,
                      porcupine_read_fn read, void* context, struct porcupine_delivered* out);

/* What a delivery may carry besides its body (IMAP APPEND's, or COPY's
 * source's): internal_date_ms 0 is the time of delivery. */
struct porcupine_deliver_options {
  int64_t internal_date_ms;
  uint32_t flags;
  const char* const* keywords;
  size_t nkeywords;
  /* Opaque bytes kept with the message and given back in listings (the
     plugin's IMAP BODYSTRUCTURE); NULL or 0: none. Over
     PORCUPINE_MAX_META bytes they are not kept. */
  const void* meta;
  size_t meta_len;
};
#define PORCUPINE_MAX_META 8192
/* porcupine_deliver with options (NULL: none). PORCUPINE_BAD_REQUEST for
 * more than 64 keywords, one that is not an IMAP atom, or a date before
 * 1970; nothing is delivered then. */
int porcupine_deliver_with(porcupine_client* c, const char* user, const char* folder,
                           const struct porcupine_deliver_options* options, porcupine_read_fn read,
                           void* context, struct porcupine_delivered* out);

/* porcupine_deliver_with for a delivery that may be a retry (an MTA's):
 * `key` (key_len bytes, 1 to 64) names it, the same on every retry of it
 * (the plugin: a digest of the message as the MTA sent it). A retry within
 * the cluster's delivery_key_ttl is answered with the message the first
 * delivery stored, not stored again. PORCUPINE_BAD_REQUEST for a key of 0
 * or more than 64 bytes. */
int porcupine_deliver_keyed(porcupine_client* c, const char* user, const char* folder,
                            const struct porcupine_deliver_options* options, const void* key,
                            size_t key_len, porcupine_read_fn read, void* context,
                            struct porcupine_delivered* out);

int porcupine_folder_list(porcupine_client* c, const char* user, const char* folder,
                          struct porcupine_folder* out);
void porcupine_folder_free(struct porcupine_folder* f);
/* porcupine_folder_list whose messages from UID meta_from_uid on (0: none)
 * carry their meta: a reader passes the first UID it has not indexed. */
int porcupine_folder_list_meta(porcupine_client* c, const char* user, const char* folder,
                               uint32_t meta_from_uid, struct porcupine_folder* out);

/* Only the digest porcupine_folder_list would give (porcupine_folder.digest),
 * without the messages: a cheap "has anything changed?". */
int porcupine_folder_digest(porcupine_client* c, const char* user, const char* folder, uint64_t* digest);

int porcupine_fetch(porcupine_client* c, const char* user, const char* folder,
                    const struct porcupine_msgref* ref, char** body, size_t* len);
void porcupine_body_free(char* body);

/* One message of a porcupine_fetch_many batch. */
struct porcupine_fetched {
  struct porcupine_msgref ref; /* in */
  char* body;                  /* out, on PORCUPINE_OK: free with porcupine_body_free */
  size_t len;
  int result;                  /* out: this fetch's porcupine_code */
};

/* Fetches many messages of one folder at once (pipelined; the timeout is
 * the longest wait for the next answer, not for the batch). Returns
 * PORCUPINE_OK when every fetch got an answer (each in its `result`),
 * otherwise the failure that stopped the batch; fetches it left without an
 * answer have that code as their result. */
int porcupine_fetch_many(porcupine_client* c, const char* user, const char* folder,
                         struct porcupine_fetched* items, size_t n);

/* What a descriptor of porcupine_opened holds. */
enum porcupine_part {
  PORCUPINE_PART_WHOLE = 0,     /* the whole message */
  PORCUPINE_PART_HEADER = 1,    /* its header, up to and including the blank line */
  PORCUPINE_PART_HEADER_CUT = 2 /* its first 256 KiB, which have no blank line: the header is longer */
};

/* One message of a porcupine_open_many or porcupine_open_headers batch. */
struct porcupine_opened {
  struct porcupine_msgref ref; /* in */
  uint64_t size_hint;          /* in: the size expected (a listing's), 0 if unknown */
  int result;                  /* out: this open's porcupine_code */
  uint64_t size;               /* out, on PORCUPINE_OK: the bytes of what fd holds */
  int fd;                      /* out: the body, read-only, at offset 0 (the caller closes it), or -1 */
  int part;                    /* out, on PORCUPINE_OK: an enum porcupine_part, what fd holds */
};

/* Opens the bodies of many messages of one folder of `user` at once: each
 * comes as a file descriptor (close-on-exec) of the node's own copy or of
 * a copy it fetched from a holder, so a large body is never in memory. The
 * wait is the client's timeout and the time the sizes hinted take to cross
 * at the default transfer rate. Returns PORCUPINE_OK when every open got
 * an answer (each in its `result`; PORCUPINE_NOT_FOUND for a message that
 * is gone or not the user's, PORCUPINE_TEMPFAIL when no holder gave it),
 * otherwise the failure that stopped the batch; opens it left without an
 * answer have that code as their result. */
int porcupine_open_many(porcupine_client* c, const char* user, const char* folder,
                        struct porcupine_opened* items, size_t n);

/* As porcupine_open_many, for readers of headers (IMAP ENVELOPE, header
 * fields, header SEARCH): a message the node has (its own copy, its cache)
 * still comes whole (part PORCUPINE_PART_WHOLE); one it would fetch comes
 * as its header only (PORCUPINE_PART_HEADER, an anonymous file, not kept
 * in the node cache), or whole from an older holder. */
int porcupine_open_headers(porcupine_client* c, const char* user, const char* folder,
                           struct porcupine_opened* items, size_t n);

/* Sets the message's whole flag state: the system flags and (the _keywords
 * form) its IMAP keywords; porcupine_set_flags leaves it with none. Last
 * writer wins for the state as a whole. PORCUPINE_BAD_REQUEST for more
 * than 64 keywords or one that is not an IMAP atom. */
int porcupine_set_flags(porcupine_client* c, const char* user, const char* folder,
                        const struct porcupine_msgref* ref, uint32_t flags);
int porcupine_set_flags_keywords(porcupine_client* c, const char* user, const char* folder,
                                 const struct porcupine_msgref* ref, uint32_t flags,
                                 const char* const* keywords, size_t nkeywords);
/* One message's whole new flag state, for porcupine_set_flags_many. */
struct porcupine_flag_change {
  struct porcupine_msgref ref;
  uint32_t flags;
  const char* const* keywords;
  size_t nkeywords;
  int result; /* out: this change's porcupine_code */
};

/* Sets the flag state of many messages of one folder at once: the requests
 * are pipelined, so the batch costs about one round trip. Returns
 * PORCUPINE_OK when every change got an answer (each in its `result`),
 * otherwise the failure that stopped the batch; changes it left without
 * an answer have that code as their result. */
int porcupine_set_flags_many(porcupine_client* c, const char* user, const char* folder,
                             struct porcupine_flag_change* changes, size_t n);

/* One message's flag change for porcupine_change_flags_many: the flags and
 * keywords to set and to clear; every other flag stays as it is in the
 * cluster (set wins over clear for one flag in one change). */
struct porcupine_flag_delta {
  struct porcupine_msgref ref;
  uint32_t add_flags;
  uint32_t remove_flags;
  const char* const* add_keywords;
  size_t nadd_keywords;
  const char* const* remove_keywords;
  size_t nremove_keywords;
  int result; /* out: this change's porcupine_code */
};

/* Changes some flags of many messages of one folder at once (pipelined, as
 * porcupine_set_flags_many). Changes of different flags by different
 * sessions, on any nodes, all survive; for one flag the last writer wins.
 * Returns as porcupine_set_flags_many. */
int porcupine_change_flags_many(porcupine_client* c, const char* user, const char* folder,
                                struct porcupine_flag_delta* deltas, size_t n);

int porcupine_expunge(porcupine_client* c, const char* user, const char* folder,
                      const struct porcupine_msgref* ref);

/* The reader found the message under `uid` of `uidvalidity`, at or below
 * `above`, the highest UID it has already shown, so it cannot show it
 * there: the cluster moves it to a new UID at the end of the folder (only
 * if it is still there under that UID). PORCUPINE_OK once that is
 * scheduled; the next listing shows it under its new UID. */
int porcupine_renumber(porcupine_client* c, const char* user, const char* folder,
                       const struct porcupine_msgref* ref, uint32_t uidvalidity, uint32_t uid,
                       uint32_t above);

/* Into `to_folder` of the same user, in the cluster: the body stays where
 * it is; the message gets a UID in `to_folder` first, which `out` (if not
 * NULL) receives with that folder's UIDVALIDITY and the message's
 * reference; it is in `to_folder`'s listings once this returns OK. */
int porcupine_move(porcupine_client* c, const char* user, const char* folder,
                   const struct porcupine_msgref* ref, const char* to_folder);
int porcupine_move_uid(porcupine_client* c, const char* user, const char* folder,
                       const struct porcupine_msgref* ref, const char* to_folder,
                       struct porcupine_delivered* out);

/* The user's folders: INBOX first, then by name. Free with
 * porcupine_folders_free. */
int porcupine_folders_get(porcupine_client* c, const char* user, char*** names_r, size_t* count_r);
void porcupine_folders_free(char** names, size_t count);
/* The same, and the user's subscribed names (by name; free with
 * porcupine_folders_free) if subscribed_r is not NULL. *recorded_r (if
 * not NULL) is 0 when the user never subscribed or unsubscribed anything
 * in the cluster (then there is no subscription list to follow). */
int porcupine_folders_get_subscribed(porcupine_client* c, const char* user, char*** names_r, size_t* count_r,
                                     char*** subscribed_r, size_t* subscribed_count_r, int* recorded_r);
/* IMAP SUBSCRIBE (on != 0) or UNSUBSCRIBE of `folder`, kept in the
 * user's profile; there need be no folder of that name. */
int porcupine_folder_subscribe(porcupine_client* c, const char* user, const char* folder, int on);
/* PORCUPINE_EXISTS: it is there already. */
int porcupine_folder_create(porcupine_client* c, const char* user, const char* folder);
/* Expunges the folder's messages, then removes it (not INBOX). */
int porcupine_folder_delete(porcupine_client* c, const char* user, const char* folder);
/* Moves every message of `from` into `to` and removes `from` (INBOX
 * stays, emptied). */
int porcupine_folder_rename(porcupine_client* c, const char* user, const char* from, const char* to);

#ifdef __cplusplus
}
#endif

#endif /* PORCUPINE_CLIENT_H */
