/* SPDX-License-Identifier: MIT */
// config.h - the tunables of the cluster core, one table.
//
// Every parameter has a default here; the agent's porcupine.conf maps onto
// these fields, and the simulator sets them per run. Times in ms.
#pragma once

#include <cstdint>
#include <vector>

#include "types.h"

namespace porcupine {

struct CoreConfig {
  NodeId self = kNoNode;
  std::uint32_t weight = 1;        // capacity weight in the user map (>= 1)
  std::vector<NodeId> seeds;       // nodes contacted when (re)joining

  std::uint32_t buckets = 1024;    // B: cluster-wide constant
  std::uint32_t spread = 2;        // soft limit on nodes holding one user's mail
  std::uint32_t replicas = 2;      // R: copies of each message and profile

  Time probe_interval = 500;       // ring probe to the successor
  Time probe_timeout = 2000;       // successor silent this long: suspect it
  Time discovery_interval = 2000;  // group leader probes known non-members
  Time accept_window = 500;        // coordinator collects Accepts this long
  Time commit_timeout = 3000;      // promised but no Commit: coordinate ourselves
  Time reconfig_backoff = 1000;    // min gap between mismatch-triggered rounds

  Time report_retry = 1000;        // resend unacknowledged mail-map reports
  Time report_poll = 3000;         // manager asks a silent member for its report
  Time push_retry = 1000;          // coordinator resends unacknowledged updates
  Time takeover_delay = 3000;      // non-coordinator replica starts pushing too
  Time death_ttl = 24LL * 3600 * 1000;  // keep death certificates this long
  // Anti-entropy (sync.cc): every member is asked for what it holds that
  // names this node, when it joins this node's group and then this often;
  // at most sync_bodies_inflight bodies are asked of one peer at a time.
  Time sync_interval = 15LL * 60 * 1000;
  std::uint32_t sync_bodies_inflight = 16;
  // Repair (repair.cc): a node silent this long (out of the group) is
  // declared gone and its copies made again elsewhere (0: only by
  // porcupinectl node forget); at most repair_inflight messages are being
  // copied from one node at a time.
  Time node_dead_timeout = 3600LL * 1000;
  std::uint32_t repair_inflight = 8;
  Time request_timeout = 5000;     // deadline of a client operation
  // A delivery's key (DeliverOptions::key) is kept this long by its
  // manager (and reported by its holders to a new one): a retry within it
  // is answered with the message it made, not stored again.
  Time delivery_key_ttl = 24LL * 3600 * 1000;
  // Bytes/s a body is assumed to cross to a peer and reach its disk at. An
  // update carrying a body is resent, and a delivery's deadline falls,
  // later by its size at this rate: a large body still on its way is not
  // sent again behind itself.
  std::uint64_t transfer_rate = 8u << 20;
  // A listing's records go in replies of at most this many (when the
  // asker takes parts): the asker merges one while the holder makes the
  // next, and no frame carries a whole large folder.
  std::uint32_t list_part = 1000;
  // Failed password checks (Node::authenticate) allowed per user: a
  // budget of this many that refills over auth_failure_window (0: no limit).
  std::uint32_t auth_failures_per_user = 10;
  Time auth_failure_window = 60000;
  // Profiles this node looked up lately, kept in memory (at most this
  // many, each usable for profile_memory_ttl after its last lookup): a
  // manager whose user's profile holders are all out of reach takes the
  // profile from a front end's memory (Node::get_user).
  std::uint32_t profile_memory_users = 50000;
  Time profile_memory_ttl = 86'400'000;
};

// How long a body of `bytes` is given to arrive, at the configured rate.
inline Time transfer_time(const CoreConfig& c, std::uint64_t bytes) {
  return c.transfer_rate == 0 ? 0 : static_cast<Time>(bytes * 1000 / c.transfer_rate);
}

// What a store of a body of `bytes` waits for beyond its fixed deadline or
// retry interval, per recipient: the body crosses twice before the answer
// (to the first replica, and from it to the others). The agent's deadline
// for a delivery and the client library's wait (at the default rate) both
// grow by this.
inline Time store_crossing(const CoreConfig& c, std::uint64_t bytes) { return 2 * transfer_time(c, bytes); }

}  // namespace porcupine
