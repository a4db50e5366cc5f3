/* SPDX-License-Identifier: MIT */
// metrics.h - the agent's Prometheus metrics (docs/monitoring.md lists them).
//
// Served over plain HTTP at http://metrics_listen/metrics by prometheus-cpp's
// Exposer (civetweb, with threads of its own); nothing is served when
// metrics_listen is empty. Those threads only read the registry: every
// figure is written on the agent's io thread, so the core is never touched
// from another thread. Counters and histograms are updated as things
// happen (local requests, deliveries, store flushes); gauges that describe
// the node's state (membership, buckets, backlog, records, spool) are
// refreshed from a timer on the io thread every second, and those that
// need a pass over every record this node holds (under-replicated
// messages, spool bytes) every five seconds, so a scrape shows state at
// most that old. The prometheus-cpp metric objects are thread-safe.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange
#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>

#include "agent.pb.h"
#include "core/types.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace porcupine::agent {

class Agent;

class Metrics {
 public:
  Metrics(boost::asio::io_context& io, Agent& agent);
  ~Metrics();

  // Serves the endpoint (if metrics_listen is set) and starts refreshing
  // the gauges. Throws std::runtime_error if the address cannot be used.
  void start();
  void stop();
  // Where the endpoint listens, as bound ("" when not served).
  const std::string& endpoint() const { return endpoint_; }

  // ---- updates, on the io thread ----
  // A local request answered: its operation, result code and the time
  // from its receipt (negative: not timed, counted only).
  void answered(std::string_view operation, agentpb::Code code, double seconds);
  // One recipient of a delivery that reached the cluster, and its result.
  void delivered(agentpb::Code code, std::uint64_t bytes);
  // A flush of the store (group commit) and how long it took.
  void flushed(std::chrono::steady_clock::duration took);
  // A body (or, `header`, a header part) fetched from a holder for Open.
  void fetched(bool header, std::uint64_t bytes);

 private:
  void schedule();
  void refresh();
  void scan_records();
  prometheus::Counter& requests(std::string_view operation, agentpb::Code code);
  prometheus::Histogram& latency(std::string_view operation);
  // The series of one node in a per-node family, made on first use.
  prometheus::Gauge& per_node(prometheus::Family<prometheus::Gauge>& family, NodeId n);
  void drop_node(prometheus::Family<prometheus::Gauge>& family, NodeId n);

  boost::asio::io_context& io_;
  Agent& agent_;
  boost::asio::steady_timer timer_;
  bool running_ = false;
  std::string endpoint_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;

  // Local API.
  prometheus::Family<prometheus::Counter>* requests_family_;
  prometheus::Family<prometheus::Histogram>* latency_family_;
  prometheus::Family<prometheus::Counter>* delivered_family_;
  prometheus::Counter* delivered_bytes_;
  std::map<std::tuple<std::string, int>, prometheus::Counter*, std::less<>> requests_;
  std::map<std::string, prometheus::Histogram*, std::less<>> latency_;
  std::map<int, prometheus::Counter*> delivered_;

  // Membership and buckets.
  prometheus::Gauge* in_group_;
  prometheus::Gauge* members_;
  prometheus::Gauge* epoch_seconds_;
  prometheus::Counter* epoch_changes_;
  prometheus::Family<prometheus::Gauge>* node_member_;
  prometheus::Family<prometheus::Gauge>* node_connected_;
  prometheus::Family<prometheus::Gauge>* node_buckets_;
  prometheus::Family<prometheus::Gauge>* node_load_;
  prometheus::Family<prometheus::Gauge>* node_weight_;
  std::map<std::pair<const void*, NodeId>, prometheus::Gauge*> node_series_;
  prometheus::Gauge* buckets_;
  prometheus::Gauge* buckets_managed_;
  prometheus::Gauge* buckets_not_ready_;
  Epoch last_epoch_;

  // Replication and records.
  prometheus::Gauge* backlog_;
  prometheus::Gauge* pending_reports_;
  prometheus::Gauge* message_records_;
  prometheus::Gauge* death_certificates_;
  prometheus::Gauge* profiles_;
  prometheus::Gauge* under_replicated_;

  // Repair and drain.
  prometheus::Family<prometheus::Gauge>* node_admin_;
  prometheus::Counter* repair_copies_;
  prometheus::Counter* store_failovers_;
  prometheus::Counter* repair_bytes_;
  prometheus::Counter* repair_profiles_;
  prometheus::Counter* repair_failed_;
  prometheus::Gauge* repair_pending_;
  prometheus::Gauge* repair_inflight_;
  prometheus::Gauge* drain_messages_;
  prometheus::Gauge* drain_bytes_;
  prometheus::Gauge* drain_profiles_;

  // Spool and store.
  prometheus::Gauge* spool_bytes_;
  prometheus::Gauge* spool_fs_avail_;
  prometheus::Gauge* spool_fs_size_;
  prometheus::Histogram* flush_seconds_;
  prometheus::Counter* store_fsyncs_;
  prometheus::Counter* store_commands_;
  prometheus::Counter* store_body_files_;

  // The node cache (store/node_cache.h).
  prometheus::Gauge* cache_bytes_;
  prometheus::Gauge* cache_budget_;
  prometheus::Gauge* cache_entries_;
  prometheus::Counter* cache_hits_;
  prometheus::Counter* cache_misses_;
  prometheus::Counter* cache_evictions_;
  prometheus::Counter* cache_refused_;
  prometheus::Counter* cache_full_;
  // Fetches from holders for readers (Open), by part: whole, header.
  prometheus::Counter* fetches_[2];
  prometheus::Counter* fetch_bytes_[2];

  // Peers: PeerNet's own counts, carried over at each refresh.
  prometheus::Counter* frames_in_;
  prometheus::Counter* frames_out_;
  prometheus::Counter* frames_dropped_;
  prometheus::Counter* handshakes_failed_;
  prometheus::Counter* strangers_refused_;
  struct Seen {
    std::uint64_t frames_in = 0, frames_out = 0, dropped = 0, handshakes_failed = 0, strangers_refused = 0;
    std::uint64_t fsyncs = 0, commands = 0, body_files = 0;
    std::uint64_t repair_copies = 0, repair_bytes = 0, repair_profiles = 0, repair_failed = 0;
    std::uint64_t store_failovers = 0;
    std::uint64_t cache_hits = 0, cache_misses = 0, cache_evictions = 0, cache_refused = 0, cache_full = 0;
  } seen_;

  int refreshes_ = 0;
};

// Times the local requests of one connection from receipt to response.
class RequestTimes {
 public:
  // Notes a request's operation and arrival (DeliverChunk frames belong
  // to their DeliverBegin's request and start nothing).
  void received(const agentpb::Request& q);
  // Counts the response, and observes its latency if its request was noted.
  void answered(Metrics& m, const agentpb::Response& r);

 private:
  struct Started {
    std::string_view operation;
    std::chrono::steady_clock::time_point at;
  };
  std::map<std::uint64_t, Started> started_;
};

}  // namespace porcupine::agent
