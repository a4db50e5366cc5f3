// manager.cc - the manager role: for the users of the buckets this node
// manages, the mail map (which nodes hold which folder's fragments), the
// profile rebuilt from its replicas, UID allocation and placement.
//
// All of it is soft state, rebuilt after every user-map change from the
// members' reports (report.cc). A bucket that moved here serves nothing
// until every member has reported it ("ready").
//
// UIDs. Each folder has one lineage at a time: a UIDVALIDITY and a next
// UID, and only one manager hands out UIDs under it. A manager that loses
// a bucket hands each folder's lineage to the new manager in its report,
// valid only in the epoch that moved the bucket, so a lineage never forks.
// A manager that receives no handoff for a folder (its predecessor crashed
// or is on the far side of a partition, still handing out UIDs perhaps)
// starts a new lineage, and every message still carrying another
// lineage's UID is renumbered into the current one.

#include <algorithm>
#include <tuple>

#include "hash.h"
#include "node.h"
#include "placement.h"

namespace porcupine {

const Node::MgrUser* Node::managed_user(const std::string& user) const {
  auto b = managed_.find(bucket(user));
  if (b == managed_.end()) return nullptr;
  auto u = b->second.find(user);
  return u == b->second.end() ? nullptr : &u->second;
}

bool Node::bucket_ready(Bucket b) const {
  return membership_.in_group() && membership_.manager_of(b) == cfg_.self && !awaiting_.count(b);
}

std::uint32_t Node::MgrFolder::visible_below(Time now) const {
  for (const auto& [uid, until] : inflight)
    if (until > now) return uid;
  return next_uid;
}

std::vector<NodeLoad> Node::live_loads() const {
  std::vector<NodeLoad> out;
  for (const auto& m : membership_.members()) {
    auto it = loads_.find(m.id);
    std::uint32_t l = m.id == cfg_.self ? load() : (it == loads_.end() ? 0 : it->second);
    out.push_back({m.id, l, false});
  }
  return out;
}

void Node::mgr_on_change(Time now, const Membership::Change& ch) {
  std::set<NodeId> now_members, departed;
  for (const auto& m : ch.members) now_members.insert(m.id);
  for (const auto& m : ch.old_members)
    if (!now_members.count(m.id)) departed.insert(m.id);
  handoffs_.clear();  // a handoff not delivered in its epoch is void
  bool same_size = ch.old_map.size() == ch.map.size();
  for (Bucket b = 0; b < ch.map.size(); ++b) {
    NodeId was = same_size ? ch.old_map[b] : kNoNode;
    if (ch.map[b] != cfg_.self) {
      // Lost: hand each folder's lineage to the new manager, if this node
      // was handing out UIDs for the bucket.
      if (was == cfg_.self && !awaiting_.count(b))
        if (auto m = managed_.find(b); m != managed_.end())
          for (const auto& [name, u] : m->second)
            for (const auto& [fname, f] : u.folders)
              if (f.uidvalidity != 0) {
                Handoff h{name, fname, f.uidvalidity, f.next_uid, {}};
                for (const auto& [uid, until] : f.inflight)
                  if (until > now) h.inflight.push_back(uid);
                handoffs_[b].push_back(std::move(h));
              }
      expected_.erase(b);
      managed_.erase(b);
      awaiting_.erase(b);
      reported_.erase(b);
    } else if (was != cfg_.self) {
      // Moved here: start from nothing and wait for every member's report.
      managed_.erase(b);
      reported_.erase(b);
      awaiting_[b] = now_members;
    } else {
      // Kept: forget what departed nodes held; they report again on return.
      auto& users = managed_[b];
      for (auto& [name, u] : users)
        for (auto& [fname, f] : u.folders)
          for (NodeId d : departed) f.nodes.erase(d);
      for (NodeId d : departed) reported_[b].erase(d);
      // A member new to this manager may hold fragments of the bucket while
      // its own view says nothing moved: ask it, without blocking delivery.
      for (NodeId n : now_members)
        if (n != cfg_.self && !reported_[b].count(n)) expected_[b].insert(n);
      if (auto a = awaiting_.find(b); a != awaiting_.end()) {
        for (NodeId d : departed) a->second.erase(d);
        for (NodeId n : now_members)
          if (!reported_[b].count(n)) a->second.insert(n);
        if (a->second.empty()) {
          awaiting_.erase(a);
          decide_lineages(now, b);
        }
      }
    }
  }
  awaiting_since_ = now;
  last_poll_ = now;
}

void Node::absorb_entry(const std::string& user, MgrFolder& f, const ReportEntry& e) {
  for (const auto& r : e.ranges) {
    if (r.max_uid != 0) {
      auto [it, fresh] = f.seen.try_emplace(r.uidvalidity, r.max_uid);
      if (!fresh) it->second = std::max(it->second, r.max_uid);
    }
    if (r.live == 0) continue;
    f.seen_live.insert(r.uidvalidity);
    if (f.uidvalidity != 0 && r.uidvalidity != f.uidvalidity && !f.renumber_due) {
      f.renumber_due = true;
      renumbers_due_.insert({user, e.folder});
    }
  }
  if (f.uidvalidity != 0)
    if (auto s = f.seen.find(f.uidvalidity); s != f.seen.end())
      f.next_uid = std::max(f.next_uid, s->second + 1);
}

std::uint32_t Node::new_lineage(Time now, const MgrFolder& f) {
  // (counter << 8 | node id): two managers that start lineages at once
  // (two sides of a partition) never pick the same value, and a node
  // never repeats one, since its last is durable.
  std::uint32_t base = std::max(static_cast<std::uint32_t>(now / 1000), last_lineage_);
  for (const auto& [v, max] : f.seen) base = std::max(base, v);
  for (const auto& [v, next] : f.handed) base = std::max(base, v);
  last_lineage_ = (((base >> 8) + 1) << 8) | (cfg_.self & 0xff);
  persist_counters();
  return last_lineage_;
}

void Node::write_profile(Time now, MgrUser& u) {
  if (!u.profile) return;
  Update up;
  up.id = next_version(now);
  up.kind = Update::Kind::Profile;
  up.replicas = u.profile->holders;
  up.profile = *u.profile;
  repl_.coordinate(now, std::move(up));
}

bool Node::settle_lineage(Time now, const std::string& user, const std::string& folder,
                          MgrFolder& f) {
  if (f.uidvalidity != 0) return true;
  std::uint32_t top = 0;
  for (const auto& [v, max] : f.seen) top = std::max(top, max);
  if (!f.handed.empty()) {
    // Continue a handed-on lineage; if two were (two sides of a healed
    // partition), the one that went furthest.
    auto best = std::max_element(f.handed.begin(), f.handed.end(), [](const auto& x, const auto& y) {
      return std::pair(x.second, x.first) < std::pair(y.second, y.first);
    });
    f.uidvalidity = best->first;
    f.next_uid = best->second;
    if (auto s = f.seen.find(f.uidvalidity); s != f.seen.end())
      f.next_uid = std::max(f.next_uid, s->second + 1);
  } else {
    f.uidvalidity = new_lineage(now, f);
    f.next_uid = top + 1;
    f.inflight.clear();
    if (top != 0)
      env_.log("manager: " + user + "/" + folder + " taken over without a handoff: UIDVALIDITY " +
               std::to_string(f.uidvalidity) + ", renumbering");
  }
  f.handed.clear();
  bool others = false;
  for (std::uint32_t v : f.seen_live) others |= v != f.uidvalidity;
  if (others && !f.renumber_due) {
    f.renumber_due = true;
    renumbers_due_.insert({user, folder});
  }
  return true;
}

void Node::decide_lineages(Time now, Bucket b) {
  auto m = managed_.find(b);
  if (m == managed_.end()) return;
  for (auto& [name, u] : m->second)
    for (auto& [fname, f] : u.folders)
      if (f.uidvalidity == 0 && (!f.handed.empty() || !f.seen.empty() || !f.seen_live.empty()))
        settle_lineage(now, name, fname, f);
}

std::uint32_t Node::take_uid(Time now, const std::string& user, const std::string& folder,
                             MgrFolder& f) {
  settle_lineage(now, user, folder, f);
  return f.next_uid++;
}

void Node::mgr_report(Time now, NodeId from, const Report& r) {
  if (r.epoch != membership_.epoch()) return;  // sender retries under the right epoch
  ReportAck ack;
  ack.epoch = r.epoch;
  for (const auto& h : r.handoffs) {
    // Only a folder still without a lineage takes a handoff; one that has
    // a lineage keeps it (the other's messages get renumbered).
    Bucket b = bucket(h.user);
    if (membership_.manager_of(b) != cfg_.self) continue;
    MgrFolder& f = managed_[b][h.user].folders[h.folder];
    if (f.uidvalidity != 0) continue;
    auto& next = f.handed[h.uidvalidity];
    next = std::max(next, h.next_uid);
    // The old manager's allocations still on their way keep later UIDs
    // out of listings here too, for as long as a store may take.
    for (std::uint32_t uid : h.inflight)
      f.inflight[uid] = std::max(f.inflight[uid], now + cfg_.request_timeout + cfg_.push_retry);
  }
  for (std::size_t i = 0; i < r.users.size(); ++i) {
    const std::string& user = r.users[i];
    Bucket b = bucket(user);
    if (membership_.manager_of(b) != cfg_.self) continue;
    MgrUser& mu = managed_[b][user];
    std::set<std::string> holding;
    for (const auto& e : r.entries)
      if (e.user == user && e.count > 0) holding.insert(e.folder);
    for (auto& [fname, f] : mu.folders)
      if (!holding.count(fname)) f.nodes.erase(from);
    for (const auto& p : r.profiles) {
      if (p.user != user) continue;
      if (!mu.profile) mu.profile = p;
      else merge_profile(*mu.profile, p);
    }
    for (const auto& e : r.entries) {
      if (e.user != user) continue;
      MgrFolder& f = mu.folders[e.folder];
      if (e.count > 0) f.nodes.insert(from);
      absorb_entry(user, f, e);
      // A folder first heard of after the bucket became ready.
      if (f.uidvalidity == 0 && (!f.seen.empty() || !f.seen_live.empty()) && bucket_ready(b))
        settle_lineage(now, user, e.folder, f);
    }
    ack.users.push_back(user);
    ack.generations.push_back(i < r.generations.size() ? r.generations[i] : 0);
  }
  for (Bucket b : r.complete) {
    if (membership_.manager_of(b) != cfg_.self) continue;
    reported_[b].insert(from);
    ack.complete.push_back(b);
    if (auto x = expected_.find(b); x != expected_.end()) {
      x->second.erase(from);
      if (x->second.empty()) expected_.erase(x);
    }
    auto a = awaiting_.find(b);
    if (a == awaiting_.end()) continue;
    a->second.erase(from);
    if (!a->second.empty()) continue;
    awaiting_.erase(a);
    decide_lineages(now, b);
  }
  send(from, std::move(ack));
}

void Node::mgr_tick(Time now) {
  if (now - last_inflight_prune_ >= 1000) {
    last_inflight_prune_ = now;
    for (auto& [b, users] : managed_)
      for (auto& [name, u] : users)
        for (auto& [fname, f] : u.folders)
          std::erase_if(f.inflight, [now](const auto& e) { return e.second <= now; });
  }
  for (auto it = renumbers_due_.begin(); it != renumbers_due_.end();) {
    Bucket b = bucket(it->first);
    if (membership_.manager_of(b) != cfg_.self) {
      it = renumbers_due_.erase(it);
    } else if (bucket_ready(b) && start_renumber(now, it->first, it->second)) {
      it = renumbers_due_.erase(it);
    } else {
      ++it;
    }
  }
  // A member that has not reported a moved bucket (its commit or report
  // was lost, or it holds another view of the old map) is asked directly.
  if ((awaiting_.empty() && expected_.empty()) || now - last_poll_ < cfg_.report_poll) return;
  last_poll_ = now;
  std::map<NodeId, std::vector<Bucket>> ask;
  if (now - awaiting_since_ >= cfg_.report_poll)
    for (const auto& [b, nodes] : awaiting_)
      for (NodeId n : nodes) ask[n].push_back(b);
  for (const auto& [b, nodes] : expected_)
    for (NodeId n : nodes) ask[n].push_back(b);
  for (auto& [n, bs] : ask) send(n, ReportPoll{membership_.epoch(), std::move(bs)});
}

void Node::mgr_alloc(Time now, NodeId from, const AllocRequest& a) {
  AllocReply rep;
  rep.req = a.req;
  Bucket b = bucket(a.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b)) {
    rep.status = Status::TryAgain;
  } else {
    auto& users = managed_[b];
    auto it = users.find(a.user);
    if (it == users.end() || !it->second.profile || it->second.profile->deleted) {
      rep.status = missing_user_status(it == users.end() ? nullptr : &it->second);
    } else if (!a.move_nodes.empty()) {
      // A Move's UID in the destination: the message stays on its nodes.
      MgrFolder& f = it->second.folders[a.folder];
      rep.uid = take_uid(now, a.user, a.folder, f);
      rep.uidvalidity = f.uidvalidity;
      rep.nodes = a.move_nodes;
      f.nodes.insert(a.move_nodes.begin(), a.move_nodes.end());
      f.inflight[rep.uid] = now + cfg_.request_timeout + cfg_.push_retry;
    } else {
      MgrFolder& f = it->second.folders[a.folder];
      PlacementInput in;
      in.mail_map.assign(f.nodes.begin(), f.nodes.end());
      in.live = live_loads();
      in.spread = cfg_.spread;
      in.replicas = cfg_.replicas;
      in.salt = user_hash(a.user);
      Placement pl = choose_placement(in);
      if (pl.nodes.empty()) {
        rep.status = Status::TryAgain;
      } else {
        rep.uid = take_uid(now, a.user, a.folder, f);
        rep.uidvalidity = f.uidvalidity;
        rep.nodes = pl.nodes;
        rep.quota_bytes = it->second.profile->quota_bytes;
        f.nodes.insert(pl.nodes.begin(), pl.nodes.end());
        // Until the front end's deadline for this store (and the quota
        // count before it) has passed, at the latest.
        f.inflight[rep.uid] = now + cfg_.request_timeout + store_crossing(cfg_, a.size) + cfg_.push_retry;
      }
    }
  }
  send(from, std::move(rep));
}

void Node::mgr_alloc_done(const AllocDone& d) {
  auto b = managed_.find(bucket(d.user));
  if (b == managed_.end()) return;
  auto u = b->second.find(d.user);
  if (u == b->second.end()) return;
  auto f = u->second.folders.find(d.folder);
  if (f == u->second.folders.end() || f->second.uidvalidity != d.uidvalidity) return;
  f->second.inflight.erase(d.uid);
}

void Node::mgr_create_user(Time now, NodeId from, const CreateUserRequest& c) {
  OpReply rep{c.req, Status::Ok};
  Bucket b = bucket(c.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b)) {
    rep.status = Status::TryAgain;
  } else if (managed_[b].count(c.user) && managed_[b][c.user].profile &&
             !managed_[b][c.user].profile->deleted) {
    rep.status = Status::Exists;
  } else {
    PlacementInput in;
    in.live = live_loads();
    in.spread = cfg_.replicas;
    in.replicas = cfg_.replicas;
    in.salt = user_hash(c.user);
    Placement pl = choose_placement(in);
    MgrUser& u = managed_[b][c.user];
    Profile p;
    p.user = c.user;
    p.version = next_version(now);
    p.password_hash = c.password_hash;
    p.holders = pl.nodes;
    u.profile = p;
    write_profile(now, u);
  }
  send(from, rep);
}

void Node::mgr_map(NodeId from, const MapRequest& m) {
  MapReply rep;
  rep.req = m.req;
  Bucket b = bucket(m.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b)) {
    rep.status = Status::TryAgain;
  } else if (const MgrUser* u = managed_user(m.user); !u || !u->profile || u->profile->deleted) {
    rep.status = missing_user_status(u);
  } else if (auto f = u->folders.find(m.folder);
             f != u->folders.end() && (f->second.renumber_due || f->second.renumber_running)) {
    rep.status = Status::TryAgain;  // a list now would miss messages being renumbered
  } else if (f != u->folders.end()) {
    rep.nodes.assign(f->second.nodes.begin(), f->second.nodes.end());
    rep.uidvalidity = f->second.uidvalidity;
    rep.next_uid = f->second.next_uid;
    rep.visible_below = f->second.visible_below(now_);
  }
  send(from, std::move(rep));
}

bool Node::start_renumber(Time now, const std::string& user, const std::string& folder) {
  MgrFolder& f = managed_[bucket(user)][user].folders[folder];
  if (f.renumber_running) return false;  // due again once this one ends
  f.renumber_due = false;
  f.renumber_running = true;
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  p.kind = Pending::Kind::Renumber;
  p.user = user;
  p.folder = folder;
  p.deadline = now + cfg_.request_timeout;
  fe_gather(now, id, std::vector<NodeId>(f.nodes.begin(), f.nodes.end()));
  return true;
}

void Node::on_renumber_done(Time now, Pending& p) {
  auto b = managed_.find(bucket(p.user));
  if (b == managed_.end()) return;  // no longer the manager
  auto u = b->second.find(p.user);
  if (u == b->second.end()) return;
  MgrFolder& f = u->second.folders[p.folder];
  f.renumber_running = false;
  settle_lineage(now, p.user, p.folder, f);
  // Messages of other lineages get UIDs at the end of the current one, in
  // their old order.
  std::vector<const MessageRecord*> todo;
  for (const auto& [id, r] : p.gathered)
    if (r.has_body && !r.expunged && r.uidvalidity != f.uidvalidity) todo.push_back(&r);
  std::sort(todo.begin(), todo.end(), [](const MessageRecord* x, const MessageRecord* y) {
    return std::tie(x->uidvalidity, x->uid, x->id) < std::tie(y->uidvalidity, y->uid, y->id);
  });
  for (const MessageRecord* r : todo) {
    // The new UID must win over whatever stamped the old one, whatever
    // that node's clock said.
    last_version_ = std::max(last_version_, r->uid_version.time);
    Update up;
    up.id = next_version(now);
    up.kind = Update::Kind::SetUid;
    up.replicas = r->replicas;
    up.record.id = r->id;
    up.record.user = p.user;
    up.record.folder = p.folder;
    up.record.uidvalidity = f.uidvalidity;
    up.record.uid = take_uid(now, p.user, p.folder, f);
    repl_.coordinate(now, std::move(up));
  }
  bool incomplete = !p.awaiting.empty();
  env_.log("manager: " + p.user + "/" + p.folder + " renumbered " + std::to_string(todo.size()) +
           " messages into UIDVALIDITY " + std::to_string(f.uidvalidity) +
           (incomplete ? "; some holders silent, again" : ""));
  if (incomplete && !f.renumber_due) {
    f.renumber_due = true;
    renumbers_due_.insert({p.user, p.folder});
  }
  // Every holder answered: no live message is left in another lineage.
  if (!incomplete) std::erase_if(f.seen_live, [&f](std::uint32_t v) { return v != f.uidvalidity; });
}

}  // namespace porcupine
