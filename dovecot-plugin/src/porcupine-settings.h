/* SPDX-License-Identifier: MIT */
/* porcupine-settings.h - the plugin's settings as the parts use them, and
 * what each Dovecot version's file gives to read them (see
 * porcupine-settings.c). Needs only Dovecot's lib.h: the 2.4 settings
 * module (libporcupine_settings.so) includes it too. */
#ifndef PORCUPINE_SETTINGS_H
#define PORCUPINE_SETTINGS_H

struct pcp_settings {
	/* The agent's local socket; the plugin is inactive without it. */
	const char *socket_path;
	/* Deadline of each call to the agent. */
	unsigned int timeout_ms;
	/* How often IDLE asks the cluster for changes of the selected folder. */
	unsigned int idle_poll_ms;
};

/* porcupine-settings.c: the three settings' strings (NULL or "" is unset)
   into *set_r: 1 with the plugin active, 0 when the socket is unset
   (inactive), -1 with *error_r naming the setting and its value when one
   is not valid. set_r->socket_path is socket_path itself. */
int pcp_settings_parse(const char *socket_path, const char *timeout,
		       const char *idle_poll, struct pcp_settings *set_r,
		       const char **error_r);

/* The version's parser of a duration with a unit ("10s", "500ms"):
   Dovecot 2.3's settings_get_time_msecs (porcupine-dovecot23.c), 2.4's
   str_parse_get_interval_msecs (porcupine-settings24.c). */
int pcp_parse_interval_msecs(const char *value, unsigned int *msecs_r,
			     const char **error_r);

#endif
