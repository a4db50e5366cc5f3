// SPDX-License-Identifier: MIT
// deliver_bench.cc - deliveries per second through the agents' local API.
//
//   deliver_bench --socket S [--socket S2 ...] --users U [--users ...]
//                 [--messages N] [--size BYTES] [--connections C]
//
// C client threads, each with its own connection, spread round-robin over
// the given sockets (nodes), deliver N messages in total to the users in
// turn. Prints one line of key=value figures; exit 1 if any delivery
// failed for a reason other than a temporary one.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"

int main(int argc, char** argv) {
  std::vector<std::string> sockets, users;
  long messages = 1000, size = 4096, connections = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--socket") sockets.push_back(argv[i + 1]);
    else if (a == "--users") users.push_back(argv[i + 1]);
    else if (a == "--messages") messages = std::atol(argv[i + 1]);
    else if (a == "--size") size = std::atol(argv[i + 1]);
    else if (a == "--connections") connections = std::atol(argv[i + 1]);
    else {
      std::fprintf(stderr, "deliver_bench: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (sockets.empty() || users.empty() || messages <= 0 || size <= 0 || connections <= 0) {
    std::fprintf(stderr, "usage: deliver_bench --socket S... --users U... [--messages N] [--size B] [--connections C]\n");
    return 2;
  }
  std::string body = "Subject: bench\r\n\r\n";
  while (static_cast<long>(body.size()) < size) body += "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLM\r\n";
  body.resize(static_cast<std::size_t>(size));
  std::atomic<long> next{0}, ok{0}, tempfail{0}, failed{0};
  std::vector<std::vector<double>> lat(static_cast<std::size_t>(connections));
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (long c = 0; c < connections; ++c) {
    threads.emplace_back([&, c] {
      porcupine::client::Client cl(sockets[static_cast<std::size_t>(c) % sockets.size()], 30000);
      for (long n; (n = next++) < messages;) {
        std::istringstream in(body);
        auto s = std::chrono::steady_clock::now();
        auto r = cl.deliver({users[static_cast<std::size_t>(n) % users.size()]}, "INBOX", in);
        lat[static_cast<std::size_t>(c)].push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s).count());
        if (!r) ++failed;
        else if (r->code() == porcupine::agentpb::OK) ++ok;
        else if (r->code() == porcupine::agentpb::TEMPFAIL) ++tempfail;
        else ++failed;
      }
    });
  }
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) { return all.empty() ? 0.0 : all[std::min(all.size() - 1, static_cast<std::size_t>(p * all.size()))]; };
  std::printf("messages=%ld ok=%ld tempfail=%ld failed=%ld seconds=%.3f per_second=%.1f p50_ms=%.2f p99_ms=%.2f\n",
              messages, ok.load(), tempfail.load(), failed.load(), secs, ok.load() / secs, pct(0.5), pct(0.99));
  return failed.load() == 0 ? 0 : 1;
}
