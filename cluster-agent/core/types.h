/* SPDX-License-Identifier: MIT */
// types.h - the small value types every protocol of the cluster core shares.
//
// Owns nothing; header only. Times are milliseconds: `now`, passed to
// every call, on a monotonic clock (deadlines, timers); stamps and dates
// on the wall clock (Env::wall()). The core itself never reads a clock.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <tuple>

namespace porcupine {

using NodeId = std::uint32_t;  // 0 is never a valid node
using Time = std::int64_t;     // milliseconds
using Bucket = std::uint32_t;

constexpr NodeId kNoNode = 0;

// A totally ordered stamp (time, node). Used both as a membership epoch
// and as the version of a replicated update: the node id breaks ties, so
// two different nodes never produce equal stamps.
struct Stamp {
  Time time = 0;
  NodeId node = kNoNode;

  auto operator<=>(const Stamp&) const = default;
  bool operator==(const Stamp&) const = default;
  bool is_null() const { return time == 0 && node == kNoNode; }
  std::string str() const { return std::to_string(time) + "." + std::to_string(node); }
};

using Epoch = Stamp;
using Version = Stamp;

// Thomas write rule: an update with version `incoming` replaces state at
// version `current` only if it is strictly newer.
inline bool newer(const Version& incoming, const Version& current) { return incoming > current; }

// Globally unique message identity: the node that first stored the message
// and that node's durable per-node sequence number.
struct MsgId {
  NodeId origin = kNoNode;
  std::uint64_t seq = 0;

  auto operator<=>(const MsgId&) const = default;
  bool operator==(const MsgId&) const = default;
  std::string str() const { return std::to_string(origin) + ":" + std::to_string(seq); }
};

// IMAP system flags as a bit set (keywords: MessageRecord::keywords)
// for now (the agent stores them beside the flags).
enum Flag : std::uint32_t {
  kSeen = 1u << 0,
  kAnswered = 1u << 1,
  kFlagged = 1u << 2,
  kDeleted = 1u << 3,
  kDraft = 1u << 4,
};

}  // namespace porcupine
