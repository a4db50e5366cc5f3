/* SPDX-License-Identifier: MIT */
/* porcupine-read.c - bodies of bodiless records, from the node's agent.
 * The agent answers an open with a file descriptor (passed over its unix
 * socket): the node's own copy of the body, its cache entry, or a copy it
 * has just fetched from a holder. Dovecot reads it like a file of its own,
 * so a large body is never whole in memory here.
 *
 * A reader of headers only (ENVELOPE, header fields, header SEARCH: get_stream
 * with get_body=FALSE) opens the header part (porcupine_open_headers): the
 * node's own copy or cache entry still comes whole, a message it would
 * fetch comes as its header only, so a node holding none of a folder
 * answers a client's first look at it without moving bodies.
 *
 * Reading in order (FETCH 1:* BODY[], POP3 RETR of every message, SEARCH
 * TEXT) opens ahead: a miss right after the previous message's opens that
 * message and the next ones in one request (at most PCP_FETCH_BATCH of
 * them and about PCP_FETCH_BATCH_BYTES, pcp_decide_batch; header parts
 * PCP_HEADER_BATCH), and keeps their descriptors until they are read, the
 * mailbox syncs or it is freed. A read elsewhere opens one message. */
#include "porcupine-plugin.h"

#include <unistd.h>

#define PCP_AHEAD_MAX (PCP_FETCH_BATCH > PCP_HEADER_BATCH ? \
		       PCP_FETCH_BATCH : PCP_HEADER_BATCH)
/* What a size hint of a header part is at most (the agent's bound). */
#define PCP_HEADER_HINT_MAX (256 * 1024)

static void pcp_ahead_close(struct pcp_ahead *a)
{
	if (a->fd >= 0)
		i_close_fd(&a->fd);
}

/* Closes what was opened ahead of the mailbox's readers. */
void pcp_read_ahead_clear(struct pcp_mailbox *pbox)
{
	struct pcp_ahead *a;

	if (!array_is_created(&pbox->ahead))
		return;
	array_foreach_modifiable(&pbox->ahead, a)
		pcp_ahead_close(a);
	array_clear(&pbox->ahead);
}

void pcp_read_ahead_free(struct pcp_mailbox *pbox)
{
	pcp_read_ahead_clear(pbox);
	if (array_is_created(&pbox->ahead))
		array_free(&pbox->ahead);
}

/* Takes what was opened ahead for `uid` (its result and part; *fd_r is
   the caller's). FALSE when nothing was, or nothing a reader of
   `header` can use: a header part for a reader of the body, a cut header
   part (the header is longer than it) for any reader. */
static bool pcp_ahead_take(struct pcp_mailbox *pbox, uint32_t uid, bool header,
			   int *fd_r, int *result_r, int *part_r)
{
	struct pcp_ahead *a;
	unsigned int i, count;

	if (!array_is_created(&pbox->ahead))
		return FALSE;
	a = array_get_modifiable(&pbox->ahead, &count);
	for (i = 0; i < count; i++) {
		if (a[i].uid != uid)
			continue;
		if (a[i].result == PORCUPINE_OK &&
		    (a[i].part == PORCUPINE_PART_HEADER_CUT ||
		     (!header && a[i].part != PORCUPINE_PART_WHOLE))) {
			pcp_ahead_close(&a[i]);
			array_delete(&pbox->ahead, i, 1);
			return FALSE;
		}
		*fd_r = a[i].fd;
		*result_r = a[i].result;
		*part_r = a[i].part;
		array_delete(&pbox->ahead, i, 1);
		return TRUE;
	}
	return FALSE;
}

/* The bodiless records from `seq` on in the view of `mail`, at most `max`
   of them, up to the first that is not, into items/uids/sizes; how many. */
static unsigned int
pcp_ahead_candidates(struct mail *mail, uint32_t seq, unsigned int max,
		     struct porcupine_opened *items, uint32_t *uids, uint64_t *sizes)
{
	struct mailbox *box = mail->box;
	struct mail_index_view *view = mail->transaction->view;
	uint32_t count = mail_index_view_get_messages_count(view);
	uint32_t ext_id = pcp_ext_id(box), size_ext_id = pcp_size_ext_id(box);
	unsigned int n = 0;

	for (; seq <= count && n < max; seq++) {
		const struct pcp_ext_rec *rec;
		const void *data = NULL;
		bool expunged;

		mail_index_lookup_ext(view, seq, ext_id, &data, &expunged);
		rec = data;
		if (rec == NULL || (rec->pflags & PCP_EXT_BODILESS) == 0)
			break;
		i_zero(&items[n]);
		pcp_ref_from_ext(&items[n].ref, rec);
		items[n].fd = -1;
		mail_index_lookup_uid(view, seq, &uids[n]);
		data = NULL;
		mail_index_lookup_ext(view, seq, size_ext_id, &data, &expunged);
		sizes[n] = data == NULL ? 0 : ((const struct pcp_size_rec *)data)->psize;
		items[n].size_hint = sizes[n];
		n++;
	}
	return n;
}

/* Opens `n` items of `box` through the agent, whole or (`header`) for
   a reader of headers; the batch's code. */
static int pcp_open_items(porcupine_client *c, struct mailbox *box, bool header,
			  struct porcupine_opened *items, unsigned int n)
{
	const char *user = box->storage->user->username;

	return header ? porcupine_open_headers(c, user, box->vname, items, n) :
		porcupine_open_many(c, user, box->vname, items, n);
}

/* Opens bodiless `mail` (stamp `rec`) through the agent: its body, or
   with `header` what the agent has for a reader of headers (*header_only_r:
   the header part alone, else the whole body). PORCUPINE_OK with *fd_r
   (the caller's), or the open's failure. */
int pcp_open_body(struct mail *mail, const struct pcp_ext_rec *rec, bool header,
		  int *fd_r, bool *header_only_r, const char **error_r)
{
	struct mailbox *box = mail->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	porcupine_client *c;
	struct porcupine_opened items[PCP_AHEAD_MAX];
	uint32_t uids[PCP_AHEAD_MAX];
	uint64_t sizes[PCP_AHEAD_MAX];
	unsigned int n, i;
	int code, result = PORCUPINE_TEMPFAIL, part = PORCUPINE_PART_WHOLE;
	bool in_order;

	*fd_r = -1;
	*header_only_r = FALSE;
	*error_r = "";
	if (pcp_ahead_take(pbox, mail->uid, header, fd_r, &result, &part)) {
		pbox->last_read_seq = mail->seq;
		*header_only_r = part == PORCUPINE_PART_HEADER;
		return result;
	}
	c = pcp_connect(box->storage->user);
	if (c == NULL) {
		*error_r = "no client";
		return PORCUPINE_UNREACHABLE;
	}
	in_order = pbox->last_read_seq != 0 && mail->seq == pbox->last_read_seq + 1;
	pbox->last_read_seq = mail->seq;
	pcp_read_ahead_clear(pbox);
	if (in_order && header) {
		n = pcp_ahead_candidates(mail, mail->seq, PCP_HEADER_BATCH, items, uids, sizes);
		for (i = 0; i < n; i++) {
			if (items[i].size_hint > PCP_HEADER_HINT_MAX)
				items[i].size_hint = PCP_HEADER_HINT_MAX;
		}
	} else if (in_order) {
		n = pcp_ahead_candidates(mail, mail->seq, PCP_FETCH_BATCH, items, uids, sizes);
		n = pcp_decide_batch(sizes, n, PCP_FETCH_BATCH, PCP_FETCH_BATCH_BYTES);
	} else {
		n = 0;
	}
	if (n == 0 || uids[0] != mail->uid) {
		/* Out of order (or the view moved): this one alone. */
		i_zero(&items[0]);
		pcp_ref_from_ext(&items[0].ref, rec);
		items[0].fd = -1;
		uids[0] = mail->uid;
		n = 1;
	}
	code = pcp_open_items(c, box, header, items, n);
	if (code != PORCUPINE_OK)
		*error_r = porcupine_error(c);
	if (!array_is_created(&pbox->ahead))
		i_array_init(&pbox->ahead, PCP_AHEAD_MAX);
	for (i = 0; i < n; i++) {
		if (i == 0) {
			*fd_r = items[0].fd;
			result = items[0].result;
			part = items[0].part;
			continue;
		}
		struct pcp_ahead a = {
			.uid = uids[i], .fd = items[i].fd,
			.result = items[i].result, .size = items[i].size,
			.part = items[i].part,
		};
		array_push_back(&pbox->ahead, &a);
	}
	if (result == PORCUPINE_OK && part == PORCUPINE_PART_HEADER_CUT) {
		/* No blank line in the part the agent would send: the header
		   is longer, parsed from the whole body. */
		i_close_fd(fd_r);
		i_zero(&items[0]);
		pcp_ref_from_ext(&items[0].ref, rec);
		items[0].fd = -1;
		code = pcp_open_items(c, box, FALSE, items, 1);
		if (code != PORCUPINE_OK)
			*error_r = porcupine_error(c);
		*fd_r = items[0].fd;
		result = items[0].result;
		part = items[0].part;
	}
	if (result != PORCUPINE_OK && code == PORCUPINE_OK)
		*error_r = porcupine_error(c);
	*header_only_r = result == PORCUPINE_OK && part == PORCUPINE_PART_HEADER;
	return result;
}
