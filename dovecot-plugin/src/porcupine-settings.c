/* SPDX-License-Identifier: MIT */
/* porcupine-settings.c - the plugin's settings, checked when a mail user
 * is created (porcupine-storage.c), the same on Dovecot 2.3 and 2.4. How
 * the three strings are read is the version's (porcupine-dovecot23.c:
 * the plugin { } block; porcupine-dovecot24.c and porcupine-settings24.c:
 * typed settings that doveconf knows); what they mean is here. A value
 * that is not valid is an error naming the setting and the value: the
 * user's initialisation fails (the login or delivery fails with that line
 * in the log) rather than running with a value the administrator did not
 * write. On 2.4 doveconf and the config process refuse it already.
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
#include "lib.h"
#include "strnum.h"
#include "porcupine-settings.h"

#include <limits.h>

#define PCP_DEFAULT_TIMEOUT_MS 10000
#define PCP_DEFAULT_IDLE_POLL_MS 2000

/* Parses the duration `value` of setting `name` into *msecs_r (`def` when
   it is unset or empty). -1 with *error_r on a value that is not valid. */
static int pcp_setting_msecs(const char *name, const char *value,
			     unsigned int def, unsigned int *msecs_r,
			     const char **error_r)
{
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
		/* A plain number is milliseconds (Dovecot 2.3 would take
		   it as seconds, 2.4 refuses it). */
		if (str_to_uint(value, msecs_r) < 0) {
			*error_r = t_strdup_printf("%s: invalid value '%s': "
						   "number too large", name, value);
			return -1;
		}
	} else if (pcp_parse_interval_msecs(value, msecs_r, &error) < 0) {
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

int pcp_settings_parse(const char *socket_path, const char *timeout,
		       const char *idle_poll, struct pcp_settings *set_r,
		       const char **error_r)
{
	i_zero(set_r);
	if (socket_path == NULL || *socket_path == '\0')
		return 0;
	set_r->socket_path = socket_path;
	if (pcp_setting_msecs("porcupine_timeout_ms", timeout, PCP_DEFAULT_TIMEOUT_MS,
			      &set_r->timeout_ms, error_r) < 0 ||
	    pcp_setting_msecs("porcupine_idle_poll_ms", idle_poll, PCP_DEFAULT_IDLE_POLL_MS,
			      &set_r->idle_poll_ms, error_r) < 0)
		return -1;
	return 1;
}
