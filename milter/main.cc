// SPDX-License-Identifier: MIT
// main.cc - porcupine-milter: the Postfix smtpd milter of one cluster node.
//
// SYNOPSIS
//   porcupine-milter [-c porcupine.conf] [-o name=value]...
//
// DESCRIPTION
//   At RCPT TO it asks the node's porcupine-agent (local_socket) whether
//   the recipient is a cluster user and answers as policy.h says: accept,
//   550 5.1.1 (no such user), 452 4.2.2 (over quota) or 451 4.3.0 (the
//   cluster could not answer within milter_timeout_ms). Recipients outside
//   cluster_domains are passed through untouched. A message with at least
//   one accepted cluster recipient gets one trace header
//   (milter_trace_header) naming this node, inserted at the top.
//   Runs in the foreground until SIGTERM or SIGINT (libmilter's handling).
//
// THREADS
//   libmilter runs each SMTP connection on its own thread; each connection
//   owns its own agent client (one connection to the agent), created at the
//   first cluster recipient and closed with the SMTP connection. The
//   configuration is read once before any thread starts and never changes.
//   No exception leaves a callback: an unexpected one is a 451 4.3.0.
//
// CONFIGURATION PARAMETERS (porcupine.conf)
//   node_id, local_socket, cluster_domains, milter_socket,
//   milter_socket_group, milter_timeout_ms, milter_trace_header,
//   log_to, syslog_facility.
//
// DIAGNOSTICS
//   Configuration errors: one line each on stderr, exit status 78
//   (EX_CONFIG; 64 for a bad command line). A socket that cannot be set up,
//   or libmilter failing: exit status 1. At run time every 451 is logged
//   with the agent's reason; rejections with 550 and 452 at info level.
#include <grp.h>
#include <libmilter/mfapi.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "client/porcupine_client.h"
#include "config/config.h"
#include "policy.h"

namespace {

using porcupine::milter::Action;

// ---- Start-up state, read-only once smfi_main runs ---------------------------

struct Settings {
  std::string agent_socket;
  std::vector<std::string> domains;  // lower case
  int timeout_ms = 5000;
  std::string header_name;
  std::string header_value;  // "node 3 (mx3.example.org)"
  bool syslog = true;
};
Settings g;

void logf(int priority, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void logf(int priority, const char* fmt, ...) {
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (g.syslog) {
    syslog(priority, "%s", line);
  } else {
    const char* sev = priority <= LOG_ERR ? "error: " : priority == LOG_WARNING ? "warning: " : "";
    std::fprintf(stderr, "porcupine-milter: %s%s\n", sev, line);
  }
}

int facility(const std::string& name) {
  static const struct { const char* n; int f; } kFacilities[] = {
      {"auth", LOG_AUTH},     {"authpriv", LOG_AUTHPRIV}, {"daemon", LOG_DAEMON}, {"mail", LOG_MAIL},
      {"user", LOG_USER},     {"local0", LOG_LOCAL0},     {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2},
      {"local3", LOG_LOCAL3}, {"local4", LOG_LOCAL4},     {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},
      {"local7", LOG_LOCAL7}};
  for (const auto& f : kFacilities)
    if (name == f.n) return f.f;
  return LOG_MAIL;
}

// ---- Per-connection state ------------------------------------------------------

struct Session {
  porcupine_client* client = nullptr;  // opened at the first cluster recipient
  bool accepted = false;               // this message has an accepted cluster recipient
  ~Session() {
    if (client) porcupine_close(client);
  }
};

Session* session(SMFICTX* ctx) { return static_cast<Session*>(smfi_getpriv(ctx)); }

const char* macro(SMFICTX* ctx, const char* name) {
  const char* v = smfi_getsymval(ctx, const_cast<char*>(name));
  return v ? v : "";
}

// Every callback runs inside this: no exception reaches libmilter.
template <class F>
sfsistat guarded(const char* where, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    logf(LOG_ERR, "%s: %s; answering 451 4.3.0", where, e.what());
  } catch (...) {
    logf(LOG_ERR, "%s: unexpected failure; answering 451 4.3.0", where);
  }
  return SMFIS_TEMPFAIL;
}

porcupine::milter::Lookup lookup(Session& s, const std::string& address) {
  porcupine::milter::Lookup l;
  if (!s.client) s.client = porcupine_open(g.agent_socket.c_str(), g.timeout_ms);
  if (!s.client) {
    l.code = PORCUPINE_INTERNAL;
    l.error = "cannot allocate an agent client";
    return l;
  }
  porcupine_user u{};
  l.code = porcupine_user_lookup(s.client, address.c_str(), &u);
  if (l.code == PORCUPINE_OK) {
    l.enabled = u.enabled != 0;
    l.quota_bytes = u.quota_bytes;
    if constexpr (requires { u.used_bytes; }) l.used_bytes = u.used_bytes;
  } else {
    l.error = porcupine_error(s.client);
  }
  if (l.code == PORCUPINE_UNREACHABLE) {
    // The connection may be half-broken: start afresh next time.
    porcupine_close(s.client);
    s.client = nullptr;
  }
  return l;
}

sfsistat on_connect(SMFICTX* ctx, char*, _SOCK_ADDR*) {
  return guarded("connect", [&] {
    auto* s = new Session;
    if (smfi_setpriv(ctx, s) != MI_SUCCESS) {
      delete s;
      logf(LOG_ERR, "connect: cannot keep per-connection state");
      return SMFIS_TEMPFAIL;
    }
    return SMFIS_CONTINUE;
  });
}

sfsistat on_envfrom(SMFICTX* ctx, char**) {
  return guarded("MAIL FROM", [&] {
    if (Session* s = session(ctx)) s->accepted = false;
    return SMFIS_CONTINUE;
  });
}

sfsistat on_envrcpt(SMFICTX* ctx, char** argv) {
  return guarded("RCPT TO", [&] {
    Session* s = session(ctx);
    if (!s || !argv || !argv[0]) return SMFIS_TEMPFAIL;
    auto r = porcupine::milter::recipient(argv[0], g.domains);
    porcupine::milter::Lookup l;
    if (r.cluster && r.valid) l = lookup(*s, r.address);
    auto reply = porcupine::milter::answer(r, l);
    switch (reply.action) {
      case Action::kPass:
        return SMFIS_CONTINUE;
      case Action::kAccept:
        s->accepted = true;
        return SMFIS_CONTINUE;
      case Action::kReject:
      case Action::kTempfail:
        break;
    }
    const char* client = macro(ctx, "{client_addr}");
    if (reply.rcode == "451")
      logf(LOG_WARNING, "client %s: RCPT %s: %s %s: %s", client, argv[0], reply.rcode.c_str(), reply.xcode.c_str(),
           l.error.empty() ? "no answer from the cluster" : l.error.c_str());
    else
      logf(LOG_INFO, "client %s: RCPT %s: %s %s %s", client, argv[0], reply.rcode.c_str(), reply.xcode.c_str(),
           reply.text.c_str());
    // The address is echoed for clients that send several recipients;
    // only plain printable characters of it (no '%', which libmilter's
    // reply text treats specially).
    std::string shown;
    for (unsigned char c : r.address)
      if (c > ' ' && c < 0x7f && c != '%') shown += static_cast<char>(c);
    std::string text = reply.text + " (" + shown + ")";
    smfi_setreply(ctx, reply.rcode.data(), reply.xcode.data(), text.data());
    return reply.action == Action::kReject ? SMFIS_REJECT : SMFIS_TEMPFAIL;
  });
}

sfsistat on_eom(SMFICTX* ctx) {
  return guarded("end of message", [&] {
    Session* s = session(ctx);
    if (!s || !s->accepted) return SMFIS_CONTINUE;
    s->accepted = false;
    std::string value = g.header_value;
    if (const char* id = macro(ctx, "i"); *id) value += " id " + std::string(id);
    if (smfi_insheader(ctx, 0, g.header_name.data(), value.data()) != MI_SUCCESS) {
      logf(LOG_WARNING, "%s: cannot add the %s header; message accepted without it", macro(ctx, "i"),
           g.header_name.c_str());
    }
    return SMFIS_CONTINUE;
  });
}

sfsistat on_abort(SMFICTX* ctx) {
  return guarded("abort", [&] {
    if (Session* s = session(ctx)) s->accepted = false;
    return SMFIS_CONTINUE;
  });
}

sfsistat on_close(SMFICTX* ctx) {
  try {
    delete session(ctx);
    smfi_setpriv(ctx, nullptr);
  } catch (...) {
  }
  return SMFIS_CONTINUE;
}

constexpr int kExitUsage = 64;   // EX_USAGE
constexpr int kExitConfig = 78;  // EX_CONFIG: not worth restarting until fixed

bool valid_header_name(const std::string& n) {
  if (n.empty() || n.size() > 76) return false;
  for (unsigned char c : n)
    if (c < 33 || c > 126 || c == ':') return false;
  return true;
}

int usage() {
  std::fprintf(stderr, "usage: porcupine-milter [-c porcupine.conf] [-o name=value]...\n");
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  std::string conf = "/etc/porcupine/porcupine.conf";
  std::vector<std::string> overrides;
  int opt;
  while ((opt = getopt(argc, argv, "c:o:h")) != -1) {
    switch (opt) {
      case 'c': conf = optarg; break;
      case 'o': overrides.emplace_back(optarg); break;
      default: return usage();
    }
  }
  if (optind != argc) return usage();

  std::vector<porcupine::config::Error> errors;
  auto params = porcupine::config::load_file(conf, errors, overrides);
  for (const auto& e : errors) std::fprintf(stderr, "porcupine-milter: %s\n", e.str().c_str());
  if (!params) return kExitConfig;
  if (!valid_header_name(params->milter_trace_header)) {
    std::fprintf(stderr, "porcupine-milter: error: milter_trace_header %s is not a header name\n",
                 params->milter_trace_header.c_str());
    return kExitConfig;
  }
  if (params->cluster_domains.empty())
    std::fprintf(stderr, "porcupine-milter: warning: cluster_domains is empty: every recipient passes through\n");

  g.agent_socket = params->local_socket;
  for (const auto& d : params->cluster_domains) g.domains.push_back(porcupine::milter::lower(d));
  g.timeout_ms = static_cast<int>(params->milter_timeout_ms);
  g.header_name = params->milter_trace_header;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "unknown");
  g.header_value = "node " + std::to_string(params->node_id) + " (" + host + ")";
  g.syslog = params->log_to == "syslog";
  if (g.syslog) openlog("porcupine-milter", LOG_PID, facility(params->syslog_facility));

  smfiDesc desc{};
  desc.xxfi_name = const_cast<char*>("porcupine-milter");
  desc.xxfi_version = SMFI_VERSION;
  desc.xxfi_flags = SMFIF_ADDHDRS;
  desc.xxfi_connect = on_connect;
  desc.xxfi_envfrom = on_envfrom;
  desc.xxfi_envrcpt = on_envrcpt;
  desc.xxfi_eom = on_eom;
  desc.xxfi_abort = on_abort;
  desc.xxfi_close = on_close;

  const std::string& path = params->milter_socket;
  std::string conn = "unix:" + path;
  if (smfi_setconn(conn.data()) != MI_SUCCESS || smfi_register(desc) != MI_SUCCESS) {
    std::fprintf(stderr, "porcupine-milter: error: libmilter refused the socket %s or the filter\n", path.c_str());
    return 1;
  }
  // The socket is made 0660: smtpd reaches it through milter_socket_group
  // (empty: the milter's own group), no other local account at all.
  mode_t old = umask(007);
  bool opened = smfi_opensocket(true) == MI_SUCCESS;
  umask(old);
  if (!opened) {
    std::fprintf(stderr, "porcupine-milter: error: cannot listen on %s\n", path.c_str());
    return 1;
  }
  if (!params->milter_socket_group.empty()) {
    struct group* gr = getgrnam(params->milter_socket_group.c_str());
    if (!gr || chown(path.c_str(), static_cast<uid_t>(-1), gr->gr_gid) != 0) {
      std::fprintf(stderr, "porcupine-milter: error: cannot give %s to group %s: %s\n", path.c_str(),
                   params->milter_socket_group.c_str(), gr ? std::strerror(errno) : "no such group");
      unlink(path.c_str());
      return 1;
    }
  }
  std::string domains;
  for (const auto& d : g.domains) domains += (domains.empty() ? "" : " ") + d;
  logf(LOG_INFO, "node %u: serving %s, asking the agent at %s (deadline %d ms); cluster domains: %s",
       params->node_id, path.c_str(), g.agent_socket.c_str(), g.timeout_ms, domains.c_str());
  int rc = smfi_main();
  logf(LOG_INFO, "stopped");
  return rc == MI_SUCCESS ? 0 : 1;
}
