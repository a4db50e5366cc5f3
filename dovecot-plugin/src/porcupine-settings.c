/* SPDX-License-Identifier: MIT */
/* porcupine-settings.c - the plugin { } settings of a mail user, read and
 * checked when the user is created (porcupine-storage.c). A value that is
 * not valid is an error naming the setting and the value: the user's
 * initialisation fails (the login or delivery fails with that line in the
 * log) rather than running with a value the administrator did not write.
 *
 *   porcupine_socket        the agent's local socket; the plugin is
 *                           inactive for users without it
 *   porcupine_timeout_ms    deadline of each call to the agent (10000)
 *   porcupine_idle_poll_ms  how often IDLE asks the cluster for changes
 *                           of the selected folder (2000)
 *
 * The two durations are milliseconds as a plain number ("10000"), or a
 * number with Dovecot's time units ("10s", "500ms", "1 min"); at least
 * 1 ms and at most INT_MAX ms. Unset or empty: the default. */
#include "porcupine-plugin.h"
#include "strnum.h"
#include "settings-parser.h"

#include <limits.h>

#define PCP_DEFAULT_TIMEOUT_MS 10000
#define PCP_DEFAULT_IDLE_POLL_MS 2000

/* Parses the duration setting `name` of `user` into *msecs_r (`def` when
   it is unset or empty). -1 with *error_r on a value that is not valid. */
static int pcp_setting_msecs(struct mail_user *user, const char *name,
			     unsigned int def, unsigned int *msecs_r,
			     const char **error_r)
{
	const char *value = mail_user_plugin_getenv(user, name);
	const char *p, *error;
	bool digits = TRUE;

	*msecs_r = def;
	if (value == NULL || *value == '\0')
		return 0;
	for (p = value; *p != '\0'; p++) {
		if (*p < '0' || *p > '9')
			digits = FALSE;
	}
	if (digits) {
		/* A plain number is milliseconds (settings_get_time_msecs
		   would take it as seconds). */
		if (str_to_uint(value, msecs_r) < 0) {
			*error_r = t_strdup_printf("%s: invalid value '%s': "
						   "number too large", name, value);
			return -1;
		}
	} else if (settings_get_time_msecs(value, msecs_r, &error) < 0) {
		*error_r = t_strdup_printf("%s: invalid value '%s': %s "
					   "(milliseconds, or a number with a time "
					   "unit such as 10s)", name, value, error);
		return -1;
	}
	if (*msecs_r == 0 || *msecs_r > (unsigned int)INT_MAX) {
		*error_r = t_strdup_printf("%s: invalid value '%s': must be "
					   "between 1 ms and %d ms", name, value,
					   INT_MAX);
		return -1;
	}
	return 0;
}

int pcp_settings_read(struct mail_user *user, struct pcp_settings *set_r,
		      const char **error_r)
{
	const char *path = mail_user_plugin_getenv(user, "porcupine_socket");

	i_zero(set_r);
	if (path == NULL || *path == '\0')
		return 0;
	set_r->socket_path = path;
	if (pcp_setting_msecs(user, "porcupine_timeout_ms", PCP_DEFAULT_TIMEOUT_MS,
			      &set_r->timeout_ms, error_r) < 0 ||
	    pcp_setting_msecs(user, "porcupine_idle_poll_ms", PCP_DEFAULT_IDLE_POLL_MS,
			      &set_r->idle_poll_ms, error_r) < 0)
		return -1;
	return 1;
}
