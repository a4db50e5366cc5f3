// SPDX-License-Identifier: MIT
// porcupine-checkpassword - Dovecot's checkpassword passdb and userdb
// against the cluster's user database (porcupine-agent's UserAuth and
// UserGet).
//
// SYNOPSIS
//   passdb { driver = checkpassword
//            args = /usr/lib/porcupine/porcupine-checkpassword --socket=/run/porcupine/agent.sock }
//   userdb { driver = checkpassword
//            args = /usr/lib/porcupine/porcupine-checkpassword --socket=/run/porcupine/agent.sock
//            result_success = continue-ok ... }   (then a static userdb for uid, gid, home)
//
// DESCRIPTION
//   The checkpassword protocol: reads "user\0password\0..." (at most 512
//   bytes) from fd 3, asks the local agent whether the password is right,
//   and on success sets USER and execs the rest of its arguments (Dovecot
//   appends its checkpassword-reply). With AUTHORIZED=1 in the environment
//   (Dovecot's userdb or passdb lookup: no password to check) it asks only
//   whether the user exists and is enabled, and on success sets
//   AUTHORIZED=2 for the reply program. Options, before the program to run:
//     --socket=PATH    the agent's local socket (default: $PORCUPINE_SOCKET,
//                      else /run/porcupine/agent.sock)
//     --timeout=MS     deadline of the call (default 10000)
//
// DIAGNOSTICS
//   Exit 1: wrong password, unknown or disabled user. Exit 3 (a lookup):
//   unknown or disabled user, so LMTP refuses the recipient with 550 5.1.1
//   at RCPT instead of failing the delivery later. Exit 111: the agent
//   is unreachable or the cluster could not answer (a temporary failure).
//   Exit 2: bad usage. One line on stderr (Dovecot logs it) says why.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

#include "client/porcupine_client.h"

namespace {

constexpr int kBadPassword = 1;
constexpr int kUsage = 2;
constexpr int kUnknownUser = 3;
constexpr int kTempFail = 111;

// Reads fd 3 to its end (checkpassword sends at most 512 bytes).
bool read_fd3(std::string& out) {
  char buf[512];
  for (;;) {
    ssize_t n = read(3, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > 4096) return false;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const char* env_socket = std::getenv("PORCUPINE_SOCKET");
  std::string socket_path = env_socket && *env_socket ? env_socket : "/run/porcupine/agent.sock";
  int timeout_ms = 10000;
  int argi = 1;
  for (; argi < argc; ++argi) {
    std::string a = argv[argi];
    if (a.rfind("--socket=", 0) == 0) {
      socket_path = a.substr(9);
    } else if (a.rfind("--timeout=", 0) == 0) {
      timeout_ms = std::atoi(a.c_str() + 10);
    } else {
      break;
    }
  }
  if (argi >= argc) {
    std::fprintf(stderr, "usage: porcupine-checkpassword [--socket=PATH] [--timeout=MS] PROGRAM [ARGS...]\n");
    return kUsage;
  }

  std::string input;
  if (!read_fd3(input)) {
    std::fprintf(stderr, "porcupine-checkpassword: cannot read fd 3: %s\n", std::strerror(errno));
    return kUsage;
  }
  const char* authorized = std::getenv("AUTHORIZED");
  const bool lookup = authorized && std::strcmp(authorized, "1") == 0;
  std::size_t z1 = input.find('\0');
  std::size_t z2 = z1 == std::string::npos ? z1 : input.find('\0', z1 + 1);
  if (z1 == std::string::npos || z1 == 0 || (z2 == std::string::npos && !lookup)) {
    std::fprintf(stderr, "porcupine-checkpassword: malformed input on fd 3\n");
    return lookup ? kUnknownUser : kBadPassword;
  }
  std::string user = input.substr(0, z1);
  std::string password = z2 == std::string::npos ? "" : input.substr(z1 + 1, z2 - z1 - 1);

  porcupine_client* c = porcupine_open(socket_path.c_str(), timeout_ms);
  if (!c) {
    std::fprintf(stderr, "porcupine-checkpassword: cannot create a client\n");
    return kTempFail;
  }
  porcupine_user info{};
  int code = lookup ? porcupine_user_lookup(c, user.c_str(), &info)
                    : porcupine_user_auth(c, user.c_str(), password.c_str());
  std::string why = porcupine_error(c);
  porcupine_close(c);
  if (lookup && code == PORCUPINE_OK && !info.enabled) {
    code = PORCUPINE_NO_SUCH_USER;
    why = "disabled";
  }
  switch (code) {
    case PORCUPINE_OK:
      break;
    case PORCUPINE_NO_SUCH_USER:
    case PORCUPINE_NOT_FOUND:
    case PORCUPINE_BAD_REQUEST:
      std::fprintf(stderr, "porcupine-checkpassword: %s: %s\n", user.c_str(), why.c_str());
      return lookup ? kUnknownUser : kBadPassword;
    case PORCUPINE_AUTH_FAILED:
      std::fprintf(stderr, "porcupine-checkpassword: %s: %s\n", user.c_str(), why.c_str());
      return kBadPassword;
    default:
      std::fprintf(stderr, "porcupine-checkpassword: %s: temporary failure: %s\n", user.c_str(), why.c_str());
      return kTempFail;
  }

  if (setenv("USER", user.c_str(), 1) != 0) return kTempFail;
  if (lookup && setenv("AUTHORIZED", "2", 1) != 0) return kTempFail;
  execvp(argv[argi], argv + argi);
  std::fprintf(stderr, "porcupine-checkpassword: exec %s: %s\n", argv[argi], std::strerror(errno));
  return kTempFail;
}
