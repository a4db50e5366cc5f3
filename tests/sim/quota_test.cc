// SPDX-License-Identifier: MIT
// Quota at the manager: the user's manager counts the bytes of the user's
// live mail from the members' reports (by replica list, each message once)
// and from the deliveries it gave a UID, refuses a delivery over the quota
// with the UID's answer, and gives the count with the profile once every
// member has reported the bucket; until then (or when a member's reports
// say no bytes, an older node) the usage is gathered from every node.
#include <gtest/gtest.h>

#include <variant>

#include "core/hash.h"
#include "sim/cluster.h"
#include "sim/schedule.h"

using namespace porcupine;
using namespace porcupine::sim;

namespace {

constexpr char kBody[] = "Subject: q\r\n\r\nquota\r\n";
constexpr std::uint64_t kSize = sizeof(kBody) - 1;

struct QuotaHarness {
  Cluster c;
  WorkloadLog log;
  const std::string u;
  std::uint64_t usage_requests = 0;  // UsageRequests sent (the gather)
  std::set<NodeId> unsized;          // members whose reports go out without bytes (older nodes)
  std::set<NodeId> silenced;         // members whose reports are dropped

  QuotaHarness(int nodes, std::string user) : c(11, CoreConfig{}), u(std::move(user)) {
    std::vector<NodeId> seeds;
    for (int i = 1; i <= nodes; ++i) seeds.push_back(static_cast<NodeId>(i));
    for (NodeId i : seeds) c.add_node(i, seeds);
    c.on_send = [this](Envelope& e) {
      if (std::holds_alternative<UsageRequest>(e.body)) ++usage_requests;
      if (auto* r = std::get_if<Report>(&e.body)) {
        if (unsized.count(e.from))
          for (auto& entry : r->entries) entry.bytes.clear();
        if (silenced.count(e.from)) e.to = 999;  // no such node: lost
      }
    };
    EXPECT_TRUE(settle());
    const ClientReply* r = c.wait(c.create_user(1, u));
    EXPECT_TRUE(r && r->status == Status::Ok);
  }
  bool settle() { return c.run_until_pred([&] { return c.converged(); }, 30'000); }
  NodeId manager() { return c.node(c.up().front())->membership().manager_of(bucket_of(u, 1024)); }
  std::optional<std::uint64_t> counted() { return c.node(manager())->managed_usage(u); }
  const ClientReply* deliver(NodeId via) {
    Time issued = c.now();
    std::uint64_t req = c.deliver(via, u, "INBOX", kBody);
    const ClientReply* r = c.wait(req);
    if (r && r->status == Status::Ok) record(*r, issued, req);
    return r;
  }
  void record(const ClientReply& r, Time issued, std::uint64_t req) {
    Acked a;
    a.target = target(r);
    a.uidvalidity = r.uidvalidity;
    a.uid = r.uid;
    a.issued = issued;
    a.acked = c.reply_time(req);
    log.delivered.push_back(a);
  }
  MessageRecord target(const ClientReply& r) const {
    MessageRecord t;
    t.id = r.msg;
    t.user = u;
    t.folder = "INBOX";
    t.replicas = r.replicas;
    return t;
  }
  Status expunge(NodeId via, const ClientReply& delivered) {
    const ClientReply* r = c.wait(c.expunge(via, target(delivered)));
    return r ? r->status : Status::TryAgain;
  }
  const ClientReply* get_user(NodeId via) {
    return c.wait(c.call(via, [&](Node& n, Time now, std::uint64_t req) { n.get_user(now, req, u); }));
  }
  // The gather: every live node's count of the messages it is first live
  // replica of.
  std::uint64_t gathered(NodeId via) {
    const ClientReply* r = c.wait(c.call(via, [&](Node& n, Time now, std::uint64_t req) { n.user_usage(now, req, u); }));
    EXPECT_EQ(r->status, Status::Ok);
    return r->used_bytes.value_or(~0ull);
  }
  // Bytes of every live copy on the running nodes (R per message).
  std::uint64_t copy_bytes() {
    std::uint64_t sum = 0;
    for (NodeId n : c.up())
      for (const auto& [id, r] : c.node(n)->replicator().records())
        if (r.user == u && r.has_body && !r.expunged) sum += r.size;
    return sum;
  }
  Status set_quota(std::uint64_t bytes) {
    UserUpdateRequest q;
    q.user = u;
    q.op = UserUpdateRequest::Op::SetQuota;
    q.quota_bytes = bytes;
    const ClientReply* r = c.wait(c.call(1, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, q); }));
    return r ? r->status : Status::TryAgain;
  }
  void expect_invariants() {
    c.run_for(15'000);
    for (const auto& b : check_invariants(c, log, false)) ADD_FAILURE() << b;
  }
};

}  // namespace

TEST(Quota, TheManagerCountsEachMessageOnceAtTwoReplicasThroughDeliveriesAndExpunges) {
  QuotaHarness h(4, "quinn@example.org");
  std::vector<const ClientReply*> sent;
  for (NodeId via = 1; via <= 4; ++via) {
    sent.push_back(h.deliver(via));
    ASSERT_EQ(sent.back()->status, Status::Ok);
    ASSERT_EQ(sent.back()->replicas.size(), 2u);
    // Counted from the moment it has its UID, reported or not.
    EXPECT_EQ(h.counted(), via * kSize) << "after delivery " << via;
  }
  h.c.run_for(3000);  // every holder has reported
  EXPECT_EQ(h.copy_bytes(), 8 * kSize);  // two copies of each
  EXPECT_EQ(h.counted(), 4 * kSize);     // each counted once
  for (NodeId via = 1; via <= 4; ++via) {
    const ClientReply* r = h.get_user(via);
    ASSERT_EQ(r->status, Status::Ok);
    EXPECT_EQ(r->used_bytes, std::optional<std::uint64_t>(4 * kSize)) << "via n" << via;
  }
  EXPECT_EQ(h.usage_requests, 0u);  // no node was asked
  EXPECT_EQ(h.gathered(1), 4 * kSize);  // the same as every node's count

  ASSERT_EQ(h.expunge(2, *sent[1]), Status::Ok);
  ASSERT_EQ(h.expunge(3, *sent[3]), Status::Ok);
  h.c.run_for(3000);
  EXPECT_EQ(h.counted(), 2 * kSize);
  EXPECT_EQ(h.get_user(4)->used_bytes, std::optional<std::uint64_t>(2 * kSize));
  h.expect_invariants();
}

TEST(Quota, TheManagerRefusesADeliveryOverTheQuotaWithoutAskingTheNodes) {
  QuotaHarness h(4, "olga@example.org");
  ASSERT_EQ(h.set_quota(3 * kSize), Status::Ok);
  std::vector<const ClientReply*> sent;
  for (NodeId via = 1; via <= 3; ++via) {
    sent.push_back(h.deliver(via));
    ASSERT_EQ(sent.back()->status, Status::Ok);  // the third fits exactly
  }
  const ClientReply* over = h.deliver(4);
  ASSERT_EQ(over->status, Status::OverQuota);
  EXPECT_NE(over->detail.find("over quota"), std::string::npos);
  h.c.run_for(3000);
  EXPECT_EQ(h.deliver(1)->status, Status::OverQuota);  // counted from the reports now
  EXPECT_EQ(h.usage_requests, 0u);
  ASSERT_EQ(h.expunge(2, *sent[0]), Status::Ok);
  h.c.run_for(3000);
  EXPECT_EQ(h.deliver(2)->status, Status::Ok);  // room again
  EXPECT_EQ(h.usage_requests, 0u);
  h.expect_invariants();
}

TEST(Quota, RacingDeliveriesCountEachOther) {
  QuotaHarness h(3, "rita@example.org");
  ASSERT_EQ(h.set_quota(3 * kSize), Status::Ok);
  // Six at once, from every node: the manager gives UIDs to three.
  std::vector<std::pair<std::uint64_t, Time>> reqs;
  for (int k = 0; k < 6; ++k)
    reqs.push_back({h.c.deliver(static_cast<NodeId>(1 + k % 3), h.u, "INBOX", kBody), h.c.now()});
  int ok = 0, over = 0;
  for (const auto& [req, issued] : reqs) {
    const ClientReply* r = h.c.wait(req);
    ASSERT_TRUE(r);
    if (r->status == Status::Ok) {
      ++ok;
      h.record(*r, issued, req);
    }
    over += r->status == Status::OverQuota;
  }
  EXPECT_EQ(ok, 3);
  EXPECT_EQ(over, 3);
  h.c.run_for(3000);
  EXPECT_EQ(h.counted(), 3 * kSize);
  h.expect_invariants();
}

TEST(Quota, ANewManagerCountsFromTheReportsAfterATakeover) {
  QuotaHarness h(4, "theo@example.org");
  for (NodeId via = 1; via <= 4; ++via) ASSERT_EQ(h.deliver(via)->status, Status::Ok);
  h.c.run_for(3000);
  ASSERT_EQ(h.set_quota(4 * kSize), Status::Ok);
  const NodeId old = h.manager();
  h.c.crash(old);
  ASSERT_TRUE(h.settle());
  ASSERT_NE(h.manager(), old);
  h.c.run_until_pred([&] { return h.counted().has_value(); }, 10'000);
  // Nothing of the old manager's count survived it: this is the reports'.
  EXPECT_EQ(h.counted(), 4 * kSize);
  const NodeId via = old == 1 ? 2 : 1;
  EXPECT_EQ(h.get_user(via)->used_bytes, std::optional<std::uint64_t>(4 * kSize));
  EXPECT_EQ(h.deliver(via)->status, Status::OverQuota);
  h.c.restart(old);
  ASSERT_TRUE(h.settle());
  h.expect_invariants();
}

TEST(Quota, UntilEveryMemberHasReportedTheUsageIsGathered) {
  QuotaHarness h(4, "gus@example.org");
  for (NodeId via = 1; via <= 4; ++via) ASSERT_EQ(h.deliver(via)->status, Status::Ok);
  h.c.run_for(3000);
  const NodeId mgr = h.manager();
  NodeId x = mgr == 4 ? 3 : 4;
  h.c.crash(x);
  ASSERT_TRUE(h.settle());
  // Back, but its reports do not reach anyone: the manager (kept) is
  // ready, and waits for x's report of the bucket before it counts.
  h.silenced.insert(x);
  h.c.restart(x);
  ASSERT_TRUE(h.settle());
  h.c.run_for(3000);
  ASSERT_EQ(h.manager(), mgr);
  ASSERT_TRUE(h.c.node(mgr)->bucket_ready(bucket_of(h.u, 1024)));
  EXPECT_FALSE(h.counted().has_value());
  const ClientReply* r = h.get_user(1);
  ASSERT_EQ(r->status, Status::Ok);
  EXPECT_FALSE(r->used_bytes.has_value());  // so the agent gathers
  h.usage_requests = 0;
  EXPECT_EQ(h.gathered(1), 4 * kSize);
  EXPECT_GT(h.usage_requests, 0u);
  h.silenced.clear();
  h.c.run_until_pred([&] { return h.counted().has_value(); }, 10'000);
  EXPECT_EQ(h.counted(), 4 * kSize);
  EXPECT_EQ(h.get_user(1)->used_bytes, std::optional<std::uint64_t>(4 * kSize));
  h.expect_invariants();
}

TEST(Quota, AnOlderMembersReportsLeaveTheQuotaToTheFrontEnd) {
  // A member whose reports carry no bytes (an agent from before the
  // manager counted): the manager cannot count, so it leaves the quota to
  // the front end, which gathers the usage as before; nothing goes over.
  QuotaHarness h(3, "oldie@example.org");
  h.unsized.insert(3);
  for (NodeId via = 1; via <= 3; ++via) ASSERT_EQ(h.deliver(via)->status, Status::Ok);
  h.c.run_for(3000);
  ASSERT_EQ(h.set_quota(4 * kSize), Status::Ok);
  EXPECT_FALSE(h.counted().has_value());
  EXPECT_FALSE(h.get_user(1)->used_bytes.has_value());
  h.usage_requests = 0;
  ASSERT_EQ(h.deliver(2)->status, Status::Ok);  // the fourth fits exactly
  EXPECT_GT(h.usage_requests, 0u);                // counted by the front end
  h.c.run_for(3000);
  EXPECT_EQ(h.deliver(1)->status, Status::OverQuota);
  // Node 3 is upgraded: its next reports say bytes, and the manager counts.
  h.unsized.clear();
  h.c.crash(3);
  ASSERT_TRUE(h.settle());
  h.c.restart(3);
  ASSERT_TRUE(h.settle());
  h.c.run_until_pred([&] { return h.counted().has_value(); }, 10'000);
  EXPECT_EQ(h.counted(), 4 * kSize);
  h.expect_invariants();
}
