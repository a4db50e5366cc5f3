/* SPDX-License-Identifier: MIT */
/* porcupine-storage.c - the mail user and the mailbox: the user's agent
 * connection and settings (mail_user_created), the mailbox's vfuncs
 * (mailbox_allocated: the user's mail must be in sdbox, used as an index
 * of bodiless records), and what the other parts share: each message's
 * cluster reference in the local index (extension "porcupine"), its sizes
 * and the index's layout (extension "porcupine2"), the last listing of a
 * folder (UID -> message reference), and keyword lists between Dovecot and
 * the cluster. */
#include "porcupine-plugin.h"
#include "ioloop.h"

#include <string.h>

struct pcp_user_module pcp_user_module =
	MODULE_CONTEXT_INIT(&mail_user_module_register);
struct pcp_storage_module pcp_storage_module =
	MODULE_CONTEXT_INIT(&mail_storage_module_register);

/* ---- the user ---------------------------------------------------------- */

static void pcp_user_deinit(struct mail_user *user)
{
	struct pcp_user *puser = PCP_USER(user);

	if (puser->client != NULL)
		porcupine_close(puser->client);
	puser->client = NULL;
	puser->module_ctx.super.deinit(user);
}

/* A user with porcupine_socket gets the plugin; one whose settings are
   not valid fails its initialisation (the login or delivery fails, the
   log names the setting and the value). */
void pcp_mail_user_created(struct mail_user *user)
{
	struct mail_user_vfuncs *v = user->vlast;
	struct pcp_settings set;
	struct pcp_user *puser;
	const char *error;
	int ret;

	ret = pcp_settings_read(user, &set, &error);
	if (ret < 0) {
		e_error(user->event, "porcupine: %s", error);
		user->error = p_strdup_printf(user->pool, "porcupine: %s", error);
		return;
	}
	if (ret == 0)
		return;
	puser = p_new(user->pool, struct pcp_user, 1);
	puser->module_ctx.super = *v;
	user->vlast = &puser->module_ctx.super;
	v->deinit = pcp_user_deinit;
	puser->set = set;
	puser->set.socket_path = p_strdup(user->pool, set.socket_path);
	MODULE_CONTEXT_SET(user, pcp_user_module, puser);
}

/* ---- the mailbox ------------------------------------------------------- */

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
	pcp_read_ahead_free(pbox);
}

/* The local storage that can hold the cluster's index: sdbox keeps a
   record whose file is missing (its sync only replays the index's log, and
   expunging one is silent), where maildir's sync drops it and mdbox's
   rebuilds the storage. */
static bool pcp_storage_supported(const struct mail_storage *storage)
{
	return strcmp(storage->name, "sdbox") == 0;
}

/* A mailbox of the user's own mail in a storage the cluster cannot use:
   opening it fails, with the reason in the log, rather than serving mail
   the cluster never sees. */
static int pcp_open_unsupported(struct mailbox *box)
{
	mail_storage_set_critical(box->storage, "porcupine: mail_location uses "
		"%s; the cluster needs sdbox (mail_location = sdbox:...)",
		box->storage->name);
	return -1;
}

void pcp_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct pcp_mailbox *pbox;

	if (PCP_USER(box->storage->user) == NULL)
		return;
	if (!pcp_storage_supported(box->storage)) {
		/* LMTP's raw mailbox of the incoming mail is not the user's. */
		if ((box->list->ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0 &&
		    strcmp(box->storage->name, "raw") != 0)
			v->open = pcp_open_unsupported;
		return;
	}
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
	v->exists = pcp_exists;
	v->open = pcp_open;
	v->set_subscribed = pcp_set_subscribed;
	v->notify_changes = pcp_notify_changes;
	v->sync_init = pcp_sync_init;
	v->sync_deinit = pcp_sync_deinit;
	v->search_init = pcp_search_init;
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

/* ---- keywords and references ------------------------------------------ */

/* The names of `kw` (indexes into its mail index's keyword list), added
   to `names`. */
void pcp_keyword_names(const struct mail_keywords *kw,
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

/* The cluster's keywords of `m` as keywords of `box` (created in its
   index if new; one Dovecot does not accept, e.g. longer than
   mail_max_keyword_length, is left out). */
struct mail_keywords *
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
porcupine_client *pcp_connect(struct mail_user *user)
{
	struct pcp_user *puser = PCP_USER(user);

	if (puser->client == NULL)
		puser->client = porcupine_open(puser->set.socket_path,
					       (int)puser->set.timeout_ms);
	return puser->client;
}

/* Keeps `folder` as the last listing: takes what it owns (keywords
   included) and leaves it empty. */
void pcp_set_refs(struct pcp_mailbox *pbox, struct porcupine_folder *folder)
{
	porcupine_folder_free(&pbox->listing);
	pbox->listing = *folder;
	i_zero(folder);
	pbox->uidvalidity = pbox->listing.uidvalidity;
	pbox->refs = pbox->listing.messages;
	pbox->nrefs = pbox->listing.count;
}

const struct porcupine_message *
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

uint32_t pcp_ext_register(struct mailbox *box, struct pcp_ext_slot *slot,
			  const char *name, uint32_t hdr_size,
			  uint16_t record_size, uint16_t record_align)
{
	if (!slot->registered) {
		slot->id = mail_index_ext_register(box->index, name, hdr_size,
						   record_size, record_align);
		slot->registered = TRUE;
	}
	return slot->id;
}

/* The index extension holding each cached message's cluster reference. */
uint32_t pcp_ext_id(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	return pcp_ext_register(box, &pbox->ext, "porcupine", 0,
				sizeof(struct pcp_ext_rec), sizeof(uint64_t));
}

void pcp_ref_from_ext(struct porcupine_msgref *ref, const struct pcp_ext_rec *rec)
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

uint32_t pcp_size_ext_id(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	return pcp_ext_register(box, &pbox->size_ext, "porcupine2",
				sizeof(struct pcp_index_hdr),
				sizeof(struct pcp_size_rec), sizeof(uint64_t));
}

/* The layout of the index `view` shows (PCP_INDEX_LAYOUT, or 0 for an
   index of an older version or one the local storage rebuilt). */
uint32_t pcp_index_layout(struct mailbox *box, struct mail_index_view *view)
{
	const void *data = NULL;
	size_t size = 0;

	mail_index_get_header_ext(view, pcp_size_ext_id(box), &data, &size);
	if (data == NULL || size < sizeof(struct pcp_index_hdr))
		return 0;
	return ((const struct pcp_index_hdr *)data)->layout;
}

/* Records where the cluster keeps message `m`, and its sizes, at `seq` (of
   the transaction's view, or one it appended); `pflags` for a new record,
   an existing one keeps its own. */
void pcp_stamp(struct mailbox_transaction_context *t, uint32_t seq,
	       const struct porcupine_message *m, bool appended, uint32_t pflags)
{
	uint32_t ext_id = pcp_ext_id(t->box), size_ext_id = pcp_size_ext_id(t->box);
	struct pcp_ext_rec rec;
	struct pcp_size_rec sizes;
	const void *data = NULL;
	bool expunged;

	pcp_ext_from_ref(&rec, &m->ref);
	rec.internal_date_ms = m->internal_date_ms;
	rec.pflags = pflags;
	if (!appended)
		mail_index_lookup_ext(t->view, seq, ext_id, &data, &expunged);
	if (data != NULL)
		rec.pflags = ((const struct pcp_ext_rec *)data)->pflags;
	if (data == NULL || memcmp(data, &rec, sizeof(rec)) != 0)
		mail_index_update_ext(t->itrans, seq, ext_id, &rec, NULL);

	i_zero(&sizes);
	sizes.psize = m->size;
	sizes.vsize = m->vsize;
	data = NULL;
	if (!appended)
		mail_index_lookup_ext(t->view, seq, size_ext_id, &data, &expunged);
	if (data == NULL || memcmp(data, &sizes, sizeof(sizes)) != 0)
		mail_index_update_ext(t->itrans, seq, size_ext_id, &sizes, NULL);
}

/* The stamp of `mail` if it has no body in the local storage
   (PCP_EXT_BODILESS). */
const struct pcp_ext_rec *pcp_bodiless(struct mail *mail)
{
	const struct pcp_ext_rec *rec;
	const void *data = NULL;
	bool expunged;

	if (PCP_BOX(mail->box) == NULL || mail->seq == 0 || mail->saving)
		return NULL;
	mail_index_lookup_ext(mail->transaction->view, mail->seq,
			      pcp_ext_id(mail->box), &data, &expunged);
	rec = data;
	return rec != NULL && (rec->pflags & PCP_EXT_BODILESS) != 0 ? rec : NULL;
}

/* The sizes the sync recorded for `mail` into *sizes_r; FALSE when it has
   none (a record of an older version). */
bool pcp_sizes(struct mail *mail, struct pcp_size_rec *sizes_r)
{
	const void *data = NULL;
	bool expunged;

	i_zero(sizes_r);
	if (PCP_BOX(mail->box) == NULL || mail->seq == 0 || mail->saving)
		return FALSE;
	mail_index_lookup_ext(mail->transaction->view, mail->seq,
			      pcp_size_ext_id(mail->box), &data, &expunged);
	if (data == NULL)
		return FALSE;
	memcpy(sizes_r, data, sizeof(*sizes_r));
	return sizes_r->psize != 0;
}

/* Where the cluster keeps the local message at `seq` of `view`, from its
   stamp, into `l` (origin 0 and no replicas when it has none). */
void pcp_local_holders(struct mailbox *box, struct mail_index_view *view,
		       uint32_t seq, struct pcp_decide_local *l)
{
	const struct pcp_ext_rec *rec;
	const void *data = NULL;
	bool expunged;

	l->origin = 0;
	l->seq = 0;
	l->nreplicas = 0;
	mail_index_lookup_ext(view, seq, pcp_ext_id(box), &data, &expunged);
	if (data == NULL)
		return;
	rec = data;
	l->origin = rec->origin;
	l->seq = rec->seq;
	l->nreplicas = I_MIN(rec->nreplicas, PORCUPINE_MAX_REPLICAS);
	memcpy(l->replicas, rec->replicas, l->nreplicas * sizeof(l->replicas[0]));
}

/* TRUE if the local message at `seq` of `view` may still exist in the
   cluster although `folder` does not list it: no node holding it (by its
   stamp) is among those the listing covers (pcp_decide_out_of_reach). An
   agent that does not say which nodes a listing covers (nreachable 0)
   makes every absent message gone, as an unstamped message is. */
bool pcp_out_of_reach(struct mailbox *box, struct mail_index_view *view,
		      uint32_t seq, const struct porcupine_folder *folder)
{
	struct pcp_decide_local l;

	if (folder->nreachable == 0)
		return FALSE;
	pcp_local_holders(box, view, seq, &l);
	return pcp_decide_out_of_reach(folder->reachable, folder->nreachable,
				       l.origin, l.replicas, l.nreplicas);
}

/* The cluster reference of a local message, listing the folder again when
   the last listing does not have it (no sync yet in this process).
   PORCUPINE_OK with *m_r set; PORCUPINE_NOT_FOUND: gone from the folder in
   the cluster; PORCUPINE_TEMPFAIL: its nodes are out of reach; or the
   listing's failure. */
int pcp_lookup_ref(struct mail *mail, porcupine_client *c,
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
void pcp_fail_transaction(struct mailbox_transaction_context *t,
			  enum mail_error error, const char *reason)
{
	struct pcp_mailbox *pbox = PCP_BOX(t->box);

	pbox->failed_t = t;
	pbox->failed_error = error;
	pbox->failed_reason = reason;
}
