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
  Time request_timeout = 5000;     // deadline of a client operation
};

}  // namespace porcupine
