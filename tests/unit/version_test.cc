// SPDX-License-Identifier: MIT
// version_test.cc - ordering of (time, node) stamps and the Thomas write rule.
#include "core/types.h"

#include <gtest/gtest.h>

namespace porcupine {
namespace {

TEST(Version, StampsOrderByTimeThenNode) {
  struct Row {
    Stamp a, b;
    bool a_less;
  };
  const Row rows[] = {
      {{1, 9}, {2, 1}, true},   // earlier time wins over larger node
      {{2, 1}, {1, 9}, false},
      {{5, 1}, {5, 2}, true},   // equal time: node breaks the tie
      {{5, 2}, {5, 1}, false},
      {{5, 2}, {5, 2}, false},  // equal is not less
      {{0, 0}, {0, 1}, true},
      {{-1, 7}, {0, 0}, true},
  };
  for (const Row& r : rows) {
    EXPECT_EQ(r.a < r.b, r.a_less) << r.a.str() << " < " << r.b.str();
    EXPECT_EQ(r.a == r.b, !(r.a < r.b) && !(r.b < r.a)) << r.a.str() << " == " << r.b.str();
  }
}

TEST(Version, NewerIsStrictSoAnEqualVersionDoesNotReplace) {
  struct Row {
    Version incoming, current;
    bool replaces;
  };
  const Row rows[] = {
      {{10, 1}, {9, 5}, true},
      {{10, 2}, {10, 1}, true},
      {{10, 1}, {10, 1}, false},  // the same update redelivered
      {{10, 1}, {10, 2}, false},
      {{9, 5}, {10, 1}, false},
      {{1, 1}, {}, true},  // anything beats the null version
      {{}, {}, false},
  };
  for (const Row& r : rows)
    EXPECT_EQ(newer(r.incoming, r.current), r.replaces) << r.incoming.str() << " over " << r.current.str();
}

TEST(Version, IsNullOnlyForDefaultStamp) {
  struct Row {
    Stamp s;
    bool null;
  };
  const Row rows[] = {
      {{}, true}, {{0, 0}, true}, {{0, 1}, false}, {{1, 0}, false}, {{-1, 0}, false},
  };
  for (const Row& r : rows) EXPECT_EQ(r.s.is_null(), r.null) << r.s.str();
}

}  // namespace
}  // namespace porcupine
