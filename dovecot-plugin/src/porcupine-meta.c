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
 * gets it back in the listing and writes it into dovecot.index.cache
 * (field imap.bodystructure), so FETCH BODYSTRUCTURE, and BODY, which
 * Dovecot derives from a cached BODYSTRUCTURE, are answered from the cache
 * by Dovecot itself with no read of the body.
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
