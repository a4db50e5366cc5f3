/* SPDX-License-Identifier: MIT */
// durable.h - the disk as the core sees it.
//
// A write is durable before any effect of the same event leaves the node:
// the simulator's memory store is durable at once; the agent's store
// (Redis AOF + fsynced spool files) batches the writes of one turn of its
// event loop and the agent holds every outgoing message and reply until
// that batch is flushed (group commit). The core never acknowledges
// anything before its writes.
//
// Bodies: a record passed with a non-empty body stores that body; a record
// passed with has_body and an empty body keeps the body already stored
// (the core keeps bodies out of memory once stored); a record without
// has_body (expunged) drops it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "records.h"

namespace porcupine {

// A body on disk no record names (DurableSnapshot::unindexed): what the
// file itself says of the message.
struct UnindexedBody {
  std::uint64_t size = 0;
  Time written = 0;  // when the file was written: the internal date if no record knows better
  bool operator==(const UnindexedBody&) const = default;
};

struct DurableSnapshot {
  std::map<MsgId, MessageRecord> records;
  std::map<std::string, Profile> profiles;
  std::map<Version, LogEntry> log;
  std::uint64_t next_seq = 1;  // next MsgId sequence number of this node
  Time last_version = 0;       // highest version time this node issued
  std::uint32_t last_lineage = 0;  // highest UIDVALIDITY this node created
  // Bodies on disk that no record or log entry names: a delivery cut off
  // by a crash before its index write, or an index that lost entries (a
  // damaged Redis file). Never deleted: a record for one that arrives
  // (sync.cc) claims it; put_record with has_body and no body keeps it.
  std::map<MsgId, UnindexedBody> unindexed;
  AdminMap admin;  // what this node was told of drained and gone nodes
  // Nothing was ever written: a new node, or one whose disk was replaced.
  bool fresh = false;
};

class DurableStore {
 public:
  virtual ~DurableStore() = default;
  virtual DurableSnapshot load() = 0;
  virtual void put_record(const MessageRecord& r) = 0;
  // The stored body of a record, or nothing if this node holds none.
  virtual std::optional<std::string> get_body(const MsgId& id) = 0;
  // The same, by reference where the store can (a file it keeps): what a
  // read hands on without holding it in memory.
  virtual std::optional<Body> body_ref(const MsgId& id) {
    if (auto b = get_body(id)) return Body(std::move(*b));
    return std::nullopt;
  }
  // The first `max` bytes of the stored body (all of it if shorter), or
  // nothing if this node holds none: a header part read without the body.
  virtual std::optional<std::string> body_head(const MsgId& id, std::uint64_t max) {
    auto b = get_body(id);
    if (b && b->size() > max) b->resize(max);
    return b;
  }
  virtual void erase_record(const MsgId& id) = 0;
  virtual void put_profile(const Profile& p) = 0;
  virtual void erase_profile(const std::string& user) = 0;
  virtual void put_admin(const AdminMap& a) = 0;
  virtual void put_log(const LogEntry& e) = 0;
  virtual void erase_log(const Version& id) = 0;
  virtual void put_counters(std::uint64_t next_seq, Time last_version,
                            std::uint32_t last_lineage) = 0;
};

// Memory-backed store: the simulator's disk, and a fake for unit tests.
// Its contents outlive the Node that writes to it, as a disk outlives a
// crashed process.
class MemoryStore final : public DurableStore {
 public:
  DurableSnapshot load() override {
    DurableSnapshot snap = data_;
    snap.fresh = writes_ == 0 && orphans_.empty();
    for (const auto& [id, body] : orphans_) snap.unindexed[id] = UnindexedBody{body.size(), 0};
    return snap;
  }
  void put_record(const MessageRecord& r) override {
    MessageRecord& cur = data_.records[r.id];
    Body keep = r.has_body && r.body.empty() ? std::move(cur.body) : Body();
    if (auto o = orphans_.find(r.id); o != orphans_.end() && (r.has_body || r.expunged)) {
      if (r.has_body && keep.empty()) keep = std::move(o->second);
      orphans_.erase(o);
    }
    cur = r;
    if (!keep.empty()) cur.body = std::move(keep);
    ++writes_;
  }
  std::optional<std::string> get_body(const MsgId& id) override {
    auto it = data_.records.find(id);
    if (it == data_.records.end() || !it->second.has_body) return std::nullopt;
    return it->second.body.bytes();  // the simulator's bodies are in memory
  }
  void erase_record(const MsgId& id) override { data_.records.erase(id); ++writes_; }
  void put_profile(const Profile& p) override { data_.profiles[p.user] = p; ++writes_; }
  void erase_profile(const std::string& user) override { data_.profiles.erase(user); ++writes_; }
  void put_admin(const AdminMap& a) override { data_.admin = a; ++writes_; }
  void put_log(const LogEntry& e) override { data_.log[e.update.id] = e; ++writes_; }
  void erase_log(const Version& id) override { data_.log.erase(id); ++writes_; }
  void put_counters(std::uint64_t seq, Time v, std::uint32_t lineage) override {
    data_.next_seq = seq;
    data_.last_version = v;
    data_.last_lineage = lineage;
    ++writes_;
  }
  const DurableSnapshot& data() const { return data_; }
  std::uint64_t writes() const { return writes_; }
  // A damaged index (the simulator's fault): every `every`-th record from
  // `offset` (and every log entry) is lost; the bodies of those records
  // stay on disk, unindexed, as a truncated Redis file leaves a spool.
  std::size_t lose_index(std::size_t every, std::size_t offset) {
    std::size_t n = 0, lost = 0;
    for (auto it = data_.records.begin(); it != data_.records.end(); ++n) {
      if (every == 0 || n % every != offset % every) {
        ++it;
        continue;
      }
      if (it->second.has_body) orphans_[it->first] = it->second.body;
      it = data_.records.erase(it);
      ++lost;
    }
    data_.log.clear();
    return lost;
  }
  const std::map<MsgId, Body>& orphans() const { return orphans_; }
  void drop_orphans() { orphans_.clear(); }  // the unindexed bodies' files lost too

 private:
  DurableSnapshot data_;
  std::map<MsgId, Body> orphans_;  // unindexed bodies
  std::uint64_t writes_ = 0;
};

}  // namespace porcupine
