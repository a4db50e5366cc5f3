/* SPDX-License-Identifier: MIT */
/* porcupine-plugin.c - the entry of the Dovecot mail plugin `porcupine`
 * (lib20_porcupine_plugin.so): Dovecot's own storage (sdbox, mdbox or
 * maildir) becomes a cache of the cluster, which is the authority for
 * which messages exist, their UIDs, UIDVALIDITY and flags (system flags
 * and IMAP keywords). This file registers the storage hooks; each part's
 * work is in its own file (porcupine-plugin.h lists them):
 *
 *   mail_user_created        settings, agent connection (porcupine-storage.c)
 *   mail_namespaces_created  the folder list follows the cluster at login
 *                            (porcupine-list.c)
 *   mailbox_list_created     LIST follows it too (porcupine-list.c)
 *   mailbox_allocated        the mailbox vfuncs: sync (porcupine-sync.c),
 *                            saves (porcupine-save.c), folders
 *                            (porcupine-list.c), transactions
 *                            (porcupine-mail.c)
 *   mail_allocated           flags, keywords, expunges, bodies on demand
 *                            (porcupine-mail.c)
 *   LMTP's client_created    over-size messages get 552 5.3.4, in the
 *                            LMTP process only (porcupine-lmtp.c)
 *
 * Settings: porcupine-settings.c. */
#include "porcupine-plugin.h"

#define PCP_EXPORT __attribute__((visibility("default")))

PCP_EXPORT const char *porcupine_plugin_version = DOVECOT_ABI_VERSION;
PCP_EXPORT void porcupine_plugin_init(struct module *module);
PCP_EXPORT void porcupine_plugin_deinit(void);

static struct mail_storage_hooks pcp_hooks = {
	.mail_user_created = pcp_mail_user_created,
	.mail_namespaces_created = pcp_namespaces_created,
	.mailbox_list_created = pcp_mailbox_list_created,
	.mailbox_allocated = pcp_mailbox_allocated,
	.mail_allocated = pcp_mail_allocated,
};

void porcupine_plugin_init(struct module *module)
{
	mail_storage_hooks_add(module, &pcp_hooks);
	pcp_lmtp_init();
}

void porcupine_plugin_deinit(void)
{
	pcp_lmtp_deinit();
	mail_storage_hooks_remove(&pcp_hooks);
}
