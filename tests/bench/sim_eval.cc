// SPDX-License-Identifier: MIT
// sim_eval - scale-out, failure timelines, reconfiguration cost and
// heterogeneity in the deterministic simulator, with the per-node cost
// model of cluster-agent/sim/cost.h. Prints figures as `key=value` lines;
// asserts nothing about speed.
//
//   sim_eval scale    --nodes N [--replicas R] [--seconds S] [--warmup W] [common]
//   sim_eval timeline --nodes N --crash K [--replicas R] [--crash-at T1] [--restart-at T2]
//                     [--seconds S] [common]
//   sim_eval reconfig --nodes N [--mail-users U] [common]
//                     (U users per node, one message each, before the crash;
//                     after the rejoin every user's INBOX is listed)
//   sim_eval hetero   --nodes N --fast-pct P --policy static|random|spread [--seconds S] [common]
//                     [--users zipf|uniform]
//                     (P % of the nodes have 3x faster disks, as in the paper)
//
// common: --seed S, --clients-per-node C, --read-fraction F, --users-per-node U,
//         --cost key=value,... (CostModel fields: fe_deliver_cpu, fe_read_cpu,
//         store_cpu, store_disk, mutate_disk, fetch_disk, msg_cpu, cores, net_latency)
//
// Workload: closed loop, C clients per node; each operation is, with
// probability F, a read (list the user's INBOX at a random node, fetch the
// first message, expunge it: a POP3 RETR + DELE) and otherwise a delivery
// to a user drawn uniformly (scale, timeline) or by Zipf(1) (hetero). A
// client whose operation is not answered within 8 s starts a new one.
//
// Exit status: 0 when the run finished and delivered something, 1 when not,
// 2 on bad usage.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/hash.h"
#include "codec/codec.h"
#include "core/placement.h"
#include "sim/cluster.h"
#include "sim/cost.h"

using namespace porcupine;
using namespace porcupine::sim;

namespace {

struct Options {
  std::string cmd;
  int nodes = 3;
  int replicas = 1;
  double seconds = 10, warmup = 3;
  int crash = 1;
  double crash_at = 10, restart_at = 30;
  std::uint64_t seed = 1;
  int clients_per_node = 8;
  double read_fraction = 0.5;
  int users_per_node = 20;
  int mail_users = 0;  // reconfig: users per node with one message each
  double fast_pct = 0;
  std::string policy = "spread";
  bool zipf = true;  // hetero: users drawn by Zipf(1), else uniformly
  CostModel cost;
};

void set_cost(CostModel& m, const std::string& spec) {
  std::stringstream ss(spec);
  std::string kv;
  while (std::getline(ss, kv, ',')) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) throw std::invalid_argument("--cost wants key=value: " + kv);
    std::string k = kv.substr(0, eq);
    double v = std::stod(kv.substr(eq + 1));
    if (k == "fe_deliver_cpu") m.fe_deliver_cpu = v;
    else if (k == "fe_read_cpu") m.fe_read_cpu = v;
    else if (k == "store_cpu") m.store_cpu = v;
    else if (k == "store_disk") m.store_disk = v;
    else if (k == "mutate_disk") m.mutate_disk = v;
    else if (k == "fetch_disk") m.fetch_disk = v;
    else if (k == "msg_cpu") m.msg_cpu = v;
    else if (k == "cores") m.cores = static_cast<int>(v);
    else if (k == "net_latency") m.net_latency = static_cast<Time>(v);
    else throw std::invalid_argument("unknown cost field: " + k);
    if (v < 0) throw std::invalid_argument("cost fields are >= 0: " + kv);
  }
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  return v[i];
}

std::string user_name(int i) { return "u" + std::to_string(i) + "@example.org"; }

// Draws user indexes uniformly or by Zipf(1).
class UserPick {
 public:
  UserPick(int n, bool zipf) : n_(n), zipf_(zipf) {
    if (zipf_) {
      double sum = 0;
      for (int i = 1; i <= n; ++i) cdf_.push_back(sum += 1.0 / i);
      for (double& x : cdf_) x /= sum;
    }
  }
  int operator()(std::mt19937_64& rng) {
    if (!zipf_) return std::uniform_int_distribution<int>(0, n_ - 1)(rng);
    double u = std::uniform_real_distribution<double>(0, 1)(rng);
    return static_cast<int>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  int n_;
  bool zipf_;
  std::vector<double> cdf_;
};

// The closed-loop mail workload over the real core.
class Driver {
 public:
  Driver(Cluster& c, CostLayer& cost, const Options& o)
      : c_(c), cost_(cost), o_(o), rng_(o.seed * 7919 + 1),
        users_(std::max(10, o.users_per_node * o.nodes)), pick_(users_, false) {
    c_.on_reply = [this](const ClientReply& r) {
      auto it = waiting_.find(r.req);
      if (it == waiting_.end()) return;
      auto k = std::move(it->second);
      waiting_.erase(it);
      // Never re-enter a node from inside its own handler.
      c_.at(c_.now(), [k = std::move(k), r] { k(r); });
    };
  }

  bool create_users() {
    std::vector<std::uint64_t> reqs;
    auto up = c_.up();
    for (int u = 0; u < users_; ++u) reqs.push_back(c_.create_user(up[u % up.size()], user_name(u)));
    bool done = c_.run_until_pred([&] {
      for (auto r : reqs)
        if (!c_.reply(r)) return false;
      return true;
    }, 60'000);
    int ok = 0;
    for (auto r : reqs) ok += c_.reply(r) && (c_.reply(r)->status == Status::Ok || c_.reply(r)->status == Status::Exists);
    return done && ok == users_;
  }

  void start() {
    int n = o_.clients_per_node * o_.nodes;
    gen_.assign(static_cast<std::size_t>(n), 0);
    for (int k = 0; k < n; ++k) c_.at(c_.now() + k % 50, [this, k] { next(k); });
  }

  void reset_stats() {
    lat_deliver_.clear();
    lat_read_.clear();
    delivered_ = reads_ = failed_ = 0;
    since_ = c_.now();
    cost_.reset_busy();
  }

  std::uint64_t delivered() const { return delivered_; }
  std::uint64_t reads() const { return reads_; }
  std::uint64_t failed() const { return failed_; }
  Time since() const { return since_; }
  const std::vector<double>& lat_deliver() const { return lat_deliver_; }
  const std::vector<double>& lat_read() const { return lat_read_; }
  const std::map<Time, int>& per_second() const { return per_second_; }

 private:
  using Cont = std::function<void(const ClientReply&)>;

  NodeId pick_node() {
    auto up = c_.up();
    if (up.empty()) return kNoNode;
    return up[std::uniform_int_distribution<std::size_t>(0, up.size() - 1)(rng_)];
  }

  // Issues a core operation at `via`; `k` gets its reply.
  void issue(NodeId via, const std::function<std::uint64_t()>& op, Cont k) {
    if (!c_.is_up(via)) {
      ClientReply r;
      r.status = Status::Failed;
      k(r);
      return;
    }
    std::uint64_t req = op();
    if (const ClientReply* r = c_.reply(req)) { k(*r); return; }
    waiting_[req] = std::move(k);
  }

  void finish(int k, std::uint64_t gen, bool ok, bool read, Time t0) {
    if (gen_[k] != gen) return;
    double lat = static_cast<double>(c_.now() - t0);
    if (ok && !read) {
      ++delivered_;
      lat_deliver_.push_back(lat);
      ++per_second_[c_.now() / 1000];
    } else if (ok) {
      ++reads_;
      lat_read_.push_back(lat);
    } else {
      ++failed_;
    }
    // A failed operation backs off 100 ms, as a client would.
    c_.at(c_.now() + (ok ? 0 : 100), [this, k, gen] { if (gen_[k] == gen) next(k); });
  }

  void next(int k) {
    std::uint64_t gen = ++gen_[k];
    Time t0 = c_.now();
    c_.at(t0 + 8000, [this, k, gen] {
      if (gen_[k] != gen) return;
      ++failed_;
      next(k);
    });
    NodeId via = pick_node();
    if (via == kNoNode) return;
    std::string user = user_name(pick_(rng_));
    bool read = std::uniform_real_distribution<double>(0, 1)(rng_) < o_.read_fraction;
    if (!read) {
      cost_.front_end(via, cost_.model().fe_deliver_cpu, [this, k, gen, via, user, t0] {
        issue(via, [&] { return c_.deliver(via, user, "INBOX", "Subject: m\r\n\r\nbody\r\n"); },
              [this, k, gen, t0](const ClientReply& r) { finish(k, gen, r.status == Status::Ok, false, t0); });
      });
      return;
    }
    cost_.front_end(via, cost_.model().fe_read_cpu, [this, k, gen, via, user, t0] {
      issue(via, [&] { return c_.list(via, user, "INBOX"); }, [this, k, gen, via, t0](const ClientReply& l) {
        if (l.status != Status::Ok) return finish(k, gen, false, true, t0);
        if (l.records.empty()) return finish(k, gen, true, true, t0);
        // A random message, so concurrent readers of one user rarely race.
        MessageRecord target =
            l.records[std::uniform_int_distribution<std::size_t>(0, l.records.size() - 1)(rng_)];
        issue(via, [&] { return c_.call(via, [&](Node& n, Time now, std::uint64_t req) { n.fetch(now, req, target); }); },
              [this, k, gen, via, t0, target](const ClientReply& f) {
                if (f.status != Status::Ok) return finish(k, gen, false, true, t0);
                issue(via, [&] { return c_.expunge(via, target); }, [this, k, gen, t0](const ClientReply& e) {
                  finish(k, gen, e.status == Status::Ok, true, t0);
                });
              });
      });
    });
  }

  Cluster& c_;
  CostLayer& cost_;
  const Options& o_;
  std::mt19937_64 rng_;
  int users_;
  UserPick pick_;
  std::map<std::uint64_t, Cont> waiting_;
  std::vector<std::uint64_t> gen_;
  std::vector<double> lat_deliver_, lat_read_;
  std::uint64_t delivered_ = 0, reads_ = 0, failed_ = 0;
  Time since_ = 0;
  std::map<Time, int> per_second_;
};

CoreConfig core_config(const Options& o) {
  CoreConfig cfg;
  cfg.replicas = static_cast<std::uint32_t>(o.replicas);
  return cfg;
}

void form(Cluster& c, int nodes) {
  std::vector<NodeId> seeds;
  for (NodeId i = 1; i <= static_cast<NodeId>(std::min(nodes, 3)); ++i) seeds.push_back(i);
  for (NodeId i = 1; i <= static_cast<NodeId>(nodes); ++i) c.add_node(i, seeds);
  if (!c.run_until_pred([&] { return c.converged(); }, 120'000))
    throw std::runtime_error("cluster of " + std::to_string(nodes) + " did not converge");
}

double wall_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int scale(const Options& o) {
  auto w0 = std::chrono::steady_clock::now();
  Cluster c(o.seed, core_config(o));
  CostLayer cost(c, o.cost);
  int fast = static_cast<int>(std::lround(o.nodes * o.fast_pct / 100.0));
  for (int i = 1; i <= fast; ++i) cost.set_speed(static_cast<NodeId>(i), 3.0, 3.0);
  form(c, o.nodes);
  Time formed = c.now();
  Driver d(c, cost, o);
  if (!d.create_users()) { std::cerr << "sim_eval: creating users failed\n"; return 1; }
  d.start();
  c.run_for(static_cast<Time>(o.warmup * 1000));
  d.reset_stats();
  c.run_for(static_cast<Time>(o.seconds * 1000));
  double secs = static_cast<double>(c.now() - d.since()) / 1000.0;
  double cpu = 0, disk = 0;
  for (NodeId n : c.ids()) { cpu += cost.cpu_busy(n); disk += cost.disk_busy(n); }
  std::cout << "scale nodes=" << o.nodes << " replicas=" << o.replicas << " fast_pct=" << o.fast_pct
            << " msgs_per_s=" << d.delivered() / secs << " reads_per_s=" << d.reads() / secs
            << " failed=" << d.failed() << " p50_ms=" << percentile(d.lat_deliver(), 0.5)
            << " p99_ms=" << percentile(d.lat_deliver(), 0.99) << " read_p50_ms=" << percentile(d.lat_read(), 0.5)
            << " read_p99_ms=" << percentile(d.lat_read(), 0.99)
            << " cpu_util=" << cpu / (secs * 1000.0 * o.cost.cores * o.nodes)
            << " disk_util=" << disk / (secs * 1000.0 * o.nodes) << " formed_ms=" << formed
            << " sim_seconds=" << secs << " wall_s=" << wall_since(w0) << " net_msgs=" << c.messages_sent() << "\n";
  return d.delivered() > 0 ? 0 : 1;
}

int timeline(const Options& o) {
  auto w0 = std::chrono::steady_clock::now();
  Cluster c(o.seed, core_config(o));
  CostLayer cost(c, o.cost);
  form(c, o.nodes);
  Driver d(c, cost, o);
  if (!d.create_users()) { std::cerr << "sim_eval: creating users failed\n"; return 1; }
  Time t0 = c.now();
  d.start();
  std::vector<NodeId> victims;
  for (int i = 0; i < o.crash; ++i) victims.push_back(static_cast<NodeId>(o.nodes - i));
  Time crash_at = t0 + static_cast<Time>(o.crash_at * 1000), restart_at = t0 + static_cast<Time>(o.restart_at * 1000);
  Time end = t0 + static_cast<Time>(o.seconds * 1000);
  bool crashed = false, restarted = false;
  Epoch last;
  bool was_converged = true;
  Time change_at = -1;
  while (c.now() < end) {
    if (!crashed && c.now() >= crash_at) {
      for (NodeId v : victims) c.crash(v);
      crashed = true;
      change_at = c.now();
      std::cout << "event t_ms=" << c.now() - t0 << " what=crash nodes=" << victims.size() << "\n";
    }
    if (!restarted && c.now() >= restart_at) {
      for (NodeId v : victims) c.restart(v);
      restarted = true;
      change_at = c.now();
      std::cout << "event t_ms=" << c.now() - t0 << " what=restart nodes=" << victims.size() << "\n";
    }
    c.run_for(100);
    bool conv = c.converged();
    Node* n1 = c.node(1);
    Epoch e = n1 ? n1->membership().epoch() : Epoch{};
    if (conv && (!was_converged || e != last) && change_at >= 0) {
      std::cout << "event t_ms=" << c.now() - t0 << " what=converged members=" << c.up().size()
                << " reconfig_ms=" << c.now() - change_at << "\n";
      change_at = -1;
    }
    was_converged = conv;
    last = e;
  }
  for (const auto& [sec, n] : d.per_second())
    if (sec * 1000 >= t0 && sec * 1000 < end) std::cout << "second t_s=" << sec - t0 / 1000 << " msgs=" << n << "\n";
  std::cout << "timeline nodes=" << o.nodes << " crash=" << o.crash << " replicas=" << o.replicas
            << " failed=" << d.failed() << " wall_s=" << wall_since(w0) << "\n";
  return d.delivered() > 0 ? 0 : 1;
}

// Messages and their encoded bytes (the agent's wire format) by kind,
// counted from when it is reset.
class Tally {
 public:
  explicit Tally(Cluster& c) {
    c.on_send = [this](Envelope& e) {
      Kind& k = kinds_[message_name(e.body)];
      ++k.msgs;
      k.bytes += codec::encode_envelope(e).size();
      if (std::holds_alternative<NewGroup>(e.body) || std::holds_alternative<Accept>(e.body) ||
          std::holds_alternative<Commit>(e.body)) {
        ++round_.msgs;
        round_.bytes += codec::encode_envelope(e).size();
      }
    };
  }
  void reset() { kinds_.clear(); round_ = {}; }
  // "kind:msgs:bytes,..." and the membership round's messages and bytes.
  std::string str(const std::string& prefix) const {
    std::ostringstream o;
    o << prefix << "_round_msgs=" << round_.msgs << " " << prefix << "_round_bytes=" << round_.bytes << " "
      << prefix << "_by_kind=";
    bool first = true;
    for (const auto& [name, k] : kinds_) {
      o << (first ? "" : ",") << name << ":" << k.msgs << ":" << k.bytes;
      first = false;
    }
    return o.str();
  }

 private:
  struct Kind {
    std::uint64_t msgs = 0, bytes = 0;
  };
  std::map<std::string, Kind> kinds_;
  Kind round_;
};

// Issues one client operation per user (all at once) and runs until every
// one is answered; the number answered `want`.
int for_each_user(Cluster& c, int users, const std::function<std::uint64_t(int)>& op,
                  const std::function<bool(const ClientReply&)>& want) {
  std::vector<std::uint64_t> reqs;
  for (int u = 0; u < users; ++u) reqs.push_back(op(u));
  c.run_until_pred([&] {
    for (auto r : reqs)
      if (!c.reply(r)) return false;
    return true;
  }, 120'000);
  int ok = 0;
  for (auto r : reqs) ok += c.reply(r) && want(*c.reply(r)) ? 1 : 0;
  return ok;
}

int reconfig(const Options& o) {
  auto w0 = std::chrono::steady_clock::now();
  Cluster c(o.seed, core_config(o));
  Tally tally(c);
  form(c, o.nodes);
  Time formed = c.now();
  double form_wall = wall_since(w0);
  // Mail, so the crash and the rejoin move managers with state to rebuild.
  const int users = o.mail_users * o.nodes;
  auto via = [&](int u) { return static_cast<NodeId>(u % o.nodes + 1); };
  const int created = for_each_user(
      c, users, [&](int u) { return c.create_user(via(u), user_name(u)); },
      [](const ClientReply& r) { return r.status == Status::Ok; });
  const int delivered = for_each_user(
      c, users, [&](int u) { return c.deliver(via(u + 1), user_name(u), "INBOX", "Subject: m\r\n\r\nx\r\n"); },
      [](const ClientReply& r) { return r.status == Status::Ok; });
  c.run_for(3000);
  NodeId victim = static_cast<NodeId>(o.nodes);
  // All traffic for kAfter ms with no change, then from each change to
  // kAfter ms after the group converged (the round, the reports to the
  // new managers, anti-entropy).
  constexpr Time kAfter = 3000;
  std::uint64_t m0 = c.messages_sent();
  c.run_for(kAfter);
  const std::uint64_t idle_msgs = c.messages_sent() - m0;
  auto change = [&](const char* what, std::size_t want_up, auto&& act, Time& took, std::uint64_t& round_all,
                    std::uint64_t& after_all, std::string& line) {
    m0 = c.messages_sent();
    const Time t0 = c.now();
    tally.reset();
    act();
    bool ok = c.run_until_pred([&] { return c.converged() && c.up().size() == want_up; }, 120'000);
    took = c.now() - t0;
    round_all = c.messages_sent() - m0;
    line = tally.str(what);
    c.run_for(kAfter);
    after_all = c.messages_sent() - m0;
    return ok;
  };
  Time crash_ms = 0, join_ms = 0;
  std::uint64_t crash_msgs = 0, crash_after = 0, join_msgs = 0, join_after = 0;
  std::string crash_tally, rejoin_tally;
  const bool ok1 = change("crash", static_cast<std::size_t>(o.nodes - 1), [&] { c.crash(victim); }, crash_ms,
                          crash_msgs, crash_after, crash_tally);
  const bool ok2 = change("rejoin", static_cast<std::size_t>(o.nodes), [&] { c.restart(victim); }, join_ms,
                          join_msgs, join_after, rejoin_tally);
  // Every user's mail, through a node other than the one it was delivered
  // through, once the managers have their state again.
  c.run_for(2000);
  const int listed = for_each_user(
      c, users, [&](int u) { return c.list(via(u + 2), user_name(u), "INBOX"); },
      [](const ClientReply& r) { return r.status == Status::Ok && r.records.size() == 1; });
  std::cout << "reconfig nodes=" << o.nodes << " formed_ms=" << formed << " form_wall_s=" << form_wall
            << " crash_ms=" << crash_ms << " crash_msgs=" << crash_msgs << " crash_msgs_3s=" << crash_after
            << " idle_msgs_3s=" << idle_msgs << " rejoin_ms=" << join_ms << " rejoin_msgs=" << join_msgs
            << " rejoin_msgs_3s=" << join_after << " wall_s=" << wall_since(w0) << " " << crash_tally << " "
            << rejoin_tally << " users=" << users << " created=" << created << " delivered=" << delivered
            << " listed=" << listed << "\n";
  return ok1 && ok2 && listed == delivered ? 0 : 1;
}

// Heterogeneity: the same cost queues, placement decided by one policy, no
// protocol traffic (the core's choose_placement for `spread`, as its
// manager calls it, with each node's stores in flight, CPU and disk, as its
// load).
int hetero(const Options& o) {
  auto w0 = std::chrono::steady_clock::now();
  Cluster c(o.seed, CoreConfig{});
  CostLayer cost(c, o.cost);
  const CostModel& m = o.cost;
  int fast = static_cast<int>(std::lround(o.nodes * o.fast_pct / 100.0));
  // As in the paper's experiment, the fast nodes have faster disks.
  for (int i = 1; i <= fast; ++i) cost.set_speed(static_cast<NodeId>(i), 1.0, 3.0);
  std::mt19937_64 rng(o.seed);
  int users = std::max(10, o.users_per_node * o.nodes);
  UserPick pick(users, o.zipf);
  std::vector<std::vector<NodeId>> mail_map(static_cast<std::size_t>(users));
  // Stores each node has taken and not finished (CPU and disk): the load
  // the core piggybacks (Node::load: its stores in flight and its backlog).
  std::vector<std::uint32_t> in_flight(static_cast<std::size_t>(o.nodes) + 1, 0);
  std::uint64_t delivered = 0;
  std::vector<double> lat;
  Time measure_from = static_cast<Time>(o.warmup * 1000);
  Time end = measure_from + static_cast<Time>(o.seconds * 1000);
  auto node_of = [&](std::uint64_t h) { return static_cast<NodeId>(1 + h % static_cast<std::uint64_t>(o.nodes)); };
  std::function<void()> client = [&] {
    Time t0 = c.now();
    if (t0 >= end) return;
    int u = pick(rng);
    std::uint64_t h = user_hash(user_name(u));
    NodeId fe = static_cast<NodeId>(std::uniform_int_distribution<int>(1, o.nodes)(rng));
    double t = cost.serve_cpu(fe, static_cast<double>(t0), m.fe_deliver_cpu) + static_cast<double>(m.net_latency);
    std::vector<NodeId> chosen;
    if (o.policy == "static") {
      for (int r = 0; r < o.replicas; ++r) chosen.push_back(node_of(h + static_cast<std::uint64_t>(r)));
    } else if (o.policy == "random") {
      while (chosen.size() < static_cast<std::size_t>(std::min(o.replicas, o.nodes))) {
        NodeId x = node_of(rng());
        if (std::find(chosen.begin(), chosen.end(), x) == chosen.end()) chosen.push_back(x);
      }
    } else {
      PlacementInput in;
      in.mail_map = mail_map[static_cast<std::size_t>(u)];
      for (NodeId n = 1; n <= static_cast<NodeId>(o.nodes); ++n) in.live.push_back(NodeLoad{n, in_flight[n], false});
      in.replicas = static_cast<std::uint32_t>(o.replicas);
      in.salt = h;
      in.grow_when_busy = true;  // as the manager places
      chosen = choose_placement(in).nodes;
      auto& mm = mail_map[static_cast<std::size_t>(u)];
      for (NodeId n : chosen)
        if (std::find(mm.begin(), mm.end(), n) == mm.end()) mm.push_back(n);
    }
    double done = t;
    for (NodeId n : chosen) {
      const double stored = cost.serve_disk(n, cost.serve_cpu(n, t, m.store_cpu), m.store_disk);
      done = std::max(done, stored);
      ++in_flight[n];
      c.at(static_cast<Time>(std::ceil(stored)), [&in_flight, n] { --in_flight[n]; });
    }
    done += static_cast<double>(m.net_latency);
    c.at(static_cast<Time>(std::ceil(done)), [&, t0] {
      if (t0 >= measure_from && c.now() < end) {
        ++delivered;
        lat.push_back(static_cast<double>(c.now() - t0));
      }
      client();
    });
  };
  for (int k = 0; k < o.clients_per_node * o.nodes; ++k) c.at(k % 50, client);
  c.run_until(end + 10'000);
  double secs = static_cast<double>(end - measure_from) / 1000.0;
  std::cout << "hetero nodes=" << o.nodes << " fast_pct=" << o.fast_pct << " fast_nodes=" << fast
            << " policy=" << o.policy << " users=" << (o.zipf ? "zipf" : "uniform") << " msgs_per_s=" << static_cast<double>(delivered) / secs
            << " p50_ms=" << percentile(lat, 0.5) << " p99_ms=" << percentile(lat, 0.99)
            << " wall_s=" << wall_since(w0) << "\n";
  return delivered > 0 ? 0 : 1;
}

int usage() {
  std::cerr << "usage: sim_eval scale|timeline|reconfig|hetero --nodes N [options] (see the header of sim_eval.cc)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  Options o;
  o.cmd = argv[1];
  try {
    for (int i = 2; i < argc; ++i) {
      std::string a = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      std::string v = argv[++i];
      if (a == "--nodes") o.nodes = std::stoi(v);
      else if (a == "--replicas") o.replicas = std::stoi(v);
      else if (a == "--seconds") o.seconds = std::stod(v);
      else if (a == "--warmup") o.warmup = std::stod(v);
      else if (a == "--crash") o.crash = std::stoi(v);
      else if (a == "--crash-at") o.crash_at = std::stod(v);
      else if (a == "--restart-at") o.restart_at = std::stod(v);
      else if (a == "--seed") o.seed = std::stoull(v);
      else if (a == "--clients-per-node") o.clients_per_node = std::stoi(v);
      else if (a == "--read-fraction") o.read_fraction = std::stod(v);
      else if (a == "--users-per-node") o.users_per_node = std::stoi(v);
      else if (a == "--mail-users") o.mail_users = std::stoi(v);
      else if (a == "--fast-pct") o.fast_pct = std::stod(v);
      else if (a == "--policy") o.policy = v;
      else if (a == "--users") o.zipf = v != "uniform";
      else if (a == "--cost") set_cost(o.cost, v);
      else throw std::invalid_argument("unknown option " + a);
    }
    if (o.nodes < 1 || o.nodes > 5000) throw std::invalid_argument("--nodes must be 1..5000");
    if (o.replicas < 1 || o.crash < 0 || o.crash >= o.nodes + (o.cmd == "timeline" ? 0 : 1))
      throw std::invalid_argument("bad --replicas or --crash");
    if (o.policy != "static" && o.policy != "random" && o.policy != "spread")
      throw std::invalid_argument("--policy is static, random or spread");
    if (o.cmd == "scale") return scale(o);
    if (o.cmd == "timeline") return timeline(o);
    if (o.cmd == "reconfig") return reconfig(o);
    if (o.cmd == "hetero") return hetero(o);
  } catch (const std::invalid_argument& e) {
    std::cerr << "sim_eval: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sim_eval: " << e.what() << "\n";
    return 1;
  }
  return usage();
}
