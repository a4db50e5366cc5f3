// SPDX-License-Identifier: MIT
// sync.cc - anti-entropy between replicas; see sync.h.
#include "sync.h"

#include <algorithm>

namespace porcupine {

namespace {
constexpr std::size_t kDigestsPerMessage = 1000;
constexpr std::size_t kUsersPerPull = 100;
constexpr std::size_t kRecordsPerMessage = 500;
// A round that hears nothing from its peer for kRoundSilence request
// timeouts is asked again, at most kSilentRounds times in a row (then the
// peer waits for the next round: one that does not know the sync); a body
// is asked for at most kBodyAttempts times a round.
constexpr Time kRoundSilence = 4;
constexpr int kSilentRounds = 3;
constexpr int kBodyAttempts = 3;

bool names(const std::vector<NodeId>& v, NodeId n) { return std::find(v.begin(), v.end(), n) != v.end(); }
}  // namespace

AntiEntropy::AntiEntropy(const CoreConfig& cfg, const Membership& membership, Replicator& repl, DurableStore& disk,
                         SendFn send, LogFn log, WallFn wall, LiveFn live, FullFn spool_full)
    : cfg_(cfg),
      membership_(membership),
      repl_(repl),
      disk_(disk),
      send_(std::move(send)),
      log_(std::move(log)),
      wall_(std::move(wall)),
      live_(std::move(live)),
      spool_full_(std::move(spool_full)) {}

std::uint64_t AntiEntropy::digest(const std::string& user, NodeId node) const {
  std::uint64_t sum = 0;
  for (const MsgId& id : repl_.user_records(user)) {
    const MessageRecord& r = repl_.records().at(id);
    // A death certificate counts while its expunge is younger than
    // death_ttl: a node that lost one gets it back, and one that let its
    // go is not sent it again (Replicator::absorb takes no certificate
    // that old either).
    // (And its replica list's version, so two replicas that hold different
    // lists differ.)
    if (names(r.replicas, node) && (!r.expunged || wall_() - r.expunge_version.time < cfg_.death_ttl))
      sum += copy_digest(r);
  }
  auto p = repl_.profiles().find(user);
  if (p != repl_.profiles().end() && names(p->second.holders, node)) sum += profile_digest(p->second);
  return sum;
}

void AntiEntropy::on_change(Time now, const Membership::Change& ch) {
  for (const MemberWeight& m : ch.members) {
    if (m.id == cfg_.self) continue;
    bool was = std::any_of(ch.old_members.begin(), ch.old_members.end(),
                           [&](const MemberWeight& o) { return o.id == m.id; });
    if (!was) start_round(now, m.id);
  }
}

void AntiEntropy::start_round(Time now, NodeId peer) {
  Peer& st = peers_[peer];
  st.round = ++round_;
  st.deadline = now + kRoundSilence * cfg_.request_timeout;
  st.digests_done = st.done = false;
  st.pulls_open.clear();
  st.pulled_users = st.pulled_records = 0;
  ++stats_.rounds;
  send_(peer, SyncRequest{st.round});
}

void AntiEntropy::round_progress(Time now, NodeId peer, Peer& st) {
  st.deadline = now + kRoundSilence * cfg_.request_timeout;
  st.silent = 0;
  if (st.done || !st.digests_done || !st.pulls_open.empty()) return;
  st.done = true;
  if (st.pulled_users > 0)
    log_("sync: with n" + std::to_string(peer) + ": " + std::to_string(st.pulled_users) + " users differed, " +
         std::to_string(st.pulled_records) + " records merged, " + std::to_string(st.need.size() + st.inflight.size()) +
         " bodies to copy");
}

void AntiEntropy::serve_request(NodeId from, const SyncRequest& r) {
  SyncDigest d;
  d.round = r.round;
  for (const std::string& user : repl_.local_users()) {
    std::uint64_t sum = digest(user, from);
    if (sum == 0) continue;
    d.users.push_back({user, sum});
    if (d.users.size() == kDigestsPerMessage) {
      send_(from, d);
      d.users.clear();
    }
  }
  d.last = true;
  send_(from, std::move(d));
}

void AntiEntropy::on_digest(Time now, NodeId from, const SyncDigest& d) {
  auto it = peers_.find(from);
  if (it == peers_.end() || it->second.round != d.round) return;  // a round this node no longer runs
  Peer& st = it->second;
  SyncPull pull;
  pull.round = d.round;
  auto send_pull = [&] {
    pull.pull = st.next_pull++;
    st.pulls_open.insert(pull.pull);
    send_(from, pull);
    pull.users.clear();
  };
  for (const UserDigest& u : d.users) {
    if (digest(u.user, from) == u.digest) continue;
    pull.users.push_back(u.user);
    ++stats_.users_pulled;
    ++st.pulled_users;
    if (pull.users.size() == kUsersPerPull) send_pull();
  }
  if (!pull.users.empty()) send_pull();
  if (d.last) st.digests_done = true;
  round_progress(now, from, st);
}

void AntiEntropy::serve_pull(NodeId from, const SyncPull& p) {
  SyncRecords out;
  out.round = p.round;
  out.pull = p.pull;
  auto flush = [&] {
    send_(from, out);
    out.records.clear();
    out.profiles.clear();
  };
  for (const std::string& user : p.users) {
    for (const MsgId& id : repl_.user_records(user)) {
      const MessageRecord& r = repl_.records().at(id);
      if (!names(r.replicas, from)) continue;
      out.records.push_back(r);
      out.records.back().body.clear();
      if (out.records.size() == kRecordsPerMessage) flush();
    }
    auto pr = repl_.profiles().find(user);
    if (pr != repl_.profiles().end() && names(pr->second.holders, from)) out.profiles.push_back(pr->second);
  }
  out.last = true;
  flush();
}

void AntiEntropy::on_records(Time now, NodeId from, const SyncRecords& r) {
  Peer& st = peers_[from];
  // Whatever round it answers, it is what the peer holds: merged.
  for (const Profile& p : r.profiles) repl_.absorb(p);
  if (r.round == st.round) st.pulled_records += r.records.size();
  for (const MessageRecord& rec : r.records) {
    ++stats_.records_absorbed;

    if (repl_.absorb(rec) && !st.inflight.count(rec.id)) {
      st.need.emplace_back(rec.id, 0);
      ++stats_.bodies_wanted;
    }
    // The peer holds a copy under a list a repair or drain has since
    // replaced, one that leaves it out (it was away, declared gone, and is
    // back), or the bodiless record a dropped copy keeps under the new list
    // (which no change reaches any more): it is sent the record as it is
    // here (the peer's merged in first), drops its copy and stops naming
    // this node with a stale state at every round.
    if (auto cur = repl_.records().find(rec.id); cur != repl_.records().end() &&
        !names(cur->second.replicas, from) &&
        (newer(cur->second.replicas_version, rec.replicas_version) ||
         (cur->second.replicas_version == rec.replicas_version &&
          Replicator::state_digest(cur->second) != Replicator::state_digest(rec)))) {
      MessageRecord bare = cur->second;
      bare.body.clear();
      bare.has_body = false;
      send_(from, copy_push(cfg_.self, from, std::move(bare), Version{0, cfg_.self}));
    }
  }
  if (r.round == st.round) {
    if (r.last) st.pulls_open.erase(r.pull);
    round_progress(now, from, st);
  }
  ask_bodies(now, from, st);
}

void AntiEntropy::ask_bodies(Time now, NodeId peer, Peer& st) {
  if (spool_full_()) return;  // they would be dropped on arrival: asked once there is room
  SyncBodies ask;
  while (st.inflight.size() < cfg_.sync_bodies_inflight && !st.need.empty()) {
    auto [id, attempts] = st.need.front();
    st.need.pop_front();
    auto r = repl_.records().find(id);
    if (r == repl_.records().end() || r->second.has_body || r->second.expunged) continue;
    // As long as a delivery of its size may take, and then some.
    st.inflight[id] = {now + cfg_.request_timeout + store_crossing(cfg_, r->second.size), attempts + 1};
    ask.ids.push_back(id);
  }
  if (!ask.ids.empty()) send_(peer, std::move(ask));
}

void AntiEntropy::serve_bodies(NodeId from, const SyncBodies& b) {
  for (const MsgId& id : b.ids) {
    auto it = repl_.records().find(id);
    if (it == repl_.records().end() || !it->second.has_body || it->second.expunged) continue;
    auto body = disk_.body_ref(id);
    if (!body) continue;  // the asker's wait runs out; it asks again, then the next round
    MessageRecord r = it->second;
    r.body = std::move(*body);
    send_(from, copy_push(cfg_.self, from, std::move(r), Version{0, cfg_.self}));
  }
}

Push copy_push(NodeId self, NodeId to, MessageRecord r, const Version& id) {
  Push p;
  p.update.id = id;
  p.update.kind = Update::Kind::Copy;
  p.update.coordinator = self;
  p.update.replicas = {to};
  p.update.record = std::move(r);
  p.have = {self};
  return p;
}

void AntiEntropy::body_arrived(Time now, NodeId from, const MsgId& id) {
  auto it = peers_.find(from);
  if (it == peers_.end() || !it->second.inflight.erase(id)) return;
  ++stats_.bodies_copied;
  ask_bodies(now, from, it->second);
}

void AntiEntropy::tick(Time now) {
  for (auto it = peers_.begin(); it != peers_.end();) {
    NodeId peer = it->first;
    Peer& st = it->second;
    if (!live_(peer)) {  // asked again when it is back
      it = peers_.erase(it);
      continue;
    }
    for (auto f = st.inflight.begin(); f != st.inflight.end();) {
      if (now < f->second.until) {
        ++f;
        continue;
      }
      if (f->second.attempts < kBodyAttempts) st.need.emplace_front(f->first, f->second.attempts);
      f = st.inflight.erase(f);
    }
    ask_bodies(now, peer, st);
    // A round whose messages were lost (a connection that dropped) is
    // asked again: nothing in it is lost by asking twice. A peer that
    // never answers (one that does not know the sync) is left until the
    // next round.
    if (!st.done && now >= st.deadline) {
      if (++st.silent > kSilentRounds) {
        st.done = true;
      } else {
        int silent = st.silent;
        start_round(now, peer);
        st.silent = silent;
      }
    }
    ++it;
  }
  if (cfg_.sync_interval <= 0 || !membership_.in_group()) return;
  if (next_sync_ == 0) next_sync_ = now + cfg_.sync_interval;
  if (now < next_sync_) return;
  next_sync_ = now + cfg_.sync_interval;
  for (const MemberWeight& m : membership_.members())
    if (m.id != cfg_.self) start_round(now, m.id);
}

AntiEntropy::Progress AntiEntropy::progress() const {
  Progress p = stats_;
  for (const auto& [peer, st] : peers_) p.bodies_pending += st.need.size() + st.inflight.size();
  p.unindexed = repl_.unindexed().size();
  return p;
}

}  // namespace porcupine
