/* SPDX-License-Identifier: MIT */
/* porcupine-meta.c - the IMAP metadata the cluster keeps with a message,
 * so a node that holds none of a user's mail answers BODYSTRUCTURE and
 * BODY without moving bodies.
 *
 * At delivery (porcupine-save.c) Dovecot's own code works out the
 * message's BODYSTRUCTURE: the source mail's cached value when a COPY's
 * source has one, otherwise Dovecot's MIME parser over the message as it
 * is delivered, with the settings index-mail uses (so the string is the
 * one a stock Dovecot caches for these bytes). It goes to the agent as
 * the delivery's meta (porcupine_deliver_options.meta) and is kept with
 * the message. A sync that appends the message's record (porcupine-sync.c)
 * does not take it (a first SELECT moves UIDs, flags, sizes and dates
 * only); it notes that the metas from that UID on are owed, and the first
 * FETCH that wants BODYSTRUCTURE or BODY takes them in one listing and
 * writes them into dovecot.index.cache (field imap.bodystructure) before
 * Dovecot looks (end of this file). FETCH BODYSTRUCTURE, and BODY, which
 * Dovecot derives from a cached BODYSTRUCTURE, are then answered from the
 * cache by Dovecot itself with no read of the body.
 *
 * The meta is the plugin's, opaque to the cluster: a format byte, then
 * items of one type byte, a 16-bit big-endian length and the bytes:
 * the producer ("dovecot-" DOVECOT_VERSION) and the BODYSTRUCTURE. A
 * reader takes it only from a producer of its own major and minor
 * version (their BODYSTRUCTURE strings are the same); from any other,
 * or with no meta (mail delivered before the cluster kept it, or a meta
 * over PORCUPINE_MAX_META), Dovecot parses the body as before.
 *
 * Runs in Dovecot's mail processes (imap, lmtp), single-threaded. */
#include "porcupine-plugin.h"
#include "str.h"
#include "message-parser.h"
#include "message-part-data.h"
#include "imap-bodystructure.h"
#include "mail-cache.h"

#include <string.h>

#define PCP_META_FORMAT 1
#define PCP_META_PRODUCER 1
#define PCP_META_BODYSTRUCTURE 2
#define PCP_META_PRODUCER_NAME "dovecot-" DOVECOT_VERSION

/* index-mail's parser settings (index-mail-headers.c msg_parser_set):
   the same parse gives the same BODYSTRUCTURE. */
static const struct message_parser_settings pcp_meta_parser_set = {
	.hdr_flags = MESSAGE_HEADER_PARSER_FLAG_SKIP_INITIAL_LWSP |
		MESSAGE_HEADER_PARSER_FLAG_DROP_CR,
	.flags = MESSAGE_PARSER_FLAG_SKIP_BODY_BLOCK,
};

struct pcp_meta_parse_ctx {
	pool_t pool;
#ifdef MESSAGE_PART_DATA_LIMITS_INIT
	/* Dovecot builds with the limits of CVE-2024-23185 (Debian's
	   2.3.19.1) take them per message, as index-mail does. */
	struct message_part_data_limits limits;
#endif
};

static void pcp_meta_part_header(struct message_part *part,
				 struct message_header_line *hdr,
				 struct pcp_meta_parse_ctx *ctx)
{
#ifdef MESSAGE_PART_DATA_LIMITS_INIT
	message_part_data_parse_from_header(ctx->pool, part, &ctx->limits, hdr);
#else
	message_part_data_parse_from_header(ctx->pool, part, hdr);
#endif
}

/* The BODYSTRUCTURE of the message `input` gives from its current offset
   to its end, into `dest`. The stream is left at its end. */
static int pcp_meta_parse(struct istream *input, string_t *dest,
			  const char **error_r)
{
	pool_t pool = pool_alloconly_create("porcupine meta parts", 4096);
	struct pcp_meta_parse_ctx ctx = {
		.pool = pool,
#ifdef MESSAGE_PART_DATA_LIMITS_INIT
		.limits = MESSAGE_PART_DATA_LIMITS_INIT,
#endif
	};
	struct message_parser_ctx *parser;
	struct message_part *parts;
	struct message_size hdr_size;
	int ret = 0;

	parser = message_parser_init(pool, input, &pcp_meta_parser_set);
	message_parser_parse_header(parser, &hdr_size, pcp_meta_part_header, &ctx);
	message_parser_parse_body(parser, pcp_meta_part_header, &ctx);
	if (message_parser_deinit_from_parts(&parser, &parts, error_r) < 0)
		ret = -1;
	else if (input->stream_errno != 0) {
		*error_r = i_stream_get_error(input);
		ret = -1;
	} else if (imap_bodystructure_write(parts, dest, TRUE, error_r) < 0)
		ret = -1;
	pool_unref(&pool);
	return ret;
}

static void pcp_meta_put(buffer_t *meta, uint8_t type, const char *value)
{
	size_t len = strlen(value);
	uint8_t hdr[3] = { type, (uint8_t)(len >> 8), (uint8_t)len };

	buffer_append(meta, hdr, sizeof(hdr));
	buffer_append(meta, value, len);
}

/* The BODYSTRUCTURE a COPY's source already has without reading its body
   (its cache), or NULL. */
static const char *pcp_meta_from_source(struct mail *src)
{
	enum mail_lookup_abort old = src->lookup_abort;
	const char *value = NULL;

	src->lookup_abort = MAIL_LOOKUP_ABORT_NOT_IN_CACHE;
	if (mail_get_special(src, MAIL_FETCH_IMAP_BODYSTRUCTURE, &value) < 0)
		value = NULL;
	src->lookup_abort = old;
	return value;
}

bool pcp_meta_make(struct mail *src, struct istream *input, buffer_t *meta,
		   const char **error_r)
{
	const char *bodystructure = src == NULL ? NULL : pcp_meta_from_source(src);
	string_t *str = t_str_new(512);
	uint8_t format = PCP_META_FORMAT;

	buffer_set_used_size(meta, 0);
	if (bodystructure == NULL) {
		if (pcp_meta_parse(input, str, error_r) < 0)
			return FALSE;
		bodystructure = str_c(str);
	}
	if (strlen(bodystructure) + sizeof(PCP_META_PRODUCER_NAME) + 8 > PORCUPINE_MAX_META) {
		*error_r = "larger than the cluster keeps";
		return FALSE;
	}
	buffer_append(meta, &format, 1);
	pcp_meta_put(meta, PCP_META_PRODUCER, PCP_META_PRODUCER_NAME);
	pcp_meta_put(meta, PCP_META_BODYSTRUCTURE, bodystructure);
	return TRUE;
}

/* Whether `producer` ("dovecot-2.3.19.1") is of this Dovecot's major and
   minor version. */
static bool pcp_meta_same_dovecot(const char *producer, size_t len)
{
	const char *own = PCP_META_PRODUCER_NAME;
	const char *dot = strchr(own + strlen("dovecot-"), '.');
	size_t prefix;

	i_assert(dot != NULL);
	dot = strchr(dot + 1, '.');
	prefix = dot == NULL ? strlen(own) : (size_t)(dot - own);
	return len >= prefix && memcmp(producer, own, prefix) == 0 &&
		(len == prefix || producer[prefix] == '.');
}

const char *pcp_meta_bodystructure(const void *data, size_t size)
{
	const unsigned char *p = data, *end = p + size;
	const char *bodystructure = NULL;
	bool same = FALSE;

	if (size < 1 || p[0] != PCP_META_FORMAT)
		return NULL;
	for (p++; end - p >= 3; ) {
		uint8_t type = p[0];
		size_t len = ((size_t)p[1] << 8) | p[2];

		p += 3;
		if ((size_t)(end - p) < len)
			return NULL;
		if (type == PCP_META_PRODUCER)
			same = pcp_meta_same_dovecot((const char *)p, len);
		else if (type == PCP_META_BODYSTRUCTURE && len > 0)
			bodystructure = t_strndup(p, len);
		p += len;
	}
	return same ? bodystructure : NULL;
}

void pcp_meta_cache(struct mailbox_transaction_context *t, uint32_t seq,
		    const void *data, size_t size)
{
	struct index_mailbox_context *ibox = INDEX_STORAGE_CONTEXT(t->box);
	const char *bodystructure;

	if (data == NULL || size == 0 || ibox->cache_fields == NULL)
		return;
	bodystructure = pcp_meta_bodystructure(data, size);
	if (bodystructure == NULL)
		return;
	mail_cache_add(t->cache_trans, seq,
		       ibox->cache_fields[MAIL_CACHE_IMAP_BODYSTRUCTURE].idx,
		       bodystructure, strlen(bodystructure));
}

/* ---- metas taken later: a sync lists no metas -------------------------------
 *
 * A sync appends records without their metas (a cold SELECT of a large
 * folder moves UIDs, flags, sizes and dates only) and notes in the index
 * header (extension "porcupine-meta") the first UID whose meta it did not
 * take. The first search that wants BODYSTRUCTURE or BODY (FETCH) asks the
 * cluster for the metas from that UID, one listing for the folder, and
 * writes them into the cache through the search's own transaction: Dovecot
 * finds them there before it decides to read a body, as it would after
 * the sync had written them, and the FETCH's commit keeps them. A message
 * without a meta in the cluster, or whose metas could not be listed, is
 * parsed from its body as before. */

static uint32_t pcp_meta_ext_id(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	return pcp_ext_register(box, &pbox->meta_ext, "porcupine-meta",
				sizeof(struct pcp_meta_hdr), 0, 0);
}

static uint32_t pcp_meta_owed_from(struct mail_index_view *view, uint32_t ext_id)
{
	const void *data = NULL;
	size_t size = 0;
	struct pcp_meta_hdr hdr;

	mail_index_get_header_ext(view, ext_id, &data, &size);
	if (data == NULL || size < sizeof(hdr))
		return 0;
	memcpy(&hdr, data, sizeof(hdr));
	return hdr.owed_from;
}

void pcp_meta_owe(struct mailbox_transaction_context *t, uint32_t uid)
{
	uint32_t ext_id = pcp_meta_ext_id(t->box);
	uint32_t owed = pcp_meta_owed_from(t->view, ext_id);
	struct pcp_meta_hdr hdr;

	if (owed != 0 && owed <= uid)
		return;
	i_zero(&hdr);
	hdr.owed_from = uid;
	mail_index_update_header_ext(t->itrans, ext_id, 0, &hdr, sizeof(hdr));
}

void pcp_meta_fill(struct mailbox_transaction_context *t)
{
	struct mailbox *box = t->box;
	struct index_mailbox_context *ibox = INDEX_STORAGE_CONTEXT(box);
	struct mail_user *user = box->storage->user;
	uint32_t ext_id, owed, seq, field;
	struct porcupine_folder folder;
	struct pcp_meta_hdr none;
	unsigned int added = 0;
	porcupine_client *c;

	if (ibox->cache_fields == NULL || t->cache_trans == NULL)
		return;
	ext_id = pcp_meta_ext_id(box);
	owed = pcp_meta_owed_from(t->view, ext_id);
	if (owed == 0 || (c = pcp_connect(user)) == NULL)
		return;
	if (porcupine_folder_list_meta(c, user->username, box->vname, owed,
				       &folder) != PORCUPINE_OK) {
		e_warning(box->event, "porcupine: listing the metas of %s failed "
			  "(BODYSTRUCTURE is read from the bodies): %s",
			  pcp_log_name(box->vname), porcupine_error(c));
		return;
	}
	field = ibox->cache_fields[MAIL_CACHE_IMAP_BODYSTRUCTURE].idx;
	for (size_t i = 0; i < folder.count; i++) {
		const struct porcupine_message *m = &folder.messages[i];

		if (m->uid < owed || m->meta == NULL ||
		    !mail_index_lookup_seq(t->view, m->uid, &seq) ||
		    mail_cache_field_exists(t->cache_view, seq, field) > 0)
			continue;
		T_BEGIN {
			pcp_meta_cache(t, seq, m->meta, m->meta_len);
		} T_END;
		added++;
	}
	porcupine_folder_free(&folder);
	i_zero(&none);
	mail_index_update_header_ext(t->itrans, ext_id, 0, &none, sizeof(none));
	e_debug(box->event, "porcupine: %u BODYSTRUCTUREs of %s from UID %u "
		"taken from the cluster", added, pcp_log_name(box->vname), owed);
}

struct mail_search_context *
pcp_search_init(struct mailbox_transaction_context *t,
		struct mail_search_args *args,
		const enum mail_sort_type *sort_program,
		enum mail_fetch_field wanted_fields,
		struct mailbox_header_lookup_ctx *wanted_headers)
{
	struct pcp_mailbox *pbox = PCP_BOX(t->box);

	if ((wanted_fields & (MAIL_FETCH_IMAP_BODYSTRUCTURE | MAIL_FETCH_IMAP_BODY)) != 0)
		pcp_meta_fill(t);
	return pbox->module_ctx.super.search_init(t, args, sort_program,
						  wanted_fields, wanted_headers);
}
