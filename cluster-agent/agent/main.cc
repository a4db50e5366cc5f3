// SPDX-License-Identifier: MIT
// main.cc - porcupine-agent: the cluster daemon on every node.
//
//   porcupine-agent [-c FILE] [-o name=value]... [--foreground]
//   porcupine-agent --print-defaults | --print-config [-c FILE]
//
// Exit status: 0 stopped by SIGTERM/SIGINT; 64 bad usage; 78 bad
// configuration; 69 a resource it needs (Redis, spool, sockets) is
// unusable; 75 the store failed while running (nothing unsafe was
// acknowledged; restart it).
#include <malloc.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange
#include <boost/asio.hpp>
#include <boost/program_options.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <google/protobuf/stubs/logging.h>
#include <iostream>
#include <sstream>

#include "agent/agent.h"
#include "config/config.h"

namespace po = boost::program_options;
using namespace porcupine;

namespace {

int facility_of(const std::string& name) {
  static const std::pair<const char*, int> table[] = {
      {"mail", LOG_MAIL},     {"daemon", LOG_DAEMON}, {"user", LOG_USER},     {"local0", LOG_LOCAL0},
      {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3}, {"local4", LOG_LOCAL4},
      {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6}, {"local7", LOG_LOCAL7}};
  for (const auto& [n, f] : table)
    if (name == n) return f;
  return LOG_MAIL;
}

std::string stamp() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf, static_cast<int>(ms % 1000));
  return out;
}

// The secret: the file's bytes without a trailing newline; at least 16.
std::string read_secret(const std::string& path, std::string& why) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    why = "cannot read secret_file " + path + " (create it with: head -c 32 /dev/urandom | base64 > " + path +
          "; chmod 600 " + path + ")";
    return {};
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  if (s.size() < 16) {
    why = "secret_file " + path + " holds fewer than 16 bytes";
    return {};
  }
  return s;
}

// protobuf's own complaints (a proto3 string that is not UTF-8, from a
// local client or a peer) go to the agent's log, at most kProtobufLines
// every 10 s and then one line that counts those left out: whoever can
// send a frame must not be able to fill the log.
std::function<void(const std::string&)> protobuf_log;
constexpr int kProtobufLines = 10;

void on_protobuf_log(google::protobuf::LogLevel level, const char*, int, const std::string& message) {
  static auto window = std::chrono::steady_clock::now();
  static int lines = 0, left_out = 0;
  auto now = std::chrono::steady_clock::now();
  if (now - window >= std::chrono::seconds(10)) {
    if (left_out > 0 && protobuf_log)
      protobuf_log("protobuf: " + std::to_string(left_out) + " more lines like the above left out");
    window = now;
    lines = left_out = 0;
  }
  if (++lines > kProtobufLines) {
    ++left_out;
    return;
  }
  if (protobuf_log)
    protobuf_log(std::string(level >= google::protobuf::LOGLEVEL_ERROR ? "warning: " : "") + "protobuf: " + message);
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description desc("porcupine-agent options");
  std::string conf = "/etc/porcupine/porcupine.conf";
  std::vector<std::string> overrides;
  desc.add_options()("help,h", "this help")("config,c", po::value(&conf), "configuration file")(
      "override,o", po::value(&overrides)->composing(), "name=value, overriding the file")(
      "print-defaults", "print every parameter with its default (like postconf -d) and exit")(
      "print-config", "print every parameter's effective value and exit")(
      "foreground", "accepted for compatibility: the agent always runs in the foreground (systemd Type=simple)")(
      "allow-root", "run even as root (the packages run it as user porcupine; root is for tests and development)");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "porcupine-agent: " << e.what() << "\n" << desc;
    return 64;
  }
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  if (vm.count("print-defaults")) {
    std::cout << config::print_defaults();
    return 0;
  }
  // A listing of a large folder allocates and frees some megabytes at a
  // time: they stay in the heap for the next one rather than go back to the
  // kernel and fault in again (the peak is the same; what is freed below
  // the heap's top is reused, never returned, as before).
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 128 << 20);
  if (::geteuid() == 0 && !vm.count("allow-root") && !vm.count("print-config")) {
    std::cerr << "porcupine-agent: refusing to run as root: run it as its own user (the packages' "
                 "porcupine), or give --allow-root\n";
    return 77;  // EX_NOPERM
  }
  std::vector<config::Error> errors;
  auto params = config::load_file(conf, errors, overrides);
  for (const auto& e : errors) std::cerr << "porcupine-agent: " << e.str() << "\n";
  if (!params) return 78;
  if (vm.count("print-config")) {
    std::cout << config::print_effective(*params);
    return 0;
  }

  const bool to_syslog = params->log_to == "syslog";
  if (to_syslog) openlog("porcupine-agent", LOG_PID | LOG_NDELAY, facility_of(params->syslog_facility));
  // One line each, whatever a client or peer put in it (a folder name, a
  // user name): control characters are written as \xNN.
  auto log = [to_syslog](const std::string& raw) {
    std::string line;
    line.reserve(raw.size());
    for (unsigned char c : raw) {
      if (c < 0x20 || c == 0x7f) {
        static const char hex[] = "0123456789abcdef";
        line += "\\x";
        line += hex[c >> 4];
        line += hex[c & 0xf];
      } else {
        line += static_cast<char>(c);
      }
    }
    // The severity is the line's own first word, where it has one.
    int priority = LOG_INFO;
    if (line.rfind("error: ", 0) == 0 || line.rfind("fatal: ", 0) == 0) priority = LOG_ERR;
    else if (line.rfind("warning: ", 0) == 0) priority = LOG_WARNING;
    if (to_syslog) syslog(priority, "%s", line.c_str());
    else std::cerr << stamp() << " porcupine-agent: " << line << "\n";
  };

  protobuf_log = log;
  google::protobuf::SetLogHandler(&on_protobuf_log);

  std::string why;
  agent::AgentOptions opt;
  opt.core = config::to_core(*params);
  opt.listen = params->listen_address.str();
  // Outgoing peer connections leave from the node's own address.
  if (params->source_address == "any") {
    opt.source_address.clear();
  } else if (!params->source_address.empty()) {
    opt.source_address = params->source_address;
  } else {
    const std::string& h = params->listen_address.host;
    if (h != "0.0.0.0" && h != "::" && h != "*") opt.source_address = h;
  }
  for (const auto& p : params->peers) opt.peers[p.id] = p.address.str();
  opt.secret = read_secret(params->secret_file, why);
  if (opt.secret.empty()) {
    log("fatal: " + why);
    return 78;
  }
  struct stat st {};
  if (::stat(params->secret_file.c_str(), &st) == 0 && (st.st_mode & 0077))
    log("warning: secret_file " + params->secret_file + " is readable by group or others; chmod 600 it");
  opt.spool_dir = params->spool_directory;
  opt.spool_reserve_bytes = params->spool_reserve_bytes;
  opt.cache_size = static_cast<std::uint64_t>(params->cache_size);
  opt.cache_dir = params->cache_dir;
  opt.cache_entry_max = static_cast<std::uint64_t>(params->cache_entry_max);
  opt.cache_reserve_bytes = static_cast<std::uint64_t>(params->cache_reserve_bytes);
  opt.redis_socket = params->redis_socket;
  opt.local_socket = params->local_socket;
  opt.local_socket_group = params->local_socket_group;
  opt.local_admin_group = params->local_admin_group;
  opt.metrics_listen = params->metrics_listen;
  opt.peer_security = params->peer_security;
  opt.reconnect_backoff_max_ms = params->reconnect_backoff_max_ms;
  opt.message_size_limit = params->message_size_limit;

  boost::asio::io_context io;
  agent::Agent agent(io, opt, log);
  // Redis may still be starting (a boot, a restart beside it): wait a while.
  for (int attempt = 0;; ++attempt) {
    try {
      agent.start();
      break;
    } catch (const std::exception& e) {
      if (attempt >= 50 || std::string(e.what()).find("edis") == std::string::npos) {
        log(std::string("fatal: ") + e.what());
        return 69;
      }
      if (attempt == 0) log(std::string("waiting for Redis: ") + e.what());
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](boost::system::error_code ec, int sig) {
    if (ec) return;
    log("agent: signal " + std::to_string(sig) + ", stopping");
    agent.stop();
    io.stop();
  });
  io.run();
  log("agent: stopped");
  return 0;
}
