// SPDX-License-Identifier: MIT
// cluster.cc - see cluster.h.
#include "cluster.h"

#include <algorithm>

namespace porcupine::sim {

namespace {
constexpr Time kTick = 100;
}

class Cluster::NodeEnv final : public Env {
 public:
  NodeEnv(Cluster& c, NodeId id) : c_(c), id_(id) {}
  void send(Envelope e) override { c_.transmit(std::move(e)); }
  void reply(ClientReply r) override {
    std::uint64_t req = r.req;
    c_.open_.erase(req);
    if (c_.on_reply) c_.on_reply(r);
    c_.replies_[req] = {std::move(r), c_.now_};
  }
  void log(const std::string& line) override { c_.record(id_, line); }
  Time wall() const override { return c_.wall(); }

 private:
  Cluster& c_;
  NodeId id_;
};

struct Cluster::SimNode {
  CoreConfig cfg;
  MemoryStore disk;
  std::unique_ptr<NodeEnv> env;
  std::unique_ptr<Node> node;  // null while crashed
  std::uint64_t incarnation = 0;
  bool destroyed = false;
  bool refuses = false;  // down, and its host answers connections with a refusal
};

Cluster::Cluster(std::uint64_t seed, CoreConfig base) : base_(std::move(base)), rng_(seed) {}
Cluster::~Cluster() = default;

void Cluster::record(NodeId id, const std::string& line) {
  std::string s = "t=" + std::to_string(now_) + " n" + std::to_string(id) + ": " + line;
  if (on_log) on_log(s);
  if (keep_trace) trace_.push_back(std::move(s));
}

void Cluster::schedule(Time at, std::function<void()> fn) {
  queue_.push(Event{at, seq_++, std::move(fn)});
}

void Cluster::schedule_tick(NodeId id, std::uint64_t inc, Time at) {
  schedule(at, [this, id, inc, at] {
    auto it = nodes_.find(id);
    if (it == nodes_.end() || !it->second->node || it->second->incarnation != inc) return;
    it->second->node->tick(at);
    schedule_tick(id, inc, at + kTick);
  });
}

void Cluster::add_node(NodeId id, std::vector<NodeId> seeds, std::uint32_t weight) {
  auto sn = std::make_unique<SimNode>();
  sn->cfg = base_;
  sn->cfg.self = id;
  sn->cfg.seeds = std::move(seeds);
  sn->cfg.weight = weight;
  nodes_[id] = std::move(sn);
  restart(id);
}

void Cluster::restart(NodeId id) {
  SimNode& sn = *nodes_.at(id);
  if (sn.node || sn.destroyed) return;
  ++sn.incarnation;
  sn.env = std::make_unique<NodeEnv>(*this, id);
  sn.node = std::make_unique<Node>(sn.cfg, *sn.env, sn.disk);
  record(id, "sim: start");
  // Its peers' connections with it come up before any message of its own.
  for (const auto& [peer, other] : nodes_)
    if (peer != id && other->node && connected(peer, id)) other->node->peer_reachable(id);
  sn.node->start(now_);
  // Ticks start at a per-node phase so nodes do not move in lock step.
  std::uniform_int_distribution<Time> phase(1, kTick);
  schedule_tick(id, sn.incarnation, now_ + phase(rng_));
}

void Cluster::crash(NodeId id) {
  auto it = nodes_.find(id);
  if (it == nodes_.end() || !it->second->node) return;
  record(id, "sim: crash");
  it->second->node.reset();
  it->second->refuses = true;
  ++it->second->incarnation;
  // Its clients' connections are reset: each request it had not answered
  // fails now (a lost host's clients wait instead: power_off).
  for (auto o = open_.begin(); o != open_.end();) {
    if (o->second != id) {
      ++o;
      continue;
    }
    ClientReply r;
    r.req = o->first;
    r.status = Status::Failed;
    r.detail = "connection to the node reset";
    o = open_.erase(o);
    if (on_reply) on_reply(r);
    replies_[r.req] = {std::move(r), now_};
  }
  // Its connections close (the kernel resets them) and each peer dials
  // again at once, to a refusal.
  for (const auto& [peer, sn] : nodes_)
    if (peer != id && sn->node && connected(peer, id)) tell_refused(peer, id);
}

void Cluster::power_off(NodeId id) {
  auto it = nodes_.find(id);
  if (it == nodes_.end() || !it->second->node) return;
  std::map<std::uint64_t, NodeId> open;
  for (const auto& [req, via] : open_)
    if (via == id) open.emplace(req, via);
  for (const auto& [req, via] : open) open_.erase(req);  // never answered
  crash(id);
  it->second->refuses = false;
  record(id, "sim: host lost (silent)");
}

void Cluster::destroy(NodeId id) {
  crash(id);
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return;
  it->second->refuses = false;
  it->second->destroyed = true;
  it->second->disk = MemoryStore{};
  record(id, "sim: destroyed for good");
}

std::size_t Cluster::damage_index(NodeId id, std::size_t every, std::size_t offset) {
  auto it = nodes_.find(id);
  if (it == nodes_.end() || is_up(id)) return 0;
  std::size_t lost = it->second->disk.lose_index(every, offset);
  damaged_.insert(id);
  record(id, "sim: index damaged, " + std::to_string(lost) + " records lost");
  return lost;
}

void Cluster::drop_unindexed(NodeId id) {
  if (auto it = nodes_.find(id); it != nodes_.end() && !is_up(id)) it->second->disk.drop_orphans();
}

void Cluster::partition(const std::vector<std::set<NodeId>>& sides) {
  side_.clear();
  for (std::size_t i = 0; i < sides.size(); ++i)
    for (NodeId n : sides[i]) side_[n] = static_cast<int>(i);
  partitioned_ = true;
}

void Cluster::heal() {
  side_.clear();
  partitioned_ = false;
}

bool Cluster::connected(NodeId a, NodeId b) const {
  if (!partitioned_ || a == b) return true;
  auto sa = side_.find(a), sb = side_.find(b);
  return sa != side_.end() && sb != side_.end() && sa->second == sb->second;
}

void Cluster::transmit(Envelope e) {
  ++sent_;
  if (on_send) on_send(e);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  std::uniform_int_distribution<Time> lat(net_.latency_min, net_.latency_max);
  if (e.from == e.to) {  // loopback: never lost, next in line
    schedule(on_arrival ? on_arrival(e, now_) : now_, [this, e]() mutable {
      auto it = nodes_.find(e.to);
      if (it != nodes_.end() && it->second->node) it->second->node->receive(now_, std::move(e));
    });
    return;
  }
  if (connected(e.from, e.to)) tell_refused(e.from, e.to);
  if (!connected(e.from, e.to) || coin(rng_) < net_.loss) return;
  int copies = coin(rng_) < net_.duplicate ? 2 : 1;
  for (int i = 0; i < copies; ++i) {
    Time at = now_ + lat(rng_);
    Time handled = on_arrival ? on_arrival(e, at) : at;
    schedule(handled, [this, e, handled]() mutable {
      // A partition that starts while a message is in flight drops it too.
      if (!connected(e.from, e.to)) return;
      auto it = nodes_.find(e.to);
      if (it == nodes_.end() || !it->second->node) return;
      it->second->node->receive(handled, std::move(e));
    });
  }
}

void Cluster::tell_refused(NodeId from, NodeId to) {
  auto it = nodes_.find(to);
  if (it == nodes_.end() || it->second->node || !it->second->refuses) return;
  // As a transport dials again (at most one refusal per 100 ms per peer),
  // the refusal comes back after the slowest message from before the
  // crash could have arrived, and after the dial's pause.
  Time& told = refused_told_[{from, to}];
  if (told != 0 && now_ - told < 100) return;
  told = now_;
  const std::uint64_t inc = nodes_.at(from)->incarnation;
  schedule(now_ + 2 * net_.latency_max + 50, [this, from, to, inc] {
    auto f = nodes_.find(from);
    auto t = nodes_.find(to);
    if (f == nodes_.end() || !f->second->node || f->second->incarnation != inc || t->second->node ||
        !t->second->refuses || !connected(from, to))
      return;
    f->second->node->peer_unreachable(now_, to);
  });
}

void Cluster::run_until(Time t) {
  while (!queue_.empty() && queue_.top().at <= t) {
    Event ev = queue_.top();
    queue_.pop();
    now_ = ev.at;
    ev.fn();
  }
  now_ = t;
}

bool Cluster::run_until_pred(const std::function<bool()>& pred, Time limit) {
  Time end = now_ + limit;
  while (now_ < end) {
    if (pred()) return true;
    run_for(kTick);
  }
  return pred();
}

template <class F>
std::uint64_t Cluster::client_op(NodeId via, F&& f) {
  std::uint64_t req = next_req_++;
  Node* n = node(via);
  if (!n) {
    ClientReply r;
    r.req = req;
    r.status = Status::Failed;
    r.detail = "node down";
    replies_[req] = {std::move(r), now_};
    return req;
  }
  open_[req] = via;
  f(*n, req);
  return req;
}

std::uint64_t Cluster::create_user(NodeId via, const std::string& user) {
  return client_op(via, [&](Node& n, std::uint64_t req) {
    n.create_user(now_, req, user, "{PLAIN}secret");
  });
}

std::uint64_t Cluster::deliver(NodeId via, const std::string& user, const std::string& folder,
                               const std::string& body) {
  return client_op(via, [&](Node& n, std::uint64_t req) { n.deliver(now_, req, user, folder, body); });
}

std::uint64_t Cluster::set_flags(NodeId via, const MessageRecord& target, std::uint32_t flags) {
  return client_op(via, [&](Node& n, std::uint64_t req) { n.set_flags(now_, req, target, flags); });
}

std::uint64_t Cluster::expunge(NodeId via, const MessageRecord& target) {
  return client_op(via, [&](Node& n, std::uint64_t req) { n.expunge(now_, req, target); });
}

std::uint64_t Cluster::list(NodeId via, const std::string& user, const std::string& folder) {
  return client_op(via, [&](Node& n, std::uint64_t req) { n.list(now_, req, user, folder); });
}

std::uint64_t Cluster::call(NodeId via, const std::function<void(Node&, Time, std::uint64_t)>& f) {
  return client_op(via, [&](Node& n, std::uint64_t req) { f(n, now_, req); });
}

const ClientReply* Cluster::reply(std::uint64_t req) const {
  auto it = replies_.find(req);
  return it == replies_.end() ? nullptr : &it->second.first;
}

Time Cluster::reply_time(std::uint64_t req) const {
  auto it = replies_.find(req);
  return it == replies_.end() ? -1 : it->second.second;
}

const ClientReply* Cluster::wait(std::uint64_t req, Time limit) {
  run_until_pred([&] { return reply(req) != nullptr; }, limit);
  return reply(req);
}

std::vector<NodeId> Cluster::ids() const {
  std::vector<NodeId> out;
  for (const auto& [id, sn] : nodes_)
    if (!sn->destroyed) out.push_back(id);
  return out;
}

std::vector<NodeId> Cluster::up() const {
  std::vector<NodeId> out;
  for (const auto& [id, sn] : nodes_)
    if (sn->node) out.push_back(id);
  return out;
}

bool Cluster::is_up(NodeId id) const {
  auto it = nodes_.find(id);
  return it != nodes_.end() && it->second->node != nullptr;
}

bool Cluster::is_destroyed(NodeId id) const {
  auto it = nodes_.find(id);
  return it != nodes_.end() && it->second->destroyed;
}

Node* Cluster::node(NodeId id) {
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : it->second->node.get();
}

const MemoryStore* Cluster::disk(NodeId id) const {
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : &it->second->disk;
}

bool Cluster::converged() const {
  std::vector<const Node*> running;
  for (const auto& [id, sn] : nodes_)
    if (sn->node) running.push_back(sn->node.get());
  if (running.empty()) return true;
  const Membership& first = running.front()->membership();
  if (first.members().size() != running.size()) return false;
  for (const Node* n : running) {
    const Membership& m = n->membership();
    if (m.coordinating() || m.epoch() != first.epoch() || m.map() != first.map()) return false;
    for (const Node* o : running)
      if (!m.is_member(o->id())) return false;
  }
  return true;
}

}  // namespace porcupine::sim
