/* SPDX-License-Identifier: MIT */
// cost.h - a per-node cost model layered on the simulator: CPU cores and
// a disk per node as FIFO service queues, a fixed network latency.
//
// The core's protocol behaviour is unchanged: the model only decides when
// a node gets to handle each message (Cluster::on_arrival) and when a
// client operation reaches the core (front-end work such as SMTP, LMTP,
// IMAP or POP3 parsing happens before the core sees the request). It also
// adds the node's queued disk operations to the load it piggybacks
// (Cluster::on_send), the figure the core's placement compares.
// Single-threaded, like the simulator; used by benchmarks only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "cluster.h"

namespace porcupine::sim {

// Service demands in milliseconds of one core (CPU) or of the disk, for a
// node of speed 1. Calibrated from real runs (see docs/evaluation/).
struct CostModel {
  double fe_deliver_cpu = 2.0;  // front end: SMTP + LMTP + local API, per delivery
  double fe_read_cpu = 1.0;     // front end: IMAP/POP3 session work, per message read
  double store_cpu = 0.5;       // per copy stored (primary or replica)
  double store_disk = 1.0;      // per copy stored: fsyncs x time per fsync
  double mutate_disk = 0.3;     // per flag change or expunge applied
  double fetch_disk = 0.05;     // per body read
  double msg_cpu = 0.02;        // any other protocol message handled
  int cores = 2;
  Time net_latency = 1;         // one way, ms
};

class CostLayer {
 public:
  CostLayer(Cluster& c, CostModel m);
  // Speed factors of a node's CPU and disk (3 = three times faster); default 1.
  void set_speed(NodeId id, double cpu, double disk) { speed_[id] = {cpu, disk}; }
  // Runs `fn` at node `via` once the front end has spent `cpu_ms` on it.
  void front_end(NodeId via, double cpu_ms, std::function<void()> fn);
  // Busy time accumulated per node (ms of CPU summed over cores, ms of disk).
  double cpu_busy(NodeId id) const;
  double disk_busy(NodeId id) const;
  void reset_busy();
  // The queues themselves, for models that place work without the core:
  // each returns when the work is done (ms, fractional).
  double serve_cpu(NodeId id, double arrive, double demand) { return run_cpu(id, arrive, demand); }
  double serve_disk(NodeId id, double arrive, double demand) { return run_disk(id, arrive, demand); }
  std::uint32_t disk_queued(NodeId id) { return q(id).disk_queued; }
  const CostModel& model() const { return m_; }

 private:
  struct Queues {
    std::vector<double> cores;  // each core busy until (ms, fractional)
    double disk = 0;            // disk busy until
    double cpu_used = 0, disk_used = 0;
    std::uint32_t disk_queued = 0;  // disk operations admitted, not yet done
  };
  Queues& q(NodeId id);
  double run_cpu(NodeId id, double arrive, double demand);
  double run_disk(NodeId id, double arrive, double demand);
  Time handle(const Envelope& e, Time arrival);

  Cluster& c_;
  CostModel m_;
  std::map<NodeId, Queues> queues_;
  std::map<NodeId, std::pair<double, double>> speed_;  // cpu, disk
};

}  // namespace porcupine::sim
