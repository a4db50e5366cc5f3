// SPDX-License-Identifier: MIT
// mail_load.cc - the mail workload through the agents' local API for a
// fixed time: senders deliver messages whose sizes follow the size table
// below, readers retrieve and delete (list INBOX, fetch the first message,
// expunge it: what a POP3 RETR + DELE does). Survives nodes that die: a
// connection that fails moves to the next node.
//
//   mail_load --socket S [--socket S2 ...] --users U [--users ...]
//             [--seconds D] [--senders N] [--readers M] [--seed X] [--per-second]
//
// Prints, with --per-second, one line per second ("second t=<s>
// deliveries=<n> reads=<n> failures=<n> p99_ms=<ms>": p99 of the latency
// of the deliveries that began in that second, failed ones included), then
// one summary line of key=value figures. Exit 1 when nothing was
// delivered.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"

namespace {

// Message sizes: median 4 KiB, mean about 22.6 KiB, a tail to 1 MiB, in
// the shape published mail-size studies report (most messages a few KiB,
// a few large attachments carrying most bytes). tests/bench/evaluate uses
// the same table for the stock-stack baseline.
struct SizeClass { long bytes; double weight; };
const SizeClass kSizes[] = {{1024, 15}, {2048, 20}, {4096, 25}, {8192, 15}, {16384, 10},
                            {32768, 7}, {65536, 4}, {131072, 2.5}, {524288, 1}, {1048576, 0.5}};

using Clock = std::chrono::steady_clock;

std::string make_body(long size, std::uint64_t n) {
  std::string body = "Subject: load " + std::to_string(n) + "\r\n\r\n";
  while (static_cast<long>(body.size()) < size) body += "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLM\r\n";
  body.resize(static_cast<std::size_t>(size));
  return body;
}

struct Stats {
  std::mutex mu;
  std::map<long, long> deliveries, reads, failures;  // per second since start
  std::vector<double> lat_deliver, lat_read;
  std::map<long, std::vector<double>> lat_by_start;  // every delivery's latency (answered or not), by the second it began
  long bytes = 0;
};

class Worker {
 public:
  Worker(const std::vector<std::string>& sockets, std::size_t first) : sockets_(sockets), at_(first) { open(); }
  porcupine::client::Client& cl() { return *cl_; }
  void next_node() { at_ = (at_ + 1) % sockets_.size(); open(); }

 private:
  void open() {
    cl_ = std::make_unique<porcupine::client::Client>(sockets_[at_], 10000);
    cl_->connect();
  }
  const std::vector<std::string>& sockets_;
  std::size_t at_;
  std::unique_ptr<porcupine::client::Client> cl_;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> sockets, users;
  double seconds = 10;
  long senders = 6, readers = 2;
  std::uint64_t seed = 1;
  bool per_second = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--per-second") { per_second = true; continue; }
    if (i + 1 >= argc) { std::fprintf(stderr, "mail_load: %s needs a value\n", a.c_str()); return 2; }
    std::string v = argv[++i];
    if (a == "--socket") sockets.push_back(v);
    else if (a == "--users") users.push_back(v);
    else if (a == "--seconds") seconds = std::atof(v.c_str());
    else if (a == "--senders") senders = std::atol(v.c_str());
    else if (a == "--readers") readers = std::atol(v.c_str());
    else if (a == "--seed") seed = std::strtoull(v.c_str(), nullptr, 10);
    else { std::fprintf(stderr, "mail_load: unknown option %s\n", a.c_str()); return 2; }
  }
  if (sockets.empty() || users.empty() || seconds <= 0 || senders < 0 || readers < 0 || senders + readers == 0) {
    std::fprintf(stderr, "usage: mail_load --socket S... --users U... [--seconds D] [--senders N] [--readers M] [--per-second]\n");
    return 2;
  }
  Stats st;
  auto t0 = Clock::now();
  auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto sec = [&] { return static_cast<long>(std::chrono::duration<double>(Clock::now() - t0).count()); };
  auto ms_since = [](Clock::time_point s) { return std::chrono::duration<double, std::milli>(Clock::now() - s).count(); };
  auto fail = [&](Worker& w) {
    {
      std::lock_guard<std::mutex> g(st.mu);
      ++st.failures[sec()];
    }
    w.next_node();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  };
  std::atomic<std::uint64_t> counter{0};
  std::vector<std::thread> threads;
  for (long s = 0; s < senders; ++s) {
    threads.emplace_back([&, s] {
      Worker w(sockets, static_cast<std::size_t>(s) % sockets.size());
      std::mt19937_64 rng(seed * 1000 + static_cast<std::uint64_t>(s));
      std::vector<double> weights;
      for (const auto& c : kSizes) weights.push_back(c.weight);
      std::discrete_distribution<int> size_of(weights.begin(), weights.end());
      std::uniform_int_distribution<std::size_t> user_of(0, users.size() - 1);
      while (Clock::now() < end) {
        long size = kSizes[size_of(rng)].bytes;
        std::istringstream in(make_body(size, counter++));
        auto t = Clock::now();
        const long began = sec();
        auto r = w.cl().deliver({users[user_of(rng)]}, "INBOX", in);
        {
          std::lock_guard<std::mutex> g(st.mu);
          st.lat_by_start[began].push_back(ms_since(t));
        }
        if (!r || r->code() != porcupine::agentpb::OK) { fail(w); continue; }
        std::lock_guard<std::mutex> g(st.mu);
        ++st.deliveries[sec()];
        st.lat_deliver.push_back(ms_since(t));
        st.bytes += size;
      }
    });
  }
  for (long m = 0; m < readers; ++m) {
    threads.emplace_back([&, m] {
      Worker w(sockets, static_cast<std::size_t>(m + senders) % sockets.size());
      std::mt19937_64 rng(seed * 2000 + static_cast<std::uint64_t>(m));
      std::uniform_int_distribution<std::size_t> user_of(0, users.size() - 1);
      while (Clock::now() < end) {
        auto t = Clock::now();
        porcupine::agentpb::Request list;
        list.mutable_folder_list()->set_user(users[user_of(rng)]);
        list.mutable_folder_list()->set_folder("INBOX");
        auto l = w.cl().call(list);
        if (!l || l->code() != porcupine::agentpb::OK) { fail(w); continue; }
        if (l->messages_size() == 0) {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          continue;
        }
        porcupine::agentpb::MessageRef ref = l->messages(0).ref();  // a listing's: no names
        ref.set_user(list.folder_list().user());
        ref.set_folder("INBOX");
        porcupine::agentpb::Request fetch;
        *fetch.mutable_fetch()->mutable_ref() = ref;
        auto f = w.cl().call(fetch);
        if (!f || f->code() != porcupine::agentpb::OK) {
          // Another reader may have deleted it first: not a failure of the cluster.
          if (f && f->code() == porcupine::agentpb::NOT_FOUND) continue;
          fail(w);
          continue;
        }
        porcupine::agentpb::Request del;
        *del.mutable_expunge()->mutable_ref() = ref;
        auto e = w.cl().call(del);
        if (!e || (e->code() != porcupine::agentpb::OK && e->code() != porcupine::agentpb::NOT_FOUND)) { fail(w); continue; }
        std::lock_guard<std::mutex> g(st.mu);
        ++st.reads[sec()];
        st.lat_read.push_back(ms_since(t));
      }
    });
  }
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  auto total = [](const std::map<long, long>& m) { long n = 0; for (auto& [k, v] : m) n += v; return n; };
  auto pct = [](std::vector<double> v, double p) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
  };
  if (per_second)
    for (long s = 0; s <= static_cast<long>(seconds); ++s)
      std::printf("second t=%ld deliveries=%ld reads=%ld failures=%ld p99_ms=%.1f\n", s, st.deliveries[s], st.reads[s],
                  st.failures[s], pct(st.lat_by_start[s], 0.99));
  long d = total(st.deliveries), r = total(st.reads);
  std::printf("deliveries=%ld reads=%ld failures=%ld seconds=%.3f per_second=%.1f reads_per_second=%.1f "
              "mean_bytes=%.0f p50_ms=%.2f p99_ms=%.2f read_p50_ms=%.2f read_p99_ms=%.2f\n",
              d, r, total(st.failures), secs, d / secs, r / secs, d ? static_cast<double>(st.bytes) / d : 0.0,
              pct(st.lat_deliver, 0.5), pct(st.lat_deliver, 0.99), pct(st.lat_read, 0.5), pct(st.lat_read, 0.99));
  return d > 0 ? 0 : 1;
}
