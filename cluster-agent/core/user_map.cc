// SPDX-License-Identifier: MIT
// user_map.cc - weighted bucket targets and the minimal-move reassignment of the user map.
#include "user_map.h"

#include <algorithm>
#include <numeric>
#include <unordered_map>

namespace porcupine {

std::vector<std::uint32_t> bucket_targets(const std::vector<MemberWeight>& members,
                                          std::uint32_t buckets) {
  const std::size_t n = members.size();
  std::vector<std::uint32_t> targets(n, 0);
  if (n == 0) return targets;
  // A weight of 0 is out of contract (>= 1); treat it as 1 so W is never 0.
  auto weight = [&](std::size_t i) -> std::uint64_t { return std::max<std::uint32_t>(members[i].weight, 1); };
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < n; ++i) total += weight(i);

  // B * w fits in 64 bits; the fractional parts share the denominator W, so
  // comparing the integer remainders compares the fractions exactly.
  std::vector<std::uint64_t> frac(n);
  std::uint64_t given = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t share = std::uint64_t{buckets} * weight(i);
    targets[i] = static_cast<std::uint32_t>(share / total);
    frac[i] = share % total;
    given += targets[i];
  }
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (frac[a] != frac[b]) return frac[a] > frac[b];
    return members[a].id < members[b].id;
  });
  for (std::uint64_t k = 0; given + k < buckets; ++k) ++targets[order[k]];  // remainder < n
  return targets;
}

UserMap assign_buckets(const UserMap& old, const std::vector<MemberWeight>& members,
                       std::uint32_t buckets) {
  // Members sorted by id; kNoNode dropped; a duplicated id is one member
  // (its largest weight), so the result never depends on input order.
  std::vector<MemberWeight> sorted;
  for (const MemberWeight& m : members)
    if (m.id != kNoNode) sorted.push_back(m);
  std::sort(sorted.begin(), sorted.end(), [](const MemberWeight& a, const MemberWeight& b) {
    return a.id != b.id ? a.id < b.id : a.weight > b.weight;
  });
  sorted.erase(std::unique(sorted.begin(), sorted.end(),
                           [](const MemberWeight& a, const MemberWeight& b) { return a.id == b.id; }),
               sorted.end());

  UserMap map(buckets, kNoNode);
  if (sorted.empty()) return map;
  const std::vector<std::uint32_t> target = bucket_targets(sorted, buckets);
  std::unordered_map<NodeId, std::size_t> index;
  index.reserve(sorted.size());
  for (std::size_t i = 0; i < sorted.size(); ++i) index.emplace(sorted[i].id, i);

  // 1. Keep buckets whose manager is still a member (only if sizes match).
  std::vector<std::uint32_t> held(sorted.size(), 0);
  if (old.size() == buckets) {
    for (Bucket b = 0; b < buckets; ++b) {
      auto it = index.find(old[b]);
      if (it == index.end()) continue;
      map[b] = old[b];
      ++held[it->second];
    }
  }
  // 2. Members over target release their highest-numbered buckets.
  for (Bucket b = buckets; b-- > 0;) {
    if (map[b] == kNoNode) continue;
    const std::size_t i = index.at(map[b]);
    if (held[i] > target[i]) {
      map[b] = kNoNode;
      --held[i];
    }
  }
  // 3. Unassigned buckets, lowest first, fill members below target in id order.
  std::size_t next = 0;
  for (Bucket b = 0; b < buckets; ++b) {
    if (map[b] != kNoNode) continue;
    while (held[next] >= target[next]) ++next;  // targets sum to B: never runs off the end
    map[b] = sorted[next].id;
    ++held[next];
  }
  return map;
}

std::uint32_t buckets_moved(const UserMap& a, const UserMap& b) {
  // Sizes should match; any length difference counts as moved buckets.
  const std::size_t common = std::min(a.size(), b.size());
  std::size_t moved = std::max(a.size(), b.size()) - common;
  for (std::size_t i = 0; i < common; ++i) moved += a[i] != b[i];
  return static_cast<std::uint32_t>(moved);
}

}  // namespace porcupine
