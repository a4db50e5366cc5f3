/* SPDX-License-Identifier: MIT */
/* porcupine-auth-lua.c - porcupine_auth.so, the Lua module through which
 * Dovecot 2.4's Lua passdb and userdb (lua/porcupine-auth.lua) ask the
 * node's agent about a user: 2.4 has no checkpassword driver, and Lua is
 * the way it gives to call out. The script loads the module with
 * package.loadlib (it is not on Lua's search path); Dovecot's auth
 * process, which runs the script, provides the Lua runtime (5.4).
 *
 *   check(socket, timeout_ms, user, password) -> status, reason
 *     the agent's UserAuth: the password goes to the agent, which compares
 *     it with the hash it keeps; no hash ever comes out.
 *   lookup(socket, timeout_ms, user) -> status, reason
 *     the agent's UserGet: whether the user exists and is enabled.
 *
 * status is "ok", "mismatch" (check: wrong password), "unknown" (no such
 * user, or a disabled one: Dovecot says no without telling which) or
 * "tempfail" (the agent is unreachable or the cluster could not answer);
 * reason is the agent's one line, "" with "ok". Bad arguments raise a Lua
 * error.
 *
 * One agent connection per (socket, timeout) is kept between calls: an
 * auth worker serves one request at a time, and the client reconnects by
 * itself after an error. */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "porcupine_client.h"

#define PCP_EXPORT __attribute__((visibility("default")))
PCP_EXPORT int luaopen_porcupine_auth(lua_State *L);

static porcupine_client *pcp_client;
static char *pcp_client_socket;
static int pcp_client_timeout;

/* The kept connection to `socket` with deadline `timeout_ms`, opened (or
   replaced) when the arguments change. NULL when none can be made. */
static porcupine_client *pcp_auth_client(const char *socket, int timeout_ms)
{
	if (pcp_client != NULL && pcp_client_timeout == timeout_ms &&
	    strcmp(pcp_client_socket, socket) == 0)
		return pcp_client;
	if (pcp_client != NULL)
		porcupine_close(pcp_client);
	free(pcp_client_socket);
	pcp_client = porcupine_open(socket, timeout_ms);
	pcp_client_socket = pcp_client == NULL ? NULL : strdup(socket);
	if (pcp_client != NULL && pcp_client_socket == NULL) {
		porcupine_close(pcp_client);
		pcp_client = NULL;
	}
	pcp_client_timeout = timeout_ms;
	return pcp_client;
}

static int pcp_auth_timeout(lua_State *L, int arg)
{
	lua_Integer ms = luaL_checkinteger(L, arg);

	luaL_argcheck(L, ms >= 1 && ms <= 3600 * 1000, arg,
		      "timeout_ms must be between 1 and 3600000");
	return (int)ms;
}

static int pcp_auth_result(lua_State *L, const char *status, const char *reason)
{
	lua_pushstring(L, status);
	lua_pushstring(L, reason == NULL ? "" : reason);
	return 2;
}

/* The status and reason for the agent's answer `code` to a call on `c`. */
static int pcp_auth_answer(lua_State *L, porcupine_client *c, int code)
{
	switch (code) {
	case PORCUPINE_OK:
		return pcp_auth_result(L, "ok", "");
	case PORCUPINE_AUTH_FAILED:
		return pcp_auth_result(L, "mismatch", porcupine_error(c));
	case PORCUPINE_NO_SUCH_USER:
	case PORCUPINE_NOT_FOUND:
	case PORCUPINE_BAD_REQUEST:
		return pcp_auth_result(L, "unknown", porcupine_error(c));
	default:
		return pcp_auth_result(L, "tempfail", porcupine_error(c));
	}
}

static int pcp_auth_check(lua_State *L)
{
	const char *socket = luaL_checkstring(L, 1);
	int timeout_ms = pcp_auth_timeout(L, 2);
	const char *user = luaL_checkstring(L, 3);
	const char *password = luaL_checkstring(L, 4);
	porcupine_client *c = pcp_auth_client(socket, timeout_ms);

	if (c == NULL)
		return pcp_auth_result(L, "tempfail", "cannot create an agent client");
	return pcp_auth_answer(L, c, porcupine_user_auth(c, user, password));
}

static int pcp_auth_lookup(lua_State *L)
{
	const char *socket = luaL_checkstring(L, 1);
	int timeout_ms = pcp_auth_timeout(L, 2);
	const char *user = luaL_checkstring(L, 3);
	porcupine_client *c = pcp_auth_client(socket, timeout_ms);
	struct porcupine_user info;
	int code;

	if (c == NULL)
		return pcp_auth_result(L, "tempfail", "cannot create an agent client");
	memset(&info, 0, sizeof info);
	code = porcupine_user_lookup(c, user, &info);
	if (code == PORCUPINE_OK && !info.enabled)
		return pcp_auth_result(L, "unknown", "disabled");
	return pcp_auth_answer(L, c, code);
}

static const luaL_Reg pcp_auth_functions[] = {
	{ "check", pcp_auth_check },
	{ "lookup", pcp_auth_lookup },
	{ NULL, NULL }
};

int luaopen_porcupine_auth(lua_State *L)
{
	luaL_newlib(L, pcp_auth_functions);
	return 1;
}
