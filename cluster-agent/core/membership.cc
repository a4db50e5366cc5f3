// SPDX-License-Identifier: MIT
// membership.cc - see membership.h for the protocol.
#include "membership.h"

#include <algorithm>

#include "hash.h"

namespace porcupine {

Membership::Membership(const CoreConfig& cfg, SendFn send, LogFn log, ChangeFn on_change)
    : cfg_(cfg), send_(std::move(send)), log_(std::move(log)), on_change_(std::move(on_change)) {
  for (NodeId s : cfg_.seeds)
    if (s != cfg_.self) known_.insert(s);
}

bool Membership::is_member(NodeId n) const {
  // members_ is sorted by id (install()).
  auto it = std::lower_bound(members_.begin(), members_.end(), n,
                             [](const MemberWeight& m, NodeId id) { return m.id < id; });
  return it != members_.end() && it->id == n;
}

void Membership::learn(NodeId n) {
  if (admin_state(n) != AdminState::Gone) learn_alive(n);
}

void Membership::learn_alive(NodeId n) {
  if (n != cfg_.self && n != kNoNode) known_.insert(n);
}

Time Membership::silent_since(NodeId n) const {
  auto it = last_heard_.find(n);
  return it == last_heard_.end() ? 0 : it->second;
}

void Membership::unreachable(Time now, NodeId n) {
  if (n == cfg_.self || n == kNoNode) return;
  refused_[n] = now;
  if (coord_ && round_complete()) finish_round(now);
  else drop_refused(now);
}

void Membership::reachable(NodeId n) { refused_.erase(n); }

NodeId Membership::watcher_of(NodeId n) const {
  // The nearest member below n in the ring (wrapping) that does not refuse.
  NodeId below = kNoNode, top = kNoNode;
  for (const auto& m : members_) {
    if (m.id == n || refuses(m.id)) continue;
    if (m.id < n) below = m.id;
    top = m.id;
  }
  return below != kNoNode ? below : top;
}

void Membership::drop_refused(Time now) {
  if (coord_ || (promised_ > epoch_ && now - promised_at_ <= cfg_.commit_timeout)) return;
  for (const auto& [n, at] : refused_) {
    if (!is_member(n)) continue;
    // Every node connected to a dead one hears the refusal at about the
    // same time; only its watcher (the node that probes it) coordinates at
    // once, so a crash costs one round, not one per node (O(N), not
    // O(N^2), messages). The others step in if no round has taken it out
    // within probe_timeout, as silence would have made them.
    if (watcher_of(n) != cfg_.self && now - at < cfg_.probe_timeout) continue;
    // Not held back by reconfig_backoff: the round cannot end with the
    // node in it (it cannot accept), so it does not repeat.
    coordinate(now, ("node " + std::to_string(n) + " refuses connections").c_str());
    return;
  }
}

bool Membership::round_complete() const {
  for (NodeId n : known_)
    if (!coord_->invited.count(n)) return false;
  for (NodeId n : coord_->invited)
    if (!coord_->accepted.count(n) && !refuses(n)) return false;
  return true;
}

void Membership::merge_admin_in(const AdminMap& a) {
  if (!merge_admin(admin_, a)) return;
  // A node declared gone is no longer invited to rounds nor waited for.
  for (const auto& [n, s] : admin_)
    if (s.state == AdminState::Gone && !is_member(n)) known_.erase(n);
  if (on_admin) on_admin(admin_);
}

void Membership::set_admin(Time now, NodeId n, AdminState state, Version version) {
  merge_admin_in(AdminMap{{n, NodeAdmin{state, version}}});
  log_(std::string("membership: node ") + std::to_string(n) + " is now " + admin_state_name(admin_state(n)));
  coordinate(now, "administration");
}

void Membership::start(Time now) {
  // A (re)starting node knows no group. It asks to join: a probe to every
  // node it knows, which the leader of a running group answers with a
  // round of its own; that round is a change to the group its members
  // hold, so they exchange only the change, not the whole user map. If no
  // round comes (nothing runs yet, or the leader is not among the nodes
  // this one knows), it coordinates one itself; if nobody answers that,
  // it forms a group of one. A node that knows no other starts at once.
  if (known_.empty()) {
    coordinate(now, "start");
    return;
  }
  join_until_ = now + cfg_.reconfig_backoff + cfg_.accept_window;
  ask_to_join(now);
}

bool Membership::joining() const { return join_until_ != 0 && epoch_.is_null() && promised_.is_null(); }

void Membership::ask_to_join(Time now) {
  last_join_probe_ = now;
  for (NodeId n : known_) send_(n, Probe{epoch_});
}

void Membership::admit_joiners(Time now) {
  for (auto it = join_askers_.begin(); it != join_askers_.end();)
    it = is_member(*it) ? join_askers_.erase(it) : std::next(it);
  // Not held back by reconfig_backoff: a node that asks to join is no
  // round settling, and it waits for this one. A promise to a round that
  // may still commit holds it back (tick() tries again).
  if (join_askers_.empty() || coord_ || (promised_ > epoch_ && now - promised_at_ <= cfg_.commit_timeout)) return;
  coordinate(now, ("node " + std::to_string(*join_askers_.begin()) + " asks to join").c_str());
}

bool Membership::lowest_known() const { return known_.empty() || *known_.begin() > cfg_.self; }

Epoch Membership::next_epoch(Time now) const {
  Time t = std::max({wall_clock ? wall_clock() : now, epoch_.time + 1, promised_.time + 1});
  return Epoch{t, cfg_.self};
}

NodeId Membership::successor() const {
  if (members_.size() < 2) return kNoNode;
  for (const auto& m : members_)
    if (m.id > cfg_.self) return m.id;
  return members_.front().id == cfg_.self ? members_[1].id : members_.front().id;
}

void Membership::coordinate(Time now, const char* why) {
  if (coord_) return;
  join_askers_.clear();
  Round r;
  r.epoch = next_epoch(now);
  r.deadline = now + cfg_.accept_window;
  promised_ = r.epoch;
  promised_at_ = now;
  log_(std::string("membership: coordinating epoch ") + r.epoch.str() + " (" + why + ")");
  std::set<NodeId> all = known_;
  all.insert(cfg_.self);
  r.invitation = NewGroup{r.epoch, map_epoch_, nodes_digest(all)};
  for (NodeId n : known_) send_(n, r.invitation);
  r.invited = known_;
  r.invited_at = now;
  Accept self;
  self.epoch = r.epoch;
  self.weight = cfg_.weight;
  self.map_epoch = map_epoch_;
  self.map = map_;
  self.admin = admin_;
  r.accepted[cfg_.self] = std::move(self);
  coord_ = std::move(r);
}

void Membership::maybe_coordinate(Time now, const char* why) {
  // A mismatch seen right after a round is usually that round still
  // settling; wait a little before starting another.
  if (coord_ || now - last_round_end_ < cfg_.reconfig_backoff) return;
  // Promised to a round that may still commit: starting another now would
  // pre-empt it, and rounds pre-empting each other can go on forever.
  // If its commit never comes, tick() starts a round after commit_timeout.
  if (promised_ > epoch_ && now - promised_at_ <= cfg_.commit_timeout) return;
  coordinate(now, why);
}

void Membership::finish_round(Time now) {
  // Accepters told us of nodes we did not invite: invite them, once.
  if (!coord_->extended) {
    std::vector<NodeId> late;
    for (NodeId n : known_)
      if (!coord_->invited.count(n)) late.push_back(n);
    if (!late.empty()) {
      coord_->extended = true;
      coord_->deadline = now + cfg_.accept_window;
      for (NodeId n : late) {
        coord_->invited.insert(n);
        send_(n, coord_->invitation);
      }
      return;
    }
  }
  // A node heard from lately that has not accepted yet is slow (a loaded
  // machine), not gone: wait another window for it, a few times. Without
  // this, rounds under load commit with the coordinator alone, over and
  // over, each node in a group of its own.
  if (promised_ == coord_->epoch && coord_->waits < kMaxWaits) {
    bool slow = false;
    for (NodeId n : coord_->invited) {
      auto h = last_heard_.find(n);
      slow |= !coord_->accepted.count(n) && !refuses(n) && h != last_heard_.end() &&
              now - h->second < cfg_.probe_timeout;
    }
    if (slow) {
      ++coord_->waits;
      coord_->deadline = now + cfg_.accept_window;
      return;
    }
  }
  Round r = std::move(*coord_);
  coord_.reset();
  last_round_end_ = now;
  if (promised_ != r.epoch) return;  // pre-empted by a higher epoch meanwhile
  // The newest user map among the accepters is the base, so a recovered
  // coordinator (which has none) does not reshuffle every bucket. An
  // accepter left its map out when it was not newer than this node's.
  const Accept* base = nullptr;
  for (const auto& [id, a] : r.accepted)
    if ((id == cfg_.self || !a.map.empty()) && (!base || a.map_epoch > base->map_epoch)) base = &a;
  Commit c;
  c.epoch = r.epoch;
  c.admin = admin_;  // with what this node was told while the round was open
  for (const auto& [id, a] : r.accepted) merge_admin(c.admin, a.admin);
  for (const auto& [id, a] : r.accepted) {
    if (refuses(id)) continue;  // accepted, then its process went away
    c.members.push_back({id, std::max(1u, a.weight)});
    // A node that answers is not gone: it is back (the epoch is newer
    // than any version the table holds for it).
    auto g = c.admin.find(id);
    if (g != c.admin.end() && g->second.state == AdminState::Gone) g->second = NodeAdmin{AdminState::Active, r.epoch};
  }
  // Draining nodes manage no bucket, unless every member drains.
  std::vector<MemberWeight> managers;
  for (const auto& m : c.members) {
    auto g = c.admin.find(m.id);
    if (g == c.admin.end() || g->second.state == AdminState::Active) managers.push_back(m);
  }
  if (managers.empty()) managers = c.members;
  c.map = assign_buckets(base ? base->map : UserMap{}, managers, cfg_.buckets);
  // An accepter still at this node's installed group is sent the change
  // to it; any other, the whole group.
  std::optional<Commit> delta;
  if (!epoch_.is_null() && map_.size() == c.map.size()) delta = change_from_installed(c);
  for (const auto& m : c.members) {
    if (m.id == cfg_.self) continue;
    auto a = r.accepted.find(m.id);
    send_(m.id, delta && a != r.accepted.end() && a->second.installed == epoch_ ? *delta : c);
  }
  install(now, c);
}

Commit Membership::change_from_installed(const Commit& whole) const {
  Commit d;
  d.epoch = whole.epoch;
  d.admin = whole.admin;
  d.base = epoch_;
  for (const auto& m : whole.members) {
    auto old = std::find_if(members_.begin(), members_.end(), [&](const MemberWeight& o) { return o.id == m.id; });
    if (old == members_.end() || old->weight != m.weight) d.members.push_back(m);
  }
  for (const auto& m : members_)
    if (std::none_of(whole.members.begin(), whole.members.end(), [&](const MemberWeight& w) { return w.id == m.id; }))
      d.removed.push_back(m.id);
  for (Bucket b = 0; b < whole.map.size(); ++b)
    if (whole.map[b] != map_[b]) d.moves.emplace_back(b, whole.map[b]);
  return d;
}

bool Membership::apply_change(const Commit& d, Commit& whole) const {
  whole.epoch = d.epoch;
  whole.admin = d.admin;
  whole.members.clear();
  for (const auto& m : members_)
    if (std::find(d.removed.begin(), d.removed.end(), m.id) == d.removed.end() &&
        std::none_of(d.members.begin(), d.members.end(), [&](const MemberWeight& w) { return w.id == m.id; }))
      whole.members.push_back(m);
  whole.members.insert(whole.members.end(), d.members.begin(), d.members.end());
  whole.map = map_;
  for (const auto& [b, n] : d.moves) {
    if (b >= whole.map.size()) return false;
    whole.map[b] = n;
  }
  return true;
}

void Membership::install(Time now, const Commit& c) {
  Change ch;
  ch.old_epoch = epoch_;
  ch.old_members = members_;
  ch.old_map = map_;
  epoch_ = c.epoch;
  if (promised_ < epoch_) promised_ = epoch_;
  members_ = c.members;
  std::sort(members_.begin(), members_.end(),
            [](const MemberWeight& a, const MemberWeight& b) { return a.id < b.id; });
  map_ = c.map;
  map_epoch_ = c.epoch;
  for (const auto& m : members_) {
    learn_alive(m.id);
    last_heard_[m.id] = now;
  }
  merge_admin_in(c.admin);
  last_round_end_ = now;
  ch.epoch = epoch_;
  ch.members = members_;
  ch.map = map_;
  std::string names;
  for (const auto& m : members_) names += " " + std::to_string(m.id);
  log_("membership: installed epoch " + epoch_.str() + " members" + names + ", " +
       std::to_string(buckets_moved(ch.old_map.size() == map_.size() ? ch.old_map : UserMap(map_.size(), kNoNode), map_)) +
       " buckets moved");
  on_change_(ch);
}

void Membership::tick(Time now) {
  if (joining()) {
    if (now >= join_until_) {
      join_until_ = 0;
      coordinate(now, "start");
    } else if (now - last_join_probe_ >= kRejoinProbe) {
      ask_to_join(now);
    }
  } else {
    join_until_ = 0;
  }
  admit_joiners(now);

  if (coord_ && (now >= coord_->deadline || round_complete())) finish_round(now);
  drop_refused(now);
  // Invitations are resent while the round is open: a NewGroup can be lost,
  // or (a restarting node) sent before the connections to its peers are
  // up; without this a recovered node forms a group of one, manages every
  // bucket for a moment and starts new UID lineages.
  if (coord_ && now - coord_->invited_at >= kReinvite) {
    coord_->invited_at = now;
    for (NodeId n : coord_->invited)
      if (!coord_->accepted.count(n)) send_(n, coord_->invitation);
  }

  // Promised a coordinator that never committed: it probably died.
  if (!coord_ && promised_ > epoch_ && now - promised_at_ > cfg_.commit_timeout)
    coordinate(now, "no commit");

  NodeId succ = successor();
  if (succ != kNoNode && now - last_probe_ >= cfg_.probe_interval) {
    last_probe_ = now;
    send_(succ, Probe{epoch_});
    auto it = last_heard_.find(succ);
    if (it == last_heard_.end()) last_heard_[succ] = now;
    else if (now - it->second > cfg_.probe_timeout)
      maybe_coordinate(now, ("successor " + std::to_string(succ) + " silent").c_str());
  }

  // Discovery: only the lowest-id member, so the cost stays O(known).
  bool leader = members_.empty() || members_.front().id == cfg_.self;
  if (leader && now - last_discovery_ >= cfg_.discovery_interval) {
    last_discovery_ = now;
    for (NodeId n : known_)
      if (!is_member(n)) send_(n, Probe{epoch_});
  }
}

void Membership::on_message(Time now, NodeId from, const Message& m) {
  if (from != cfg_.self) {  // any word from a node says it is alive
    last_heard_[from] = now;
    // ... but a message can be older than the refusal (sent before the
    // process died, read after): a refusal stands until the node is
    // connected again (reachable()), or it is still heard from well after.
    if (auto r = refused_.find(from); r != refused_.end() && now - r->second >= cfg_.probe_timeout) refused_.erase(r);
  }
  if (const auto* p = std::get_if<Probe>(&m)) {
    learn_alive(from);
    send_(from, ProbeAck{epoch_});
    if (p->epoch.is_null() && !is_member(from)) {
      // A node that starts asks every node it knows to let it in: only the
      // group's leader runs the round (one round, not one per member);
      // among nodes that all start, the lowest-id one.
      if (coord_) {
        // The open round invites it if it can (finish_round); if not, it
        // asks again.
      } else if (in_group() ? members_.front().id == cfg_.self : (joining() && lowest_known())) {
        join_askers_.insert(from);
        admit_joiners(now);
      }
    } else if (p->epoch != epoch_ && !joining()) {
      maybe_coordinate(now, "probe from another epoch");
    }
  } else if (const auto* a = std::get_if<ProbeAck>(&m)) {
    learn_alive(from);
    last_heard_[from] = now;
    // A joining node waits for the leader's round (or its own deadline).
    if (a->epoch != epoch_ && !joining()) maybe_coordinate(now, "probe ack from another epoch");
  } else if (const auto* g = std::get_if<NewGroup>(&m)) {
    learn_alive(from);
    if (g->epoch > promised_ && g->epoch > epoch_) {
      if (coord_) {
        log_("membership: round " + coord_->epoch.str() + " pre-empted by " + g->epoch.str());
        coord_.reset();
        last_round_end_ = now;
      }
      promised_ = g->epoch;
      promised_at_ = now;
      Accept acc;
      acc.epoch = g->epoch;
      acc.weight = cfg_.weight;
      acc.map_epoch = map_epoch_;
      acc.installed = epoch_;
      // What the coordinator already holds is left out (deltas).
      if (map_epoch_ > g->map_epoch) acc.map = map_;
      std::set<NodeId> all = known_;
      all.insert(cfg_.self);
      if (g->known_digest != 0 && g->known_digest == nodes_digest(all)) acc.known_same = true;
      else acc.known.assign(known_.begin(), known_.end());
      acc.admin = admin_;
      send_(from, std::move(acc));
    } else if (g->epoch < promised_) {
      // A stale or slower coordinator: it is alive and outside our round,
      // so run a round that includes it.
      maybe_coordinate(now, "stale NewGroup");
    }
  } else if (const auto* acc = std::get_if<Accept>(&m)) {
    if (coord_ && acc->epoch == coord_->epoch) {
      coord_->accepted[from] = *acc;
      merge_admin_in(acc->admin);
      for (NodeId n : acc->known) learn(n);
      if (round_complete()) finish_round(now);
    }
  } else if (const auto* cm = std::get_if<Commit>(&m)) {
    if (cm->epoch < promised_ || cm->epoch <= epoch_) return;  // stale, or installed already
    Commit whole;
    const Commit* c = cm;
    if (!cm->base.is_null()) {
      // A change to the group this node said it holds; if it holds another
      // (it never should), it installs nothing and a later round mends it.
      if (cm->base != epoch_ || !apply_change(*cm, whole)) {
        log_("warning: membership: commit " + cm->epoch.str() + " is a change to epoch " + cm->base.str() +
             ", not to the installed " + epoch_.str() + ": ignored");
        return;
      }
      c = &whole;
    }
    bool included = std::any_of(c->members.begin(), c->members.end(),
                                [this](const MemberWeight& w) { return w.id == cfg_.self; });
    if (included && c->epoch >= promised_ && c->epoch > epoch_) {
      coord_.reset();
      install(now, *c);
    }
  }
}

}  // namespace porcupine
