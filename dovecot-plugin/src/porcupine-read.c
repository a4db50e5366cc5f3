/* SPDX-License-Identifier: MIT */
/* porcupine-read.c - bodies of bodiless records, from the node's agent.
 * The agent answers an open with a file descriptor (passed over its unix
 * socket): the node's own copy of the body, its cache entry, or a copy it
 * has just fetched from a holder. Dovecot reads it like a file of its own,
 * so a large body is never whole in memory here.
 *
 * Reading in order (FETCH 1:* BODY[], POP3 RETR of every message, SEARCH
 * TEXT) opens ahead: a miss right after the previous message's opens that
 * message and the next ones in one request (at most PCP_FETCH_BATCH of
 * them and about PCP_FETCH_BATCH_BYTES, pcp_decide_batch), and keeps their
 * descriptors until they are read, the mailbox syncs or it is freed. A
 * read elsewhere opens one message. */
#include "porcupine-plugin.h"

#include <unistd.h>

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

/* Takes what was opened ahead for `uid` (its result; *fd_r is the
   caller's). FALSE when nothing was. */
static bool pcp_ahead_take(struct pcp_mailbox *pbox, uint32_t uid,
			   int *fd_r, int *result_r)
{
	struct pcp_ahead *a;
	unsigned int i, count;

	if (!array_is_created(&pbox->ahead))
		return FALSE;
	a = array_get_modifiable(&pbox->ahead, &count);
	for (i = 0; i < count; i++) {
		if (a[i].uid == uid) {
			*fd_r = a[i].fd;
			*result_r = a[i].result;
			array_delete(&pbox->ahead, i, 1);
			return TRUE;
		}
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

/* Opens the body of bodiless `mail` (stamp `rec`) through the agent:
   PORCUPINE_OK with *fd_r (the caller's), or the open's failure. */
int pcp_open_body(struct mail *mail, const struct pcp_ext_rec *rec, int *fd_r,
		  const char **error_r)
{
	struct mailbox *box = mail->box;
	struct pcp_mailbox *pbox = PCP_BOX(box);
	porcupine_client *c;
	struct porcupine_opened items[PCP_FETCH_BATCH];
	uint32_t uids[PCP_FETCH_BATCH];
	uint64_t sizes[PCP_FETCH_BATCH];
	unsigned int n, i;
	int code, result = PORCUPINE_TEMPFAIL;
	bool in_order;

	*fd_r = -1;
	*error_r = "";
	if (pcp_ahead_take(pbox, mail->uid, fd_r, &result)) {
		pbox->last_read_seq = mail->seq;
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
	if (in_order) {
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
	code = porcupine_open_many(c, box->storage->user->username, box->vname,
				   items, n);
	if (code != PORCUPINE_OK)
		*error_r = porcupine_error(c);
	if (!array_is_created(&pbox->ahead))
		i_array_init(&pbox->ahead, PCP_FETCH_BATCH);
	for (i = 0; i < n; i++) {
		if (i == 0) {
			*fd_r = items[0].fd;
			result = items[0].result;
			continue;
		}
		struct pcp_ahead a = {
			.uid = uids[i], .fd = items[i].fd,
			.result = items[i].result, .size = items[i].size,
		};
		array_push_back(&pbox->ahead, &a);
	}
	if (result != PORCUPINE_OK && code == PORCUPINE_OK)
		*error_r = porcupine_error(c);
	return result;
}
