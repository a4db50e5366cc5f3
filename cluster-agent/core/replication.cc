// SPDX-License-Identifier: MIT
// replication.cc - see replication.h for the protocol.
#include "replication.h"

#include <algorithm>

namespace porcupine {

namespace {
bool contains(const std::vector<NodeId>& v, NodeId n) {
  return std::find(v.begin(), v.end(), n) != v.end();
}
}  // namespace

Replicator::Replicator(const CoreConfig& cfg, DurableStore& disk, SendFn send, LogFn log)
    : cfg_(cfg), disk_(disk), send_(std::move(send)), log_fn_(std::move(log)) {}

void Replicator::load(const DurableSnapshot& snap, Time now) {
  records_ = snap.records;
  for (auto& [id, r] : records_) r.body.clear();
  profiles_ = snap.profiles;
  log_ = snap.log;
  unindexed_ = snap.unindexed;
  by_user_.clear();
  folder_digests_.clear();
  for (const auto& [id, r] : records_) by_user_[r.user].insert(id);
  for (const auto& [id, e] : log_) {
    next_push_[id] = now;  // resume pushing at once after a restart
    logged_at_[id] = now;
  }
}

const std::set<MsgId>& Replicator::user_records(const std::string& user) const {
  static const std::set<MsgId> none;
  auto it = by_user_.find(user);
  return it == by_user_.end() ? none : it->second;
}

std::uint64_t Replicator::folder_digest(const std::string& user, const std::string& folder) const {
  auto [it, fresh] = folder_digests_.try_emplace({user, folder}, 0);
  if (fresh)
    for (const MsgId& id : user_records(user)) {
      const MessageRecord& r = records_.at(id);
      if (r.folder == folder) it->second += copy_digest(r);
    }
  return it->second;
}

void Replicator::touched(const std::string& user) {
  auto it = folder_digests_.lower_bound({user, std::string()});
  while (it != folder_digests_.end() && it->first.first == user) it = folder_digests_.erase(it);
}

std::set<std::string> Replicator::local_users() const {
  std::set<std::string> out;
  for (const auto& [u, ids] : by_user_) out.insert(u);
  for (const auto& [u, p] : profiles_) out.insert(u);
  return out;
}

void Replicator::apply(const Update& u) {
  if (u.kind == Update::Kind::Profile) {
    auto [it, fresh] = profiles_.try_emplace(u.profile.user, Profile{});
    if (merge_profile(it->second, u.profile) || fresh) {
      if (!fresh && !it->second.holders.empty() && !contains(it->second.holders, cfg_.self)) {
        disown_profile(u.profile.user);
        return;
      }
      disk_.put_profile(it->second);
      if (fresh && on_user_changed) on_user_changed(u.profile.user);
    }
    return;
  }
  MessageRecord in = u.record;
  // A Copy's push goes to one node, a Replicas update to old and new
  // holders: the record says who holds it. Other updates name the
  // replicas as their sender knew them, and never change a list.
  if (u.kind != Update::Kind::Copy && u.kind != Update::Kind::Replicas) {
    in.replicas = u.replicas;
    // A store's list has no version, but a keyed delivery's retry (its
    // list wins over an earlier try's: FrontEnd::store).
    if (u.kind != Update::Kind::Store) in.replicas_version = {};
  }
  switch (u.kind) {
    case Update::Kind::Replicas:
      in.has_body = false;
      break;
    case Update::Kind::Copy:
      // The record as its sender holds it, versions and all; a body only
      // if one came with it.
      in.has_body = !in.body.empty();
      break;
    case Update::Kind::Store:
      // A Store whose body was lost on its way (a log entry whose body file
      // is gone) must not make this copy claim a body it does not have.
      in.has_body = !in.body.empty();
      in.uid_version = in.flags_version = u.id;
      break;
    case Update::Kind::Flags:
      // A whole flag state (no marks) or a change of some flags (marks).
      if (in.flag_marks.empty()) in.flags_version = u.id;
      else
        for (auto& m : in.flag_marks) m.version = u.id;
      break;
    case Update::Kind::Move:
      // Into another folder with the UID its manager gave it there (none
      // from an older front end: the destination's manager renumbers every
      // message outside its lineage).
      in.folder_version = in.uid_version = u.id;
      if (in.uid == 0) in.uidvalidity = 0;
      break;
    case Update::Kind::Expunge:
      in.expunged = true;
      in.expunge_version = u.id;
      break;
    case Update::Kind::SetUid: in.uid_version = u.id; break;
    case Update::Kind::Profile: break;
  }
  auto it = records_.find(in.id);
  bool fresh = it == records_.end();
  if (fresh) {
    MessageRecord stub;
    stub.id = in.id;
    stub.user = in.user;
    stub.folder = in.folder;
    it = records_.emplace(in.id, std::move(stub)).first;
    by_user_[in.user].insert(in.id);
  }
  bool was_live = !fresh && it->second.has_body && !it->second.expunged;
  const std::uint64_t state_before = fresh ? 0 : state_digest(it->second);
  const std::vector<NodeId> was_listed = fresh ? std::vector<NodeId>{} : it->second.replicas;
  const std::string was_folder = it->second.folder;
  const std::uint32_t was_uid = it->second.uid;
  bool changed = merge_record(it->second, in, wall());
  touched(in.user);
  if (auto o = unindexed_.find(in.id); o != unindexed_.end()) {
    // A body this node has on disk, now named by a record: it is the
    // message's (bodies never change), kept unless the message is gone.
    MessageRecord& cur = it->second;
    // (A record may come without its size and date: a flag change for a
    // message whose only copy is here; the file says them.)
    if (!cur.expunged && !cur.has_body && contains(cur.replicas, cfg_.self)) {
      cur.has_body = true;
      cur.size = in.size ? in.size : o->second.size;
      cur.internal_date = in.internal_date ? in.internal_date : o->second.written;
      changed = true;
      log_fn_("store: unindexed body of " + in.id.str() + " (" + in.user + ") claimed by its record");
    }
    if (cur.has_body || cur.expunged) unindexed_.erase(o);
  }
  if (!fresh && !it->second.replicas_version.is_null() && !contains(it->second.replicas, cfg_.self)) {
    // (A copy that was live here and is not any more, expunged by the
    // same merge, is reported too: the manager counts it no more. So is
    // one under its new list while it stays, for a store this node still
    // hands on: the manager counts it under that list, not the old one.)
    const bool was_counted = was_live && !(it->second.has_body && !it->second.expunged);
    const bool relisted = was_listed != it->second.replicas;
    disown_record(in.id);
    if ((was_counted || relisted) && on_user_changed) on_user_changed(in.user);
    return;
  }
  if (changed || fresh) disk_.put_record(it->second);
  it->second.body.clear();  // stored: bodies stay out of memory
  // A record under a list a repair or drain rewrote: what this copy knows
  // must reach the list's other replicas, which a change addressed to the
  // old list (a client's cached one) did not, and which a new list's
  // record (the leader's state when it wrote it) may not carry.
  if (on_list_outdated && !it->second.replicas_version.is_null()) {
    bool forward = false;
    if (u.kind == Update::Kind::Replicas || (u.kind == Update::Kind::Copy && !in.replicas_version.is_null())) {
      // This copy knows more than the update's sender did.
      MessageRecord seen = in;
      seen.has_body = it->second.has_body;
      forward = record_digest(seen) != record_digest(it->second);
      // Or its sender knew more than this copy did, and may not be on the
      // list (a sync with a holder of the replaced list): the list's
      // others may not know it either.
      forward |= u.kind == Update::Kind::Copy && !fresh && state_digest(it->second) != state_before;
    } else if (changed) {
      // A change from a holder of the old list (a Copy: a sync with it).
      for (NodeId x : it->second.replicas) forward |= !contains(in.replicas, x);
    }
    if (forward) on_list_outdated(in.id);
  }

  bool is_live = it->second.has_body && !it->second.expunged;
  // (A Move or renumbering this copy missed comes as a Copy from a sync.)
  bool renamed = u.kind == Update::Kind::SetUid || u.kind == Update::Kind::Move ||
                 it->second.folder != was_folder || it->second.uid != was_uid;
  // The manager counts usage by replica list: a new list is reported too.
  bool relisted = !fresh && was_listed != it->second.replicas;
  if ((fresh || was_live != is_live || renamed || relisted) && on_user_changed)
    on_user_changed(in.user);
}

void Replicator::disown_record(const MsgId& id) {
  auto it = records_.find(id);
  if (it == records_.end()) return;
  MessageRecord& r = it->second;
  std::string user = r.user;
  // Never while this node's log still has an update of it to hand on
  // (its body may be needed); looked at again when the entry goes.
  bool pending = false;
  for (const auto& [v, e] : log_)
    pending |= e.update.kind == Update::Kind::Store && e.update.record.id == id;
  if (pending || !r.has_body) {
    disk_.put_record(r);
    return;
  }
  log_fn_("replication: " + id.str() + " (" + user + ") moved to n" +
          [&] {
            std::string s;
            for (NodeId n : r.replicas) s += (s.empty() ? "" : ",n") + std::to_string(n);
            return s;
          }() +
          ": this copy dropped");
  // The body goes; the record stays, bodiless, under the list that left
  // this node out, so an old holder's copy of it (a sync with a node that
  // has not heard of the new list yet) does not bring the copy back.
  r.has_body = false;
  r.body.clear();
  touched(user);
  disk_.put_record(r);
  if (on_user_changed) on_user_changed(user);
}

void Replicator::recheck_disowned(const Update& u) {
  if (u.kind == Update::Kind::Profile) return;
  auto it = records_.find(u.record.id);
  if (it != records_.end() && it->second.has_body && !it->second.replicas_version.is_null() &&
      !contains(it->second.replicas, cfg_.self))
    disown_record(u.record.id);
}

void Replicator::disown_profile(const std::string& user) {
  if (!profiles_.erase(user)) return;
  disk_.erase_profile(user);
  if (on_user_changed) on_user_changed(user);
}

std::uint64_t Replicator::state_digest(const MessageRecord& r) {
  MessageRecord s = r;
  s.has_body = false;
  return record_digest(s);
}

bool Replicator::absorb(const MessageRecord& r) {
  if (!contains(r.replicas, cfg_.self)) return false;
  // A certificate this node let go of (death_ttl) does not come back.
  if (r.expunged && !records_.count(r.id) && wall() - r.expunge_version.time >= cfg_.death_ttl) return false;
  Update u;
  u.kind = Update::Kind::Copy;
  u.record = r;
  u.record.body.clear();
  u.replicas = {cfg_.self};
  apply(u);
  const MessageRecord& cur = records_.at(r.id);
  return r.has_body && !cur.has_body && !cur.expunged;
}

void Replicator::absorb(const Profile& p) {
  if (!contains(p.holders, cfg_.self)) return;
  Update u;
  u.kind = Update::Kind::Profile;
  u.profile = p;
  apply(u);
}

void Replicator::absorb_newer(const Profile& p) {
  auto it = profiles_.find(p.user);
  if (it == profiles_.end() || !newer(p.version, it->second.version)) return;
  Update u;
  u.kind = Update::Kind::Profile;
  u.profile = p;
  apply(u);
}

bool Replicator::is_complete(const LogEntry& e) const {
  for (NodeId r : e.update.replicas)
    if (!e.have.count(r) && !(gone && gone(r))) return false;
  return true;
}

void Replicator::push_missing(const LogEntry& e, const LiveFn* live) {
  std::vector<NodeId> have(e.have.begin(), e.have.end());
  for (NodeId r : e.update.replicas) {
    if (r == cfg_.self || e.have.count(r)) continue;
    if (live && !(*live)(r)) continue;  // never wait on a dead replica; retried when it returns
    send_(r, Push{e.update, have});
  }
}

void Replicator::complete(const Version& id) {
  auto it = log_.find(id);
  if (it == log_.end()) return;
  if (it->second.update.coordinator == cfg_.self)
    for (NodeId r : it->second.update.replicas)
      if (r != cfg_.self) send_(r, Retire{id});
  Update u = std::move(it->second.update);
  log_.erase(it);
  next_push_.erase(id);
  logged_at_.erase(id);
  disk_.erase_log(id);
  recheck_disowned(u);
  if (on_complete) on_complete(id);
}

void Replicator::coordinate(Time now, Update u) {
  u.coordinator = cfg_.self;
  // A change of a record whose list a repair or drain rewrote goes to its
  // replicas now, not to those its sender knew (a client's cached list).
  if (u.kind != Update::Kind::Profile && u.kind != Update::Kind::Copy && u.kind != Update::Kind::Replicas) {
    auto r = records_.find(u.record.id);
    if (r != records_.end() && !r->second.replicas_version.is_null()) u.replicas = r->second.replicas;
  }
  bool replica = contains(u.replicas, cfg_.self);
  if (replica) apply(u);
  LogEntry e;
  e.update = std::move(u);
  if (replica) e.have.insert(cfg_.self);
  Version id = e.update.id;
  if (is_complete(e)) {  // R = 1: nothing to push
    if (on_complete) on_complete(id);
    return;
  }
  disk_.put_log(e);
  push_missing(e, nullptr);
  next_push_[id] = now + cfg_.push_retry + transfer_time(cfg_, e.update.record.body.size());
  logged_at_[id] = now;
  log_[id] = std::move(e);
}

void Replicator::on_push(Time now, NodeId from, const Push& p) {
  const Version id = p.update.id;
  if (contains(p.update.replicas, cfg_.self)) apply(p.update);
  auto it = log_.find(id);
  if (it == log_.end()) {
    LogEntry e;
    e.update = p.update;
    e.have.insert(p.have.begin(), p.have.end());
    e.have.insert(cfg_.self);
    e.have.insert(from);
    if (!is_complete(e)) {
      disk_.put_log(e);
      next_push_[id] = now + cfg_.takeover_delay + transfer_time(cfg_, e.update.record.body.size());
      logged_at_[id] = now;
      log_[id] = std::move(e);
    }
  } else {
    it->second.have.insert(p.have.begin(), p.have.end());
    it->second.have.insert(from);
    if (is_complete(it->second)) {
      Update u = std::move(it->second.update);
      log_.erase(it);
      next_push_.erase(id);
      logged_at_.erase(id);
      disk_.erase_log(id);
      recheck_disowned(u);
    }
  }
  send_(from, PushAck{id});
}

bool Replicator::retarget(Time now, const Version& id, const std::vector<NodeId>& list, const Version& v) {
  auto it = log_.find(id);
  if (it == log_.end() || it->second.update.kind != Update::Kind::Store || it->second.update.coordinator != cfg_.self)
    return false;
  LogEntry& e = it->second;
  e.update.replicas = list;
  e.update.record.replicas = list;
  e.update.record.replicas_version = v;
  // This node's own record keeps the list it had until the store is held
  // by the new one (the caller then spreads the new list): a sync would
  // otherwise show a replaced node a list without it, and that node drop
  // its copy, while the new replica does not hold one yet.
  disk_.put_log(e);
  push_missing(e, nullptr);
  next_push_[id] = now + cfg_.push_retry + transfer_time(cfg_, e.update.record.body.size());
  return true;
}

void Replicator::on_ack(Time, NodeId from, const PushAck& a) {
  auto it = log_.find(a.id);
  if (it == log_.end()) return;
  it->second.have.insert(from);
  if (is_complete(it->second)) complete(a.id);
}

void Replicator::on_retire(const Retire& r) {
  auto it = log_.find(r.id);
  if (it == log_.end()) return;
  Update u = std::move(it->second.update);
  log_.erase(it);
  next_push_.erase(r.id);
  logged_at_.erase(r.id);
  disk_.erase_log(r.id);
  recheck_disowned(u);
}

void Replicator::tick(Time now, const LiveFn& live) {
  // An update waiting only for replicas declared gone is done.
  std::vector<Version> done;
  for (const auto& [id, e] : log_)
    if (is_complete(e)) done.push_back(id);
  for (const Version& id : done) complete(id);
  for (auto& [id, e] : log_) {
    Time& next = next_push_[id];
    if (now < next) continue;
    // The coordinator pushes; the others hold back while it is alive, but
    // take over when it is gone or once takeover_delay has passed (a lost
    // Retire or ack must not leave an entry behind forever).
    bool mine = e.update.coordinator == cfg_.self;
    bool takeover = !live(e.update.coordinator) || now - logged_at_[id] >= cfg_.takeover_delay;
    if (mine || takeover) push_missing(e, &live);
    next = now + cfg_.push_retry + transfer_time(cfg_, e.update.record.body.size());
  }

  // Death certificates are kept death_ttl, then the record goes for good.
  if (now - last_sweep_ < 1000) return;
  last_sweep_ = now;
  std::set<MsgId> pending;
  for (const auto& [id, e] : log_)
    if (e.update.kind != Update::Kind::Profile) pending.insert(e.update.record.id);
  for (auto it = records_.begin(); it != records_.end();) {
    const MessageRecord& r = it->second;
    if (r.expunged && wall() - r.expunged_at >= cfg_.death_ttl && !pending.count(r.id)) {
      std::string user = r.user;
      disk_.erase_record(r.id);
      touched(user);
      auto& ids = by_user_[user];
      ids.erase(r.id);
      if (ids.empty()) by_user_.erase(user);
      it = records_.erase(it);
      if (on_user_changed) on_user_changed(user);
    } else {
      ++it;
    }
  }
}

}  // namespace porcupine
