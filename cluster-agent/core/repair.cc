// SPDX-License-Identifier: MIT
// repair.cc - keeping R copies when nodes leave: repair after a node is
// declared gone, and drain of a node that is leaving on purpose.
//
// The table of what the cluster has been told of nodes (Membership::admin:
// Draining, Gone) decides it. Every copy on a node that is not Active is
// made again elsewhere:
//  * a message: its leader (the first replica in its list that is live and
//    Active, or, when none is, the first live one) picks a node for each
//    copy to replace (live, Active, not full, not already a replica; least
//    loaded, ties by a hash of user and node so one user's copies go to the
//    same few nodes), sends it the record under a new replica list with the
//    body (a Push of a Copy), and once every new node has acknowledged it
//    durably, writes the new list to the old and new replicas (a logged
//    Replicas update). A replica the new list leaves out (the draining
//    node) drops its copy. At most repair_inflight messages are on their
//    way from one node at a time, so repair does not crowd out mail.
//  * a profile: its manager rewrites it with new holders (manager's work,
//    since it writes the profile anyway); a draining holder is sent the
//    new version and drops its copy.
//  * a bucket: a draining node manages none (membership.cc).
// Nothing is moved while the record's own store is still being replicated
// (its log entry): the next scan takes it.
#include <algorithm>

#include "hash.h"
#include "node.h"

namespace porcupine {

namespace {
constexpr std::size_t kScanPerTick = 4000;     // records looked at per tick
constexpr std::size_t kProfilesPerTick = 64;   // profiles rewritten per tick
constexpr int kCopyAttempts = 10;

bool has(const std::vector<NodeId>& v, NodeId n) { return std::find(v.begin(), v.end(), n) != v.end(); }

std::uint64_t mix64(std::uint64_t x) {  // splitmix64's finalizer
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

bool Node::admin_active(NodeId n) const { return membership_.admin_state(n) == AdminState::Active; }

bool Node::anything_leaving() const {
  for (const auto& [n, a] : membership_.admin())
    if (a.state != AdminState::Active) return true;
  return false;
}

void Node::administer(Time now, std::uint64_t req, NodeId n, AdminState state) {
  Entry entry(*this, now);
  ClientReply r;
  r.req = req;
  if (n == kNoNode) {
    r.status = Status::Failed;
    r.detail = "no such node";
  } else if (state == AdminState::Gone && n == cfg_.self) {
    r.status = Status::Failed;
    r.detail = "a node cannot forget itself: ask another node";
  } else if (state == AdminState::Gone && membership_.is_member(n)) {
    r.status = Status::Failed;
    r.detail = "node " + std::to_string(n) + " is a live member: stop it first (or drain it)";
  } else if (!membership_.in_group()) {
    r.status = Status::TryAgain;
    r.detail = "this node is in no group yet";
  } else {
    membership_.set_admin(now, n, state, next_version());
    env_.log(std::string(state == AdminState::Gone ? "warning: " : "") + "administration: node " + std::to_string(n) +
             " set " + admin_state_name(state));
  }
  reply(std::move(r));
}

void Node::admin_tick(Time now) {
  if (cfg_.node_dead_timeout <= 0 || !membership_.in_group()) {
    missing_since_.clear();
    return;
  }
  // One node decides: the group's lowest, and only in a group of most of
  // the cluster (the other side of a partition must not replace copies
  // that are only out of its reach).
  if (membership_.members().front().id != cfg_.self || !manager_.majority()) return;
  for (NodeId n : membership_.known()) {
    if (membership_.is_member(n) || membership_.admin_state(n) == AdminState::Gone) {
      missing_since_.erase(n);
      continue;
    }
    Time since = std::max(membership_.silent_since(n), missing_since_.try_emplace(n, now).first->second);
    if (now - since < cfg_.node_dead_timeout) continue;
    env_.log("warning: node " + std::to_string(n) + " silent for " + std::to_string((now - since) / 1000) +
             " s (node_dead_timeout): declared gone; its copies are made again on other nodes");
    missing_since_.erase(n);
    membership_.set_admin(now, n, AdminState::Gone, next_version());
    return;  // one per round
  }
}

std::vector<NodeId> Node::repair_targets(const std::string& user, const std::vector<NodeId>& exclude,
                                         std::size_t want, bool for_profile, bool draining) const {
  std::vector<NodeLoad> c;
  for (const NodeLoad& l : live_loads(draining))
    if ((draining ? membership_.admin_state(l.id) == AdminState::Draining : admin_active(l.id)) &&
        (for_profile || !l.full) && !has(exclude, l.id))
      c.push_back(l);
  std::uint64_t salt = user_hash(user);
  std::sort(c.begin(), c.end(), [&](const NodeLoad& a, const NodeLoad& b) {
    if (a.load != b.load) return a.load < b.load;
    std::uint64_t ha = mix64(salt ^ a.id), hb = mix64(salt ^ b.id);
    return ha != hb ? ha < hb : a.id < b.id;
  });
  std::vector<NodeId> out;
  for (const NodeLoad& l : c) {
    if (out.size() == want) break;
    out.push_back(l.id);
  }
  return out;
}

void Node::repair_tick(Time now) {
  // A change that came addressed to a record's old list (a client's cached
  // one) goes on to its replicas now: the record as it is here, to the
  // others of its list (a Replicas update at the list's own version, which
  // moves nothing and merges like any other).
  for (const MsgId& id : repair_forward_) {
    auto r = repl_.records().find(id);
    if (r == repl_.records().end() || r->second.replicas_version.is_null()) continue;
    Update u;
    u.id = next_version();
    u.kind = Update::Kind::Replicas;
    for (NodeId x : r->second.replicas)
      if (x != cfg_.self) u.replicas.push_back(x);
    if (u.replicas.empty()) continue;
    u.record = r->second;
    u.record.body.clear();
    u.record.has_body = false;
    repl_.coordinate(now, std::move(u));
  }
  repair_forward_.clear();
  // Copies whose acknowledgement did not come: sent again to the same
  // node (same list version), a few times, then given up (the next scan
  // picks another node).
  for (auto it = repair_.begin(); it != repair_.end();) {
    RepairCopy& c = it->second;
    if (now < c.until) {
      ++it;
      continue;
    }
    // A copy may have arrived with its ack lost, and its node then holds it
    // under the new list: the copy is not given up while that node may
    // still come back and be used (only when it leaves, or after many
    // attempts); while it is down, it waits.
    bool active = true, alive = true;
    for (NodeId t : c.waiting) {
      active &= admin_active(t);
      alive &= live(t);
    }
    if (active && !alive) {
      c.until = now + cfg_.request_timeout;
      ++it;
      continue;
    }
    // Expunged meanwhile: no body to copy, and none needed; the new list
    // goes out at once with the expunge, so a copy that did arrive goes.
    auto rec = repl_.records().find(it->first);
    if (rec != repl_.records().end() && rec->second.expunged) {
      c.waiting.clear();
      auto v = repair_versions_.find(c.rec.replicas_version);
      if (v != repair_versions_.end()) {
        const Version ver = v->first;
        ++it;
        repair_ack(now, kNoNode, ver);
        continue;
      }
    }
    if (!active || c.attempts >= kCopyAttempts || !repair_send(now, it->first, c)) {
      ++repair_stats_.copies_failed;
      repair_versions_.erase(c.rec.replicas_version);
      it = repair_.erase(it);
      continue;
    }
    ++it;
  }
  if (!membership_.in_group()) return;
  drain_check_profiles(now);
  if (!anything_leaving()) {
    repair_stats_.pending = 0;
    repair_cursor_ = {};
    return;
  }
  repair_profiles(now);

  // Messages: a slice of the records per tick, from where the last stopped.
  const auto& recs = repl_.records();
  auto it = recs.upper_bound(repair_cursor_);
  for (std::size_t n = 0; n < kScanPerTick; ++n) {
    if (it == recs.end()) {
      repair_stats_.pending = repair_found_;
      repair_found_ = 0;
      repair_cursor_ = {};
      ++repair_stats_.passes;
      break;
    }
    const MessageRecord& r = it->second;
    repair_cursor_ = it->first;
    ++it;
    if (r.expunged || !r.has_body) continue;
    bool leaving = false;
    for (NodeId x : r.replicas) leaving |= !admin_active(x);
    if (!leaving) continue;
    // The leader: the first live Active replica, else the first live one.
    NodeId leader = kNoNode;
    for (NodeId x : r.replicas)
      if (live(x) && admin_active(x)) {
        leader = x;
        break;
      }
    if (leader == kNoNode)
      for (NodeId x : r.replicas)
        if (live(x)) {
          leader = x;
          break;
        }
    if (leader != cfg_.self) continue;
    ++repair_found_;
    if (repair_.count(r.id) || repair_.size() >= cfg_.repair_inflight) continue;
    repair_start(now, r);
  }
}

void Node::repair_start(Time now, const MessageRecord& r) {
  // Not while its own store is still on its way to a live replica (the
  // delivery waits for it). One waiting only for replicas that are down
  // does not hold the move up: this copy keeps its body until that entry
  // is done (Replicator::disown_record). Another update of it carries no
  // body, and the new list is written with this node's record, that
  // update's change included.
  for (const auto& [v, e] : repl_.log()) {
    if (e.update.kind != Update::Kind::Store || e.update.record.id != r.id) continue;
    for (NodeId x : e.update.replicas)
      if (!e.have.count(x) && x != cfg_.self && live(x)) return;
  }
  // The replicas to replace: gone ones first (a copy fewer), then
  // draining ones (a copy to move).
  std::vector<NodeId> out;
  for (NodeId x : r.replicas)
    if (!admin_active(x) && membership_.admin_state(x) != AdminState::Draining) out.push_back(x);
  const std::size_t gone = out.size();
  for (NodeId x : r.replicas)
    if (membership_.admin_state(x) == AdminState::Draining) out.push_back(x);
  std::vector<NodeId> to = repair_targets(r.user, r.replicas, out.size(), false);
  if (to.size() < gone) {
    // Fewer Active nodes than copies lost: a draining node makes up the
    // copy rather than the message keeping fewer than R (as a delivery
    // does); it moves off with the rest of the drain once a node is free.
    std::vector<NodeId> exclude = r.replicas;
    exclude.insert(exclude.end(), to.begin(), to.end());
    std::vector<NodeId> more = repair_targets(r.user, exclude, gone - to.size(), false, true);
    to.insert(to.end(), more.begin(), more.end());
  }
  if (to.empty()) return;  // nowhere to put it now: the next pass tries again
  RepairCopy c;
  c.rec = r;
  c.rec.body.clear();
  c.old = r.replicas;
  std::vector<NodeId> list;
  for (NodeId x : r.replicas)
    if (admin_active(x)) list.push_back(x);
  for (std::size_t k = 0; k < out.size(); ++k) {
    if (k < to.size()) list.push_back(to[k]);
    else if (membership_.admin_state(out[k]) == AdminState::Draining) list.push_back(out[k]);  // kept until a node is free
  }
  const std::size_t k = std::min(to.size(), out.size());
  c.rec.replicas = list;
  c.rec.replicas_version = next_version();
  c.waiting.insert(to.begin(), to.begin() + static_cast<std::ptrdiff_t>(k));
  c.size = r.size;
  if (!repair_send(now, r.id, c)) return;
  repair_versions_[c.rec.replicas_version] = r.id;
  repair_.emplace(r.id, std::move(c));
}

bool Node::repair_send(Time now, const MsgId& id, RepairCopy& c) {
  auto body = disk_.body_ref(id);
  if (!body) {
    env_.log("error: repair: the body of " + id.str() + " (" + c.rec.user + ") is not readable here; not copied");
    return false;
  }
  ++c.attempts;
  c.until = now + cfg_.request_timeout + store_crossing(cfg_, c.size);
  for (NodeId t : c.waiting) {
    MessageRecord r = c.rec;
    r.has_body = true;
    r.body = *body;
    send_copy(t, std::move(r), c.rec.replicas_version);
  }
  return true;
}

void Node::repair_ack(Time now, NodeId from, const Version& v) {
  auto vi = repair_versions_.find(v);
  if (vi == repair_versions_.end()) return;
  auto it = repair_.find(vi->second);
  if (it == repair_.end()) {
    repair_versions_.erase(vi);
    return;
  }
  RepairCopy& c = it->second;
  if (from != kNoNode) {  // kNoNode: an expunged record's list, without copies
    if (!c.waiting.erase(from)) return;
    ++repair_stats_.copies;
    repair_stats_.bytes += c.size;
  }
  if (!c.waiting.empty()) return;
  // Every new copy is durable: the new list goes to the old and new
  // replicas alike, so a replica it leaves out drops its copy.
  // The record as it is here now, not as it was copied: a flag change or
  // an expunge that came meanwhile (addressed to the old list) goes along.
  auto cur = repl_.records().find(c.rec.id);
  if (cur == repl_.records().end() || newer(cur->second.replicas_version, c.rec.replicas_version)) {
    repair_versions_.erase(vi);
    repair_.erase(it);
    return;
  }
  Update u;
  u.id = next_version();
  u.kind = Update::Kind::Replicas;
  u.replicas = c.rec.replicas;
  // (Down ones too: the update waits for them, so a copy left out is
  // dropped when its node is back, not kept under the old list. Only Gone
  // nodes are not waited for.)
  for (NodeId x : c.old)
    if (!has(u.replicas, x) && membership_.admin_state(x) != AdminState::Gone) u.replicas.push_back(x);
  u.record = cur->second;
  u.record.replicas = c.rec.replicas;
  u.record.replicas_version = c.rec.replicas_version;
  u.record.body.clear();
  u.record.has_body = false;
  ++repair_stats_.lists;
  repair_versions_.erase(vi);
  repair_.erase(it);
  repl_.coordinate(now, std::move(u));
}

void Node::repair_profiles(Time now) {
  std::size_t done = 0;
  manager_.each_ready_user([&](const std::string& name, Manager::User& u) {
    if (!u.profile || u.adopted) return true;
    Profile& p = *u.profile;
    // (Also one left with fewer holders than R: a Gone holder dropped
    // when no other node was there to take its place.)
    bool leaving = p.holders.size() < cfg_.replicas;
    for (NodeId h : p.holders) leaving |= !admin_active(h);
    if (!leaving) return true;
    std::vector<NodeId> keep, gone;
    for (NodeId h : p.holders) (admin_active(h) ? keep : gone).push_back(h);
    std::size_t want = cfg_.replicas > keep.size() ? cfg_.replicas - keep.size() : 0;
    std::vector<NodeId> add = repair_targets(name, p.holders, want, true);
    if (add.empty() && want > 0 && keep.empty()) return true;  // nowhere to put it yet
    std::vector<NodeId> old = p.holders;
    p.holders = keep;
    p.holders.insert(p.holders.end(), add.begin(), add.end());
    // A draining holder with nowhere to go stays.
    for (NodeId h : gone)
      if (p.holders.size() < cfg_.replicas && membership_.admin_state(h) == AdminState::Draining)
        p.holders.push_back(h);
    if (p.holders == old) return true;
    std::vector<NodeId> also;
    for (NodeId h : old)
      if (!has(p.holders, h) && membership_.admin_state(h) != AdminState::Gone) also.push_back(h);
    p.version = next_version();
    manager_.write_profile(now, u, also);
    ++repair_stats_.profiles;
    return ++done != kProfilesPerTick;
  });
}

void Node::drain_check_profiles(Time now) {
  if (membership_.admin_state(cfg_.self) != AdminState::Draining) {
    profile_checks_.clear();
    return;
  }
  if (now - profile_checked_ < 2000) return;
  profile_checked_ = now;
  profile_checks_.clear();  // unanswered ones are asked again
  for (const auto& [user, p] : repl_.profiles()) {
    if (!has(p.holders, cfg_.self)) continue;
    NodeId mgr = membership_.manager_of(bucket(user));
    if (mgr == kNoNode || mgr == cfg_.self) continue;
    std::uint64_t req = new_req();
    profile_checks_[req] = user;
    send(mgr, ProfileRequest{req, user, std::nullopt});
    if (profile_checks_.size() == kProfilesPerTick) break;
  }
}

bool Node::drain_profile_reply(const ProfileReply& r) {
  auto it = profile_checks_.find(r.req);
  if (it == profile_checks_.end()) return false;
  if (r.profile.user == it->second) repl_.absorb_newer(r.profile);
  profile_checks_.erase(it);
  return true;
}

Node::DrainProgress Node::drain_progress() const {
  DrainProgress d;
  d.state = membership_.admin_state(cfg_.self);
  for (const auto& [id, r] : repl_.records())
    if (!r.expunged && r.has_body && has(r.replicas, cfg_.self)) {
      ++d.messages;
      d.bytes += r.size;
    }
  for (const auto& [user, p] : repl_.profiles())
    if (has(p.holders, cfg_.self)) ++d.profiles;
  for (NodeId m : membership_.map())
    if (m == cfg_.self) ++d.buckets;
  return d;
}

Node::RepairProgress Node::repair_progress() const {
  RepairProgress p = repair_stats_;
  p.inflight = repair_.size();
  for (const auto& [n, a] : membership_.admin()) {
    if (a.state == AdminState::Draining) ++p.draining;
    if (a.state == AdminState::Gone) ++p.gone;
  }
  return p;
}

}  // namespace porcupine
