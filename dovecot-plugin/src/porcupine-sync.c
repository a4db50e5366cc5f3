/* SPDX-License-Identifier: MIT */
/* porcupine-sync.c - mailbox sync with the cluster: every sync of a
 * mailbox (SELECT, EXAMINE, NOOP, CHECK, IDLE's wake-ups, POP3 login, any
 * mailbox_sync) first lists the folder in the cluster and makes the local
 * cache match it, then lets the local storage sync as before. What to
 * change is decided by porcupine-decide.c on the listing and the index's
 * records: a new UIDVALIDITY empties the cache; listed messages the cache
 * lacks are fetched (pipelined, in batches) and saved with the cluster's
 * UID, flags, keywords and internal date, or cached as placeholders when
 * no holder gives the body; cached ones get the cluster's flags and
 * keywords; ones the cluster no longer lists are expunged unless their
 * holders are out of reach. The sync of one mailbox holds a lock
 * (dovecot-porcupine.lock beside its index, Dovecot's lock helpers) so two
 * processes of a node never both cache the same message; a sync that
 * cannot take it in time fails with a temporary error.
 *
 * Also here: STATUS of a mailbox that is not open syncs it first, and
 * IDLE polls the cluster's digest of the selected folder. */
#include "porcupine-plugin.h"
#include "ioloop.h"
#include "file-lock.h"

#include <sys/stat.h>

#include <string.h>

/* Logs a failed change of the local cache. A mailbox deleted meanwhile by
   another process of this node (DELETE, RENAME, or the folder list
   following the cluster) is not an error of the cache: Dovecot's own sync
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
		pcp_local_failed(box, "committing the local cache");
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
		pcp_local_failed(box, t_strdup_printf("saving UID %u of %s locally",
						      m->uid, pcp_log_name(box->vname)));
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
			  m->uid, pcp_log_name(box->vname));
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

/* Makes the local cache of `box` match the cluster's listing `folder`, as
   porcupine-decide.c decides: reset, flags and keywords, expunges, and the
   missing messages fetched and saved. */
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
	const struct porcupine_message **mp;
	uint32_t *uids, *origins, *tseqs;
	uint64_t *seqs;
	uint64_t *sizes;
	unsigned int i, ntodo;
	uint32_t seq, count, next_uid;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	size_t li, ci;
	int ret = 0;

	array_clear(&pbox->out_of_reach);
	if (folder->uidvalidity == 0) {
		/* The cluster has no such folder (deleted or renamed on another
		   node): the cache stays as it is, the sync fails (sync_deinit)
		   and the folder list's next follow deletes it here. INBOX
		   always exists. */
		pbox->gone = !box->inbox_user && strcmp(box->vname, "INBOX") != 0;
		return 0;
	}
	(void)mail_index_refresh(box->index);
	view = mail_index_view_open(box->index);
	hdr = mail_index_get_header(view);
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
	/* The cached messages in UID order: still there (not expunged
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
			/* Its nodes are down or silent: not gone. Served from
			   the cache until they answer again. */
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
			  "out of reach; serving them from the cache",
			  seq_range_count(&pbox->out_of_reach), pcp_log_name(box->vname));
	}

	/* The missing messages in UID order, fetched a batch at a time
	   (pipelined), each batch at most PCP_FETCH_BATCH messages and about
	   PCP_FETCH_BATCH_BYTES. */
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
			       "local next UID %u and not cached: the cluster moves it "
			       "to a new UID if it is still there", m->uid, pcp_log_name(box->vname),
			       next_uid);
		} else {
			e_warning(box->event, "porcupine: UID %u of %s is below the "
				  "local next UID %u; not cached, and moving it "
				  "failed: %s", m->uid, pcp_log_name(box->vname), next_uid,
				  porcupine_error(c));
		}
	}
	ntodo = res.nadd;
	mp = t_new(const struct porcupine_message *, ntodo + 1);
	sizes = t_new(uint64_t, ntodo + 1);
	for (i = 0; i < ntodo; i++) {
		mp[i] = &folder->messages[res.add[i]];
		sizes[i] = mp[i]->size;
	}
	for (i = 0; i < ntodo && ret == 0; ) {
		struct porcupine_fetched items[PCP_FETCH_BATCH];
		unsigned int n, k;

		n = pcp_decide_batch(sizes + i, ntodo - i, PCP_FETCH_BATCH,
				     PCP_FETCH_BATCH_BYTES);
		for (k = 0; k < n; k++) {
			i_zero(&items[k]);
			items[k].ref = mp[i + k]->ref;
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
					  "failed: code %d (%s)", m->uid, pcp_log_name(box->vname),
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
			  "local cache): %s", pcp_log_name(box->vname), porcupine_error(c));
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
	pcp_set_refs(pbox, &folder);
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
   local cache stays as it was. */
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
   node has cached. Open it and sync it from the cluster first. Other
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
