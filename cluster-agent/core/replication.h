// SPDX-License-Identifier: MIT
// replication.h - optimistic replication of messages and profiles.
//
// Owns this node's hard state in memory (message records, profile
// replicas, the replication log) and writes every change through the
// DurableStore before anything that depends on it leaves the node.
//
// Protocol (docs/protocols.md, "Replication"): the coordinator of an
// update applies it, logs it, and pushes it to every other replica until
// each acknowledges; a replica that receives a push applies it, logs it
// and acknowledges. Each holder keeps its log entry until it knows every
// replica has the update; the coordinator then sends Retire. If the
// coordinator is not a live member, or takeover_delay has passed, the
// other holders push too, so any replica finishes a dead coordinator's
// work. Conflicts resolve per attribute by version (Thomas write rule);
// an expunge leaves a death certificate kept for death_ttl.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>

#include "config.h"
#include "durable.h"
#include "wire.h"

namespace porcupine {

class Replicator {
 public:
  using SendFn = std::function<void(NodeId, Message)>;
  using LogFn = std::function<void(const std::string&)>;
  using LiveFn = std::function<bool(NodeId)>;

  Replicator(const CoreConfig& cfg, DurableStore& disk, SendFn send, LogFn log);
  // The wall clock (Env::wall()): death certificates are dated by it.
  std::function<Time()> wall_clock;
  Time wall() const { return wall_clock ? wall_clock() : 0; }

  void load(const DurableSnapshot& snap, Time now);

  // Apply and start replicating an update this node coordinates. The node
  // need not be a replica itself (a manager writing a profile it does not
  // hold). Returns once the coordinator's copy and log entry are durable.
  void coordinate(Time now, Update u);

  void on_push(Time now, NodeId from, const Push& p);
  // A record as a peer holds it, without its body (sync.cc): merged like a
  // Copy if it names this node as a replica. Returns true if this node
  // should hold its body and does not (ask the peer for it).
  bool absorb(const MessageRecord& r);
  // A profile as a peer holds it, merged if it names this node a holder.
  void absorb(const Profile& p);
  // The user's manager's profile, for a copy this node holds: merged if
  // newer, so a copy a newer holder list leaves out goes.
  void absorb_newer(const Profile& p);
  // Bodies on disk that no record names yet (DurableSnapshot::unindexed).
  const std::map<MsgId, UnindexedBody>& unindexed() const { return unindexed_; }
  // A store this node coordinates whose replicas did not all acknowledge
  // in time: its replica list becomes `list` (the silent ones replaced),
  // versioned `v` so that it wins over the old one in every merge. The
  // entry then waits for the new list's replicas, which it is pushed to at
  // once; this node's own record keeps its list until the caller spreads
  // the new one, once the new replicas hold the store (Node::store_done).
  // False if there is no such entry.
  bool retarget(Time now, const Version& id, const std::vector<NodeId>& list, const Version& v);
  void on_ack(Time now, NodeId from, const PushAck& a);
  void on_retire(const Retire& r);
  void tick(Time now, const LiveFn& live);

  // Called when a user's local records or profile appear, change count or
  // replica list, or disappear (the mail-map reporter listens).
  std::function<void(const std::string& user)> on_user_changed;
  // Called when an update is known to be held by every replica.
  std::function<void(const Version& id)> on_complete;
  // A replica the cluster declared Gone (Membership::admin): an update
  // waits for it no more.
  std::function<bool(NodeId)> gone;
  // A change came addressed to an older replica list than the record's
  // (a client's cached list, from before a repair or drain rewrote it):
  // the record's replicas the change did not name must be sent it.
  std::function<void(const MsgId& id)> on_list_outdated;

  const std::map<MsgId, MessageRecord>& records() const { return records_; }
  const std::map<std::string, Profile>& profiles() const { return profiles_; }
  // A record's state apart from its body (record_digest with has_body
  // cleared): what a copy knows that the list's others need to know too.
  static std::uint64_t state_digest(const MessageRecord& r);
  const std::map<Version, LogEntry>& log() const { return log_; }
  const std::set<MsgId>& user_records(const std::string& user) const;
  // The sum of copy_digest over the user's records in `folder` (a
  // listing's digest): kept until one of the user's records changes, so
  // the polls of a large folder that nothing changed cost a lookup.
  std::uint64_t folder_digest(const std::string& user, const std::string& folder) const;
  std::set<std::string> local_users() const;
  std::size_t backlog() const { return log_.size(); }

 private:
  void apply(const Update& u);
  // A newer replica list or holder list left this node out (a repair or
  // drain moved its copy): the copy goes.
  void disown_record(const MsgId& id);
  void disown_profile(const std::string& user);
  // After a log entry of the record goes: a copy kept for it is dropped.
  void recheck_disowned(const Update& u);
  void push_missing(const LogEntry& e, const LiveFn* live);
  void complete(const Version& id);
  bool is_complete(const LogEntry& e) const;
  // One of the user's records changed: its folder digests are computed again.
  void touched(const std::string& user);

  const CoreConfig& cfg_;
  DurableStore& disk_;
  SendFn send_;
  LogFn log_fn_;

  std::map<MsgId, MessageRecord> records_;
  std::map<std::string, std::set<MsgId>> by_user_;
  mutable std::map<std::pair<std::string, std::string>, std::uint64_t> folder_digests_;  // soft
  std::map<std::string, Profile> profiles_;
  std::map<Version, LogEntry> log_;
  std::map<Version, Time> next_push_;  // soft: when to push an entry again
  std::map<Version, Time> logged_at_;  // soft: when this node first logged it
  std::map<MsgId, UnindexedBody> unindexed_;
  Time last_sweep_ = 0;
};

}  // namespace porcupine
