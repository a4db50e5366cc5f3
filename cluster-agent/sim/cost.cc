// SPDX-License-Identifier: MIT
// cost.cc - see cost.h.
#include "cost.h"

#include <algorithm>
#include <cmath>
#include <variant>

namespace porcupine::sim {

CostLayer::CostLayer(Cluster& c, CostModel m) : c_(c), m_(m) {
  c_.network().latency_min = m_.net_latency;
  c_.network().latency_max = m_.net_latency;
  c_.on_arrival = [this](const Envelope& e, Time at) { return handle(e, at); };
  c_.on_send = [this](Envelope& e) { e.load += q(e.from).disk_queued; };
}

CostLayer::Queues& CostLayer::q(NodeId id) {
  Queues& x = queues_[id];
  if (x.cores.empty()) x.cores.assign(static_cast<std::size_t>(std::max(1, m_.cores)), 0.0);
  return x;
}

double CostLayer::run_cpu(NodeId id, double arrive, double demand) {
  Queues& x = q(id);
  if (auto it = speed_.find(id); it != speed_.end()) demand /= it->second.first;
  auto core = std::min_element(x.cores.begin(), x.cores.end());
  double start = std::max(arrive, *core);
  *core = start + demand;
  x.cpu_used += demand;
  return *core;
}

double CostLayer::run_disk(NodeId id, double arrive, double demand) {
  Queues& x = q(id);
  if (auto it = speed_.find(id); it != speed_.end()) demand /= it->second.second;
  double start = std::max(arrive, x.disk);
  x.disk = start + demand;
  x.disk_used += demand;
  ++x.disk_queued;
  double done = x.disk;
  c_.at(static_cast<Time>(std::ceil(done)), [this, id] {
    Queues& y = q(id);
    if (y.disk_queued) --y.disk_queued;
  });
  return done;
}

Time CostLayer::handle(const Envelope& e, Time arrival) {
  double t = static_cast<double>(arrival);
  const Update* u = nullptr;
  if (auto* s = std::get_if<StoreRequest>(&e.body)) u = &s->update;
  if (auto* p = std::get_if<Push>(&e.body)) u = &p->update;
  if (u && u->kind == Update::Kind::Store) {
    t = run_disk(e.to, run_cpu(e.to, t, m_.store_cpu), m_.store_disk);
  } else if (u) {
    t = run_disk(e.to, run_cpu(e.to, t, m_.msg_cpu), m_.mutate_disk);
  } else if (std::holds_alternative<FetchRequest>(e.body)) {
    t = run_disk(e.to, run_cpu(e.to, t, m_.msg_cpu), m_.fetch_disk);
  } else {
    t = run_cpu(e.to, t, m_.msg_cpu);
  }
  return std::max(arrival, static_cast<Time>(std::ceil(t)));
}

void CostLayer::front_end(NodeId via, double cpu_ms, std::function<void()> fn) {
  double done = run_cpu(via, static_cast<double>(c_.now()), cpu_ms);
  c_.at(std::max(c_.now(), static_cast<Time>(std::ceil(done))), std::move(fn));
}

double CostLayer::cpu_busy(NodeId id) const {
  auto it = queues_.find(id);
  return it == queues_.end() ? 0 : it->second.cpu_used;
}

double CostLayer::disk_busy(NodeId id) const {
  auto it = queues_.find(id);
  return it == queues_.end() ? 0 : it->second.disk_used;
}

void CostLayer::reset_busy() {
  for (auto& [id, x] : queues_) x.cpu_used = x.disk_used = 0;
}

}  // namespace porcupine::sim
