// SPDX-License-Identifier: MIT
// report.h - the reporter role: tell each user's manager which fragments
// and profile replicas this node holds, and the bytes of the live mail in
// them (the quota's usage), so managers can rebuild their soft state
// (ARCHITECTURE.md 4, "Mail map").
//
// What is owed is kept as two sets: buckets whose manager changed in this
// node's view of the user map (reported in full, marked complete), and
// single users whose local state changed since the last acknowledged
// report (a delivery, an expunge, a new replica list, a death certificate
// that expired). Both are resent every report_retry until the manager
// acknowledges them, and a manager still waiting for a bucket can poll
// for it. The cost of a membership change is proportional to the data in
// the moved buckets, not to the size of the cluster.
//
// Soft state only; it reads the node's membership and replicas, and sends
// through the node.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "config.h"
#include "membership.h"
#include "replication.h"
#include "wire.h"

namespace porcupine {

class Reporter {
 public:
  using SendFn = std::function<void(NodeId, Message)>;
  using WallFn = std::function<Time()>;

  // `handoffs`: the lineages of buckets this node managed until the last
  // change, for their new managers (the manager role's, filled by it on a
  // change): sent with their bucket's complete report, dropped once its
  // manager acknowledges it. `wall`: the wall clock (Env::wall()).
  Reporter(const CoreConfig& cfg, const Membership& membership, const Replicator& repl,
           std::map<Bucket, std::vector<Handoff>>& handoffs, SendFn send, WallFn wall);

  // The user map changed: every bucket whose manager changed is owed.
  void on_change(Time now, const Membership::Change& ch);
  // The user's local state changed (Replicator::on_user_changed).
  void user_changed(Time now, const std::string& user);
  void tick(Time now);
  void on_ack(NodeId from, const ReportAck& a);
  void on_poll(Time now, const ReportPoll& p);

  // Reports owed: buckets and users not yet acknowledged.
  std::size_t pending() const { return report_buckets_.size() + dirty_users_.size(); }

 private:
  // `with_keys`: the keyed deliveries of the last delivery_key_ttl too.
  ReportEntry summarize(const std::string& user, const std::string& folder, bool with_keys) const;
  Bucket bucket(const std::string& user) const;

  const CoreConfig& cfg_;
  const Membership& membership_;
  const Replicator& repl_;
  std::map<Bucket, std::vector<Handoff>>& handoffs_;
  SendFn send_;
  WallFn wall_;

  std::set<Bucket> report_buckets_;
  std::map<std::string, std::uint64_t> dirty_users_;  // user -> generation
  std::uint64_t dirty_gen_ = 0;
  Time next_report_ = 0;
};

}  // namespace porcupine
