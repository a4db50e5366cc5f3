/* SPDX-License-Identifier: MIT */
/* porcupine-settings24.c - Dovecot 2.4 only: the plugin's settings as a
 * typed settings struct. Dovecot 2.4 has no plugin { } block; a setting
 * the config process does not know is an error. This file is compiled
 * into the plugin (which reads the struct with settings_get, in
 * porcupine-dovecot24.c) and into the settings module
 * libporcupine_settings.so (porcupine-settings-module.c), which the
 * config process and doveconf load from Dovecot's modules/settings
 * directory, so they know the settings and check them: a value that is
 * not valid stops Dovecot from starting, with the line naming it. */
#include "lib.h"
#include "str-parse.h"
#include "porcupine-settings.h"
#include "porcupine-settings24.h"

int pcp_parse_interval_msecs(const char *value, unsigned int *msecs_r,
			     const char **error_r)
{
	return str_parse_get_interval_msecs(value, msecs_r, error_r);
}

static bool porcupine_settings_check(void *_set, pool_t pool ATTR_UNUSED,
				     const char **error_r)
{
	struct porcupine_settings *set = _set;
	struct pcp_settings parsed;

	return pcp_settings_parse(set->porcupine_socket, set->porcupine_timeout_ms,
				  set->porcupine_idle_poll_ms, &parsed, error_r) >= 0;
}

#undef DEF
#define DEF(type, name) \
	SETTING_DEFINE_STRUCT_##type(#name, name, struct porcupine_settings)
static const struct setting_define porcupine_setting_defines[] = {
	DEF(STR, porcupine_socket),
	DEF(STR, porcupine_timeout_ms),
	DEF(STR, porcupine_idle_poll_ms),

	SETTING_DEFINE_LIST_END
};

static const struct porcupine_settings porcupine_default_settings = {
	.porcupine_socket = "",
	.porcupine_timeout_ms = "",
	.porcupine_idle_poll_ms = "",
};

const struct setting_parser_info porcupine_setting_parser_info = {
	.name = "porcupine",

	.defines = porcupine_setting_defines,
	.defaults = &porcupine_default_settings,
	.check_func = porcupine_settings_check,

	.struct_size = sizeof(struct porcupine_settings),
	.pool_offset1 = 1 + offsetof(struct porcupine_settings, pool),
};
