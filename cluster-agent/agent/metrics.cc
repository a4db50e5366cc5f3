// SPDX-License-Identifier: MIT
// metrics.cc - see metrics.h.
#include "agent/metrics.h"

#include <sys/statvfs.h>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <set>
#include <stdexcept>
#include <vector>

#include "agent/agent.h"

namespace porcupine::agent {

namespace asio = boost::asio;
namespace pm = prometheus;

namespace {

constexpr auto kRefresh = std::chrono::seconds(1);
constexpr int kScanEvery = 5;  // refreshes between two passes over every record

// Local API latencies: a status answer takes microseconds, a delivery an
// fsync or two on R nodes, and anything waits at most request_timeout_ms
// (5 s by default) plus a large body's crossing time.
const pm::Histogram::BucketBoundaries kRequestBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                         0.25,   0.5,   1,      2.5,   5,    10,    30};
// One group commit: file writes, fdatasync, a Redis MULTI/EXEC fsynced.
const pm::Histogram::BucketBoundaries kFlushBuckets = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                                       0.05,   0.1,   0.25,  0.5,   1,    2.5};

pm::Gauge& gauge(pm::Registry& r, const std::string& name, const std::string& help) {
  return pm::BuildGauge().Name(name).Help(help).Register(r).Add({});
}
pm::Counter& counter(pm::Registry& r, const std::string& name, const std::string& help) {
  return pm::BuildCounter().Name(name).Help(help).Register(r).Add({});
}
pm::Family<pm::Gauge>& gauges(pm::Registry& r, const std::string& name, const std::string& help) {
  return pm::BuildGauge().Name(name).Help(help).Register(r);
}

// Adds to a counter what a monotonic count of PeerNet or the store grew
// by since the last refresh.
void carry(pm::Counter& c, std::uint64_t now, std::uint64_t& seen) {
  if (now > seen) c.Increment(static_cast<double>(now - seen));
  seen = now;
}

// The operation of a request, as its label: the field name of its oneof
// (deliver for DeliverBegin; folder_digest for IDLE's digest-only listing,
// so its polls do not hide the latency of real listings).
std::string_view operation_of(const agentpb::Request& q) {
  switch (q.op_case()) {
    case agentpb::Request::kDeliverBegin: return "deliver";
    case agentpb::Request::kFolderList:
      if (q.folder_list().digest_only()) return "folder_digest";
      break;
    case agentpb::Request::OP_NOT_SET: return "none";
    default: break;
  }
  const auto* field = agentpb::Request::descriptor()->FindFieldByNumber(static_cast<int>(q.op_case()));
  return field ? std::string_view(field->name()) : std::string_view("unknown");
}

// civetweb's listening_ports form of host:port: a numeric address, an IPv6
// one in brackets. The host is resolved here (once, at start).
std::string bind_address(asio::io_context& io, const std::string& listen) {
  std::string host, port;
  if (!listen.empty() && listen.front() == '[') {
    auto close = listen.find(']');
    if (close == std::string::npos || close + 2 > listen.size() || listen[close + 1] != ':')
      throw std::runtime_error("metrics_listen " + listen + " is not [host]:port");
    host = listen.substr(1, close - 1);
    port = listen.substr(close + 2);
  } else {
    auto colon = listen.rfind(':');
    if (colon == std::string::npos) throw std::runtime_error("metrics_listen " + listen + " is not host:port");
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
  }
  boost::system::error_code ec;
  asio::ip::tcp::resolver resolver(io);
  auto found = resolver.resolve(host, port, asio::ip::resolver_base::numeric_service, ec);
  if (ec || found.empty())
    throw std::runtime_error("cannot resolve metrics_listen " + listen + ": " +
                             (ec ? ec.message() : std::string("no address")));
  // An IPv4 address where the name has both (localhost): see start().
  asio::ip::tcp::endpoint ep = found.begin()->endpoint();
  for (const auto& f : found)
    if (f.endpoint().address().is_v4()) {
      ep = f.endpoint();
      break;
    }
  // civetweb says only "problem binding to port": find out why first.
  asio::ip::tcp::acceptor probe(io);
  probe.open(ep.protocol(), ec);
  if (!ec) probe.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) probe.bind(ep, ec);
  if (ec) throw std::runtime_error("cannot serve metrics on " + listen + ": " + ec.message());
  probe.close(ec);
  const std::string a = ep.address().to_string();
  return (ep.address().is_v6() ? "[" + a + "]" : a) + ":" + std::to_string(ep.port());
}

}  // namespace

Metrics::Metrics(asio::io_context& io, Agent& agent)
    : io_(io), agent_(agent), timer_(io), registry_(std::make_shared<pm::Registry>()) {
  pm::Registry& r = *registry_;
  pm::BuildGauge()
      .Name("porcupine_agent_info")
      .Help("Always 1: this agent's node id and version")
      .Register(r)
      .Add({{"node", std::to_string(agent.options().core.self)}, {"version", PORCUPINE_VERSION}})
      .Set(1);
  gauge(r, "porcupine_start_time_seconds", "When the agent started, in seconds since the epoch")
      .Set(static_cast<double>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count()) /
           1000.0);

  requests_family_ = &pm::BuildCounter()
                          .Name("porcupine_local_requests_total")
                          .Help("Local API requests answered, by operation and result code")
                          .Register(r);
  latency_family_ = &pm::BuildHistogram()
                         .Name("porcupine_local_request_duration_seconds")
                         .Help("Time from a local API request's arrival to its answer, by operation")
                         .Register(r);
  delivered_family_ = &pm::BuildCounter()
                           .Name("porcupine_delivered_messages_total")
                           .Help("Messages delivered through this node, one per recipient, by result code")
                           .Register(r);
  delivered_bytes_ = &counter(r, "porcupine_delivered_bytes_total",
                              "Bytes of the messages delivered through this node, once per recipient stored");

  in_group_ = &gauge(r, "porcupine_in_group", "1 when this node is in a group (has installed a membership)");
  members_ = &gauge(r, "porcupine_members", "Members of the group in this node's view");
  epoch_seconds_ = &gauge(r, "porcupine_epoch_timestamp_seconds",
                          "Time at which the installed membership epoch was begun, in seconds since the epoch");
  epoch_changes_ = &counter(r, "porcupine_epoch_changes_total",
                            "Membership epochs this node has installed (as seen once a second)");
  node_member_ = &gauges(r, "porcupine_node_member",
                         "Per node this one knows of: 1 a member of the group in this node's view, 0 not");
  node_connected_ = &gauges(r, "porcupine_node_connected",
                            "Per node this one knows of: 1 when an authenticated connection to it is up "
                            "(this node itself: 1)");
  node_buckets_ = &gauges(r, "porcupine_node_buckets", "Buckets of the user map each member manages");
  node_load_ = &gauges(r, "porcupine_node_load", "Each member's load as this node last heard it");
  node_weight_ = &gauges(r, "porcupine_node_weight", "Each member's node_weight");
  buckets_ = &gauge(r, "porcupine_buckets", "Buckets in the user map");
  buckets_managed_ = &gauge(r, "porcupine_buckets_managed", "Buckets of the user map this node manages");
  buckets_not_ready_ = &gauge(r, "porcupine_buckets_not_ready",
                              "Buckets this node manages whose mail maps are still being rebuilt");

  backlog_ = &gauge(r, "porcupine_replication_backlog",
                    "Replicated updates in this node's log not yet known to be held by every replica");
  pending_reports_ = &gauge(r, "porcupine_pending_reports", "Mail-map reports this node has yet to deliver");
  message_records_ = &gauge(r, "porcupine_message_records", "Messages this node holds a replica of (not expunged)");
  death_certificates_ = &gauge(r, "porcupine_death_certificates", "Expunged messages kept as death certificates");
  profiles_ = &gauge(r, "porcupine_profiles", "User profiles this node holds a replica of");
  under_replicated_ = &gauge(r, "porcupine_under_replicated_messages",
                             "Messages this node holds whose replica list names a node that is not a member, "
                             "or one draining or gone (refreshed every 5 s)");
  node_admin_ = &gauges(r, "porcupine_node_admin_state",
                        "What the cluster was told of each node it was told of: 0 active (taken back), 1 draining "
                        "(porcupinectl drain), 2 gone (porcupinectl node forget, node_dead_timeout)");
  repair_copies_ = &counter(r, "porcupine_repair_copies_total",
                            "New copies of messages this node made on other nodes (repair and drain), acknowledged");
  repair_bytes_ = &counter(r, "porcupine_repair_bytes_total", "Bytes of those copies");
  repair_profiles_ = &counter(r, "porcupine_repair_profiles_total",
                              "Profiles this node (as their manager) gave new holders (repair and drain)");
  store_failovers_ = &counter(r, "porcupine_store_failovers_total",
                              "Stores this node coordinated that replaced a silent replica by another live node");
  repair_failed_ = &counter(r, "porcupine_repair_copies_failed_total",
                            "Copies given up after their attempts (tried again in a later pass)");
  repair_pending_ = &gauge(r, "porcupine_repair_pending_messages",
                           "Messages this node leads whose replica list names a draining or gone node (last full "
                           "pass over its records): under-replicated until copied");
  repair_inflight_ = &gauge(r, "porcupine_repair_inflight_messages", "Messages being copied by this node now");
  drain_messages_ = &gauge(r, "porcupine_drain_remaining_messages",
                           "Live messages whose replica list still names this node (a drained node is done at 0; "
                           "refreshed every 5 s)");
  drain_bytes_ = &gauge(r, "porcupine_drain_remaining_bytes", "Bytes of those messages (refreshed every 5 s)");
  drain_profiles_ = &gauge(r, "porcupine_drain_remaining_profiles",
                           "Profiles naming this node a holder (refreshed every 5 s)");

  spool_bytes_ = &gauge(r, "porcupine_spool_message_bytes",
                        "Bytes of the message bodies this node holds in its spool (refreshed every 5 s)");
  spool_fs_avail_ = &gauge(r, "porcupine_spool_filesystem_avail_bytes",
                           "Bytes available to the agent on the spool directory's filesystem");
  spool_fs_size_ = &gauge(r, "porcupine_spool_filesystem_size_bytes", "Size of the spool directory's filesystem");
  flush_seconds_ = &pm::BuildHistogram()
                        .Name("porcupine_store_flush_duration_seconds")
                        .Help("One group commit of the store: body files synced, then Redis's MULTI/EXEC")
                        .Register(r)
                        .Add({}, kFlushBuckets);
  store_fsyncs_ = &counter(r, "porcupine_store_fsyncs_total", "fsync and fdatasync calls of the spool");
  store_commands_ = &counter(r, "porcupine_store_redis_commands_total", "Commands sent to Redis by the store");
  store_body_files_ = &counter(r, "porcupine_store_body_files_total", "Message body files written to the spool");

  cache_bytes_ = &gauge(r, "porcupine_cache_bytes",
                        "Bytes the node cache's files take on disk (bodies of messages this node holds no replica of)");
  cache_budget_ = &gauge(r, "porcupine_cache_budget_bytes", "The node cache's budget (cache_size; 0: no cache)");
  cache_entries_ = &gauge(r, "porcupine_cache_entries", "Bodies in the node cache");
  cache_hits_ = &counter(r, "porcupine_cache_hits_total", "Reads the node cache answered");
  cache_misses_ = &counter(r, "porcupine_cache_misses_total", "Reads of bodies the node cache did not hold");
  cache_evictions_ = &counter(r, "porcupine_cache_evictions_total",
                              "Bodies evicted from the node cache, least recently used first, for its budget or "
                              "its filesystem's reserve");
  cache_refused_ = &counter(r, "porcupine_cache_refused_total",
                            "Bodies the node cache did not keep: over cache_entry_max, or no room on its disk");
  auto& fetches = pm::BuildCounter()
                      .Name("porcupine_fetches_total")
                      .Help("Bodies (part=whole) and header parts (part=header) fetched from a holder for this "
                            "node's readers")
                      .Register(r);
  auto& fetch_bytes = pm::BuildCounter()
                          .Name("porcupine_fetch_bytes_total")
                          .Help("Bytes of the bodies (part=whole) and header parts (part=header) fetched from a "
                                "holder for this node's readers")
                          .Register(r);
  for (int k = 0; k < 2; ++k) {
    const std::string part = k == 0 ? "whole" : "header";
    fetches_[k] = &fetches.Add({{"part", part}});
    fetch_bytes_[k] = &fetch_bytes.Add({{"part", part}});
  }
  cache_full_ = &counter(r, "porcupine_cache_full_total",
                         "Of those, bodies not kept for want of room (the disk refused a write, or its free space "
                         "is below cache_reserve_bytes)");

  auto& frames = pm::BuildCounter()
                     .Name("porcupine_peer_frames_total")
                     .Help("Frames exchanged with other agents, by direction")
                     .Register(r);
  frames_in_ = &frames.Add({{"direction", "in"}});
  frames_out_ = &frames.Add({{"direction", "out"}});
  frames_dropped_ = &counter(r, "porcupine_peer_frames_dropped_total",
                             "Messages to a peer dropped for want of a connection (the core sends again)");
  handshakes_failed_ = &counter(r, "porcupine_peer_handshakes_failed_total",
                                "Accepted connections closed before their handshake finished");
  strangers_refused_ = &counter(r, "porcupine_peer_strangers_refused_total",
                                "Accepted connections refused at once, over the caps on unauthenticated ones");
}

Metrics::~Metrics() { stop(); }

void Metrics::start() {
  const std::string& listen = agent_.options().metrics_listen;
  if (listen.empty() || running_) return;
  const std::string bind = bind_address(io_, listen);
  try {
    // Two threads serve scrapes; a client that stalls is dropped after 10 s.
    exposer_ = std::make_unique<pm::Exposer>(
        std::vector<std::string>{"listening_ports", bind, "num_threads", "2", "request_timeout_ms", "10000"});
  } catch (const std::exception& e) {
    // Debian's civetweb is built without IPv6 (mg_check_feature(8) is 0).
    throw std::runtime_error("cannot serve metrics on " + listen + ": " + e.what() +
                             (bind.front() == '[' ? " (the HTTP server, civetweb, may have been built without IPv6, "
                                                    "as Debian's is: give an IPv4 address)"
                                                  : ""));
  }
  exposer_->RegisterCollectable(registry_);
  endpoint_ = bind;
  running_ = true;
  refresh();
  schedule();
}

void Metrics::stop() {
  running_ = false;
  timer_.cancel();
  exposer_.reset();  // joins civetweb's threads
}

void Metrics::schedule() {
  timer_.expires_after(kRefresh);
  timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || !running_) return;
    refresh();
    schedule();
  });
}

pm::Counter& Metrics::requests(std::string_view operation, agentpb::Code code) {
  auto key = std::make_tuple(std::string(operation), static_cast<int>(code));
  auto it = requests_.find(key);
  if (it != requests_.end()) return *it->second;
  auto& c = requests_family_->Add({{"operation", std::get<0>(key)}, {"code", agentpb::Code_Name(code)}});
  requests_.emplace(std::move(key), &c);
  return c;
}

pm::Histogram& Metrics::latency(std::string_view operation) {
  auto it = latency_.find(operation);
  if (it != latency_.end()) return *it->second;
  auto& h = latency_family_->Add({{"operation", std::string(operation)}}, kRequestBuckets);
  latency_.emplace(std::string(operation), &h);
  return h;
}

void Metrics::answered(std::string_view operation, agentpb::Code code, double seconds) {
  requests(operation, code).Increment();
  if (seconds >= 0) latency(operation).Observe(seconds);
}

void Metrics::delivered(agentpb::Code code, std::uint64_t bytes) {
  auto it = delivered_.find(code);
  if (it == delivered_.end())
    it = delivered_.emplace(code, &delivered_family_->Add({{"code", agentpb::Code_Name(code)}})).first;
  it->second->Increment();
  if (code == agentpb::OK) delivered_bytes_->Increment(static_cast<double>(bytes));
}

void Metrics::fetched(bool header, std::uint64_t bytes) {
  fetches_[header ? 1 : 0]->Increment();
  fetch_bytes_[header ? 1 : 0]->Increment(static_cast<double>(bytes));
}

void Metrics::flushed(std::chrono::steady_clock::duration took) {
  flush_seconds_->Observe(std::chrono::duration<double>(took).count());
}

pm::Gauge& Metrics::per_node(pm::Family<pm::Gauge>& family, NodeId n) {
  auto key = std::make_pair(static_cast<const void*>(&family), n);
  auto it = node_series_.find(key);
  if (it == node_series_.end()) it = node_series_.emplace(key, &family.Add({{"node", std::to_string(n)}})).first;
  return *it->second;
}

void Metrics::drop_node(pm::Family<pm::Gauge>& family, NodeId n) {
  auto it = node_series_.find(std::make_pair(static_cast<const void*>(&family), n));
  if (it == node_series_.end()) return;
  family.Remove(it->second);
  node_series_.erase(it);
}

void Metrics::refresh() {
  const Node& n = agent_.node();
  const Membership& m = n.membership();
  in_group_->Set(m.in_group() ? 1 : 0);
  members_->Set(static_cast<double>(m.members().size()));
  epoch_seconds_->Set(static_cast<double>(m.epoch().time) / 1000.0);
  if (m.epoch() != last_epoch_) {
    if (!m.epoch().is_null()) epoch_changes_->Increment();
    last_epoch_ = m.epoch();
  }

  const auto& map = m.map();
  std::map<NodeId, std::uint32_t> per;
  std::uint32_t not_ready = 0;
  for (Bucket b = 0; b < map.size(); ++b) {
    ++per[map[b]];
    if (map[b] == n.id() && !n.bucket_ready(b)) ++not_ready;
  }
  buckets_->Set(static_cast<double>(map.size()));
  buckets_managed_->Set(per[n.id()]);
  buckets_not_ready_->Set(not_ready);

  std::set<NodeId> nodes(m.known().begin(), m.known().end());
  nodes.insert(n.id());
  for (const auto& mw : m.members()) nodes.insert(mw.id);
  for (NodeId k : nodes) {
    per_node(*node_member_, k).Set(m.is_member(k) ? 1 : 0);
    per_node(*node_connected_, k).Set(k == n.id() || agent_.peers().connected(k) ? 1 : 0);
    if (!m.is_member(k)) {
      drop_node(*node_buckets_, k);
      drop_node(*node_load_, k);
      drop_node(*node_weight_, k);
    }
  }
  for (const auto& mw : m.members()) {
    per_node(*node_buckets_, mw.id).Set(per[mw.id]);
    per_node(*node_load_, mw.id).Set(mw.id == n.id() ? n.load() : n.peer_load(mw.id));
    per_node(*node_weight_, mw.id).Set(mw.weight);
  }

  backlog_->Set(static_cast<double>(n.replicator().backlog()));
  pending_reports_->Set(static_cast<double>(n.pending_reports()));
  profiles_->Set(static_cast<double>(n.replicator().profiles().size()));
  if (refreshes_++ % kScanEvery == 0) scan_records();

  for (const auto& [k, a] : m.admin()) per_node(*node_admin_, k).Set(static_cast<double>(a.state));
  auto rp = n.repair_progress();
  carry(*repair_copies_, rp.copies, seen_.repair_copies);
  carry(*repair_bytes_, rp.bytes, seen_.repair_bytes);
  carry(*repair_profiles_, rp.profiles, seen_.repair_profiles);
  carry(*repair_failed_, rp.copies_failed, seen_.repair_failed);
  carry(*store_failovers_, n.store_failovers(), seen_.store_failovers);
  repair_pending_->Set(static_cast<double>(rp.pending));
  repair_inflight_->Set(static_cast<double>(rp.inflight));

  struct statvfs fs {};
  if (::statvfs(agent_.options().spool_dir.c_str(), &fs) == 0) {
    spool_fs_avail_->Set(static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize));
    spool_fs_size_->Set(static_cast<double>(fs.f_blocks) * static_cast<double>(fs.f_frsize));
  }

  const auto& st = agent_.store().stats();
  carry(*store_fsyncs_, st.fsyncs, seen_.fsyncs);
  carry(*store_commands_, st.commands, seen_.commands);
  carry(*store_body_files_, st.body_files, seen_.body_files);
  const auto cache = agent_.cache().stats();
  cache_bytes_->Set(static_cast<double>(cache.bytes));
  cache_budget_->Set(static_cast<double>(cache.budget));
  cache_entries_->Set(static_cast<double>(cache.entries));
  carry(*cache_hits_, cache.hits, seen_.cache_hits);
  carry(*cache_misses_, cache.misses, seen_.cache_misses);
  carry(*cache_evictions_, cache.evictions, seen_.cache_evictions);
  carry(*cache_refused_, cache.refused, seen_.cache_refused);
  carry(*cache_full_, cache.full, seen_.cache_full);
  const PeerNet& net = agent_.peers();
  carry(*frames_in_, net.frames_in(), seen_.frames_in);
  carry(*frames_out_, net.frames_out(), seen_.frames_out);
  carry(*frames_dropped_, net.dropped(), seen_.dropped);
  carry(*handshakes_failed_, net.handshakes_failed(), seen_.handshakes_failed);
  carry(*strangers_refused_, net.strangers_refused(), seen_.strangers_refused);
}

// One pass over every record this node holds: its cost grows with the
// messages held, so it runs every kScanEvery refreshes, not every second.
void Metrics::scan_records() {
  const Membership& m = agent_.node().membership();
  std::uint64_t live = 0, certificates = 0, under = 0, bytes = 0;
  auto dp = agent_.node().drain_progress();
  drain_messages_->Set(static_cast<double>(dp.messages));
  drain_bytes_->Set(static_cast<double>(dp.bytes));
  drain_profiles_->Set(static_cast<double>(dp.profiles));
  for (const auto& [id, r] : agent_.node().replicator().records()) {
    if (r.expunged) {
      ++certificates;
      continue;
    }
    ++live;
    if (r.has_body) bytes += r.size;
    for (NodeId k : r.replicas) {
      if (!m.is_member(k) || m.admin_state(k) != AdminState::Active) {
        ++under;
        break;
      }
    }
  }
  message_records_->Set(static_cast<double>(live));
  death_certificates_->Set(static_cast<double>(certificates));
  under_replicated_->Set(static_cast<double>(under));
  spool_bytes_->Set(static_cast<double>(bytes));
}

void RequestTimes::received(const agentpb::Request& q) {
  if (q.op_case() == agentpb::Request::kDeliverChunk) return;
  started_.try_emplace(q.id(), Started{operation_of(q), std::chrono::steady_clock::now()});
}

void RequestTimes::answered(Metrics& m, const agentpb::Response& r) {
  auto it = started_.find(r.id());
  if (it == started_.end()) {
    // A chunk of no delivery in progress, answered BAD_REQUEST.
    m.answered("unmatched", r.code(), -1);
    return;
  }
  m.answered(it->second.operation, r.code(),
             std::chrono::duration<double>(std::chrono::steady_clock::now() - it->second.at).count());
  started_.erase(it);
}

}  // namespace porcupine::agent
