/* SPDX-License-Identifier: MIT */
/* porcupine-mail.c - the mail vfuncs. Flag and keyword changes (STORE,
 * POP3 \Seen) are noted per message and, when their transaction commits,
 * each changed message's whole resulting state goes to the cluster, all
 * in one pipelined batch; a change the cluster does not take is put back
 * locally and fails the commit (IMAP NO). Expunges go to the cluster
 * first, then locally. A bodiless record (every record the sync adds) has
 * its content from the node's agent at each read, its sizes and dates from
 * the index: get_stream, sizes, dates and get_special are overridden for
 * it. The sync's own changes (in_sync) stay local. */
#include "porcupine-plugin.h"

#include <string.h>
#include <strings.h>

struct pcp_mail_module pcp_mail_module =
	MODULE_CONTEXT_INIT(&mail_module_register);

/* ---- flags and expunges: to the cluster first --------------------------- */

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

	if (!pcp_changes_stay_local(_mail->box)) {
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

	if (!pcp_changes_stay_local(_mail->box)) T_BEGIN {
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

/* The names of `a` that `b` lacks (keywords compare without case). */
static const char *const *
pcp_keywords_minus(const char *const *a, const char *const *b)
{
	ARRAY_TYPE(const_string) out;
	unsigned int i, j;

	t_array_init(&out, 8);
	for (i = 0; a != NULL && a[i] != NULL; i++) {
		bool found = FALSE;
		for (j = 0; b != NULL && b[j] != NULL && !found; j++)
			found = strcasecmp(a[i], b[j]) == 0;
		if (!found)
			array_push_back(&out, &a[i]);
	}
	array_append_zero(&out);
	return array_front(&out);
}

/* Sends the flag changes of `t` to the cluster in one batch: for each
   message what the transaction changed (flags and keywords set, flags and
   keywords cleared), not its whole state, so a change another session
   made meanwhile to other flags stays. A change the
   cluster did not take is put back locally before the commit, and the
   commit fails: BAD_REQUEST (more than 64 keywords) as a parameter error,
   a message out of reach or a cluster that cannot answer as a temporary
   one. A message gone from the cluster is left to the next sync. */
static void pcp_flush_changes(struct mailbox_transaction_context *t)
{
	struct mailbox *box = t->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_change_set *set = pcp_change_set(pbox, t, FALSE);
	ARRAY(struct porcupine_flag_delta) batch;
	ARRAY(const struct pcp_change *) sent;
	const struct pcp_change *ch;
	struct porcupine_flag_delta *fc;
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
		if (str_array_length(ch->new_keywords) > PCP_MAX_KEYWORDS) {
			/* The cluster merges per keyword; the limit is checked
			   here, on the state this session would leave. */
			pcp_change_revert(mail, ch);
			refused = PORCUPINE_BAD_REQUEST;
			continue;
		}
		code = c == NULL ? PORCUPINE_UNREACHABLE : pcp_lookup_ref(mail, c, &m);
		if (code != PORCUPINE_OK) {
			e_warning(box->event, "porcupine: flags and keywords of UID %u in %s "
				  "not changed: %s", ch->uid, pcp_log_name(box->vname),
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
		fc->add_flags = pcp_flags_to_cluster(ch->new_flags & ~ch->old_flags);
		fc->remove_flags = pcp_flags_to_cluster(ch->old_flags & ~ch->new_flags);
		fc->add_keywords = pcp_keywords_minus(ch->new_keywords, ch->old_keywords);
		fc->nadd_keywords = str_array_length(fc->add_keywords);
		fc->remove_keywords = pcp_keywords_minus(ch->old_keywords, ch->new_keywords);
		fc->nremove_keywords = str_array_length(fc->remove_keywords);
		array_push_back(&sent, &ch);
	}
	fc = array_get_modifiable(&batch, &n);
	if (n > 0) {
		(void)porcupine_change_flags_many(c, box->storage->user->username,
						  box->vname, fc, n);
		for (i = 0; i < n; i++) {
			ch = array_idx_elem(&sent, i);
			if (fc[i].result == PORCUPINE_OK ||
			    fc[i].result == PORCUPINE_NOT_FOUND)
				continue;
			e_warning(box->event, "porcupine: flags and keywords of UID %u in %s "
				  "not changed: code %d (%s)", ch->uid, pcp_log_name(box->vname),
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
int pcp_transaction_commit(struct mailbox_transaction_context *t,
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

void pcp_transaction_rollback(struct mailbox_transaction_context *t)
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

	if (!pcp_changes_stay_local(box) && seq_range_exists(&pbox->moved, _mail->uid)) {
		/* Moved in the cluster already (IMAP MOVE): only the local
		   copy goes. */
		seq_range_array_remove(&pbox->moved, _mail->uid);
	} else if (!pcp_changes_stay_local(box)) {
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
				  "%s failed: %s", _mail->uid, pcp_log_name(box->vname),
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

/* ---- bodiless records: content from the cluster at each read ------------- */

/* The content of a bodiless record, opened now; a temporary error (for
   this message only: IMAP FETCH goes on with the others) while no holder
   gives it. A reader of headers only (get_body=FALSE, and nothing of the
   body wanted: ENVELOPE, header fields, header SEARCH) may get a stream of
   the header alone, marked stream_has_only_header as imapc does; a later
   reader of the body closes it and opens the whole. */
static int pcp_bodiless_stream(struct mail *_mail, const struct pcp_ext_rec *rec,
			       bool get_body, struct message_size *hdr_size,
			       struct message_size *body_size,
			       struct istream **stream_r)
{
	struct index_mail *imail = (struct index_mail *)_mail;
	struct index_mail_data *data = &imail->data;
	struct mailbox *box = _mail->box;

	if (_mail->lookup_abort != MAIL_LOOKUP_ABORT_NEVER) {
		mail_set_aborted(_mail);
		return -1;
	}
	_mail->mail_stream_accessed = TRUE;
	if (get_body && data->stream != NULL && data->stream_has_only_header) {
		/* The header was read; the body is wanted now. Its cached
		   header size is not reused (imapc_mail_get_stream). */
		index_mail_close_streams(imail);
		data->hdr_size_set = FALSE;
	}
	if (data->stream == NULL) {
		const char *error;
		int fd = -1;
		bool header_only;
		bool header = !get_body &&
			(data->access_part & (READ_BODY | PARSE_BODY)) == 0;
		int code = pcp_open_body(_mail, rec, header, &fd, &header_only, &error);

		if (code == PORCUPINE_NOT_FOUND) {
			mail_set_expunged(_mail);
			return -1;
		}
		if (code != PORCUPINE_OK || fd < 0) {
			if (fd >= 0)
				i_close_fd(&fd);
			e_warning(box->event, "porcupine: UID %u of %s: no holder "
				  "gave its body: %s", _mail->uid, pcp_log_name(box->vname),
				  error);
			mail_storage_set_error(box->storage, MAIL_ERROR_UNAVAILABLE,
					       PCP_UNAVAILABLE_REASON);
			return -1;
		}
		data->stream = i_stream_create_fd_autoclose(&fd, MAIL_READ_FULL_BLOCK_SIZE);
		i_stream_set_name(data->stream, t_strdup_printf(
			"porcupine %u:%llu%s", rec->origin, (unsigned long long)rec->seq,
			header_only ? " header" : ""));
		/* istream-mail checks the size read against the physical
		   size only for a stream with the body. */
		data->stream_has_only_header = header_only;
	}
	return index_mail_init_stream(imail, hdr_size, body_size, stream_r);
}

static int pcp_mail_get_stream(struct mail *_mail, bool get_body,
			       struct message_size *hdr_size,
			       struct message_size *body_size,
			       struct istream **stream_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);
	const struct pcp_ext_rec *rec = pcp_bodiless(_mail);

	if (rec == NULL)
		return pmail->module_ctx.super.get_stream(_mail, get_body, hdr_size,
							  body_size, stream_r);
	return pcp_bodiless_stream(_mail, rec, get_body, hdr_size, body_size,
				   stream_r);
}

/* Dovecot's prefetch (index_mail_prefetch) opens the whole stream of a
   mail it is about to read, only to tell the kernel to read it ahead
   (posix_fadvise), even for a reader of headers. A bodiless record is
   opened when it is read (porcupine-read.c opens ahead itself), with the
   part the reader wants: nothing to do here, as imapc's prefetch. */
static bool pcp_mail_prefetch(struct mail *_mail)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);

	if (pcp_bodiless(_mail) == NULL)
		return pmail->module_ctx.super.prefetch(_mail);
	return TRUE;
}

/* Sizes of a bodiless record: as the cluster listed them; for a record
   that lacks them (from an older version), Dovecot's cache or the
   content. */
static int pcp_mail_get_physical_size(struct mail *_mail, uoff_t *size_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);
	struct pcp_size_rec sizes;

	if (pcp_bodiless(_mail) == NULL)
		return pmail->module_ctx.super.get_physical_size(_mail, size_r);
	if (pcp_sizes(_mail, &sizes)) {
		*size_r = sizes.psize;
		return 0;
	}
	return index_mail_get_physical_size(_mail, size_r);
}

static int pcp_mail_get_virtual_size(struct mail *_mail, uoff_t *size_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);
	struct pcp_size_rec sizes;

	if (pcp_bodiless(_mail) == NULL)
		return pmail->module_ctx.super.get_virtual_size(_mail, size_r);
	if (pcp_sizes(_mail, &sizes) && sizes.vsize != 0) {
		*size_r = sizes.vsize;
		return 0;
	}
	return index_mail_get_virtual_size(_mail, size_r);
}

/* The internal date of a bodiless record (the cluster's, from its stamp) into
   *date_r; FALSE for any other message. */
static bool pcp_bodiless_date(struct mail *mail, time_t *date_r)
{
	const struct pcp_ext_rec *rec = pcp_bodiless(mail);

	if (rec == NULL)
		return FALSE;
	*date_r = (time_t)(rec->internal_date_ms / 1000);
	return TRUE;
}

static int pcp_mail_get_received_date(struct mail *_mail, time_t *date_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);

	return pcp_bodiless_date(_mail, date_r) ? 0 :
		pmail->module_ctx.super.get_received_date(_mail, date_r);
}

static int pcp_mail_get_save_date(struct mail *_mail, time_t *date_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);

	return pcp_bodiless_date(_mail, date_r) ? 1 :
		pmail->module_ctx.super.get_save_date(_mail, date_r);
}

/* What the local storage would read from its own file, for a bodiless record
   (which has none); the rest Dovecot derives from the content. */
static int pcp_mail_get_special(struct mail *_mail, enum mail_fetch_field field,
				const char **value_r)
{
	struct pcp_mail *pmail = PCP_MAIL((struct mail_private *)_mail);
	const struct pcp_ext_rec *rec = pcp_bodiless(_mail);

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

void pcp_mail_allocated(struct mail *_mail)
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
	v->prefetch = pcp_mail_prefetch;
	v->get_physical_size = pcp_mail_get_physical_size;
	v->get_virtual_size = pcp_mail_get_virtual_size;
	v->get_received_date = pcp_mail_get_received_date;
	v->get_save_date = pcp_mail_get_save_date;
	v->get_special = pcp_mail_get_special;
	MODULE_CONTEXT_SET(mail, pcp_mail_module, pmail);
}
