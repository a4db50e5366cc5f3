-- SPDX-License-Identifier: MIT
-- porcupine-auth.lua - Dovecot 2.4's passdb and userdb against the
-- cluster's user database, through the node's porcupine-agent (Dovecot
-- 2.3 uses porcupine-checkpassword instead; 2.4 has no checkpassword).
--
--   passdb lua {
--     lua_file = /usr/share/porcupine/porcupine-auth.lua
--     lua_settings {
--       socket = /run/porcupine/agent.sock   # the agent's local socket
--       timeout_ms = 10000                   # deadline of each call
--       module = /usr/lib/porcupine/porcupine_auth.so
--     }
--   }
--   userdb lua { the same; then a static userdb for uid, gid and home }
--
-- Passwords: the plaintext one the client sent goes to the agent, which
-- compares it with the hash it keeps (auth_password_verify); no hash ever
-- comes out, so only plaintext mechanisms (PLAIN, LOGIN) can work, and a
-- credentials lookup (CRAM-MD5, SCRAM) is answered "scheme not available".
-- Users: the agent says whether the user exists and is enabled
-- (auth_userdb_lookup); an unknown or disabled user is USER_UNKNOWN, so
-- LMTP refuses the recipient with 550 5.1.1 at RCPT. An agent that cannot
-- answer gives INTERNAL_FAILURE: a 4xx, the client or Postfix tries again.
-- Every answer but "ok" carries the agent's reason into Dovecot's log.

local porcupine = nil
local socket_path = "/run/porcupine/agent.sock"
local timeout_ms = 10000

function script_init(args)
  local module = args.module or "/usr/lib/porcupine/porcupine_auth.so"
  local open, err = package.loadlib(module, "luaopen_porcupine_auth")
  if open == nil then
    error("porcupine-auth: cannot load " .. module .. ": " .. tostring(err))
  end
  porcupine = open()
  if args.socket ~= nil and args.socket ~= "" then
    socket_path = args.socket
  end
  if args.timeout_ms ~= nil then
    local ms = math.tointeger(tonumber(args.timeout_ms))
    if ms == nil or ms < 1 or ms > 3600000 then
      error("porcupine-auth: timeout_ms: invalid value '" .. tostring(args.timeout_ms) ..
            "' (milliseconds, 1 to 3600000)")
    end
    timeout_ms = ms
  end
  return 0
end

function auth_password_verify(req, password)
  local status, reason = porcupine.check(socket_path, timeout_ms, req.user, password)
  if status == "ok" then
    return dovecot.auth.PASSDB_RESULT_OK, {}
  elseif status == "mismatch" then
    return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "porcupine: " .. reason
  elseif status == "unknown" then
    return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "porcupine: " .. reason
  end
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "porcupine: temporary failure: " .. reason
end

function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE,
         "porcupine: password hashes stay in the cluster; use a plaintext mechanism"
end

function auth_userdb_lookup(req)
  local status, reason = porcupine.lookup(socket_path, timeout_ms, req.user)
  if status == "ok" then
    return dovecot.auth.USERDB_RESULT_OK, {}
  elseif status == "unknown" then
    return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, "porcupine: " .. reason
  end
  return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, "porcupine: temporary failure: " .. reason
end
