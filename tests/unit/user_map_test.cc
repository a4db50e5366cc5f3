// SPDX-License-Identifier: MIT
// user_map_test.cc - table tests for bucket targets and the minimal-move user-map reassignment.
#include "core/user_map.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>

namespace porcupine {
namespace {

using Members = std::vector<MemberWeight>;

std::map<NodeId, std::uint32_t> counts(const UserMap& map) {
  std::map<NodeId, std::uint32_t> c;
  for (NodeId n : map) ++c[n];
  return c;
}

std::map<NodeId, std::uint32_t> targets_by_id(const Members& members, std::uint32_t buckets) {
  const auto t = bucket_targets(members, buckets);
  std::map<NodeId, std::uint32_t> out;
  for (std::size_t i = 0; i < members.size(); ++i) out[members[i].id] = t[i];
  return out;
}

std::string describe(const Members& members) {
  std::string s;
  for (const auto& m : members) s += std::to_string(m.id) + "w" + std::to_string(m.weight) + " ";
  return s;
}

TEST(UserMap, TargetsFollowWeightsAndRemaindersGoToLargestFractionThenLowerId) {
  struct Row {
    Members members;
    std::uint32_t buckets;
    std::vector<std::uint32_t> want;
  };
  const Row rows[] = {
      {{{1, 1}, {2, 1}, {3, 2}}, 1024, {256, 256, 512}},
      {{{3, 2}, {1, 1}, {2, 1}}, 1024, {512, 256, 256}},  // result follows input order
      {{{1, 1}, {2, 1}, {3, 1}}, 1024, {342, 341, 341}},  // equal fractions: lower id first
      {{{3, 1}, {2, 1}, {1, 1}}, 1024, {341, 341, 342}},
      {{{1, 1}, {2, 1}, {3, 1}}, 10, {4, 3, 3}},
      {{{1, 1}, {2, 2}}, 10, {3, 7}},          // 3.33 and 6.67: the larger fraction wins
      {{{1, 2}, {2, 1}, {3, 1}}, 3, {1, 1, 1}},  // 1.5, .75, .75: both .75 beat the lower id's .5
      {{{7, 1}}, 1024, {1024}},
      {{{1, 1}, {2, 1}}, 0, {0, 0}},
      {{{1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}}, 2, {1, 1, 0, 0, 0}},
      {{}, 1024, {}},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(describe(r.members) + "B=" + std::to_string(r.buckets));
    EXPECT_EQ(bucket_targets(r.members, r.buckets), r.want);
  }
}

TEST(UserMap, InitialAssignmentFromEmptyMapIsEven) {
  const Members rows[] = {
      {{1, 1}},
      {{1, 1}, {2, 1}},
      {{1, 1}, {2, 1}, {3, 1}},
      {{1, 1}, {2, 1}, {3, 2}},
      {{10, 3}, {4, 1}, {99, 5}, {7, 1}, {5, 2}},
  };
  for (const Members& members : rows) {
    SCOPED_TRACE(describe(members));
    const UserMap map = assign_buckets({}, members, 1024);
    ASSERT_EQ(map.size(), 1024u);
    EXPECT_EQ(counts(map), targets_by_id(members, 1024));
  }
}

TEST(UserMap, EmptyMembersGiveAllNoNode) {
  const UserMap olds[] = {{}, UserMap(16, 3), UserMap(8, kNoNode)};
  for (const UserMap& old : olds) EXPECT_EQ(assign_buckets(old, {}, 16), UserMap(16, kNoNode));
}

TEST(UserMap, OldMapOfAnotherSizeIsTreatedAsUnassigned) {
  const Members members = {{1, 1}, {2, 1}};
  const UserMap fresh = assign_buckets({}, members, 8);
  const UserMap olds[] = {UserMap(4, 2), UserMap(16, 2), {2, 2, 2, 2, 2, 2, 2}};
  for (const UserMap& old : olds) EXPECT_EQ(assign_buckets(old, members, 8), fresh);
  EXPECT_EQ(fresh, (UserMap{1, 1, 1, 1, 2, 2, 2, 2}));
}

TEST(UserMap, LeaveMovesOnlyDepartedNodesBuckets) {
  struct Row {
    Members before;
    NodeId leaver;
    std::uint32_t buckets;
  };
  const Row rows[] = {
      {{{1, 1}, {2, 1}, {3, 1}}, 2, 1024},
      {{{1, 1}, {2, 1}, {3, 1}, {4, 1}}, 1, 1024},
      {{{1, 1}, {2, 1}, {3, 1}, {4, 1}}, 4, 1000},
      {{{1, 1}, {2, 1}, {3, 2}}, 3, 1024},
      {{{1, 1}, {2, 1}, {3, 2}}, 1, 1024},
      {{{5, 1}, {6, 1}}, 5, 7},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(describe(r.before) + "leaver " + std::to_string(r.leaver));
    const UserMap old = assign_buckets({}, r.before, r.buckets);
    Members after = r.before;
    std::erase_if(after, [&](const MemberWeight& m) { return m.id == r.leaver; });
    const UserMap now = assign_buckets(old, after, r.buckets);

    for (Bucket b = 0; b < r.buckets; ++b) {
      if (old[b] != r.leaver) {
        EXPECT_EQ(now[b], old[b]) << "bucket " << b;
      }
    }
    EXPECT_EQ(buckets_moved(old, now), counts(old)[r.leaver]);
    EXPECT_EQ(counts(now), targets_by_id(after, r.buckets));
  }
}

TEST(UserMap, JoinMovesExactlyNewNodesTargetAndNothingBetweenOldMembers) {
  struct Row {
    Members before;
    MemberWeight joiner;
    std::uint32_t buckets;
    std::uint32_t want_joiner;
  };
  const Row rows[] = {
      {{{1, 1}, {2, 1}}, {3, 1}, 1024, 341},
      {{{1, 1}, {2, 1}, {3, 1}}, {4, 1}, 1024, 256},
      {{{2, 1}, {3, 1}, {4, 1}}, {1, 1}, 1024, 256},  // a joiner with the lowest id
      {{{1, 1}}, {2, 1}, 1024, 512},
      {{{1, 1}, {2, 1}}, {3, 2}, 1024, 512},  // weighted join: weight 2 takes half
      {{{1, 2}, {2, 1}}, {3, 1}, 1024, 256},
      {{{1, 1}, {2, 1}, {3, 1}}, {9, 5}, 1000, 625},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(describe(r.before) + "joiner " + std::to_string(r.joiner.id));
    const UserMap old = assign_buckets({}, r.before, r.buckets);
    Members after = r.before;
    after.push_back(r.joiner);
    const UserMap now = assign_buckets(old, after, r.buckets);

    EXPECT_EQ(counts(now)[r.joiner.id], r.want_joiner);
    EXPECT_EQ(buckets_moved(old, now), r.want_joiner);
    for (Bucket b = 0; b < r.buckets; ++b) {
      if (now[b] != r.joiner.id) {
        EXPECT_EQ(now[b], old[b]) << "bucket " << b;
      }
    }
    EXPECT_EQ(counts(now), targets_by_id(after, r.buckets));
  }
}

TEST(UserMap, ResultDoesNotDependOnMemberOrder) {
  Members members = {{4, 1}, {9, 2}, {2, 1}, {7, 3}, {5, 1}};
  const UserMap old = assign_buckets({}, {{2, 1}, {3, 1}, {9, 1}}, 1024);
  const UserMap want = assign_buckets(old, members, 1024);
  std::sort(members.begin(), members.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  do {
    ASSERT_EQ(assign_buckets(old, members, 1024), want) << describe(members);
  } while (std::next_permutation(members.begin(), members.end(),
                                 [](const auto& a, const auto& b) { return a.id < b.id; }));
}

TEST(UserMap, ReassigningItsOwnOutputMovesNothing) {
  const Members rows[] = {
      {{1, 1}},
      {{1, 1}, {2, 1}, {3, 1}},
      {{1, 1}, {2, 1}, {3, 2}},
      {{10, 3}, {4, 1}, {99, 5}, {7, 1}, {5, 2}},
  };
  for (const Members& members : rows) {
    SCOPED_TRACE(describe(members));
    const UserMap once = assign_buckets({}, members, 1024);
    const UserMap twice = assign_buckets(once, members, 1024);
    EXPECT_EQ(twice, once);
    EXPECT_EQ(buckets_moved(once, twice), 0u);
  }
}

TEST(UserMap, BucketsMovedCountsDifferingBuckets) {
  struct Row {
    UserMap a, b;
    std::uint32_t want;
  };
  const Row rows[] = {
      {{}, {}, 0},
      {{1, 2, 3}, {1, 2, 3}, 0},
      {{1, 2, 3}, {3, 2, 1}, 2},
      {{1, 1, 1}, {kNoNode, 1, 2}, 2},
  };
  for (const Row& r : rows) EXPECT_EQ(buckets_moved(r.a, r.b), r.want);
}

// Random joins and leaves: after each step everyone is at target and the
// number of moved buckets equals the lower bound (orphans + excess), computed
// here independently of the implementation.
TEST(UserMap, RandomJoinsAndLeavesAlwaysHitTargetsWithMinimalMoves) {
  for (const std::uint32_t buckets : {1024u, 97u, 5u}) {
    SCOPED_TRACE("B=" + std::to_string(buckets));
    std::mt19937 rng(20240601);
    Members members;
    UserMap map;
    NodeId next_id = 1;
    for (int step = 0; step < 400; ++step) {
      const bool join = members.size() < 2 || (members.size() < 40 && rng() % 2 == 0);
      if (join) {
        members.push_back({next_id++, 1 + static_cast<std::uint32_t>(rng() % 4)});
      } else {
        members.erase(members.begin() + static_cast<long>(rng() % members.size()));
      }
      std::shuffle(members.begin(), members.end(), rng);
      const UserMap now = assign_buckets(map, members, buckets);
      SCOPED_TRACE("step " + std::to_string(step) + ": " + describe(members));

      ASSERT_EQ(now.size(), buckets);
      const auto target = targets_by_id(members, buckets);
      std::uint64_t weight_sum = 0, target_sum = 0;
      for (const auto& m : members) weight_sum += m.weight;
      for (const auto& m : members) {
        const double exact = double(buckets) * m.weight / double(weight_sum);
        EXPECT_LT(std::abs(double(target.at(m.id)) - exact), 1.0);
        target_sum += target.at(m.id);
      }
      ASSERT_EQ(target_sum, buckets);
      auto want_counts = target;  // no kNoNode; members with target 0 hold nothing
      std::erase_if(want_counts, [](const auto& kv) { return kv.second == 0; });
      ASSERT_EQ(counts(now), want_counts);

      const UserMap old = map.size() == buckets ? map : UserMap(buckets, kNoNode);
      std::uint32_t orphans = 0, excess = 0;
      std::map<NodeId, std::uint32_t> held;
      for (NodeId n : old) {
        if (target.count(n) != 0) ++held[n];
        else ++orphans;
      }
      for (const auto& [id, h] : held) excess += h > target.at(id) ? h - target.at(id) : 0;
      ASSERT_EQ(buckets_moved(old, now), orphans + excess);
      map = now;
    }
  }
}

}  // namespace
}  // namespace porcupine
