/* SPDX-License-Identifier: MIT */
/* porcupine-sync.c - mailbox sync with the cluster: every sync of a
 * mailbox (SELECT, EXAMINE, NOOP, CHECK, IDLE's wake-ups, POP3 login, any
 * mailbox_sync) first lists the folder in the cluster and makes the local
 * index match it, then lets the local storage sync as before. What to
 * change is decided by porcupine-decide.c on the listing and the index's
 * records: a new UIDVALIDITY empties the index; listed messages the index
 * lacks are added as records only (UID, flags, keywords, internal date,
 * sizes; no body moves: porcupine-mail.c reads it through the node's agent
 * when a client asks for it); indexed ones get the cluster's flags and
 * keywords; ones the cluster no longer lists are expunged unless their
 * holders are out of reach. An index of an older layout (records with
 * bodies) or one the local storage rebuilt is emptied and filled again.
 * The sync of one mailbox holds a lock (dovecot-porcupine.lock beside its
 * index, Dovecot's lock helpers) so two processes of a node never both add
 * the same message; a sync that cannot take it in time fails with a
 * temporary error.
 *
 * A sync that finds the index as the last full one left it (extension
 * "porcupine-synced": its UIDVALIDITY, messages, next UID and highest
 * modseq, which every append, expunge, flag and keyword change moves)
 * asks the cluster only for the folder's digest: the same digest as that
 * sync's listing, nothing to take. A warm SELECT or a NOOP of a large
 * folder moves one number per holder instead of every record.
 *
 * Also here: STATUS of a mailbox that is not open syncs it first, and
 * IDLE polls the cluster's digest of the selected folder. */
#include "porcupine-plugin.h"
#include "ioloop.h"
#include "file-lock.h"
#include "mail-index-modseq.h"

#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>

#include <string.h>

/* Logs a failed change of the local index. A mailbox deleted meanwhile by
   another process of this node (DELETE, RENAME, or the folder list
   following the cluster) is not an error of the index: Dovecot's own sync
   reports it to the client as for a stock mailbox. */
static void pcp_local_failed(struct mailbox *box, const char *what)
{
	enum mail_error error;
	const char *reason = mailbox_get_last_internal_error(box, &error);

	if (error == MAIL_ERROR_NOTFOUND || box->mailbox_deleted)
		e_debug(box->event, "porcupine: %s: mailbox deleted meanwhile: %s", what, reason);
	else
		e_error(box->event, "porcupine: %s failed: %s", what, reason);
}

static int pcp_commit(struct mailbox_transaction_context **t)
{
	struct mailbox *box = (*t)->box;

	if (mailbox_transaction_commit(t) < 0) {
		pcp_local_failed(box, "committing the local index");
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
			  "emptying the local index of %s",
			  hdr->uid_validity, uid_validity, pcp_log_name(box->vname));
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
		pcp_local_failed(box, t_strdup_printf("setting UIDVALIDITY %u on %s",
						      uid_validity, pcp_log_name(box->vname)));
		return -1;
	}
	return 0;
}

/* Copies the header of extension `name` (when the index has it) from
   `view` into `t`, after its reset. */
static void pcp_keep_header(struct mail_index_view *view,
			    struct mail_index_transaction *t, const char *name)
{
	const void *data = NULL;
	size_t size = 0;
	uint32_t ext_id;

	if (!mail_index_ext_lookup(mail_index_view_get_index(view), name, &ext_id))
		return;
	mail_index_get_header_ext(view, ext_id, &data, &size);
	if (size > 0)
		mail_index_update_header_ext(t, ext_id, 0, data, size);
}

/* Removes the message files an older version kept in the local storage
   (sdbox's u.<UID>); what fails is logged and left. */
static void pcp_unlink_old_bodies(struct mailbox *box)
{
	const char *dir;
	struct dirent *d;
	DIR *dirp;
	unsigned int removed = 0;

	if (mailbox_get_path_to(box, MAILBOX_LIST_PATH_TYPE_MAILBOX, &dir) <= 0 ||
	    (dirp = opendir(dir)) == NULL)
		return;
	while ((d = readdir(dirp)) != NULL) {
		const char *p = d->d_name;

		if (p[0] != 'u' || p[1] != '.' || p[2] < '0' || p[2] > '9' ||
		    strspn(p + 2, "0123456789") != strlen(p + 2))
			continue;
		if (unlinkat(dirfd(dirp), p, 0) == 0)
			removed++;
		else if (errno != ENOENT)
			e_warning(box->event, "porcupine: removing %s/%s failed: %m", dir, p);
	}
	(void)closedir(dirp);
	if (removed > 0) {
		e_info(box->event, "porcupine: removed %u message files of an older "
		       "version from %s (their bodies are the cluster's)", removed,
		       pcp_log_name(box->vname));
	}
}

/* The index is not of this layout (PCP_INDEX_LAYOUT): written by an older
   version, with bodies in the local storage, or rebuilt by the local
   storage, which keeps the next UID and drops every bodiless record. Its
   records cannot simply be added again (UIDs below the next one), and
   renumbering them in the cluster would change every client's UIDs: the
   index is emptied (as the storage's own rebuild does it, keeping its
   header) with the cluster's UIDVALIDITY, and the sync fills it again. */
static int pcp_relayout(struct mailbox *box, struct mail_index_view *view,
			uint32_t uid_validity)
{
	const struct mail_index_header *hdr = mail_index_get_header(view);
	struct mailbox_transaction_context *t;
	struct pcp_index_hdr layout;

	e_warning(box->event, "porcupine: the index of %s is of an older "
		  "layout or was rebuilt (%u messages, next UID %u): emptying it "
		  "and adding the cluster's records again", pcp_log_name(box->vname),
		  hdr->messages_count, hdr->next_uid);
	t = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_EXTERNAL, __func__);
	mail_index_reset(t->itrans);
	pcp_keep_header(view, t->itrans, "dbox-hdr");
	mail_index_update_header(t->itrans,
		offsetof(struct mail_index_header, uid_validity),
		&uid_validity, sizeof(uid_validity), TRUE);
	i_zero(&layout);
	layout.layout = PCP_INDEX_LAYOUT;
	mail_index_update_header_ext(t->itrans, pcp_size_ext_id(box), 0,
				     &layout, sizeof(layout));
	if (pcp_commit(&t) < 0)
		return -1;
	pcp_unlink_old_bodies(box);
	return 0;
}

/* Adds message `m` to the local index: a record with the cluster's UID,
   flags, keywords, internal date and sizes, stamped with where the cluster
   keeps it. No body is written here: the node's agent gives it when it is
   read (porcupine-mail.c), from its own copy, its cache or a holder. Its
   BODYSTRUCTURE comes into the cache when a FETCH first wants it
   (porcupine-meta.c). */
static void pcp_append_record(struct mailbox_transaction_context *t,
			      const struct porcupine_message *m)
{
	uint32_t seq;

	mail_index_append(t->itrans, m->uid, &seq);
	if (m->flags != 0) {
		mail_index_update_flags(t->itrans, seq, MODIFY_REPLACE,
					pcp_flags_from_cluster(m->flags));
	}
	if (m->nkeywords > 0) {
		struct mail_keywords *kw = pcp_cluster_keywords(t->box, m);
		mail_index_update_keywords(t->itrans, seq, MODIFY_REPLACE, kw);
		mailbox_keywords_unref(&kw);
	}
	pcp_stamp(t, seq, m, TRUE, PCP_EXT_BODILESS);
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

/* Makes the local index of `box` match the cluster's listing `folder`, as
   porcupine-decide.c decides: reset, flags and keywords, expunges, and the
   missing messages' records added. */
static int pcp_apply(struct mailbox *box, porcupine_client *c,
		     const struct porcupine_folder *folder)
{
	struct mailbox_transaction_context *t;
	struct mail_index_view *view;
	const struct mail_index_header *hdr;
	struct mail *mail;
	struct pcp_decide_listing listing;
	struct pcp_decide_local *local;
	struct pcp_decide_result res;
	uint32_t *uids, *origins, *tseqs;
	uint64_t *seqs;
	unsigned int i;
	uint32_t layout;
	uint32_t seq, count, next_uid;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	size_t li, ci;
	int ret = 0;

	array_clear(&pbox->out_of_reach);
	pbox->renumber_asked = FALSE;
	if (folder->uidvalidity == 0) {
		/* The cluster has no such folder (deleted or renamed on another
		   node): the index stays as it is, the sync fails (sync_deinit)
		   and the folder list's next follow deletes it here. INBOX
		   always exists. */
		pbox->gone = !box->inbox_user && strcmp(box->vname, "INBOX") != 0;
		return 0;
	}
	(void)mail_index_refresh(box->index);
	view = mail_index_view_open(box->index);
	hdr = mail_index_get_header(view);
	layout = pcp_index_layout(box, view);
	if (layout != PCP_INDEX_LAYOUT && (hdr->messages_count > 0 || hdr->next_uid > 1)) {
		ret = pcp_relayout(box, view, folder->uidvalidity);
		mail_index_view_close(&view);
		if (ret < 0)
			return -1;
		(void)mail_index_refresh(box->index);
		view = mail_index_view_open(box->index);
		hdr = mail_index_get_header(view);
		layout = pcp_index_layout(box, view);
	}
	if (pcp_decide_reset(hdr->uid_validity, folder->uidvalidity)) {
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

	t = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_EXTERNAL,
				      __func__);
	mail = mail_alloc(t, MAIL_FETCH_FLAGS, NULL);
	/* The indexed messages in UID order: still there (not expunged
	   meanwhile by another process), and where the cluster keeps them. */
	local = t_new(struct pcp_decide_local, count + 1);
	tseqs = t_new(uint32_t, count + 1);
	for (seq = 1; seq <= count; seq++) {
		const struct mail_index_record *rec = mail_index_lookup(view, seq);
		struct pcp_decide_local *l = &local[seq - 1];

		l->uid = rec->uid;
		l->present = mail_set_uid(mail, rec->uid);
		if (l->present) {
			tseqs[seq - 1] = mail->seq;
			pcp_local_holders(box, t->view, mail->seq, l);
		}
	}
	uids = t_new(uint32_t, folder->count + 1);
	origins = t_new(uint32_t, folder->count + 1);
	seqs = t_new(uint64_t, folder->count + 1);
	for (ci = 0; ci < folder->count; ci++) {
		uids[ci] = folder->messages[ci].uid;
		origins[ci] = folder->messages[ci].ref.origin;
		seqs[ci] = folder->messages[ci].ref.seq;
	}
	i_zero(&listing);
	listing.uids = uids;
	listing.count = folder->count;
	listing.origins = origins;
	listing.seqs = seqs;
	listing.reachable = folder->reachable;
	listing.nreachable = folder->nreachable;
	i_zero(&res);
	res.action = t_new(enum pcp_decide_action, count + 1);
	res.listed = t_new(size_t, count + 1);
	res.add = t_new(size_t, folder->count + 1);
	res.below_next_uid = t_new(size_t, folder->count + 1);
	pcp_decide_merge(&listing, local, count, next_uid, &res);

	for (li = 0; li < count; li++) {
		const struct porcupine_message *m;
		unsigned int want;

		if (res.action[li] == PCP_KEEP_SKIPPED)
			continue;
		mail_set_seq(mail, tseqs[li]);
		switch (res.action[li]) {
		case PCP_KEEP_LISTED:
			m = &folder->messages[res.listed[li]];
			if (pcp_decide_flags(m->flags, mail_get_flags(mail), &want))
				mail_update_flags(mail, MODIFY_REPLACE, (enum mail_flags)want);
			pcp_sync_keywords(mail, m);
			pcp_stamp(t, mail->seq, m, FALSE, 0);
			break;
		case PCP_KEEP_OUT_OF_REACH:
			/* Its nodes are down or silent: not gone. Listed, and
			   read from the node's cache while it has the body,
			   until they answer again. */
			seq_range_array_add(&pbox->out_of_reach, local[li].uid);
			break;
		case PCP_EXPUNGE:
			mail_expunge(mail);
			break;
		case PCP_KEEP_SKIPPED:
			break;
		}
	}
	mail_free(&mail);
	mail_index_view_close(&view);
	if (array_count(&pbox->out_of_reach) > 0) {
		e_warning(box->event, "porcupine: %u messages of %s are on nodes "
			  "out of reach; keeping them listed",
			  seq_range_count(&pbox->out_of_reach), pcp_log_name(box->vname));
	}

	/* UIDs the index already passed. */
	pbox->renumber_asked = res.nbelow > 0;
	for (ci = 0; ci < res.nbelow; ci++) {
		/* The local index already used this UID (a store that
		   completed after its delivery was given up, one on its way
		   when its manager died, one from the other side of a split):
		   it cannot take the message there, and asks the cluster to
		   move it to a new UID at the end; a later sync takes it. */
		const struct porcupine_message *m =
			&folder->messages[res.below_next_uid[ci]];
		int rc = porcupine_renumber(c, box->storage->user->username,
					    box->vname, &m->ref, folder->uidvalidity,
					    m->uid, next_uid - 1);
		if (rc == PORCUPINE_OK) {
			e_info(box->event, "porcupine: UID %u of %s is below the "
			       "local next UID %u and not indexed: the cluster moves it "
			       "to a new UID if it is still there", m->uid, pcp_log_name(box->vname),
			       next_uid);
		} else {
			e_warning(box->event, "porcupine: UID %u of %s is below the "
				  "local next UID %u; not indexed, and moving it "
				  "failed: %s", m->uid, pcp_log_name(box->vname), next_uid,
				  porcupine_error(c));
		}
	}
	/* The missing messages, in UID order: their records only, and their
	   metas owed. */
	for (i = 0; i < res.nadd; i++)
		pcp_append_record(t, &folder->messages[res.add[i]]);
	if (res.nadd > 0)
		pcp_meta_owe(t, folder->messages[res.add[0]].uid);
	if (layout != PCP_INDEX_LAYOUT) {
		/* A new index: bodiless records from its start. */
		struct pcp_index_hdr ihdr;

		i_zero(&ihdr);
		ihdr.layout = PCP_INDEX_LAYOUT;
		mail_index_update_header_ext(t->itrans, pcp_size_ext_id(box), 0,
					     &ihdr, sizeof(ihdr));
	}
	return pcp_commit(&t);
}

static int pcp_index_dir_stat(struct mailbox *box, struct stat *st_r)
{
	const char *dir;

	if (mailbox_get_path_to(box, MAILBOX_LIST_PATH_TYPE_INDEX, &dir) <= 0)
		return 0;
	return stat(dir, st_r) == 0 ? 1 : -1;
}

void pcp_remember_index_dir(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct stat st;

	pbox->index_dev = 0;
	pbox->index_ino = 0;
	if (pcp_index_dir_stat(box, &st) > 0) {
		pbox->index_dev = st.st_dev;
		pbox->index_ino = st.st_ino;
	}
}

/* Whether another process of this node deleted the open mailbox (its
   index directory is gone, or is another one: deleted and created again).
   Its index must not be touched then: Dovecot would read the new
   mailbox's transaction log as the continuation of the old one. */
static bool pcp_deleted_under_us(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct stat st;
	int ret;

	if (pbox->index_ino == 0)
		return FALSE;
	ret = pcp_index_dir_stat(box, &st);
	if (ret > 0 && st.st_dev == pbox->index_dev && st.st_ino == pbox->index_ino)
		return FALSE;
	if (ret < 0 && errno != ENOENT)
		return FALSE;
	return TRUE;
}

/* Serialises the syncs of one mailbox between the processes of this node,
   so two of them never both save the same cluster message: a lock file
   beside the index (dovecot-porcupine.lock), taken with Dovecot's
   mailbox_lock_file_create() (the storage's lock_method and permissions),
   waiting at most PCP_SYNC_LOCK_TIMEOUT_SECS (mail_max_lock_timeout if
   lower). 1 with *lock_r held; 0 when it could not be taken in time
   (logged); -1 when the mailbox has no index directory or the lock could
   not be made (logged): the sync then goes on unlocked. */
int pcp_lock(struct mailbox *box, struct file_lock **lock_r)
{
	const char *dir, *error;
	int ret;

	*lock_r = NULL;
	if (mailbox_get_path_to(box, MAILBOX_LIST_PATH_TYPE_INDEX, &dir) <= 0 ||
	    box->index == NULL || box->index->dir == NULL)
		return -1;
	ret = mailbox_lock_file_create(box, PCP_SYNC_LOCK_FNAME,
				       PCP_SYNC_LOCK_TIMEOUT_SECS, lock_r, &error);
	if (ret == 0) {
		e_error(box->event, "porcupine: syncing %s failed: another process "
			"still syncs it after %u s: %s", pcp_log_name(box->vname),
			mail_storage_get_lock_timeout(box->storage,
						      PCP_SYNC_LOCK_TIMEOUT_SECS),
			error);
	} else if (ret < 0 && !pcp_deleted_under_us(box)) {
		e_warning(box->event, "porcupine: locking %s for its sync failed "
			  "(syncing unlocked): %s", pcp_log_name(box->vname), error);
	}
	return ret;
}

static uint32_t pcp_synced_ext_id(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	return pcp_ext_register(box, &pbox->synced_ext, "porcupine-synced",
				sizeof(struct pcp_synced_hdr), 0, 0);
}

/* The state of the index `view` shows, as pcp_synced_hdr keeps it. */
static void pcp_index_state(struct mail_index_view *view, uint64_t digest,
			    struct pcp_synced_hdr *state_r)
{
	const struct mail_index_header *hdr = mail_index_get_header(view);

	i_zero(state_r);
	state_r->digest = digest;
	state_r->highest_modseq = mail_index_modseq_get_highest(view);
	state_r->uid_validity = hdr->uid_validity;
	state_r->messages_count = hdr->messages_count;
	state_r->next_uid = hdr->next_uid;
}

/* TRUE when the index of `box` is as the last full sync left it and the
   cluster's digest of the folder (*digest_r) is still that sync's. */
static bool pcp_synced_still(struct mailbox *box, porcupine_client *c,
			     uint64_t *digest_r)
{
	struct mail_index_view *view;
	struct pcp_synced_hdr kept, now;
	const void *data = NULL;
	size_t size = 0;
	bool same = FALSE;

	if (mail_index_refresh(box->index) < 0)
		return FALSE;
	view = mail_index_view_open(box->index);
	mail_index_get_header_ext(view, pcp_synced_ext_id(box), &data, &size);
	if (data != NULL && size >= sizeof(kept)) {
		memcpy(&kept, data, sizeof(kept));
		pcp_index_state(view, kept.digest, &now);
		same = kept.digest != 0 && kept.highest_modseq != 0 &&
			memcmp(&kept, &now, sizeof(kept)) == 0;
	}
	mail_index_view_close(&view);
	if (!same)
		return FALSE;
	if (porcupine_folder_digest(c, box->storage->user->username, box->vname,
				    digest_r) != PORCUPINE_OK)
		return FALSE;
	return *digest_r == kept.digest;
}

/* Records `digest` (0: none to trust) with the index's state now. */
static void pcp_synced_record(struct mailbox *box, uint64_t digest)
{
	struct mail_index_transaction *trans;
	struct mail_index_view *view;
	struct pcp_synced_hdr state;

	/* Every change of a message moves the highest modseq from now on. */
	mail_index_modseq_enable(box->index);
	if (mail_index_refresh(box->index) < 0)
		return;
	view = mail_index_view_open(box->index);
	pcp_index_state(view, digest, &state);
	trans = mail_index_transaction_begin(view, MAIL_INDEX_TRANSACTION_FLAG_EXTERNAL);
	mail_index_update_header_ext(trans, pcp_synced_ext_id(box), 0,
				     &state, sizeof(state));
	if (mail_index_transaction_commit(&trans) < 0)
		e_debug(box->event, "porcupine: recording the sync of %s failed",
			pcp_log_name(box->vname));
	mail_index_view_close(&view);
}

/* Makes the local index of `box` match the cluster. On failure the local
   index is served as it is. */
static int pcp_sync_from_cluster(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct mail_user *user = box->storage->user;
	struct porcupine_folder folder;
	porcupine_client *c;
	uint64_t digest;
	int code, ret;

	c = pcp_connect(user);
	if (c == NULL)
		return -1;
	if (pcp_synced_still(box, c, &digest)) {
		/* (Only then: IDLE's poll compares with the digest the index
		   reflects, never with one a failed listing did not bring.) */
		pbox->synced_digest = digest;
		array_clear(&pbox->out_of_reach);
		return 0;
	}
	/* Without metas: a FETCH that wants them takes them later. */
	code = porcupine_folder_list(c, user->username, box->vname, &folder);
	if (code != PORCUPINE_OK) {
		e_warning(box->event, "porcupine: listing %s failed (serving the "
			  "local index): %s", pcp_log_name(box->vname), porcupine_error(c));
		return -1;
	}
	pbox->in_sync = TRUE;
	T_BEGIN {
		struct file_lock *lock = NULL;

		int locked = pcp_lock(box, &lock);

		if (locked != 0 && pcp_deleted_under_us(box)) {
			/* As a stock Dovecot: NO, or BYE if it is selected. */
			e_debug(box->event, "porcupine: %s was deleted under this "
				"process; not syncing it", pcp_log_name(box->vname));
			mailbox_set_deleted(box);
			pbox->deleted_under_us = TRUE;
			ret = -1;
		} else if (locked == 0) {
			/* Another process syncs it and did not finish in
			   time: this sync fails (sync_deinit). */
			pbox->sync_lock_timed_out = TRUE;
			ret = -1;
		} else {
			ret = pcp_apply(box, c, &folder);
		}
		if (lock != NULL) {
			/* Deleted meanwhile by another process: its lock file
			   went with the directory. */
			if (pcp_deleted_under_us(box))
				file_lock_set_unlink_on_free(lock, FALSE);
			file_lock_free(&lock);
		}
	} T_END;
	pbox->in_sync = FALSE;
	pbox->synced_digest = ret == 0 ? folder.digest : 0;
	pbox->record_due = ret == 0;
	pbox->record_digest = array_count(&pbox->out_of_reach) == 0 &&
		!pbox->renumber_asked ? folder.digest : 0;
	pcp_set_refs(pbox, &folder);
	/* Sequences may have moved: nothing opened ahead is kept. */
	pcp_read_ahead_clear(pbox);
	pbox->last_read_seq = 0;
	return ret;
}

struct mailbox_sync_context *
pcp_sync_init(struct mailbox *box, enum mailbox_sync_flags flags)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	/* A mailbox being deleted (mailbox_delete() syncs it while holding
	   the folder list's lock) has nothing to take from the cluster. */
	pbox->gone = FALSE;
	if (!pbox->in_sync && !box->deleting)
		(void)pcp_sync_from_cluster(box);
	if (pbox->deleted_under_us) {
		pbox->deleted_under_us = FALSE;
		return index_mailbox_sync_init(box, flags, TRUE);
	}
	return pbox->module_ctx.super.sync_init(box, flags);
}

/* The local storage's sync, then the failure of a sync that could not take
   the mailbox's lock in time: a temporary error (IMAP NO), while the
   local index stays as it was. */
int pcp_sync_deinit(struct mailbox_sync_context *ctx,
		    struct mailbox_sync_status *status_r)
{
	struct mailbox *box = ctx->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	bool timed_out = pbox->sync_lock_timed_out, gone = pbox->gone;
	int ret;

	pbox->sync_lock_timed_out = FALSE;
	pbox->gone = FALSE;
	ret = pbox->module_ctx.super.sync_deinit(ctx, status_r);
	if (pbox->record_due && ret == 0 && !timed_out && !gone)
		pcp_synced_record(box, pbox->record_digest);
	pbox->record_due = FALSE;
	if (ret < 0)
		return ret;
	if (gone) {
		/* IMAP answers NO [NONEXISTENT]; a session that has it
		   selected gets BYE, as from a stock Dovecot whose mailbox was
		   deleted under it (mailbox_deleted). The local copy goes at
		   the session's next follow of the folder list. */
		struct pcp_user *puser = PCP_USER(box->storage->user);

		puser->follow_due = TRUE;
		box->mailbox_deleted = TRUE;
		mail_storage_set_error(box->storage, MAIL_ERROR_NOTFOUND,
				       T_MAIL_ERR_MAILBOX_NOT_FOUND(box->vname));
		return -1;
	}
	if (!timed_out)
		return ret;
	mail_storage_set_error(box->storage, MAIL_ERROR_TEMP,
		"Mailbox is being synced with the cluster by another session; "
		"try again later");
	return -1;
}

/* IMAP STATUS (and LIST-STATUS) of a mailbox that is not open: Dovecot
   would answer from the mailbox list index, which knows only what this
   node has indexed. Open it and sync it from the cluster first. Other
   services (LMTP above all) do not need it and skip the cost. */
int pcp_get_status(struct mailbox *box, enum mailbox_status_items items,
		   struct mailbox_status *status_r)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	const char *service = box->storage->user->service;

	if (items != 0 && !box->opened && !pbox->in_sync && !pbox->in_status &&
	    service != NULL && strcmp(service, "imap") == 0) {
		enum mail_error error = MAIL_ERROR_NONE;

		pbox->in_status = TRUE;
		if (mailbox_open(box) == 0 &&
		    mailbox_sync(box, MAILBOX_SYNC_FLAG_FAST) < 0) {
			(void)mailbox_get_last_error(box, &error);
			if (error != MAIL_ERROR_NOTFOUND) {
				e_warning(box->event, "porcupine: syncing %s for STATUS "
					  "failed: %s", pcp_log_name(box->vname),
					  mailbox_get_last_internal_error(box, NULL));
			}
		}
		pbox->in_status = FALSE;
		/* Deleted or renamed on another node: NO [NONEXISTENT]. */
		if (error == MAIL_ERROR_NOTFOUND)
			return -1;
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
			pcp_log_name(box->vname), porcupine_error(c));
		return;
	}
	/* The callback syncs the mailbox (pcp_sync_init), which applies the
	   cluster's listing and remembers its digest. */
	if (digest != pbox->synced_digest)
		box->notify_callback(box, box->notify_context);
}

void pcp_notify_changes(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);

	timeout_remove(&pbox->to_poll);
	if (box->notify_callback != NULL)
		pbox->to_poll = timeout_add(puser->set.idle_poll_ms, pcp_poll, box);
	/* Changes made by this node's other processes, as before. */
	pbox->module_ctx.super.notify_changes(box);
}
