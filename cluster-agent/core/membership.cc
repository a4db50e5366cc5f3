// SPDX-License-Identifier: MIT
// membership.cc - see membership.h for the protocol.
#include "membership.h"

#include <algorithm>

namespace porcupine {

Membership::Membership(const CoreConfig& cfg, SendFn send, LogFn log, ChangeFn on_change)
    : cfg_(cfg), send_(std::move(send)), log_(std::move(log)), on_change_(std::move(on_change)) {
  for (NodeId s : cfg_.seeds)
    if (s != cfg_.self) known_.insert(s);
}

bool Membership::is_member(NodeId n) const {
  return std::any_of(members_.begin(), members_.end(),
                     [n](const MemberWeight& m) { return m.id == n; });
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

void Membership::drop_refused(Time now) {
  if (coord_ || (promised_ > epoch_ && now - promised_at_ <= cfg_.commit_timeout)) return;
  for (const auto& [n, at] : refused_)
    if (is_member(n)) {
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
  // A (re)starting node knows no group: it coordinates one at once. Every
  // live node that hears the NewGroup joins, so a recovered node rejoins,
  // and if nobody answers it forms a group of one.
  coordinate(now, "start");
}

Epoch Membership::next_epoch(Time now) const {
  Time t = std::max({now, epoch_.time + 1, promised_.time + 1});
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
  Round r;
  r.epoch = next_epoch(now);
  r.deadline = now + cfg_.accept_window;
  promised_ = r.epoch;
  promised_at_ = now;
  log_(std::string("membership: coordinating epoch ") + r.epoch.str() + " (" + why + ")");
  for (NodeId n : known_) send_(n, NewGroup{r.epoch});
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
        send_(n, NewGroup{coord_->epoch});
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
  // coordinator (which has none) does not reshuffle every bucket.
  const Accept* base = nullptr;
  for (const auto& [id, a] : r.accepted)
    if (!base || a.map_epoch > base->map_epoch) base = &a;
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
  for (const auto& m : c.members)
    if (m.id != cfg_.self) send_(m.id, c);
  install(now, c);
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
  if (coord_ && (now >= coord_->deadline || round_complete())) finish_round(now);
  drop_refused(now);
  // Invitations are resent while the round is open: a NewGroup can be lost,
  // or (a restarting node) sent before the connections to its peers are
  // up; without this a recovered node forms a group of one, manages every
  // bucket for a moment and starts new UID lineages.
  if (coord_ && now - coord_->invited_at >= kReinvite) {
    coord_->invited_at = now;
    for (NodeId n : coord_->invited)
      if (!coord_->accepted.count(n)) send_(n, NewGroup{coord_->epoch});
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
    if (p->epoch != epoch_) maybe_coordinate(now, "probe from another epoch");
  } else if (const auto* a = std::get_if<ProbeAck>(&m)) {
    learn_alive(from);
    last_heard_[from] = now;
    if (a->epoch != epoch_) maybe_coordinate(now, "probe ack from another epoch");
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
      acc.map = map_;
      acc.known.assign(known_.begin(), known_.end());
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
  } else if (const auto* c = std::get_if<Commit>(&m)) {
    bool included = std::any_of(c->members.begin(), c->members.end(),
                                [this](const MemberWeight& w) { return w.id == cfg_.self; });
    if (included && c->epoch >= promised_ && c->epoch > epoch_) {
      coord_.reset();
      install(now, *c);
    }
  }
}

}  // namespace porcupine
