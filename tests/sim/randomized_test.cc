// SPDX-License-Identifier: MIT
// The randomized suite: seeded fault schedules over 3-7 nodes with a
// delivery/flag/expunge workload, each checked against every invariant
// of docs/protocols.md once faults stop and the cluster settles.
//
// 1000 schedules in four ctest cases of 250, so CI spreads them over its
// cores, 250 more with drains (a node drained in some schedules, with
// the drain checked to finish), and three over 300 nodes. A failing seed is printed with the command
// that replays it. The soak (100,000 schedules or more) runs from the same
// code:
//   porcupine-sim check --schedules 100000 --seed-base 1000000 [--drains]
#include <gtest/gtest.h>

#include <string>

#include "sim/schedule.h"

using namespace porcupine::sim;

namespace {

void run_range(std::uint64_t first, int count, bool partitions, bool drains = false, int nodes = 0) {
  ScheduleOptions opt;
  opt.partitions = partitions;
  opt.drains = drains;
  if (nodes > 0) opt.min_nodes = opt.max_nodes = nodes;
  int failed = 0;
  for (int i = 0; i < count; ++i) {
    ScheduleResult r = run_schedule(first + static_cast<std::uint64_t>(i), opt);
    if (r.ok) continue;
    ++failed;
    std::string why;
    for (const auto& f : r.failures) why += "\n  " + f;
    ADD_FAILURE() << r.summary << why << "\n  replay: porcupine-sim replay --seed " << r.seed
                  << (partitions ? "" : " --no-partitions") << (drains ? " --drains" : "")
                  << (nodes > 0 ? " --min-nodes " + std::to_string(nodes) + " --max-nodes " + std::to_string(nodes) : "");
  }
  EXPECT_EQ(failed, 0) << failed << " of " << count << " schedules failed";
}

}  // namespace

TEST(Randomized, CrashesRestartsJoinsLossSeeds1To250) { run_range(1, 250, false); }
TEST(Randomized, WithPartitionsSeeds251To500) { run_range(251, 250, true); }
TEST(Randomized, WithPartitionsSeeds501To750) { run_range(501, 250, true); }
TEST(Randomized, WithPartitionsSeeds751To1000) { run_range(751, 250, true); }
TEST(Randomized, WithDrainsAndPartitionsSeeds1To250) { run_range(1, 250, true, true); }
// The same faults and checks over 300 nodes (the whole protocol at scale:
// membership deltas, reports to 300 managers), three seeds.
TEST(Randomized, ThreeHundredNodesWithPartitionsSeeds1To2) { run_range(1, 2, true, false, 300); }
