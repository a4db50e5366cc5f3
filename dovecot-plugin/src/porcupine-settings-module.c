/* SPDX-License-Identifier: MIT */
/* porcupine-settings-module.c - Dovecot 2.4's settings module of the
 * plugin (libporcupine_settings.so in Dovecot's modules/settings
 * directory). The config process and doveconf load every module there
 * and take the settings structs its <name>_set_infos lists, so that
 * porcupine_socket and the durations are settings they know (and check,
 * porcupine-settings24.c) rather than unknown ones. Nothing else: the
 * mail plugin is lib20_porcupine_plugin.so. */
#include "lib.h"
#include "porcupine-settings24.h"

#define PCP_EXPORT __attribute__((visibility("default")))

PCP_EXPORT const char *porcupine_settings_version = DOVECOT_ABI_VERSION;
PCP_EXPORT const struct setting_parser_info *porcupine_settings_set_infos[] = {
	&porcupine_setting_parser_info,
	NULL
};
