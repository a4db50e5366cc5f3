/* SPDX-License-Identifier: MIT */
// placement.h - spread-based choice of the nodes that store a new message.
//
// Pure function, no state. The manager of the user calls it with the
// user's mail map for the folder and the load table.
#pragma once

#include <cstdint>
#include <vector>

#include "types.h"

namespace porcupine {

// One live node as the load table sees it.
struct NodeLoad {
  NodeId id = kNoNode;
  std::uint32_t load = 0;  // pending disk operations, as last piggybacked
  bool full = false;       // out of spool space: never chosen
};

struct PlacementInput {
  std::vector<NodeId> mail_map;  // nodes already holding the user's mail (any order)
  std::vector<NodeLoad> live;    // live members (any order); nodes absent here are down
  std::uint32_t spread = 2;      // soft limit on how many nodes hold one user's mail
  std::uint32_t replicas = 2;    // R: copies of each message
  std::uint64_t salt = 0;        // tie-break salt (the user's hash), so equal loads spread users
  bool grow_when_busy = false;   // a busy user's nodes give way to idle others (kBusyFactor)
};

struct Placement {
  // nodes[0] stores and coordinates; nodes[1..] are the replicas. Size is
  // min(R, number of live non-full nodes); empty if none can store.
  std::vector<NodeId> nodes;
  // True when a node outside the mail map had to be taken although the
  // mail map already held `spread` nodes (some were down or full).
  bool spread_exceeded = false;
  // True when a node outside the user's was taken because the user's own
  // were busy (see kBusyFactor).
  bool spread_grown = false;
};

// A node the message would go to is busy when its load is at least
// kBusyFactor times the least-loaded other node's plus kBusyMargin.
constexpr std::uint32_t kBusyFactor = 2;
constexpr std::uint32_t kBusyMargin = 8;

// Candidates = mail-map nodes that are live and not full; if fewer than
// `spread`, topped up with the least-loaded other live non-full nodes.
// With grow_when_busy, a candidate among the R it would take that is busy
// (kBusyFactor) gives
// its place to the least-loaded other node, which becomes a candidate
// (the spread of a user whose own arrivals load its nodes grows).
// The primary is the least-loaded candidate; replicas are the next
// least-loaded candidates, then the least-loaded other live non-full nodes.
// Ties in load are broken by a hash of (salt, node id), then node id.
Placement choose_placement(const PlacementInput& in);

}  // namespace porcupine
