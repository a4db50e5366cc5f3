// SPDX-License-Identifier: MIT
// report.cc - the reporter role; see report.h.
#include "report.h"

#include <algorithm>
#include <utility>

#include "hash.h"

namespace porcupine {

Reporter::Reporter(const CoreConfig& cfg, const Membership& membership, const Replicator& repl,
                   std::map<Bucket, std::vector<Handoff>>& handoffs, SendFn send, WallFn wall)
    : cfg_(cfg),
      membership_(membership),
      repl_(repl),
      handoffs_(handoffs),
      send_(std::move(send)),
      wall_(std::move(wall)) {}

Bucket Reporter::bucket(const std::string& user) const { return bucket_of(user, cfg_.buckets); }

void Reporter::on_change(Time now, const Membership::Change& ch) {
  bool same = ch.old_map.size() == ch.map.size();
  for (Bucket b = 0; b < ch.map.size(); ++b)
    if (!same || ch.old_map[b] != ch.map[b]) report_buckets_.insert(b);
  next_report_ = now;
}

void Reporter::user_changed(Time now, const std::string& user) {
  dirty_users_[user] = ++dirty_gen_;
  next_report_ = std::min(next_report_, now);
}

void Reporter::on_poll(Time now, const ReportPoll& p) {
  if (p.epoch != membership_.epoch()) return;
  report_buckets_.insert(p.buckets.begin(), p.buckets.end());
  next_report_ = now;
}

ReportEntry Reporter::summarize(const std::string& user, const std::string& folder, bool with_keys) const {
  ReportEntry e;
  e.user = user;
  e.folder = folder;
  std::map<std::pair<std::uint32_t, Version>, UidRange> ranges;  // by (UIDVALIDITY, generation)
  std::map<std::vector<NodeId>, std::uint64_t> bytes;             // by replica list, sorted
  for (const MsgId& id : repl_.user_records(user)) {
    const MessageRecord& r = repl_.records().at(id);
    if (r.folder != folder) continue;
    if (r.has_body && !r.expunged) {
      ++e.count;
      // By the whole list, not its first node: with spread above R, the
      // messages one node leads have different second replicas, and while
      // that node is away no other holds all of them.
      std::vector<NodeId> list = r.replicas;
      std::sort(list.begin(), list.end());
      bytes[list] += r.size;
    }
    // A new manager learns the keyed deliveries it may be asked again.
    if (with_keys && !r.delivery_key.empty() && r.internal_date + cfg_.delivery_key_ttl > wall_())
      e.keys.push_back({r.delivery_key, r.id, r.uidvalidity, r.uid, r.replicas, true, r.internal_date, r.uid_gen});
    if (r.uid == 0 && !(r.has_body && !r.expunged)) continue;  // a moved-in message still needs a UID
    auto [it, fresh] =
        ranges.try_emplace(std::pair(r.uidvalidity, r.uid_gen), UidRange{r.uidvalidity, r.uid, r.uid, 0, r.uid_gen, r.uid_seen});
    if (!fresh) {
      it->second.min_uid = std::min(it->second.min_uid, r.uid);
      it->second.max_uid = std::max(it->second.max_uid, r.uid);
    }
    if (r.has_body && !r.expunged) ++it->second.live;
  }
  for (auto& [k, r] : ranges) e.ranges.push_back(r);
  for (auto& [list, n] : bytes) e.bytes.push_back({list, n});
  return e;
}

void Reporter::tick(Time now) {
  if (!membership_.in_group() || now < next_report_) return;
  if (report_buckets_.empty() && dirty_users_.empty()) return;
  next_report_ = now + cfg_.report_retry;

  std::map<NodeId, Report> out;
  auto add_user = [&](const std::string& user) {
    Report& r = out[membership_.manager_of(bucket(user))];
    if (std::find(r.users.begin(), r.users.end(), user) != r.users.end()) return;
    auto d = dirty_users_.find(user);
    r.users.push_back(user);
    r.generations.push_back(d == dirty_users_.end() ? 0 : d->second);
    std::set<std::string> folders;
    for (const MsgId& id : repl_.user_records(user)) folders.insert(repl_.records().at(id).folder);
    const bool full = report_buckets_.count(bucket(user)) > 0;
    for (const auto& f : folders) r.entries.push_back(summarize(user, f, full));
    if (auto p = repl_.profiles().find(user); p != repl_.profiles().end())
      r.profiles.push_back(p->second);
  };
  for (Bucket b : report_buckets_) {
    Report& r = out[membership_.manager_of(b)];
    r.complete.push_back(b);
    if (auto h = handoffs_.find(b); h != handoffs_.end())
      r.handoffs.insert(r.handoffs.end(), h->second.begin(), h->second.end());
  }
  if (!report_buckets_.empty())
    for (const auto& user : repl_.local_users())
      if (report_buckets_.count(bucket(user))) add_user(user);
  for (const auto& [user, gen] : dirty_users_) add_user(user);
  for (auto& [mgr, r] : out) {
    r.epoch = membership_.epoch();
    send_(mgr, std::move(r));
  }
}

void Reporter::on_ack(NodeId from, const ReportAck& a) {
  if (a.epoch != membership_.epoch()) return;
  for (Bucket b : a.complete)
    if (membership_.manager_of(b) == from) {
      report_buckets_.erase(b);
      handoffs_.erase(b);
    }
  for (std::size_t i = 0; i < a.users.size(); ++i) {
    auto d = dirty_users_.find(a.users[i]);
    if (d != dirty_users_.end() && i < a.generations.size() && d->second == a.generations[i])
      dirty_users_.erase(d);
  }
}

}  // namespace porcupine
