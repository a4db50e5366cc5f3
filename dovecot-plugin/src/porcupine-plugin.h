/* SPDX-License-Identifier: MIT */
/* porcupine-plugin.h - the private header shared by the parts of the
 * Dovecot mail plugin `porcupine` (not installed; nothing outside
 * dovecot-plugin/src includes it): module contexts, the per-user,
 * per-mailbox and per-mail state, and what each part gives the others.
 *
 * The plugin makes Dovecot's own storage (sdbox) an index of the cluster,
 * which is the authority for which messages exist, their UIDs, UIDVALIDITY
 * and flags (system flags and IMAP keywords): the local index holds a
 * record per message and what Dovecot caches about it (header fields,
 * sizes, BODYSTRUCTURE), never a body; bodies come from the node's agent
 * when they are read (its own copy, its bounded cache, or a holder). The
 * parts:
 *
 *   porcupine-plugin.c    module init/deinit and the storage hooks
 *   porcupine-settings.c  the settings, checked at login; read by
 *                         porcupine-dovecot23.c (plugin { }) or
 *                         porcupine-dovecot24.c (typed settings,
 *                         porcupine-settings24.c, whose settings module
 *                         porcupine-settings-module.c makes them known
 *                         to Dovecot 2.4's config process)
 *   porcupine-storage.c   the mail user (agent connection), mailbox
 *                         allocation (its vfuncs), and what the parts
 *                         share: cluster references and sizes in the
 *                         index, keyword lists
 *   porcupine-sync.c      mailbox sync: the cluster's listing onto the
 *                         local index (under a lock), STATUS, IDLE's poll
 *   porcupine-decide.c    the sync's decisions, apart from Dovecot
 *   porcupine-save.c      saves, COPY and MOVE: into the cluster
 *   porcupine-meta.c      the IMAP BODYSTRUCTURE kept with a message in
 *                         the cluster, made at save, cached at sync
 *   porcupine-mail.c      the mail vfuncs: flags, keywords and expunges
 *                         to the cluster first; content and sizes
 *   porcupine-list.c      the folder list: create/delete/rename to the
 *                         cluster first; the local list follows the
 *                         cluster's at login and LIST
 *
 * It runs in Dovecot's single-threaded mail processes (lmtp, imap, pop3,
 * doveadm). One agent connection per mail user, opened at its first use;
 * the client reconnects by itself after an error. */
#ifndef PORCUPINE_PLUGIN_H
#define PORCUPINE_PLUGIN_H

#include "lib.h"
#include "array.h"
#include "buffer.h"
#include "istream.h"
#include "seq-range-array.h"
#include "module-context.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mail-index.h"
#include "index-storage.h"
#include "index-mail.h"
#include "mail-namespace.h"
#include "mailbox-list-private.h"
#include "file-lock.h"
#include "str-sanitize.h"

#include "porcupine_client.h"
#include "porcupine-decide.h"
#include "porcupine-settings.h"

#define PCP_USER(obj) MODULE_CONTEXT(obj, pcp_user_module)
#define PCP_BOX(obj) MODULE_CONTEXT(obj, pcp_storage_module)
#define PCP_MAIL(obj) MODULE_CONTEXT(obj, pcp_mail_module)
#define PCP_LIST(obj) MODULE_CONTEXT(obj, pcp_list_module)

/* The cluster keeps at most this many keywords per message
   (porcupine_client.h: more is PORCUPINE_BAD_REQUEST). */
#define PCP_MAX_KEYWORDS 64

/* Reading bodies in order opens this many ahead at a time, and about this
   many bytes of them (porcupine-read.c). */
#define PCP_FETCH_BATCH 64
#define PCP_FETCH_BATCH_BYTES (8 * 1024 * 1024)
/* Reading headers in order (ENVELOPE, header fields) opens this many
   ahead at a time: header parts are small. */
#define PCP_HEADER_BATCH 64
/* LIST follows the cluster's folder list at most this often. */
#define PCP_FOLLOW_INTERVAL_MS 1000
/* A sync waits at most this long for another process's sync of the same
   mailbox (less if mail_max_lock_timeout is lower). */
#define PCP_SYNC_LOCK_TIMEOUT_SECS 120
#define PCP_SYNC_LOCK_FNAME "dovecot-porcupine.lock"

#define PCP_UNAVAILABLE_REASON \
	"Message is on cluster nodes that cannot be reached now; try again later"

/* porcupine-decide.h speaks Dovecot's flag values and replica count
   without its headers. */
_Static_assert(PCP_MAIL_ANSWERED == MAIL_ANSWERED && PCP_MAIL_FLAGGED == MAIL_FLAGGED &&
	       PCP_MAIL_DELETED == MAIL_DELETED && PCP_MAIL_SEEN == MAIL_SEEN &&
	       PCP_MAIL_DRAFT == MAIL_DRAFT &&
	       PCP_MAIL_FLAGS_NONRECENT == MAIL_FLAGS_NONRECENT,
	       "porcupine-decide.h's flags are Dovecot's");
_Static_assert(PCP_DECIDE_MAX_REPLICAS == PORCUPINE_MAX_REPLICAS,
	       "porcupine-decide.h's replica count is the client's");

struct pcp_user {
	union mail_user_module_context module_ctx;
	struct pcp_settings set;
	/* The user's connection to the agent; opened at its first use. */
	porcupine_client *client;
	/* When the local folder list last followed the cluster's. */
	struct timeval last_follow;
	/* TRUE while folders are created or deleted to follow the cluster:
	   those changes stay local. */
	bool local_only;
	/* TRUE when the local folder list is known to differ from the
	   cluster's (a mailbox the cluster has and this node lacks, or one it
	   no longer has): the next safe point follows, not rate-limited. */
	bool follow_due;
};

struct pcp_save_context;
struct pcp_change_set;

/* A body opened ahead of its reading: the agent's answer for `uid`;
   `part` (enum porcupine_part) says whether fd holds the header only. */
struct pcp_ahead {
	uint32_t uid;
	int fd;
	int result;
	uint64_t size;
	int part;
};

/* An index extension of the mailbox, registered at its first use
   (pcp_ext_register). */
struct pcp_ext_slot {
	uint32_t id;
	bool registered;
};

struct pcp_mailbox {
	union mailbox_module_context module_ctx;
	/* TRUE while the plugin itself changes the local cache: saves,
	   flag changes and expunges then stay local. */
	bool in_sync;
	/* TRUE while get_status syncs a mailbox it opened itself. */
	bool in_status;
	/* TRUE when the last sync could not take the mailbox's lock in time:
	   sync_deinit then fails the sync with a temporary error. */
	bool sync_lock_timed_out;
	/* TRUE when the last sync found the folder gone from the cluster
	   (deleted or renamed on another node): sync_deinit fails the sync
	   with "Mailbox doesn't exist". */
	bool gone;
	/* TRUE when the last sync found the mailbox deleted (and perhaps
	   created again) by another process of this node: that sync fails
	   without touching the index (pcp_deleted_under_us). */
	bool deleted_under_us;
	/* TRUE once the folder is deleted in the cluster by this DELETE
	   (done when Dovecot opens the mailbox to delete it, before it takes
	   the folder list's lock). */
	bool cluster_deleted;
	/* The index directory this process opened (device and inode; 0: not
	   known): one that is gone or another one at that path is a mailbox
	   deleted (and perhaps created again) under this process. */
	dev_t index_dev;
	ino_t index_ino;
	/* The cluster's last listing of the folder (owned), sorted by UID;
	   refs and nrefs point into it. */
	struct porcupine_folder listing;
	struct porcupine_message *refs;
	size_t nrefs;
	uint32_t uidvalidity;
	/* The digest of the last listing a sync applied in full (0: none):
	   IDLE's poll compares the cluster's digest with it. */
	uint64_t synced_digest;
	/* This sync applied a listing: sync_deinit records its digest
	   (record_digest; 0 when something was out of reach or left for the
	   cluster to renumber) with the index's state (pcp_synced_hdr). */
	bool record_due;
	uint64_t record_digest;
	/* The last listing applied had messages below the index's next UID,
	   which the cluster was asked to renumber. */
	bool renumber_asked;
	/* Extension "porcupine-synced" (struct pcp_synced_hdr). */
	struct pcp_ext_slot synced_ext;
	/* Extension "porcupine-meta" (struct pcp_meta_hdr). */
	struct pcp_ext_slot meta_ext;
	/* A transaction with a flag, keyword or expunge change the cluster
	   refused (BAD_REQUEST) or could not make (the message's nodes are
	   out of reach): its commit fails with this error (IMAP NO). */
	struct mailbox_transaction_context *failed_t;
	enum mail_error failed_error;
	const char *failed_reason;
	/* UIDs of local messages the last listing did not have because every
	   node holding them is out of reach (down, or silent): kept and
	   served from the cache; changes to them fail for now. */
	ARRAY_TYPE(seq_range) out_of_reach;
	/* The index extension with each cached message's cluster reference
	   (struct pcp_ext_rec). */
	struct pcp_ext_slot ext;
	/* Extension "porcupine2" (struct pcp_index_hdr, struct pcp_size_rec). */
	struct pcp_ext_slot size_ext;
	/* UIDs this process moved away in the cluster (IMAP MOVE): their
	   expunge that follows stays local. */
	ARRAY_TYPE(seq_range) moved;
	/* Polls the cluster while a client waits for changes (IDLE). */
	struct timeout *to_poll;
	/* Save contexts the plugin allocated (saves going to the cluster). */
	ARRAY(struct pcp_save_context *) saves;
	/* The flag changes of open transactions (struct pcp_change_set). */
	ARRAY(struct pcp_change_set) change_sets;
	/* Bodies opened ahead of their reading (porcupine-read.c), and the
	   sequence of the last body read, to tell reading in order. */
	ARRAY(struct pcp_ahead) ahead;
	uint32_t last_read_seq;
};

/* Per message in the local index (extension "porcupine"): where the
   cluster keeps it. With it a sync tells a message that is gone from one
   whose nodes are only out of reach, also in a process that has not seen
   the message listed. */
struct pcp_ext_rec {
	uint64_t seq;
	int64_t internal_date_ms;
	uint32_t origin;
	uint32_t nreplicas;
	uint32_t pflags; /* PCP_EXT_* */
	uint32_t unused;
	uint32_t replicas[PORCUPINE_MAX_REPLICAS];
};

/* The record has no body in the local storage (every record the sync
   adds): its content comes from the node's agent each time Dovecot needs
   it; while no copy can be had, reading it is a temporary error for that
   message alone. A record without it is one of an older layout, read
   from the local storage (the sync replaces those: PCP_INDEX_LAYOUT). */
#define PCP_EXT_BODILESS 0x1

/* Extension "porcupine2": a header saying the index holds bodiless records
   only (layout PCP_INDEX_LAYOUT), and each message's sizes, so RFC822.SIZE,
   POP3 LIST and quota never read a body. An index without the header was
   written by an older version (records with bodies) or rebuilt by the
   local storage (which keeps the next UID and drops every bodiless
   record): the sync empties it and adds the cluster's records again. */
#define PCP_INDEX_LAYOUT 2
struct pcp_index_hdr {
	uint32_t layout;
	uint32_t unused;
};
/* The header of extension "porcupine-synced": the digest of the cluster's
   listing the index last took in full, and the index's state just after
   (its UIDVALIDITY, messages, next UID and highest modseq). While the
   index is still in that state and the cluster's digest is the same, a
   sync has nothing to take: it asks the digest, not the listing. */
struct pcp_synced_hdr {
	uint64_t digest;
	uint64_t highest_modseq;
	uint32_t uid_validity;
	uint32_t messages_count;
	uint32_t next_uid;
	uint32_t unused;
};
struct pcp_size_rec {
	uint64_t psize; /* the body's bytes, as the agent serves them */
	uint64_t vsize; /* with CRLF line ends; 0: not known */
};

struct pcp_mail {
	union mail_module_context module_ctx;
};

struct pcp_save_context {
	struct mail_save_context ctx;
	struct mailbox *box;
	struct istream *input;
	/* APPEND: the message as it comes, in memory up to
	   PCP_SAVE_MEMORY, then in a temporary file (iostream-temp). */
	struct ostream *spill;
	/* What is delivered: the spill's contents, or (a COPY's or LMTP's
	   seekable source, not copied) `input` read again from `start`. */
	struct istream *body;
	uoff_t start;
	ARRAY_TYPE(seq_range) uids;
	uint32_t uid_validity;
	bool failed;
};

/* A message whose flag state a transaction changes: the state it had and
   the state the transaction makes (system flags and keywords, NULL-
   terminated arrays in the change set's pool). */
struct pcp_change {
	uint32_t uid;
	enum mail_flags old_flags, new_flags;
	const char *const *old_keywords;
	const char *const *new_keywords;
};

/* The flag changes of one transaction, sent to the cluster in one
   pipelined batch when it commits: one whole-state write per message,
   whatever mix of flag and keyword updates made it. */
struct pcp_change_set {
	struct mailbox_transaction_context *t;
	pool_t pool;
	ARRAY(struct pcp_change) changes;
};

extern MODULE_CONTEXT_DEFINE(pcp_user_module, &mail_user_module_register);
extern MODULE_CONTEXT_DEFINE(pcp_storage_module, &mail_storage_module_register);
extern MODULE_CONTEXT_DEFINE(pcp_mail_module, &mail_module_register);
extern MODULE_CONTEXT_DEFINE(pcp_list_module, &mailbox_list_module_register);

/* porcupine-dovecot23.c or porcupine-dovecot24.c */
/* Reads the user's plugin settings into *set_r: 1 with the plugin active,
   0 when porcupine_socket is unset (inactive), -1 with *error_r naming
   the setting and its value when one is not valid. */
int pcp_settings_read(struct mail_user *user, struct pcp_settings *set_r,
		      const char **error_r);

/* porcupine-storage.c: the user, the mailbox, shared helpers */
void pcp_mail_user_created(struct mail_user *user);
void pcp_mailbox_allocated(struct mailbox *box);
porcupine_client *pcp_connect(struct mail_user *user);
void pcp_keyword_names(const struct mail_keywords *kw,
		       ARRAY_TYPE(const_string) *names);
struct mail_keywords *
pcp_cluster_keywords(struct mailbox *box, const struct porcupine_message *m);
void pcp_set_refs(struct pcp_mailbox *pbox, struct porcupine_folder *folder);
const struct porcupine_message *
pcp_find_ref(const struct pcp_mailbox *pbox, uint32_t uid);
/* The index extension `name` of `box`, registered at the mailbox's first
   use of it (the index is open then) and remembered in `slot`. */
uint32_t pcp_ext_register(struct mailbox *box, struct pcp_ext_slot *slot,
			  const char *name, uint32_t hdr_size,
			  uint16_t record_size, uint16_t record_align);
uint32_t pcp_ext_id(struct mailbox *box);
void pcp_ref_from_ext(struct porcupine_msgref *ref, const struct pcp_ext_rec *rec);
void pcp_stamp(struct mailbox_transaction_context *t, uint32_t seq,
	       const struct porcupine_message *m, bool appended, uint32_t pflags);
const struct pcp_ext_rec *pcp_bodiless(struct mail *mail);
uint32_t pcp_size_ext_id(struct mailbox *box);
bool pcp_sizes(struct mail *mail, struct pcp_size_rec *sizes_r);
uint32_t pcp_index_layout(struct mailbox *box, struct mail_index_view *view);
void pcp_local_holders(struct mailbox *box, struct mail_index_view *view,
		       uint32_t seq, struct pcp_decide_local *l);
bool pcp_out_of_reach(struct mailbox *box, struct mail_index_view *view,
		      uint32_t seq, const struct porcupine_folder *folder);
int pcp_lookup_ref(struct mail *mail, porcupine_client *c,
		   const struct porcupine_message **m_r);
void pcp_fail_transaction(struct mailbox_transaction_context *t,
			  enum mail_error error, const char *reason);

/* porcupine-read.c */
int pcp_open_body(struct mail *mail, const struct pcp_ext_rec *rec, bool header,
		  int *fd_r, bool *header_only_r, const char **error_r);
void pcp_read_ahead_clear(struct pcp_mailbox *pbox);
void pcp_read_ahead_free(struct pcp_mailbox *pbox);

/* porcupine-sync.c */
struct mailbox_sync_context *
pcp_sync_init(struct mailbox *box, enum mailbox_sync_flags flags);
int pcp_sync_deinit(struct mailbox_sync_context *ctx,
		    struct mailbox_sync_status *status_r);
int pcp_exists(struct mailbox *box, bool auto_boxes, enum mailbox_existence *existence_r);
int pcp_open(struct mailbox *box);
void pcp_remember_index_dir(struct mailbox *box);
int pcp_lock(struct mailbox *box, struct file_lock **lock_r);
int pcp_set_subscribed(struct mailbox *box, bool set);
void pcp_lmtp_init(void);
void pcp_lmtp_deinit(void);
/* In LMTP, while a recipient is delivered: the delivery's key (the
   digest of the message as the MTA sent it); NULL elsewhere. */
const unsigned char *pcp_lmtp_delivery_key(size_t *len_r);

/* A name a client chose (a folder), for a log line: control characters
   replaced (a name cannot forge a line), at most 256 characters. */
static inline const char *pcp_log_name(const char *name)
{
	return str_sanitize(name, 256);
}

/* Whether changes to the local cache of `box` stay local: the plugin's
   own sync makes them (in_sync), or Dovecot expunges the messages of a
   mailbox it deletes (the folder is gone from the cluster by then). */
static inline bool pcp_changes_stay_local(struct mailbox *box)
{
	const struct pcp_mailbox *pbox = PCP_BOX(box);

	return pbox->in_sync || box->deleting;
}
int pcp_get_status(struct mailbox *box, enum mailbox_status_items items,
		   struct mailbox_status *status_r);
void pcp_notify_changes(struct mailbox *box);

/* porcupine-meta.c: the IMAP metadata kept with a message in the cluster. */
/* The meta of the message `input` gives from its offset on (src: a COPY's
   or LMTP's source mail, whose cached BODYSTRUCTURE is taken when it has
   one), into `meta`. FALSE with *error_r when there is none to keep. */
bool pcp_meta_make(struct mail *src, struct istream *input, buffer_t *meta,
		   const char **error_r);
/* The BODYSTRUCTURE in a meta from a Dovecot of this major and minor
   version (data stack), or NULL. */
const char *pcp_meta_bodystructure(const void *data, size_t size);
/* Writes the BODYSTRUCTURE of a meta into the cache of the record `seq`
   of `t` (nothing for a foreign or absent meta). */
void pcp_meta_cache(struct mailbox_transaction_context *t, uint32_t seq,
		    const void *data, size_t size);
/* The index header extension "porcupine-meta": the first UID whose meta
   the sync did not take with the record (0: none owed). */
struct pcp_meta_hdr {
	uint32_t owed_from;
};
/* The sync that `t` is appended record `uid` without its meta. */
void pcp_meta_owe(struct mailbox_transaction_context *t, uint32_t uid);
/* Before a search (FETCH) that wants BODYSTRUCTURE or BODY: the metas
   owed, from the cluster, into the cache through `t`. */
void pcp_meta_fill(struct mailbox_transaction_context *t);
struct mail_search_context *
pcp_search_init(struct mailbox_transaction_context *t,
		struct mail_search_args *args,
		const enum mail_sort_type *sort_program,
		enum mail_fetch_field wanted_fields,
		struct mailbox_header_lookup_ctx *wanted_headers);

/* porcupine-save.c */
/* An APPEND is kept in memory up to this size, then in a temporary file. */
#define PCP_SAVE_MEMORY (256 * 1024)
struct mail_save_context *pcp_save_alloc(struct mailbox_transaction_context *t);
int pcp_save_begin(struct mail_save_context *_ctx, struct istream *input);
int pcp_save_continue(struct mail_save_context *_ctx);
int pcp_save_finish(struct mail_save_context *_ctx);
void pcp_save_cancel(struct mail_save_context *_ctx);
int pcp_copy(struct mail_save_context *ctx, struct mail *mail);
int pcp_transaction_save_commit_pre(struct mail_save_context *_ctx);
void pcp_transaction_save_commit_post(struct mail_save_context *_ctx,
				      struct mail_index_transaction_commit_result *result);
void pcp_transaction_save_rollback(struct mail_save_context *_ctx);

/* porcupine-mail.c */
void pcp_mail_allocated(struct mail *_mail);
int pcp_transaction_commit(struct mailbox_transaction_context *t,
			   struct mail_transaction_commit_changes *changes_r);
void pcp_transaction_rollback(struct mailbox_transaction_context *t);

/* porcupine-list.c */
void pcp_namespaces_created(struct mail_namespace *namespaces);
void pcp_mailbox_list_created(struct mailbox_list *list);
int pcp_create_box(struct mailbox *box, const struct mailbox_update *update,
		   bool directory);
int pcp_delete_box(struct mailbox *box);
int pcp_rename_box(struct mailbox *src, struct mailbox *dest);

#endif
