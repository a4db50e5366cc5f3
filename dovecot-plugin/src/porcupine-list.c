/* SPDX-License-Identifier: MIT */
/* porcupine-list.c - the folder list and the subscriptions follow the
 * cluster. CREATE, DELETE and RENAME go to the cluster first (INBOX
 * never), then locally; so do SUBSCRIBE and UNSUBSCRIBE. At login (not
 * LMTP), at LIST and when a session looks for a mailbox this node lacks,
 * at most once a second, the cluster's folders this node lacks are created
 * locally, local folders the cluster no longer has are deleted locally,
 * and the local subscriptions are made the cluster's; those changes stay
 * local (local_only). */
#include "porcupine-plugin.h"
#include "ioloop.h"
#include "time-util.h"
#include "mailbox-list-iter.h"
#include "mailbox-list-index.h"
#include "mail-index-alloc-cache.h"

#include <string.h>

struct pcp_list_module pcp_list_module =
	MODULE_CONTEXT_INIT(&mailbox_list_module_register);

static void pcp_follow_folders(struct mail_namespace *ns);

/* Whether Dovecot itself is in the middle of changing or walking `list`
   (it holds the folder list's lock, or syncs the folder list index and
   opens mailboxes from there): following the cluster's folder list then
   would create and delete mailboxes under its locks. */
static bool pcp_list_busy(struct mailbox_list *list)
{
	struct mailbox_list_index *ilist = INDEX_LIST_CONTEXT(list);

	return list->lock_refcount > 0 ||
		(ilist != NULL && (ilist->syncing || ilist->updating_status));
}

static int pcp_folder_result(struct mailbox *box, porcupine_client *c, int code,
			     const char *what)
{
	enum mail_error error = MAIL_ERROR_TEMP;

	if (code == PORCUPINE_OK)
		return 0;
	e_error(box->event, "porcupine: %s %s in the cluster failed: %s",
		what, pcp_log_name(box->vname), c == NULL ? "no client" : porcupine_error(c));
	if (code == PORCUPINE_EXISTS)
		error = MAIL_ERROR_EXISTS;
	else if (code == PORCUPINE_NOT_FOUND)
		error = MAIL_ERROR_NOTFOUND;
	else if (code == PORCUPINE_BAD_REQUEST)
		error = MAIL_ERROR_PARAMS;
	mail_storage_set_error(box->storage, error, error == MAIL_ERROR_TEMP ?
		"Cluster temporarily unavailable, try again later" :
		"Cluster refused the folder operation");
	return -1;
}

int pcp_create_box(struct mailbox *box, const struct mailbox_update *update,
			  bool directory)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);
	bool created = FALSE;
	enum mail_error error;

	if (!directory && !puser->local_only && !box->inbox_user) {
		porcupine_client *c = pcp_connect(box->storage->user);
		int code = c == NULL ? PORCUPINE_UNREACHABLE :
			porcupine_folder_create(c, box->storage->user->username,
						box->vname);
		/* EXISTS: the cluster has it, this node not yet. */
		if (code != PORCUPINE_EXISTS &&
		    pcp_folder_result(box, c, code, "creating") < 0)
			return -1;
		created = code == PORCUPINE_OK;
	}
	if (pbox->module_ctx.super.create_box(box, update, directory) == 0)
		return 0;
	if (created && (mailbox_get_last_error(box, &error), error == MAIL_ERROR_EXISTS)) {
		/* This CREATE made the folder in the cluster, and another
		   session of this node opened it between its directory's
		   creation here and its index's (a SELECT or STATUS of that
		   name, whose sync gave the index the cluster's UIDVALIDITY):
		   sdbox then finds an index and says "exists". The folder is
		   made, in the cluster and here: done. */
		e_debug(box->event, "porcupine: %s was opened by another session "
			"while it was created", pcp_log_name(box->vname));
		return 0;
	}
	return -1;
}

/* DELETE in the cluster (its messages, then the folder); once per
   mailbox_delete(). */
static int pcp_delete_in_cluster(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);
	porcupine_client *c;
	int code;

	if (puser->local_only || box->inbox_user || pbox->cluster_deleted)
		return 0;
	c = pcp_connect(box->storage->user);
	code = c == NULL ? PORCUPINE_UNREACHABLE :
		porcupine_folder_delete(c, box->storage->user->username, box->vname);
	if (code != PORCUPINE_NOT_FOUND &&
	    pcp_folder_result(box, c, code, "deleting") < 0)
		return -1;
	pbox->cluster_deleted = TRUE;
	return 0;
}

/* mailbox_delete() opens the mailbox, then takes the folder list's lock
   and calls this: the cluster's part is normally done by then
   (pcp_open), so no other session waits on the lock for it. */
int pcp_delete_box(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	int ret;

	struct file_lock *lock = NULL;

	if (pcp_delete_in_cluster(box) < 0)
		return -1;
	/* No sync of it runs in another process while it goes (one would
	   write into a mailbox whose directory is being removed). */
	if (pcp_lock(box, &lock) == 0) {
		mail_storage_set_error(box->storage, MAIL_ERROR_TEMP,
			"Mailbox is being synced with the cluster by another "
			"session; try again later");
		return -1;
	}
	ret = pbox->module_ctx.super.delete_box(box);
	if (lock != NULL) {
		/* Its lock file went with the directory. */
		file_lock_set_unlink_on_free(lock, ret < 0);
		file_lock_free(&lock);
	}
	if (ret < 0 && pbox->cluster_deleted) {
		enum mail_error error;

		/* Gone from the cluster, and locally meanwhile (another
		   process of the node followed the cluster's folder list
		   between this DELETE's cluster part and its lock): done. */
		(void)mailbox_get_last_error(box, &error);
		if (error == MAIL_ERROR_NOTFOUND)
			ret = 0;
	}
	pbox->cluster_deleted = FALSE;
	return ret;
}

int pcp_rename_box(struct mailbox *src, struct mailbox *dest)
{
	struct pcp_mailbox *pbox = PCP_BOX(src);
	struct pcp_user *puser = PCP_USER(src->storage->user);

	if (!puser->local_only) {
		porcupine_client *c = pcp_connect(src->storage->user);
		int code = c == NULL ? PORCUPINE_UNREACHABLE :
			porcupine_folder_rename(c, src->storage->user->username,
						src->vname, dest->vname);
		if (pcp_folder_result(src, c, code, "renaming") < 0)
			return -1;
	}
	return pbox->module_ctx.super.rename_box(src, dest);
}

int pcp_set_subscribed(struct mailbox *box, bool set)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);

	if (!puser->local_only) {
		porcupine_client *c = pcp_connect(box->storage->user);
		int code = c == NULL ? PORCUPINE_UNREACHABLE :
			porcupine_folder_subscribe(c, box->storage->user->username,
						   box->vname, set ? 1 : 0);
		if (pcp_folder_result(box, c, code, set ? "subscribing" :
				      "unsubscribing") < 0)
			return -1;
	}
	return pbox->module_ctx.super.set_subscribed(box, set);
}

static bool pcp_name_in(const char *name, char **names, size_t count)
{
	size_t i;

	for (i = 0; i < count; i++) {
		if (strcmp(names[i], name) == 0)
			return TRUE;
	}
	return FALSE;
}

static void pcp_subscribe_locally(struct mail_namespace *ns, const char *vname, bool set)
{
	struct mailbox *box = mailbox_alloc(ns->list, vname, 0);

	if (mailbox_set_subscribed(box, set) < 0) {
		e_warning(ns->user->event, "porcupine: %s %s locally failed: %s",
			  set ? "subscribing" : "unsubscribing", pcp_log_name(vname),
			  mailbox_get_last_internal_error(box, NULL));
	}
	mailbox_free(&box);
}

/* Makes the local subscriptions the cluster's `subscribed` names (called
   with local_only set, so pcp_set_subscribed stays local). */
static void pcp_follow_subscriptions(struct mail_namespace *ns, char **subscribed,
				     size_t count)
{
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	ARRAY_TYPE(const_string) local;
	const char *const *namep;
	size_t i;

	t_array_init(&local, 8);
	iter = mailbox_list_iter_init(ns->list, "*", MAILBOX_LIST_ITER_SELECT_SUBSCRIBED |
				      MAILBOX_LIST_ITER_RETURN_NO_FLAGS |
				      MAILBOX_LIST_ITER_NO_AUTO_BOXES);
	while ((info = mailbox_list_iter_next(iter)) != NULL) {
		const char *name = t_strdup(info->vname);
		array_push_back(&local, &name);
	}
	if (mailbox_list_iter_deinit(&iter) < 0) {
		e_warning(ns->user->event, "porcupine: reading the local "
			  "subscriptions failed: %s",
			  mailbox_list_get_last_internal_error(ns->list, NULL));
		return;
	}
	array_foreach(&local, namep) {
		if (!pcp_name_in(*namep, subscribed, count))
			pcp_subscribe_locally(ns, *namep, FALSE);
	}
	for (i = 0; i < count; i++) {
		bool known = FALSE;

		array_foreach(&local, namep)
			known = known || strcmp(*namep, subscribed[i]) == 0;
		if (!known)
			pcp_subscribe_locally(ns, subscribed[i], TRUE);
	}
}

/* Makes the local folder list follow the cluster's: creates the cluster's
   folders this node lacks, deletes local folders the cluster no longer
   has, and makes the local subscriptions the cluster's (once the user has
   any there). Failures are logged and the local list is served.

   It holds the folder list's lock (mailboxes.lock) from reading the
   cluster's list to the last local change, as Dovecot's own CREATE and
   DELETE hold it for their local change (CREATE also for the cluster's
   part, pcp_create_box): so no other process of the node creates a
   folder between this reading and deleting it here as stale. */
static void pcp_follow_folders(struct mail_namespace *ns)
{
	struct mail_user *user = ns->user;
	struct pcp_user *puser = PCP_USER(user);
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	ARRAY_TYPE(const_string) stale;
	const char *const *namep;
	porcupine_client *c;
	char **names = NULL, **subscribed = NULL;
	size_t count = 0, subscribed_count = 0, i;
	int code, recorded = 0;

	if (puser == NULL || puser->local_only)
		return;
	puser->last_follow = ioloop_timeval;
	puser->follow_due = FALSE;
	if (mailbox_list_lock(ns->list) < 0) {
		e_warning(user->event, "porcupine: locking the folder list to "
			  "follow the cluster's failed (serving the local list): %s",
			  mailbox_list_get_last_internal_error(ns->list, NULL));
		return;
	}
	c = pcp_connect(user);
	code = c == NULL ? PORCUPINE_UNREACHABLE :
		porcupine_folders_get_subscribed(c, user->username, &names, &count,
						 &subscribed, &subscribed_count,
						 &recorded);
	if (code != PORCUPINE_OK) {
		mailbox_list_unlock(ns->list);
		e_warning(user->event, "porcupine: listing the folders failed "
			  "(serving the local list): %s",
			  c == NULL ? "no client" : porcupine_error(c));
		return;
	}
	puser->local_only = TRUE;
	T_BEGIN {
		for (i = 0; i < count; i++) {
			struct mailbox *box;
			enum mailbox_existence existence;

			if (strcmp(names[i], "INBOX") == 0)
				continue;
			box = mailbox_alloc(ns->list, names[i], 0);
			if (mailbox_exists(box, FALSE, &existence) == 0 &&
			    existence == MAILBOX_EXISTENCE_NONE) {
				enum mail_error error;

				/* EXISTS: another process made it meanwhile. */
				if (mailbox_create(box, NULL, FALSE) < 0 &&
				    (mailbox_get_last_error(box, &error), error != MAIL_ERROR_EXISTS)) {
					e_warning(user->event, "porcupine: creating %s "
						  "locally failed: %s", pcp_log_name(names[i]),
						  mailbox_get_last_internal_error(box, NULL));
				}
			}
			mailbox_free(&box);
		}
		t_array_init(&stale, 8);
		iter = mailbox_list_iter_init(ns->list, "*", MAILBOX_LIST_ITER_NO_AUTO_BOXES |
					      MAILBOX_LIST_ITER_RETURN_NO_FLAGS);
		while ((info = mailbox_list_iter_next(iter)) != NULL) {
			bool known = strcmp(info->vname, "INBOX") == 0;
			if ((info->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) != 0)
				continue;
			if (!known && !pcp_name_in(info->vname, names, count)) {
				const char *name = t_strdup(info->vname);
				array_push_back(&stale, &name);
			}
		}
		(void)mailbox_list_iter_deinit(&iter);
		array_foreach(&stale, namep) {
			struct mailbox *box = mailbox_alloc(ns->list, *namep, 0);
			enum mail_error error;

			/* NOTFOUND: another process deleted it meanwhile. */
			if (mailbox_delete(box) < 0 &&
			    (mailbox_get_last_error(box, &error), error != MAIL_ERROR_NOTFOUND)) {
				e_warning(user->event, "porcupine: deleting %s locally failed: %s",
					  pcp_log_name(*namep), mailbox_get_last_internal_error(box, NULL));
			}
			mailbox_free(&box);
		}
		if (recorded != 0)
			pcp_follow_subscriptions(ns, subscribed, subscribed_count);
	} T_END;
	puser->local_only = FALSE;
	mailbox_list_unlock(ns->list);
	porcupine_folders_free(names, count);
	porcupine_folders_free(subscribed, subscribed_count);
}

/* At login. A user without an INBOX namespace (LMTP's raw mail user) has
   no folders; mail_namespace_find_inbox() asserts there is one. LMTP does
   not follow: a delivery names its folder and the cluster knows it, and a
   cluster that does not answer costs the delivery one deadline, not two. */
void pcp_namespaces_created(struct mail_namespace *namespaces)
{
	struct mail_namespace *ns;

	if (namespaces != NULL && namespaces->user->service != NULL &&
	    strcmp(namespaces->user->service, "lmtp") == 0)
		return;
	for (ns = namespaces; ns != NULL; ns = ns->next) {
		if ((ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0)
			break;
	}
	if (ns != NULL && PCP_USER(ns->user) != NULL)
		pcp_follow_folders(ns);
}

/* LIST (and any other walk of the folder list) follows the cluster's
   folder list first, at most once per PCP_FOLLOW_INTERVAL_MS. */
static struct mailbox_list_iterate_context *
pcp_list_iter_init(struct mailbox_list *list, const char *const *patterns,
		   enum mailbox_list_iter_flags flags)
{
	union mailbox_list_module_context *plist = PCP_LIST(list);
	struct mail_namespace *ns = list->ns;
	struct pcp_user *puser = PCP_USER(ns->user);

	if (puser != NULL && !puser->local_only && !pcp_list_busy(list) &&
	    (ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0 &&
	    (puser->follow_due ||
	     timeval_diff_msecs(&ioloop_timeval, &puser->last_follow) >= PCP_FOLLOW_INTERVAL_MS)) {
		T_BEGIN {
			pcp_follow_folders(ns);
		} T_END;
		/* LSUB and LIST (SUBSCRIBED) loaded the subscriptions before
		   this: load them again with what the follow changed. */
		if ((flags & MAILBOX_LIST_ITER_SELECT_SUBSCRIBED) != 0 &&
		    mailbox_list_iter_subscriptions_refresh(list) < 0) {
			e_warning(ns->user->event, "porcupine: reading the "
				  "subscriptions failed: %s",
				  mailbox_list_get_last_internal_error(list, NULL));
		}
	}
	return plist->super.iter_init(list, patterns, flags);
}

/* Whether the session may follow the cluster's folder list now: an IMAP
   or POP3 session (not LMTP), not already following, at most once per
   PCP_FOLLOW_INTERVAL_MS unless the list is known to differ; never from
   within Dovecot's own work on the folder list (pcp_list_busy). */
static bool pcp_may_follow(struct mailbox *box)
{
	struct mail_namespace *ns = box->list->ns;
	struct pcp_user *puser = PCP_USER(ns->user);

	return puser != NULL && !puser->local_only && !pcp_list_busy(box->list) &&
		(ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0 &&
		(box->storage->user->service == NULL ||
		 strcmp(box->storage->user->service, "lmtp") != 0) &&
		(puser->follow_due ||
		 timeval_diff_msecs(&ioloop_timeval, &puser->last_follow) >= PCP_FOLLOW_INTERVAL_MS);
}

/* A mailbox this node does not have may be a folder created (or renamed)
   on another node since this session followed the cluster's folder list.
   Dovecot asks this from within its own folder list walks, holding the
   list's locks, so nothing is created or deleted here: the cluster's list
   is only read, and a folder it has is answered as existing; opening it
   (pcp_open) then creates it locally. */
int pcp_exists(struct mailbox *box, bool auto_boxes, enum mailbox_existence *existence_r)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct mail_user *user = box->storage->user;
	struct pcp_user *puser = PCP_USER(user);
	porcupine_client *c;
	char **names = NULL;
	size_t count = 0, i;

	if (pbox->module_ctx.super.exists(box, auto_boxes, existence_r) < 0)
		return -1;
	if (*existence_r != MAILBOX_EXISTENCE_NONE || !pcp_may_follow(box))
		return 0;
	c = pcp_connect(user);
	if (c == NULL || porcupine_folders_get(c, user->username, &names, &count) != PORCUPINE_OK)
		return 0;
	puser->last_follow = ioloop_timeval;
	for (i = 0; i < count; i++) {
		if (strcmp(names[i], box->vname) == 0) {
			*existence_r = MAILBOX_EXISTENCE_SELECT;
			puser->follow_due = TRUE;
			break;
		}
	}
	porcupine_folders_free(names, count);
	return 0;
}

/* Opening a mailbox (SELECT, EXAMINE, STATUS, APPEND, COPY's destination):
   one that is not here is looked for in the cluster's folder list, and
   created locally if the cluster has it; when a sync found a folder gone
   from the cluster, the folder list follows first. Opening one to delete it
   (mailbox_delete) deletes it in the cluster first, before Dovecot takes
   the folder list's lock. */
int pcp_open(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);
	enum mail_error error;

	if (box->deleting && pcp_delete_in_cluster(box) < 0)
		return -1;
	/* Dovecot keeps the indexes of closed mailboxes open for a while and
	   reuses one for a mailbox at the same path whose directory has the
	   same inode. Folders here are deleted and created again by other
	   processes (the folder list follows the cluster), inode numbers are
	   reused at once, and the old index then read the new mailbox's
	   transaction log as its own ("duplicate transaction log sequence"):
	   open every mailbox from its files. */
	mail_index_alloc_cache_destroy_unrefed();
	if (!box->deleting && puser != NULL && puser->follow_due && pcp_may_follow(box)) {
		/* A folder found gone from the cluster goes from here first. */
		T_BEGIN {
			pcp_follow_folders(box->list->ns);
		} T_END;
	}
	if (pbox->module_ctx.super.open(box) == 0) {
		pcp_remember_index_dir(box);
		return 0;
	}
	(void)mailbox_get_last_error(box, &error);
	if (error != MAIL_ERROR_NOTFOUND || box->deleting || !pcp_may_follow(box))
		return -1;
	T_BEGIN {
		pcp_follow_folders(box->list->ns);
	} T_END;
	if (pbox->module_ctx.super.open(box) < 0)
		return -1;
	pcp_remember_index_dir(box);
	return 0;
}

void pcp_mailbox_list_created(struct mailbox_list *list)
{
	struct mailbox_list_vfuncs *v = list->vlast;
	union mailbox_list_module_context *plist;

	if (PCP_USER(list->ns->user) == NULL)
		return;
	plist = p_new(list->pool, union mailbox_list_module_context, 1);
	plist->super = *v;
	list->vlast = &plist->super;
	v->iter_init = pcp_list_iter_init;
	MODULE_CONTEXT_SET_SELF(list, pcp_list_module, plist);
}
