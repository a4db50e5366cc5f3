/* SPDX-License-Identifier: MIT */
/* porcupine-settings24.h - the plugin's settings as Dovecot 2.4 types
 * them (porcupine-settings24.c). */
#ifndef PORCUPINE_SETTINGS24_H
#define PORCUPINE_SETTINGS24_H

#include "settings-parser.h"

/* The three settings as written; porcupine-settings.c gives them their
   meaning (a plain number of milliseconds is valid, which 2.4's own
   time type refuses, so the same lines serve 2.3 and 2.4 nodes). */
struct porcupine_settings {
	pool_t pool;
	const char *porcupine_socket;
	const char *porcupine_timeout_ms;
	const char *porcupine_idle_poll_ms;
};

extern const struct setting_parser_info porcupine_setting_parser_info;

#endif
