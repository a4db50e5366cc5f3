// SPDX-License-Identifier: MIT
// hash_test.cc - canonical addresses, the pinned XXH64 user hash, and bucket spread.
#include "core/hash.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace porcupine {
namespace {

TEST(Hash, CanonicalUserLowerCasesTrimsAndStripsOneAngleBracketPair) {
  struct Row {
    std::string in, want;
  };
  const Row rows[] = {
      {"bob@example.com", "bob@example.com"},
      {"Bob@Example.COM", "bob@example.com"},
      {"  bob@example.com  ", "bob@example.com"},
      {"\tbob@example.com\r\n", "bob@example.com"},
      {"<bob@example.com>", "bob@example.com"},
      {"  <Bob@Example.com>  ", "bob@example.com"},
      {"<<bob@example.com>>", "<bob@example.com>"},  // only one pair
      {"<bob@example.com", "<bob@example.com"},      // unpaired bracket stays
      {"bob@example.com>", "bob@example.com>"},
      {"\xC3\x89ve@example.com", "\xC3\x89ve@example.com"},  // non-ASCII bytes untouched
      {"", ""},
      {"   ", ""},
      {"<>", ""},
  };
  for (const Row& r : rows) EXPECT_EQ(canonical_user(r.in), r.want) << '"' << r.in << '"';
}

// Pinned once against libxxhash's XXH64(s, len, 0) from a standalone C
// program. If one of these fails, the user map's hash changed: every
// existing cluster would route users to the wrong managers.
TEST(Hash, UserHashIsPinnedXxh64Seed0) {
  struct Row {
    std::string in;
    std::uint64_t want;
  };
  const Row rows[] = {
      {"bob@example.com", 0x99D51D92E864C38FULL},
      {"alice@example.org", 0x818A15A2E5FDBE3EULL},
      {"", 0xEF46DB3751D8E999ULL},
  };
  for (const Row& r : rows) EXPECT_EQ(user_hash(r.in), r.want) << '"' << r.in << '"';
}

TEST(Hash, BucketOfIsCaseAndDecorationInsensitive) {
  for (const std::uint32_t buckets : {1u, 7u, 1024u, 65536u}) {
    const Bucket want = static_cast<Bucket>(0x99D51D92E864C38FULL % buckets);
    for (const char* addr : {"bob@example.com", "BOB@EXAMPLE.COM", "Bob@Example.Com", " <bob@example.com> "}) {
      EXPECT_EQ(bucket_of(addr, buckets), want) << addr << " B=" << buckets;
    }
  }
}

// Max/min is Poisson-limited: with 100,000 users (~98 a bucket) even an ideal
// hash gives about 1.9, so the 1.5 bound needs 1,000,000 users (~977 a
// bucket, ideal about 1.25). Chi-square (1023 degrees of freedom, sd ~45)
// checks the fit at both sizes.
TEST(Hash, SyntheticUsersSpreadEvenlyOverBuckets) {
  constexpr std::uint32_t kBuckets = 1024;
  struct Row {
    int users;
    double max_ratio;
  };
  for (const Row r : {Row{100000, 2.5}, Row{1000000, 1.5}}) {
    std::vector<std::uint32_t> count(kBuckets, 0);
    for (int i = 0; i < r.users; ++i) ++count[bucket_of("user" + std::to_string(i) + "@example.com", kBuckets)];
    const auto [lo, hi] = std::minmax_element(count.begin(), count.end());
    ASSERT_GT(*lo, 0u);
    EXPECT_LT(static_cast<double>(*hi) / *lo, r.max_ratio) << r.users << " users: min " << *lo << " max " << *hi;
    const double expect = static_cast<double>(r.users) / kBuckets;
    double chi2 = 0;
    for (const std::uint32_t c : count) chi2 += (c - expect) * (c - expect) / expect;
    EXPECT_GT(chi2, 850) << r.users << " users";
    EXPECT_LT(chi2, 1200) << r.users << " users";
  }
}

}  // namespace
}  // namespace porcupine
