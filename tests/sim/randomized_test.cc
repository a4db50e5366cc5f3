// Randomized fault schedules over 3-7 nodes: every invariant must hold.
#include <gtest/gtest.h>

#include "sim/schedule.h"

using namespace porcupine::sim;

namespace {
void run_range(std::uint64_t first, std::uint64_t count) {
  for (std::uint64_t s = first; s < first + count; ++s) {
    ScheduleResult r = run_schedule(s);
    ASSERT_TRUE(r.ok) << r.summary << "\n  " << (r.failures.empty() ? "" : r.failures.front())
                      << "\n  replay: porcupine-sim replay --seed " << s;
  }
}
}  // namespace

TEST(Randomized, Schedules0001To0250) { run_range(1, 250); }
TEST(Randomized, Schedules0251To0500) { run_range(251, 250); }
TEST(Randomized, Schedules0501To0750) { run_range(501, 250); }
TEST(Randomized, Schedules0751To1000) { run_range(751, 250); }
