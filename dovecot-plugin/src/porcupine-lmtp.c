/* SPDX-License-Identifier: MIT */
/* porcupine-lmtp.c - in Dovecot's LMTP only:
 *
 * - a message larger than the cluster takes gets a permanent 552 5.3.4 for
 *   each recipient, before any delivery is tried. Without it the cluster's
 *   refusal reached LMTP as a failed save, which LMTP answers 451
 *   (temporary), and Postfix retried the message for days;
 * - each recipient's delivery carries a key: the SHA-256 of the envelope
 *   sender and of the message from its first header field that is not a
 *   trace field (Return-Path, Received, Delivered-To, X-Original-To,
 *   X-Porcupine-*: what MTAs, LMTP and porcupine-milter put on top, which
 *   differ on every try). A message sent again, by Postfix after a 4xx or
 *   an answer lost in a crash, or by the sending client after a broken
 *   session through another node, has the same key; the cluster answers it
 *   with the message it already stored instead of storing a second copy.
 *   Two different messages differ in their own headers (Date,
 *   Message-ID) or their body.
 *
 * The LMTP process exports its client hook (lmtp_client_created_hook_set)
 * and loads the mail plugins before it creates a client; in every other
 * process that loads the plugin the symbol is absent, so it is declared
 * weak and the hook is set only where it exists. */
#include "porcupine-plugin.h"
#include "smtp-server.h"
#include "lmtp-common.h"
#include "lmtp-client.h"
#include "lmtp-recipient.h"

#include "istream.h"
#include "sha2.h"
#include "smtp-address.h"

#include <inttypes.h>

#pragma weak lmtp_client_created_hook_set

static lmtp_client_created_func_t *pcp_lmtp_next_hook;
static bool pcp_lmtp_hooked;
/* Every client of the process has the same vfuncs: those before ours. */
static struct lmtp_client_vfuncs pcp_lmtp_super;
/* The agent's limit (0: not known yet, or the agent does not say). */
static uint64_t pcp_lmtp_limit;

/* The key of the recipient being delivered (set around the delivery), and
   the transaction it was worked out for: every recipient of one
   transaction has the same. */
static unsigned char pcp_lmtp_key[SHA256_RESULTLEN];
static bool pcp_lmtp_key_set, pcp_lmtp_key_valid;
static char *pcp_lmtp_key_trans;

const unsigned char *pcp_lmtp_delivery_key(size_t *len_r)
{
	*len_r = pcp_lmtp_key_set ? sizeof(pcp_lmtp_key) : 0;
	return pcp_lmtp_key_set ? pcp_lmtp_key : NULL;
}

/* A header field name of a trace field, which each MTA on the way (and
   LMTP, and porcupine-milter) puts on top of the message and which
   differs on every try. */
static bool pcp_is_trace_name(const char *name, size_t len)
{
	static const char *const names[] = {
		"Return-Path", "Received", "Delivered-To", "X-Original-To"
	};
	size_t i;

	while (len > 0 && (name[len - 1] == ' ' || name[len - 1] == '\t'))
		len--;
	for (i = 0; i < N_ELEMENTS(names); i++) {
		if (len == strlen(names[i]) && strncasecmp(name, names[i], len) == 0)
			return TRUE;
	}
	return len > 12 && strncasecmp(name, "X-Porcupine-", 12) == 0;
}

/* The offset of the first line from `start` on that is not part of a trace
   field on top of the message (its continuation lines included). Reads
   byte by byte, never a whole line: a header line of any length is fine. */
static uoff_t pcp_skip_trace_fields(struct istream *input, uoff_t start)
{
	enum { LINE_START, NAME, REST } state = LINE_START;
	char name[64];
	size_t name_len = 0, i, size;
	const unsigned char *data;
	uoff_t line_start = start;

	i_stream_seek(input, start);
	while (i_stream_read_more(input, &data, &size) > 0) {
		for (i = 0; i < size; i++) {
			const unsigned char c = data[i];

			if (state == LINE_START) {
				line_start = input->v_offset + i;
				if (c == ' ' || c == '\t') {
					/* continues the trace field before it */
					if (line_start == start)
						return start;
					state = REST;
					continue;
				}
				name_len = 0;
				state = NAME;
			}
			if (state == NAME) {
				if (c == ':') {
					if (!pcp_is_trace_name(name, name_len))
						return line_start;
					state = REST;
				} else if (c == '\n' || name_len == sizeof(name)) {
					return line_start;
				} else {
					name[name_len++] = (char)c;
				}
			} else if (c == '\n') {
				state = LINE_START;
			}
		}
		i_stream_skip(input, size);
	}
	/* Only trace fields to the end (or a read error, seen by the caller). */
	return state == LINE_START ? input->v_offset : line_start;
}

/* The delivery's key (see the top of this file), from the message LMTP
   hands over (its raw mail for the transaction's first recipient) after
   the headers LMTP itself put before it (client->state.added_headers_local),
   read through a stream of its own so the delivery's is left where it is.
   FALSE when it cannot be read: the delivery then goes without a key. */
static bool pcp_lmtp_digest(struct client *client, struct smtp_server_transaction *trans,
			    struct mail *src_mail, unsigned char digest[SHA256_RESULTLEN])
{
	const char *added = client->state.added_headers_local;
	const char *sender;
	struct sha256_ctx sha;
	struct istream *mail_input, *input;
	const unsigned char *data;
	size_t size;
	uoff_t from;
	bool ok;

	if (src_mail == NULL || mail_get_stream(src_mail, NULL, NULL, &mail_input) < 0) {
		e_error(client->event, "porcupine: the message cannot be read: %s; delivered without a key",
			src_mail == NULL ? "no mail" : mailbox_get_last_internal_error(src_mail->box, NULL));
		return FALSE;
	}
	sha256_init(&sha);
	sender = trans->mail_from == NULL ? "" : smtp_address_encode(trans->mail_from);
	sha256_loop(&sha, sender, strlen(sender) + 1);
	/* Past the trace fields on top; the same stream then reads on to the
	   end (two streams over LMTP's concat stream, one left half-read,
	   trip its assertion when it closes). */
	input = i_stream_create_limit(mail_input, UOFF_T_MAX);
	from = pcp_skip_trace_fields(input, added == NULL ? 0 : strlen(added));
	i_stream_seek(input, from);
	while (i_stream_read_more(input, &data, &size) > 0) {
		sha256_loop(&sha, data, size);
		i_stream_skip(input, size);
	}
	ok = input->stream_errno == 0 && input->eof;
	if (!ok)
		e_error(client->event, "porcupine: read(%s) failed: %s; delivered without a key",
			i_stream_get_name(input), i_stream_get_error(input));
	i_stream_unref(&input);
	sha256_result(&sha, digest);
	return ok;
}

static int
pcp_lmtp_local_deliver(struct client *client, struct lmtp_recipient *lrcpt,
		       struct smtp_server_cmd_ctx *cmd,
		       struct smtp_server_transaction *trans,
		       struct lmtp_local_deliver_context *lldctx)
{
	struct mail_user *user = lldctx->rcpt_user;
	uoff_t size;
	int ret;

	if (pcp_lmtp_limit == 0 && user != NULL && PCP_USER(user) != NULL) {
		porcupine_client *c = pcp_connect(user);
		uint64_t limit;

		if (c != NULL && porcupine_deliver_size_limit(c, &limit) == PORCUPINE_OK)
			pcp_lmtp_limit = limit;
	}
	if (pcp_lmtp_limit > 0 && mail_get_physical_size(lldctx->src_mail, &size) == 0 &&
	    size > pcp_lmtp_limit) {
		e_info(client->event, "porcupine: %s: message of %"PRIuUOFF_T" bytes refused: "
		       "over the cluster's %"PRIu64, user == NULL ? "?" : user->username,
		       size, pcp_lmtp_limit);
		smtp_server_recipient_reply(lrcpt->rcpt, 552, "5.3.4",
			"Message too big for the mail cluster (at most %"PRIu64" bytes)",
			pcp_lmtp_limit);
		return -1;
	}
	/* The transaction's first recipient is delivered from the message as
	   LMTP received it; the others may be copies of the first saved one. */
	if (pcp_lmtp_key_trans == NULL || trans->id == NULL ||
	    strcmp(pcp_lmtp_key_trans, trans->id) != 0) {
		i_free(pcp_lmtp_key_trans);
		pcp_lmtp_key_trans = i_strdup(trans->id);
		pcp_lmtp_key_valid = pcp_lmtp_digest(client, trans, lldctx->src_mail, pcp_lmtp_key);
	}
	pcp_lmtp_key_set = pcp_lmtp_key_valid && trans->id != NULL;
	ret = pcp_lmtp_super.local_deliver(client, lrcpt, cmd, trans, lldctx);
	pcp_lmtp_key_set = FALSE;
	return ret;
}

static void pcp_lmtp_client_created(struct client **clientp)
{
	struct client *client = *clientp;

	if (pcp_lmtp_super.local_deliver == NULL)
		pcp_lmtp_super = client->v;
	client->v.local_deliver = pcp_lmtp_local_deliver;
	if (pcp_lmtp_next_hook != NULL)
		pcp_lmtp_next_hook(clientp);
}

void pcp_lmtp_init(void)
{
	if (lmtp_client_created_hook_set == NULL)
		return;
	pcp_lmtp_next_hook = lmtp_client_created_hook_set(pcp_lmtp_client_created);
	pcp_lmtp_hooked = TRUE;
}

void pcp_lmtp_deinit(void)
{
	if (!pcp_lmtp_hooked)
		return;
	(void)lmtp_client_created_hook_set(pcp_lmtp_next_hook);
	pcp_lmtp_hooked = FALSE;
	i_free(pcp_lmtp_key_trans);
}
