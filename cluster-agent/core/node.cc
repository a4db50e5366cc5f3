// SPDX-License-Identifier: MIT
// node.cc - wiring of the node's roles and dispatch of peer messages.
#include "node.h"

#include <algorithm>

#include "hash.h"

namespace porcupine {

Node::Node(CoreConfig cfg, Env& env, DurableStore& disk)
    : cfg_(std::move(cfg)),
      env_(env),
      disk_(disk),
      membership_(
          cfg_, [this](NodeId to, Message m) { send(to, std::move(m)); },
          [this](const std::string& l) { env_.log(l); },
          [this](const Membership::Change& ch) { on_change(ch); }),
      repl_(
          cfg_, disk_, [this](NodeId to, Message m) { send(to, std::move(m)); },
          [this](const std::string& l) { env_.log(l); }),
      auth_throttle_(cfg_.auth_failures_per_user, cfg_.auth_failure_window),
      manager_(cfg_, membership_, repl_,
               Manager::Hooks{
                   .send = [this](NodeId to, Message m) { send(to, std::move(m)); },
                   .log = [this](const std::string& l) { env_.log(l); },
                   .next_version = [this] { return next_version(); },
                   .version_above = [this](Time t) { last_version_ = std::max(last_version_, t); },
                   .wall = [this] { return wall(); },
                   .live = [this](NodeId n) { return live(n); },
                   .takes_no_copies = [this](NodeId n) { return takes_no_copies(n); },
                   .live_loads = [this](bool with_draining) { return live_loads(with_draining); },
                   .gather = [this](Time now, const std::string& user, const std::string& folder,
                                    const std::string& rename_to, const std::vector<NodeId>& nodes) {
                     fe_.gather_for(now, user, folder, rename_to, nodes);
                   },
               }),
      reporter_(
          cfg_, membership_, repl_, manager_.handoffs(), [this](NodeId to, Message m) { send(to, std::move(m)); },
          [this] { return wall(); }),
      anti_entropy_(
          cfg_, membership_, repl_, disk_, [this](NodeId to, Message m) { send(to, std::move(m)); },
          [this](const std::string& l) { env_.log(l); }, [this] { return wall(); },
          [this](NodeId n) { return live(n); }, [this] { return spool_full(); }),
      fe_(cfg_, membership_,
          FrontEnd::Hooks{
              .send = [this](NodeId to, Message m) { send(to, std::move(m)); },
              .log = [this](const std::string& l) { env_.log(l); },
              .reply = [this](ClientReply r) { reply(std::move(r)); },
              .now = [this] { return now_; },
              .wall = [this] { return wall(); },
              .new_req = [this] { return new_req(); },
              .new_msg =
                  [this] {
                    MsgId id{cfg_.self, next_seq_++};
                    persist_counters();
                    return id;
                  },
              .next_version = [this] { return next_version(); },
              .takes_no_copies = [this](NodeId n) { return takes_no_copies(n); },
              .silent_for = [this](NodeId n, Time t) { return silent_for(n, t); },
              .gathered = [this](Time now, const std::string& user, const std::string& folder,
                                 const std::string& rename_to, const std::map<MsgId, MessageRecord>& records,
                                 bool complete) {
                manager_.on_gathered(now, user, folder, rename_to, records, complete);
              },
          }) {
  repl_.on_user_changed = [this](const std::string& u) { reporter_.user_changed(now_, u); };
  repl_.gone = [this](NodeId n) { return membership_.admin_state(n) == AdminState::Gone; };
  repl_.on_list_outdated = [this](const MsgId& id) { repair_forward_.insert(id); };
  membership_.on_admin = [this](const AdminMap& a) { disk_.put_admin(a); };
  repl_.on_complete = [this](const Version& id) { store_done(id); };
  repl_.wall_clock = [this] { return wall(); };
  membership_.wall_clock = [this] { return wall(); };
}

Node::Entry::Entry(Node& n, Time now) : n_(n) {
  n_.now_ = std::max(n_.now_, now);
  ++n_.depth_;
}

Node::Entry::~Entry() {
  if (n_.depth_ == 1) n_.run_steps();
  --n_.depth_;
}

std::uint64_t Node::step(Then then) {
  const std::uint64_t id = kStepBit | next_step_++;
  steps_.emplace(id, std::move(then));
  return id;
}

void Node::reply(ClientReply r) {
  if (r.req & kStepBit)
    step_replies_.push_back(std::move(r));
  else
    env_.reply(std::move(r));
}

void Node::run_steps() {
  while (!step_replies_.empty()) {
    ClientReply r = std::move(step_replies_.front());
    step_replies_.pop_front();
    auto it = steps_.find(r.req);
    if (it == steps_.end()) continue;
    Then then = std::move(it->second);
    steps_.erase(it);
    then(r);
  }
}

void Node::start(Time now) {
  Entry entry(*this, now);
  now_ = now;
  DurableSnapshot snap = disk_.load();
  next_seq_ = snap.next_seq;
  last_version_ = snap.last_version;
  last_lineage_ = snap.last_lineage;
  membership_.load_admin(snap.admin);
  // A node whose disk is new (or was replaced) may have lived before under
  // the same id, and its old ids may still be on other nodes: its
  // sequence starts at the clock (in microseconds), above any it can have
  // given before.
  if (snap.fresh && snap.unindexed.empty() && wall() > 0) {
    next_seq_ = std::max(next_seq_, static_cast<std::uint64_t>(wall()) * 1000);
    persist_counters();
  }
  // A sequence number is never given twice, even if the counter went back
  // with a damaged index: above every id of this node's still on disk, and
  // when the index lost entries (bodies no record names), far above, as
  // peers may hold ids this node no longer knows of.
  std::uint64_t seen = 0;
  for (const auto& [id, r] : snap.records)
    if (id.origin == cfg_.self) seen = std::max(seen, id.seq);
  for (const auto& [id, body] : snap.unindexed)
    if (id.origin == cfg_.self) seen = std::max(seen, id.seq);
  std::uint64_t floor = seen + 1 + (snap.unindexed.empty() ? 0 : std::uint64_t{1} << 32);
  if (next_seq_ < floor) {
    env_.log("warning: message sequence moved from " + std::to_string(next_seq_) + " to " + std::to_string(floor) +
             " (above the ids still on disk)");
    next_seq_ = floor;
    persist_counters();
  }
  // Request ids must not repeat across restarts: a reply to the previous
  // incarnation's request may still be in flight.
  next_req_ = (static_cast<std::uint64_t>(std::max(wall(), last_version_)) << 16) + 1;
  repl_.load(snap, now);
  for (const auto& [id, r] : snap.records)
    for (NodeId n : r.replicas) membership_.learn(n);
  membership_.start(now);
}

std::uint32_t Node::load() const {
  // Pending disk work: updates still being replicated plus stores in flight.
  return static_cast<std::uint32_t>(repl_.backlog() + stores_.size());
}

std::vector<NodeLoad> Node::live_loads(bool with_draining) const {
  std::vector<NodeLoad> out;
  for (const auto& m : membership_.members()) {
    auto it = loads_.find(m.id);
    std::uint32_t l = m.id == cfg_.self ? load() : (it == loads_.end() ? 0 : it->second);
    // A node that drains or is gone takes no new copies (unless asked for).
    bool full = (m.id == cfg_.self ? spool_full_ : peer_full(m.id)) ||
                !(admin_active(m.id) || (with_draining && membership_.admin_state(m.id) == AdminState::Draining));
    out.push_back({m.id, l, full});
  }
  return out;
}

void Node::send(NodeId to, Message m) {
  // Messages to self go through the shell as well, so no handler ever
  // re-enters the node while it is iterating its own state.
  if (to == kNoNode) return;
  Envelope e{cfg_.self, to, load(), std::move(m)};
  e.full = spool_full_;
  env_.send(std::move(e));
}

void Node::set_spool_full(bool full) {
  if (full == spool_full_) return;
  spool_full_ = full;
  full_told_at_ = 0;  // every member hears it at the next tick
  full_told_until_ = now_ + 3000;
}

bool Node::live(NodeId n) const { return n == cfg_.self || membership_.is_member(n); }

Version Node::next_version() {
  last_version_ = std::max(wall(), last_version_ + 1);
  persist_counters();
  return Version{last_version_, cfg_.self};
}

void Node::persist_counters() { disk_.put_counters(next_seq_, last_version_, last_lineage_); }

Bucket Node::bucket(const std::string& user) const { return bucket_of(user, cfg_.buckets); }

bool Node::manages(const std::string& user) const {
  return membership_.in_group() && membership_.manager_of(bucket(user)) == cfg_.self;
}

void Node::on_change(const Membership::Change& ch) {
  manager_.on_change(now_, ch);
  reporter_.on_change(now_, ch);
  anti_entropy_.on_change(now_, ch);
}

void Node::tick(Time now) {
  Entry entry(*this, now);
  now_ = now;
  membership_.tick(now);
  // Managers learn a spool's state from its node's messages; one that hears
  // nothing from it (a full node is given no copies to acknowledge) would
  // keep placing copies on a node that refuses them, or none on a node
  // with room again. A ProbeAck is the cheapest message every member takes.
  if ((spool_full_ || now < full_told_until_) && now - full_told_at_ >= 1000) {
    full_told_at_ = now;
    for (const auto& m : membership_.members())
      if (m.id != cfg_.self) send(m.id, ProbeAck{membership_.epoch()});
  }
  repl_.tick(now, [this](NodeId n) { return live(n); });
  manager_.tick(now);
  reporter_.tick(now);
  fe_.tick(now);
  store_failover(now);
  anti_entropy_.tick(now);
  admin_tick(now);
  repair_tick(now);
}

void Node::peer_unreachable(Time now, NodeId n) {
  Entry entry(*this, now);
  const bool known = membership_.refuses(n);
  membership_.unreachable(now_, n);
  if (known) return;  // told already (the transport dials again and again)
  env_.log("warning: peer n" + std::to_string(n) + " refuses connections: taken for down");
  fe_.peer_unreachable(n);
  store_failover(now_);
}

void Node::receive(Time now, Envelope e) {
  Entry entry(*this, now);
  if (e.from != cfg_.self) {
    heard_[e.from] = now_;
    loads_[e.from] = e.load;
    if (e.full) full_peers_.insert(e.from);
    else full_peers_.erase(e.from);
  }
  Message& m = e.body;
  std::visit(
      [&](auto& msg) {
        using T = std::decay_t<decltype(msg)>;
        if constexpr (std::is_same_v<T, Probe> || std::is_same_v<T, ProbeAck> ||
                      std::is_same_v<T, NewGroup> || std::is_same_v<T, Accept> ||
                      std::is_same_v<T, Commit>) {
          membership_.on_message(now_, e.from, m);
        } else if constexpr (std::is_same_v<T, Report>) {
          manager_.on_report(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, ReportAck>) {
          reporter_.on_ack(e.from, msg);
        } else if constexpr (std::is_same_v<T, ReportPoll>) {
          reporter_.on_poll(now_, msg);
        } else if constexpr (std::is_same_v<T, AllocRequest>) {
          manager_.on_alloc(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, AllocDone>) {
          manager_.on_alloc_done(msg);
        } else if constexpr (std::is_same_v<T, RenumberRequest>) {
          manager_.on_renumber(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, CreateUserRequest>) {
          manager_.on_create_user(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, MapRequest>) {
          manager_.on_map(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, StoreRequest>) {
          serve_store(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, MutateRequest>) {
          serve_mutate(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, Push>) {
          repl_.on_push(now_, e.from, msg);
          if (msg.update.kind == Update::Kind::Copy) anti_entropy_.body_arrived(now_, e.from, msg.update.record.id);
        } else if constexpr (std::is_same_v<T, PushAck>) {
          repl_.on_ack(now_, e.from, msg);
          repair_ack(now_, e.from, msg.id);
        } else if constexpr (std::is_same_v<T, Retire>) {
          repl_.on_retire(msg);
        } else if constexpr (std::is_same_v<T, ListRequest>) {
          serve_list(e.from, msg);
        } else if constexpr (std::is_same_v<T, FetchRequest>) {
          serve_fetch(e.from, msg);
        } else if constexpr (std::is_same_v<T, ProfileRequest>) {
          manager_.on_profile(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, UserUpdateRequest>) {
          manager_.on_user_update(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, UserListRequest>) {
          manager_.on_user_list(e.from, msg);
        } else if constexpr (std::is_same_v<T, UsageRequest>) {
          serve_usage(e.from, msg);
        } else if constexpr (std::is_same_v<T, SyncRequest>) {
          anti_entropy_.serve_request(e.from, msg);
        } else if constexpr (std::is_same_v<T, SyncDigest>) {
          anti_entropy_.on_digest(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, SyncPull>) {
          anti_entropy_.serve_pull(e.from, msg);
        } else if constexpr (std::is_same_v<T, SyncRecords>) {
          anti_entropy_.on_records(now_, e.from, msg);
        } else if constexpr (std::is_same_v<T, SyncBodies>) {
          anti_entropy_.serve_bodies(e.from, msg);
        } else if constexpr (std::is_same_v<T, ProfileReply>) {
          if (!drain_profile_reply(msg)) fe_.on_reply(e.from, m);
        } else {
          fe_.on_reply(e.from, m);  // the replies
        }
      },
      m);
}

// The client operations, done by the front end (frontend.h).

void Node::create_user(Time now, std::uint64_t req, const std::string& user, const std::string& password_hash) {
  Entry entry(*this, now);
  fe_.create_user(now, req, user, password_hash);
}

void Node::deliver(Time now, std::uint64_t req, const std::string& user, const std::string& folder, Body body,
                   DeliverOptions opts) {
  Entry entry(*this, now);
  fe_.deliver(now, req, user, folder, std::move(body), std::move(opts));
}

void Node::set_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t flags,
                     std::vector<std::string> keywords) {
  Entry entry(*this, now);
  fe_.set_flags(now, req, target, flags, std::move(keywords));
}

void Node::change_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t add_flags,
                        std::uint32_t remove_flags, const std::vector<std::string>& add_keywords,
                        const std::vector<std::string>& remove_keywords) {
  Entry entry(*this, now);
  fe_.change_flags(now, req, target, add_flags, remove_flags, add_keywords, remove_keywords);
}

void Node::expunge(Time now, std::uint64_t req, const MessageRecord& target) {
  Entry entry(*this, now);
  fe_.expunge(now, req, target);
}

void Node::renumber(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t above) {
  Entry entry(*this, now);
  fe_.renumber(now, req, target, above);
}

void Node::move(Time now, std::uint64_t req, const MessageRecord& target, const std::string& to_folder) {
  Entry entry(*this, now);
  fe_.move(now, req, target, to_folder);
}

void Node::list(Time now, std::uint64_t req, const std::string& user, const std::string& folder, bool digest_only,
                std::uint32_t meta_from_uid) {
  Entry entry(*this, now);
  fe_.list(now, req, user, folder, digest_only, meta_from_uid);
}

void Node::fetch(Time now, std::uint64_t req, const MessageRecord& target, FetchPart part) {
  Entry entry(*this, now);
  fe_.fetch(now, req, target, part);
}

void Node::get_user(Time now, std::uint64_t req, const std::string& user) {
  Entry entry(*this, now);
  fe_.get_user(now, req, user);
}

void Node::update_user(Time now, std::uint64_t req, const UserUpdateRequest& change) {
  Entry entry(*this, now);
  fe_.update_user(now, req, change);
}

void Node::list_users(Time now, std::uint64_t req) {
  Entry entry(*this, now);
  fe_.list_users(now, req);
}

void Node::user_usage(Time now, std::uint64_t req, const std::string& user) {
  Entry entry(*this, now);
  fe_.user_usage(now, req, user);
}

const char* status_name(Status s) {
  switch (s) {
    case Status::Ok: return "ok";
    case Status::TryAgain: return "try-again";
    case Status::NoSuchUser: return "no-such-user";
    case Status::Exists: return "exists";
    case Status::NotManager: return "not-manager";
    case Status::Failed: return "failed";
    case Status::NotFound: return "not-found";
    case Status::OverQuota: return "over-quota";
    case Status::AuthFailed: return "auth-failed";
  }
  return "?";
}

const char* message_name(const Message& m) {
  static const char* const names[] = {
      "Probe",      "ProbeAck",  "NewGroup",     "Accept",        "Commit",   "Report",
      "ReportAck",  "ReportPoll", "AllocRequest", "AllocReply",
      "CreateUserRequest", "MapRequest", "MapReply", "StoreRequest", "MutateRequest",
      "OpReply",    "Push",      "PushAck",      "Retire",        "ListRequest", "ListReply",
      "FetchRequest", "FetchReply", "ProfileRequest", "ProfileReply", "UserUpdateRequest",
      "UserListRequest", "UserListReply", "UsageRequest", "UsageReply", "AllocDone", "RenumberRequest",
      "SyncRequest", "SyncDigest", "SyncPull", "SyncRecords", "SyncBodies"};
  static_assert(sizeof(names) / sizeof(names[0]) == std::variant_size_v<Message>);
  return names[m.index()];
}

}  // namespace porcupine
