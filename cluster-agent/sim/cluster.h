/* SPDX-License-Identifier: MIT */
// cluster.h - the deterministic simulator: N nodes running the real core
// (porcupine::Node) over a simulated network, clock and disk.
//
// Owns every simulated node, its disk (a MemoryStore that survives the
// node's crash, as a disk outlives a process) and the event queue. One
// seed fixes every random choice (latency, loss, duplication), so one seed
// replays one run exactly. Single-threaded; used only by tests,
// benchmarks and the porcupine-sim tool.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/node.h"

namespace porcupine::sim {

struct NetworkFaults {
  Time latency_min = 1;   // ms, one way
  Time latency_max = 10;
  double loss = 0.0;      // probability a message is dropped
  double duplicate = 0.0; // probability a message is delivered twice
};

class Cluster {
 public:
  Cluster(std::uint64_t seed, CoreConfig base);
  ~Cluster();

  // ---- topology and faults ----
  void add_node(NodeId id, std::vector<NodeId> seeds, std::uint32_t weight = 1);
  // The process dies (kill -9): soft state lost, disk kept; its address
  // refuses connections, which a peer that sends to it learns one round
  // trip later (Node::peer_unreachable), as over TCP, and the client
  // requests it had not answered fail at once (their connections reset).
  void crash(NodeId id);
  // The host is lost (power, kernel): as crash(), but nothing answers at
  // all; peers find it only by silence.
  void power_off(NodeId id);
  void restart(NodeId id);
  void destroy(NodeId id);            // crashed for good, disk lost
  // A crashed node's index loses every `every`-th record and every log
  // entry; the bodies stay on its disk, unindexed (a cut Redis file).
  std::size_t damage_index(NodeId id, std::size_t every, std::size_t offset);
  void drop_unindexed(NodeId id);  // and the bodies it left unindexed are gone too
  void partition(const std::vector<std::set<NodeId>>& sides);  // nodes in no side are isolated
  void heal();
  NetworkFaults& network() { return net_; }

  // ---- hooks for a cost model layered on the simulator (sim/cost.h) ----
  // Unset, the simulator behaves exactly as without them (same RNG draws).
  std::function<void(Envelope&)> on_send;                       // may adjust e.load
  std::function<Time(const Envelope&, Time arrival)> on_arrival;  // when the node handles it (>= arrival)
  std::function<void(const ClientReply&)> on_reply;              // every client reply, as it happens
  void at(Time t, std::function<void()> fn) { schedule(t, std::move(fn)); }  // run fn at time t

  // ---- time ----
  Time now() const { return now_; }
  // The nodes' wall clock (Env::wall()): far from `now`, which starts at 0,
  // so a core that took one clock for the other fails its tests.
  static constexpr Time kWallBase = 1'700'000'000'000;
  Time wall() const { return now_ + kWallBase; }
  void run_for(Time dt) { run_until(now_ + dt); }
  void run_until(Time t);
  // Runs until pred() holds (checked every 100 ms) or `limit` passes.
  bool run_until_pred(const std::function<bool()>& pred, Time limit);

  // ---- local client operations at node `via`; return a request id ----
  std::uint64_t create_user(NodeId via, const std::string& user);
  std::uint64_t deliver(NodeId via, const std::string& user, const std::string& folder,
                        const std::string& body);
  std::uint64_t set_flags(NodeId via, const MessageRecord& target, std::uint32_t flags);
  std::uint64_t expunge(NodeId via, const MessageRecord& target);
  std::uint64_t list(NodeId via, const std::string& user, const std::string& folder);
  // Any other client operation: f(node, now, request id).
  std::uint64_t call(NodeId via, const std::function<void(Node&, Time, std::uint64_t)>& f);
  const ClientReply* reply(std::uint64_t req) const;
  Time reply_time(std::uint64_t req) const;
  // Runs until the request is answered (or `limit`), returns its reply.
  const ClientReply* wait(std::uint64_t req, Time limit = 30'000);

  // ---- observation ----
  std::vector<NodeId> ids() const;        // every node ever added, not destroyed
  std::vector<NodeId> up() const;         // running
  bool is_up(NodeId id) const;
  bool is_destroyed(NodeId id) const;
  bool is_damaged(NodeId id) const { return damaged_.count(id) > 0; }
  Node* node(NodeId id);                  // nullptr when down
  const MemoryStore* disk(NodeId id) const;
  // All running nodes in one group: same epoch, members == running, same map.
  bool converged() const;
  std::uint64_t messages_sent() const { return sent_; }

  // Trace of log lines "t=... n=...: ...". Kept in full if `keep_trace`.
  bool keep_trace = false;
  std::function<void(const std::string&)> on_log;  // e.g. print live
  const std::vector<std::string>& trace() const { return trace_; }

 private:
  struct SimNode;
  class NodeEnv;
  struct Event {
    Time at;
    std::uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Event& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };

  void schedule(Time at, std::function<void()> fn);
  void schedule_tick(NodeId id, std::uint64_t incarnation, Time at);
  void transmit(Envelope e);
  void tell_refused(NodeId from, NodeId to);
  bool connected(NodeId a, NodeId b) const;
  void record(NodeId id, const std::string& line);
  template <class F> std::uint64_t client_op(NodeId via, F&& f);

  CoreConfig base_;
  std::mt19937_64 rng_;
  Time now_ = 0;
  std::uint64_t seq_ = 0;
  std::uint64_t sent_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> queue_;
  std::map<NodeId, std::unique_ptr<SimNode>> nodes_;
  NetworkFaults net_;
  std::map<NodeId, int> side_;  // partition side per node; empty = fully connected
  bool partitioned_ = false;
  std::uint64_t next_req_ = 1;
  std::map<std::uint64_t, std::pair<ClientReply, Time>> replies_;
  std::vector<std::string> trace_;
  std::set<NodeId> damaged_;  // nodes whose index was damaged (damage_index)
  std::map<std::pair<NodeId, NodeId>, Time> refused_told_;  // (from, to): last refusal told
  std::map<std::uint64_t, NodeId> open_;  // client requests not answered yet, and the node asked
};

}  // namespace porcupine::sim
