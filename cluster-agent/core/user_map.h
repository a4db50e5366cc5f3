/* SPDX-License-Identifier: MIT */
// user_map.h - the bucket -> manager table and the pure function that
// recomputes it when membership changes.
//
// Every member of an epoch holds the identical table (the coordinator
// computes it and ships it in the membership commit). Header plus pure
// functions; no state.
#pragma once

#include <cstdint>
#include <vector>

#include "types.h"

namespace porcupine {

// A member as the user map sees it: its id and its capacity weight (>= 1;
// a node of weight 3 should manage three times the buckets of weight 1).
struct MemberWeight {
  NodeId id = kNoNode;
  std::uint32_t weight = 1;
};

// index = bucket, value = managing node (kNoNode only when no members).
using UserMap = std::vector<NodeId>;

// Fair share of `buckets` for each member, in the order of `members`:
// floor(B * w / W) each, the remainder handed out one by one by largest
// fractional part, ties to the lower node id. Sums to `buckets` exactly.
std::vector<std::uint32_t> bucket_targets(const std::vector<MemberWeight>& members,
                                          std::uint32_t buckets);

// The new map for `members`, starting from `old` (which may be empty or of
// another size: then every bucket is treated as unassigned).
//  1. a bucket whose manager is not a member is unassigned;
//  2. a member holding more than its target releases its highest-numbered
//     buckets down to the target;
//  3. unassigned buckets, lowest first, go to members below target, in
//     ascending node id order, each filled to its target before the next.
// So a departure moves only the departed node's buckets, and a join moves
// exactly the buckets the new node's target asks for. Deterministic: the
// same inputs give the same map on every node.
UserMap assign_buckets(const UserMap& old, const std::vector<MemberWeight>& members,
                       std::uint32_t buckets);

// Number of buckets whose manager differs between a and b (same size).
std::uint32_t buckets_moved(const UserMap& a, const UserMap& b);

}  // namespace porcupine
