/* SPDX-License-Identifier: MIT */
/* porcupine-dovecot24.c - what only Dovecot 2.4 builds of the plugin
 * compile: the settings come from the typed struct the config process
 * knows through the settings module (porcupine-settings24.c), read with
 * settings_get in the user's event, so filters (a protocol { } or a
 * userdb field) apply as to Dovecot's own settings.
 * porcupine-dovecot23.c is its 2.3 twin. */
#include "porcupine-plugin.h"
#include "settings.h"
#include "porcupine-settings24.h"

int pcp_settings_read(struct mail_user *user, struct pcp_settings *set_r,
		      const char **error_r)
{
	const struct porcupine_settings *set;
	int ret;

	if (settings_get(user->event, &porcupine_setting_parser_info, 0,
			 &set, error_r) < 0)
		return -1;
	ret = pcp_settings_parse(set->porcupine_socket, set->porcupine_timeout_ms,
				 set->porcupine_idle_poll_ms, set_r, error_r);
	/* The struct is freed here: the socket's path goes on the data
	   stack, and the caller copies it into the user's pool. */
	if (set_r->socket_path != NULL)
		set_r->socket_path = t_strdup(set_r->socket_path);
	settings_free(set);
	return ret;
}
