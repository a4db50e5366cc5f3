// SPDX-License-Identifier: MIT
// FailureThrottle: failed password checks per user.
#include "core/throttle.h"

#include <gtest/gtest.h>

namespace porcupine {
namespace {

TEST(FailureThrottle, SpendsTheBurstThenRefillsOverTheWindow) {
  FailureThrottle t(3, 60000);
  for (int n = 0; n < 2; ++n) {
    EXPECT_TRUE(t.allowed("u@x", 0));
    EXPECT_FALSE(t.failed("u@x", 0));
  }
  EXPECT_TRUE(t.allowed("u@x", 0));
  EXPECT_TRUE(t.failed("u@x", 0));  // the last one: log it
  EXPECT_FALSE(t.allowed("u@x", 0));
  EXPECT_FALSE(t.allowed("u@x", 19999));  // one token takes window / burst
  EXPECT_TRUE(t.allowed("u@x", 20000));
  EXPECT_TRUE(t.failed("u@x", 20000));
  EXPECT_FALSE(t.allowed("u@x", 20001));
  EXPECT_TRUE(t.allowed("u@x", 40000));
}

TEST(FailureThrottle, UsersAreCountedApart) {
  FailureThrottle t(1, 1000);
  t.failed("a@x", 0);
  EXPECT_FALSE(t.allowed("a@x", 10));
  EXPECT_TRUE(t.allowed("b@x", 10));
}

TEST(FailureThrottle, ZeroBurstNeverLimits) {
  FailureThrottle t(0, 1000);
  for (int n = 0; n < 100; ++n) t.failed("u@x", 0);
  EXPECT_TRUE(t.allowed("u@x", 0));
  EXPECT_EQ(t.tracked(), 0u);
}

TEST(FailureThrottle, MemoryIsBoundedAndRefilledUsersGoFirst) {
  FailureThrottle t(1, 1000, 3);
  t.failed("b@x", 0);
  t.failed("c@x", 0);
  t.failed("limited@x", 900);
  // Full: b and c have refilled by 1000 and are forgotten for d; the user
  // still limited is kept.
  t.failed("d@x", 1000);
  EXPECT_EQ(t.tracked(), 2u);
  EXPECT_FALSE(t.allowed("limited@x", 1000));
  for (int n = 0; n < 100; ++n) t.failed("user" + std::to_string(n) + "@x", 1000);
  EXPECT_EQ(t.tracked(), 3u);
}

}  // namespace
}  // namespace porcupine
