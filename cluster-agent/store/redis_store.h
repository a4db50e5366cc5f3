/* SPDX-License-Identifier: MIT */
// redis_store.h - the agent's durable store: record, profile, log and
// counter metadata in the node-local Redis, message bodies in spool files.
//
// Layout (prefix "p:" by default; values are codec encodings, bodies left out):
//   <prefix>rec   hash  "origin:seq"  -> encode_record
//   <prefix>prof  hash  user          -> encode_profile
//   <prefix>log   hash  "time.node"   -> encode_log_entry
//   <prefix>ctr   hash  next_seq, last_version, last_lineage (decimal)
//   <spool>/msg/<origin>/<seq>          one body per file, immutable
//   <spool>/incoming/                   large bodies while they arrive
//                                       (spool_file.h); linked into msg/
//
// A body file exists while its record has_body or a Store log entry names
// it (a coordinator that is not a replica keeps the body only for the log).
//
// Group commit: every put/erase is only queued (reads see the queue);
// flush() makes the batch durable in this order: body files written to
// "<seq>.tmp", fdatasync'ed, renamed, each touched directory fsync'ed once;
// then every Redis command in one pipelined MULTI/EXEC (Redis runs with
// appendonly yes, appendfsync always: the EXEC reply means on disk); only
// then are dropped bodies unlinked. A crash at any point leaves at worst a
// body file the index does not name (never acknowledged, or dropped) or a
// temp file; load() removes both and flags index entries whose body file
// is gone. load() also builds the in-memory index of which bodies are
// needed, so it comes first (a write before it loads implicitly).
//
// Thread: the agent's event loop only; SIGPIPE is blocked around Redis
// calls so a dead Redis is an error, not a signal. Owns one blocking
// hiredis context. Parameters: Options below (from porcupine.conf via the
// agent).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "core/durable.h"
#include "store/spool_file.h"

struct redisContext;

namespace porcupine::store {

class RedisStore final : public DurableStore {
 public:
  struct Options {
    std::string redis_socket;  // unix socket of the node-local redis-server
    std::string spool_dir;     // message bodies, one file per message
    std::string key_prefix = "p:";
    int timeout_ms = 10000;  // a Redis call that takes longer fails the flush
  };
  using LogFn = std::function<void(const std::string&)>;

  // Connects (waiting while Redis replays its AOF); throws
  // std::runtime_error with a one-line message if Redis is unreachable or
  // the spool is unusable.
  RedisStore(Options o, LogFn log);
  ~RedisStore() override;
  RedisStore(const RedisStore&) = delete;
  RedisStore& operator=(const RedisStore&) = delete;

  // Everything, with bodies left in their files, after the startup scan.
  // Throws std::runtime_error if Redis cannot be read.
  DurableSnapshot load() override;
  void put_record(const MessageRecord& r) override;
  std::optional<std::string> get_body(const MsgId& id) override;
  std::optional<Body> body_ref(const MsgId& id) override;
  std::optional<std::string> body_head(const MsgId& id, std::uint64_t max) override;
  // A read-only descriptor of the body this node keeps for `id` (its spool
  // file, or what is queued for it), or -1: for a reader (the local API's
  // Open), which keeps reading it even if the file is unlinked meanwhile.
  int open_body(const MsgId& id) const;
  void erase_record(const MsgId& id) override;
  void put_profile(const Profile& p) override;
  void erase_profile(const std::string& user) override;
  void put_admin(const AdminMap& a) override;
  void put_log(const LogEntry& e) override;
  void erase_log(const Version& id) override;
  void put_counters(std::uint64_t next_seq, Time last_version, std::uint32_t last_lineage) override;

  // Makes every queued write durable. False (logged) on any failure: the
  // caller must then acknowledge nothing of the batch (the agent exits).
  bool flush();
  bool dirty() const;
  // Where large bodies are staged as they arrive (spool_file.h).
  const std::string& incoming_dir() const { return incoming_dir_; }

  // flushes that wrote something; Redis data commands sent (MULTI/EXEC
  // not counted); body files written; fsync/fdatasync calls.
  struct Stats {
    std::uint64_t flushes = 0, commands = 0, body_files = 0, fsyncs = 0;
  };
  const Stats& stats() const { return stats_; }

  // What the last load() found that the index and the spool disagree on.
  // Anything but zeros means the index lost entries (a damaged or cut
  // Redis file) or a crash cut a delivery off; bodies are never deleted
  // for it (DurableSnapshot::unindexed), and the node says so.
  struct Damage {
    std::uint64_t unindexed = 0;        // body files no record or log entry names
    std::uint64_t missing_bodies = 0;   // records that claim a body whose file is gone
    std::uint64_t log_missing = 0;      // Store log entries whose body file is gone
    std::uint64_t undecodable = 0;      // index entries that could not be read
    bool any() const { return unindexed || missing_bodies || log_missing || undecodable; }
    std::string str() const;
  };
  const Damage& damage() const { return damage_; }
  // Bodies still unindexed (a record for them claims them).
  std::size_t unindexed() const { return unindexed_.size(); }

 private:
  struct Counters {
    std::uint64_t next_seq;
    Time last_version;
    std::uint32_t last_lineage;
  };

  void log(const std::string& line) const;
  void ensure_loaded();
  bool needed(const MsgId& id) const;
  void queue_body(const MsgId& id, const Body& body);
  void drop_body_if_unneeded(const MsgId& id);
  std::string body_path(const MsgId& id) const;
  std::string origin_dir(NodeId origin) const;
  bool write_bodies();
  bool exec_batch();
  void unlink_dropped();
  bool reconnect();

  Options opt_;
  LogFn log_;
  std::unique_ptr<redisContext, void (*)(redisContext*)> ctx_;
  std::string msg_dir_, incoming_dir_;
  std::string k_rec_, k_prof_, k_log_, k_ctr_, k_adm_;
  Stats stats_;

  // The queue: the last state of each key since the last flush.
  std::map<MsgId, std::optional<MessageRecord>> q_records_;  // nullopt: erase
  std::map<std::string, std::optional<Profile>> q_profiles_;  // nullopt: erase
  std::optional<AdminMap> q_admin_;
  std::map<Version, std::optional<LogEntry>> q_log_;  // nullopt: erase
  std::optional<Counters> q_counters_;
  std::map<MsgId, Body> q_bodies_;  // body files to write (or link, from a staging file)
  std::set<MsgId> q_unlinks_;              // body files to remove after EXEC

  // Which bodies are needed and present, queue included (built by load()).
  bool loaded_ = false;
  std::set<MsgId> held_;                 // records with has_body
  std::map<Version, MsgId> store_logs_;  // Store log entries
  std::map<MsgId, std::uint32_t> log_refs_;
  std::set<MsgId> bodies_;        // files present or queued
  std::set<NodeId> origin_dirs_;  // msg/<origin> known to exist
  std::set<MsgId> unindexed_;     // of bodies_, files no record named at load
  Damage damage_;
};

}  // namespace porcupine::store
