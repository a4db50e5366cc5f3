/* SPDX-License-Identifier: MIT */
// schedule.h - seeded fault schedules with a mail workload, and the
// invariant checker run after the cluster settles.
//
// One seed fixes the cluster size, the workload and the faults (crashes,
// restarts, partitions, heals, message loss and duplication, a join, a
// drain, nodes destroyed for good: at most R-1 at a time, counting a
// damaged index, unless the lost node was forgotten ("node forget") and
// repair had made all its copies again before the next loss). A forgotten
// loss is finished after the settle (repair must complete) and followed by
// a second loss, so "no acknowledged message is lost to a permanent loss
// and a second one after repair" is checked with every other invariant. After the fault phase every
// partition heals, every crashed node restarts, the network becomes
// reliable, and the cluster gets `settle` ms before check_invariants().
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cluster.h"

namespace porcupine::sim {

struct ScheduleOptions {
  int min_nodes = 3;
  int max_nodes = 7;
  std::uint32_t buckets = 1024;
  Time fault_phase = 40'000;
  Time settle = 60'000;
  bool partitions = true;  // include partitions among the faults
  bool drains = false;     // include drains (porcupinectl drain) among the faults
  bool trace = false;      // keep the full trace (replay)
};

// What the workload saw acknowledged, for the checker.
struct Acked {
  std::uint64_t deliver_req = 0;
  MessageRecord target;  // id, user, folder, replicas
  std::uint32_t uidvalidity = 0, uid = 0;
  Time issued = 0, acked = 0;
  bool expunge_acked = false;
  bool expunge_issued = false;  // an expunge was asked for (acknowledged or not)
};

struct WorkloadLog {
  std::vector<Acked> delivered;
  std::uint64_t attempted = 0, tempfailed = 0, flag_ops = 0, expunge_ops = 0, lists = 0, moves = 0;
};

struct ScheduleResult {
  std::uint64_t seed = 0;
  bool ok = true;
  std::vector<std::string> failures;  // one line per violated invariant
  std::string summary;                // one line: nodes, faults, ops, outcome
  std::vector<std::string> trace;     // when options.trace
};

ScheduleResult run_schedule(std::uint64_t seed, const ScheduleOptions& opt = {});

// The invariants of docs/protocols.md, "What the simulator checks".
// `destroyed_any`: some node was destroyed for good during the run.
std::vector<std::string> check_invariants(Cluster& c, const WorkloadLog& w, bool destroyed_any);

// What repair (and drain) has still to do, as the running nodes' disks
// show it (empty: done): every live message's newest list names only
// running, Active nodes, each holding it with its body under that list,
// and (with `exact`) min(R, Active running nodes) of them; every profile
// likewise; no copy is on its way. Nodes that are down are not looked at.
// (Without `exact`, a message stored with fewer copies than R while most
// nodes were down passes: repair replaces copies, it adds none.)
std::vector<std::string> repair_unfinished(Cluster& c, std::size_t replicas, bool exact = true);

}  // namespace porcupine::sim
