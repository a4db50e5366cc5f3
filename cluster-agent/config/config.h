/* SPDX-License-Identifier: MIT */
// config.h - porcupine.conf: the agent's parameters, read once at start-up.
//
// The file (/etc/porcupine/porcupine.conf) is in Postfix main.cf style:
//   name = value       one parameter per logical line
//   # text             a comment line (the first non-blank character is #)
//     more text        a line starting with whitespace continues the value
//   $name ${name} $(name)   the value of another parameter; $$ is a plain $
// A '#' after a value is part of the value, as in main.cf.
//
// Every parameter is declared once, in the table in config.cc (name, type,
// default, bounds, one line of doc): parsing, bounds checks, the defaults
// listing, the effective listing and docs/configuration.md all come from it.
//
// Errors are collected, never thrown: a caller gets every problem of a file
// at once, each with file and line. A load either returns Params that passed
// every check or nullopt. Warnings (a parameter set twice: the last one wins,
// as in Postfix) do not fail a load. The functions keep no state between
// calls; any thread may call them.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/config.h"
#include "core/types.h"

namespace porcupine::config {

enum class Severity { kWarning, kError };

struct Error {
  std::string file;  // the file name given to the parser, or "-o"
  int line = 0;      // 1-based; 0 when the problem is not on one line
  std::string message;
  Severity severity = Severity::kError;

  // "file:line: error: message", the way Postfix logs it.
  std::string str() const;
};

// host:port; an IPv6 host is written in brackets: [::1]:7400.
struct Address {
  std::string host;
  std::uint16_t port = 0;

  std::string str() const;
  bool operator==(const Address&) const = default;
};

// One cluster node as written in `peers`: id@host:port.
struct Peer {
  NodeId id = kNoNode;
  Address address;

  std::string str() const;
  bool operator==(const Peer&) const = default;
};

// Typed parameters, one field per table entry, named like the parameter.
// A default-constructed Params holds every documented default (node_id,
// which has none, is 0 and fails validation).
struct Params {
  Params();

  NodeId node_id{};
  std::uint32_t node_weight{};
  Address listen_address;
  std::vector<Peer> peers;
  std::string secret_file;
  std::string spool_directory;
  std::uint32_t spool_reserve_bytes{};  // below this much free space the node takes no new copies
  // The node cache (store/node_cache.h): bodies this node holds no replica of.
  std::int64_t cache_size{};            // bytes; 0: no cache
  std::string cache_dir;                // empty: <spool_directory>/cache
  std::int64_t cache_entry_max{};       // bytes; 0: cache_size / 8
  std::int64_t cache_reserve_bytes{};   // free space the cache leaves on its filesystem
  std::string redis_socket;
  std::string local_socket;
  std::string local_socket_group;
  std::string local_admin_group;
  std::uint32_t auth_failures_per_user{};
  Time auth_failure_window_ms{};
  std::uint32_t profile_memory_users{};
  std::int64_t profile_memory_ttl{};  // seconds
  std::string metrics_listen;  // host:port of the Prometheus endpoint; empty: none
  std::string source_address;  // outgoing peer connections' address; empty: listen's host; "any": none

  std::uint32_t buckets{};
  std::uint32_t spread{};
  std::uint32_t replication_factor{};

  Time probe_interval_ms{};
  Time probe_timeout_ms{};
  Time discovery_interval_ms{};
  Time accept_window_ms{};
  Time commit_timeout_ms{};
  Time reconfig_backoff_ms{};
  Time report_retry_ms{};
  Time report_poll_ms{};
  Time push_retry_ms{};
  Time takeover_delay_ms{};
  Time request_timeout_ms{};
  std::uint32_t body_transfer_rate_kib{};
  Time reconnect_backoff_max_ms{};
  std::uint32_t message_size_limit{};  // bytes
  std::int64_t death_certificate_ttl{};  // seconds
  std::int64_t delivery_key_ttl{};       // seconds
  std::int64_t sync_interval{};          // seconds
  std::uint32_t sync_bodies_inflight{};
  std::int64_t node_dead_timeout{};      // seconds
  std::uint32_t repair_inflight{};
  std::uint32_t listing_part_records{};

  std::string peer_security;    // "tls", "both" or "legacy"
  std::string log_to;           // "syslog" or "stderr"
  std::string syslog_facility;  // "mail", "daemon", "local0", ...
  std::vector<std::string> cluster_domains;

  std::string milter_socket;        // porcupine-milter: its socket for smtpd
  std::string milter_socket_group;  // may connect to milter_socket
  Time milter_timeout_ms{};         // its deadline for one question to the agent
  std::string milter_trace_header;  // header naming the accepting node

  bool operator==(const Params&) const = default;
};

// ---- The parameter table -------------------------------------------------

enum class Type {
  kString,    // any text
  kPath,      // an absolute path
  kChoice,    // one word out of Param::choices
  kCount,     // a plain integer in [min, max]
  kMillis,    // a time: a number of milliseconds, or with a unit ms/s/m/h/d
  kSeconds,   // a time: a number of seconds, or with a unit s/m/h/d
  kBool,      // yes or no
  kAddress,   // host:port
  kNodeList,  // id@host:port, separated by commas or whitespace
  kList,      // words separated by commas or whitespace
  kSize,      // bytes: a number, or with a unit k, M, G or T (powers of 1024)
};

using Field = std::variant<std::string Params::*, std::uint32_t Params::*, std::int64_t Params::*,
                           bool Params::*, Address Params::*, std::vector<Peer> Params::*,
                           std::vector<std::string> Params::*>;

struct Param {
  std::string_view name;
  Type type;
  std::string_view fallback;  // the default, written as in the file
  bool mandatory;             // no default: the file must set it
  std::int64_t min, max;      // kCount / kMillis / kSeconds, in the base unit
  std::string_view choices;   // kChoice: words separated by '|'
  std::string_view doc;       // one line
  Field field;
};

// The table, in declaration order.
std::span<const Param> parameters();

// ---- Loading ---------------------------------------------------------------

// Reads porcupine.conf. `overrides` are `-o name=value` strings applied as
// Postfix applies `postconf -o`: they replace the file's value before $name
// expansion, so other parameters that refer to them see the new value, and
// they may supply a mandatory parameter the file lacks.
std::optional<Params> load_file(const std::string& path, std::vector<Error>& errors,
                                const std::vector<std::string>& overrides = {});

// The same on text already in memory; `name` is the file name in errors.
std::optional<Params> parse_text(std::string_view text, std::string_view name,
                                 std::vector<Error>& errors,
                                 const std::vector<std::string>& overrides = {});

// Applies `name=value` strings to Params already loaded; $name in a value
// expands to the current value of that parameter. Every check runs again.
// On any error `params` is left unchanged and the result is false.
bool apply_overrides(Params& params, const std::vector<std::string>& key_eq_value,
                     std::vector<Error>& errors);

// ---- Listings ----------------------------------------------------------------

// `postconf -d`: every parameter as `name = default`, sorted by name.
std::string print_defaults();

// `postconf`: every parameter as `name = value`, sorted by name; the output
// parses back to the same Params.
std::string print_effective(const Params& params);

// The Markdown table of docs/configuration.md: name, type, default, bounds, doc.
std::string print_docs_markdown();

// The table's Type and Bounds columns ("time (ms)", "10..60000 ms"), for
// other renderings of it (porcupine-config-doc --man).
std::string_view type_name(Type type);
std::string bounds_text(const Param& param);

// ---- The cluster core --------------------------------------------------------

// The core's tunables from the parameters: seeds are the peers other than
// this node; death_certificate_ttl becomes milliseconds.
CoreConfig to_core(const Params& params);

}  // namespace porcupine::config
