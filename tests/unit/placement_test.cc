// SPDX-License-Identifier: MIT
// placement_test.cc - table tests for spread-based choice of primary and replica nodes.
#include "core/placement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>

namespace porcupine {
namespace {

using Nodes = std::vector<NodeId>;

struct Row {
  std::string name;
  PlacementInput in;
  Nodes want;
  bool want_exceeded = false;
};

void check(const Row& r) {
  SCOPED_TRACE(r.name);
  const Placement p = choose_placement(r.in);
  EXPECT_EQ(p.nodes, r.want);
  EXPECT_EQ(p.spread_exceeded, r.want_exceeded);
}

// Loads are distinct in these tables so the salt never matters.
TEST(Placement, PrimaryIsLeastLoadedAmongMailMapNodes) {
  const Row rows[] = {
      {"second map node lighter", {{1, 2}, {{1, 5}, {2, 3}, {3, 0}}, 2, 1, 0}, {2}},
      {"first map node lighter", {{2, 1}, {{1, 1}, {2, 3}, {3, 0}}, 2, 1, 0}, {1}},
      {"map above spread still all candidates", {{1, 2, 3}, {{1, 9}, {2, 8}, {3, 7}, {4, 0}}, 2, 1, 0}, {3}},
      {"single map node, spread 1", {{4}, {{1, 0}, {4, 50}}, 1, 1, 0}, {4}},
  };
  for (const Row& r : rows) check(r);
}

TEST(Placement, TopsUpToSpreadWithLeastLoadedOthers) {
  const Row rows[] = {
      {"one map node, spread 3", {{1}, {{1, 9}, {2, 1}, {3, 2}, {4, 0}, {5, 7}}, 3, 3, 0}, {4, 2, 1}},
      {"one map node, spread 2: 4 joins, 2 is only a replica",
       {{1}, {{1, 9}, {2, 1}, {3, 2}, {4, 0}, {5, 7}}, 2, 3, 0}, {4, 1, 2}},
      {"new user", {{}, {{1, 9}, {2, 1}, {3, 2}, {4, 0}}, 2, 2, 0}, {4, 2}},
      {"new user, spread 1: replica is next least loaded", {{}, {{1, 9}, {2, 1}, {3, 2}}, 1, 2, 0}, {2, 3}},
  };
  for (const Row& r : rows) check(r);
}

TEST(Placement, DownMailMapNodeIsSkippedAndSpreadExceededWhenMapWasFull) {
  const Row rows[] = {
      {"map at spread, one down", {{1, 2}, {{2, 5}, {3, 1}, {4, 2}}, 2, 2, 0}, {3, 2}, true},
      {"map at spread, one full", {{1, 2}, {{1, 0, true}, {2, 5}, {3, 1}, {4, 2}}, 2, 2, 0}, {3, 2}, true},
      {"map at spread, one down, outsider not taken", {{1, 2}, {{2, 0}, {3, 5}}, 2, 1, 0}, {2}, false},
      {"map below spread, one down", {{1}, {{2, 5}, {3, 1}}, 2, 2, 0}, {3, 2}, false},
      {"map below spread of 3, one down", {{1, 2}, {{2, 5}, {3, 1}, {4, 2}}, 3, 2, 0}, {3, 4}, false},
      {"all map nodes down", {{1, 2}, {{3, 4}, {4, 2}, {5, 3}}, 2, 2, 0}, {4, 5}, true},
      {"map nodes up, no outsider", {{1, 2}, {{1, 5}, {2, 4}, {3, 0}}, 2, 2, 0}, {2, 1}, false},
      {"map above spread, one down, R needs an outsider", {{1, 2, 3}, {{1, 1}, {2, 2}, {4, 3}, {5, 4}}, 2, 3, 0}, {1, 2, 4}, true},
      {"R above spread, map all up: not exceeded", {{1, 2}, {{1, 1}, {2, 2}, {4, 3}}, 2, 3, 0}, {1, 2, 4}, false},
  };
  for (const Row& r : rows) check(r);
}

// A hot user: the nodes a message would go to are busy (at least twice the
// load of the least-loaded other node, plus 8) and give way to idle others,
// which join the user's nodes; one that is not busy keeps its place.
TEST(Placement, ABusyUsersNodesGiveWayToIdleOnes) {
  auto grow = [](PlacementInput in) {
    in.grow_when_busy = true;
    return in;
  };
  struct GrowRow {
    std::string name;
    PlacementInput in;
    Nodes want;
    bool grown;
  };
  const GrowRow rows[] = {
      {"both busy: two others take their places", grow({{1, 2}, {{1, 10}, {2, 12}, {3, 0}, {4, 1}}, 2, 2, 0}), {3, 4}, true},
      {"one busy: the idle one and the other map node", grow({{1, 2}, {{1, 1}, {2, 12}, {3, 0}}, 2, 2, 0}), {3, 1}, true},
      {"below the margin: the user's own", grow({{1, 2}, {{1, 8}, {2, 9}, {3, 1}}, 2, 2, 0}), {1, 2}, false},
      {"at the margin: busy", grow({{1, 2}, {{1, 9}, {2, 10}, {3, 1}, {4, 13}}, 2, 2, 0}), {3, 1}, true},
      {"all about as loaded: the user's own", grow({{1, 2}, {{1, 20}, {2, 21}, {3, 22}}, 2, 2, 0}), {1, 2}, false},
      {"without grow_when_busy: the user's own", {{1, 2}, {{1, 10}, {2, 12}, {3, 0}, {4, 1}}, 2, 2, 0}, {1, 2}, false},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(r.name);
    const Placement p = choose_placement(r.in);
    EXPECT_EQ(p.nodes, r.want);
    EXPECT_EQ(p.spread_grown, r.grown);
    EXPECT_FALSE(p.spread_exceeded);
  }
}

TEST(Placement, FullNodesAreNeverChosen) {
  const Row rows[] = {
      {"full map node", {{1, 2}, {{1, 0, true}, {2, 5}, {3, 9}}, 2, 2, 0}, {2, 3}, true},
      {"lightest other full", {{}, {{1, 0, true}, {2, 5}, {3, 9}}, 2, 3, 0}, {2, 3}},
      {"all but one full", {{1}, {{1, 0, true}, {2, 0, true}, {3, 9}}, 2, 3, 0}, {3}},
      {"all full", {{1}, {{1, 0, true}, {2, 0, true}}, 2, 2, 0}, {}},
  };
  for (const Row& r : rows) check(r);
}

TEST(Placement, ReplicasAreNextCandidatesThenLeastLoadedOthers) {
  const Row rows[] = {
      {"candidates before lighter others", {{1, 2, 3}, {{1, 5}, {2, 1}, {3, 3}, {4, 0}, {5, 2}}, 2, 4, 0}, {2, 3, 1, 4}},
      {"others by load", {{1}, {{1, 5}, {2, 1}, {3, 3}, {4, 0}, {5, 2}}, 1, 5, 0}, {1, 4, 2, 5, 3}},
      {"top-up counts as candidate", {{1}, {{1, 5}, {2, 1}, {3, 3}, {4, 0}}, 2, 3, 0}, {4, 1, 2}},
  };
  for (const Row& r : rows) check(r);
}

TEST(Placement, ResultHasMinOfReplicasAndUsableNodesWithoutDuplicates) {
  const Row rows[] = {
      {"R below usable", {{1}, {{1, 1}, {2, 2}, {3, 3}}, 2, 2, 0}, {1, 2}},
      {"R above usable", {{1}, {{1, 1}, {2, 2}, {3, 3}}, 2, 5, 0}, {1, 2, 3}},
      {"R zero", {{1}, {{1, 1}, {2, 2}}, 2, 0, 0}, {}},
      {"duplicated map ids", {{1, 1, 2, 2, 1}, {{1, 3}, {2, 2}, {3, 0}}, 2, 3, 0}, {2, 1, 3}},
      {"duplicated map ids count once toward spread", {{1, 1}, {{1, 3}, {2, 2}, {3, 0}}, 2, 2, 0}, {3, 1}},
      {"duplicated live ids", {{1}, {{1, 3}, {1, 3}, {2, 2}, {2, 2}}, 2, 4, 0}, {2, 1}},
  };
  for (const Row& r : rows) {
    check(r);
    const Nodes got = choose_placement(r.in).nodes;
    EXPECT_EQ(std::set<NodeId>(got.begin(), got.end()).size(), got.size()) << r.name;
  }
}

TEST(Placement, EmptyWhenNothingIsLive) {
  const Row rows[] = {
      {"no live nodes", {{1, 2}, {}, 2, 2, 0}, {}},
      {"no live nodes, no map", {{}, {}, 2, 2, 0}, {}},
      {"only full nodes", {{}, {{1, 0, true}}, 2, 2, 0}, {}},
  };
  for (const Row& r : rows) check(r);
}

TEST(Placement, InputOrderDoesNotMatter) {
  PlacementInput in{{3, 1}, {{1, 2}, {2, 2}, {3, 2}, {4, 2}, {5, 0}}, 3, 3, 77};
  const Placement want = choose_placement(in);
  std::sort(in.live.begin(), in.live.end(), [](const NodeLoad& a, const NodeLoad& b) { return a.id < b.id; });
  do {
    std::reverse(in.mail_map.begin(), in.mail_map.end());
    const Placement got = choose_placement(in);
    ASSERT_EQ(got.nodes, want.nodes);
    ASSERT_EQ(got.spread_exceeded, want.spread_exceeded);
  } while (std::next_permutation(in.live.begin(), in.live.end(),
                                 [](const NodeLoad& a, const NodeLoad& b) { return a.id < b.id; }));
}

TEST(Placement, EqualLoadsAreSpreadAcrossUsersBySalt) {
  std::map<NodeId, int> primary;
  std::set<Nodes> distinct;
  for (std::uint64_t salt = 0; salt < 1000; ++salt) {
    const PlacementInput in{{}, {{1, 7}, {2, 7}, {3, 7}, {4, 7}}, 2, 2, salt};
    const Placement p = choose_placement(in);
    ASSERT_EQ(p.nodes.size(), 2u);
    EXPECT_EQ(choose_placement(in).nodes, p.nodes) << "deterministic for one salt";
    ++primary[p.nodes[0]];
    distinct.insert(p.nodes);
  }
  for (NodeId n = 1; n <= 4; ++n) EXPECT_GE(primary[n], 150) << "node " << n;
  EXPECT_EQ(distinct.size(), 12u) << "every ordered pair of 4 nodes occurs";
}

TEST(Placement, LoadBeatsSaltAndSaltBeatsNodeId) {
  // Whatever the salt, a strictly lighter candidate is primary.
  for (std::uint64_t salt = 0; salt < 100; ++salt) {
    const PlacementInput in{{1, 2}, {{1, 4}, {2, 3}}, 2, 2, salt};
    EXPECT_EQ(choose_placement(in).nodes, (Nodes{2, 1}));
  }
  // With equal loads the lower id does not always win.
  int lower_first = 0;
  for (std::uint64_t salt = 0; salt < 100; ++salt)
    lower_first += choose_placement({{1, 2}, {{1, 4}, {2, 4}}, 2, 2, salt}).nodes[0] == 1;
  EXPECT_GT(lower_first, 20);
  EXPECT_LT(lower_first, 80);
}

}  // namespace
}  // namespace porcupine
