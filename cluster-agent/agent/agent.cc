// SPDX-License-Identifier: MIT
// agent.cc - see agent.h.
#include "agent/agent.h"

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "agent/local_server.h"
#include "agent/metrics.h"

namespace porcupine::agent {

namespace asio = boost::asio;

namespace {
std::string mib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// The filesystem a path is on, or would be once made: its own or its
// nearest existing parent's.
std::optional<dev_t> device_of(std::string path) {
  for (;;) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) return st.st_dev;
    auto slash = path.find_last_of('/');
    if (slash == std::string::npos || path == "/") return std::nullopt;
    path = slash == 0 ? "/" : path.substr(0, slash);
  }
}

constexpr Time kCacheSweepEvery = 60000;  // ms
}  // namespace

Agent::Agent(asio::io_context& io, AgentOptions opt, LogFn log)
    : io_(io), opt_(std::move(opt)), log_(std::move(log)), ticker_(io) {}

Agent::~Agent() { stop(); }

Time Agent::now() const {
  // Monotonic: deadlines and timers do not move when the wall clock steps.
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Time Agent::wall() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void Agent::start() {
  started_ = now();
  metrics_ = std::make_unique<Metrics>(io_, *this);
  store_ = std::make_unique<store::RedisStore>(
      store::RedisStore::Options{opt_.redis_socket, opt_.spool_dir}, [this](const std::string& l) { log_(l); });
  store::NodeCache::Options co;
  co.dir = opt_.cache_dir.empty() ? opt_.spool_dir + "/cache" : opt_.cache_dir;
  co.budget = opt_.cache_size;
  co.entry_max = opt_.cache_entry_max;
  co.reserve = opt_.cache_reserve_bytes;
  if (opt_.spool_reserve_bytes > 0 && device_of(co.dir) == device_of(opt_.spool_dir))
    co.reserve = std::max(co.reserve, opt_.spool_reserve_bytes + opt_.spool_reserve_bytes / 4);
  cache_ = std::make_unique<store::NodeCache>(std::move(co), [this](const std::string& l) { log_(l); });
  cache_swept_ = now();
  node_ = std::make_unique<Node>(opt_.core, static_cast<Env&>(*this), *store_);
  PeerNet::Options po;
  po.self = opt_.core.self;
  po.listen = opt_.listen;
  po.source_address = opt_.source_address;
  po.secret = opt_.secret;
  po.security = opt_.peer_security == "legacy" ? PeerNet::Security::Legacy
                : opt_.peer_security == "both" ? PeerNet::Security::Both
                                               : PeerNet::Security::Tls;
  po.seeds = opt_.peers;
  po.backoff_max_ms = opt_.reconnect_backoff_max_ms;
  po.max_frame = opt_.message_size_limit + (1u << 20);
  po.staging_dir = store_->incoming_dir();
  po.on_staging_failed = [this] { measure_spool(); };  // the disk may have filled since the last measure
  po.on_refused = [this](NodeId n) {
    if (stopped_ || !node_) return;
    node_->peer_unreachable(now(), n);
    commit();
  };
  po.on_connected = [this](NodeId n) {
    if (!stopped_ && node_) node_->peer_reachable(n);
  };
  net_ = std::make_unique<PeerNet>(io_, po, [this](Envelope e) { on_peer(std::move(e)); },
                                   [this](const std::string& l) { log_(l); });
  net_->start();
  local_ = std::make_unique<LocalServer>(io_, *this);
  local_->start();
  metrics_->start();
  measure_spool();  // before the first message, which says whether the node is full
  node_->start(now());
  commit();
  log_("agent: node " + std::to_string(opt_.core.self) + " listening on " + opt_.listen + ", local socket " +
       opt_.local_socket +
       (metrics_->endpoint().empty() ? "" : ", metrics on http://" + metrics_->endpoint() + "/metrics"));
  tick();
}

void Agent::stop() {
  if (stopped_) return;
  stopped_ = true;
  ticker_.cancel();
  if (local_) local_->stop();
  if (metrics_) metrics_->stop();
  if (net_) net_->stop();
  if (store_ && store_->dirty()) store_->flush();
}

void Agent::tick() {
  if (stopped_) return;
  node_->tick(now());
  if (now() - spool_measured_ >= 1000) measure_spool();
  if (now() - cache_swept_ >= kCacheSweepEvery) {
    cache_swept_ = now();
    cache_->sweep();
  }
  commit();
  ticker_.expires_after(std::chrono::milliseconds(100));
  ticker_.async_wait([this](boost::system::error_code ec) {
    if (!ec) tick();
  });
}

void Agent::on_peer(Envelope e) {
  if (stopped_) return;
  if (refuse_body(e)) return;
  drop_expunged(e);
  node_->receive(now(), std::move(e));
  commit();
}

void Agent::measure_spool() {
  const Time t = now();
  spool_measured_ = t;
  struct statvfs st {};
  if (::statvfs(opt_.spool_dir.c_str(), &st) != 0) {
    if (!spool_unmeasurable_)
      log_("agent: cannot measure the free space of " + opt_.spool_dir + ": " + std::strerror(errno) +
           " (the node keeps its last state)");
    spool_unmeasurable_ = true;
    return;
  }
  spool_unmeasurable_ = false;
  spool_free_ = static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
  const std::uint64_t reserve = opt_.spool_reserve_bytes;
  if (bodies_refused_ > 0 && t - refused_logged_ >= 10000) {
    log_("agent: spool full: refused " + std::to_string(bodies_refused_) +
         " more message copies sent here (their senders keep them)");
    bodies_refused_ = 0;
    refused_logged_ = t;
  }
  if (!node_->spool_full() && reserve > 0 && spool_free_ < reserve) {
    node_->set_spool_full(true);
    log_("warning: agent: spool " + opt_.spool_dir + " has " + mib(spool_free_) + " free, below spool_reserve_bytes (" +
         mib(reserve) + "): this node is full, no new message copies are placed on it");
  } else if (node_->spool_full() && (reserve == 0 || spool_free_ >= reserve + reserve / 4)) {
    node_->set_spool_full(false);
    log_("agent: spool " + opt_.spool_dir + " has " + mib(spool_free_) + " free again: this node takes new "
         "message copies");
  }
}

bool Agent::refuse_body(const Envelope& e) {
  const Update* u = nullptr;
  if (const auto* s = std::get_if<StoreRequest>(&e.body)) u = &s->update;
  else if (const auto* p = std::get_if<Push>(&e.body)) u = &p->update;
  if (!u || u->record.body.empty() || opt_.spool_reserve_bytes == 0) return false;
  measure_spool();  // a statvfs: cheap beside the write it may spare a disk without room
  if (!node_->spool_full()) return false;
  // A copy already held costs nothing more (a resend whose answer was lost).
  const auto& records = node_->replicator().records();
  if (auto it = records.find(u->record.id);
      it != records.end() && (it->second.has_body || it->second.expunged))
    return false;
  // One line now, then a count at most every 10 s (measure_spool).
  if (now() - refused_logged_ >= 10000) {
    log_("agent: spool full: refused " + std::string(message_name(e.body)) + " of message " + u->record.id.str() +
         " from n" + std::to_string(e.from) + " (its sender keeps it and sends it again)");
    refused_logged_ = now();
  } else {
    ++bodies_refused_;
  }
  return true;
}

void Agent::drop_expunged(const Envelope& e) {
  const Update* u = nullptr;
  if (const auto* m = std::get_if<MutateRequest>(&e.body)) u = &m->update;
  else if (const auto* p = std::get_if<Push>(&e.body)) u = &p->update;
  else if (const auto* s = std::get_if<StoreRequest>(&e.body)) u = &s->update;
  if (u && (u->kind == Update::Kind::Expunge || u->record.expunged)) cache_->drop(u->record.id);
}

void Agent::op(const std::function<void(Node&, Time, std::uint64_t)>& call, Done done) {
  std::uint64_t req = next_req_++;
  waiting_[req] = std::move(done);
  call(*node_, now(), req);
  commit();
}

void Agent::send(Envelope e) {
  drop_expunged(e);  // the expunges this node coordinates, of messages it may hold no replica of
  e.from = opt_.core.self;
  e.load = node_->load();
  held_out_.push_back(std::move(e));
}

void Agent::reply(ClientReply r) { held_replies_.push_back(std::move(r)); }

void Agent::commit() {
  if (store_->dirty()) {
    const auto began = std::chrono::steady_clock::now();
    if (!store_->flush()) {
      log_("agent: the store could not make writes durable; stopping so nothing unsafe is acknowledged");
      std::_Exit(75);
    }
    metrics_->flushed(std::chrono::steady_clock::now() - began);
  }
  auto out = std::move(held_out_);
  held_out_.clear();
  auto replies = std::move(held_replies_);
  held_replies_.clear();
  for (auto& e : out) {
    if (e.to == opt_.core.self) {
      // To self: asynchronously, like any message, never re-entrantly.
      asio::post(io_, [this, e = std::move(e)]() mutable { on_peer(std::move(e)); });
    } else {
      net_->send(std::move(e));
    }
  }
  for (auto& r : replies) {
    auto it = waiting_.find(r.req);
    if (it == waiting_.end()) continue;
    Done done = std::move(it->second);
    waiting_.erase(it);
    done(r);
  }
}

}  // namespace porcupine::agent
