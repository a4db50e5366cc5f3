/* SPDX-License-Identifier: MIT */
/* porcupine-dovecot23.c - what only Dovecot 2.3 builds of the plugin
 * compile: the settings come from the user's plugin { } block
 * (mail_user_plugin_getenv), durations with a unit through 2.3's
 * settings_get_time_msecs. porcupine-dovecot24.c is its 2.4 twin. */
#include "porcupine-plugin.h"
#include "settings-parser.h"

int pcp_parse_interval_msecs(const char *value, unsigned int *msecs_r,
			     const char **error_r)
{
	return settings_get_time_msecs(value, msecs_r, error_r);
}

int pcp_settings_read(struct mail_user *user, struct pcp_settings *set_r,
		      const char **error_r)
{
	return pcp_settings_parse(mail_user_plugin_getenv(user, "porcupine_socket"),
				  mail_user_plugin_getenv(user, "porcupine_timeout_ms"),
				  mail_user_plugin_getenv(user, "porcupine_idle_poll_ms"),
				  set_r, error_r);
}
