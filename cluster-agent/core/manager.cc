// manager.cc - the manager role: for the users of the buckets this node
// manages, the mail map (which nodes hold which folder's fragments), the
// profile rebuilt from its replicas, UID allocation and placement.
//
// All of it is soft state, rebuilt after every user-map change from the
// members' reports (report.cc). A bucket that moved here serves nothing
// until every member has reported it ("ready"); UIDs then continue at
// max(known) + 1. A member that reports a bucket after it became ready
// (a node that was away) can hold UIDs this manager reused: then the
// folder's UIDVALIDITY is bumped and an audit re-stamps duplicates.
#include <algorithm>

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
  bool same_size = ch.old_map.size() == ch.map.size();
  for (Bucket b = 0; b < ch.map.size(); ++b) {
    NodeId was = same_size ? ch.old_map[b] : kNoNode;
    if (ch.map[b] != cfg_.self) {
      blind_takeover_.erase(b);
      expected_.erase(b);
      managed_.erase(b);
      awaiting_.erase(b);
      reported_.erase(b);
    } else if (was != cfg_.self) {
      // Moved here: start from nothing and wait for every member's report.
      managed_.erase(b);
      reported_.erase(b);
      awaiting_[b] = now_members;
      if (was != kNoNode && !now_members.count(was)) blind_takeover_.insert(b);
      else blind_takeover_.erase(b);
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
        if (a->second.empty()) awaiting_.erase(a);
      }
    }
  }
  awaiting_since_ = now;
  last_poll_ = now;
}

namespace {
using Ranges = std::map<Epoch, std::pair<std::uint32_t, std::uint32_t>>;
// Adds r to `into`; true if it widened what was known of its term.
bool widen(Ranges& into, const UidRange& r) {
  auto [it, fresh] = into.try_emplace(r.term, r.min_uid, r.max_uid);
  if (fresh) return true;
  bool wider = r.min_uid < it->second.first || r.max_uid > it->second.second;
  it->second.first = std::min(it->second.first, r.min_uid);
  it->second.second = std::max(it->second.second, r.max_uid);
  return wider;
}
}  // namespace

void Node::absorb_range(Time now, const std::string& user, const std::string& folder,
                        MgrFolder& f, const UidRange& r) {
  if (r.max_uid == 0) return;
  f.next_uid = std::max(f.next_uid, r.max_uid + 1);
  bool conflict = false;
  if (r.uidvalidity > f.uidvalidity) {
    // Another manager moved the folder to a newer UIDVALIDITY. Adopt it,
    // unless UIDs were handed out here meanwhile: then neither can stand.
    if (f.ranges.empty()) {
      f.uidvalidity = r.uidvalidity;
      widen(f.ranges, r);
      return;
    }
    conflict = true;
  } else if (r.uidvalidity < f.uidvalidity) {
    // Stamped before the current UIDVALIDITY. News of such a term after
    // UIDs were handed out under the current one may precede or repeat
    // them.
    conflict = widen(f.legacy, r) && !f.ranges.empty();
  } else {
    // Same UIDVALIDITY: terms in epoch order must hold ascending,
    // disjoint ranges.
    widen(f.ranges, r);
    std::uint32_t prev_max = 0;
    for (const auto& [term, rng] : f.ranges) {
      if (prev_max != 0 && rng.first <= prev_max) conflict = true;
      prev_max = std::max(prev_max, rng.second);
    }
  }
  if (!conflict) return;
  env_.log("manager: " + user + "/" + folder + " UIDs " + std::to_string(r.min_uid) + "-" +
           std::to_string(r.max_uid) + " of term " + r.term.str() + " (UIDVALIDITY " +
           std::to_string(r.uidvalidity) + ") were handed out blind: new UIDVALIDITY and an audit");
  bump_validity(now, user, folder, f, r.uidvalidity);
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

void Node::bump_validity(Time now, const std::string& user, const std::string& folder,
                         MgrFolder& f, std::uint32_t above) {
  // Values are (seconds-ish counter << 8 | node id), so two managers that
  // bump independently (two sides of a partition) never pick the same one.
  std::uint32_t base = std::max({f.uidvalidity, above, static_cast<std::uint32_t>(now / 1000)});
  f.uidvalidity = (((base >> 8) + 1) << 8) | (cfg_.self & 0xff);
  for (const auto& [term, rng] : f.ranges)
    widen(f.legacy, UidRange{0, term, rng.first, rng.second});
  f.ranges.clear();
  if (!f.audit_due) {
    f.audit_due = true;
    audits_due_.insert({user, folder});
  }
  auto b = managed_.find(bucket(user));
  if (b == managed_.end()) return;
  MgrUser& u = b->second[user];
  if (!u.profile) return;
  FolderMeta& m = u.profile->folders[folder];
  m.uidvalidity = std::max(m.uidvalidity, f.uidvalidity);
  m.uid_reserved = std::max(m.uid_reserved, f.next_uid - 1);
  write_profile(now, u);
}

std::uint32_t Node::take_uid(Time now, const std::string& user, const std::string& folder,
                             MgrFolder& f) {
  auto b = managed_.find(bucket(user));
  MgrUser& u = b->second[user];
  bool write = false;
  if (f.uidvalidity == 0) {
    f.uidvalidity = ((static_cast<std::uint32_t>(now / 1000) >> 8) + 1) << 8 | (cfg_.self & 0xff);
    write = true;
  }
  std::uint32_t uid = f.next_uid++;
  auto [rng, fresh] = f.ranges.try_emplace(membership_.epoch(), uid, uid);
  if (!fresh) rng->second.second = std::max(rng->second.second, uid);
  if (u.profile) {
    // Reserve UIDs in blocks in the replicated profile, so a successor that
    // sees the profile never starts below what this manager handed out.
    FolderMeta& m = u.profile->folders[folder];
    if (m.uidvalidity < f.uidvalidity) {
      m.uidvalidity = f.uidvalidity;
      write = true;
    }
    if (uid > m.uid_reserved) {
      m.uid_reserved = uid + cfg_.uid_block - 1;
      write = true;
    }
    if (write) write_profile(now, u);
  }
  return uid;
}

void Node::mgr_report(Time now, NodeId from, const Report& r) {
  if (r.epoch != membership_.epoch()) return;  // sender retries under the right epoch
  ReportAck ack;
  ack.epoch = r.epoch;
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
      // A reservation is no use of a UID, but a successor starts above it.
      for (const auto& [fname, meta] : p.folders) {
        MgrFolder& f = mu.folders[fname];
        f.next_uid = std::max(f.next_uid, meta.uid_reserved + 1);
        if (meta.uidvalidity > f.uidvalidity && f.ranges.empty()) f.uidvalidity = meta.uidvalidity;
      }
    }
    for (const auto& e : r.entries) {
      if (e.user != user) continue;
      MgrFolder& f = mu.folders[e.folder];
      if (e.count > 0) f.nodes.insert(from);
      // Once UIDs were handed out blind (a new UIDVALIDITY was needed),
      // every holder the last audit did not hear from is audited too.
      if (!f.legacy.empty() && !e.ranges.empty() && !f.audited.count(from) && !f.audit_due) {
        f.audit_due = true;
        audits_due_.insert({user, e.folder});
      }
      for (const auto& range : e.ranges) absorb_range(now, user, e.folder, f, range);
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
    // The previous manager is gone from the group: crashed, or on the far
    // side of a partition and perhaps still handing out UIDs. Which, no
    // one can tell, so every folder it knew starts a new UIDVALIDITY.
    if (blind_takeover_.erase(b))
      for (auto& [name, u] : managed_[b])
        for (auto& [fname, f] : u.folders)
          if (f.next_uid > 1) bump_validity(now, name, fname, f, 0);
  }
  send(from, std::move(ack));
}

void Node::mgr_tick(Time now) {
  for (auto it = audits_due_.begin(); it != audits_due_.end();) {
    Bucket b = bucket(it->first);
    if (membership_.manager_of(b) != cfg_.self) {
      it = audits_due_.erase(it);
    } else if (bucket_ready(b)) {
      start_audit(now, it->first, it->second);
      it = audits_due_.erase(it);
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
    if (it == users.end() || !it->second.profile) {
      // Mail without a profile means the profile's holders are down.
      rep.status = (it != users.end() && !it->second.folders.empty()) ? Status::TryAgain
                                                                      : Status::NoSuchUser;
    } else {
      MgrFolder& f = it->second.folders[a.folder];
      PlacementInput in;
      in.mail_map.assign(f.nodes.begin(), f.nodes.end());
      in.live = live_loads();
      in.spread = cfg_.spread;
      in.replicas = cfg_.replicas;
      in.salt = user_hash(a.user);
      Placement pl = choose_placement(in);
      if (f.audit_due || f.audit_running || pl.nodes.empty()) {
        rep.status = Status::TryAgain;
      } else {
        rep.uid = take_uid(now, a.user, a.folder, f);
        rep.uidvalidity = f.uidvalidity;
        rep.term = membership_.epoch();
        rep.nodes = pl.nodes;
        f.nodes.insert(pl.nodes.begin(), pl.nodes.end());
      }
    }
  }
  send(from, std::move(rep));
}

void Node::mgr_create_user(Time now, NodeId from, const CreateUserRequest& c) {
  OpReply rep{c.req, Status::Ok};
  Bucket b = bucket(c.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b)) {
    rep.status = Status::TryAgain;
  } else if (managed_[b].count(c.user) && managed_[b][c.user].profile) {
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
  } else if (const MgrUser* u = managed_user(m.user); !u || !u->profile) {
    rep.status = (u && !u->folders.empty()) ? Status::TryAgain : Status::NoSuchUser;
  } else if (auto f = u->folders.find(m.folder); f != u->folders.end()) {
    rep.nodes.assign(f->second.nodes.begin(), f->second.nodes.end());
  }
  send(from, std::move(rep));
}

void Node::start_audit(Time now, const std::string& user, const std::string& folder) {
  MgrUser& u = managed_[bucket(user)][user];
  MgrFolder& f = u.folders[folder];
  if (f.audit_running) return;
  f.audit_due = false;
  f.audit_running = true;
  f.audited.clear();
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  p.kind = Pending::Kind::Audit;
  p.user = user;
  p.folder = folder;
  p.deadline = now + cfg_.request_timeout;
  fe_gather(now, id, std::vector<NodeId>(f.nodes.begin(), f.nodes.end()));
}

void Node::on_audit_done(Time now, Pending& p) {
  auto b = managed_.find(bucket(p.user));
  if (b == managed_.end()) return;  // no longer the manager
  auto u = b->second.find(p.user);
  if (u == b->second.end()) return;
  MgrFolder& f = u->second.folders[p.folder];
  f.audit_running = false;
  bool incomplete = !p.awaiting.empty();
  f.audited = p.answered;
  std::map<std::uint32_t, std::vector<const MessageRecord*>> by_uid;
  for (const auto& [id, r] : p.gathered)
    if (r.uid != 0) by_uid[r.uid].push_back(&r);
  int fixed = 0;
  for (auto& [uid, recs] : by_uid) {
    // The lowest MsgId keeps the UID; every other message gets a new one.
    for (std::size_t i = 1; i < recs.size(); ++i) {
      Update up;
      up.id = next_version(now);
      up.kind = Update::Kind::SetUid;
      up.replicas = recs[i]->replicas;
      up.record.id = recs[i]->id;
      up.record.user = p.user;
      up.record.folder = p.folder;
      up.record.uid = take_uid(now, p.user, p.folder, f);
      up.record.uidvalidity = f.uidvalidity;
      up.record.uid_term = membership_.epoch();
      repl_.coordinate(now, std::move(up));
      ++fixed;
    }
  }
  env_.log("manager: audit of " + p.user + "/" + p.folder + " re-stamped " +
           std::to_string(fixed) + " duplicate UIDs" + (incomplete ? ", some holders silent: again" : ""));
  if (incomplete) start_audit(now, p.user, p.folder);
}

}  // namespace porcupine
