// SPDX-License-Identifier: MIT
// Scenario tests: each protocol of the cluster core driven through one
// named fault in the deterministic simulator, asserting the behaviour the
// scenario names and then every invariant of docs/protocols.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "core/hash.h"
#include "sim/cluster.h"
#include "sim/schedule.h"

using namespace porcupine;
using namespace porcupine::sim;

namespace {

struct Harness {
  Cluster c;
  WorkloadLog log;
  int size;
  explicit Harness(int nodes, std::uint64_t seed = 7, CoreConfig cfg = {}) : c(seed, cfg), size(nodes) {
    std::vector<NodeId> seeds;
    for (int i = 1; i <= nodes; ++i) seeds.push_back(static_cast<NodeId>(i));
    for (NodeId i : seeds) c.add_node(i, seeds);
    EXPECT_TRUE(settle());
  }
  bool settle(Time limit = 30'000) { return c.run_until_pred([&] { return c.converged(); }, limit); }
  void user(const std::string& u) {
    const ClientReply* r = c.wait(c.create_user(1, u));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, Status::Ok);
  }
  // Delivers and records the acknowledgement for the invariant checker.
  const ClientReply* deliver(NodeId via, const std::string& u, const std::string& folder = "INBOX") {
    Time issued = c.now();
    std::uint64_t req = c.deliver(via, u, folder, "Subject: t\r\n\r\nx\r\n");
    return acked(req, u, folder, issued);
  }
  // The answer to delivery `req`, waited for; an acknowledgement is
  // recorded for the invariant checker (a retry's only once: its first's).
  const ClientReply* acked(std::uint64_t req, const std::string& u, const std::string& folder, Time issued) {
    const ClientReply* r = c.wait(req);
    const bool known = r && std::any_of(log.delivered.begin(), log.delivered.end(),
                                        [&](const Acked& a) { return a.target.id == r->msg; });
    if (r && r->status == Status::Ok && !known) {
      Acked a;
      a.target.id = r->msg;
      a.target.user = canonical_user(u);
      a.target.folder = folder;
      a.target.replicas = r->replicas;
      a.uidvalidity = r->uidvalidity;
      a.uid = r->uid;
      a.issued = issued;
      a.acked = c.reply_time(req);
      log.delivered.push_back(a);
    }
    return r;
  }
  // A delivery with a key (DeliverOptions::key), as an MTA's retry
  // carries; the acknowledgement recorded like deliver's.
  const ClientReply* deliver_keyed(NodeId via, const std::string& u, const std::string& key,
                                   const std::string& folder = "INBOX") {
    Time issued = c.now();
    DeliverOptions o;
    o.key = key;
    std::uint64_t req = c.call(via, [&](Node& n, Time now, std::uint64_t r) {
      n.deliver(now, r, u, folder, std::string("Subject: keyed\r\n\r\n" + key + "\r\n"), o);
    });
    return acked(req, u, folder, issued);
  }
  // The messages of `u`'s folder through node `via`.
  std::size_t count(NodeId via, const std::string& u) {
    const ClientReply* l = list(via, u);
    EXPECT_TRUE(l && l->status == Status::Ok);
    return l ? l->records.size() : 0;
  }
  void expect_invariants(bool destroyed = false) {
    c.run_for(15'000);
    auto bad = check_invariants(c, log, destroyed);
    for (const auto& b : bad) ADD_FAILURE() << b;
  }
  Epoch epoch(NodeId n) { return c.node(n)->membership().epoch(); }
  // A client operation through node `via`, waited for.
  template <typename F>
  const ClientReply* run(NodeId via, F op) {
    return c.wait(c.call(via, op));
  }
  const ClientReply* list(NodeId via, const std::string& u, bool digest_only = false) {
    return run(via, [&](Node& n, Time now, std::uint64_t req) { n.list(now, req, u, "INBOX", digest_only); });
  }
  // A read of one message through node `via`, waited for.
  const ClientReply* fetch(NodeId via, const MessageRecord& t) {
    return run(via, [&](Node& n, Time now, std::uint64_t req) { n.fetch(now, req, t); });
  }
  // A node holding no copy of a message.
  static NodeId non_holder(const MessageRecord& t) {
    NodeId via = 1;
    while (std::find(t.replicas.begin(), t.replicas.end(), via) != t.replicas.end()) ++via;
    return via;
  }
  // Creates user `u` and delivers one message to it through node 1: `t`
  // addresses it (call in ASSERT_NO_FATAL_FAILURE).
  void first_message(const std::string& u, MessageRecord& t) {
    user(u);
    const ClientReply* d = deliver(1, u);
    ASSERT_TRUE(d);
    ASSERT_EQ(d->status, Status::Ok);
    ASSERT_EQ(d->replicas.size(), std::min<std::size_t>(CoreConfig{}.replicas, static_cast<std::size_t>(size)));
    t = target(*d, u);
  }
  // The nodes holding a copy of the user's profile.
  std::vector<NodeId> profile_holders(const std::string& u) {
    std::vector<NodeId> out;
    for (NodeId n = 1; n <= static_cast<NodeId>(size); ++n)
      if (c.node(n)->replicator().profiles().count(canonical_user(u))) out.push_back(n);
    return out;
  }
  // The target a client would address flag changes and expunges to.
  static MessageRecord target(const ClientReply& r, const std::string& u) {
    MessageRecord t;
    t.id = r.msg;
    t.user = u;
    t.folder = "INBOX";
    t.replicas = r.replicas;
    return t;
  }
};

}  // namespace

TEST(Membership, SingleCrashOthersReconfigureWithoutIt) {
  Harness h(5);
  Epoch before = h.epoch(1);
  h.c.crash(3);
  ASSERT_TRUE(h.settle());
  EXPECT_GT(h.epoch(1), before);
  EXPECT_FALSE(h.c.node(1)->membership().is_member(3));
  for (NodeId m : h.c.node(1)->membership().map()) EXPECT_NE(m, 3u);
  h.expect_invariants();
}

// A killed process refuses connections: its peers take it out at once. A
// lost host answers nothing: it is taken out after probe_timeout of
// silence, as before.
TEST(Membership, AKilledNodeIsTakenOutAtOnceALostHostAfterItsSilence) {
  for (bool killed : {true, false}) {
    SCOPED_TRACE(killed ? "killed" : "host lost");
    Harness h(5);
    h.c.run_for(1000);
    const Time at = h.c.now();
    if (killed) h.c.crash(3);
    else h.c.power_off(3);
    ASSERT_TRUE(h.c.run_until_pred([&] {
      for (NodeId n : h.c.up())
        if (h.c.node(n)->membership().is_member(3) || h.epoch(n) != h.epoch(1)) return false;
      return true;
    }, 10'000));
    const Time took = h.c.now() - at;
    if (killed) EXPECT_LE(took, 300);
    else EXPECT_GE(took, CoreConfig{}.probe_timeout);
    h.expect_invariants();
  }
}

TEST(Membership, CoordinatorCrashMidProtocolAnotherRoundCompletes) {
  Harness h(4);
  // Hosts lost (silent): a killed process would be taken out by a round
  // that ends at once, leaving no moment to crash its coordinator in.
  h.c.power_off(4);  // the ring predecessor of 4 (node 3) will coordinate
  h.c.run_until_pred([&] { return h.c.node(3)->membership().coordinating(); }, 10'000);
  ASSERT_TRUE(h.c.node(3)->membership().coordinating());
  h.c.power_off(3);  // dies after NewGroup, before Commit
  ASSERT_TRUE(h.settle());
  EXPECT_EQ(h.c.node(1)->membership().members().size(), 2u);
  h.expect_invariants();
}

TEST(Membership, TwoConcurrentCoordinatorsHigherEpochWins) {
  Harness h(5);
  h.c.power_off(5);
  h.c.power_off(2);  // nodes 4 and 1 each see a silent successor
  ASSERT_TRUE(h.settle());
  const Membership& m = h.c.node(1)->membership();
  EXPECT_EQ(m.members().size(), 3u);
  for (NodeId n : {3u, 4u}) EXPECT_EQ(h.c.node(n)->membership().epoch(), m.epoch());
  h.expect_invariants();
}

TEST(Membership, JoinDuringReconfigurationEndsInOneGroup) {
  Harness h(3);
  h.c.crash(3);
  h.c.run_for(1500);  // detection under way
  h.c.add_node(4, {1, 2});
  ASSERT_TRUE(h.settle());
  EXPECT_TRUE(h.c.node(1)->membership().is_member(4));
  h.expect_invariants();
}

// What one membership round sends, by kind (Cluster::on_send).
struct RoundTally {
  int new_groups = 0, accepts = 0, commits = 0;
  int accepts_with_map = 0, accepts_with_known = 0;
  int whole_commits = 0;           // members and map in full
  std::size_t most_entries = 0;    // the largest commit's members + map entries
  std::set<NodeId> coordinators;   // senders of NewGroup
  std::set<NodeId> whole_to;       // receivers of whole commits
  void count(const Envelope& e) {
    if (std::holds_alternative<NewGroup>(e.body)) {
      ++new_groups;
      coordinators.insert(e.from);
    } else if (const auto* a = std::get_if<Accept>(&e.body)) {
      ++accepts;
      accepts_with_map += a->map.empty() ? 0 : 1;
      accepts_with_known += a->known_same ? 0 : 1;
    } else if (const auto* c = std::get_if<Commit>(&e.body)) {
      ++commits;
      if (c->base.is_null()) {
        ++whole_commits;
        whole_to.insert(e.to);
      }
      most_entries = std::max(most_entries, c->members.size() + c->removed.size() + c->map.size() + c->moves.size());
    }
  }
};

// A crash and a rejoin in a 30-node cluster each cost one round: one
// coordinator, O(N) messages, and (deltas) messages whose size does not
// grow with N: an accepter sends no user map and no node list the
// coordinator holds, and a member still at the coordinator's group gets
// only the change. Only the node that returns gets (and sends) the whole.
TEST(Membership, ACrashAndARejoinEachCostOneRoundOfSmallMessages) {
  constexpr int kNodes = 30;
  Harness h(kNodes);
  h.c.run_for(3000);
  RoundTally crash;
  h.c.on_send = [&](Envelope& e) { crash.count(e); };
  h.c.crash(17);
  ASSERT_TRUE(h.c.run_until_pred([&] { return h.c.converged() && h.c.up().size() == kNodes - 1; }, 10'000));
  h.c.run_for(1000);
  EXPECT_EQ(crash.coordinators, (std::set<NodeId>{16}));  // its watcher alone
  EXPECT_LE(crash.new_groups, kNodes);
  EXPECT_EQ(crash.accepts, kNodes - 2);
  EXPECT_EQ(crash.commits, kNodes - 2);
  EXPECT_EQ(crash.accepts_with_map, 0);
  EXPECT_EQ(crash.accepts_with_known, 0);
  EXPECT_EQ(crash.whole_commits, 0);
  // The dead node's buckets (B/N of them) move, and it leaves.
  EXPECT_LE(crash.most_entries, 2 * CoreConfig{}.buckets / kNodes);

  RoundTally rejoin;
  h.c.on_send = [&](Envelope& e) { rejoin.count(e); };
  h.c.restart(17);
  ASSERT_TRUE(h.c.run_until_pred([&] { return h.c.converged() && h.c.up().size() == kNodes; }, 10'000));
  h.c.run_for(1000);
  h.c.on_send = nullptr;
  EXPECT_EQ(rejoin.coordinators, (std::set<NodeId>{1}));  // the leader it asked
  EXPECT_LE(rejoin.new_groups, kNodes);
  EXPECT_EQ(rejoin.accepts, kNodes - 1);
  EXPECT_EQ(rejoin.commits, kNodes - 1);
  EXPECT_EQ(rejoin.accepts_with_map, 0);    // the returning node has none newer
  EXPECT_LE(rejoin.accepts_with_known, 1);  // it knows only its seeds
  EXPECT_EQ(rejoin.whole_to, (std::set<NodeId>{17}));
  EXPECT_TRUE(h.c.node(1)->membership().is_member(17));
  h.expect_invariants();
}

// Node ids are not bytes: a cluster of ids past 255 forms, serves mail,
// loses a node and takes it back.
TEST(Membership, NodeIdsPastAByteFormAGroupAndServeMail) {
  Cluster c(11, CoreConfig{});
  const std::vector<NodeId> ids{7, 300, 4096, 65535};
  for (NodeId n : ids) c.add_node(n, ids);
  ASSERT_TRUE(c.run_until_pred([&] { return c.converged(); }, 30'000));
  EXPECT_EQ(c.node(65535)->membership().members().size(), ids.size());
  ASSERT_EQ(c.wait(c.create_user(300, "big@example.org"))->status, Status::Ok);
  const ClientReply* d = c.wait(c.deliver(65535, "big@example.org", "INBOX", "Subject: t\r\n\r\nx\r\n"));
  ASSERT_TRUE(d);
  ASSERT_EQ(d->status, Status::Ok) << d->detail;
  c.crash(4096);
  ASSERT_TRUE(c.run_until_pred([&] { return c.converged() && c.up().size() == 3; }, 10'000));
  for (NodeId m : c.node(7)->membership().map()) EXPECT_NE(m, 4096u);
  c.restart(4096);
  ASSERT_TRUE(c.run_until_pred([&] { return c.converged() && c.up().size() == 4; }, 10'000));
  const ClientReply* l = c.wait(c.list(4096, "big@example.org", "INBOX"));
  ASSERT_TRUE(l);
  ASSERT_EQ(l->status, Status::Ok);
  ASSERT_EQ(l->records.size(), 1u);
  EXPECT_EQ(l->records[0].id, d->msg);
}

TEST(Membership, PartitionBothSidesServeAndMergeAfterHeal) {
  Harness h(5);
  h.user("ann@example.org");
  h.c.partition({{1, 2}, {3, 4, 5}});
  ASSERT_TRUE(h.c.run_until_pred([&] {
    return h.c.node(1)->membership().members().size() == 2 &&
           h.c.node(3)->membership().members().size() == 3;
  }, 20'000));
  h.c.heal();
  ASSERT_TRUE(h.settle());
  EXPECT_EQ(h.c.node(1)->membership().members().size(), 5u);
  h.expect_invariants();
}

TEST(Replication, ReplicaCrashBeforeAckDeliveryFailsThenSucceedsElsewhere) {
  Harness h(3);
  h.user("bob@example.org");
  ASSERT_EQ(h.deliver(1, "bob@example.org")->status, Status::Ok);
  // Crash a node while a store to it may be in flight; the client either
  // gets a clean temporary failure or an acknowledgement, never a loss.
  std::uint64_t req = h.c.deliver(1, "bob@example.org", "INBOX", "x");
  h.c.run_for(3);
  h.c.crash(2);
  const ClientReply* r = h.c.wait(req);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status == Status::Ok || r->status == Status::TryAgain);
  ASSERT_TRUE(h.settle());
  EXPECT_EQ(h.deliver(1, "bob@example.org")->status, Status::Ok);
  h.c.restart(2);
  ASSERT_TRUE(h.settle());
  h.expect_invariants();
}

TEST(Replication, CoordinatorCrashAfterAckReplicaStillHasIt) {
  Harness h(3);
  h.user("cat@example.org");
  const ClientReply* r = h.deliver(1, "cat@example.org");
  ASSERT_EQ(r->status, Status::Ok);
  ASSERT_EQ(r->replicas.size(), 2u);
  NodeId primary = r->replicas[0], replica = r->replicas[1];
  h.c.crash(primary);
  ASSERT_TRUE(h.settle());
  NodeId via = primary == 1 ? 2 : 1;
  const ClientReply* l = h.c.wait(h.c.list(via, "cat@example.org", "INBOX"));
  ASSERT_EQ(l->status, Status::Ok);
  ASSERT_EQ(l->records.size(), 1u);
  EXPECT_EQ(l->records[0].id, r->msg);
  EXPECT_TRUE(h.c.node(replica)->replicator().records().count(r->msg));
  h.c.restart(primary);
  ASSERT_TRUE(h.settle());
  h.expect_invariants();
}

TEST(Replication, FlagChangeRacingExpungeConvergesToExpunged) {
  Harness h(3);
  h.user("dan@example.org");
  const ClientReply* r = h.deliver(1, "dan@example.org");
  ASSERT_EQ(r->status, Status::Ok);
  MessageRecord t = Harness::target(*r, "dan@example.org");
  // Issued at the same moment through different nodes.
  std::uint64_t e = h.c.expunge(2, t);
  std::uint64_t f = h.c.set_flags(3, t, kSeen | kFlagged);
  ASSERT_EQ(h.c.wait(e)->status, Status::Ok);
  ASSERT_EQ(h.c.wait(f)->status, Status::Ok);
  h.log.delivered.back().expunge_acked = true;
  h.c.run_for(5000);
  for (NodeId n : t.replicas) {
    const MessageRecord& rec = h.c.node(n)->replicator().records().at(t.id);
    EXPECT_TRUE(rec.expunged);
    EXPECT_FALSE(rec.has_body);
  }
  h.expect_invariants();
}

// A node's index loses half its records and its whole log while it is
// down (a cut Redis file): it deletes no body, its peers' sync gives back
// every record (flags and expunges included) and it claims its own bodies
// instead of having them copied; then any one other node may go and every
// message is still read.
TEST(Durability, ADamagedIndexLosesNoBodyAndItsPeersGiveEverythingBack) {
  Harness h(3);
  std::vector<MessageRecord> live;
  std::vector<MessageRecord> all;
  for (const char* u : {"ann@example.org", "ben@example.org", "cid@example.org"}) {
    h.user(u);
    for (int i = 0; i < 8; ++i) {
      const ClientReply* d = h.deliver(static_cast<NodeId>(1 + i % 3), u);
      ASSERT_TRUE(d);
      ASSERT_EQ(d->status, Status::Ok);
      all.push_back(Harness::target(*d, u));
    }
  }
  // Flags on some, an expunge of others, before the damage.
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % 4 == 1) {
      ASSERT_EQ(h.c.wait(h.c.set_flags(1, all[i], kSeen | kFlagged))->status, Status::Ok);
    } else if (i % 4 == 3) {
      ASSERT_EQ(h.c.wait(h.c.expunge(2, all[i]))->status, Status::Ok);
      h.log.delivered[i].expunge_acked = true;
      continue;
    }
    live.push_back(all[i]);
  }
  h.c.run_for(5000);
  const NodeId victim = 2;
  std::size_t held = 0;
  for (const auto& [id, r] : h.c.disk(victim)->data().records) held += r.has_body;
  h.c.crash(victim);
  std::size_t lost = h.c.damage_index(victim, 2, 0);
  ASSERT_GE(lost, 4u);
  const std::size_t orphans = h.c.disk(victim)->orphans().size();
  ASSERT_GT(orphans, 0u);
  h.c.restart(victim);
  ASSERT_TRUE(h.settle());
  h.c.run_for(10'000);

  // Every body it had is named again, none copied over the wire for it.
  EXPECT_TRUE(h.c.disk(victim)->orphans().empty());
  Node::SyncProgress p = h.c.node(victim)->sync_progress();
  EXPECT_EQ(p.unindexed, 0u);
  EXPECT_EQ(p.bodies_pending, 0u);
  EXPECT_EQ(p.bodies_copied, 0u);
  EXPECT_GT(p.users_pulled, 0u);
  std::size_t held_after = 0;
  for (const auto& [id, r] : h.c.disk(victim)->data().records) held_after += r.has_body;
  EXPECT_EQ(held_after, held);
  // Records, flags and expunges as on the other replica.
  for (const MessageRecord& t : all) {
    if (std::find(t.replicas.begin(), t.replicas.end(), victim) == t.replicas.end()) continue;
    NodeId other = t.replicas[0] == victim ? t.replicas[1] : t.replicas[0];
    const auto& mine = h.c.node(victim)->replicator().records();
    ASSERT_TRUE(mine.count(t.id)) << t.id.str();
    EXPECT_EQ(record_digest(mine.at(t.id)), record_digest(h.c.node(other)->replicator().records().at(t.id)))
        << t.id.str();
  }
  // Any one other node down: every live message is read.
  for (NodeId down : {NodeId{1}, NodeId{3}}) {
    h.c.crash(down);
    ASSERT_TRUE(h.settle());
    NodeId via = down == 1 ? 3 : 1;
    for (const MessageRecord& t : live) {
      const ClientReply* f = h.fetch(via, t);
      ASSERT_TRUE(f);
      EXPECT_EQ(f->status, Status::Ok) << t.id.str() << " with n" << down << " down";
    }
    h.c.restart(down);
    ASSERT_TRUE(h.settle());
  }
  h.expect_invariants();
}

// A body a node lost (its file gone) while its record stayed comes back
// from a peer that has it, through the sync alone.
TEST(Durability, ALostBodyIsCopiedBackFromAPeer) {
  CoreConfig cfg;
  cfg.sync_interval = 20'000;
  Harness h(3, 7, cfg);
  MessageRecord t;
  ASSERT_NO_FATAL_FAILURE(h.first_message("dot@example.org", t));
  const NodeId victim = t.replicas[1];
  h.c.crash(victim);
  h.c.damage_index(victim, 1, 0);  // every record: the body stays, unindexed
  h.c.drop_unindexed(victim);      // and then the body too
  h.c.restart(victim);
  ASSERT_TRUE(h.settle());
  h.c.run_for(5000);
  const auto& recs = h.c.node(victim)->replicator().records();
  ASSERT_TRUE(recs.count(t.id));
  EXPECT_TRUE(recs.at(t.id).has_body);
  EXPECT_EQ(h.c.node(victim)->sync_progress().bodies_copied, 1u);
  EXPECT_EQ(h.c.disk(victim)->data().records.at(t.id).body.bytes(), "Subject: t\r\n\r\nx\r\n");
  h.expect_invariants();
}

TEST(Replication, DeathCertificateKeptUntilTtlThenDropped) {
  CoreConfig cfg;
  cfg.death_ttl = 20'000;
  Harness h(3, 7, cfg);
  h.user("eve@example.org");
  const ClientReply* r = h.deliver(1, "eve@example.org");
  MessageRecord t = Harness::target(*r, "eve@example.org");
  ASSERT_EQ(h.c.wait(h.c.expunge(1, t))->status, Status::Ok);
  h.c.run_for(5000);
  for (NodeId n : t.replicas) ASSERT_TRUE(h.c.node(n)->replicator().records().at(t.id).expunged);
  // A late flag change (an old retry) must not bring the message back.
  ASSERT_EQ(h.c.wait(h.c.set_flags(2, t, kSeen))->status, Status::Ok);
  h.c.run_for(2000);
  for (NodeId n : t.replicas) EXPECT_FALSE(h.c.node(n)->replicator().records().at(t.id).has_body);
  h.c.run_for(25'000);
  for (NodeId n : t.replicas) {
    EXPECT_FALSE(h.c.node(n)->replicator().records().count(t.id));
    EXPECT_FALSE(h.c.disk(n)->data().records.count(t.id));
  }
}

// A large body takes longer to cross than the retry interval: neither the
// front end's store nor the coordinator's push is sent again behind it
// (each resend is the whole body once more), and the delivery succeeds.
TEST(Replication, ALargeBodyIsNotResentWhileItIsStillOnItsWay) {
  Harness h(4);
  const std::string u = "gil@example.org";
  h.user(u);
  const CoreConfig cfg;
  const std::string big(static_cast<std::size_t>(cfg.transfer_rate), 'x');  // one second's worth
  // Past the plain retry interval, within the body's: a push's, and the
  // store's (whose answer waits for two crossings, the store's and the push's).
  const Time slow = cfg.push_retry * 7 / 5;
  ASSERT_LT(slow, cfg.push_retry + transfer_time(cfg, big.size()));
  ASSERT_LT(2 * slow + 50, cfg.push_retry + store_crossing(cfg, big.size()));
  auto carries_big = [&](const Envelope& e) {
    if (const auto* s = std::get_if<StoreRequest>(&e.body)) return s->update.record.body.size() == big.size();
    if (const auto* p = std::get_if<Push>(&e.body)) return p->update.record.body.size() == big.size();
    return false;
  };
  std::map<std::pair<int, NodeId>, int> sent;  // (0 store | 1 push, to) -> times
  h.c.on_send = [&](Envelope& e) {
    if (carries_big(e)) ++sent[{std::holds_alternative<Push>(e.body) ? 1 : 0, e.to}];
  };
  h.c.on_arrival = [&](const Envelope& e, Time arrival) { return carries_big(e) ? arrival + slow : arrival; };
  const ClientReply* r = h.c.wait(h.c.deliver(2, u, "INBOX", big));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, Status::Ok) << r->detail;
  h.c.run_for(5000);
  ASSERT_EQ(r->replicas.size(), 2u);
  int stores = 0, pushes = 0;
  for (const auto& [key, times] : sent) {
    EXPECT_EQ(times, 1) << (key.first ? "push" : "store") << " to n" << key.second << " sent " << times << " times";
    (key.first ? pushes : stores) += times;
  }
  EXPECT_EQ(stores, 1);
  EXPECT_EQ(pushes, 1);
  for (NodeId n : r->replicas) {
    const MessageRecord& rec = h.c.node(n)->replicator().records().at(r->msg);
    EXPECT_TRUE(rec.has_body);
    EXPECT_EQ(rec.size, big.size());
  }
  h.c.on_send = nullptr;
  h.c.on_arrival = nullptr;
}

// A folder's lineage is hard state in the profile: the manager's crash
// changes neither UIDVALIDITY nor any UID; its successor goes on above
// every UID the dead manager may have handed out.
TEST(Uids, ManagerCrashKeepsUidValidityAndEveryUid) {
  Harness h(4);
  const std::string u = "fay@example.org";
  h.user(u);
  std::uint32_t last = 0, validity = 0;
  std::vector<std::pair<MsgId, std::uint32_t>> order;
  for (int i = 0; i < 10; ++i) {
    const ClientReply* r = h.deliver(1 + i % 4, u);
    ASSERT_EQ(r->status, Status::Ok);
    EXPECT_GT(r->uid, last);
    last = r->uid;
    validity = r->uidvalidity;
    order.push_back({r->msg, r->uid});
  }
  NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of(u, 1024));
  h.c.crash(mgr);
  ASSERT_TRUE(h.settle());
  NodeId via = mgr == 1 ? 2 : 1;
  const ClientReply* r = h.deliver(via, u);
  ASSERT_EQ(r->status, Status::Ok);
  EXPECT_EQ(r->uidvalidity, validity);
  EXPECT_GT(r->uid, last);
  order.push_back({r->msg, r->uid});
  h.c.run_for(5000);
  const ClientReply* l = h.c.wait(h.c.list(via, u, "INBOX"));
  ASSERT_TRUE(l);
  ASSERT_EQ(l->status, Status::Ok);
  EXPECT_EQ(l->uidvalidity, validity);
  ASSERT_EQ(l->records.size(), order.size());  // list sorts by UID
  for (std::size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(l->records[i].id, order[i].first) << "position " << i;
    EXPECT_EQ(l->records[i].uid, order[i].second) << "position " << i;
  }
  h.c.restart(mgr);
  ASSERT_TRUE(h.settle());
  l = h.c.wait(h.c.list(mgr, u, "INBOX"));
  EXPECT_EQ(l->uidvalidity, validity);
  EXPECT_EQ(l->records.size(), order.size());
  h.expect_invariants();
}

// An empty folder has its UIDVALIDITY from its creation, the same from
// every node; the first message, a cold restart of the whole cluster and
// expunging everything keep it.
TEST(Uids, AFoldersUidValidityIsFixedAtCreationThroughItsFirstMessageAndAColdRestart) {
  Harness h(3);
  const std::string u = "eve@example.org";
  h.user(u);
  std::uint32_t inbox = 0;
  for (NodeId via = 1; via <= 3; ++via) {
    const ClientReply* l = h.list(via, u);
    ASSERT_EQ(l->status, Status::Ok);
    EXPECT_NE(l->uidvalidity, 0u);
    EXPECT_TRUE(l->records.empty());
    if (via == 1) inbox = l->uidvalidity;
    EXPECT_EQ(l->uidvalidity, inbox) << "via n" << via;
  }
  UserUpdateRequest mk;
  mk.user = u;
  mk.op = UserUpdateRequest::Op::CreateFolder;
  mk.folder = "Work";
  ASSERT_EQ(h.run(2, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, mk); })->status,
            Status::Ok);
  auto list_work = [&](NodeId via) { return h.c.wait(h.c.list(via, u, "Work")); };
  const std::uint32_t work = list_work(3)->uidvalidity;
  EXPECT_NE(work, 0u);
  EXPECT_EQ(list_work(1)->uidvalidity, work);
  const ClientReply* d = h.deliver(3, u, "Work");
  ASSERT_EQ(d->status, Status::Ok);
  EXPECT_EQ(d->uidvalidity, work);
  ASSERT_EQ(h.deliver(1, u)->status, Status::Ok);
  for (NodeId n = 1; n <= 3; ++n) h.c.crash(n);
  for (NodeId n = 1; n <= 3; ++n) h.c.restart(n);
  ASSERT_TRUE(h.settle());
  h.c.run_for(3000);
  const ClientReply* after = h.list(2, u);
  ASSERT_EQ(after->status, Status::Ok);
  EXPECT_EQ(after->uidvalidity, inbox);
  ASSERT_EQ(after->records.size(), 1u);
  const ClientReply* w = list_work(1);
  EXPECT_EQ(w->uidvalidity, work);
  ASSERT_EQ(w->records.size(), 1u);
  EXPECT_EQ(w->records[0].uid, d->uid);
  MessageRecord t = Harness::target(*d, u);
  t.folder = "Work";
  ASSERT_EQ(h.run(2, [&](Node& n, Time now, std::uint64_t req) { n.expunge(now, req, t); })->status, Status::Ok);
  h.c.run_for(2000);
  w = list_work(3);
  EXPECT_TRUE(w->records.empty());
  EXPECT_EQ(w->uidvalidity, work);
  const ClientReply* again = h.deliver(2, u, "Work");
  EXPECT_EQ(again->uidvalidity, work);
  EXPECT_GT(again->uid, d->uid);
  h.expect_invariants();
}

// A deleted folder whose messages are still held and reported (their
// expunges not yet everywhere) stays deleted: the reports that reach its
// manager afterwards give it no new lineage, and a listing has no folder
// (UIDVALIDITY 0), on every node and after a change of manager. Once they
// are expunged (as DELETE does first), new mail into it makes it again,
// with a greater UIDVALIDITY and only the new message.
TEST(Uids, AFolderDeletedWhileItsMailIsStillReportedStaysDeleted) {
  Harness h(3);
  const std::string u = "del@example.org";
  h.user(u);
  auto change = [&](NodeId via, UserUpdateRequest::Op op) {
    UserUpdateRequest c;
    c.user = u;
    c.op = op;
    c.folder = "Doomed";
    return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, c); })->status;
  };
  auto list_doomed = [&](NodeId via) { return h.c.wait(h.c.list(via, u, "Doomed")); };
  ASSERT_EQ(change(1, UserUpdateRequest::Op::CreateFolder), Status::Ok);
  const std::uint32_t first = list_doomed(2)->uidvalidity;
  ASSERT_NE(first, 0u);
  std::vector<MessageRecord> held;
  for (int k = 0; k < 3; ++k) {
    const ClientReply* d = h.deliver(1 + k % 3, u, "Doomed");
    ASSERT_EQ(d->status, Status::Ok);
    held.push_back(Harness::target(*d, u));
    held.back().folder = "Doomed";
  }
  h.c.run_for(2000);
  ASSERT_EQ(list_doomed(3)->records.size(), 3u);
  ASSERT_EQ(change(2, UserUpdateRequest::Op::DeleteFolder), Status::Ok);
  h.c.run_for(10000);  // several report rounds of the holders of its 3 messages
  for (NodeId via = 1; via <= 3; ++via) EXPECT_EQ(list_doomed(via)->uidvalidity, 0u) << "via n" << via;
  NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of(u, 1024));
  h.c.crash(mgr);
  ASSERT_TRUE(h.settle());
  h.c.run_for(5000);
  for (NodeId via = 1; via <= 3; ++via) {
    if (via == mgr) continue;
    EXPECT_EQ(list_doomed(via)->uidvalidity, 0u) << "via n" << via << " after n" << mgr << " died";
  }
  h.c.restart(mgr);
  ASSERT_TRUE(h.settle());
  for (const MessageRecord& t : held)
    ASSERT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) { n.expunge(now, req, t); })->status, Status::Ok);
  h.c.run_for(2000);
  EXPECT_EQ(list_doomed(2)->uidvalidity, 0u);
  const ClientReply* d = h.deliver(mgr == 1 ? 2 : 1, u, "Doomed");
  ASSERT_EQ(d->status, Status::Ok);
  EXPECT_GT(d->uidvalidity, first);
  h.c.run_for(2000);
  const ClientReply* again = list_doomed(3);
  EXPECT_EQ(again->uidvalidity, d->uidvalidity);
  ASSERT_EQ(again->records.size(), 1u);
  EXPECT_EQ(again->records[0].id, d->msg);
  const ClientReply* r = h.run(2, [&](Node& n, Time now, std::uint64_t req) { n.get_user(now, req, u); });
  ASSERT_TRUE(r->profile);
  EXPECT_FALSE(r->profile->folders.at("Doomed").deleted);
  h.expect_invariants();
}

// Both sides of a partition deliver into one folder, each with its own
// manager. The folder keeps its UIDVALIDITY; after the heal no UID names
// two messages, and what the side that was not taken over handed out is
// moved above everything either side showed (to its readers, an expunge
// and new mail), so neither side's readers see a UID below one they saw.
TEST(Uids, BothSidesOfAPartitionDeliverAndTheFolderKeepsItsUidValidity) {
  for (std::uint64_t seed = 1; seed <= 10; ++seed) {
    Harness h(4, seed);
    const std::string u = "gus@example.org";
    h.user(u);
    std::uint32_t validity = 0;
    for (int i = 0; i < 5; ++i) {
      const ClientReply* r = h.deliver(1 + i % 4, u);
      ASSERT_EQ(r->status, Status::Ok);
      validity = r->uidvalidity;
    }
    h.c.partition({{1, 2}, {3, 4}});
    h.c.run_for(8000);
    std::map<NodeId, std::uint32_t> seen_max;  // the highest UID each side's reader saw
    for (int i = 0; i < 5; ++i) {
      for (NodeId via : {NodeId{1}, NodeId{3}}) {
        h.deliver(via, u);
        const ClientReply* l = h.list(via, u);
        if (l && l->status == Status::Ok) {
          EXPECT_EQ(l->uidvalidity, validity) << "seed " << seed;
          for (const auto& rec : l->records) seen_max[via] = std::max(seen_max[via], rec.uid);
        }
      }
    }
    h.c.heal();
    ASSERT_TRUE(h.settle());
    h.c.run_for(10'000);
    const ClientReply* l = h.list(2, u);
    ASSERT_EQ(l->status, Status::Ok);
    EXPECT_EQ(l->uidvalidity, validity) << "seed " << seed;
    std::set<std::uint32_t> uids;
    for (const auto& rec : l->records) EXPECT_TRUE(uids.insert(rec.uid).second) << "seed " << seed;
    h.expect_invariants();
  }
}

TEST(Uids, HandoffOnJoinKeepsUidValidityAndContinuesUids) {
  Harness h(4);
  std::map<std::string, std::pair<std::uint32_t, std::uint32_t>> before;  // validity, uid
  std::map<std::string, NodeId> mgr_before;
  for (int i = 0; i < 24; ++i) {
    std::string u = "user" + std::to_string(i) + "@example.org";
    h.user(u);
    const ClientReply* r = h.deliver(1 + i % 4, u);
    ASSERT_EQ(r->status, Status::Ok);
    before[u] = {r->uidvalidity, r->uid};
    mgr_before[u] = h.c.node(1)->membership().manager_of(bucket_of(u, 1024));
  }
  h.c.add_node(5, {1, 2, 3, 4});
  ASSERT_TRUE(h.settle());
  int moved = 0;
  for (const auto& [u, vu] : before) {
    const ClientReply* r = h.deliver(2, u);
    ASSERT_EQ(r->status, Status::Ok);
    if (h.c.node(1)->membership().manager_of(bucket_of(u, 1024)) != mgr_before[u]) ++moved;
    // Every old manager is alive and hands its lineages on: no client
    // resynchronises, and UIDs go on growing.
    EXPECT_EQ(r->uidvalidity, vu.first) << u;
    EXPECT_GT(r->uid, vu.second) << u;
  }
  EXPECT_GT(moved, 0);  // the join moved some of these users to node 5
  h.expect_invariants();
}

// What the Dovecot plugin's cache relies on, through the hardest sequence
// for lineages: the mailbox's manager dies and returns, then both other
// nodes die and return, with deliveries between. Within one UIDVALIDITY a
// listing never shows a UID for two messages, never moves a shown message
// to another UID, and never leaves out a message that a node it covers
// holds (a cache would take that for an expunge).
TEST(Uids, ListingsOfOneUidvalidityNeverReuseMoveOrHideAMessage) {
  int listings = 0;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    Harness h(3, seed);
    const std::string u = "ned@example.org";
    h.user(u);
    std::map<std::uint32_t, std::map<std::uint32_t, MsgId>> by_uid;  // uidvalidity -> uid -> message
    std::map<std::uint32_t, std::map<MsgId, std::uint32_t>> by_msg;
    auto check = [&](NodeId via, const char* when) {
      const ClientReply* l = h.list(via, u);
      if (!l || l->status != Status::Ok) return;  // TryAgain while a lineage settles
      ++listings;
      auto& uids = by_uid[l->uidvalidity];
      auto& msgs = by_msg[l->uidvalidity];
      std::set<MsgId> shown;
      for (const auto& r : l->records) {
        shown.insert(r.id);
        auto [it, fresh] = uids.try_emplace(r.uid, r.id);
        EXPECT_TRUE(fresh || it->second == r.id) << "seed " << seed << ", " << when << ": UID " << r.uid << " reused";
        auto [jt, first] = msgs.try_emplace(r.id, r.uid);
        EXPECT_TRUE(first || jt->second == r.uid) << "seed " << seed << ", " << when << ": a message moved UID";
      }
      for (const auto& [id, uid] : msgs) {
        if (shown.count(id)) continue;
        for (NodeId n : l->reachable) {
          const Node* node = h.c.node(n);
          if (!node) continue;
          auto r = node->replicator().records().find(id);
          EXPECT_FALSE(r != node->replicator().records().end() && !r->second.expunged && r->second.folder == "INBOX")
              << "seed " << seed << ", " << when << ": UID " << uid << " left out while node " << n << " holds it";
        }
      }
    };
    for (int i = 0; i < 4; ++i) h.deliver(static_cast<NodeId>(1 + i % 3), u);
    const NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of(u, 1024));
    std::vector<NodeId> others;
    for (NodeId n = 1; n <= 3; ++n)
      if (n != mgr) others.push_back(n);
    h.c.crash(mgr);
    ASSERT_TRUE(h.settle());
    for (int i = 0; i < 4; ++i) {
      h.deliver(others[i % 2], u);
      check(others[0], "manager down");
    }
    h.c.restart(mgr);
    for (int i = 0; i < 20; ++i) {
      h.c.run_for(300);
      check(mgr, "manager back");
      check(others[1], "manager back");
    }
    h.c.crash(others[0]);
    h.c.crash(others[1]);
    for (int i = 0; i < 20; ++i) {
      h.c.run_for(300);
      check(mgr, "others down");
    }
    h.deliver(mgr, u);
    h.c.restart(others[0]);
    h.c.restart(others[1]);
    for (int i = 0; i < 30; ++i) {
      h.c.run_for(300);
      for (NodeId v = 1; v <= 3; ++v) check(v, "all back");
    }
    h.expect_invariants();
  }
  EXPECT_GT(listings, 1000);  // the checks above ran on real answers
}

TEST(Reads, FetchComesFromAReplicaWhenTheFirstHolderIsDown) {
  Harness h(4);
  const std::string u = "ivy@example.org";
  MessageRecord t;
  ASSERT_NO_FATAL_FAILURE(h.first_message(u, t));
  const NodeId via = Harness::non_holder(t);
  const ClientReply* f = h.fetch(via, t);
  ASSERT_EQ(f->status, Status::Ok);
  EXPECT_EQ(f->body, "Subject: t\r\n\r\nx\r\n");
  h.c.crash(t.replicas[0]);
  ASSERT_TRUE(h.settle());
  f = h.fetch(via, t);
  ASSERT_EQ(f->status, Status::Ok);
  EXPECT_EQ(f->body, "Subject: t\r\n\r\nx\r\n");
  h.c.crash(t.replicas[1]);
  ASSERT_TRUE(h.settle());
  f = h.fetch(via, t);
  EXPECT_EQ(f->status, Status::TryAgain);  // both copies down: a temporary error
  h.c.restart(t.replicas[0]);
  h.c.restart(t.replicas[1]);
  ASSERT_TRUE(h.settle());
  h.expect_invariants();
}

// A header fetch brings the bytes up to and including the blank line,
// read by a holder from the start of its copy (found there: these records
// do not carry hdr_size); a message that is all header comes whole, and
// one with no blank line in its first kHeaderPartMax bytes comes as those
// bytes, marked cut. A whole fetch is unchanged.
TEST(Reads, AHeaderFetchBringsTheHeaderOnly) {
  Harness h(4);
  const std::string u = "ivy@example.org";
  MessageRecord t;
  ASSERT_NO_FATAL_FAILURE(h.first_message(u, t));
  const NodeId via = Harness::non_holder(t);
  auto header_of = [&](const MessageRecord& m) {
    return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.fetch(now, req, m, FetchPart::Header); });
  };
  auto deliver = [&](const std::string& body) {
    const ClientReply* d = h.c.wait(h.c.deliver(1, u, "INBOX", body));
    EXPECT_TRUE(d && d->status == Status::Ok);
    return d ? Harness::target(*d, u) : MessageRecord{};
  };
  const ClientReply* f = header_of(t);
  ASSERT_EQ(f->status, Status::Ok) << f->detail;
  EXPECT_EQ(f->part, FetchPart::Header);
  EXPECT_FALSE(f->cut);
  EXPECT_EQ(f->body, "Subject: t\r\n\r\n");
  f = h.fetch(via, t);
  ASSERT_EQ(f->status, Status::Ok) << f->detail;
  EXPECT_EQ(f->part, FetchPart::Whole);
  EXPECT_EQ(f->body, "Subject: t\r\n\r\nx\r\n");

  const MessageRecord lf = deliver("Subject: lf\nFrom: a@example.org\n\nbody\n\nmore\n");
  f = header_of(lf);
  ASSERT_EQ(f->status, Status::Ok) << f->detail;
  EXPECT_EQ(f->part, FetchPart::Header);
  EXPECT_EQ(f->body, "Subject: lf\nFrom: a@example.org\n\n");

  const MessageRecord headless = deliver("Subject: no blank line\r\n");
  f = header_of(headless);
  ASSERT_EQ(f->status, Status::Ok) << f->detail;
  EXPECT_EQ(f->part, FetchPart::Whole);
  EXPECT_EQ(f->body, "Subject: no blank line\r\n");

  const std::string long_line(kHeaderPartMax + 100, 'h');
  const MessageRecord cut = deliver(long_line);
  f = header_of(cut);
  ASSERT_EQ(f->status, Status::Ok) << f->detail;
  EXPECT_EQ(f->part, FetchPart::Header);
  EXPECT_TRUE(f->cut);
  EXPECT_EQ(f->body, long_line.substr(0, kHeaderPartMax));

  // Not the asker's message: refused, header or not.
  MessageRecord other = t;
  other.user = "eve@example.org";
  f = header_of(other);
  EXPECT_EQ(f->status, Status::NotFound);
  h.expect_invariants();
}

// A large body takes longer to arrive than the retry interval: the fetch
// asks the next holder as well but still takes the first holder's answer,
// and asks no holder twice (each ask is a whole body sent again).
TEST(Reads, ABodySlowerThanTheRetryIntervalIsStillTakenAndNoHolderIsAskedTwice) {
  Harness h(4);
  const std::string u = "ivy@example.org";
  MessageRecord t;
  ASSERT_NO_FATAL_FAILURE(h.first_message(u, t));
  const NodeId via = Harness::non_holder(t);
  const Time slow = CoreConfig{}.push_retry * 3 / 2;
  ASSERT_LT(slow * 2, CoreConfig{}.request_timeout);
  std::map<NodeId, int> asked;
  h.c.on_send = [&](Envelope& e) {
    if (std::holds_alternative<FetchRequest>(e.body) && e.from == via) ++asked[e.to];
  };
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    return std::holds_alternative<FetchReply>(e.body) ? arrival + slow : arrival;
  };
  const ClientReply* f = h.fetch(via, t);
  ASSERT_EQ(f->status, Status::Ok) << f->detail;
  EXPECT_EQ(f->body, "Subject: t\r\n\r\nx\r\n");
  EXPECT_EQ(asked.size(), 2u);
  for (const auto& [n, times] : asked) EXPECT_EQ(times, 1) << "holder n" << n << " asked " << times << " times";
  h.c.on_send = nullptr;
  h.c.on_arrival = nullptr;
  h.expect_invariants();
}

// A listing names the nodes it covers, so a reader can tell a message that
// is gone (expunged: a node holding it answered without it) from one that
// is only out of reach (every node holding it is down or silent).
TEST(Reads, AListingNamesTheNodesItCoversSoAbsentIsNotTakenForExpunged) {
  Harness h(5);
  const std::string u = "kit@example.org";
  h.user(u);
  const std::vector<NodeId> profile_holders = h.profile_holders(u);
  ASSERT_EQ(profile_holders.size(), 2u);
  // A message stored while one profile holder is down, so it is not on
  // both: the user stays known while the message's holders are down.
  h.c.crash(profile_holders[0]);
  ASSERT_TRUE(h.settle());
  const ClientReply* kept = h.deliver(profile_holders[1], u);
  ASSERT_EQ(kept->status, Status::Ok);
  h.c.restart(profile_holders[0]);
  ASSERT_TRUE(h.settle());
  const std::vector<NodeId> holders = kept->replicas;
  const ClientReply* gone = h.deliver(1, u);
  ASSERT_EQ(gone->status, Status::Ok);
  MessageRecord gone_target = Harness::target(*gone, u);
  NodeId via = 1;
  while (via == holders[0] || via == holders[1]) ++via;
  auto list = [&] { return h.list(via, u); };
  auto covers = [](const ClientReply& l, NodeId n) {
    return std::find(l.reachable.begin(), l.reachable.end(), n) != l.reachable.end();
  };
  auto lists = [](const ClientReply& l, MsgId id) {
    return std::any_of(l.records.begin(), l.records.end(), [&](const MessageRecord& r) { return r.id == id; });
  };

  const ClientReply* l = list();
  ASSERT_EQ(l->status, Status::Ok);
  EXPECT_EQ(l->reachable, (std::vector<NodeId>{1, 2, 3, 4, 5}));
  EXPECT_TRUE(lists(*l, kept->msg));
  EXPECT_TRUE(lists(*l, gone->msg));

  // Expunged while its holders are up: absent, and the listing covers a holder.
  ASSERT_EQ(h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.expunge(now, req, gone_target); })->status,
            Status::Ok);
  h.c.run_for(2'000);
  l = list();
  EXPECT_FALSE(lists(*l, gone->msg));
  EXPECT_TRUE(covers(*l, gone->replicas[0]) || covers(*l, gone->replicas[1]));

  // One holder silent before the group notices: it did not answer, so the
  // listing does not claim to cover it.
  h.c.crash(holders[0]);
  l = list();
  ASSERT_EQ(l->status, Status::Ok);
  EXPECT_FALSE(covers(*l, holders[0]));
  EXPECT_TRUE(covers(*l, via));
  ASSERT_TRUE(h.settle());

  // Both holders down: the message is absent and no holder is covered.
  h.c.crash(holders[1]);
  ASSERT_TRUE(h.settle());
  l = list();
  ASSERT_EQ(l->status, Status::Ok);
  EXPECT_FALSE(lists(*l, kept->msg));
  EXPECT_FALSE(covers(*l, holders[0]));
  EXPECT_FALSE(covers(*l, holders[1]));
  EXPECT_TRUE(covers(*l, via));

  h.c.restart(holders[0]);
  h.c.restart(holders[1]);
  ASSERT_TRUE(h.settle());
  l = list();
  EXPECT_TRUE(lists(*l, kept->msg));
  EXPECT_EQ(l->reachable, (std::vector<NodeId>{1, 2, 3, 4, 5}));
  h.expect_invariants();
}

// IDLE asks only for a digest of a folder: it equals the full listing's,
// stays put while nothing changes and moves with every change a listing
// would show (new mail, flags, keywords, an expunge), whoever asks.
TEST(Reads, AFolderDigestMovesWithWhatAListingShowsAndOnlyThen) {
  Harness h(3);
  const std::string u = "max@example.org";
  MessageRecord t;
  ASSERT_NO_FATAL_FAILURE(h.first_message(u, t));
  auto digest = [&](NodeId via, bool only) {
    const ClientReply* l = h.list(via, u, only);
    EXPECT_EQ(l->status, Status::Ok);
    if (only) {
      EXPECT_TRUE(l->records.empty());
    }
    return l->folder_digest;
  };
  std::uint64_t d0 = digest(2, true);
  EXPECT_NE(d0, 0u);
  EXPECT_EQ(digest(2, false), d0);
  EXPECT_EQ(digest(3, true), d0);
  h.c.run_for(3000);
  EXPECT_EQ(digest(1, true), d0);  // nothing changed
  auto changed = [&](std::uint64_t before) {
    h.c.run_for(2000);
    std::uint64_t now = digest(2, true);
    EXPECT_EQ(digest(3, false), now);
    EXPECT_NE(now, before);
    return now;
  };
  ASSERT_EQ(h.deliver(2, u)->status, Status::Ok);
  std::uint64_t d1 = changed(d0);
  ASSERT_EQ(h.run(3, [&](Node& n, Time now, std::uint64_t req) { n.set_flags(now, req, t, kSeen, {}); })
                ->status,
            Status::Ok);
  std::uint64_t d2 = changed(d1);
  ASSERT_EQ(h.run(3, [&](Node& n, Time now, std::uint64_t req) {
                 n.set_flags(now, req, t, kSeen, {"$Label1"});
               })->status,
            Status::Ok);
  std::uint64_t d3 = changed(d2);
  ASSERT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) { n.expunge(now, req, t); })->status,
            Status::Ok);
  changed(d3);
  h.expect_invariants();
}

// A user whose profile's holders are all down is not "no such user" (an
// SMTP server would bounce mail for a real user with a 5xx); a user no node
// knows while every node is up is.
// Both holders of a profile down: a node that never looked the user up
// gets TryAgain, not NoSuchUser (the profile may be on the nodes that are
// down); one that did offers its memory of the profile, which the manager
// then answers with, to every node, until a holder is back.
TEST(Users, AUserWhoseProfileIsOutOfReachIsTryAgainNotNoSuchUser) {
  Harness h(4);
  const std::string u = "lou@example.org";
  h.user(u);
  const std::vector<NodeId> profile_holders = h.profile_holders(u);
  ASSERT_EQ(profile_holders.size(), 2u);
  std::vector<NodeId> others;
  for (NodeId n = 1; n <= 4; ++n)
    if (n != profile_holders[0] && n != profile_holders[1]) others.push_back(n);
  const NodeId via = others[0], fresh = others[1];
  auto lookup = [&](NodeId at, const std::string& who) {
    return h.run(at, [&](Node& n, Time now, std::uint64_t req) { n.get_user(now, req, who); })->status;
  };
  EXPECT_EQ(lookup(via, u), Status::Ok);
  EXPECT_EQ(lookup(via, "nobody@example.org"), Status::NoSuchUser);
  h.c.crash(profile_holders[0]);
  h.c.crash(profile_holders[1]);
  ASSERT_TRUE(h.settle());
  EXPECT_EQ(lookup(fresh, u), Status::TryAgain);
  EXPECT_EQ(lookup(via, "nobody@example.org"), Status::TryAgain);  // it may be the same case
  EXPECT_EQ(lookup(via, u), Status::Ok);    // from its memory of the profile
  EXPECT_EQ(lookup(fresh, u), Status::Ok);  // the manager took it
  h.c.restart(profile_holders[0]);
  h.c.restart(profile_holders[1]);
  ASSERT_TRUE(h.settle());
  EXPECT_EQ(lookup(fresh, u), Status::Ok);
  EXPECT_EQ(lookup(fresh, "nobody@example.org"), Status::NoSuchUser);
  h.expect_invariants();
}

TEST(Users, ChangesSurviveAManagerCrashAndDeletedUsersStayDeleted) {
  Harness h(4);
  for (const char* u : {"ann@example.org", "bob@example.org", "cat@example.org"}) h.user(u);
  auto get = [&](NodeId via, const std::string& u) {
    return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.get_user(now, req, u); });
  };
  auto change = [&](NodeId via, UserUpdateRequest c) {
    return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, c); });
  };
  UserUpdateRequest pw;
  pw.user = "Bob@Example.org";
  pw.password_hash = "{SHA512-CRYPT}x";
  ASSERT_EQ(change(2, pw)->status, Status::Ok);
  UserUpdateRequest del;
  del.user = "cat@example.org";
  del.op = UserUpdateRequest::Op::Delete;
  ASSERT_EQ(change(3, del)->status, Status::Ok);
  h.c.run_for(2000);
  NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of("bob@example.org", 1024));
  h.c.crash(mgr);
  ASSERT_TRUE(h.settle());
  NodeId via = mgr == 1 ? 2 : 1;
  const ClientReply* r = get(via, "bob@example.org");
  ASSERT_EQ(r->status, Status::Ok);
  ASSERT_TRUE(r->profile);
  EXPECT_EQ(r->profile->password_hash, "{SHA512-CRYPT}x");
  EXPECT_EQ(get(via, "cat@example.org")->status, Status::NoSuchUser);
  // Unknown while a node is down: its profile might be there.
  EXPECT_EQ(get(via, "nobody@example.org")->status, Status::TryAgain);
  h.c.restart(mgr);
  ASSERT_TRUE(h.settle());
  const ClientReply* l = h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.list_users(now, req); });
  ASSERT_EQ(l->status, Status::Ok);
  EXPECT_EQ(l->users, (std::vector<std::string>{"ann@example.org", "bob@example.org"}));
  EXPECT_EQ(get(mgr, "cat@example.org")->status, Status::NoSuchUser);  // the tombstone won
  h.expect_invariants();
}

// The same messages under the same UIDs, in order (a listing before and
// after a RENAME).
static void expect_same_messages_and_uids(const ClientReply& before, const ClientReply& after) {
  ASSERT_EQ(after.records.size(), before.records.size());
  for (std::size_t i = 0; i < before.records.size(); ++i) {
    EXPECT_EQ(after.records[i].id, before.records[i].id);
    EXPECT_EQ(after.records[i].uid, before.records[i].uid);
  }
}

// IMAP SUBSCRIBE and UNSUBSCRIBE go to the user's manager and are kept in
// the profile, so they survive its crash; a name needs no folder, and
// deleting a folder leaves its subscription (subscriptions are names).
TEST(Users, SubscriptionsAreKeptByNameThroughAManagerCrash) {
  Harness h(4);
  const std::string u = "sue@example.org";
  h.user(u);
  auto change = [&](NodeId via, UserUpdateRequest::Op op, const std::string& folder) {
    UserUpdateRequest c;
    c.user = u;
    c.op = op;
    c.folder = folder;
    return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, c); })->status;
  };
  using Op = UserUpdateRequest::Op;
  ASSERT_EQ(change(1, Op::CreateFolder, "Work"), Status::Ok);
  ASSERT_EQ(change(2, Op::Subscribe, "Work"), Status::Ok);
  ASSERT_EQ(change(3, Op::Subscribe, "Lists"), Status::Ok);  // no such folder: allowed
  ASSERT_EQ(change(4, Op::Unsubscribe, "Lists"), Status::Ok);
  ASSERT_EQ(change(1, Op::Subscribe, "Later"), Status::Ok);
  ASSERT_EQ(change(2, Op::DeleteFolder, "Work"), Status::Ok);
  EXPECT_EQ(change(3, Op::Subscribe, ""), Status::Failed);
  h.c.run_for(2000);
  NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of(u, 1024));
  h.c.crash(mgr);
  ASSERT_TRUE(h.settle());
  NodeId via = mgr == 1 ? 2 : 1;
  const ClientReply* r = h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.get_user(now, req, u); });
  ASSERT_EQ(r->status, Status::Ok);
  ASSERT_TRUE(r->profile);
  std::map<std::string, bool> subs;
  for (const auto& [name, sub] : r->profile->subscriptions) subs[name] = sub.on;
  EXPECT_EQ(subs, (std::map<std::string, bool>{{"Later", true}, {"Lists", false}, {"Work", true}}));
  EXPECT_TRUE(r->profile->folders.at("Work").deleted);
  h.expect_invariants();
}

TEST(Uids, AMovedMessageGetsAUidInItsNewFolderAndLeavesTheOld) {
  Harness h(4);
  const std::string u = "joe@example.org";
  h.user(u);
  std::vector<const ClientReply*> d;
  for (int i = 0; i < 3; ++i) d.push_back(h.deliver(1 + i, u));
  ASSERT_EQ(h.deliver(1, u, "Archive")->status, Status::Ok);  // Archive has a lineage already
  MessageRecord t = Harness::target(*d[1], u);
  const ClientReply* m = h.run(2, [&](Node& n, Time now, std::uint64_t req) { n.move(now, req, t, "Archive"); });
  ASSERT_EQ(m->status, Status::Ok);
  h.c.run_for(5000);
  const ClientReply* inbox = h.c.wait(h.c.list(3, u, "INBOX"));
  const ClientReply* archive = h.c.wait(h.c.list(4, u, "Archive"));
  ASSERT_EQ(inbox->status, Status::Ok);
  ASSERT_EQ(archive->status, Status::Ok);
  ASSERT_EQ(inbox->records.size(), 2u);
  ASSERT_EQ(archive->records.size(), 2u);
  EXPECT_EQ(archive->records[1].id, d[1]->msg);           // after the message already there
  EXPECT_EQ(archive->records[1].uid, 2u);
  EXPECT_EQ(archive->records[1].uidvalidity, archive->uidvalidity);
  EXPECT_EQ(archive->uid, 3u);                              // next UID
  h.expect_invariants();
}

TEST(Users, QuotaCountsEveryNodesMailOnceRefusesOverQuotaAndFreesOnExpunge) {
  Harness h(4);
  const std::string u = "quinn@example.org";
  h.user(u);
  const std::size_t size = std::string("Subject: t\r\n\r\nx\r\n").size();
  auto usage = [&](NodeId via) {
    const ClientReply* r = h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.user_usage(now, req, u); });
    EXPECT_EQ(r->status, Status::Ok);
    return r->used_bytes.value_or(~0ull);
  };
  std::vector<const ClientReply*> sent;
  for (NodeId via = 1; via <= 4; ++via) {
    sent.push_back(h.deliver(via, u));
    ASSERT_EQ(sent.back()->status, Status::Ok);
  }
  h.c.run_for(2000);
  for (NodeId via = 1; via <= 4; ++via) EXPECT_EQ(usage(via), 4 * size);  // R=2, each counted once
  UserUpdateRequest q;
  q.user = u;
  q.op = UserUpdateRequest::Op::SetQuota;
  q.quota_bytes = 5 * size;
  ASSERT_EQ(h.run(2, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, q); })->status,
            Status::Ok);
  ASSERT_EQ(h.deliver(3, u)->status, Status::Ok);  // the fifth fits exactly
  h.c.run_for(2000);
  const ClientReply* over = h.deliver(1, u);
  ASSERT_EQ(over->status, Status::OverQuota);
  EXPECT_NE(over->detail.find("over quota"), std::string::npos);
  // A crashed replica: its messages are counted by the other one.
  h.c.crash(sent[0]->replicas[0]);
  ASSERT_TRUE(h.settle());
  NodeId via = sent[0]->replicas[0] == 1 ? 2 : 1;
  EXPECT_EQ(usage(via), 5 * size);
  h.c.restart(sent[0]->replicas[0]);
  ASSERT_TRUE(h.settle());
  const ClientReply* x = h.run(via, [&](Node& n, Time now, std::uint64_t req) {
    n.expunge(now, req, Harness::target(*sent[1], u));
  });
  ASSERT_EQ(x->status, Status::Ok);
  h.c.run_for(2000);
  EXPECT_EQ(usage(via), 4 * size);
  EXPECT_EQ(h.deliver(via, u)->status, Status::Ok);  // room again
  h.expect_invariants();
}

TEST(Flags, KeywordsTravelWithTheFlagsAndTheLastWholeStateWins) {
  Harness h(3);
  const std::string u = "kim@example.org";
  MessageRecord t;
  ASSERT_NO_FATAL_FAILURE(h.first_message(u, t));
  auto set = [&](NodeId via, std::uint32_t flags, std::vector<std::string> kws) {
    return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.set_flags(now, req, t, flags, kws); });
  };
  auto listed = [&](NodeId via) {
    const ClientReply* l = h.list(via, u);
    EXPECT_EQ(l->status, Status::Ok);
    EXPECT_EQ(l->records.size(), 1u);
    return l->records.empty() ? MessageRecord{} : l->records[0];
  };
  ASSERT_EQ(set(2, kSeen, {"NonJunk", "$Label1", "nonjunk", "NonJunk"})->status, Status::Ok);
  h.c.run_for(2000);
  for (NodeId via = 1; via <= 3; ++via) {
    MessageRecord r = listed(via);
    EXPECT_EQ(r.flags, kSeen);
    // Sorted, once each, without regard to case (IMAP keywords are
    // case-insensitive), spelled as first given.
    EXPECT_EQ(r.keywords, (std::vector<std::string>{"$Label1", "NonJunk"}));
  }
  // A later change of the flags alone (no keywords) is the new whole state.
  ASSERT_EQ(set(3, kSeen | kFlagged, {"$Label1"})->status, Status::Ok);
  ASSERT_EQ(set(1, kSeen, {})->status, Status::Ok);
  h.c.run_for(2000);
  for (NodeId via = 1; via <= 3; ++via) {
    MessageRecord r = listed(via);
    EXPECT_EQ(r.flags, kSeen);
    EXPECT_TRUE(r.keywords.empty());
  }
  h.expect_invariants();
}

TEST(Membership, ASlowNetworkStillFormsOneGroupNotAGroupPerNode) {
  // Every message takes 400-900 ms one way, so an Accept comes back after
  // the 500 ms accept window: the coordinator must wait for nodes it hears
  // from rather than commit alone (which, on a loaded machine, had each
  // node in a group of its own, round after round).
  Cluster c(11, CoreConfig{});
  c.network().latency_min = 400;
  c.network().latency_max = 900;
  std::vector<NodeId> seeds{1, 2, 3};
  for (NodeId i : seeds) c.add_node(i, seeds);
  ASSERT_TRUE(c.run_until_pred([&] { return c.converged(); }, 60'000));
  for (NodeId i : seeds) EXPECT_EQ(c.node(i)->membership().members().size(), 3u);
  // A crash is still noticed and the rest still agree.
  c.crash(3);
  ASSERT_TRUE(c.run_until_pred([&] { return c.converged(); }, 60'000));
  EXPECT_EQ(c.node(1)->membership().members().size(), 2u);
}

// A STORE sends what it changes: two writers changing different flags of
// one message, on different nodes at the same moment, both keep their
// change; for one flag the later writer wins.
TEST(Flags, ChangesOfDifferentFlagsByTwoWritersBothSurvive) {
  Harness h(3);
  const std::string u = "flo@example.org";
  MessageRecord t;
  ASSERT_NO_FATAL_FAILURE(h.first_message(u, t));
  ASSERT_EQ(h.c.wait(h.c.set_flags(1, t, kSeen))->status, Status::Ok);
  h.c.run_for(1000);
  // Issued together through three nodes: nobody sees the others' change.
  auto change = [&](NodeId via, std::uint32_t add, std::uint32_t remove, std::vector<std::string> add_kw) {
    return h.c.call(via, [=](Node& n, Time now, std::uint64_t req) {
      n.change_flags(now, req, t, add, remove, add_kw, {});
    });
  };
  std::uint64_t a = change(1, kAnswered, 0, {});
  std::uint64_t b = change(2, 0, kSeen, {});
  std::uint64_t k = change(3, 0, 0, {"$Label1"});
  ASSERT_EQ(h.c.wait(a)->status, Status::Ok);
  ASSERT_EQ(h.c.wait(b)->status, Status::Ok);
  ASSERT_EQ(h.c.wait(k)->status, Status::Ok);
  h.c.run_for(2000);
  for (NodeId via = 1; via <= 3; ++via) {
    const ClientReply* l = h.list(via, u);
    ASSERT_EQ(l->status, Status::Ok);
    ASSERT_EQ(l->records.size(), 1u);
    EXPECT_EQ(l->records[0].flags, kAnswered) << "via n" << via;  // \Answered added, \Seen removed
    EXPECT_EQ(l->records[0].keywords, std::vector<std::string>{"$Label1"}) << "via n" << via;
  }
  // The same flag from two writers: the later one wins, the other flags stay.
  ASSERT_EQ(h.c.wait(change(1, kFlagged, 0, {}))->status, Status::Ok);
  h.c.run_for(50);
  ASSERT_EQ(h.c.wait(change(2, 0, kFlagged, {"$label1"}))->status, Status::Ok);
  h.c.run_for(2000);
  const ClientReply* l = h.list(3, u);
  ASSERT_EQ(l->records.size(), 1u);
  EXPECT_EQ(l->records[0].flags, kAnswered);
  EXPECT_EQ(l->records[0].keywords, std::vector<std::string>{"$label1"});  // one keyword, as last set
  // A whole-state write after them still replaces everything.
  ASSERT_EQ(h.c.wait(h.c.set_flags(2, t, kDraft))->status, Status::Ok);
  h.c.run_for(2000);
  l = h.list(1, u);
  EXPECT_EQ(l->records[0].flags, kDraft);
  EXPECT_TRUE(l->records[0].keywords.empty());
  h.expect_invariants();
}

// A delivery keeps the INTERNALDATE and flags it is given (IMAP APPEND,
// and COPY's source's); without one it is the time of delivery.
TEST(Delivery, AnAppendKeepsItsInternalDateAndFlags) {
  Harness h(3);
  const std::string u = "ada@example.org";
  h.user(u);
  DeliverOptions o;
  o.internal_date = 1'500'000'000'000;
  o.flags = kSeen | kFlagged;
  o.keywords = {"Work", "$Label2", "work"};
  const ClientReply* d = h.run(2, [&](Node& n, Time now, std::uint64_t req) {
    n.deliver(now, req, u, "INBOX", std::string("Subject: old\r\n\r\nx\r\n"), o);
  });
  ASSERT_EQ(d->status, Status::Ok);
  ASSERT_EQ(h.deliver(3, u)->status, Status::Ok);
  const ClientReply* l = h.list(1, u);
  ASSERT_EQ(l->records.size(), 2u);
  EXPECT_EQ(l->records[0].internal_date, 1'500'000'000'000);
  EXPECT_EQ(l->records[0].flags, kSeen | kFlagged);
  EXPECT_EQ(l->records[0].keywords, (std::vector<std::string>{"$Label2", "Work"}));
  EXPECT_GT(l->records[1].internal_date, 0);
  EXPECT_LE(l->records[1].internal_date, h.c.wall());
  EXPECT_GE(l->records[1].internal_date, Cluster::kWallBase);  // dated by the wall clock
  h.expect_invariants();
}

// A Move answers the UID its message has in the destination, and the
// message is there, under that UID, as soon as the answer is given.
TEST(Uids, AMoveAnswersItsNewUidAndTheMessageIsThereAtOnce) {
  Harness h(4);
  const std::string u = "mo@example.org";
  h.user(u);
  std::vector<const ClientReply*> d;
  for (int i = 0; i < 3; ++i) d.push_back(h.deliver(1 + i, u));
  const ClientReply* first = h.deliver(4, u, "Archive");
  ASSERT_EQ(first->status, Status::Ok);
  MessageRecord t = Harness::target(*d[1], u);
  const ClientReply* m = h.run(2, [&](Node& n, Time now, std::uint64_t req) { n.move(now, req, t, "Archive"); });
  ASSERT_EQ(m->status, Status::Ok);
  EXPECT_EQ(m->msg, d[1]->msg);
  EXPECT_EQ(m->uidvalidity, first->uidvalidity);
  EXPECT_EQ(m->uid, first->uid + 1);
  const ClientReply* archive = h.c.wait(h.c.list(3, u, "Archive"));  // no waiting first
  ASSERT_EQ(archive->status, Status::Ok);
  ASSERT_EQ(archive->records.size(), 2u);
  EXPECT_EQ(archive->records[1].id, d[1]->msg);
  EXPECT_EQ(archive->records[1].uid, m->uid);
  h.c.run_for(5000);
  const ClientReply* inbox = h.list(4, u);
  ASSERT_EQ(inbox->records.size(), 2u);
  for (const auto& r : inbox->records) EXPECT_NE(r.id, d[1]->msg);
  archive = h.c.wait(h.c.list(1, u, "Archive"));
  ASSERT_EQ(archive->records.size(), 2u);
  EXPECT_EQ(archive->records[1].uid, m->uid);  // kept: no renumbering after
  h.expect_invariants();
}

// UIDs become visible in order: while the store of UID n is still on its
// way, a listing does not show UID n+1 whose store finished first (a cache
// that took n+1 could never take n), and shows both once n is stored.
TEST(Uids, AListingShowsNoUidBeforeAnEarlierOneStillBeingStored) {
  Harness h(3);
  const std::string u = "ord@example.org";
  h.user(u);
  ASSERT_EQ(h.deliver(1, u)->status, Status::Ok);
  // The front end whose store is held up is not the user's manager.
  const NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of(u, 1024));
  const NodeId fe = mgr == 2 ? 3 : 2;
  const NodeId other = 6 - mgr - fe;
  const Time slow = 2000;
  ASSERT_LT(slow, CoreConfig{}.request_timeout);
  bool delayed = false;
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    if (!delayed && e.from == fe && std::holds_alternative<StoreRequest>(e.body)) {
      delayed = true;
      return arrival + slow;
    }
    return arrival;
  };
  std::uint64_t a = h.c.deliver(fe, u, "INBOX", "Subject: a\r\n\r\nx\r\n");
  h.c.run_for(100);  // a has its UID; its store is held up
  ASSERT_TRUE(delayed);
  const ClientReply* b = h.deliver(other, u);
  ASSERT_EQ(b->status, Status::Ok);
  const ClientReply* l = h.list(mgr, u);
  ASSERT_EQ(l->status, Status::Ok);
  EXPECT_EQ(l->records.size(), 1u) << "UID " << b->uid << " shown while an earlier UID is being stored";
  const ClientReply* ra = h.c.wait(a);
  ASSERT_EQ(ra->status, Status::Ok);
  EXPECT_LT(ra->uid, b->uid);
  l = h.list(mgr, u);
  ASSERT_EQ(l->records.size(), 3u);
  EXPECT_EQ(l->records[1].uid, ra->uid);
  EXPECT_EQ(l->records[2].uid, b->uid);
  h.c.on_arrival = nullptr;
  // A front end that never finishes (its node dies with the store) holds
  // the later UIDs back only until the store's deadline.
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    return e.from == fe && std::holds_alternative<StoreRequest>(e.body) ? arrival + 60'000 : arrival;
  };
  h.c.deliver(fe, u, "INBOX", "Subject: lost\r\n\r\nx\r\n");
  h.c.run_for(100);
  h.c.crash(fe);
  ASSERT_TRUE(h.settle());
  const ClientReply* c2 = h.deliver(other, u);
  ASSERT_EQ(c2->status, Status::Ok);
  h.c.on_arrival = nullptr;
  h.c.run_for(CoreConfig{}.request_timeout + 2 * CoreConfig{}.push_retry);
  l = h.list(mgr, u);
  ASSERT_EQ(l->status, Status::Ok);
  ASSERT_FALSE(l->records.empty());
  EXPECT_EQ(l->records.back().uid, c2->uid);
  h.c.restart(fe);
  h.expect_invariants();
}

// An acknowledged message is listed at once through any node, even while
// the front end's word that its UID is used (AllocDone) is still on its
// way to the manager: the holders list it, and so does the reader. A UID
// in flight that no holder lists still holds back the ones after it.
TEST(Uids, AnAcknowledgedMessageIsListedBeforeTheManagerHearsItIsStored) {
  Harness h(3);
  const std::string u = "ack@example.org";
  h.user(u);
  const NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of(u, 1024));
  const NodeId fe = mgr == 2 ? 3 : 2;
  const NodeId reader = 6 - mgr - fe;
  bool held = false;
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    if (e.from == fe && e.to == mgr && std::holds_alternative<AllocDone>(e.body)) {
      held = true;
      return arrival + 3000;
    }
    return arrival;
  };
  const ClientReply* a = h.deliver(fe, u);
  ASSERT_EQ(a->status, Status::Ok);
  const ClientReply* b = h.deliver(fe, u);
  ASSERT_EQ(b->status, Status::Ok);
  ASSERT_TRUE(held);
  const ClientReply* l = h.list(reader, u);
  ASSERT_EQ(l->status, Status::Ok);
  ASSERT_EQ(l->records.size(), 2u) << "an acknowledged message is missing from the listing";
  EXPECT_EQ(l->records[0].uid, a->uid);
  EXPECT_EQ(l->records[1].uid, b->uid);
  // A store held up between them: b's successor waits for it, a and b not.
  bool delayed = false;
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    if (!delayed && e.from == fe && std::holds_alternative<StoreRequest>(e.body)) {
      delayed = true;
      return arrival + 2000;
    }
    return arrival;
  };
  std::uint64_t c = h.c.deliver(fe, u, "INBOX", "Subject: c\r\n\r\nx\r\n");
  h.c.run_for(100);
  ASSERT_TRUE(delayed);
  const ClientReply* d = h.deliver(reader, u);
  ASSERT_EQ(d->status, Status::Ok);
  l = h.list(reader, u);
  ASSERT_EQ(l->records.size(), 2u) << "UID " << d->uid << " shown while an earlier UID is being stored";
  ASSERT_EQ(h.c.wait(c)->status, Status::Ok);
  h.c.on_arrival = nullptr;
  l = h.list(reader, u);
  ASSERT_EQ(l->records.size(), 4u);
  EXPECT_EQ(l->records[3].uid, d->uid);
  h.expect_invariants();
}

// RENAME keeps the folder: its UIDVALIDITY, and every message its UID; the
// old name shows nothing, and a folder made again under it gets a greater
// UIDVALIDITY.
TEST(Uids, ARenameKeepsUidValidityAndEveryUid) {
  Harness h(4);
  const std::string u = "ren@example.org";
  h.user(u);
  auto op = [&](UserUpdateRequest::Op o, const std::string& folder, const std::string& to = "") {
    UserUpdateRequest r;
    r.user = u;
    r.op = o;
    r.folder = folder;
    r.to_folder = to;
    return h.run(2, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, r); });
  };
  ASSERT_EQ(op(UserUpdateRequest::Op::CreateFolder, "Work")->status, Status::Ok);
  std::vector<const ClientReply*> d;
  for (int i = 0; i < 5; ++i) d.push_back(h.deliver(1 + i % 4, u, "Work"));
  const ClientReply* before = h.c.wait(h.c.list(3, u, "Work"));
  ASSERT_EQ(before->records.size(), 5u);
  ASSERT_EQ(op(UserUpdateRequest::Op::RenameFolder, "Work", "Projects")->status, Status::Ok);
  const ClientReply* after = h.c.wait(h.c.list(4, u, "Projects"));  // no waiting first
  ASSERT_EQ(after->status, Status::Ok);
  EXPECT_EQ(after->uidvalidity, before->uidvalidity);
  ASSERT_EQ(after->records.size(), 5u);
  expect_same_messages_and_uids(*before, *after);
  const ClientReply* next = h.deliver(3, u, "Projects");
  EXPECT_EQ(next->uidvalidity, before->uidvalidity);
  EXPECT_GT(next->uid, before->records.back().uid);
  const ClientReply* old = h.c.wait(h.c.list(1, u, "Work"));
  EXPECT_TRUE(old->records.empty());
  EXPECT_EQ(op(UserUpdateRequest::Op::RenameFolder, "Work", "Other")->status, Status::NotFound);
  EXPECT_EQ(op(UserUpdateRequest::Op::RenameFolder, "Projects", "INBOX")->status, Status::Failed);
  ASSERT_EQ(op(UserUpdateRequest::Op::CreateFolder, "Work")->status, Status::Ok);
  const ClientReply* again = h.c.wait(h.c.list(2, u, "Work"));
  EXPECT_GT(again->uidvalidity, before->uidvalidity);
  EXPECT_TRUE(again->records.empty());
  h.expect_invariants();
}

// A rename whose manager dies before it has moved the messages: its
// successor finds mail under the old name (a tombstone whose lineage the
// new name has) in the holders' reports and moves it over, under the same
// UIDs.
TEST(Uids, ARenameFinishesAfterItsManagerDies) {
  Harness h(4);
  const std::string u = "ren2@example.org";
  h.user(u);
  UserUpdateRequest mk;
  mk.user = u;
  mk.op = UserUpdateRequest::Op::CreateFolder;
  mk.folder = "Work";
  ASSERT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, mk); })->status,
            Status::Ok);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(h.deliver(1 + i % 4, u, "Work")->status, Status::Ok);
  const ClientReply* before = h.c.wait(h.c.list(2, u, "Work"));
  ASSERT_EQ(before->records.size(), 4u);
  const NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of(u, 1024));
  // The rename's listing of the old name never gets anywhere.
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    const auto* l = std::get_if<ListRequest>(&e.body);
    return l && l->folder == "Work" && e.from == mgr ? arrival + 600'000 : arrival;
  };
  UserUpdateRequest rn = mk;
  rn.op = UserUpdateRequest::Op::RenameFolder;
  rn.to_folder = "Projects";
  const NodeId via = mgr == 1 ? 2 : 1;
  h.c.call(via, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, rn); });
  h.c.run_for(500);
  h.c.crash(mgr);
  h.c.on_arrival = nullptr;
  ASSERT_TRUE(h.settle());
  h.c.run_for(5000);
  const ClientReply* after = h.c.wait(h.c.list(via, u, "Projects"));
  ASSERT_EQ(after->status, Status::Ok);
  EXPECT_EQ(after->uidvalidity, before->uidvalidity);
  ASSERT_EQ(after->records.size(), 4u);
  expect_same_messages_and_uids(*before, *after);
  EXPECT_TRUE(h.c.wait(h.c.list(via, u, "Work"))->records.empty());
  h.c.restart(mgr);
  ASSERT_TRUE(h.settle());
  h.expect_invariants();
}

// A large folder's listing comes from its holder in parts (list_part
// records each), merged by the asker as they come; a part that comes last,
// or twice, changes nothing: the listing through a node holding none is
// the holder's own.
TEST(Uids, AListingInPartsOutOfOrderIsWhole) {
  CoreConfig cfg;
  cfg.list_part = 2;
  Harness h(4, 7, cfg);
  const std::string u = "parts@example.org";
  h.user(u);
  for (int i = 0; i < 7; ++i) ASSERT_EQ(h.deliver(1, u)->status, Status::Ok);
  const ClientReply* own = h.list(1, u);
  ASSERT_EQ(own->records.size(), 7u);
  const NodeId via = Harness::non_holder(own->records.front());
  int parted = 0;
  h.c.on_send = [&](Envelope& e) {
    if (const auto* l = std::get_if<ListReply>(&e.body); l && l->parts > 1) ++parted;
  };
  // The first part of every reply comes last.
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    const auto* l = std::get_if<ListReply>(&e.body);
    return l && l->parts > 1 && l->part == 0 ? arrival + 300 : arrival;
  };
  const ClientReply* far = h.list(via, u);
  h.c.on_send = nullptr;
  h.c.on_arrival = nullptr;
  EXPECT_GE(parted, 4);  // 7 records in parts of 2
  ASSERT_EQ(far->status, Status::Ok);
  ASSERT_EQ(far->records.size(), 7u);
  for (std::size_t i = 0; i < 7; ++i) {
    EXPECT_EQ(far->records[i].id, own->records[i].id);
    EXPECT_EQ(far->records[i].uid, own->records[i].uid);
    EXPECT_EQ(far->records[i].user, canonical_user(u));  // put back by the asker
    EXPECT_EQ(far->records[i].folder, "INBOX");
  }
  EXPECT_EQ(far->folder_digest, own->folder_digest);
  h.expect_invariants();
}

// Through a node holding none, one holder's records come light (without
// their versions) and the others' digests: the same digests, the light
// records are the listing. A holder that differs (a flag change has not
// reached it) makes the asker merge: the light holder is asked again for
// its records whole, so the newer flags win whichever copy has them.
TEST(Uids, ALightListingIsAskedWholeWhenHoldersDiffer) {
  Harness h(4);
  const std::string u = "light@example.org";
  h.user(u);
  ASSERT_EQ(h.deliver(1, u)->status, Status::Ok);
  const ClientReply* own = h.list(1, u);
  ASSERT_EQ(own->records.size(), 1u);
  MessageRecord t = own->records.front();
  ASSERT_EQ(t.replicas.size(), 2u);
  const NodeId lo = std::min(t.replicas[0], t.replicas[1]), hi = std::max(t.replicas[0], t.replicas[1]);
  const NodeId via = Harness::non_holder(t);
  int light_asks = 0, whole_asks = 0;
  h.c.on_send = [&](Envelope& e) {
    const auto* l = std::get_if<ListRequest>(&e.body);
    if (!l || l->digest_only || e.from != via) return;
    EXPECT_EQ(l->light && e.to != lo, false) << "only the first holder is asked light";
    ++(l->light ? light_asks : whole_asks);
  };

  const ClientReply* same = h.list(via, u);
  ASSERT_EQ(same->status, Status::Ok);
  ASSERT_EQ(same->records.size(), 1u);
  EXPECT_EQ(same->records[0].uid, t.uid);
  EXPECT_EQ(same->records[0].flags, t.flags);
  EXPECT_EQ(light_asks, 1);
  EXPECT_EQ(whole_asks, 0);  // the digests agreed: nothing merged

  // The light holder coordinates a flag change the other does not hear.
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    const bool repl = std::holds_alternative<Push>(e.body) || std::holds_alternative<SyncRequest>(e.body) ||
                      std::holds_alternative<SyncDigest>(e.body) || std::holds_alternative<SyncPull>(e.body) ||
                      std::holds_alternative<SyncRecords>(e.body);
    return repl && e.to == hi ? arrival + 600'000 : arrival;
  };
  MessageRecord by_lo = t;
  by_lo.replicas = {lo, hi};
  ASSERT_EQ(h.c.wait(h.c.set_flags(lo, by_lo, kSeen | kFlagged))->status, Status::Ok);
  light_asks = whole_asks = 0;
  const ClientReply* merged = h.list(via, u);
  ASSERT_EQ(merged->status, Status::Ok);
  ASSERT_EQ(merged->records.size(), 1u);
  EXPECT_EQ(merged->records[0].flags, kSeen | kFlagged);
  EXPECT_EQ(light_asks, 1);
  EXPECT_EQ(whole_asks, 2);  // the light holder again, and the other
  h.c.on_send = nullptr;
  h.c.on_arrival = nullptr;
  ASSERT_TRUE(h.settle());
  EXPECT_EQ(h.list(via, u)->records.at(0).flags, kSeen | kFlagged);
  h.expect_invariants();
}

TEST(Placement, AFullNodeGetsNoNewCopiesNothingIsLostAndItIsUsedAgainWithRoom) {
  Harness h(4);
  std::vector<std::string> users;
  for (int i = 0; i < 8; ++i) users.push_back("full" + std::to_string(i) + "@example.org");
  for (const auto& u : users) h.user(u);
  // Mail maps that name node 3 before it fills.
  for (std::size_t i = 0; i < users.size(); ++i)
    ASSERT_EQ(h.deliver(static_cast<NodeId>(1 + i % 4), users[i])->status, Status::Ok);

  h.c.node(3)->set_spool_full(true);
  // Every member hears it within a second, whatever else it is sent.
  h.c.run_for(1500);
  for (NodeId n : {1, 2, 4}) EXPECT_TRUE(h.c.node(n)->peer_full(3)) << "node " << n;
  const std::size_t before = h.c.disk(3)->data().records.size();
  int via3 = 0;
  for (int round = 0; round < 3; ++round)
    for (std::size_t i = 0; i < users.size(); ++i) {
      const NodeId via = static_cast<NodeId>(1 + (i + round) % 4);
      const ClientReply* r = h.deliver(via, users[i]);
      ASSERT_TRUE(r);
      // The full node's own deliveries go to the others.
      ASSERT_EQ(r->status, Status::Ok) << "via " << via;
      EXPECT_EQ(std::count(r->replicas.begin(), r->replicas.end(), NodeId{3}), 0) << "via " << via;
      EXPECT_EQ(r->replicas.size(), 2u);
      via3 += via == 3;
    }
  EXPECT_GT(via3, 0);
  EXPECT_EQ(h.c.disk(3)->data().records.size(), before);  // nothing new written there

  // Room again: the others hear it and place copies there again.
  h.c.node(3)->set_spool_full(false);
  h.c.run_for(1500);
  for (NodeId n : {1, 2, 4}) EXPECT_FALSE(h.c.node(n)->peer_full(3)) << "node " << n;
  int on3 = 0;
  for (int round = 0; round < 3; ++round)
    for (std::size_t i = 0; i < users.size(); ++i) {
      const ClientReply* r = h.deliver(static_cast<NodeId>(1 + i % 4), users[i]);
      ASSERT_EQ(r->status, Status::Ok);
      on3 += std::count(r->replicas.begin(), r->replicas.end(), NodeId{3});
    }
  EXPECT_GT(on3, 0);
  h.expect_invariants();
}

// ---- Repair and drain (repair.cc) ----

namespace {

const ClientReply* administer(Harness& h, NodeId via, NodeId n, AdminState s) {
  return h.run(via, [&](Node& node, Time now, std::uint64_t req) { node.administer(now, req, n, s); });
}

// A mail workload for the repair scenarios: `per_user` messages to each of
// `users` users in INBOX and Archive through every running node, flags on
// some, an expunge of others. Returns the messages that must stay.
std::vector<MessageRecord> mail(Harness& h, const std::vector<std::string>& users, int per_user) {
  std::vector<MessageRecord> live;
  std::size_t k = 0;
  for (const auto& u : users) {
    h.user(u);
    UserUpdateRequest mk;
    mk.user = u;
    mk.op = UserUpdateRequest::Op::CreateFolder;
    mk.folder = "Archive";
    EXPECT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, mk); })->status,
              Status::Ok);
    for (int i = 0; i < per_user; ++i, ++k) {
      std::vector<NodeId> up = h.c.up();
      const NodeId via = up[k % up.size()];
      const std::string folder = i % 3 == 2 ? "Archive" : "INBOX";
      const ClientReply* d = h.deliver(via, u, folder);
      EXPECT_TRUE(d && d->status == Status::Ok);
      if (!d || d->status != Status::Ok) continue;
      MessageRecord t = Harness::target(*d, u);
      t.folder = folder;
      if (k % 5 == 1) {
        EXPECT_EQ(h.c.wait(h.c.set_flags(via, t, kSeen | kFlagged))->status, Status::Ok);
      } else if (k % 5 == 3) {
        EXPECT_EQ(h.c.wait(h.c.expunge(via, t))->status, Status::Ok);
        h.log.delivered.back().expunge_acked = true;
        continue;
      }
      live.push_back(t);
    }
  }
  return live;
}

// Every message of `live` is listed (through `via`) and fetched through
// the list's record, as an IMAP client would after a new login; flags as
// set; every user's profile is read.
void expect_readable(Harness& h, NodeId via, const std::vector<std::string>& users,
                     const std::vector<MessageRecord>& live, std::size_t* lost = nullptr) {
  std::map<MsgId, MessageRecord> listed;
  for (const auto& u : users) {
    const ClientReply* g = h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.get_user(now, req, u); });
    ASSERT_TRUE(g);
    EXPECT_EQ(g->status, Status::Ok) << u;
    for (const char* folder : {"INBOX", "Archive"}) {
      const ClientReply* l =
          h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.list(now, req, u, folder); });
      ASSERT_TRUE(l);
      ASSERT_EQ(l->status, Status::Ok) << u << "/" << folder;
      for (const MessageRecord& r : l->records)
        if (r.has_body && !r.expunged) listed[r.id] = r;
    }
  }
  std::size_t missing = 0;
  for (const MessageRecord& t : live) {
    auto it = listed.find(t.id);
    if (it == listed.end()) {
      ++missing;
      ADD_FAILURE() << t.id.str() << " (" << t.user << ") not listed";
      continue;
    }
    const ClientReply* f = h.fetch(via, it->second);
    ASSERT_TRUE(f);
    if (f->status != Status::Ok) {
      ++missing;
      ADD_FAILURE() << t.id.str() << " (" << t.user << ") not fetched: " << f->detail;
    } else {
      EXPECT_EQ(f->body.bytes(), "Subject: t\r\n\r\nx\r\n");
    }
  }
  if (lost) *lost = missing;
}

std::string gaps(Cluster& c) {
  std::string s;
  for (const auto& g : repair_unfinished(c, CoreConfig{}.replicas)) s += "\n  " + g;
  return s;
}

std::vector<std::string> some_users(int n, const std::string& prefix) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(prefix + std::to_string(i) + "@example.org");
  return out;
}

}  // namespace

// The operator's "node forget" of a lost node: its copies (messages and
// profiles) are made again on the others, so a second crash afterwards
// loses nothing.
TEST(Repair, PermanentLossThenASecondCrashLosesNothing) {
  Harness h(5);
  const auto users = some_users(6, "rep");
  const std::vector<MessageRecord> live = mail(h, users, 12);
  h.c.run_for(3000);
  const NodeId lost = 3;
  std::size_t on_lost = 0;
  for (const MessageRecord& t : live) on_lost += std::count(t.replicas.begin(), t.replicas.end(), lost);
  ASSERT_GT(on_lost, 5u);
  h.c.destroy(lost);
  ASSERT_TRUE(h.settle());
  // Nothing happens to the copies while the node is only down.
  h.c.run_for(5000);
  EXPECT_FALSE(repair_unfinished(h.c, 2).empty());
  EXPECT_EQ(h.c.node(1)->repair_progress().gone, 0u);

  ASSERT_EQ(administer(h, 1, lost, AdminState::Gone)->status, Status::Ok);
  ASSERT_TRUE(h.settle());
  for (NodeId n : h.c.up()) EXPECT_EQ(h.c.node(n)->membership().admin_state(lost), AdminState::Gone) << n;
  ASSERT_TRUE(h.c.run_until_pred([&] { return repair_unfinished(h.c, 2).empty(); }, 60'000)) << gaps(h.c);
  std::uint64_t copies = 0, profiles = 0;
  for (NodeId n : h.c.up()) {
    copies += h.c.node(n)->repair_progress().copies;
    profiles += h.c.node(n)->repair_progress().profiles;
  }
  EXPECT_GE(copies, on_lost);
  EXPECT_GT(profiles, 0u);

  // Any second node lost: nothing is.
  const NodeId second = 2;
  h.c.crash(second);
  ASSERT_TRUE(h.settle());
  std::size_t missing = 99;
  ASSERT_NO_FATAL_FAILURE(expect_readable(h, 1, users, live, &missing));
  EXPECT_EQ(missing, 0u);
  h.c.restart(second);
  ASSERT_TRUE(h.settle());
  h.expect_invariants(true);
}

// A node down longer than node_dead_timeout is declared gone by the others
// and repaired around; when it comes back after all it rejoins as an
// Active member and its stale copies do no harm.
TEST(Repair, NodeDeadTimeoutDeclaresAStoppedNodeGone) {
  CoreConfig cfg;
  cfg.node_dead_timeout = 20'000;
  Harness h(4, 7, cfg);
  const auto users = some_users(5, "dto");
  const std::vector<MessageRecord> live = mail(h, users, 10);
  h.c.run_for(3000);
  const NodeId stopped = 4;
  h.c.crash(stopped);
  ASSERT_TRUE(h.settle());
  // Not before the timeout.
  h.c.run_for(10'000);
  EXPECT_EQ(h.c.node(1)->membership().admin_state(stopped), AdminState::Active);
  ASSERT_TRUE(h.c.run_until_pred(
      [&] {
        for (NodeId n : h.c.up())
          if (h.c.node(n)->membership().admin_state(stopped) != AdminState::Gone) return false;
        return true;
      },
      30'000));
  ASSERT_TRUE(h.c.run_until_pred([&] { return repair_unfinished(h.c, 2).empty(); }, 60'000)) << gaps(h.c);
  // A second crash loses nothing.
  h.c.crash(2);
  ASSERT_TRUE(h.settle());
  ASSERT_NO_FATAL_FAILURE(expect_readable(h, 1, users, live));
  h.c.restart(2);
  ASSERT_TRUE(h.settle());

  // It was only stopped: it comes back, is a member and Active again.
  h.c.restart(stopped);
  ASSERT_TRUE(h.settle());
  h.c.run_for(5000);
  ASSERT_TRUE(h.settle());
  for (NodeId n : h.c.up()) EXPECT_EQ(h.c.node(n)->membership().admin_state(stopped), AdminState::Active) << n;
  EXPECT_TRUE(h.c.node(1)->membership().is_member(stopped));
  ASSERT_NO_FATAL_FAILURE(expect_readable(h, stopped, users, live));
  // And takes new copies again: of new users (the old ones' mail maps,
  // spread 2, are the nodes their mail moved to).
  int on_it = 0;
  const auto fresh = some_users(8, "back");
  for (const auto& u : fresh) h.user(u);
  for (int i = 0; i < 16; ++i) {
    const ClientReply* d = h.deliver(static_cast<NodeId>(1 + i % 4), fresh[static_cast<std::size_t>(i) % fresh.size()]);
    ASSERT_EQ(d->status, Status::Ok);
    on_it += std::count(d->replicas.begin(), d->replicas.end(), stopped);
  }
  EXPECT_GT(on_it, 0);
  h.expect_invariants(true);
}

// A drained node is left with nothing (no message, profile or bucket), with
// deliveries going on all along; it can then be removed for good and
// another node lost without losing mail.
TEST(Drain, WithFewerThanRActiveNodesADeliveryStillGetsRCopies) {
  // Two nodes at R = 2, one draining (retiring one node of two before its
  // replacement is there): new mail takes the draining node rather than
  // have one copy, and the drain waits for room elsewhere.
  Harness h(2);
  const auto users = some_users(2, "few");
  mail(h, users, 2);
  ASSERT_EQ(administer(h, 1, 2, AdminState::Draining)->status, Status::Ok);
  ASSERT_TRUE(h.settle());
  const ClientReply* d = nullptr;
  for (int attempt = 0; attempt < 10; ++attempt) {
    d = h.deliver(1, users[0]);
    if (d && d->status == Status::Ok) break;
    h.c.run_for(500);
  }
  ASSERT_TRUE(d);
  ASSERT_EQ(d->status, Status::Ok) << d->detail;
  EXPECT_EQ(d->replicas.size(), 2u);
  h.c.run_for(5000);
  // Nowhere to move: the draining node keeps its copies.
  EXPECT_GT(h.c.node(2)->drain_progress().messages, 0u);
}

TEST(Drain, DrainedNodeHoldsNothingAndCanBeRemoved) {
  Harness h(5);
  const auto users = some_users(6, "drn");
  std::vector<MessageRecord> live = mail(h, users, 10);
  h.c.run_for(3000);
  const NodeId leaving = 4;
  {
    Node::DrainProgress d = h.c.node(leaving)->drain_progress();
    ASSERT_GT(d.messages, 0u);
    ASSERT_GT(d.profiles, 0u);
    ASSERT_GT(d.buckets, 0u);
  }
  ASSERT_EQ(administer(h, 2, leaving, AdminState::Draining)->status, Status::Ok);
  // Deliveries go on while it drains, through it too; each one is tried
  // again until it succeeds, as an MTA would.
  auto drained = [&] {
    Node::DrainProgress d = h.c.node(leaving)->drain_progress();
    return d.state == AdminState::Draining && d.messages == 0 && d.profiles == 0 && d.buckets == 0;
  };
  int during = 0;
  for (int i = 0; i < 40 || (!drained() && i < 400); ++i) {
    const std::string& u = users[static_cast<std::size_t>(i) % users.size()];
    const NodeId via = static_cast<NodeId>(1 + i % 5);
    const ClientReply* d = nullptr;
    for (int attempt = 0; attempt < 10; ++attempt) {
      d = h.deliver(via, u);
      if (d && d->status == Status::Ok) break;
      h.c.run_for(500);
    }
    ASSERT_TRUE(d);
    ASSERT_EQ(d->status, Status::Ok) << "delivery " << i << " during the drain: " << d->detail;
    EXPECT_EQ(std::count(d->replicas.begin(), d->replicas.end(), leaving), 0) << "new copy on the draining node";
    live.push_back(Harness::target(*d, u));
    ++during;
    h.c.run_for(100);
  }
  ASSERT_TRUE(h.c.run_until_pred(drained, 60'000));
  ASSERT_TRUE(h.c.run_until_pred([&] { return repair_unfinished(h.c, 2).empty(); }, 60'000)) << gaps(h.c);
  EXPECT_TRUE(drained());
  // Nothing of the users' is on its disk any more.
  std::size_t left = 0;
  for (const auto& [id, r] : h.c.disk(leaving)->data().records) left += r.has_body && !r.expunged;
  EXPECT_EQ(left, 0u);
  EXPECT_TRUE(h.c.disk(leaving)->data().profiles.empty());

  // Removed for good, forgotten, and another node lost: nothing is.
  h.c.destroy(leaving);
  ASSERT_TRUE(h.settle());
  ASSERT_EQ(administer(h, 1, leaving, AdminState::Gone)->status, Status::Ok);
  ASSERT_TRUE(h.settle());
  h.c.run_for(3000);
  EXPECT_TRUE(repair_unfinished(h.c, 2).empty()) << gaps(h.c);
  h.c.crash(5);
  ASSERT_TRUE(h.settle());
  std::size_t missing = 99;
  ASSERT_NO_FATAL_FAILURE(expect_readable(h, 1, users, live, &missing));
  EXPECT_EQ(missing, 0u);
  h.c.restart(5);
  ASSERT_TRUE(h.settle());
  h.expect_invariants(true);
}

// "node forget" of a node that is still a live member is refused, as is a
// node forgetting itself; nothing changes.
TEST(Repair, ForgettingALiveMemberIsRefused) {
  Harness h(3);
  const ClientReply* r = administer(h, 1, 2, AdminState::Gone);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, Status::Failed);
  EXPECT_EQ(administer(h, 1, 1, AdminState::Gone)->status, Status::Failed);
  h.c.run_for(3000);
  for (NodeId n : h.c.up()) {
    EXPECT_EQ(h.c.node(n)->membership().admin_state(2), AdminState::Active);
    EXPECT_EQ(h.c.node(n)->repair_progress().gone, 0u);
  }
  EXPECT_TRUE(h.c.converged());
  EXPECT_EQ(h.c.up().size(), 3u);
  h.expect_invariants();
}

// ---- Exactly once: a delivery's key (docs/architecture.md, "Exactly once") ----

TEST(ExactlyOnce, ARetryOfAStoredDeliveryIsAnsweredWithItsMessage) {
  Harness h(3);
  const std::string u = "eo@example.org";
  h.user(u);
  const ClientReply* first = h.deliver_keyed(2, u, "key-1");
  ASSERT_EQ(first->status, Status::Ok);
  const MsgId msg = first->msg;
  const std::uint32_t uid = first->uid;
  // The MTA's retry, through another node: the same message, nothing new.
  const ClientReply* again = h.deliver_keyed(3, u, "key-1");
  ASSERT_EQ(again->status, Status::Ok);
  EXPECT_EQ(again->msg, msg);
  EXPECT_EQ(again->uid, uid);
  EXPECT_EQ(h.count(1, u), 1u);
  // Another key, and the same key in another folder, are other deliveries.
  ASSERT_EQ(h.deliver_keyed(1, u, "key-2")->status, Status::Ok);
  EXPECT_EQ(h.count(1, u), 2u);
  const ClientReply* other = h.deliver_keyed(1, u, "key-1", "Archive");
  ASSERT_EQ(other->status, Status::Ok);
  EXPECT_NE(other->msg, msg);
  // A delivery without a key is never taken for a retry.
  ASSERT_EQ(h.deliver(1, u)->status, Status::Ok);
  ASSERT_EQ(h.deliver(1, u)->status, Status::Ok);
  EXPECT_EQ(h.count(2, u), 4u);
  h.expect_invariants();
}

// The store completed on its replicas but its answer came too late: the
// client was told to try again (the MTA's 4xx). The retry stores the same
// message again, not a second one.
TEST(ExactlyOnce, ARetryOfADeliveryWhoseAnswerWasLostStoresNoSecondCopy) {
  Harness h(3);
  const std::string u = "late@example.org";
  h.user(u);
  const Time late = CoreConfig{}.request_timeout * 2;
  bool delaying = true;
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    return delaying && e.to == 1 && std::holds_alternative<OpReply>(e.body) ? arrival + late : arrival;
  };
  const ClientReply* lost = h.deliver_keyed(1, u, "key-late");
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->status, Status::TryAgain);
  delaying = false;
  h.c.on_arrival = nullptr;
  h.c.run_for(late);
  EXPECT_EQ(h.count(2, u), 1u);  // it was stored, though its client was told otherwise
  const ClientReply* retry = h.deliver_keyed(2, u, "key-late");
  ASSERT_EQ(retry->status, Status::Ok);
  h.c.run_for(5'000);
  const ClientReply* l = h.list(3, u);
  ASSERT_EQ(l->records.size(), 1u);
  EXPECT_EQ(l->records[0].id, retry->msg);
  EXPECT_EQ(l->records[0].uid, retry->uid);
  h.expect_invariants();
}

// A delivery that was not stored, retried after one of its nodes filled
// its spool: the retry is placed anew on nodes with room (the same
// message), instead of waiting on the full node until its deadline, as
// every retry would (an MTA's queue that never empties).
TEST(ExactlyOnce, ARetryIsPlacedAnewWhenANodeOfItsFirstPlacementIsFull) {
  Harness h(3);
  const std::string u = "fill@example.org";
  h.user(u);
  // The first try's stores never arrive: its client is told to try again.
  bool holding = true;
  h.c.on_arrival = [&](const Envelope& e, Time arrival) {
    return holding && std::holds_alternative<StoreRequest>(e.body) ? arrival + 3'600'000 : arrival;
  };
  const ClientReply* first = h.deliver_keyed(1, u, "key-full");
  ASSERT_TRUE(first);
  ASSERT_EQ(first->status, Status::TryAgain);
  holding = false;
  h.c.on_arrival = nullptr;
  const NodeId mgr = h.c.node(1)->membership().manager_of(bucket_of(u, CoreConfig{}.buckets));
  const auto* mu = h.c.node(mgr)->managed_user(canonical_user(u));
  ASSERT_TRUE(mu);
  const auto& keys = mu->folders.at("INBOX").keys;
  ASSERT_TRUE(keys.count("key-full"));
  ASSERT_FALSE(keys.at("key-full").stored);
  const std::vector<NodeId> placed = keys.at("key-full").nodes;
  ASSERT_FALSE(placed.empty());
  const NodeId full = placed.front();
  h.c.node(full)->set_spool_full(true);
  h.c.run_for(2'000);  // every peer hears it with the node's next message
  const ClientReply* retry = h.deliver_keyed(2, u, "key-full");
  ASSERT_TRUE(retry);
  ASSERT_EQ(retry->status, Status::Ok) << retry->detail;
  EXPECT_EQ(std::count(retry->replicas.begin(), retry->replicas.end(), full), 0) << "placed on the full node " << full;
  EXPECT_EQ(retry->replicas.size(), 2u);
  h.c.node(full)->set_spool_full(false);
  EXPECT_EQ(h.count(3, u), 1u);
  h.expect_invariants();
}

// The user's manager dies after the delivery: its successor learns the key
// from the holders' reports; when it comes back, from the handoff and the
// reports again. The retry is answered with the message each time.
TEST(ExactlyOnce, AKeyOutlivesItsManager) {
  Harness h(4);
  const std::string u = "mgr@example.org";
  h.user(u);
  const NodeId mgr = h.c.node(1)->membership().manager_of(
      bucket_of(canonical_user(u), CoreConfig{}.buckets));
  const NodeId via = mgr == 1 ? 2 : 1;
  const ClientReply* first = h.deliver_keyed(via, u, "key-m");
  ASSERT_EQ(first->status, Status::Ok);
  const MsgId msg = first->msg;
  h.c.crash(mgr);
  ASSERT_TRUE(h.settle());
  const NodeId via2 = via == 3 || mgr == 3 ? (via == 4 || mgr == 4 ? 2 : 4) : 3;
  const ClientReply* again = h.deliver_keyed(via2, u, "key-m");
  ASSERT_EQ(again->status, Status::Ok) << again->detail;
  EXPECT_EQ(again->msg, msg);
  EXPECT_EQ(h.count(via, u), 1u);
  h.c.restart(mgr);
  ASSERT_TRUE(h.settle());
  ASSERT_EQ(h.c.node(1)->membership().manager_of(
                bucket_of(canonical_user(u), CoreConfig{}.buckets)),
            mgr);
  const ClientReply* third = h.deliver_keyed(mgr, u, "key-m");
  ASSERT_EQ(third->status, Status::Ok) << third->detail;
  EXPECT_EQ(third->msg, msg);
  EXPECT_EQ(h.count(mgr, u), 1u);
  h.expect_invariants();
}

// A key is kept delivery_key_ttl: after it, the same key is a new delivery.
TEST(ExactlyOnce, AKeyIsForgottenAfterItsTime) {
  CoreConfig cfg;
  cfg.delivery_key_ttl = 60'000;
  Harness h(3, 7, cfg);
  const std::string u = "ttl@example.org";
  h.user(u);
  ASSERT_EQ(h.deliver_keyed(1, u, "key-t")->status, Status::Ok);
  h.c.run_for(30'000);
  ASSERT_EQ(h.deliver_keyed(2, u, "key-t")->status, Status::Ok);
  EXPECT_EQ(h.count(1, u), 1u);
  h.c.run_for(cfg.delivery_key_ttl);
  ASSERT_EQ(h.deliver_keyed(2, u, "key-t")->status, Status::Ok);
  EXPECT_EQ(h.count(1, u), 2u);
  h.expect_invariants();
}

// ---- Failover: a store completes on live nodes ---------------------------------

// A replica dies as the store reaches it: the store's coordinator hears
// nothing from it, replaces it by another live node, and the delivery is
// acknowledged well before its deadline, under the new list. When the
// dead node comes back it keeps no copy the list leaves out.
// Each twice: the process killed (its address refuses: replaced at once)
// and the host lost (silent: replaced after the store's patience).
TEST(Failover, AStoreWhoseReplicaDiesCompletesOnAnotherNodeBeforeItsDeadline) {
  for (bool killed : {true, false}) {
    SCOPED_TRACE(killed ? "killed" : "host lost");
    Harness h(5);
    const std::string u = "fo@example.org";
    h.user(u);
    const ClientReply* first = h.deliver(1, u);
    ASSERT_EQ(first->status, Status::Ok);
    // Through a node that holds none of the user's mail: the front end
    // (whose client would see its connection reset) is no replica.
    const NodeId via = Harness::non_holder(Harness::target(*first, u));
    NodeId victim = kNoNode;
    h.c.on_send = [&](Envelope& e) {
      // The first copy of the next store pushed to another replica: that
      // replica dies with it.
      if (victim == kNoNode && e.from != e.to && e.to != via)
        if (const auto* p = std::get_if<Push>(&e.body); p && p->update.kind == Update::Kind::Store) {
          victim = e.to;
          h.c.at(h.c.now() + 1, [&h, v = e.to, killed] { killed ? h.c.crash(v) : h.c.power_off(v); });
        }
    };
    const Time issued = h.c.now();
    const ClientReply* r = h.deliver(via, u);
    h.c.on_send = nullptr;
    ASSERT_NE(victim, kNoNode);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, Status::Ok) << r->detail;
    EXPECT_LT(h.c.reply_time(r->req) - issued, CoreConfig{}.request_timeout / 2);
    EXPECT_EQ(std::count(r->replicas.begin(), r->replicas.end(), victim), 0);
    EXPECT_EQ(r->replicas.size(), 2u);
    for (NodeId n : r->replicas) EXPECT_TRUE(h.c.node(n)->replicator().records().count(r->msg)) << "n" << n;
    h.c.restart(victim);
    ASSERT_TRUE(h.settle());
    h.c.run_for(10'000);
    const auto& held = h.c.node(victim)->replicator().records();
    auto it = held.find(r->msg);
    EXPECT_TRUE(it == held.end() || !it->second.has_body) << "n" << victim << " kept a copy the new list leaves out";
    h.expect_invariants();
  }
}

// The primary dies before it pushes anything: the front end hears nothing
// from it (or is refused) and asks the next replica, which replaces it.
// Deliveries go through each node in turn until one is not the primary (a
// user's mail is on two nodes, so one of the first three is not).
TEST(Failover, AStoreWhosePrimaryDiesCompletesThroughTheNextReplica) {
  for (bool killed : {true, false}) {
    SCOPED_TRACE(killed ? "killed" : "host lost");
    Harness h(5);
    const std::string u = "fp@example.org";
    h.user(u);
    ASSERT_EQ(h.deliver(1, u)->status, Status::Ok);
    NodeId victim = kNoNode;
    for (NodeId via = 1; via <= 3 && victim == kNoNode; ++via) {
      h.c.on_send = [&](Envelope& e) {
        if (victim == kNoNode && e.from == via && e.to != via && std::holds_alternative<StoreRequest>(e.body)) {
          victim = e.to;
          killed ? h.c.crash(victim) : h.c.power_off(victim);  // before the request arrives
        }
      };
      const Time issued = h.c.now();
      const ClientReply* r = h.deliver(via, u);
      h.c.on_send = nullptr;
      ASSERT_TRUE(r);
      ASSERT_EQ(r->status, Status::Ok) << r->detail;
      if (victim == kNoNode) continue;  // `via` was the primary
      EXPECT_LT(h.c.reply_time(r->req) - issued, CoreConfig{}.request_timeout);
      EXPECT_EQ(std::count(r->replicas.begin(), r->replicas.end(), victim), 0);
    }
    ASSERT_NE(victim, kNoNode) << "no delivery went through a node other than its primary";
    h.c.restart(victim);
    ASSERT_TRUE(h.settle());
    h.expect_invariants();
  }
}

// ---- operations made of several (composite.cc) ----------------------------

namespace {
// One delivery to several recipients through node `via`; each recipient's
// acknowledgement is recorded for the invariant checker.
const ClientReply* deliver_all(Harness& h, NodeId via, const std::vector<std::string>& rcpts,
                               const std::string& folder = "INBOX") {
  const Time issued = h.c.now();
  const ClientReply* r = h.run(via, [&](Node& n, Time now, std::uint64_t req) {
    n.deliver_all(now, req, rcpts, folder, std::string("Subject: all\r\n\r\nto each\r\n"));
  });
  if (!r) return r;
  for (const Delivered& d : r->delivered) {
    if (d.status != Status::Ok) continue;
    Acked a;
    a.target.id = d.msg;
    a.target.user = d.user;
    a.target.folder = folder;
    a.target.replicas = d.replicas;
    a.uidvalidity = d.uidvalidity;
    a.uid = d.uid;
    a.issued = issued;
    a.acked = h.c.reply_time(r->req);
    h.log.delivered.push_back(a);
  }
  return r;
}

UserUpdateRequest folder_op(const std::string& u, UserUpdateRequest::Op op, const std::string& folder) {
  UserUpdateRequest r;
  r.user = u;
  r.op = op;
  r.folder = folder;
  return r;
}
}  // namespace

// The milter's and LMTP's case: one body, several recipients, each stored
// as its own message with its own result, a missing user failing alone.
TEST(Delivery, EachOfSeveralRecipientsGetsItsOwnMessageAndResult) {
  Harness h(4);
  h.user("ann@example.org");
  h.user("bob@example.org");
  h.user("cy@example.org");
  const std::vector<std::string> rcpts = {"ann@example.org", "Bob@Example.org", "nobody@example.org",
                                          "cy@example.org"};
  const ClientReply* r = deliver_all(h, 2, rcpts);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, Status::NoSuchUser);  // the one failure
  ASSERT_EQ(r->delivered.size(), 4u);
  std::set<MsgId> ids;
  for (std::size_t i = 0; i < rcpts.size(); ++i) {
    const Delivered& d = r->delivered[i];
    EXPECT_EQ(d.recipient, rcpts[i]);
    EXPECT_EQ(d.user, canonical_user(rcpts[i]));
    if (i == 2) {
      EXPECT_EQ(d.status, Status::NoSuchUser);
      continue;
    }
    ASSERT_EQ(d.status, Status::Ok) << d.recipient << ": " << d.detail;
    EXPECT_EQ(d.replicas.size(), 2u);
    EXPECT_GT(d.uid, 0u);
    ids.insert(d.msg);
  }
  EXPECT_EQ(ids.size(), 3u);  // a message each
  for (const std::string u : {"ann@example.org", "bob@example.org", "cy@example.org"}) {
    const ClientReply* l = h.list(4, u);
    ASSERT_EQ(l->records.size(), 1u) << u;
    MessageRecord t = l->records[0];
    t.user = u;
    const ClientReply* f = h.fetch(3, t);
    ASSERT_EQ(f->status, Status::Ok);
    EXPECT_EQ(f->body.bytes(), "Subject: all\r\n\r\nto each\r\n");
  }
  // Every recipient there: the whole delivery is Ok.
  const ClientReply* all = deliver_all(h, 1, {"ann@example.org", "cy@example.org"});
  EXPECT_EQ(all->status, Status::Ok);
  EXPECT_EQ(h.count(2, "ann@example.org"), 2u);
  h.expect_invariants();
}

// A replica dies while a delivery to several recipients is under way: the
// recipients after it are placed on live nodes, and none is refused.
TEST(Delivery, SeveralRecipientsThroughACrashAreAllStoredOnLiveNodes) {
  Harness h(5);
  std::vector<std::string> rcpts;
  for (int i = 0; i < 6; ++i) {
    rcpts.push_back("r" + std::to_string(i) + "@example.org");
    h.user(rcpts.back());
  }
  NodeId victim = kNoNode;
  h.c.on_send = [&](Envelope& e) {
    if (victim == kNoNode && e.from == 1 && e.to != 1 && std::holds_alternative<StoreRequest>(e.body)) {
      victim = e.to;
      h.c.crash(victim);
    }
  };
  const ClientReply* r = deliver_all(h, 1, rcpts);
  h.c.on_send = nullptr;
  ASSERT_TRUE(r);
  ASSERT_NE(victim, kNoNode);
  EXPECT_EQ(r->status, Status::Ok);
  for (const Delivered& d : r->delivered) EXPECT_EQ(d.status, Status::Ok) << d.recipient << ": " << d.detail;
  ASSERT_TRUE(h.settle());
  for (const std::string& u : rcpts) EXPECT_EQ(h.count(1, u), 1u) << u;
  h.c.restart(victim);
  ASSERT_TRUE(h.settle());
  h.expect_invariants();
}

// A folder's deletion expunges every message (on every holder, one that
// was down included once it is back), then the folder: its name is free,
// and a folder made again under it is a new lineage.
TEST(Users, DeletingAFolderExpungesItsMailEverywhereThenTheFolder) {
  Harness h(4);
  const std::string u = "del@example.org";
  h.user(u);
  ASSERT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) {
              n.update_user(now, req, folder_op(u, UserUpdateRequest::Op::CreateFolder, "Work"));
            })->status,
            Status::Ok);
  for (int i = 0; i < 6; ++i) ASSERT_EQ(h.deliver(1 + i % 4, u, "Work")->status, Status::Ok);
  ASSERT_EQ(h.deliver(2, u)->status, Status::Ok);  // INBOX: kept
  const ClientReply* before = h.c.wait(h.c.list(3, u, "Work"));
  ASSERT_EQ(before->records.size(), 6u);
  h.c.crash(4);
  ASSERT_TRUE(h.settle());
  const ClientReply* d = h.run(2, [&](Node& n, Time now, std::uint64_t req) { n.delete_folder(now, req, u, "Work"); });
  ASSERT_EQ(d->status, Status::Ok) << d->detail;
  const ClientReply* p = h.run(3, [&](Node& n, Time now, std::uint64_t req) { n.get_user(now, req, u); });
  ASSERT_EQ(p->status, Status::Ok);
  ASSERT_TRUE(p->profile->folders.count("Work"));
  EXPECT_TRUE(p->profile->folders.at("Work").deleted);
  EXPECT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) { n.delete_folder(now, req, u, "Work"); })->status,
            Status::NotFound);
  h.c.restart(4);
  ASSERT_TRUE(h.settle());
  h.c.run_for(5000);
  for (NodeId n = 1; n <= 4; ++n)
    for (const auto& [id, r] : h.c.node(n)->replicator().records()) {
      if (r.user == u && r.folder == "Work") {
        EXPECT_TRUE(r.expunged) << "n" << n << " still holds a Work message";
      }
    }
  EXPECT_EQ(h.count(4, u), 1u);  // INBOX as it was
  ASSERT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) {
              n.update_user(now, req, folder_op(u, UserUpdateRequest::Op::CreateFolder, "Work"));
            })->status,
            Status::Ok);
  const ClientReply* again = h.c.wait(h.c.list(4, u, "Work"));
  EXPECT_TRUE(again->records.empty());
  EXPECT_NE(again->uidvalidity, before->uidvalidity);
  h.expect_invariants();
}

// Renaming INBOX moves its messages into a new folder and leaves INBOX
// there, empty; any other folder is renamed with its UIDVALIDITY and UIDs.
TEST(Uids, RenamingInboxMovesItsMailToANewFolderAndAnyOtherKeepsItsUids) {
  Harness h(4);
  const std::string u = "inbox@example.org";
  h.user(u);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(h.deliver(1 + i % 4, u)->status, Status::Ok);
  const ClientReply* inbox = h.c.wait(h.c.list(2, u, "INBOX"));
  ASSERT_EQ(inbox->records.size(), 4u);
  auto rename = [&](const std::string& from, const std::string& to) {
    return h.run(3, [&](Node& n, Time now, std::uint64_t req) { n.rename_folder(now, req, u, from, to); });
  };
  ASSERT_EQ(rename("INBOX", "Old")->status, Status::Ok);
  const ClientReply* old = h.c.wait(h.c.list(4, u, "Old"));
  ASSERT_EQ(old->status, Status::Ok);
  ASSERT_EQ(old->records.size(), 4u);
  std::set<MsgId> moved;
  for (const auto& m : old->records) moved.insert(m.id);
  for (const auto& m : inbox->records) EXPECT_TRUE(moved.count(m.id));  // the same messages
  EXPECT_EQ(h.count(1, u), 0u);  // INBOX stays, emptied
  ASSERT_EQ(h.deliver(2, u)->status, Status::Ok);
  EXPECT_EQ(h.count(1, u), 1u);
  // Into a folder that exists: refused, nothing moved.
  EXPECT_EQ(rename("INBOX", "Old")->status, Status::Exists);
  EXPECT_EQ(h.count(1, u), 1u);
  ASSERT_EQ(rename("Old", "Older")->status, Status::Ok);
  const ClientReply* older = h.c.wait(h.c.list(1, u, "Older"));
  EXPECT_EQ(older->uidvalidity, old->uidvalidity);
  expect_same_messages_and_uids(*old, *older);
  h.expect_invariants();
}

// A lookup's usage: none asked and no quota, none given; asked, or with a
// quota, the bytes of the user's live mail, right after its manager died
// too (gathered from every node while the new manager cannot count). The
// password hash never leaves the node.
TEST(Users, ALookupCarriesTheUsersUsageWhenAskedOrUnderAQuota) {
  Harness h(4);
  const std::string u = "use@example.org";
  h.user(u);
  const std::size_t size = std::string("Subject: t\r\n\r\nx\r\n").size();
  for (NodeId via = 1; via <= 3; ++via) ASSERT_EQ(h.deliver(via, u)->status, Status::Ok);
  h.c.run_for(2000);
  auto lookup = [&](NodeId via, bool with_usage) {
    return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.lookup_user(now, req, u, with_usage); });
  };
  const ClientReply* plain = lookup(2, false);
  ASSERT_EQ(plain->status, Status::Ok);
  EXPECT_FALSE(plain->used_bytes);
  EXPECT_TRUE(plain->profile->password_hash.empty());
  const ClientReply* asked = lookup(2, true);
  ASSERT_TRUE(asked->used_bytes);
  EXPECT_EQ(*asked->used_bytes, 3 * size);
  UserUpdateRequest q;
  q.user = u;
  q.op = UserUpdateRequest::Op::SetQuota;
  q.quota_bytes = 100 * size;
  ASSERT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, q); })->status, Status::Ok);
  const ClientReply* quota = lookup(3, false);
  ASSERT_TRUE(quota->used_bytes);
  EXPECT_EQ(*quota->used_bytes, 3 * size);
  const NodeId mgr = quota->manager;
  h.c.crash(mgr);
  ASSERT_TRUE(h.settle());
  const NodeId via = mgr == 1 ? 2 : 1;
  const ClientReply* after = lookup(via, false);
  ASSERT_EQ(after->status, Status::Ok) << after->detail;
  ASSERT_TRUE(after->used_bytes);
  EXPECT_EQ(*after->used_bytes, 3 * size);
  EXPECT_NE(after->manager, mgr);
  EXPECT_EQ(lookup(via, true)->profile->quota_bytes, 100 * size);
  h.c.restart(mgr);
  ASSERT_TRUE(h.settle());
  const ClientReply* none = h.run(via, [&](Node& n, Time now, std::uint64_t req) {
    n.lookup_user(now, req, "nobody@example.org", true);
  });
  EXPECT_EQ(none->status, Status::NoSuchUser);  // every node back: a known answer
  h.expect_invariants();
}

// A password is checked against its stored hash (the sim's users have
// "{PLAIN}secret"; a crypt(3) hash set by SetPassword), a disabled user
// fails whatever the password, and a user's failures are limited per node:
// past auth_failures_per_user, even the right password is TryAgain until
// the window refills.
TEST(Users, APasswordIsCheckedAgainstItsHashAndGuessesAreLimitedPerNode) {
  CoreConfig cfg;
  cfg.auth_failures_per_user = 3;
  cfg.auth_failure_window = 30'000;
  Harness h(3, 7, cfg);
  const std::string u = "pw@example.org";
  h.user(u);
  auto auth = [&](NodeId via, const std::string& who, const std::string& pw) {
    return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.authenticate(now, req, who, pw); });
  };
  const ClientReply* ok = auth(2, u, "secret");
  ASSERT_EQ(ok->status, Status::Ok) << ok->detail;
  EXPECT_EQ(ok->profile->user, u);
  EXPECT_TRUE(ok->profile->password_hash.empty());
  EXPECT_EQ(auth(2, "nobody@example.org", "secret")->status, Status::NoSuchUser);
  UserUpdateRequest set;
  set.user = u;
  set.op = UserUpdateRequest::Op::SetPassword;
  // crypt(3) SHA-512 of "n3w-pass" with salt "porcupine": what doveadm pw -s SHA512-CRYPT writes.
  set.password_hash =
      "{SHA512-CRYPT}$6$porcupine$okYXQw8nNiDC40xIkTNNC2kJCIQPik.2VzTvO1qYzQpXeAdbaJkC.8av6sOan.ckCSGLPgcp4LYZcSq7"
      "HJIKm.";
  ASSERT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, set); })->status,
            Status::Ok);
  EXPECT_EQ(auth(2, u, "n3w-pass")->status, Status::Ok);
  for (int i = 0; i < 3; ++i) {
    const ClientReply* bad = auth(2, u, "guess" + std::to_string(i));
    EXPECT_EQ(bad->status, Status::AuthFailed);
    EXPECT_EQ(bad->detail, "password mismatch");
  }
  const ClientReply* held = auth(2, u, "n3w-pass");
  EXPECT_EQ(held->status, Status::TryAgain);
  EXPECT_NE(held->detail.find("too many failed logins"), std::string::npos);
  EXPECT_EQ(auth(3, u, "n3w-pass")->status, Status::Ok);  // another node's budget
  h.c.run_for(cfg.auth_failure_window / 3 + 1000);          // one failure refilled
  EXPECT_EQ(auth(2, u, "n3w-pass")->status, Status::Ok);
  UserUpdateRequest off;
  off.user = u;
  off.op = UserUpdateRequest::Op::Disable;
  ASSERT_EQ(h.run(1, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, off); })->status,
            Status::Ok);
  const ClientReply* disabled = auth(3, u, "n3w-pass");
  EXPECT_EQ(disabled->status, Status::AuthFailed);
  EXPECT_EQ(disabled->detail, "user disabled");
  h.expect_invariants();
}

// A side of a split with no copy of a user's profile (R = 2: both holders
// are on the other side, with its manager) still lets the user log in and read there, from
// the profile a front end of that side got before the split: the manager
// takes it (Manager::User::adopted). Nothing is written to it there: deliveries
// wait (TryAgain: Postfix keeps them queued) and user changes are refused
// until the heal. A node that never looked the user up has no memory to
// offer; once another has offered it, the side's manager answers it too.
// After the heal the holders' copy wins: a password changed on their side
// during the split is the one that works everywhere.
TEST(Users, ASideWithoutTheProfileAnswersFromAFrontEndsMemoryOfIt) {
  std::size_t read_on_near_side = 0;
  for (std::uint64_t seed : {7u, 8u, 9u}) {
    Harness h(5, seed);
    const std::string u = "far@example.org";
    h.user(u);
    for (NodeId via = 1; via <= 5; ++via) ASSERT_EQ(h.deliver(via, u)->status, Status::Ok) << "seed " << seed;
    const std::vector<NodeId> holders = h.profile_holders(u);
    ASSERT_EQ(holders.size(), 2u);
    // Its manager goes with the holders: the near side's new manager knows
    // the user only from its reports (none has the profile).
    std::set<NodeId> near, far(holders.begin(), holders.end());
    far.insert(h.c.node(1)->membership().manager_of(bucket_of(canonical_user(u), 1024)));
    for (NodeId n = 1; n <= 5; ++n)
      if (!far.count(n)) near.insert(n);
    const NodeId reader = *near.begin(), stranger = *near.rbegin(), holder = holders[0];
    auto auth = [&](NodeId via, const std::string& pw) {
      return h.run(via, [&](Node& n, Time now, std::uint64_t req) { n.authenticate(now, req, u, pw); });
    };
    ASSERT_EQ(auth(reader, "secret")->status, Status::Ok);  // the reader's node remembers the profile
    const std::size_t before = h.count(reader, u);

    h.c.partition({near, far});
    ASSERT_TRUE(h.c.run_until_pred([&] {
      return h.c.node(reader)->membership().members().size() == near.size() &&
             h.c.node(holder)->membership().members().size() == far.size();
    }, 20'000)) << "seed " << seed;
    h.c.run_for(3000);
    // The stranger never looked the user up: nothing on its side to answer with.
    EXPECT_EQ(auth(stranger, "secret")->status, Status::TryAgain) << "seed " << seed;
    const ClientReply* in = auth(reader, "secret");
    ASSERT_EQ(in->status, Status::Ok) << "seed " << seed << ": " << in->detail;
    EXPECT_TRUE(in->profile->password_hash.empty());
    EXPECT_EQ(auth(reader, "wrong")->status, Status::AuthFailed);
    EXPECT_EQ(auth(stranger, "secret")->status, Status::Ok) << "seed " << seed;  // the manager has it now
    const ClientReply* l = h.list(reader, u);
    ASSERT_EQ(l->status, Status::Ok) << "seed " << seed << ": " << l->detail;
    // What this side holds (spread placement may have put none of it here).
    EXPECT_LE(l->records.size(), before);
    for (const auto& rec : l->records)
      EXPECT_TRUE(std::any_of(rec.replicas.begin(), rec.replicas.end(), [&](NodeId n) { return near.count(n) > 0; }));
    read_on_near_side += l->records.size();
    EXPECT_EQ(h.deliver(reader, u)->status, Status::TryAgain) << "seed " << seed;
    UserUpdateRequest pw;
    pw.user = u;
    pw.op = UserUpdateRequest::Op::SetPassword;
    pw.password_hash = "{PLAIN}near-side";
    EXPECT_EQ(h.run(reader, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, pw); })->status,
              Status::TryAgain);
    // The holders' side changes the password meanwhile.
    pw.password_hash = "{PLAIN}far-side";
    ASSERT_EQ(h.run(holder, [&](Node& n, Time now, std::uint64_t req) { n.update_user(now, req, pw); })->status,
              Status::Ok);
    EXPECT_EQ(auth(reader, "secret")->status, Status::Ok);  // not seen here until the heal

    h.c.heal();
    ASSERT_TRUE(h.settle()) << "seed " << seed;
    h.c.run_for(5000);
    EXPECT_EQ(auth(reader, "far-side")->status, Status::Ok) << "seed " << seed;
    EXPECT_EQ(auth(reader, "secret")->status, Status::AuthFailed) << "seed " << seed;
    EXPECT_EQ(h.deliver(reader, u)->status, Status::Ok) << "seed " << seed;
    EXPECT_EQ(h.count(stranger, u), before + 1) << "seed " << seed;
    h.expect_invariants();
  }
  EXPECT_GT(read_on_near_side, 0u);  // some seed put mail on the near side, and it was read there
}
