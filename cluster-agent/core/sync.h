// SPDX-License-Identifier: MIT
// sync.h - anti-entropy between replicas.
//
// Replication (replication.cc) gets an update to every replica while the
// update is in its log; once retired, nothing would notice a replica that
// lost it later: an index cut short by a damaged Redis file, a body file
// gone. So each node asks every member, when the member joins its group
// and every sync_interval after, for what the member holds that names
// this node: records that list it as a replica, profiles that list it as
// a holder. The member answers one digest per user (sync_digest); the
// users whose digest differs from this node's own of what it holds that
// names the member are pulled as records without bodies and merged
// (Replicator::absorb: attribute by attribute, versions and all, so
// nothing newer is undone); a record whose body this node lacks is then
// asked for, a few bodies at a time per peer, and comes back as a Push of
// a Copy. A body this node still has on disk but no
// record named (DurableSnapshot::unindexed) is claimed by its record
// instead of copied again. Nothing here decides where copies live.
//
// Soft state only; it reads the node's membership, merges into its
// replicas, reads bodies from its disk, and sends through the node.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "config.h"
#include "durable.h"
#include "membership.h"
#include "replication.h"
#include "wire.h"

namespace porcupine {

// A record as a node holds it (its body if `r` carries one) for one node,
// as a Push of a Copy under `id` (Version{0, self}: never logged, complete
// on arrival; a repair's copy: its new list's version).
Push copy_push(NodeId self, NodeId to, MessageRecord r, const Version& id);

class AntiEntropy {
 public:
  using SendFn = std::function<void(NodeId, Message)>;
  using LogFn = std::function<void(const std::string&)>;
  using WallFn = std::function<Time()>;
  using LiveFn = std::function<bool(NodeId)>;
  using FullFn = std::function<bool()>;

  // `wall`: the wall clock (Env::wall()); `live`: whether a node is this
  // one or a member; `spool_full`: whether this node's spool is below its
  // reserve (Node::spool_full).
  AntiEntropy(const CoreConfig& cfg, const Membership& membership, Replicator& repl, DurableStore& disk,
              SendFn send, LogFn log, WallFn wall, LiveFn live, FullFn spool_full);

  // What this node has asked of its peers and got.
  struct Progress {
    std::uint64_t rounds = 0;            // digests asked of a peer
    std::uint64_t users_pulled = 0;      // users whose digests differed
    std::uint64_t records_absorbed = 0;  // records received in pulls
    std::uint64_t bodies_wanted = 0;     // bodies this node found it lacked
    std::uint64_t bodies_copied = 0;     // of them, received
    std::uint64_t bodies_pending = 0;    // still to ask or on their way
    std::uint64_t unindexed = 0;         // bodies on disk no record names yet
  };
  Progress progress() const;
  // The digest of what this node holds of `user` that names `node` (its
  // records listing `node` as a replica, and the profile if `node` is a
  // holder): X's digest for Y equals Y's for X when the two hold the same
  // of what they share.
  std::uint64_t digest(const std::string& user, NodeId node) const;

  // Members new to the group are asked at once.
  void on_change(Time now, const Membership::Change& ch);
  void tick(Time now);
  void serve_request(NodeId from, const SyncRequest& r);
  void on_digest(Time now, NodeId from, const SyncDigest& d);
  void serve_pull(NodeId from, const SyncPull& p);
  void on_records(Time now, NodeId from, const SyncRecords& r);
  void serve_bodies(NodeId from, const SyncBodies& b);
  // A Copy came from `from` (a body asked of it, or not).
  void body_arrived(Time now, NodeId from, const MsgId& id);

 private:
  struct Peer {
    std::uint64_t round = 0;      // the round this node runs with the peer
    Time deadline = 0;            // no answer in the round by then: ask again
    bool digests_done = false;    // the round's last digest came
    std::uint64_t next_pull = 1;
    std::set<std::uint64_t> pulls_open;  // pulls not yet answered in full
    bool done = false;            // the round is complete (or given up until the next)
    int silent = 0;               // rounds asked again for want of any answer
    std::uint64_t pulled_users = 0, pulled_records = 0;  // in this round
    struct Asked {
      Time until = 0;
      int attempts = 0;
    };
    std::deque<std::pair<MsgId, int>> need;  // bodies to ask the peer for (with attempts so far)
    std::map<MsgId, Asked> inflight;         // asked, until
  };
  void start_round(Time now, NodeId peer);
  void ask_bodies(Time now, NodeId peer, Peer& st);
  void round_progress(Time now, NodeId peer, Peer& st);

  const CoreConfig& cfg_;
  const Membership& membership_;
  Replicator& repl_;
  DurableStore& disk_;
  SendFn send_;
  LogFn log_;
  WallFn wall_;
  LiveFn live_;
  FullFn spool_full_;

  std::map<NodeId, Peer> peers_;
  std::uint64_t round_ = 0;
  Time next_sync_ = 0;
  Progress stats_;
};

}  // namespace porcupine
