/* porcupine-list.c - the folder list follows the cluster. CREATE, DELETE
 * and RENAME go to the cluster first (INBOX never), then locally. At login
 * (not LMTP) and at LIST, at most once a second, the cluster's folders
 * this node lacks are created and subscribed locally, and local folders
 * the cluster no longer has are deleted and unsubscribed locally; those
 * changes stay local (local_only). */
#include "porcupine-plugin.h"
#include "ioloop.h"
#include "time-util.h"
#include "mailbox-list-iter.h"

#include <string.h>

struct pcp_list_module pcp_list_module =
	MODULE_CONTEXT_INIT(&mailbox_list_module_register);

static void pcp_follow_folders(struct mail_namespace *ns);

static int pcp_folder_result(struct mailbox *box, porcupine_client *c, int code,
			     const char *what)
{
	enum mail_error error = MAIL_ERROR_TEMP;

	if (code == PORCUPINE_OK)
		return 0;
	e_error(box->event, "porcupine: %s %s in the cluster failed: %s",
		what, box->vname, c == NULL ? "no client" : porcupine_error(c));
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

	if (!directory && !puser->local_only && !box->inbox_user) {
		porcupine_client *c = pcp_connect(box->storage->user);
		int code = c == NULL ? PORCUPINE_UNREACHABLE :
			porcupine_folder_create(c, box->storage->user->username,
						box->vname);
		/* EXISTS: the cluster has it, this node not yet. */
		if (code != PORCUPINE_EXISTS &&
		    pcp_folder_result(box, c, code, "creating") < 0)
			return -1;
	}
	return pbox->module_ctx.super.create_box(box, update, directory);
}

int pcp_delete_box(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	struct pcp_user *puser = PCP_USER(box->storage->user);

	if (!puser->local_only && !box->inbox_user) {
		porcupine_client *c = pcp_connect(box->storage->user);
		int code = c == NULL ? PORCUPINE_UNREACHABLE :
			porcupine_folder_delete(c, box->storage->user->username,
						box->vname);
		if (code != PORCUPINE_NOT_FOUND &&
		    pcp_folder_result(box, c, code, "deleting") < 0)
			return -1;
	}
	return pbox->module_ctx.super.delete_box(box);
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

/* Makes the local folder list follow the cluster's: creates (and
   subscribes) the cluster's folders this node lacks, deletes (and
   unsubscribes) local folders the cluster no longer has. Failures are
   logged and the local list is served. */
static void pcp_follow_folders(struct mail_namespace *ns)
{
	struct mail_user *user = ns->user;
	struct pcp_user *puser = PCP_USER(user);
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	ARRAY_TYPE(const_string) stale;
	const char *const *namep;
	porcupine_client *c;
	char **names = NULL;
	size_t count = 0, i;
	int code;

	if (puser == NULL || puser->local_only)
		return;
	puser->last_follow = ioloop_timeval;
	c = pcp_connect(user);
	code = c == NULL ? PORCUPINE_UNREACHABLE :
		porcupine_folders_get(c, user->username, &names, &count);
	if (code != PORCUPINE_OK) {
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
				if (mailbox_create(box, NULL, FALSE) < 0) {
					e_warning(user->event, "porcupine: creating %s "
						  "locally failed: %s", names[i],
						  mailbox_get_last_internal_error(box, NULL));
				} else if (mailbox_set_subscribed(box, TRUE) < 0) {
					e_warning(user->event, "porcupine: subscribing %s "
						  "failed: %s", names[i],
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
			for (i = 0; i < count && !known; i++)
				known = strcmp(names[i], info->vname) == 0;
			if (!known) {
				const char *name = t_strdup(info->vname);
				array_push_back(&stale, &name);
			}
		}
		(void)mailbox_list_iter_deinit(&iter);
		array_foreach(&stale, namep) {
			struct mailbox *box = mailbox_alloc(ns->list, *namep, 0);
			if (mailbox_delete(box) < 0) {
				e_warning(user->event, "porcupine: deleting %s locally failed: %s",
					  *namep, mailbox_get_last_internal_error(box, NULL));
			}
			(void)mailbox_set_subscribed(box, FALSE);
			mailbox_free(&box);
		}
	} T_END;
	puser->local_only = FALSE;
	porcupine_folders_free(names, count);
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

	if (puser != NULL && !puser->local_only &&
	    (ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0 &&
	    timeval_diff_msecs(&ioloop_timeval, &puser->last_follow) >= PCP_FOLLOW_INTERVAL_MS) {
		T_BEGIN {
			pcp_follow_folders(ns);
		} T_END;
	}
	return plist->super.iter_init(list, patterns, flags);
}

/* A mailbox this node does not have may be a folder created (or renamed)
   on another node since this session followed the cluster's folder list:
   follow it (at most once per PCP_FOLLOW_INTERVAL_MS) and look again, so
   STATUS, SELECT and the rest of an open session see it. */
static bool pcp_may_follow(struct mailbox *box)
{
	struct mail_namespace *ns = box->list->ns;
	struct pcp_user *puser = PCP_USER(ns->user);

	return puser != NULL && !puser->local_only &&
		(ns->flags & NAMESPACE_FLAG_INBOX_USER) != 0 &&
		(box->storage->user->service == NULL ||
		 strcmp(box->storage->user->service, "lmtp") != 0) &&
		timeval_diff_msecs(&ioloop_timeval, &puser->last_follow) >= PCP_FOLLOW_INTERVAL_MS;
}

int pcp_exists(struct mailbox *box, bool auto_boxes, enum mailbox_existence *existence_r)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);

	if (pbox->module_ctx.super.exists(box, auto_boxes, existence_r) < 0)
		return -1;
	if (*existence_r != MAILBOX_EXISTENCE_NONE || !pcp_may_follow(box))
		return 0;
	T_BEGIN {
		pcp_follow_folders(box->list->ns);
	} T_END;
	return pbox->module_ctx.super.exists(box, auto_boxes, existence_r);
}

/* The same for opening a mailbox (SELECT, EXAMINE, STATUS, APPEND): one
   that is not here is looked for in the cluster's folder list first. */
int pcp_open(struct mailbox *box)
{
	struct pcp_mailbox *pbox = PCP_BOX(box);
	enum mail_error error;

	if (pbox->module_ctx.super.open(box) == 0)
		return 0;
	(void)mailbox_get_last_error(box, &error);
	if (error != MAIL_ERROR_NOTFOUND || !pcp_may_follow(box))
		return -1;
	T_BEGIN {
		pcp_follow_folders(box->list->ns);
	} T_END;
	return pbox->module_ctx.super.open(box);
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
