// SPDX-License-Identifier: MIT
// porcupine-sim - run the cluster core in the deterministic simulator.
//
//   porcupine-sim demo   [--nodes N] [--seed S]       narrated run: crash, partition, join
//   porcupine-sim check  [--schedules N] [--seed-base S] [--min-nodes A] [--max-nodes B]
//   porcupine-sim replay --seed S                      one schedule with its full trace
//
// check and replay take --no-partitions and --drains (a node is drained
// in some schedules); a replay needs the options its check had.
//
// Exit status: 0 when every schedule held every invariant, 1 when one
// failed (its seed and the replay command are printed), 2 on bad usage.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "cluster.h"
#include "schedule.h"

using namespace porcupine;
using namespace porcupine::sim;

namespace {

int usage() {
  std::cerr << "usage: porcupine-sim demo [--nodes N] [--seed S]\n"
               "       porcupine-sim check [--schedules N] [--seed-base S] [--min-nodes A] [--max-nodes B]\n"
               "                           [--no-partitions] [--drains]\n"
               "       porcupine-sim replay --seed S [--min-nodes A] [--max-nodes B] [--no-partitions] [--drains]\n";
  return 2;
}

bool arg(int& i, int argc, char** argv, const char* name, std::uint64_t& out) {
  if (std::strcmp(argv[i], name) != 0) return false;
  if (i + 1 >= argc) throw std::invalid_argument(std::string(name) + " needs a value");
  out = std::stoull(argv[++i]);
  return true;
}

void status(Cluster& c, const char* what) {
  std::cout << "  [t=" << c.now() / 1000.0 << "s] " << what << ":";
  for (NodeId n : c.ids()) {
    Node* node = c.node(n);
    if (!node) { std::cout << " n" << n << "=down"; continue; }
    std::size_t managed = 0;
    for (NodeId m : node->membership().map()) managed += (m == n);
    std::cout << " n" << n << "(epoch " << node->membership().epoch().str() << ", "
              << node->membership().members().size() << " members, " << managed << " buckets, "
              << node->replicator().records().size() << " msgs)";
  }
  std::cout << "\n";
}

Time reconfigure(Cluster& c) {
  Time t0 = c.now();
  c.run_until_pred([&] { return c.converged(); }, 30'000);
  return c.now() - t0;
}

int demo(std::uint64_t nodes, std::uint64_t seed) {
  if (nodes < 2 || nodes > 64) { std::cerr << "--nodes must be 2..64\n"; return 2; }
  CoreConfig cfg;
  Cluster c(seed, cfg);
  std::vector<NodeId> seeds;
  for (NodeId i = 1; i <= nodes; ++i) seeds.push_back(i);
  std::cout << "Porcupine cluster core in the deterministic simulator (seed " << seed << ")\n\n";
  std::cout << "1. Start " << nodes << " nodes; they find each other and agree on one user map.\n";
  for (NodeId i = 1; i <= nodes; ++i) c.add_node(i, seeds);
  std::cout << "   formed one group in " << reconfigure(c) << " ms\n";
  status(c, "group");

  std::cout << "\n2. Create 20 users and deliver 200 messages through random nodes (R=2, spread=2).\n";
  for (int u = 0; u < 20; ++u) c.wait(c.create_user(1 + u % nodes, "user" + std::to_string(u) + "@example.org"));
  std::vector<std::uint64_t> reqs;
  for (int m = 0; m < 200; ++m) {
    reqs.push_back(c.deliver(1 + m % nodes, "user" + std::to_string(m % 20) + "@example.org", "INBOX",
                             "Subject: hello " + std::to_string(m) + "\r\n\r\nHi.\r\n"));
    c.run_for(10);
  }
  int ok = 0;
  for (auto r : reqs) ok += c.wait(r)->status == Status::Ok;
  std::cout << "   " << ok << "/200 acknowledged (each on 2 nodes before the acknowledgement)\n";
  status(c, "stored");

  NodeId victim = static_cast<NodeId>(nodes);
  std::cout << "\n3. Crash node " << victim << " (kill -9: memory lost, disk kept).\n";
  c.crash(victim);
  std::cout << "   the others detected it and reconfigured in " << reconfigure(c) << " ms\n";
  const ClientReply* l = c.wait(c.list(1, "user0@example.org", "INBOX"));
  std::cout << "   user0's INBOX listed through node 1: " << l->records.size()
            << " messages (fragments on the crashed node served by replicas)\n";
  ok = 0;
  for (int m = 0; m < 50; ++m)
    ok += c.wait(c.deliver(1, "user" + std::to_string(m % 20) + "@example.org", "INBOX", "late"))->status == Status::Ok;
  std::cout << "   delivery continues: " << ok << "/50 more acknowledged\n";

  std::cout << "\n4. Restart node " << victim << "; it rejoins and reports its fragments.\n";
  c.restart(victim);
  std::cout << "   rejoined in " << reconfigure(c) << " ms\n";
  c.run_for(5000);
  status(c, "rejoined");

  std::cout << "\n5. Partition {1,2} from the rest, then heal.\n";
  std::set<NodeId> a{1, 2}, b;
  for (NodeId i = 3; i <= nodes; ++i) b.insert(i);
  c.partition({a, b});
  c.run_for(8000);
  status(c, "partitioned (two groups, each serving)");
  c.heal();
  std::cout << "   healed; merged into one group in " << reconfigure(c) << " ms\n";

  NodeId joiner = static_cast<NodeId>(nodes + 1);
  std::cout << "\n6. A new node " << joiner << " joins through seeds 1 and 2.\n";
  c.add_node(joiner, {1, 2});
  std::cout << "   joined in " << reconfigure(c) << " ms\n";
  c.run_for(10'000);
  status(c, "after join (buckets rebalanced)");

  WorkloadLog w;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const ClientReply* r = c.reply(reqs[i]);
    if (!r || r->status != Status::Ok) continue;
    Acked a2;
    a2.target.id = r->msg;
    a2.target.user = "user" + std::to_string(i % 20) + "@example.org";
    a2.target.folder = "INBOX";
    a2.target.replicas = r->replicas;
    a2.uidvalidity = r->uidvalidity;
    a2.uid = r->uid;
    w.delivered.push_back(a2);
  }
  auto bad = check_invariants(c, w, false);
  std::cout << "\n7. Invariants (membership, managers, no loss, mail maps, UIDs): "
            << (bad.empty() ? "all hold" : "VIOLATED") << "\n";
  for (const auto& s : bad) std::cout << "   " << s << "\n";
  return bad.empty() ? 0 : 1;
}

int check(std::uint64_t schedules, std::uint64_t base, const ScheduleOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  std::uint64_t failed = 0;
  for (std::uint64_t i = 0; i < schedules; ++i) {
    ScheduleResult r = run_schedule(base + i, opt);
    if (!r.ok) {
      ++failed;
      std::cout << r.summary << "\n";
      for (const auto& f : r.failures) std::cout << "  " << f << "\n";
      std::cout << "  replay: porcupine-sim replay --seed " << r.seed << (opt.partitions ? "" : " --no-partitions")
                << (opt.drains ? " --drains" : "") << "\n";
    }
    if ((i + 1) % 1000 == 0)
      std::cout << (i + 1) << " schedules, " << failed << " failed\n" << std::flush;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << schedules << " schedules from seed " << base << ": " << (schedules - failed)
            << " passed, " << failed << " failed (" << secs << " s)\n";
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string cmd = argv[1];
  bool partitions = true;
  bool drains = false;
  std::uint64_t nodes = 5, seed = 1, schedules = 1000, base = 1, min_n = 3, max_n = 7;
  try {
    for (int i = 2; i < argc; ++i) {
      if (arg(i, argc, argv, "--nodes", nodes) || arg(i, argc, argv, "--seed", seed) ||
          arg(i, argc, argv, "--schedules", schedules) || arg(i, argc, argv, "--seed-base", base) ||
          arg(i, argc, argv, "--min-nodes", min_n) || arg(i, argc, argv, "--max-nodes", max_n))
        continue;
      if (std::strcmp(argv[i], "--no-partitions") == 0) { partitions = false; continue; }
      if (std::strcmp(argv[i], "--drains") == 0) { drains = true; continue; }
      std::cerr << "unknown argument: " << argv[i] << "\n";
      return usage();
    }
  } catch (const std::exception& e) {
    std::cerr << "porcupine-sim: " << e.what() << "\n";
    return 2;
  }
  ScheduleOptions opt;
  opt.min_nodes = static_cast<int>(min_n);
  opt.max_nodes = static_cast<int>(max_n);
  opt.partitions = partitions;
  opt.drains = drains;
  if (cmd == "demo") return demo(nodes, seed);
  if (cmd == "check") return check(schedules, base, opt);
  if (cmd == "replay") {
    opt.trace = true;
    ScheduleResult r = run_schedule(seed, opt);
    for (const auto& line : r.trace) std::cout << line << "\n";
    std::cout << r.summary << "\n";
    for (const auto& f : r.failures) std::cout << "  " << f << "\n";
    return r.ok ? 0 : 1;
  }
  return usage();
}
