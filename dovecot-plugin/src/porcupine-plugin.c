/* porcupine-plugin.c - the Dovecot mail plugin `porcupine`: Dovecot's own
 * storage (sdbox, mdbox or maildir) becomes a cache of the cluster, which
 * is the authority for which messages exist, their UIDs, UIDVALIDITY and
 * flags (system flags and IMAP keywords).
 *
 * What it does, through the local porcupine-agent (porcupine_client.h):
 *   - saves (LMTP delivery, IMAP APPEND, COPY/MOVE into a folder) go to the
 *     cluster only; a cluster failure fails the save with a temporary
 *     error (LMTP answers 4xx). The local cache gets the message at the
 *     next sync, with the cluster's UID.
 *   - every mailbox sync first lists the folder in the cluster and makes
 *     the local cache match it: UIDVALIDITY, missing messages (fetched and
 *     saved with the cluster's UID and flags), flags and keywords,
 *     expunges (not of messages whose every holder is out of reach: those
 *     stay, served from the cache, and changes to them fail for now;
 *     each cached message's replica set is in the index); a message no
 *     holder gives is cached as a placeholder whose content is fetched
 *     at each read (a temporary error for it alone meanwhile). It keeps
 *     the listing (UID -> message reference) for the two below.
 *   - flag and keyword changes made by IMAP/POP3 clients go to the cluster
 *     when their transaction commits, as each message's whole resulting
 *     state (flags and keywords), all in one pipelined batch; a change the
 *     cluster does not take is put back locally and fails the commit
 *     (IMAP NO). Expunges go to the cluster first, then locally.
 *   - IMAP MOVE within the user is the cluster's Move (the body stays
 *     where it is); COPY is a new message in the cluster.
 *   - folder create/delete/rename go to the cluster first; at login and
 *     at LIST the local folders are made to follow the cluster's list.
 *   - while a client IDLEs, the selected folder's listing is polled and a
 *     change (new mail, flags, expunges made on any node) wakes IDLE up.
 *   - STATUS of a mailbox that is not open syncs it from the cluster
 *     first, instead of answering from the mailbox list index.
 *
 * It runs in Dovecot's single-threaded mail processes (lmtp, imap, pop3,
 * doveadm). One agent connection per mail user, opened at its first use;
 * the client reconnects by itself after an error.
 *
 * Settings (plugin { }):
 *   porcupine_socket        the agent's local socket; the plugin is
 *                           inactive for users without it
 *   porcupine_timeout_ms    deadline of each call to the agent (10000)
 *   porcupine_idle_poll_ms  how often IDLE asks the cluster for changes
 *                           of the selected folder (2000)
 */
#include "lib.h"
#include "array.h"
#include "buffer.h"
#include "istream.h"
#include "seq-range-array.h"
#include "module-context.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mail-copy.h"
#include "mail-index.h"
#include "index-storage.h"
#include "index-mail.h"

#include "mail-namespace.h"
#include "mailbox-list-iter.h"

#include "ioloop.h"
#include "time-util.h"
#include "mailbox-list-private.h"

#include "porcupine_client.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#define PCP_USER(obj) MODULE_CONTEXT(obj, pcp_user_module)
#define PCP_BOX(obj) MODULE_CONTEXT(obj, pcp_storage_module)
#define PCP_MAIL(obj) MODULE_CONTEXT(obj, pcp_mail_module)

/* The cluster keeps at most this many keywords per message
   (porcupine_client.h: more is PORCUPINE_BAD_REQUEST). */
#define PCP_MAX_KEYWORDS 64
#define PCP_LIST(obj) MODULE_CONTEXT(obj, pcp_list_module)

#define PCP_DEFAULT_TIMEOUT_MS 10000
/* A sync fetches the bodies it lacks this many at a time (pipelined), and
   about this many bytes: a batch must come within one call's deadline. */
#define PCP_FETCH_BATCH 16
#define PCP_FETCH_BATCH_BYTES (8 * 1024 * 1024)
#define PCP_DEFAULT_IDLE_POLL_MS 2000
/* LIST follows the cluster's folder list at most this often. */
#define PCP_FOLLOW_INTERVAL_MS 1000

struct pcp_user {
	union mail_user_module_context module_ctx;
	const char *socket_path;
	int timeout_ms;
	unsigned int idle_poll_ms;
	/* The user's connection to the agent; opened at its first use. */
	porcupine_client *client;
	/* When the local folder list last followed the cluster's. */
	struct timeval last_follow;
	/* TRUE while folders are created or deleted to follow the cluster:
	   those changes stay local. */
	bool local_only;
};

struct pcp_save_context;

struct pcp_mailbox {
	union mailbox_module_context module_ctx;
	/* TRUE while the plugin itself changes the local cache: saves,
	   flag changes and expunges then stay local. */
	bool in_sync;
	/* TRUE while get_status syncs a mailbox it opened itself. */
	bool in_status;
	/* The cluster's last listing of the folder (owned), sorted by UID;
	   refs and nrefs point into it. */
	struct porcupine_folder listing;
	struct porcupine_message *refs;
	size_t nrefs;
	uint32_t uidvalidity;
	/* The digest of the last listing a sync applied in full (0: none):
	   IDLE's poll compares the cluster's digest with it. */
	uint64_t synced_digest;
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
	uint32_t ext_id;
	bool ext_registered;
	/* UIDs this process moved away in the cluster (IMAP MOVE): their
	   expunge that follows stays local. */
	ARRAY_TYPE(seq_range) moved;
	/* Polls the cluster while a client waits for changes (IDLE). */
	struct timeout *to_poll;
	/* Save contexts the plugin allocated (saves going to the cluster). */
	ARRAY(struct pcp_save_context *) saves;
	/* The flag changes of open transactions (struct pcp_change_set). */
	ARRAY(struct pcp_change_set) change_sets;
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

/* The message is in the local index only: its body could not be fetched
   when it was cached (no holder answered). Its content is fetched from the
   cluster each time Dovecot needs it; while that fails, reading it is a
   temporary error for that message alone. */
#define PCP_EXT_PLACEHOLDER 0x1

#define PCP_UNAVAILABLE_REASON \
	"Message is on cluster nodes that cannot be reached now; try again later"

struct pcp_mail {
	union mail_module_context module_ctx;
};

struct pcp_save_context {
	struct mail_save_context ctx;
	struct mailbox *box;
	struct istream *input;
	buffer_t *body;
	ARRAY_TYPE(seq_range) uids;
	uint32_t uid_validity;
	bool failed;
};

const char *porcupine_plugin_version = DOVECOT_ABI_VERSION;
void porcupine_plugin_init(struct module *module);
void porcupine_plugin_deinit(void);

static MODULE_CONTEXT_DEFINE_INIT(pcp_user_module, &mail_user_module_register);
static MODULE_CONTEXT_DEFINE_INIT(pcp_storage_module, &mail_storage_module_register);
static MODULE_CONTEXT_DEFINE_INIT(pcp_mail_module, &mail_module_register);
static MODULE_CONTEXT_DEFINE_INIT(pcp_list_module, &mailbox_list_module_register);

static void pcp_follow_folders(struct mail_namespace *ns);

/* ---- flags and references ------------------------------------------- */

/* The cluster's flag bits: 0 \Seen, 1 \Answered, 2 \Flagged, 3 \Deleted,
   4 \Draft. */
static enum mail_flags pcp_flags_from_cluster(uint32_t f)
{
	enum mail_flags m = 0;

	if ((f & 1) != 0) m |= MAIL_SEEN;
	if ((f & 2) != 0) m |= MAIL_ANSWERED;
	if ((f & 4) != 0) m |= MAIL_FLAGGED;
	if ((f & 8) != 0) m |= MAIL_DELETED;
	if ((f & 16) != 0) m |= MAIL_DRAFT;
	return m;
}

static uint32_t pcp_flags_to_cluster(enum mail_flags m)
{
	uint32_t f = 0;

	if ((m & MAIL_SEEN) != 0) f |= 1;
	if ((m & MAIL_ANSWERED) != 0) f |= 2;
	if ((m & MAIL_FLAGGED) != 0) f |= 4;
	if ((m & MAIL_DELETED) != 0) f |= 8;
	if ((m & MAIL_DRAFT) != 0) f |= 16;
	return f;
}

/* The names of `kw` (indexes into its mail index's keyword list), added
   to `names`. */
static void pcp_keyword_names(const struct mail_keywords *kw,
			      ARRAY_TYPE(const_string) *names)
{
	const ARRAY_TYPE(keywords) *all;
	unsigned int i;

	if (kw == NULL)
		return;
	all = mail_index_get_keywords(kw->index);
	for (i = 0; i < kw->count; i++) {
		const char *name = *array_idx(all, kw->idx[i]);
		array_push_back(names, &name);
	}
}

static bool pcp_keyword_in(const char *name, const char *const *list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (strcasecmp(name, list[i]) == 0)
			return TRUE;
	}
	return FALSE;
}

/* TRUE if both lists hold the same keywords (IMAP keywords compare
   without case, as Dovecot's index does; neither list repeats one). */
static bool pcp_keywords_equal(const char *const *a, size_t na,
			       const char *const *b, size_t nb)
{
	size_t i;

	if (na != nb)
		return FALSE;
	for (i = 0; i < na; i++) {
		if (!pcp_keyword_in(a[i], b, nb))
			return FALSE;
	}
	return TRUE;
}

/* The cluster's keywords of `m` as keywords of `box` (created in its
   index if new; one Dovecot does not accept, e.g. longer than
   mail_max_keyword_length, is left out). */
static struct mail_keywords *
pcp_cluster_keywords(struct mailbox *box, const struct porcupine_message *m)
{
	const char **names = t_new(const char *, m->nkeywords + 1);
	size_t i;

	for (i = 0; i < m->nkeywords; i++)
		names[i] = m->keywords[i];
	return mailbox_keywords_create_valid(box, names);
}

/* The user's agent connection (NULL only when out of memory). Kept for
   the user's lifetime: the client reconnects by itself after an error. */
static porcupine_client *pcp_connect(struct mail_user *user)
{
	struct pcp_user *puser = PCP_USER(user);

	if (puser->client == NULL)
		puser->client = porcupine_open(puser->socket_path, puser->timeout_ms);
	return puser->client;
}

/* Keeps `folder` as the last listing: takes what it owns (keywords
   included) and leaves it empty. */
static void pcp_set_refs(struct pcp_mailbox *pbox,
			 struct porcupine_folder *folder)
{
	porcupine_folder_free(&pbox->listing);
	pbox->listing = *folder;
	i_zero(folder);
	pbox->uidvalidity = pbox->listing.uidvalidity;
	pbox->refs = pbox->listing.messages;
	pbox->nrefs = pbox->listing.count;
}

static const struct porcupine_message *
pcp_find_ref(const struct pcp_mailbox *pbox, uint32_t uid)
{
	size_t lo = 0, hi = pbox->nrefs;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (pbox->refs[mid].uid == uid)
			return &pbox->refs[mid];
		if (pbox->refs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* The index extension holding each cached message's cluster reference;
   registered at the mailbox's first use of it (the index is open then). */
static uint32_t pcp_ext_id(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	if (!pbox->ext_registered) {
		pbox->ext_id = mail_index_ext_register(box->index, "porcupine", 0,
						       sizeof(struct pcp_ext_rec),
						       sizeof(uint64_t));
		pbox->ext_registered = TRUE;
	}
	return pbox->ext_id;
}

static void pcp_ref_from_ext(struct porcupine_msgref *ref, const struct pcp_ext_rec *rec)
{
	i_zero(ref);
	ref->origin = rec->origin;
	ref->seq = rec->seq;
	ref->nreplicas = I_MIN(rec->nreplicas, PORCUPINE_MAX_REPLICAS);
	memcpy(ref->replicas, rec->replicas, ref->nreplicas * sizeof(ref->replicas[0]));
}

static void pcp_ext_from_ref(struct pcp_ext_rec *rec, const struct porcupine_msgref *ref)
{
	i_zero(rec);
	rec->seq = ref->seq;
	rec->origin = ref->origin;
	rec->nreplicas = I_MIN(ref->nreplicas, PORCUPINE_MAX_REPLICAS);
	memcpy(rec->replicas, ref->replicas, rec->nreplicas * sizeof(rec->replicas[0]));
}

/* Records where the cluster keeps message `m`, cached at `seq` (of the
   transaction's view, or one it appended); `pflags` for a new record, an
   existing one keeps its own. */
static void pcp_stamp(struct mailbox_transaction_context *t, uint32_t seq,
		      const struct porcupine_message *m, bool appended,
		      uint32_t pflags)
{
	uint32_t ext_id = pcp_ext_id(t->box);
	struct pcp_ext_rec rec;
	const void *data = NULL;
	bool expunged;

	pcp_ext_from_ref(&rec, &m->ref);
	rec.internal_date_ms = m->internal_date_ms;
	rec.pflags = pflags;
	if (!appended)
		mail_index_lookup_ext(t->view, seq, ext_id, &data, &expunged);
	if (data != NULL) {
		rec.pflags = ((const struct pcp_ext_rec *)data)->pflags;
		if (memcmp(data, &rec, sizeof(rec)) == 0)
			return;
	}
	mail_index_update_ext(t->itrans, seq, ext_id, &rec, NULL);
}

/* The stamp of `mail` if it is a placeholder (PCP_EXT_PLACEHOLDER). */
static const struct pcp_ext_rec *pcp_placeholder(struct mail *mail)
{
	const struct pcp_ext_rec *rec;
	const void *data = NULL;
	bool expunged;

	if (PCP_BOX(mail->box) == NULL || mail->seq == 0 || mail->saving)
		return NULL;
	mail_index_lookup_ext(mail->transaction->view, mail->seq,
			      pcp_ext_id(mail->box), &data, &expunged);
	rec = data;
	return rec != NULL && (rec->pflags & PCP_EXT_PLACEHOLDER) != 0 ? rec : NULL;
}

/* TRUE if the local message at `seq` of `view` may still exist in the
   cluster although `folder` does not list it: no node holding it (by its
   stamp) is among those the listing covers. An agent that does not say
   which nodes a listing covers (nreachable 0) makes every absent message
   gone, as an unstamped message is. */
static bool pcp_out_of_reach(struct mailbox *box, struct mail_index_view *view,
			     uint32_t seq, const struct porcupine_folder *folder)
{
	const struct pcp_ext_rec *rec;
	struct porcupine_msgref ref;
	const void *data = NULL;
	bool expunged;

	if (folder->nreachable == 0)
		return FALSE;
	mail_index_lookup_ext(view, seq, pcp_ext_id(box), &data, &expunged);
	if (data == NULL)
		return FALSE;
	rec = data;
	if (rec->origin == 0 || rec->nreplicas == 0)
		return FALSE;
	pcp_ref_from_ext(&ref, rec);
	return porcupine_folder_covers(folder, &ref) == 0;
}

/* The cluster reference of a local message, listing the folder again when
   the last listing does not have it (no sync yet in this process).
   PORCUPINE_OK with *m_r set; PORCUPINE_NOT_FOUND: gone from the folder in
   the cluster; PORCUPINE_TEMPFAIL: its nodes are out of reach; or the
   listing's failure. */
static int pcp_lookup_ref(struct mail *mail, porcupine_client *c,
			  const struct porcupine_message **m_r)
{
	struct mailbox *box = mail->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct porcupine_folder folder;
	int code;

	*m_r = pcp_find_ref(pbox, mail->uid);
	if (*m_r != NULL)
		return PORCUPINE_OK;
	if (seq_range_exists(&pbox->out_of_reach, mail->uid))
		return PORCUPINE_TEMPFAIL;
	code = porcupine_folder_list(c, box->storage->user->username, box->vname,
				     &folder);
	if (code != PORCUPINE_OK)
		return code;
	pcp_set_refs(pbox, &folder);
	*m_r = pcp_find_ref(pbox, mail->uid);
	if (*m_r != NULL)
		return PORCUPINE_OK;
	return pcp_out_of_reach(box, mail->transaction->view, mail->seq,
				&pbox->listing) ? PORCUPINE_TEMPFAIL : PORCUPINE_NOT_FOUND;
}

/* Makes the commit of `t` fail with `error` (IMAP NO): a change the
   cluster refused or could not make. What the cluster took is committed
   locally all the same. */
static void pcp_fail_transaction(struct mailbox_transaction_context *t,
				 enum mail_error error, const char *reason)
{
	struct pcp_mailbox *pbox = PCP_BOX(t->box);

	pbox->failed_t = t;
	pbox->failed_error = error;
	pbox->failed_reason = reason;
}

/* ---- sync: the cluster's listing onto the local cache ------------------ */

static int pcp_commit(struct mailbox_transaction_context **t)
{
	struct mailbox *box = (*t)->box;

	if (mailbox_transaction_commit(t) < 0) {
		e_error(box->event, "porcupine: committing the local cache failed: %s",
			mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	return 0;
}

/* The cluster's UIDVALIDITY differs from the local one: expunge every
   local message and take the cluster's. */
static int pcp_reset(struct mailbox *box, const struct mail_index_header *hdr,
		     uint32_t uid_validity)
{
	struct mailbox_transaction_context *t;
	struct mailbox_update update;
	struct mail *mail;
	struct mail_index_view *view;
	uint32_t seq;

	if (hdr->messages_count > 0) {
		e_warning(box->event, "porcupine: UIDVALIDITY %u -> %u: "
			  "emptying the local cache of %s",
			  hdr->uid_validity, uid_validity, box->vname);
		view = mail_index_view_open(box->index);
		t = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_EXTERNAL,
					      __func__);
		mail = mail_alloc(t, 0, NULL);
		for (seq = 1; seq <= hdr->messages_count; seq++) {
			const struct mail_index_record *rec =
				mail_index_lookup(view, seq);
			if (mail_set_uid(mail, rec->uid))
				mail_expunge(mail);
		}
		mail_free(&mail);
		mail_index_view_close(&view);
		if (pcp_commit(&t) < 0)
			return -1;
	}
	i_zero(&update);
	update.uid_validity = uid_validity;
	if (mailbox_update(box, &update) < 0) {
		e_error(box->event, "porcupine: setting UIDVALIDITY %u on %s failed: %s",
			uid_validity, box->vname,
			mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	return 0;
}

/* Saves message `m`, whose body is `body`, in the local cache with the
   cluster's UID, flags and internal date. -1 if the local save failed. */
static int pcp_save_body(struct mailbox_transaction_context *t,
			 const struct porcupine_message *m,
			 const char *body, size_t len)
{
	struct mailbox *box = t->box;
	struct mail_save_context *save;
	struct istream *input;
	int ret;

	save = mailbox_save_alloc(t);
	mailbox_save_set_uid(save, m->uid);
	if (m->nkeywords > 0) {
		struct mail_keywords *kw = pcp_cluster_keywords(box, m);
		mailbox_save_set_flags(save, pcp_flags_from_cluster(m->flags), kw);
		mailbox_keywords_unref(&kw);
	} else {
		mailbox_save_set_flags(save, pcp_flags_from_cluster(m->flags), NULL);
	}
	mailbox_save_set_received_date(save, (time_t)(m->internal_date_ms / 1000), 0);
	input = i_stream_create_from_data(body, len);
	if (mailbox_save_begin(&save, input) < 0) {
		ret = -1;
	} else {
		pcp_stamp(t, mailbox_save_get_dest_mail(save)->seq, m, TRUE, 0);
		do {
			if (mailbox_save_continue(save) < 0)
				break;
		} while (i_stream_read(input) > 0);
		ret = mailbox_save_finish(&save);
	}
	i_stream_unref(&input);
	if (ret < 0) {
		e_error(box->event, "porcupine: saving UID %u of %s locally failed: %s",
			m->uid, box->vname, mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	return 0;
}

/* Caches message `m` without its body (no holder gave it): an index record
   with the cluster's UID, flags and keywords, stamped as a placeholder.
   Committed on its own, after what `*t` saved before it. */
static int pcp_save_placeholder(struct mailbox_transaction_context **t,
				const struct porcupine_message *m)
{
	struct mailbox *box = (*t)->box;
	struct mailbox_transaction_context *pt;
	uint32_t seq;

	int ret = 0;

	if (pcp_commit(t) < 0) {
		*t = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_EXTERNAL,
					       __func__);
		return -1;
	}
	pt = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_EXTERNAL,
				       __func__);
	mail_index_append(pt->itrans, m->uid, &seq);
	mail_index_update_flags(pt->itrans, seq, MODIFY_REPLACE,
				pcp_flags_from_cluster(m->flags));
	if (m->nkeywords > 0) {
		struct mail_keywords *kw = pcp_cluster_keywords(box, m);
		mail_index_update_keywords(pt->itrans, seq, MODIFY_REPLACE, kw);
		mailbox_keywords_unref(&kw);
	}
	pcp_stamp(pt, seq, m, TRUE, PCP_EXT_PLACEHOLDER);
	if (pcp_commit(&pt) < 0) {
		ret = -1;
	} else {
		e_warning(box->event, "porcupine: UID %u of %s cached without its "
			  "body (no holder answered); reading it fails until one does",
			  m->uid, box->vname);
	}
	*t = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_EXTERNAL,
				       __func__);
	return ret;
}

/* Makes the local keywords of `mail` the cluster's (`m`). */
static void pcp_sync_keywords(struct mail *mail, const struct porcupine_message *m)
{
	const char *const *have = mail_get_keywords(mail);
	struct mail_keywords *kw;

	if (pcp_keywords_equal(have, str_array_length(have),
			       (const char *const *)m->keywords, m->nkeywords))
		return;
	kw = pcp_cluster_keywords(mail->box, m);
	mail_update_keywords(mail, MODIFY_REPLACE, kw);
	mailbox_keywords_unref(&kw);
}

static int pcp_apply(struct mailbox *box, porcupine_client *c,
		     const struct porcupine_folder *folder)
{
	struct mailbox_transaction_context *t;
	struct mail_index_view *view;
	const struct mail_index_header *hdr;
	struct mail *mail;
	ARRAY(const struct porcupine_message *) missing, todo;
	const struct porcupine_message *const *mp;
	unsigned int i, ntodo;
	uint32_t seq, count, next_uid;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	size_t ci = 0;
	int ret = 0;

	array_clear(&pbox->out_of_reach);
	(void)mail_index_refresh(box->index);
	view = mail_index_view_open(box->index);
	hdr = mail_index_get_header(view);
	if (hdr->uid_validity != folder->uidvalidity) {
		struct mail_index_header copy = *hdr;
		mail_index_view_close(&view);
		if (pcp_reset(box, &copy, folder->uidvalidity) < 0)
			return -1;
		(void)mail_index_refresh(box->index);
		view = mail_index_view_open(box->index);
		hdr = mail_index_get_header(view);
	}
	count = hdr->messages_count;
	next_uid = hdr->next_uid;

	t_array_init(&missing, 16);
	t = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_EXTERNAL,
				      __func__);
	mail = mail_alloc(t, MAIL_FETCH_FLAGS, NULL);
	for (seq = 1; seq <= count; seq++) {
		const struct mail_index_record *rec = mail_index_lookup(view, seq);
		uint32_t uid = rec->uid;

		for (; ci < folder->count && folder->messages[ci].uid < uid; ci++) {
			const struct porcupine_message *m = &folder->messages[ci];
			array_push_back(&missing, &m);
		}
		if (!mail_set_uid(mail, uid))
			continue; /* expunged meanwhile by another process */
		if (ci < folder->count && folder->messages[ci].uid == uid) {
			enum mail_flags want = pcp_flags_from_cluster(folder->messages[ci].flags);
			enum mail_flags have = mail_get_flags(mail) & MAIL_FLAGS_NONRECENT;
			if (want != have)
				mail_update_flags(mail, MODIFY_REPLACE, want);
			pcp_sync_keywords(mail, &folder->messages[ci]);
			pcp_stamp(t, mail->seq, &folder->messages[ci], FALSE, 0);
			ci++;
		} else if (pcp_out_of_reach(box, t->view, mail->seq, folder)) {
			/* Its nodes are down or silent: not gone. Served from
			   the cache until they answer again. */
			seq_range_array_add(&pbox->out_of_reach, uid);
		} else {
			mail_expunge(mail);
		}
	}
	for (; ci < folder->count; ci++) {
		const struct porcupine_message *m = &folder->messages[ci];
		array_push_back(&missing, &m);
	}
	mail_free(&mail);
	mail_index_view_close(&view);
	if (array_count(&pbox->out_of_reach) > 0) {
		e_warning(box->event, "porcupine: %u messages of %s are on nodes "
			  "out of reach; serving them from the cache",
			  seq_range_count(&pbox->out_of_reach), box->vname);
	}

	/* The missing messages in UID order, fetched a batch at a time
	   (pipelined), each batch at most PCP_FETCH_BATCH messages and about
	   PCP_FETCH_BATCH_BYTES. */
	t_array_init(&todo, array_count(&missing));
	array_foreach(&missing, mp) {
		if ((*mp)->uid < next_uid) {
			/* The local index already used this UID: it cannot
			   take the message without renumbering it. */
			e_warning(box->event, "porcupine: UID %u of %s is below the "
				  "local next UID %u; not cached", (*mp)->uid,
				  box->vname, next_uid);
			continue;
		}
		array_push_back(&todo, mp);
	}
	mp = array_get(&todo, &ntodo);
	for (i = 0; i < ntodo && ret == 0; ) {
		struct porcupine_fetched items[PCP_FETCH_BATCH];
		uint64_t bytes = 0;
		unsigned int n = 0, k;

		while (i + n < ntodo && n < PCP_FETCH_BATCH &&
		       (n == 0 || bytes + mp[i + n]->size <= PCP_FETCH_BATCH_BYTES)) {
			bytes += mp[i + n]->size;
			i_zero(&items[n]);
			items[n].ref = mp[i + n]->ref;
			n++;
		}
		(void)porcupine_fetch_many(c, box->storage->user->username,
					   box->vname, items, n);
		for (k = 0; k < n; k++) {
			const struct porcupine_message *m = mp[i + k];
			int saved = 0;

			if (ret != 0) {
				/* an earlier local save failed: later syncs */
			} else if (items[k].result == PORCUPINE_OK) {
				saved = pcp_save_body(t, m, items[k].body, items[k].len);
			} else if (items[k].result != PORCUPINE_NOT_FOUND) {
				/* No holder gave the body: a placeholder keeps
				   the message's place (UIDs are cached in
				   order), the later ones are cached too. */
				e_warning(box->event, "porcupine: fetching UID %u of %s "
					  "failed: code %d (%s)", m->uid, box->vname,
					  items[k].result, porcupine_error(c));
				saved = pcp_save_placeholder(&t, m);
			} /* NOT_FOUND: expunged since the listing */
			if (saved < 0) {
				/* The local save failed: the messages before it
				   are kept; this one and the later ones come at
				   a later sync. */
				ret = -1;
			}
			porcupine_body_free(items[k].body);
		}
		i += n;
	}
	if (pcp_commit(&t) < 0)
		return -1;
	return ret;
}

/* Serialises the syncs of one mailbox between the processes of this node
   (flock on a file beside the index), so two of them never both save the
   same cluster message. Returns the locked fd, or -1 (then sync unlocked). */
static int pcp_lock(struct mailbox *box)
{
	const char *dir, *path;
	int fd;

	if (mailbox_get_path_to(box, MAILBOX_LIST_PATH_TYPE_INDEX, &dir) <= 0)
		return -1;
	path = t_strconcat(dir, "/dovecot-porcupine.lock", NULL);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd == -1) {
		e_warning(box->event, "porcupine: open(%s) failed: %m", path);
		return -1;
	}
	if (flock(fd, LOCK_EX) < 0) {
		e_warning(box->event, "porcupine: flock(%s) failed: %m", path);
		i_close_fd(&fd);
		return -1;
	}
	return fd;
}

/* Makes the local cache of `box` match the cluster. On failure the local
   cache is served as it is. */
static int pcp_sync_from_cluster(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct mail_user *user = box->storage->user;
	struct porcupine_folder folder;
	porcupine_client *c;
	int code, ret;

	c = pcp_connect(user);
	if (c == NULL)
		return -1;
	code = porcupine_folder_list(c, user->username, box->vname, &folder);
	if (code != PORCUPINE_OK) {
		e_warning(box->event, "porcupine: listing %s failed (serving the "
			  "local cache): %s", box->vname, porcupine_error(c));
		return -1;
	}
	pbox->in_sync = TRUE;
	T_BEGIN {
		int lock_fd = pcp_lock(box);
		ret = pcp_apply(box, c, &folder);
		if (lock_fd != -1)
			i_close_fd(&lock_fd);
	} T_END;
	pbox->in_sync = FALSE;
	pbox->synced_digest = ret == 0 ? folder.digest : 0;
	pcp_set_refs(pbox, &folder);
	return ret;
}

static struct mailbox_sync_context *
pcp_sync_init(struct mailbox *box, enum mailbox_sync_flags flags)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	if (!pbox->in_sync)
		(void)pcp_sync_from_cluster(box);
	return pbox->module_ctx.super.sync_init(box, flags);
}

/* IMAP STATUS (and LIST-STATUS) of a mailbox that is not open: Dovecot
   would answer from the mailbox list index, which knows only what this
   node has cached. Open it and sync it from the cluster first. Other
   services (LMTP above all) do not need it and skip the cost. */
static int pcp_get_status(struct mailbox *box, enum mailbox_status_items items,
			  struct mailbox_status *status_r)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	const char *service = box->storage->user->service;

	if (items != 0 && !box->opened && !pbox->in_sync && !pbox->in_status &&
	    service != NULL && strcmp(service, "imap") == 0) {
		pbox->in_status = TRUE;
		if (mailbox_open(box) == 0 &&
		    mailbox_sync(box, MAILBOX_SYNC_FLAG_FAST) < 0) {
			e_warning(box->event, "porcupine: syncing %s for STATUS failed: %s",
				  box->vname, mailbox_get_last_internal_error(box, NULL));
		}
		pbox->in_status = FALSE;
	}
	return pbox->module_ctx.super.get_status(box, items, status_r);
}

/* ---- IDLE: changes made on other nodes ------------------------------------ */

static void pcp_poll(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct mail_user *user = box->storage->user;
	porcupine_client *c = pcp_connect(user);
	uint64_t digest;

	if (c == NULL || box->notify_callback == NULL)
		return;
	/* Only the digest of the folder: the nodes answer a number, not
	   their records. */
	if (porcupine_folder_digest(c, user->username, box->vname, &digest) != PORCUPINE_OK) {
		e_debug(box->event, "porcupine: polling %s failed: %s",
			box->vname, porcupine_error(c));
		return;
	}
	/* The callback syncs the mailbox (pcp_sync_init), which applies the
	   cluster's listing and remembers its digest. */
	if (digest != pbox->synced_digest)
		box->notify_callback(box, box->notify_context);
}

static void pcp_notify_changes(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);

	timeout_remove(&pbox->to_poll);
	if (box->notify_callback != NULL)
		pbox->to_poll = timeout_add(puser->idle_poll_ms, pcp_poll, box);
	/* Changes made by this node's other processes, as before. */
	pbox->module_ctx.super.notify_changes(box);
}

/* ---- saves: into the cluster ------------------------------------------ */

static bool pcp_is_ours(struct pcp_mailbox *pbox, struct mail_save_context *ctx)
{
	struct pcp_save_context *const *sp;

	array_foreach(&pbox->saves, sp) {
		if (&(*sp)->ctx == ctx)
			return TRUE;
	}
	return FALSE;
}

static void pcp_save_release(struct pcp_save_context *ctx)
{
	i_stream_unref(&ctx->input);
	if (ctx->body != NULL)
		buffer_free(&ctx->body);
}

static void pcp_save_destroy(struct pcp_save_context *ctx)
{
	struct pcp_mailbox *pbox = PCP_BOX(ctx->box);
	struct pcp_save_context *const *sp;
	unsigned int i = 0;

	array_foreach(&pbox->saves, sp) {
		if (*sp == ctx) {
			array_delete(&pbox->saves, i, 1);
			break;
		}
		i++;
	}
	pcp_save_release(ctx);
	array_free(&ctx->uids);
	i_free(ctx);
}

static struct mail_save_context *
pcp_save_alloc(struct mailbox_transaction_context *t)
{
	struct pcp_mailbox *pbox = PCP_BOX(t->box);
	struct pcp_save_context *ctx;

	if (pbox->in_sync)
		return pbox->module_ctx.super.save_alloc(t);
	if (t->save_ctx == NULL) {
		ctx = i_new(struct pcp_save_context, 1);
		ctx->ctx.transaction = t;
		ctx->box = t->box;
		i_array_init(&ctx->uids, 4);
		array_push_back(&pbox->saves, &ctx);
		t->save_ctx = &ctx->ctx;
	}
	return t->save_ctx;
}

static int pcp_save_begin(struct mail_save_context *_ctx, struct istream *input)
{
	struct pcp_mailbox *pbox = PCP_BOX(_ctx->transaction->box);
	struct pcp_save_context *ctx = (struct pcp_save_context *)_ctx;

	if (!pcp_is_ours(pbox, _ctx))
		return pbox->module_ctx.super.save_begin(_ctx, input);
	pcp_save_release(ctx);
	ctx->failed = FALSE;
	ctx->input = input;
	i_stream_ref(input);
	ctx->body = buffer_create_dynamic(default_pool, 8192);
	return 0;
}

static int pcp_save_continue(struct mail_save_context *_ctx)
{
	struct pcp_mailbox *pbox = PCP_BOX(_ctx->transaction->box);
	struct pcp_save_context *ctx = (struct pcp_save_context *)_ctx;
	const unsigned char *data;
	size_t size;
	int ret;

	if (!pcp_is_ours(pbox, _ctx))
		return pbox->module_ctx.super.save_continue(_ctx);
	if (ctx->failed)
		return -1;
	while ((ret = i_stream_read_more(ctx->input, &data, &size)) > 0) {
		buffer_append(ctx->body, data, size);
		i_stream_skip(ctx->input, size);
	}
	if (ret == -1 && ctx->input->stream_errno != 0) {
		mail_storage_set_critical(_ctx->transaction->box->storage,
			"porcupine: read(%s) failed: %s",
			i_stream_get_name(ctx->input),
			i_stream_get_error(ctx->input));
		ctx->failed = TRUE;
		return -1;
	}
	return 0;
}

struct pcp_reader {
	const unsigned char *data;
	size_t size, pos;
};

static ssize_t pcp_read(void *context, char *buf, size_t len)
{
	struct pcp_reader *r = context;
	size_t n = I_MIN(len, r->size - r->pos);

	memcpy(buf, r->data + r->pos, n);
	r->pos += n;
	return (ssize_t)n;
}

/* Delivers the saved message into the cluster's folder. */
static int pcp_deliver(struct pcp_save_context *ctx)
{
	struct mailbox *box = ctx->box;
	struct mail_user *user = box->storage->user;
	struct pcp_reader r = { ctx->body->data, ctx->body->used, 0 };
	struct porcupine_delivered out;
	enum mail_flags flags = ctx->ctx.data.flags & MAIL_FLAGS_NONRECENT;
	ARRAY_TYPE(const_string) keywords;
	const char *const *names;
	unsigned int nnames;
	porcupine_client *c;
	int code;

	t_array_init(&keywords, 8);
	pcp_keyword_names(ctx->ctx.data.keywords, &keywords);
	names = array_get(&keywords, &nnames);
	if (nnames > PCP_MAX_KEYWORDS) {
		/* The cluster would take the message but not its state. */
		mail_storage_set_error(box->storage, MAIL_ERROR_PARAMS,
				       "Too many keywords (at most 64 per message)");
		return -1;
	}
	c = pcp_connect(user);
	code = c == NULL ? PORCUPINE_UNREACHABLE :
		porcupine_deliver(c, user->username, box->vname, pcp_read, &r, &out);
	if (code != PORCUPINE_OK) {
		enum mail_error error = MAIL_ERROR_TEMP;
		if (code == PORCUPINE_NO_SUCH_USER || code == PORCUPINE_BAD_REQUEST)
			error = MAIL_ERROR_PARAMS;
		else if (code == PORCUPINE_OVER_QUOTA)
			error = MAIL_ERROR_NOQUOTA;
		e_error(box->event, "porcupine: delivery into %s failed: %s",
			box->vname, c == NULL ? "no client" : porcupine_error(c));
		mail_storage_set_error(box->storage, error, error == MAIL_ERROR_TEMP ?
			"Cluster temporarily unavailable, try again later" :
			"Cluster refused the message");
		return -1;
	}
	seq_range_array_add(&ctx->uids, out.uid);
	ctx->uid_validity = out.uidvalidity;
	if ((flags != 0 || nnames > 0) &&
	    porcupine_set_flags_keywords(c, user->username, box->vname, &out.ref,
					 pcp_flags_to_cluster(flags),
					 names, nnames) != PORCUPINE_OK) {
		e_warning(box->event, "porcupine: flags and keywords of new UID %u "
			  "in %s: %s", out.uid, box->vname, porcupine_error(c));
	}
	return 0;
}

static int pcp_save_finish(struct mail_save_context *_ctx)
{
	struct pcp_mailbox *pbox = PCP_BOX(_ctx->transaction->box);
	struct pcp_save_context *ctx = (struct pcp_save_context *)_ctx;
	int ret = -1;

	if (!pcp_is_ours(pbox, _ctx))
		return pbox->module_ctx.super.save_finish(_ctx);
	if (!ctx->failed && pcp_save_continue(_ctx) == 0)
		ret = pcp_deliver(ctx);
	pcp_save_release(ctx);
	index_save_context_free(_ctx);
	return ret;
}

static void pcp_save_cancel(struct mail_save_context *_ctx)
{
	struct pcp_mailbox *pbox = PCP_BOX(_ctx->transaction->box);
	struct pcp_save_context *ctx = (struct pcp_save_context *)_ctx;

	if (!pcp_is_ours(pbox, _ctx)) {
		pbox->module_ctx.super.save_cancel(_ctx);
		return;
	}
	ctx->failed = TRUE;
	pcp_save_release(ctx);
	index_save_context_free(_ctx);
}

/* IMAP MOVE between two folders of the same user: the cluster's Move. The
   message keeps its body where it is and gets a UID in the destination
   within a moment (no COPYUID: the UID is not known yet). */
static int pcp_move(struct mail_save_context *ctx, struct mail *mail)
{
	struct mailbox *dest = ctx->transaction->box;
	struct mailbox *src = mail->box;
	struct pcp_mailbox *spbox = PCP_BOX(src);
	struct mail_user *user = dest->storage->user;
	const struct porcupine_message *m = NULL;
	porcupine_client *c = pcp_connect(user);
	int code;

	code = c == NULL ? PORCUPINE_UNREACHABLE : pcp_lookup_ref(mail, c, &m);
	if (code == PORCUPINE_OK)
		code = porcupine_move(c, user->username, src->vname, &m->ref, dest->vname);
	if (code != PORCUPINE_OK) {
		e_error(dest->event, "porcupine: moving UID %u of %s to %s failed: %s",
			mail->uid, src->vname, dest->vname, c == NULL ? "no client" :
			m == NULL && code == PORCUPINE_TEMPFAIL ? "its nodes are out of reach" :
			porcupine_error(c));
		if (code == PORCUPINE_NOT_FOUND) {
			mail_storage_set_error(dest->storage, MAIL_ERROR_EXPUNGED,
					       "Message was expunged in the cluster");
		} else {
			mail_storage_set_error(dest->storage, MAIL_ERROR_UNAVAILABLE,
					       m == NULL ? PCP_UNAVAILABLE_REASON :
					       "Cluster temporarily unavailable, try again later");
		}
		mailbox_save_cancel(&ctx);
		return -1;
	}
	seq_range_array_add(&spbox->moved, mail->uid);
	index_save_context_free(ctx);
	return 0;
}

static int pcp_copy(struct mail_save_context *ctx, struct mail *mail)
{
	struct pcp_mailbox *pbox = PCP_BOX(ctx->transaction->box);
	struct pcp_mailbox *spbox = PCP_BOX(mail->box);

	if (!pcp_is_ours(pbox, ctx))
		return pbox->module_ctx.super.copy(ctx, mail);
	if (ctx->moving && spbox != NULL &&
	    mail->box->storage->user == ctx->transaction->box->storage->user &&
	    strcmp(mail->box->vname, ctx->transaction->box->vname) != 0)
		return pcp_move(ctx, mail);
	/* Through the save path: the copy is a new message in the cluster. */
	return mail_storage_copy(ctx, mail);
}

static int pcp_transaction_save_commit_pre(struct mail_save_context *_ctx)
{
	struct pcp_mailbox *pbox = PCP_BOX(_ctx->transaction->box);
	struct pcp_save_context *ctx = (struct pcp_save_context *)_ctx;
	struct mail_transaction_commit_changes *changes;

	if (!pcp_is_ours(pbox, _ctx))
		return pbox->module_ctx.super.transaction_save_commit_pre(_ctx);
	changes = _ctx->transaction->changes;
	if (changes != NULL && array_count(&ctx->uids) > 0) {
		changes->uid_validity = ctx->uid_validity;
		seq_range_array_merge(&changes->saved_uids, &ctx->uids);
	}
	return 0;
}

static void
pcp_transaction_save_commit_post(struct mail_save_context *_ctx,
				 struct mail_index_transaction_commit_result *result)
{
	struct pcp_save_context *ctx = (struct pcp_save_context *)_ctx;
	struct mailbox *box = _ctx->transaction->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);

	if (!pcp_is_ours(pbox, _ctx)) {
		pbox->module_ctx.super.transaction_save_commit_post(_ctx, result);
		return;
	}
	pcp_save_destroy(ctx);
}

static void pcp_transaction_save_rollback(struct mail_save_context *_ctx)
{
	struct pcp_mailbox *pbox = PCP_BOX(_ctx->transaction->box);

	if (!pcp_is_ours(pbox, _ctx)) {
		pbox->module_ctx.super.transaction_save_rollback(_ctx);
		return;
	}
	pcp_save_destroy((struct pcp_save_context *)_ctx);
}

/* ---- flags and expunges: to the cluster first --------------------------- */

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

static struct pcp_change_set *
pcp_change_set(struct pcp_mailbox *pbox, struct mailbox_transaction_context *t,
	       bool create)
{
	struct pcp_change_set *set;

	array_foreach_modifiable(&pbox->change_sets, set) {
		if (set->t == t)
			return set;
	}
	if (!create)
		return NULL;
	set = array_append_space(&pbox->change_sets);
	set->t = t;
	set->pool = pool_alloconly_create("porcupine flag changes", 1024);
	p_array_init(&set->changes, set->pool, 16);
	return set;
}

static void pcp_change_set_free(struct pcp_mailbox *pbox,
				struct mailbox_transaction_context *t)
{
	struct pcp_change_set *set;
	unsigned int i;

	array_foreach_modifiable(&pbox->change_sets, set) {
		if (set->t == t) {
			i = array_foreach_idx(&pbox->change_sets, set);
			pool_unref(&set->pool);
			array_delete(&pbox->change_sets, i, 1);
			return;
		}
	}
}

/* The change of `mail` in its transaction, made on its first update. */
static struct pcp_change *pcp_change_of(struct mail *mail)
{
	struct pcp_change_set *set =
		pcp_change_set(PCP_BOX(mail->box), mail->transaction, TRUE);
	struct pcp_change *ch;
	unsigned int count;

	ch = array_get_modifiable(&set->changes, &count);
	/* Dovecot walks messages in UID order: the last one first. */
	if (count > 0 && ch[count - 1].uid == mail->uid)
		return &ch[count - 1];
	array_foreach_modifiable(&set->changes, ch) {
		if (ch->uid == mail->uid)
			return ch;
	}
	ch = array_append_space(&set->changes);
	ch->uid = mail->uid;
	ch->old_flags = ch->new_flags = mail_get_flags(mail) & MAIL_FLAGS_NONRECENT;
	ch->old_keywords = ch->new_keywords =
		(const char *const *)p_strarray_dup(set->pool, mail_get_keywords(mail));
	return ch;
}

static void pcp_mail_update_flags(struct mail *_mail, enum modify_type modify_type,
				  enum mail_flags flags)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct pcp_mail *pmail = PCP_MAIL(mail);
	struct pcp_mailbox *pbox = PCP_BOX(_mail->box);

	if (!pbox->in_sync) {
		struct pcp_change *ch = pcp_change_of(_mail);

		switch (modify_type) {
		case MODIFY_ADD: ch->new_flags |= flags; break;
		case MODIFY_REMOVE: ch->new_flags &= ~flags; break;
		case MODIFY_REPLACE: ch->new_flags = flags; break;
		}
		ch->new_flags &= MAIL_FLAGS_NONRECENT;
	}
	pmail->module_ctx.super.update_flags(_mail, modify_type, flags);
}

/* The keywords `modify_type` with `change` makes of `have`, into `want`. */
static void pcp_keywords_modify(const char *const *have, size_t nhave,
				enum modify_type modify_type,
				const ARRAY_TYPE(const_string) *change,
				ARRAY_TYPE(const_string) *want)
{
	const char *const *name;
	size_t i;

	switch (modify_type) {
	case MODIFY_REPLACE:
		array_append_array(want, change);
		break;
	case MODIFY_ADD:
		for (i = 0; i < nhave; i++)
			array_push_back(want, &have[i]);
		array_foreach(change, name) {
			if (!pcp_keyword_in(*name, have, nhave))
				array_push_back(want, name);
		}
		break;
	case MODIFY_REMOVE:
		for (i = 0; i < nhave; i++) {
			unsigned int n;
			const char *const *c = array_get(change, &n);
			if (!pcp_keyword_in(have[i], c, n))
				array_push_back(want, &have[i]);
		}
		break;
	}
}

static void pcp_mail_update_keywords(struct mail *_mail, enum modify_type modify_type,
				     struct mail_keywords *keywords)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct pcp_mail *pmail = PCP_MAIL(mail);
	struct pcp_mailbox *pbox = PCP_BOX(_mail->box);

	if (!pbox->in_sync) T_BEGIN {
		struct pcp_change_set *set;
		struct pcp_change *ch = pcp_change_of(_mail);
		ARRAY_TYPE(const_string) change, want;
		size_t nhave = str_array_length(ch->new_keywords);

		set = pcp_change_set(pbox, _mail->transaction, FALSE);
		t_array_init(&change, 8);
		pcp_keyword_names(keywords, &change);
		t_array_init(&want, nhave + array_count(&change) + 1);
		pcp_keywords_modify(ch->new_keywords, nhave, modify_type, &change, &want);
		array_append_zero(&want);
		ch->new_keywords = (const char *const *)
			p_strarray_dup(set->pool, array_front(&want));
	} T_END;
	pmail->module_ctx.super.update_keywords(_mail, modify_type, keywords);
}

/* Puts the local state of `mail` back as it was before the transaction
   (the cluster did not take the change). */
static void pcp_change_revert(struct mail *mail, const struct pcp_change *ch)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)mail);
	struct mail_keywords *kw;

	pmail->module_ctx.super.update_flags(mail, MODIFY_REPLACE, ch->old_flags);
	kw = mailbox_keywords_create_valid(mail->box, ch->old_keywords);
	pmail->module_ctx.super.update_keywords(mail, MODIFY_REPLACE, kw);
	mailbox_keywords_unref(&kw);
}

/* Sends the flag changes of `t` to the cluster in one batch. A change the
   cluster did not take is put back locally before the commit, and the
   commit fails: BAD_REQUEST (more than 64 keywords) as a parameter error,
   a message out of reach or a cluster that cannot answer as a temporary
   one. A message gone from the cluster is left to the next sync. */
static void pcp_flush_changes(struct mailbox_transaction_context *t)
{
	struct mailbox *box = t->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_change_set *set = pcp_change_set(pbox, t, FALSE);
	ARRAY(struct porcupine_flag_change) batch;
	ARRAY(const struct pcp_change *) sent;
	const struct pcp_change *ch;
	struct porcupine_flag_change *fc;
	porcupine_client *c;
	struct mail *mail;
	int refused = PORCUPINE_OK;
	unsigned int i, n;

	if (set == NULL)
		return;
	c = pcp_connect(box->storage->user);
	t_array_init(&batch, array_count(&set->changes));
	t_array_init(&sent, array_count(&set->changes));
	mail = mail_alloc(t, 0, NULL);
	array_foreach(&set->changes, ch) {
		const struct porcupine_message *m = NULL;
		int code;

		if (ch->new_flags == ch->old_flags &&
		    pcp_keywords_equal(ch->old_keywords, str_array_length(ch->old_keywords),
				       ch->new_keywords, str_array_length(ch->new_keywords)))
			continue;
		if (!mail_set_uid(mail, ch->uid))
			continue;
		code = c == NULL ? PORCUPINE_UNREACHABLE : pcp_lookup_ref(mail, c, &m);
		if (code != PORCUPINE_OK) {
			e_warning(box->event, "porcupine: flags and keywords of UID %u in %s "
				  "not changed: %s", ch->uid, box->vname,
				  c == NULL ? "no client" : code == PORCUPINE_NOT_FOUND ?
				  "not in the cluster" : code == PORCUPINE_TEMPFAIL && m == NULL ?
				  "its nodes are out of reach" : porcupine_error(c));
			if (code != PORCUPINE_NOT_FOUND) {
				pcp_change_revert(mail, ch);
				refused = code;
			}
			continue;
		}
		fc = array_append_space(&batch);
		fc->ref = m->ref;
		fc->flags = pcp_flags_to_cluster(ch->new_flags);
		fc->keywords = ch->new_keywords;
		fc->nkeywords = str_array_length(ch->new_keywords);
		array_push_back(&sent, &ch);
	}
	fc = array_get_modifiable(&batch, &n);
	if (n > 0) {
		(void)porcupine_set_flags_many(c, box->storage->user->username,
					       box->vname, fc, n);
		for (i = 0; i < n; i++) {
			ch = array_idx_elem(&sent, i);
			if (fc[i].result == PORCUPINE_OK ||
			    fc[i].result == PORCUPINE_NOT_FOUND)
				continue;
			e_warning(box->event, "porcupine: flags and keywords of UID %u in %s "
				  "not changed: code %d (%s)", ch->uid, box->vname,
				  fc[i].result, porcupine_error(c));
			if (mail_set_uid(mail, ch->uid))
				pcp_change_revert(mail, ch);
			if (refused != PORCUPINE_BAD_REQUEST)
				refused = fc[i].result;
		}
	}
	mail_free(&mail);
	if (refused == PORCUPINE_BAD_REQUEST) {
		pcp_fail_transaction(t, MAIL_ERROR_PARAMS,
			"Cluster refused the flags or keywords (at most 64 keywords per message)");
	} else if (refused != PORCUPINE_OK) {
		pcp_fail_transaction(t, MAIL_ERROR_UNAVAILABLE, refused == PORCUPINE_TEMPFAIL ?
				     PCP_UNAVAILABLE_REASON :
				     "Cluster temporarily unavailable, try again later");
	}
}

/* A transaction's flag changes go to the cluster first; one the cluster
   did not take is put back, what it took is committed locally, and then
   the commit fails (IMAP NO). */
static int pcp_transaction_commit(struct mailbox_transaction_context *t,
				  struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	bool failed;
	int ret;

	T_BEGIN {
		pcp_flush_changes(t);
	} T_END;
	pcp_change_set_free(pbox, t);
	failed = pbox->failed_t == t;
	if (failed)
		pbox->failed_t = NULL;
	ret = pbox->module_ctx.super.transaction_commit(t, changes_r);
	if (!failed || ret < 0)
		return ret;
	mail_storage_set_error(box->storage, pbox->failed_error, pbox->failed_reason);
	return -1;
}

static void pcp_transaction_rollback(struct mailbox_transaction_context *t)
{
	struct pcp_mailbox *pbox = PCP_BOX(t->box);

	pcp_change_set_free(pbox, t);
	if (pbox->failed_t == t)
		pbox->failed_t = NULL;
	pbox->module_ctx.super.transaction_rollback(t);
}

static void pcp_mail_expunge(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct pcp_mail *pmail = PCP_MAIL(mail);
	struct mailbox *box = _mail->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);

	if (!pbox->in_sync && seq_range_exists(&pbox->moved, _mail->uid)) {
		/* Moved in the cluster already (IMAP MOVE): only the local
		   copy goes. */
		seq_range_array_remove(&pbox->moved, _mail->uid);
	} else if (!pbox->in_sync) {
		const struct porcupine_message *m = NULL;
		porcupine_client *c = pcp_connect(box->storage->user);
		int code = PORCUPINE_UNREACHABLE;

		if (c != NULL) {
			code = pcp_lookup_ref(_mail, c, &m);
			if (code == PORCUPINE_OK)
				code = porcupine_expunge(c, box->storage->user->username,
							 box->vname, &m->ref);
		}
		/* NOT_FOUND: the cluster has already expunged it. Otherwise
		   the message stays, here and in the cluster, and the
		   transaction fails (EXPUNGE answers NO; POP3 keeps it). */
		if (code != PORCUPINE_OK && code != PORCUPINE_NOT_FOUND) {
			e_warning(box->event, "porcupine: expunge of UID %u in "
				  "%s failed: %s", _mail->uid, box->vname,
				  c == NULL ? "no client" :
				  m == NULL && code == PORCUPINE_TEMPFAIL ?
				  "its nodes are out of reach" : porcupine_error(c));
			pcp_fail_transaction(_mail->transaction, MAIL_ERROR_UNAVAILABLE,
					     m == NULL ? PCP_UNAVAILABLE_REASON :
					     "Cluster temporarily unavailable, try again later");
			return;
		}
	}
	pmail->module_ctx.super.expunge(_mail);
}

/* ---- folders: to the cluster first; at login, from the cluster ---------- */

static int pcp_folder_result(struct mailbox *box, porcupine_client *c, int code,
			     const char *what)
{
	enum mail_error error = MAIL_ERROR_TEMP;

	if (code == PORCUPINE_OK)
		return 0;
	e_error(box->event, "porcupine: %s %s in the cluster failed: %s",
		what, box->vname, c == NULL ? "no client" : porcupine_error(c));
	if (code == PORCUPINE_EXISTS)
		error = MAIL_ERROR_EXISTS;
	else if (code == PORCUPINE_NOT_FOUND)
		error = MAIL_ERROR_NOTFOUND;
	else if (code == PORCUPINE_BAD_REQUEST)
		error = MAIL_ERROR_PARAMS;
	mail_storage_set_error(box->storage, error, error == MAIL_ERROR_TEMP ?
		"Cluster temporarily unavailable, try again later" :
		"Cluster refused the folder operation");
	return -1;
}

static int pcp_create_box(struct mailbox *box, const struct mailbox_update *update,
			  bool directory)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);

	if (!directory && !puser->local_only && !box->inbox_user) {
		porcupine_client *c = pcp_connect(box->storage->user);
		int code = c == NULL ? PORCUPINE_UNREACHABLE :
			porcupine_folder_create(c, box->storage->user->username,
						box->vname);
		/* EXISTS: the cluster has it, this node not yet. */
		if (code != PORCUPINE_EXISTS &&
		    pcp_folder_result(box, c, code, "creating") < 0)
			return -1;
	}
	return pbox->module_ctx.super.create_box(box, update, directory);
}

static int pcp_delete_box(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);

	if (!puser->local_only && !box->inbox_user) {
		porcupine_client *c = pcp_connect(box->storage->user);
		int code = c == NULL ? PORCUPINE_UNREACHABLE :
			porcupine_folder_delete(c, box->storage->user->username,
						box->vname);
		if (code != PORCUPINE_NOT_FOUND &&
		    pcp_folder_result(box, c, code, "deleting") < 0)
			return -1;
	}
	return pbox->module_ctx.super.delete_box(box);
}

static int pcp_rename_box(struct mailbox *src, struct mailbox *dest)
{
	struct pcp_mailbox *pbox = PCP_BOX(src);
	struct pcp_user *puser = PCP_USER(src->storage->user);

	if (!puser->local_only) {
		porcupine_client *c = pcp_connect(src->storage->user);
		int code = c == NULL ? PORCUPINE_UNREACHABLE :
			porcupine_folder_rename(c, src->storage->user->username,
						src->vname, dest->vname);
		if (pcp_folder_result(src, c, code, "renaming") < 0)
			return -1;
	}
	return pbox->module_ctx.super.rename_box(src, dest);
}

/* Makes the local folder list follow the cluster's: creates (and
   subscribes) the cluster's folders this node lacks, deletes (and
   unsubscribes) local folders the cluster no longer has. Failures are
   logged and the local list is served. */
static void pcp_follow_folders(struct mail_namespace *ns)
{
	struct mail_user *user = ns->user;
	struct pcp_user *puser = PCP_USER(user);
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	ARRAY_TYPE(const_string) stale;
	const char *const *namep;
	porcupine_client *c;
	char **names = NULL;
	size_t count = 0, i;
	int code;

	if (puser == NULL || puser->local_only)
		return;
	puser->last_follow = ioloop_timeval;
	c = pcp_connect(user);
	code = c == NULL ? PORCUPINE_UNREACHABLE :
		porcupine_folders_get(c, user->username, &names, &count);
	if (code != PORCUPINE_OK) {
		e_warning(user->event, "porcupine: listing the folders failed "
			  "(serving the local list): %s",
			  c == NULL ? "no client" : porcupine_error(c));
		return;
	}
	puser->local_only = TRUE;
	T_BEGIN {
		for (i = 0; i < count; i++) {
			struct mailbox *box;
			enum mailbox_existence existence;

			if (strcmp(names[i], "INBOX") == 0)
				continue;
			box = mailbox_alloc(ns->list, names[i], 0);
			if (mailbox_exists(box, FALSE, &existence) == 0 &&
			    existence == MAILBOX_EXISTENCE_NONE) {
				if (mailbox_create(box, NULL, FALSE) < 0) {
					e_warning(user->event, "porcupine: creating %s "
						  "locally failed: %s", names[i],
						  mailbox_get_last_internal_error(box, NULL));
				} else if (mailbox_set_subscribed(box, TRUE) < 0) {
					e_warning(user->event, "porcupine: subscribing %s "
						  "failed: %s", names[i],
						  mailbox_get_last_internal_error(box, NULL));
				}
			}
			mailbox_free(&box);
		}
		t_array_init(&stale, 8);
		iter = mailbox_list_iter_init(ns->list, "*", MAILBOX_LIST_ITER_NO_AUTO_BOXES |
					      MAILBOX_LIST_ITER_RETURN_NO_FLAGS);
		while ((info = mailbox_list_iter_next(iter)) != NULL) {
			bool known = strcmp(info->vname, "INBOX") == 0;
			if ((info->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) != 0)
				continue;
			for (i = 0; i < count && !known; i++)
				known = strcmp(names[i], info->vname) == 0;
			if (!known) {
				const char *name = t_strdup(info->vname);
				array_push_back(&stale, &name);
			}
		}
		(void)mailbox_list_iter_deinit(&iter);
		array_foreach(&stale, namep) {
			struct mailbox *box = mailbox_alloc(ns->list, *namep, 0);
			if (mailbox_delete(box) < 0) {
				e_warning(user->event, "porcupine: deleting %s locally failed: %s",
					  *namep, mailbox_get_last_internal_error(box, NULL));
			}
			(void)mailbox_set_subscribed(box, FALSE);
			mailbox_free(&box);
		}
	} T_END;
	puser->local_only = FALSE;
	porcupine_folders_free(names, count);
}

/* At login. A user without an INBOX namespace (LMTP's raw mail user) has
   no folders; mail_namespace_find_inbox() asserts there is one. LMTP does
   not follow: a delivery names its folder and the cluster knows it, and a
   cluster that does not answer costs the delivery one deadline, not two. */
static void pcp_namespaces_created(struct mail_namespace *namespaces)
{
	struct mail_namespace *ns;

	if (namespaces != NULL && namespaces->user->service != NULL &&
	    strcmp(namespaces->user->service, "lmtp") == 0)
		return;
	for (ns = namespaces; ns != NULL; ns = ns->next) {
		if ((ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0)
			break;
	}
	if (ns != NULL && PCP_USER(ns->user) != NULL)
		pcp_follow_folders(ns);
}

/* LIST (and any other walk of the folder list) follows the cluster's
   folder list first, at most once per PCP_FOLLOW_INTERVAL_MS. */
static struct mailbox_list_iterate_context *
pcp_list_iter_init(struct mailbox_list *list, const char *const *patterns,
		   enum mailbox_list_iter_flags flags)
{
	union mailbox_list_module_context *plist = PCP_LIST(list);
	struct mail_namespace *ns = list->ns;
	struct pcp_user *puser = PCP_USER(ns->user);

	if (puser != NULL && !puser->local_only &&
	    (ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0 &&
	    timeval_diff_msecs(&ioloop_timeval, &puser->last_follow) >= PCP_FOLLOW_INTERVAL_MS) {
		T_BEGIN {
			pcp_follow_folders(ns);
		} T_END;
	}
	return plist->super.iter_init(list, patterns, flags);
}

/* ---- hooks ---------------------------------------------------------------- */

static void pcp_user_deinit(struct mail_user *user)
{
	struct pcp_user *puser = PCP_USER(user);

	if (puser->client != NULL)
		porcupine_close(puser->client);
	puser->client = NULL;
	puser->module_ctx.super.deinit(user);
}

static void pcp_mail_user_created(struct mail_user *user)
{
	struct mail_user_vfuncs *v = user->vlast;
	const char *path = mail_user_plugin_getenv(user, "porcupine_socket");
	const char *timeout = mail_user_plugin_getenv(user, "porcupine_timeout_ms");
	const char *poll = mail_user_plugin_getenv(user, "porcupine_idle_poll_ms");
	struct pcp_user *puser;

	if (path == NULL || *path == '\0')
		return;
	puser = p_new(user->pool, struct pcp_user, 1);
	puser->module_ctx.super = *v;
	user->vlast = &puser->module_ctx.super;
	v->deinit = pcp_user_deinit;
	puser->socket_path = p_strdup(user->pool, path);
	puser->timeout_ms = timeout != NULL && atoi(timeout) > 0 ?
		atoi(timeout) : PCP_DEFAULT_TIMEOUT_MS;
	puser->idle_poll_ms = poll != NULL && atoi(poll) > 0 ?
		(unsigned int)atoi(poll) : PCP_DEFAULT_IDLE_POLL_MS;
	MODULE_CONTEXT_SET(user, pcp_user_module, puser);
}

static void pcp_mailbox_list_created(struct mailbox_list *list)
{
	struct mailbox_list_vfuncs *v = list->vlast;
	union mailbox_list_module_context *plist;

	if (PCP_USER(list->ns->user) == NULL)
		return;
	plist = p_new(list->pool, union mailbox_list_module_context, 1);
	plist->super = *v;
	list->vlast = &plist->super;
	v->iter_init = pcp_list_iter_init;
	MODULE_CONTEXT_SET_SELF(list, pcp_list_module, plist);
}

static void pcp_mailbox_free(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	timeout_remove(&pbox->to_poll);
	pbox->module_ctx.super.free(box);
	porcupine_folder_free(&pbox->listing);
	array_free(&pbox->saves);
	array_free(&pbox->moved);
	array_free(&pbox->out_of_reach);
	array_free(&pbox->change_sets);
}

/* Only the local storages the plugin knows how to use as a cache. */
static bool pcp_storage_supported(const struct mail_storage *storage)
{
	return strcmp(storage->name, "sdbox") == 0 ||
		strcmp(storage->name, "mdbox") == 0 ||
		strcmp(storage->name, "maildir") == 0;
}

static void pcp_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct pcp_mailbox *pbox;

	if (PCP_USER(box->storage->user) == NULL ||
	    !pcp_storage_supported(box->storage))
		return;
	pbox = p_new(box->pool, struct pcp_mailbox, 1);
	pbox->module_ctx.super = *v;
	box->vlast = &pbox->module_ctx.super;
	i_array_init(&pbox->saves, 4);
	i_array_init(&pbox->moved, 4);
	i_array_init(&pbox->out_of_reach, 4);
	i_array_init(&pbox->change_sets, 2);

	v->free = pcp_mailbox_free;
	v->create_box = pcp_create_box;
	v->delete_box = pcp_delete_box;
	v->rename_box = pcp_rename_box;
	v->get_status = pcp_get_status;
	v->notify_changes = pcp_notify_changes;
	v->sync_init = pcp_sync_init;
	v->save_alloc = pcp_save_alloc;
	v->save_begin = pcp_save_begin;
	v->save_continue = pcp_save_continue;
	v->save_finish = pcp_save_finish;
	v->save_cancel = pcp_save_cancel;
	v->copy = pcp_copy;
	v->transaction_save_commit_pre = pcp_transaction_save_commit_pre;
	v->transaction_save_commit_post = pcp_transaction_save_commit_post;
	v->transaction_save_rollback = pcp_transaction_save_rollback;
	v->transaction_commit = pcp_transaction_commit;
	v->transaction_rollback = pcp_transaction_rollback;
	MODULE_CONTEXT_SET(box, pcp_storage_module, pbox);
}

/* ---- placeholders: content from the cluster at each read ------------------ */

/* The body of a placeholder, fetched now; a temporary error (for this
   message only: IMAP FETCH goes on with the others) while no holder gives
   it. */
static int pcp_placeholder_stream(struct mail *_mail, const struct pcp_ext_rec *rec,
				  struct message_size *hdr_size,
				  struct message_size *body_size,
				  struct istream **stream_r)
{
	struct index_mail *imail = (struct index_mail *)_mail;
	struct mailbox *box = _mail->box;

	if (_mail->lookup_abort != MAIL_LOOKUP_ABORT_NEVER) {
		mail_set_aborted(_mail);
		return -1;
	}
	_mail->mail_stream_accessed = TRUE;
	if (imail->data.stream == NULL) {
		porcupine_client *c = pcp_connect(box->storage->user);
		struct porcupine_msgref ref;
		char *body = NULL;
		size_t len = 0;
		int code = PORCUPINE_UNREACHABLE;

		pcp_ref_from_ext(&ref, rec);
		if (c != NULL)
			code = porcupine_fetch(c, box->storage->user->username,
					       box->vname, &ref, &body, &len);
		if (code == PORCUPINE_NOT_FOUND) {
			mail_set_expunged(_mail);
			return -1;
		}
		if (code != PORCUPINE_OK) {
			e_warning(box->event, "porcupine: UID %u of %s: no holder "
				  "gave its body: %s", _mail->uid, box->vname,
				  c == NULL ? "no client" : porcupine_error(c));
			mail_storage_set_error(box->storage, MAIL_ERROR_UNAVAILABLE,
					       PCP_UNAVAILABLE_REASON);
			return -1;
		}
		imail->data.stream = i_stream_create_copy_from_data(body, len);
		porcupine_body_free(body);
	}
	return index_mail_init_stream(imail, hdr_size, body_size, stream_r);
}

static int pcp_mail_get_stream(struct mail *_mail, bool get_body,
			       struct message_size *hdr_size,
			       struct message_size *body_size,
			       struct istream **stream_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);
	const struct pcp_ext_rec *rec = pcp_placeholder(_mail);

	if (rec == NULL)
		return pmail->module_ctx.super.get_stream(_mail, get_body, hdr_size,
							  body_size, stream_r);
	return pcp_placeholder_stream(_mail, rec, hdr_size, body_size, stream_r);
}

/* Sizes of a placeholder: from Dovecot's cache, or its content. */
static int pcp_mail_get_physical_size(struct mail *_mail, uoff_t *size_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);

	if (pcp_placeholder(_mail) == NULL)
		return pmail->module_ctx.super.get_physical_size(_mail, size_r);
	return index_mail_get_physical_size(_mail, size_r);
}

static int pcp_mail_get_virtual_size(struct mail *_mail, uoff_t *size_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);

	if (pcp_placeholder(_mail) == NULL)
		return pmail->module_ctx.super.get_virtual_size(_mail, size_r);
	return index_mail_get_virtual_size(_mail, size_r);
}

/* The internal date of a placeholder (the cluster's, from its stamp) into
   *date_r; FALSE for any other message. */
static bool pcp_placeholder_date(struct mail *mail, time_t *date_r)
{
	const struct pcp_ext_rec *rec = pcp_placeholder(mail);

	if (rec == NULL)
		return FALSE;
	*date_r = (time_t)(rec->internal_date_ms / 1000);
	return TRUE;
}

static int pcp_mail_get_received_date(struct mail *_mail, time_t *date_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);

	return pcp_placeholder_date(_mail, date_r) ? 0 :
		pmail->module_ctx.super.get_received_date(_mail, date_r);
}

static int pcp_mail_get_save_date(struct mail *_mail, time_t *date_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);

	return pcp_placeholder_date(_mail, date_r) ? 1 :
		pmail->module_ctx.super.get_save_date(_mail, date_r);
}

/* What the local storage would read from its own file, for a placeholder
   (which has none); the rest Dovecot derives from the content. */
static int pcp_mail_get_special(struct mail *_mail, enum mail_fetch_field field,
				const char **value_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);
	const struct pcp_ext_rec *rec = pcp_placeholder(_mail);

	if (rec == NULL)
		return pmail->module_ctx.super.get_special(_mail, field, value_r);
	switch (field) {
	case MAIL_FETCH_GUID:
		*value_r = p_strdup_printf(((struct mail_private *)_mail)->data_pool, "porcupine-%u-%llu",
					   rec->origin, (unsigned long long)rec->seq);
		return 0;
	case MAIL_FETCH_REFCOUNT:
		*value_r = "1";
		return 0;
	case MAIL_FETCH_UIDL_BACKEND:
	case MAIL_FETCH_POP3_ORDER:
	case MAIL_FETCH_STORAGE_ID:
		*value_r = "";
		return 0;
	default:
		return index_mail_get_special(_mail, field, value_r);
	}
}

static void pcp_mail_allocated(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mail_vfuncs *v = mail->vlast;
	struct pcp_mail *pmail;

	if (PCP_BOX(_mail->box) == NULL)
		return;
	pmail = p_new(mail->pool, struct pcp_mail, 1);
	pmail->module_ctx.super = *v;
	mail->vlast = &pmail->module_ctx.super;
	v->update_flags = pcp_mail_update_flags;
	v->update_keywords = pcp_mail_update_keywords;
	v->expunge = pcp_mail_expunge;
	v->get_stream = pcp_mail_get_stream;
	v->get_physical_size = pcp_mail_get_physical_size;
	v->get_virtual_size = pcp_mail_get_virtual_size;
	v->get_received_date = pcp_mail_get_received_date;
	v->get_save_date = pcp_mail_get_save_date;
	v->get_special = pcp_mail_get_special;
	MODULE_CONTEXT_SET(mail, pcp_mail_module, pmail);
}

static struct mail_storage_hooks pcp_hooks = {
	.mail_user_created = pcp_mail_user_created,
	.mail_namespaces_created = pcp_namespaces_created,
	.mailbox_list_created = pcp_mailbox_list_created,
	.mailbox_allocated = pcp_mailbox_allocated,
	.mail_allocated = pcp_mail_allocated,
};

void porcupine_plugin_init(struct module *module)
{
	mail_storage_hooks_add(module, &pcp_hooks);
}

void porcupine_plugin_deinit(void)
{
	mail_storage_hooks_remove(&pcp_hooks);
}
