/* SPDX-License-Identifier: MIT */
// agent.h - porcupine-agent: the cluster core driven by real I/O.
//
// One io_context, one thread. The core (Node) decides; this class feeds it
// time (a 100 ms tick on the wall clock), peer frames (PeerNet) and local
// requests (LocalServer), and carries out its effects. Group commit: every
// effect of an event (messages to peers, replies to local clients) is held
// until the store has flushed that event's writes, so nothing leaves the
// node before it is durable; one flush covers everything that happened in
// the same turn of the event loop. A flush that fails stops the agent
// (exit 75) rather than acknowledge what may not be on disk.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange
#include <boost/asio.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/peer_net.h"
#include "core/node.h"
#include "store/node_cache.h"
#include "store/redis_store.h"

namespace porcupine::agent {

struct AgentOptions {
  CoreConfig core;
  std::string listen;
  std::string source_address;  // outgoing peer connections' (config: source_address resolved; empty: none)
  std::map<NodeId, std::string> peers;
  std::string secret;
  std::string spool_dir;
  // Free space to keep on the spool's filesystem: below it the node is full
  // (Node::set_spool_full) and refuses new bodies; 0: never full.
  std::uint64_t spool_reserve_bytes = 1u << 30;
  // The node cache (store/node_cache.h), from cache_size, cache_dir (empty:
  // <spool_dir>/cache), cache_entry_max (0: cache_size / 8) and
  // cache_reserve_bytes. On the spool's filesystem the cache's reserve is at
  // least spool_reserve_bytes and a quarter, the level at which a full node
  // takes copies again: the cache always gives way to the replicas first.
  std::uint64_t cache_size = 1u << 30;
  std::string cache_dir;
  std::uint64_t cache_entry_max = 0;
  std::uint64_t cache_reserve_bytes = 2ull << 30;
  std::string redis_socket;
  std::string local_socket;
  std::string local_socket_group;
  std::string local_admin_group;  // may administer users (with root and the agent's user)
  std::string metrics_listen;  // host:port of the Prometheus endpoint (Metrics); empty: none
  std::string peer_security = "tls";  // tls | both | legacy (PeerNet::Security)
  std::int64_t reconnect_backoff_max_ms = 5000;
  std::uint64_t message_size_limit = 50u << 20;
  // A delivery may be this much over message_size_limit: the trace headers
  // Postfix and Dovecot's LMTP add on the way (Received, Return-Path,
  // Delivered-To), so a message Postfix took at its limit (set equal to
  // message_size_limit) is never refused here.
  static constexpr std::uint64_t kTraceHeaderMargin = 64u << 10;
  std::uint64_t deliver_size_limit() const { return message_size_limit + kTraceHeaderMargin; }
};

class LocalServer;
class Metrics;

class Agent : private Env {
 public:
  using LogFn = std::function<void(const std::string&)>;
  Agent(boost::asio::io_context& io, AgentOptions opt, LogFn log);
  ~Agent() override;

  // Loads the store, starts listening (peers, local socket), joins.
  // Throws std::runtime_error with an operator-readable reason.
  void start();
  void stop();

  // ---- the local API (LocalServer calls these; `done` runs once) ----
  using Done = std::function<void(const ClientReply&)>;
  void op(const std::function<void(Node&, Time, std::uint64_t)>& call, Done done);
  Node& node() { return *node_; }
  const PeerNet& peers() const { return *net_; }
  const store::RedisStore& store() const { return *store_; }
  // Bodies of messages this node holds no replica of: the local API's reads
  // open and fill it; the agent sweeps it and drops what it expunges.
  store::NodeCache& cache() { return *cache_; }
  const store::NodeCache& cache() const { return *cache_; }
  const AgentOptions& options() const { return opt_; }
  Metrics& metrics() { return *metrics_; }
  Time now() const;
  Time started() const { return started_; }
  // The spool filesystem's free bytes at the last measure (measure_spool).
  std::uint64_t spool_free() const { return spool_free_; }
  void log(const std::string& line) override { log_(line); }
  Time wall() const override;

 private:
  // Env
  void send(Envelope e) override;
  void reply(ClientReply r) override;

  void tick();
  void on_peer(Envelope e);
  // Measures the spool's free space (statvfs) and tells the core when the
  // node turns full (below spool_reserve_bytes) or has room again (a
  // quarter above it, so one message more or less does not flap it).
  void measure_spool();
  // A Store or Push whose body this node would have to write while full:
  // dropped, as if lost on the way; its sender keeps it and sends it again.
  bool refuse_body(const Envelope& e);
  // An expunge passing through this node (sent or received) drops the
  // message from the cache at once, rather than when the LRU reaches it.
  void drop_expunged(const Envelope& e);
  void commit();  // flush the store, then release held effects

  boost::asio::io_context& io_;
  AgentOptions opt_;
  LogFn log_;
  std::unique_ptr<store::RedisStore> store_;
  std::unique_ptr<store::NodeCache> cache_;
  std::unique_ptr<Node> node_;
  std::unique_ptr<PeerNet> net_;
  std::unique_ptr<LocalServer> local_;
  std::unique_ptr<Metrics> metrics_;
  boost::asio::steady_timer ticker_;
  std::vector<Envelope> held_out_;
  std::vector<ClientReply> held_replies_;
  std::vector<Envelope> to_self_;
  std::map<std::uint64_t, Done> waiting_;
  std::uint64_t next_req_ = 1;
  bool commit_posted_ = false;
  bool stopped_ = false;
  Time started_ = 0;
  std::uint64_t spool_free_ = 0;
  Time spool_measured_ = 0;
  bool spool_unmeasurable_ = false;  // statvfs failed (logged once)
  std::uint64_t bodies_refused_ = 0;  // while full, not yet logged
  Time refused_logged_ = 0;
  Time cache_swept_ = 0;
};

}  // namespace porcupine::agent
