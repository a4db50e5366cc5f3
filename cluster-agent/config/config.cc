// SPDX-License-Identifier: MIT
// config.cc - the parameter table of porcupine.conf and everything driven
// by it: the main.cf-style reader, $name expansion, typed values and their
// bounds, the cross-checks, the listings and the docs table.
//
// The table is the only list of parameter names; it is checked at compile
// time (unique names, a field of the right type for each entry). Nothing
// here keeps state between calls.
#include "config/config.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include <boost/algorithm/string/case_conv.hpp>
#include <boost/algorithm/string/classification.hpp>
#include <boost/algorithm/string/predicate.hpp>
#include <boost/algorithm/string/split.hpp>
#include <boost/algorithm/string/trim.hpp>

namespace porcupine::config {

namespace {

// ---- The table -------------------------------------------------------------

constexpr std::int64_t kSecond = 1000;  // in ms
constexpr std::int64_t kDay = 86400;    // in s
// Node ids are 32 bits on the wire and at rest; the configuration takes
// 16 of them, enough for any cluster the bucket count serves.
constexpr std::int64_t kNodeMin = 1, kNodeMax = 65535;
constexpr std::int64_t kSizeMax = std::int64_t{64} << 40;  // 64T

constexpr Param P(std::string_view name, Type type, std::string_view fallback, std::int64_t min,
                  std::int64_t max, std::string_view doc, Field field) {
  return Param{name, type, fallback, false, min, max, {}, doc, field};
}
constexpr Param P(std::string_view name, Type type, std::string_view fallback,
                  std::string_view doc, Field field) {
  return Param{name, type, fallback, false, 0, 0, {}, doc, field};
}

// Defaults of the core's tunables equal CoreConfig's (a test holds them to it).
constexpr std::array kTable{
    // This node.
    Param{"node_id", Type::kCount, "", true, kNodeMin, kNodeMax, {},
          "This node's identity in the cluster: unique, never reused for another machine. Mandatory.",
          &Params::node_id},
    P("node_weight", Type::kCount, "1", 1, 100,
      "Capacity of this node relative to the others: weight 2 manages twice the buckets of weight 1.",
      &Params::node_weight),
    P("listen_address", Type::kAddress, "127.0.0.1:7400",
      "Address and port on which the agent accepts connections from other agents.",
      &Params::listen_address),
    P("source_address", Type::kString, "",
      "Address this agent's connections to other agents leave from (as Postfix's smtp_bind_address), so per-node "
      "firewall rules can tell nodes apart. Empty: the host of listen_address, unless that is a wildcard "
      "(0.0.0.0, ::), when the kernel chooses; 'any': the kernel chooses.",
      &Params::source_address),
    P("peers", Type::kNodeList, "",
      "The cluster's nodes as id@host:port, contacted when joining; may list this node with its own address.",
      &Params::peers),
    P("secret_file", Type::kPath, "/etc/porcupine/secret",
      "File holding the secret shared by all agents, which authenticates them to each other.",
      &Params::secret_file),
    P("spool_directory", Type::kPath, "/var/lib/porcupine/spool",
      "Directory of the message bodies stored on this node.", &Params::spool_directory),
    P("spool_reserve_bytes", Type::kCount, "1073741824", 0, 4294967295,
      "Free space (bytes) to keep on the spool's filesystem. Below it this node is full: no new message copies "
      "are placed on it, and any that arrive anyway are refused (their senders keep them and try again or "
      "elsewhere); it takes copies again once a quarter more than this is free. 0: no reserve (only bodies that "
      "cannot be written are refused).",
      &Params::spool_reserve_bytes),
    P("cache_size", Type::kSize, "1G", 0, kSizeMax,
      "Budget of the node cache: bodies of messages this node holds no replica of, kept after a read so that "
      "the next one is local, the least recently used evicted first. It counts the blocks its files take; "
      "Dovecot's indexes are not in it. 0: no cache (every read of such a message fetches it from a holder).",
      &Params::cache_size),
    P("cache_dir", Type::kString, "",
      "Directory of the node cache (mode 0700); empty: the directory cache in spool_directory. Keep it on the "
      "spool's filesystem, where a body the node receives is linked into it instead of copied. It is "
      "disposable: what it holds may be deleted while the agent is stopped.",
      &Params::cache_dir),
    P("cache_entry_max", Type::kSize, "0", 0, kSizeMax,
      "Largest body the node cache keeps; a larger one is fetched from a holder at every read. 0: an eighth of "
      "cache_size.",
      &Params::cache_entry_max),
    P("cache_reserve_bytes", Type::kSize, "2G", 0, kSizeMax,
      "Free space the node cache leaves on its filesystem: below it the cache evicts and keeps nothing new. "
      "On the spool's filesystem it leaves at least a quarter more than spool_reserve_bytes whatever this says, "
      "so the cache gives way before the node stops taking message copies. 0: no reserve of its own.",
      &Params::cache_reserve_bytes),
    P("redis_socket", Type::kPath, "/run/porcupine/redis.sock",
      "Unix socket of the node-local Redis that holds the agent's metadata.",
      &Params::redis_socket),
    P("local_socket", Type::kPath, "/run/porcupine/agent.sock",
      "Unix socket of the local API used by porcupine-milter, the Dovecot plugin and porcupinectl.",
      &Params::local_socket),
    P("local_socket_group", Type::kString, "mail",
      "Group given access to local_socket, so that Postfix and Dovecot may connect.",
      &Params::local_socket_group),
    P("local_admin_group", Type::kString, "",
      "Group whose members may administer users over local_socket (add, change, delete, list), besides root and "
      "the agent's own user; everyone else who can connect gets mail operations only.",
      &Params::local_admin_group),
    P("auth_failures_per_user", Type::kCount, "10", 0, 1000000,
      "Failed password checks a user may have in a burst (0: no limit). Beyond it the agent answers \"try later\" "
      "(Dovecot: a temporary authentication failure) without checking, until the budget refills over "
      "auth_failure_window_ms.",
      &Params::auth_failures_per_user),
    P("auth_failure_window_ms", Type::kMillis, "60000", 1000, 86400 * kSecond,
      "Time over which a user's budget of failed password checks refills completely.",
      &Params::auth_failure_window_ms),
    P("profile_memory_users", Type::kCount, "50000", 0, 10000000,
      "Profiles (password hash, quota, folders) of users this node looked up lately that it keeps in memory (0: "
      "none). When every holder of a user's profile is out of reach (a partition, or both holders down), the "
      "user's manager takes the profile from this memory: the user can log in, read and change flags on this "
      "side; a password change or deletion made on the other side is seen here only after the heal.",
      &Params::profile_memory_users),
    P("profile_memory_ttl", Type::kSeconds, "1d", 60, 30 * kDay,
      "How long a profile in the memory of profile_memory_users may be used after it was last looked up.",
      &Params::profile_memory_ttl),
    // A string, not an address: empty is allowed and means no endpoint;
    // cross_check parses any other value as host:port.
    P("metrics_listen", Type::kString, "",
      "host:port on which the agent serves its Prometheus metrics at /metrics over plain HTTP (empty: not "
      "served). Anyone who can reach it reads them: keep it on localhost or a monitoring network.",
      &Params::metrics_listen),

    // The cluster.
    P("buckets", Type::kCount, "1024", 16, 65536,
      "Number of buckets in the user map; must be the same on every node of the cluster.",
      &Params::buckets),
    P("spread", Type::kCount, "2", 1, 16,
      "Soft limit on the number of nodes that hold one user's mail.", &Params::spread),
    P("replication_factor", Type::kCount, "2", 1, 8,
      "Copies kept of each message and each user profile.", &Params::replication_factor),

    // Timing of the cluster protocols.
    P("probe_interval_ms", Type::kMillis, "500", 10, 60 * kSecond,
      "Interval between probes of the next node on the ring.", &Params::probe_interval_ms),
    P("probe_timeout_ms", Type::kMillis, "2000", 20, 600 * kSecond,
      "A node whose successor is silent this long suspects it; must exceed probe_interval_ms.",
      &Params::probe_timeout_ms),
    P("discovery_interval_ms", Type::kMillis, "2000", 10, 600 * kSecond,
      "Interval at which the group leader probes known nodes outside the group.",
      &Params::discovery_interval_ms),
    P("accept_window_ms", Type::kMillis, "500", 10, 60 * kSecond,
      "How long the coordinator of a membership round collects Accepts.",
      &Params::accept_window_ms),
    P("commit_timeout_ms", Type::kMillis, "3000", 10, 600 * kSecond,
      "A node that promised a round but saw no Commit this long coordinates a round itself.",
      &Params::commit_timeout_ms),
    P("reconfig_backoff_ms", Type::kMillis, "1000", 0, 600 * kSecond,
      "Least time between two membership rounds started because views disagree.",
      &Params::reconfig_backoff_ms),
    P("report_retry_ms", Type::kMillis, "1000", 10, 600 * kSecond,
      "Interval at which unacknowledged mail-map reports are sent again.",
      &Params::report_retry_ms),
    P("report_poll_ms", Type::kMillis, "3000", 10, 600 * kSecond,
      "A manager asks a member silent this long for its mail-map report.",
      &Params::report_poll_ms),
    P("push_retry_ms", Type::kMillis, "1000", 10, 600 * kSecond,
      "Interval at which unacknowledged replicated updates are pushed again.",
      &Params::push_retry_ms),
    P("takeover_delay_ms", Type::kMillis, "3000", 0, 600 * kSecond,
      "A replica other than the coordinator starts pushing an update after this long.",
      &Params::takeover_delay_ms),
    P("death_certificate_ttl", Type::kSeconds, "1d", 60, 365 * kDay,
      "How long an expunged message stays as a death certificate, so late updates cannot revive it.",
      &Params::death_certificate_ttl),
    P("sync_interval", Type::kSeconds, "15m", 0, 7 * kDay,
      "How often a node asks each member for the records and profiles the member holds that name it, and copies "
      "what it lacks (anti-entropy; also when a member joins its group). 0: only when a member joins.",
      &Params::sync_interval),
    P("sync_bodies_inflight", Type::kCount, "16", 1, 1024,
      "Message bodies a node asks of one peer at a time when it copies what it lacks (sync_interval): the repair "
      "traffic's bound, so it does not crowd out mail.",
      &Params::sync_bodies_inflight),
    P("node_dead_timeout", Type::kSeconds, "1h", 0, 365 * kDay,
      "A node out of the group this long is declared gone for good, as by porcupinectl node forget: every copy "
      "it held is made again on other nodes (repair). A node that comes back after is taken back, and drops the "
      "copies that moved. Decided by the group's lowest node, only in a group of most of the cluster. "
      "0: never (only porcupinectl node forget).",
      &Params::node_dead_timeout),
    P("repair_inflight", Type::kCount, "8", 1, 1024,
      "Messages one node copies at a time when it repairs (a node gone) or drains (porcupinectl drain): the "
      "bound on repair traffic, so it does not crowd out mail.",
      &Params::repair_inflight),
    P("listing_part_records", Type::kCount, "1000", 1, 1 << 20,
      "Records one reply of a folder listing carries between nodes: a larger folder goes in several replies, "
      "which the asking node merges while the holder makes the next, and no frame carries a whole large folder.",
      &Params::listing_part_records),
    P("delivery_key_ttl", Type::kSeconds, "1d", 60, 30 * kDay,
      "How long a user's manager remembers each delivery from the MTA (by a digest of the message as Postfix "
      "sent it), so that a retry of it (after a 4xx or an answer lost in a crash) is answered with the message "
      "already stored instead of storing a second copy. Longer covers retries that come later (Postfix's "
      "queue); each remembered delivery costs its manager about 200 bytes of memory.",
      &Params::delivery_key_ttl),
    P("request_timeout_ms", Type::kMillis, "5000", 100, 600 * kSecond,
      "Deadline of one client operation (a delivery, a fetch, a flag change).",
      &Params::request_timeout_ms),
    P("body_transfer_rate_kib", Type::kCount, "8192", 64, 1 << 22,
      "Rate (KiB/s) a message body is assumed to cross to a peer and reach its disk at: "
      "a delivery's deadline, and the wait before an update carrying a body is sent again, "
      "grow by the body's size at this rate.",
      &Params::body_transfer_rate_kib),
    P("reconnect_backoff_max_ms", Type::kMillis, "30000", 100, 600 * kSecond,
      "Longest wait between two attempts to connect to a peer.",
      &Params::reconnect_backoff_max_ms),
    P("message_size_limit", Type::kCount, "52428800", 1024, 1 << 30,
      "Largest message in bytes, as Postfix takes it: set Postfix's message_size_limit to the same. The agent "
      "takes up to 64 KiB more for the trace headers added on the way; a larger delivery gets 552 5.3.4 at LMTP.",
      &Params::message_size_limit),

    Param{"peer_security", Type::kChoice, "tls", false, 0, 0, "tls|both|legacy",
          "How agents connect: tls (TLS 1.3 with a key from the cluster secret; the only safe choice), both "
          "(dial the old unencrypted handshake, accept either: for a rolling upgrade from agents before TLS), "
          "legacy (the old handshake only).",
          &Params::peer_security},

    // Logging, and the other daemons of the node.
    Param{"log_to", Type::kChoice, "syslog", false, 0, 0, "syslog|stderr",
          "Where the agent logs.", &Params::log_to},
    Param{"syslog_facility", Type::kChoice, "mail", false, 0, 0,
          "auth|authpriv|daemon|mail|user|local0|local1|local2|local3|local4|local5|local6|local7",
          "Syslog facility of the agent's messages when log_to = syslog.",
          &Params::syslog_facility},
    P("cluster_domains", Type::kList, "",
      "Mail domains whose users live in the cluster (read by porcupine-milter).",
      &Params::cluster_domains),
    P("milter_socket", Type::kPath, "/run/porcupine/milter.sock",
      "Unix socket on which porcupine-milter serves Postfix's smtpd (smtpd_milters = unix:...).",
      &Params::milter_socket),
    P("milter_socket_group", Type::kString, "postfix",
      "Group given access to milter_socket (mode 0660); empty leaves the socket to the milter's own group.",
      &Params::milter_socket_group),
    P("milter_timeout_ms", Type::kMillis, "5000", 100, 60 * kSecond,
      "Deadline of porcupine-milter's question to the agent; past it the recipient gets 451 4.3.0.",
      &Params::milter_timeout_ms),
    P("milter_trace_header", Type::kString, "X-Porcupine-Accepted-By",
      "Name of the header porcupine-milter adds, naming the node that accepted the message.",
      &Params::milter_trace_header),
};

// Which alternative of Field each type stores its value in.
constexpr std::size_t field_index(Type t) {
  switch (t) {
    case Type::kString:
    case Type::kPath:
    case Type::kChoice: return 0;
    case Type::kCount: return 1;
    case Type::kMillis:
    case Type::kSeconds:
    case Type::kSize: return 2;
    case Type::kBool: return 3;
    case Type::kAddress: return 4;
    case Type::kNodeList: return 5;
    case Type::kList: return 6;
  }
  return 99;
}

constexpr bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

constexpr bool table_is_sound() {
  for (std::size_t i = 0; i < kTable.size(); ++i) {
    const Param& p = kTable[i];
    if (p.name.empty() || p.doc.empty()) return false;
    for (char c : p.name)
      if (!is_name_char(c) || (c >= 'A' && c <= 'Z')) return false;
    if (p.field.index() != field_index(p.type)) return false;
    if (p.min > p.max) return false;
    if (p.mandatory && !p.fallback.empty()) return false;
    if (p.fallback.find('$') != std::string_view::npos) return false;
    if ((p.type == Type::kChoice) == p.choices.empty()) return false;
    for (std::size_t j = i + 1; j < kTable.size(); ++j)
      if (kTable[j].name == p.name) return false;
  }
  return true;
}
static_assert(table_is_sound(), "porcupine.conf parameter table is inconsistent");

const Param* find_param(std::string_view name) {
  for (const Param& p : kTable)
    if (p.name == name) return &p;
  return nullptr;
}

// ---- Small text helpers ----------------------------------------------------

std::string trim(std::string_view s) { return boost::algorithm::trim_copy(std::string(s)); }

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t'; });
}

bool valid_name(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), is_name_char);
}

// Items of a list value: commas and whitespace separate, as in main.cf.
std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> parts;
  std::string copy(text);
  boost::algorithm::split(parts, copy, boost::algorithm::is_any_of(", \t\n"),
                          boost::algorithm::token_compress_on);
  std::erase_if(parts, [](const std::string& s) { return s.empty(); });
  return parts;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// " (did you mean 'x'?)" for the closest known name, or "": a name a few
// typos away, else one that the word begins (spool_dir: spool_directory).
std::string suggestion(std::string_view name) {
  const std::string lower = boost::algorithm::to_lower_copy(std::string(name));
  const Param* best = nullptr;
  std::size_t best_distance = std::max<std::size_t>(2, lower.size() / 4) + 1;
  for (const Param& p : kTable) {
    std::size_t d = edit_distance(lower, p.name);
    if (d < best_distance) best = &p, best_distance = d;
  }
  if (!best && lower.size() >= 4)
    for (const Param& p : kTable)
      if (p.name.starts_with(lower) && (!best || p.name.size() < best->name.size())) best = &p;
  return best ? " (did you mean '" + std::string(best->name) + "'?)" : std::string();
}

std::string escape_dollars(std::string_view s) {
  std::string out;
  for (char c : s) {
    out += c;
    if (c == '$') out += '$';
  }
  return out;
}

// ---- Typed values ----------------------------------------------------------

// Each parser returns nullopt on success, or why the text is not a value of
// its type; an out-of-range number is reported as kOutOfRange.
const std::string kOutOfRange = "out of range";

std::optional<std::string> parse_unsigned(std::string_view text, std::uint64_t& out) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return "not a number";
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (ec == std::errc::result_out_of_range) return kOutOfRange;
  if (ec != std::errc() || end != text.data() + text.size()) return "not a number";
  return std::nullopt;
}

std::optional<std::string> parse_number(std::string_view text, std::int64_t min, std::int64_t max,
                                        std::int64_t& out) {
  std::uint64_t n = 0;
  if (auto why = parse_unsigned(text, n)) return why;
  if (n > static_cast<std::uint64_t>(max) || static_cast<std::int64_t>(n) < min) return kOutOfRange;
  out = static_cast<std::int64_t>(n);
  return std::nullopt;
}

struct Unit {
  std::string_view suffix;
  std::int64_t ms;
};
constexpr Unit kUnits[] = {{"ms", 1},
                           {"s", kSecond},
                           {"m", 60 * kSecond},
                           {"h", 3600 * kSecond},
                           {"d", kDay * kSecond}};

// A time with an optional unit, in the unit `base_ms` (1 or 1000 ms).
std::optional<std::string> parse_time(std::string_view text, std::int64_t base_ms, std::int64_t min,
                                      std::int64_t max, std::int64_t& out) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view suffix = text.substr(digits);
  std::int64_t scale = 1;
  if (!suffix.empty()) {
    const Unit* unit = nullptr;
    for (const Unit& u : kUnits)
      if (u.suffix == suffix && u.ms >= base_ms) unit = &u;
    if (!unit)
      return base_ms == 1 ? "expected a number with an optional unit ms, s, m, h or d"
                          : "expected a number with an optional unit s, m, h or d";
    scale = unit->ms / base_ms;
  }
  std::uint64_t n = 0;
  if (auto why = parse_unsigned(text.substr(0, digits), n)) {
    if (*why != kOutOfRange) return "expected a number with an optional unit";
    return why;
  }
  if (n > static_cast<std::uint64_t>(max) / static_cast<std::uint64_t>(scale)) return kOutOfRange;
  std::int64_t v = static_cast<std::int64_t>(n) * scale;
  if (v < min) return kOutOfRange;
  out = v;
  return std::nullopt;
}

// Seconds written with the largest unit that divides them: 86400 -> "1d".
std::string format_seconds(std::int64_t s) {
  for (auto [suffix, unit] : {std::pair{"d", kDay}, {"h", std::int64_t{3600}}, {"m", std::int64_t{60}}})
    if (s != 0 && s % unit == 0) return std::to_string(s / unit) + suffix;
  return std::to_string(s) + "s";
}

// Bytes with an optional unit, as Dovecot writes sizes: k, M, G or T
// (powers of 1024, any case, an optional B after them), or B alone.
std::optional<std::string> parse_size(std::string_view text, std::int64_t min, std::int64_t max,
                                      std::int64_t& out) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string unit = boost::algorithm::to_lower_copy(std::string(text.substr(digits)));
  if (unit.size() == 2 && unit[1] == 'b') unit.pop_back();
  int shift = 0;
  if (unit == "k") shift = 10;
  else if (unit == "m") shift = 20;
  else if (unit == "g") shift = 30;
  else if (unit == "t") shift = 40;
  else if (!unit.empty() && unit != "b") return "expected a number of bytes with an optional unit k, M, G or T";
  std::uint64_t n = 0;
  if (auto why = parse_unsigned(text.substr(0, digits), n)) {
    if (*why != kOutOfRange) return "expected a number of bytes with an optional unit k, M, G or T";
    return why;
  }
  if (n > (static_cast<std::uint64_t>(max) >> shift)) return kOutOfRange;
  std::int64_t v = static_cast<std::int64_t>(n << shift);
  if (v < min) return kOutOfRange;
  out = v;
  return std::nullopt;
}

// Bytes written with the largest unit that divides them: 1073741824 -> "1G".
std::string format_size(std::int64_t bytes) {
  for (auto [suffix, shift] : {std::pair{"T", 40}, {"G", 30}, {"M", 20}, {"k", 10}})
    if (bytes != 0 && bytes % (std::int64_t{1} << shift) == 0) return std::to_string(bytes >> shift) + suffix;
  return std::to_string(bytes);
}

std::optional<std::string> parse_address(std::string_view text, Address& out) {
  std::string_view host, port;
  if (text.starts_with('[')) {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return "expected [host]:port";
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return "expected host:port";
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return "write an IPv6 address in brackets: [host]:port";
  }
  if (host.empty()) return "expected host:port, the host is empty";
  if (std::any_of(host.begin(), host.end(), [](char c) { return c == ' ' || c == '\t' || c == '@'; }))
    return "bad host name";
  std::int64_t p = 0;
  if (parse_number(port, 1, 65535, p)) return "expected a port number 1..65535 after the ':'";
  out = Address{std::string(host), static_cast<std::uint16_t>(p)};
  return std::nullopt;
}

std::optional<std::string> parse_node_list(std::string_view text, std::vector<Peer>& out) {
  std::vector<Peer> peers;
  for (const std::string& item : split_list(text)) {
    auto at = item.find('@');
    if (at == std::string::npos) return "'" + item + "' is not id@host:port";
    Peer peer;
    std::int64_t id = 0;
    if (parse_number(std::string_view(item).substr(0, at), kNodeMin, kNodeMax, id))
      return "'" + item + "': the node id must be a number " + std::to_string(kNodeMin) + ".." +
             std::to_string(kNodeMax);
    peer.id = static_cast<NodeId>(id);
    if (auto why = parse_address(std::string_view(item).substr(at + 1), peer.address))
      return "'" + item + "': " + *why;
    for (const Peer& other : peers) {
      if (other.id == peer.id) return "node " + std::to_string(peer.id) + " is listed twice";
      if (other.address == peer.address)
        return "nodes " + std::to_string(other.id) + " and " + std::to_string(peer.id) +
               " have the same address " + peer.address.str();
    }
    peers.push_back(std::move(peer));
  }
  out = std::move(peers);
  return std::nullopt;
}

std::string range_text(const Param& p) {
  switch (p.type) {
    case Type::kCount: return std::to_string(p.min) + ".." + std::to_string(p.max);
    case Type::kMillis: return std::to_string(p.min) + ".." + std::to_string(p.max) + " ms";
    case Type::kSeconds: return format_seconds(p.min) + ".." + format_seconds(p.max);
    case Type::kSize: return format_size(p.min) + ".." + format_size(p.max);
    case Type::kChoice: {
      std::string s(p.choices);
      for (std::size_t i = 0; (i = s.find('|', i)) != std::string::npos; i += 3) s.replace(i, 1, " | ");
      return s;
    }
    case Type::kPath: return "absolute path";
    case Type::kBool: return "yes | no";
    default: return "";
  }
}

// Stores `text` as the value of `p`; nullopt on success, else the message.
std::optional<std::string> set_value(Params& params, const Param& p, std::string_view text) {
  std::optional<std::string> why;
  switch (p.type) {
    case Type::kString:
      params.*std::get<std::string Params::*>(p.field) = std::string(text);
      break;
    case Type::kPath:
      if (!text.starts_with('/')) why = "expected an absolute path";
      else params.*std::get<std::string Params::*>(p.field) = std::string(text);
      break;
    case Type::kChoice: {
      std::vector<std::string> words;
      boost::algorithm::split(words, p.choices, boost::algorithm::is_any_of("|"));
      if (std::find(words.begin(), words.end(), text) == words.end())
        why = "expected one of " + range_text(p);
      else
        params.*std::get<std::string Params::*>(p.field) = std::string(text);
      break;
    }
    case Type::kCount: {
      std::int64_t v = 0;
      why = parse_number(text, p.min, p.max, v);
      if (!why) params.*std::get<std::uint32_t Params::*>(p.field) = static_cast<std::uint32_t>(v);
      else if (*why != kOutOfRange) why = "expected a number";
      break;
    }
    case Type::kMillis:
    case Type::kSeconds: {
      std::int64_t v = 0;
      why = parse_time(text, p.type == Type::kMillis ? 1 : kSecond, p.min, p.max, v);
      if (!why) params.*std::get<std::int64_t Params::*>(p.field) = v;
      break;
    }
    case Type::kSize: {
      std::int64_t v = 0;
      why = parse_size(text, p.min, p.max, v);
      if (!why) params.*std::get<std::int64_t Params::*>(p.field) = v;
      break;
    }
    case Type::kBool:
      if (boost::algorithm::iequals(text, "yes")) params.*std::get<bool Params::*>(p.field) = true;
      else if (boost::algorithm::iequals(text, "no")) params.*std::get<bool Params::*>(p.field) = false;
      else why = "expected yes or no";
      break;
    case Type::kAddress:
      why = parse_address(text, params.*std::get<Address Params::*>(p.field));
      break;
    case Type::kNodeList:
      why = parse_node_list(text, params.*std::get<std::vector<Peer> Params::*>(p.field));
      break;
    case Type::kList:
      params.*std::get<std::vector<std::string> Params::*>(p.field) = split_list(text);
      break;
  }
  if (!why) return std::nullopt;
  if (*why == kOutOfRange)
    return std::string(p.name) + " = " + std::string(text) + " is out of range; allowed: " + range_text(p);
  return "bad value for " + std::string(p.name) + " = '" + std::string(text) + "': " + *why;
}

// The value of `p` written as the file would write it; `escape` doubles '$'.
std::string format_value(const Params& params, const Param& p, bool escape) {
  auto text = [&](std::string_view s) { return escape ? escape_dollars(s) : std::string(s); };
  switch (p.type) {
    case Type::kString:
    case Type::kPath:
    case Type::kChoice: return text(params.*std::get<std::string Params::*>(p.field));
    case Type::kCount: return std::to_string(params.*std::get<std::uint32_t Params::*>(p.field));
    case Type::kMillis: return std::to_string(params.*std::get<std::int64_t Params::*>(p.field));
    case Type::kSeconds: return format_seconds(params.*std::get<std::int64_t Params::*>(p.field));
    case Type::kSize: return format_size(params.*std::get<std::int64_t Params::*>(p.field));
    case Type::kBool: return params.*std::get<bool Params::*>(p.field) ? "yes" : "no";
    case Type::kAddress: return text((params.*std::get<Address Params::*>(p.field)).str());
    case Type::kNodeList: {
      std::string out;
      for (const Peer& peer : params.*std::get<std::vector<Peer> Params::*>(p.field))
        out += (out.empty() ? "" : ", ") + peer.str();
      return text(out);
    }
    case Type::kList: {
      std::string out;
      for (const std::string& s : params.*std::get<std::vector<std::string> Params::*>(p.field))
        out += (out.empty() ? "" : ", ") + s;
      return text(out);
    }
  }
  return {};
}

bool is_unset(const Params& params, const Param& p) {
  return std::visit(
      [&](auto field) {
        using T = std::remove_cvref_t<decltype(params.*field)>;
        return params.*field == T{};
      },
      p.field);
}

// ---- $name expansion -------------------------------------------------------

// The expanded value of a referenced parameter, or nullopt when it failed
// (its failure is reported already).
using Lookup = std::function<std::optional<std::string>(const Param&)>;
using Report = std::function<void(std::string)>;

std::optional<std::string> expand(std::string_view text, std::string_view owner, const Lookup& lookup,
                                  const Report& report) {
  std::string out;
  bool ok = true;
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] != '$') {
      out += text[i++];
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '$') {
      out += '$';
      i += 2;
      continue;
    }
    std::string_view name;
    if (i + 1 < text.size() && (text[i + 1] == '{' || text[i + 1] == '(')) {
      char close = text[i + 1] == '{' ? '}' : ')';
      auto end = text.find(close, i + 2);
      if (end == std::string_view::npos) {
        report("unterminated " + std::string(text.substr(i, 2)) + " in the value of " + std::string(owner));
        return std::nullopt;
      }
      name = text.substr(i + 2, end - i - 2);
      i = end + 1;
      if (!valid_name(name)) {
        report("bad parameter reference '" + std::string(text.substr(i - name.size() - 3, name.size() + 3)) +
               "' in the value of " + std::string(owner));
        ok = false;
        continue;
      }
    } else {
      std::size_t end = i + 1;
      while (end < text.size() && is_name_char(text[end])) ++end;
      name = text.substr(i + 1, end - i - 1);
      i = end;
      if (name.empty()) {
        report("'$' without a parameter name in the value of " + std::string(owner) +
               " (write $$ for a plain $)");
        ok = false;
        continue;
      }
    }
    const Param* ref = find_param(name);
    if (!ref) {
      report("undefined parameter $" + std::string(name) + " in the value of " + std::string(owner) +
             suggestion(name));
      ok = false;
      continue;
    }
    if (auto value = lookup(*ref)) out += *value;
    else ok = false;
  }
  if (!ok) return std::nullopt;
  return out;
}

// ---- Reading the file ------------------------------------------------------

// One parameter as written: raw text, and where.
struct Entry {
  std::string value;
  std::string file;
  int line = 0;
};
using Entries = std::map<std::string_view, Entry>;  // keyed by the table's name

struct Sink {
  std::vector<Error>& errors;
  bool failed = false;

  void error(std::string file, int line, std::string message) {
    errors.push_back(Error{std::move(file), line, std::move(message), Severity::kError});
    failed = true;
  }
  void warning(std::string file, int line, std::string message) {
    errors.push_back(Error{std::move(file), line, std::move(message), Severity::kWarning});
  }
};

// The table entry of a parameter name that a file or -o sets.
const Param* known_param(const std::string& name, const std::string& file, int line, Sink& sink) {
  if (!valid_name(name)) {
    sink.error(file, line, "bad parameter name '" + name + "'");
    return nullptr;
  }
  const Param* p = find_param(name);
  if (!p) sink.error(file, line, "unknown parameter '" + name + "'" + suggestion(name));
  return p;
}

// "name = value" (one logical line, or one -o argument) into `entries`.
void add_entry(std::string_view logical, const std::string& file, int line, Entries& entries,
               Sink& sink) {
  auto eq = logical.find('=');
  if (eq == std::string_view::npos) {
    sink.error(file, line, "missing '=' after the parameter name in '" + trim(logical) + "'");
    return;
  }
  std::string name = trim(logical.substr(0, eq));
  const Param* p = known_param(name, file, line, sink);
  if (!p) return;
  Entry entry{trim(logical.substr(eq + 1)), file, line};
  auto [it, inserted] = entries.try_emplace(p->name, entry);
  if (inserted) return;
  if (it->second.file == file && line > 0)
    sink.warning(file, line,
                 "overriding earlier entry at line " + std::to_string(it->second.line) + ": " + name +
                     " = " + it->second.value);
  it->second = std::move(entry);
}

// Physical lines into logical lines, as Postfix reads main.cf.
void read_lines(std::string_view text, const std::string& file, Entries& entries, Sink& sink) {
  std::string logical;
  int logical_line = 0;
  auto flush = [&] {
    if (logical_line) add_entry(logical, file, logical_line, entries, sink);
    logical.clear();
    logical_line = 0;
  };
  int number = 0;
  for (std::size_t pos = 0; pos < text.size();) {
    auto nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++number;
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (is_blank(line)) continue;
    if (trim(line).starts_with('#')) continue;
    if (line[0] == ' ' || line[0] == '\t') {
      if (!logical_line) {
        sink.error(file, number, "a line that starts with whitespace must continue a parameter");
        continue;
      }
      logical += ' ';
      logical += trim(line);
      continue;
    }
    flush();
    logical = line;
    logical_line = number;
  }
  flush();
}

// "name=value" arguments of -o into `entries`.
void read_overrides(const std::vector<std::string>& overrides, Entries& entries, Sink& sink) {
  for (const std::string& o : overrides) {
    if (o.find('=') == std::string::npos) {
      sink.error("-o", 0, "'" + o + "' is not name=value");
      continue;
    }
    add_entry(o, "-o", 0, entries, sink);
  }
}

// ---- Checks across parameters ----------------------------------------------

using Where = std::function<std::pair<std::string, int>(std::string_view name)>;

// Checks that involve more than one value; parameters in `bad` failed to
// parse and are left out so one mistake is not reported twice.
void cross_check(const Params& params, const std::set<std::string_view>& bad, const Where& where,
                 Sink& sink) {
  auto error = [&](std::string_view name, std::string message) {
    auto [file, line] = where(name);
    sink.error(file, line, std::move(message));
  };
  for (const Param& p : kTable)
    if (p.mandatory && !bad.contains(p.name) && is_unset(params, p))
      error(p.name, "missing mandatory parameter " + std::string(p.name));

  if (!bad.contains("probe_timeout_ms") && !bad.contains("probe_interval_ms") &&
      params.probe_timeout_ms <= params.probe_interval_ms) {
    auto [file, line] = where("probe_timeout_ms");
    if (line == 0) std::tie(file, line) = where("probe_interval_ms");
    sink.error(file, line,
               "probe_timeout_ms (" + std::to_string(params.probe_timeout_ms) +
                   ") must be greater than probe_interval_ms (" + std::to_string(params.probe_interval_ms) +
                   ")");
  }

  if (!bad.contains("source_address") && !params.source_address.empty() && params.source_address != "any") {
    unsigned char buf[sizeof(in6_addr)];
    if (inet_pton(AF_INET, params.source_address.c_str(), buf) != 1 &&
        inet_pton(AF_INET6, params.source_address.c_str(), buf) != 1)
      error("source_address", "bad value for source_address = '" + params.source_address +
                                  "': not an IP address (or empty: listen_address's host; any: the kernel's choice)");
  }

  if (!bad.contains("metrics_listen") && !params.metrics_listen.empty()) {
    Address a;
    if (auto why = parse_address(params.metrics_listen, a))
      error("metrics_listen", "bad value for metrics_listen = '" + params.metrics_listen + "': " + *why +
                                  " (or empty: no metrics endpoint)");
  }

  // The cache's directory is the cache's alone: its scan would take
  // <origin>/<seq> files for entries and evict them, so it must not be the
  // spool or hold it.
  if (!bad.contains("cache_dir") && !params.cache_dir.empty()) {
    if (!params.cache_dir.starts_with('/')) {
      error("cache_dir", "bad value for cache_dir = '" + params.cache_dir +
                             "': expected an absolute path (or empty: the directory cache in spool_directory)");
    } else if (!bad.contains("spool_directory")) {
      const std::filesystem::path cache = std::filesystem::path(params.cache_dir).lexically_normal();
      const std::filesystem::path spool = std::filesystem::path(params.spool_directory).lexically_normal();
      auto within = [](const std::filesystem::path& inner, const std::filesystem::path& outer) {
        auto [a, b] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
        return a == outer.end() || (std::next(a) == outer.end() && a->empty());
      };
      if (within(spool, cache) || within(cache, spool / "msg") || within(cache, spool / "incoming"))
        error("cache_dir", "cache_dir = " + params.cache_dir + " would hold the spool's bodies (spool_directory = " +
                               params.spool_directory + "): give the cache a directory of its own");
    }
  }

  // A shared peers list may name this node, but only with the address it
  // listens on (any address of the host when it listens on all of them).
  if (!bad.contains("peers") && !bad.contains("node_id") && !bad.contains("listen_address")) {
    const Address& listen = params.listen_address;
    const bool wildcard = listen.host == "0.0.0.0" || listen.host == "::" || listen.host == "*";
    for (const Peer& peer : params.peers) {
      if (peer.id != params.node_id) continue;
      if (wildcard ? peer.address.port == listen.port : peer.address == listen) continue;
      error("peers", "peers lists this node (node_id = " + std::to_string(peer.id) + ") as " + peer.str() +
                         ", but listen_address is " + listen.str());
    }
  }
}

// Fills `out` from the entries (or the defaults); reports at their lines.
void resolve(const Entries& entries, const std::string& file, Params& out, Sink& sink) {
  std::map<std::string_view, std::optional<std::string>> done;
  std::vector<std::string_view> stack;
  std::set<std::string_view> bad;

  auto where = [&](std::string_view name) -> std::pair<std::string, int> {
    auto it = entries.find(name);
    if (it == entries.end()) return {file, 0};
    return {it->second.file, it->second.line};
  };

  std::function<std::optional<std::string>(const Param&)> value_of = [&](const Param& p) {
    if (auto it = done.find(p.name); it != done.end()) return it->second;
    auto [efile, eline] = where(p.name);
    if (auto pos = std::find(stack.begin(), stack.end(), p.name); pos != stack.end()) {
      std::string chain;
      for (auto it = pos; it != stack.end(); ++it) chain += std::string(*it) + " -> ";
      auto [sfile, sline] = where(*pos);
      sink.error(sfile, sline, "parameter expansion loop: " + chain + std::string(p.name));
      return std::optional<std::string>();
    }
    auto it = entries.find(p.name);
    std::string_view raw = it == entries.end() ? p.fallback : std::string_view(it->second.value);
    stack.push_back(p.name);
    auto value = expand(raw, p.name, value_of,
                        [&, f = efile, l = eline](std::string m) { sink.error(f, l, std::move(m)); });
    stack.pop_back();
    done[p.name] = value;
    return value;
  };

  // In the order of the file, so that a loop is reported from its first line.
  std::vector<const Param*> order;
  for (const Param& p : kTable) order.push_back(&p);
  std::stable_sort(order.begin(), order.end(), [&](const Param* a, const Param* b) {
    auto line = [&](const Param* p) {
      auto it = entries.find(p->name);
      return it == entries.end() || it->second.line == 0 ? INT_MAX : it->second.line;
    };
    return line(a) < line(b);
  });
  for (const Param* pp : order) {
    const Param& p = *pp;
    auto value = value_of(p);
    if (!value) {
      bad.insert(p.name);
      continue;
    }
    if (p.mandatory && value->empty()) continue;  // reported by cross_check
    if (auto message = set_value(out, p, *value)) {
      auto [efile, eline] = where(p.name);
      sink.error(efile, eline, std::move(*message));
      bad.insert(p.name);
    }
  }
  cross_check(out, bad, where, sink);
}

std::string listing(const std::function<std::string(const Param&)>& value) {
  std::vector<const Param*> sorted;
  for (const Param& p : kTable) sorted.push_back(&p);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  std::string out;
  for (const Param* p : sorted) {
    std::string v = value(*p);
    out += std::string(p->name) + (v.empty() ? " =" : " = " + v) + "\n";
  }
  return out;
}

}  // namespace

// ---- Public ----------------------------------------------------------------

std::string Error::str() const {
  std::string where = file;
  if (line > 0) where += ":" + std::to_string(line);
  return (where.empty() ? "" : where + ": ") + (severity == Severity::kWarning ? "warning: " : "error: ") +
         message;
}

std::string Address::str() const {
  std::string h = host.find(':') == std::string::npos ? host : "[" + host + "]";
  return h + ":" + std::to_string(port);
}

std::string Peer::str() const { return std::to_string(id) + "@" + address.str(); }

// Defaults hold no $name (the table check says so), so no expansion here.
Params::Params() {
  for (const Param& p : kTable) {
    if (p.mandatory) continue;
    [[maybe_unused]] auto why = set_value(*this, p, p.fallback);
    assert(!why && "a default in the parameter table does not parse");
  }
}

std::span<const Param> parameters() { return kTable; }

std::optional<Params> parse_text(std::string_view text, std::string_view name, std::vector<Error>& errors,
                                 const std::vector<std::string>& overrides) {
  Sink sink{errors};
  Entries entries;
  const std::string file(name);
  read_lines(text, file, entries, sink);
  read_overrides(overrides, entries, sink);
  Params params;
  resolve(entries, file, params, sink);
  if (sink.failed) return std::nullopt;
  return params;
}

std::optional<Params> load_file(const std::string& path, std::vector<Error>& errors,
                                const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    errors.push_back(Error{path, 0, std::string("cannot open: ") + std::strerror(errno)});
    return std::nullopt;
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    errors.push_back(Error{path, 0, std::string("cannot read: ") + std::strerror(errno)});
    return std::nullopt;
  }
  return parse_text(text.str(), path, errors, overrides);
}

bool apply_overrides(Params& params, const std::vector<std::string>& key_eq_value, std::vector<Error>& errors) {
  Sink sink{errors};
  Params next = params;
  std::set<std::string_view> bad;
  auto report = [&](std::string m) { sink.error("-o", 0, std::move(m)); };
  for (const std::string& o : key_eq_value) {
    auto eq = o.find('=');
    if (eq == std::string::npos) {
      report("'" + o + "' is not name=value");
      continue;
    }
    const Param* p = known_param(trim(std::string_view(o).substr(0, eq)), "-o", 0, sink);
    if (!p) continue;
    // In order: a later -o sees, and may replace, an earlier one.
    auto value = expand(trim(std::string_view(o).substr(eq + 1)), p->name,
                        [&](const Param& ref) { return std::optional<std::string>(format_value(next, ref, false)); },
                        report);
    if (!value) {
      bad.insert(p->name);
      continue;
    }
    if (auto message = set_value(next, *p, *value)) {
      report(std::move(*message));
      bad.insert(p->name);
    }
  }
  cross_check(next, bad, [](std::string_view) { return std::pair<std::string, int>{"-o", 0}; }, sink);
  if (sink.failed) return false;
  params = std::move(next);
  return true;
}

std::string print_defaults() {
  return listing([](const Param& p) { return std::string(p.fallback); });
}

std::string print_effective(const Params& params) {
  return listing([&](const Param& p) { return format_value(params, p, true); });
}

std::string print_docs_markdown() {
  auto cell = [](std::string_view s) {
    std::string out;
    for (char c : s) {
      if (c == '|') out += '\\';
      out += c;
    }
    return out;
  };
  std::vector<const Param*> sorted;
  for (const Param& p : kTable) sorted.push_back(&p);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  std::string out = "| Parameter | Type | Default | Bounds | Description |\n|---|---|---|---|---|\n";
  for (const Param* p : sorted) {
    std::string fallback = p->mandatory          ? "(none: mandatory)"
                           : p->fallback.empty() ? "(empty)"
                                                 : "`" + std::string(p->fallback) + "`";
    out += "| `" + std::string(p->name) + "` | " + std::string(type_name(p->type)) + " | " +
           fallback + " | " + cell(range_text(*p)) + " | " + cell(p->doc) + " |\n";
  }
  return out;
}

std::string_view type_name(Type type) {
  static constexpr std::string_view kTypeNames[] = {"string",    "path",      "choice", "count",
                                                    "time (ms)", "time (s)",  "yes/no", "host:port",
                                                    "node list", "list",      "size"};
  return kTypeNames[static_cast<int>(type)];
}

std::string bounds_text(const Param& param) { return range_text(param); }

CoreConfig to_core(const Params& p) {
  CoreConfig c;
  c.self = p.node_id;
  c.weight = p.node_weight;
  for (const Peer& peer : p.peers)
    if (peer.id != p.node_id) c.seeds.push_back(peer.id);
  c.buckets = p.buckets;
  c.spread = p.spread;
  c.replicas = p.replication_factor;
  c.probe_interval = p.probe_interval_ms;
  c.probe_timeout = p.probe_timeout_ms;
  c.discovery_interval = p.discovery_interval_ms;
  c.accept_window = p.accept_window_ms;
  c.commit_timeout = p.commit_timeout_ms;
  c.reconfig_backoff = p.reconfig_backoff_ms;
  c.report_retry = p.report_retry_ms;
  c.report_poll = p.report_poll_ms;
  c.push_retry = p.push_retry_ms;
  c.takeover_delay = p.takeover_delay_ms;
  c.death_ttl = p.death_certificate_ttl * kSecond;
  c.delivery_key_ttl = p.delivery_key_ttl * kSecond;
  c.request_timeout = p.request_timeout_ms;
  c.transfer_rate = std::uint64_t{p.body_transfer_rate_kib} << 10;
  c.sync_interval = p.sync_interval * kSecond;
  c.sync_bodies_inflight = p.sync_bodies_inflight;
  c.node_dead_timeout = p.node_dead_timeout * kSecond;
  c.repair_inflight = p.repair_inflight;
  c.list_part = p.listing_part_records;
  c.auth_failures_per_user = p.auth_failures_per_user;
  c.auth_failure_window = p.auth_failure_window_ms;
  c.profile_memory_users = p.profile_memory_users;
  c.profile_memory_ttl = p.profile_memory_ttl * kSecond;
  return c;
}

}  // namespace porcupine::config
