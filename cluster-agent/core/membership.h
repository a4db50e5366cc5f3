/* SPDX-License-Identifier: MIT */
// membership.h - failure detection and the three-round membership protocol.
//
// Owns the soft state "who is in the group, at which epoch, and which node
// manages each bucket". Pure state machine: driven by tick() and
// on_message(); sends through the callback it is given; reads no clock.
//
// Protocol (docs/protocols.md, "Membership"):
//  * each member probes its successor in the id-ordered ring every
//    probe_interval; silence for probe_timeout makes it suspect a change;
//  * the lowest-id member also probes known non-members (discovery), so a
//    recovered node or the other side of a healed partition is found;
//  * a probe or ack carrying another epoch also means a change;
//  * a node whose address refuses connections (unreachable(): its process
//    is not running) is a change at once, without waiting for silence;
//  * on a change the node becomes coordinator: round 1 NewGroup(epoch =
//    (time, id)) to every known node; round 2 each node that has promised
//    nothing higher answers Accept (with its weight and user map); round 3
//    after accept_window the coordinator commits the members that accepted
//    and the new user map. A higher epoch always pre-empts a lower one.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "config.h"
#include "user_map.h"
#include "wire.h"

namespace porcupine {

class Membership {
 public:
  struct Change {
    Epoch old_epoch, epoch;
    std::vector<MemberWeight> old_members, members;
    UserMap old_map, map;
  };
  using SendFn = std::function<void(NodeId, Message)>;
  using LogFn = std::function<void(const std::string&)>;
  using ChangeFn = std::function<void(const Change&)>;

  Membership(const CoreConfig& cfg, SendFn send, LogFn log, ChangeFn on_change);

  void start(Time now);
  void tick(Time now);
  // Handles Probe, ProbeAck, NewGroup, Accept, Commit; ignores the rest.
  void on_message(Time now, NodeId from, const Message& m);

  const Epoch& epoch() const { return epoch_; }
  const std::vector<MemberWeight>& members() const { return members_; }
  const UserMap& map() const { return map_; }
  bool is_member(NodeId n) const;
  bool in_group() const { return !members_.empty(); }
  NodeId manager_of(Bucket b) const { return b < map_.size() ? map_[b] : kNoNode; }
  bool coordinating() const { return coord_.has_value(); }
  const std::set<NodeId>& known() const { return known_; }
  // A node named by state (a replica list, a seed): not one the cluster
  // has declared Gone. A node heard from is learnt whatever it was.
  void learn(NodeId n);

  // What the cluster has been told of nodes (records.h, AdminState). The
  // table is carried by every round (Accept, Commit) and merged newest
  // first, so every member ends with the same; a Draining node manages no
  // bucket (unless every member drains); a Gone node is forgotten (not
  // invited, not waited for) until it is heard from again, and the round
  // that takes it back marks it Active.
  const AdminMap& admin() const { return admin_; }
  AdminState admin_state(NodeId n) const {
    auto it = admin_.find(n);
    return it == admin_.end() ? AdminState::Active : it->second.state;
  }
  void load_admin(const AdminMap& a) { merge_admin(admin_, a); }
  // The wall clock (Env::wall()): epochs are stamped with it; `now` (a
  // monotonic clock) times everything else.
  std::function<Time()> wall_clock;
  // Records `state` for `n` at `version` and runs a round to spread it.
  void set_admin(Time now, NodeId n, AdminState state, Version version);
  // Called whenever the table changes (the node keeps it durably).
  std::function<void(const AdminMap&)> on_admin;
  // When each known node that is not a member was last a member or heard
  // from (for node_dead_timeout).
  Time silent_since(NodeId n) const;
  // The transport could not connect to `n`: its address refused (nothing
  // listens there: the process was killed, crashed or stopped; a host
  // that is lost or cut off refuses nothing and is found by silence). A
  // member that refuses is taken out by a round at once, and no round
  // waits for a node that refuses, until it is connected again
  // (reachable()) or still heard from probe_timeout after the refusal (a
  // message read after a refusal may have been sent before the death).
  void unreachable(Time now, NodeId n);
  void reachable(NodeId n);
  bool refuses(NodeId n) const { return refused_.count(n) > 0; }

 private:
  static constexpr Time kReinvite = 100;  // ms between NewGroup resends of an open round
  static constexpr int kMaxWaits = 3;     // extra accept windows for slow but live nodes
  static constexpr Time kRejoinProbe = 250;  // ms between a starting node's join probes
  struct Round {
    Epoch epoch;
    Time deadline = 0;
    std::map<NodeId, Accept> accepted;
    std::set<NodeId> invited;
    bool extended = false;
    int waits = 0;        // windows added for live nodes that have not answered yet
    Time invited_at = 0;  // last (re)sending of NewGroup to those yet to accept
    NewGroup invitation;
  };

  void coordinate(Time now, const char* why);
  // A started node waiting for a group's round to take it in (start()).
  bool joining() const;
  void ask_to_join(Time now);
  bool lowest_known() const;  // no known node has a lower id
  void admit_joiners(Time now);  // the leader's round for nodes that asked to join
  void learn_alive(NodeId n);
  void merge_admin_in(const AdminMap& a);
  void maybe_coordinate(Time now, const char* why);  // rate-limited by reconfig_backoff
  void finish_round(Time now);
  // Every known node invited, and each either accepted or refuses.
  bool round_complete() const;
  // A member refuses connections: a round without it, unless this node has
  // promised a round that may still commit.
  void drop_refused(Time now);
  void install(Time now, const Commit& c);
  // The node that coordinates at once when member n refuses connections.
  NodeId watcher_of(NodeId n) const;
  // A whole commit as a change to the installed group (Commit.base), and back.
  Commit change_from_installed(const Commit& whole) const;
  bool apply_change(const Commit& change, Commit& whole) const;
  Epoch next_epoch(Time now) const;
  NodeId successor() const;

  const CoreConfig& cfg_;
  SendFn send_;
  LogFn log_;
  ChangeFn on_change_;

  Epoch epoch_;      // installed
  Epoch promised_;   // highest epoch accepted (>= epoch_)
  Time promised_at_ = 0;
  std::vector<MemberWeight> members_;  // sorted by id
  UserMap map_;
  Epoch map_epoch_;
  std::set<NodeId> known_;
  std::optional<Round> coord_;
  Time last_round_end_ = -1'000'000;
  Time last_probe_ = 0;
  Time last_discovery_ = 0;
  std::map<NodeId, Time> last_heard_;
  std::map<NodeId, Time> refused_;  // refused since last heard from (when)
  Time join_until_ = 0;       // joining: coordinate itself at this time
  Time last_join_probe_ = 0;
  std::set<NodeId> join_askers_;  // nodes that asked this leader to let them in
  AdminMap admin_;
};

}  // namespace porcupine
