/* SPDX-License-Identifier: MIT */
/* porcupine-save.c - saves into the cluster: LMTP delivery, IMAP APPEND
 * and COPY into a folder go to the cluster (porcupine_deliver) and not
 * into the local storage, which gets the message at the next sync with
 * the cluster's UID (APPENDUID gives it). A cluster failure fails the save
 * with a temporary error (LMTP 4xx); an unknown user or a message the
 * cluster refuses is a permanent one. APPEND's internal date, flags and
 * keywords (COPY's: the source's) go with the delivery. IMAP MOVE between
 * two folders of the user is the cluster's Move (the body stays where it
 * is; COPYUID gives its new UID). The sync's own saves (in_sync) go to the
 * local storage as before.
 *
 * A message is never whole in the process's memory: an APPEND is kept in
 * memory up to PCP_SAVE_MEMORY, then in a temporary file (iostream-temp,
 * in mail_temp_dir); LMTP's and COPY's source stream (a file: LMTP's
 * temporary file of the DATA, or the source message) is read again
 * instead of copied. Before it is delivered, its IMAP BODYSTRUCTURE is
 * worked out (porcupine-meta.c) and goes with it as its meta. */
#include "porcupine-plugin.h"
#include "mail-copy.h"
#include "ostream.h"
#include "iostream-temp.h"
#include "str.h"

#include <string.h>

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
	o_stream_destroy(&ctx->spill);
	i_stream_unref(&ctx->body);
	i_stream_unref(&ctx->input);
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

struct mail_save_context *
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

int pcp_save_begin(struct mail_save_context *_ctx, struct istream *input)
{
	struct pcp_mailbox *pbox = PCP_BOX(_ctx->transaction->box);
	struct pcp_save_context *ctx = (struct pcp_save_context *)_ctx;

	if (!pcp_is_ours(pbox, _ctx))
		return pbox->module_ctx.super.save_begin(_ctx, input);
	pcp_save_release(ctx);
	ctx->failed = FALSE;
	ctx->input = input;
	i_stream_ref(input);
	if (_ctx->copying_via_save && input->seekable) {
		/* LMTP's and COPY's source: read again at the end. */
		ctx->start = input->v_offset;
	} else {
		struct mail_user *user = _ctx->transaction->box->storage->user;
		string_t *prefix = t_str_new(256);

		mail_user_set_get_temp_prefix(prefix, user->set);
		ctx->spill = iostream_temp_create_sized(str_c(prefix), 0,
			"porcupine save", PCP_SAVE_MEMORY);
	}
	return 0;
}

int pcp_save_continue(struct mail_save_context *_ctx)
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
		if (ctx->spill != NULL &&
		    o_stream_send(ctx->spill, data, size) != (ssize_t)size) {
			mail_storage_set_critical(_ctx->transaction->box->storage,
				"porcupine: write(%s) failed: %s",
				o_stream_get_name(ctx->spill),
				o_stream_get_error(ctx->spill));
			ctx->failed = TRUE;
			return -1;
		}
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

/* The delivery's reader: the message from `ctx->body`, to its end. Its
   streams are files or memory (blocking): a read that gives nothing
   before the end is an error, never the end. */
static ssize_t pcp_read(void *context, char *buf, size_t len)
{
	struct pcp_save_context *ctx = context;
	const unsigned char *data;
	size_t size;
	ssize_t ret;

	ret = i_stream_read_more(ctx->body, &data, &size);
	if (ret == -1 && ctx->body->stream_errno == 0)
		return 0;
	if (ret <= 0) {
		e_error(ctx->box->event, "porcupine: read(%s) failed: %s",
			i_stream_get_name(ctx->body), ret == -1 ?
			i_stream_get_error(ctx->body) : "no data before its end");
		return -1;
	}
	size = I_MIN(size, len);
	memcpy(buf, data, size);
	i_stream_skip(ctx->body, size);
	return (ssize_t)size;
}

/* The stream to deliver (ctx->body), at the message's start: the spill's
   contents, or the source read again. */
static int pcp_body_stream(struct pcp_save_context *ctx)
{
	if (ctx->spill != NULL) {
		if (o_stream_finish(ctx->spill) < 0) {
			mail_storage_set_critical(ctx->box->storage,
				"porcupine: write(%s) failed: %s",
				o_stream_get_name(ctx->spill),
				o_stream_get_error(ctx->spill));
			return -1;
		}
		ctx->body = iostream_temp_finish(&ctx->spill, IO_BLOCK_SIZE);
		ctx->start = 0;
	} else {
		ctx->body = ctx->input;
		i_stream_ref(ctx->body);
	}
	i_stream_seek(ctx->body, ctx->start);
	return 0;
}

/* The message's meta (its BODYSTRUCTURE) into `meta`; empty when there is
   none to keep (logged: Dovecot then parses the body when asked). */
static void pcp_save_meta(struct pcp_save_context *ctx, buffer_t *meta)
{
	const char *error;

	if (!pcp_meta_make(ctx->ctx.copy_src_mail, ctx->body, meta, &error)) {
		buffer_set_used_size(meta, 0);
		e_debug(ctx->box->event, "porcupine: no BODYSTRUCTURE kept with "
			"the message: %s", error);
	}
	i_stream_seek(ctx->body, ctx->start);
}

/* Delivers the saved message into the cluster's folder. */
static int pcp_deliver(struct pcp_save_context *ctx)
{
	struct mailbox *box = ctx->box;
	struct mail_user *user = box->storage->user;
	buffer_t *meta = t_buffer_create(1024);
	struct porcupine_delivered out;
	struct porcupine_deliver_options opts;
	enum mail_flags flags = ctx->ctx.data.flags & MAIL_FLAGS_NONRECENT;
	ARRAY_TYPE(const_string) keywords;
	const char *const *names;
	unsigned int nnames;
	porcupine_client *c;
	const unsigned char *key;
	size_t key_len;
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
	if (pcp_body_stream(ctx) < 0) {
		mail_storage_set_error(box->storage, MAIL_ERROR_TEMP,
				       MAIL_ERRSTR_CRITICAL_MSG);
		return -1;
	}
	pcp_save_meta(ctx, meta);
	i_zero(&opts);
	opts.meta = meta->data;
	opts.meta_len = meta->used;
	if (ctx->ctx.data.received_date > 0)
		opts.internal_date_ms = (int64_t)ctx->ctx.data.received_date * 1000;
	opts.flags = pcp_flags_to_cluster(flags);
	opts.keywords = names;
	opts.nkeywords = nnames;
	key = pcp_lmtp_delivery_key(&key_len);
	c = pcp_connect(user);
	code = c == NULL ? PORCUPINE_UNREACHABLE :
		porcupine_deliver_keyed(c, user->username, box->vname, &opts,
					key, key_len, pcp_read, ctx, &out);
	if (code != PORCUPINE_OK) {
		enum mail_error error = MAIL_ERROR_TEMP;
		if (code == PORCUPINE_NO_SUCH_USER || code == PORCUPINE_BAD_REQUEST)
			error = MAIL_ERROR_PARAMS;
		else if (code == PORCUPINE_OVER_QUOTA)
			error = MAIL_ERROR_NOQUOTA;
		else if (code == PORCUPINE_TOO_LARGE)
			error = MAIL_ERROR_LIMIT;
		e_error(box->event, "porcupine: delivery into %s failed: %s",
			pcp_log_name(box->vname), c == NULL ? "no client" : porcupine_error(c));
		mail_storage_set_error(box->storage, error, error == MAIL_ERROR_TEMP ?
			"Cluster temporarily unavailable, try again later" :
			error == MAIL_ERROR_LIMIT ? "Message too big for the mail cluster" :
			"Cluster refused the message");
		return -1;
	}
	seq_range_array_add(&ctx->uids, out.uid);
	ctx->uid_validity = out.uidvalidity;
	return 0;
}

int pcp_save_finish(struct mail_save_context *_ctx)
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

void pcp_save_cancel(struct mail_save_context *_ctx)
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
   message keeps its body where it is; the destination's UID comes back
   with the answer (COPYUID), and the message is in the destination by
   then. */
static int pcp_move(struct mail_save_context *ctx, struct mail *mail)
{
	struct mailbox *dest = ctx->transaction->box;
	struct mailbox *src = mail->box;
	struct pcp_mailbox *spbox = PCP_BOX(src);
	struct mail_user *user = dest->storage->user;
	struct pcp_save_context *pctx = (struct pcp_save_context *)ctx;
	const struct porcupine_message *m = NULL;
	struct porcupine_delivered moved;
	porcupine_client *c = pcp_connect(user);
	int code;

	code = c == NULL ? PORCUPINE_UNREACHABLE : pcp_lookup_ref(mail, c, &m);
	if (code == PORCUPINE_OK)
		code = porcupine_move_uid(c, user->username, src->vname, &m->ref,
					  dest->vname, &moved);
	if (code != PORCUPINE_OK) {
		e_error(dest->event, "porcupine: moving UID %u of %s to %s failed: %s",
			mail->uid, pcp_log_name(src->vname), pcp_log_name(dest->vname), c == NULL ? "no client" :
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
	if (moved.uid != 0) {
		seq_range_array_add(&pctx->uids, moved.uid);
		pctx->uid_validity = moved.uidvalidity;
	}
	index_save_context_free(ctx);
	return 0;
}

int pcp_copy(struct mail_save_context *ctx, struct mail *mail)
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

int pcp_transaction_save_commit_pre(struct mail_save_context *_ctx)
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

void
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

void pcp_transaction_save_rollback(struct mail_save_context *_ctx)
{
	struct pcp_mailbox *pbox = PCP_BOX(_ctx->transaction->box);

	if (!pcp_is_ours(pbox, _ctx)) {
		pbox->module_ctx.super.transaction_save_rollback(_ctx);
		return;
	}
	pcp_save_destroy((struct pcp_save_context *)_ctx);
}
