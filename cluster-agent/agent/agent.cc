// agent.cc - see agent.h.
#include "agent/agent.h"

#include <cstdlib>

#include "agent/local_server.h"

namespace porcupine::agent {

namespace asio = boost::asio;

Agent::Agent(asio::io_context& io, AgentOptions opt, LogFn log)
    : io_(io), opt_(std::move(opt)), log_(std::move(log)), ticker_(io) {}

Agent::~Agent() { stop(); }

Time Agent::now() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void Agent::start() {
  started_ = now();
  store_ = std::make_unique<store::RedisStore>(
      store::RedisStore::Options{opt_.redis_socket, opt_.spool_dir}, [this](const std::string& l) { log_(l); });
  node_ = std::make_unique<Node>(opt_.core, static_cast<Env&>(*this), *store_);
  PeerNet::Options po;
  po.self = opt_.core.self;
  po.listen = opt_.listen;
  po.secret = opt_.secret;
  po.security = opt_.peer_security == "legacy" ? PeerNet::Security::Legacy
                : opt_.peer_security == "both" ? PeerNet::Security::Both
                                               : PeerNet::Security::Tls;
  po.seeds = opt_.peers;
  po.backoff_max_ms = opt_.reconnect_backoff_max_ms;
  po.max_frame = opt_.message_size_limit + (1u << 20);
  po.staging_dir = store_->incoming_dir();
  net_ = std::make_unique<PeerNet>(io_, po, [this](Envelope e) { on_peer(std::move(e)); },
                                   [this](const std::string& l) { log_(l); });
  net_->start();
  local_ = std::make_unique<LocalServer>(io_, *this);
  local_->start();
  node_->start(now());
  commit();
  log_("agent: node " + std::to_string(opt_.core.self) + " listening on " + opt_.listen + ", local socket " +
       opt_.local_socket);
  tick();
}

void Agent::stop() {
  if (stopped_) return;
  stopped_ = true;
  ticker_.cancel();
  if (local_) local_->stop();
  if (net_) net_->stop();
  if (store_ && store_->dirty()) store_->flush();
}

void Agent::tick() {
  if (stopped_) return;
  node_->tick(now());
  commit();
  ticker_.expires_after(std::chrono::milliseconds(100));
  ticker_.async_wait([this](boost::system::error_code ec) {
    if (!ec) tick();
  });
}

void Agent::on_peer(Envelope e) {
  if (stopped_) return;
  node_->receive(now(), e);
  commit();
}

void Agent::op(const std::function<void(Node&, Time, std::uint64_t)>& call, Done done) {
  std::uint64_t req = next_req_++;
  waiting_[req] = std::move(done);
  call(*node_, now(), req);
  commit();
}

void Agent::send(Envelope e) {
  e.from = opt_.core.self;
  e.load = node_->load();
  held_out_.push_back(std::move(e));
}

void Agent::reply(ClientReply r) { held_replies_.push_back(std::move(r)); }

void Agent::commit() {
  if (store_->dirty() && !store_->flush()) {
    log_("agent: the store could not make writes durable; stopping so nothing unsafe is acknowledged");
    std::_Exit(75);
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
      net_->send(e);
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
