// SPDX-License-Identifier: MIT
// local_server.cc - see local_server.h.
#include "agent/local_server.h"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <set>
#include <map>
#include <optional>

#include "agent.pb.h"
#include "agent/agent.h"
#include "agent/local_request.h"
#include "agent/metrics.h"
#include "agent/read_frame.h"
#include "client/frame.h"
#include "core/hash.h"

namespace porcupine::agent {

namespace asio = boost::asio;
using unix_socket = asio::local::stream_protocol;
namespace pb = agentpb;

namespace {

// Whether the process at the other end of `fd` (SO_PEERCRED) may
// administer users: root, the agent's own user, or a member of `group`
// (its primary group, or listed in the group).
bool peer_is_admin(int fd, const std::string& group) {
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  if (cred.uid == 0 || cred.uid == ::geteuid()) return true;
  if (group.empty()) return false;
  const struct group* g = ::getgrnam(group.c_str());
  if (!g) return false;
  if (cred.gid == g->gr_gid) return true;
  const struct passwd* pw = ::getpwuid(cred.uid);
  if (!pw) return false;
  if (pw->pw_gid == g->gr_gid) return true;
  for (char** m = g->gr_mem; m && *m; ++m)
    if (std::strcmp(*m, pw->pw_name) == 0) return true;
  return false;
}

pb::Code code_of(Status s) {
  switch (s) {
    case Status::Ok: return pb::OK;
    case Status::TryAgain: return pb::TEMPFAIL;
    case Status::NotManager: return pb::TEMPFAIL;
    case Status::NoSuchUser: return pb::NO_SUCH_USER;
    case Status::Exists: return pb::EXISTS;
    case Status::Failed: return pb::BAD_REQUEST;
    case Status::NotFound: return pb::NOT_FOUND;
    case Status::OverQuota: return pb::OVER_QUOTA;
    case Status::AuthFailed: return pb::AUTH_FAILED;
  }
  return pb::INTERNAL;
}

MessageRecord target_of(const pb::MessageRef& r) {
  MessageRecord t;
  t.id = MsgId{r.origin(), r.seq()};
  t.replicas.assign(r.replicas().begin(), r.replicas().end());
  t.user = canonical_user(r.user());
  t.folder = r.folder();
  return t;
}

// with_names false: a listing's, whose user and folder are the request's.
void fill_ref(pb::MessageRef* out, const MessageRecord& r, bool with_names = true) {
  out->set_origin(r.id.origin);
  out->set_seq(r.id.seq);
  for (NodeId n : r.replicas) out->add_replicas(n);
  if (!with_names) return;
  out->set_user(r.user);
  out->set_folder(r.folder);
}

constexpr std::uint32_t kAllFlags = kSeen | kAnswered | kFlagged | kDeleted | kDraft;

// File descriptors on their way to a reader (Open): closed here unless
// they were sent, whatever becomes of the answer.
class Fds {
 public:
  Fds() = default;
  Fds(Fds&& o) noexcept : fds_(std::move(o.fds_)) { o.fds_.clear(); }
  Fds& operator=(Fds&& o) noexcept {
    if (this != &o) {
      reset();
      fds_ = std::move(o.fds_);
      o.fds_.clear();
    }
    return *this;
  }
  Fds(const Fds&) = delete;
  Fds& operator=(const Fds&) = delete;
  ~Fds() { reset(); }
  void add(int fd) { fds_.push_back(fd); }
  const std::vector<int>& get() const { return fds_; }
  bool empty() const { return fds_.empty(); }
  void reset() {
    for (int fd : fds_) ::close(fd);
    fds_.clear();
  }

 private:
  std::vector<int> fds_;
};

}  // namespace

class LocalConnection : public std::enable_shared_from_this<LocalConnection> {
 public:
  LocalConnection(LocalServer& server, Agent& agent, unix_socket::socket s)
      : server_(server), agent_(agent), sock_(std::move(s)) {}

  void start() { read_header(); }

  void close(const std::string& why) {
    if (closed_) return;
    closed_ = true;
    if (!why.empty()) agent_.log("local: connection closed: " + why);
    boost::system::error_code ec;
    sock_.close(ec);
    server_.closed(shared_from_this());
  }

 private:
  // A delivery in progress: its body is gathered as the chunks come, in
  // memory while small, then in a staging file in the spool (never whole
  // in memory); handed to the core by reference.
  struct Delivery {
    std::vector<std::string> recipients;
    std::string folder;
    std::unique_ptr<store::BodyBuilder> body;
    Body whole;
    std::uint32_t timeout_ms = 0;  // the request's, from DeliverBegin
    DeliverOptions options;        // date and flags, from DeliverBegin
    bool too_large = false;
    std::string disk_error;
    store::MessageSizes sizes;  // vsize and hdr_size, counted as the chunks come
  };

  // A frame to send, with the descriptors that go with its first bytes.
  struct Outgoing {
    std::string header;  // the 4-byte length
    std::string payload;
    Fds fds;
    std::size_t header_sent = 0;  // by sendmsg, with the descriptors
  };

  // An Open in progress: one answer per ref, sent when all are in.
  struct Opening {
    pb::Response out;
    std::vector<int> fds;  // per ref, -1 for none; closed by ~Opening unless handed on
    std::size_t left = 0;
    ~Opening() {
      for (int fd : fds)
        if (fd >= 0) ::close(fd);
    }
  };

  void read_header() {
    auto self = shared_from_this();
    async_read_frame(sock_, hdr_, buf_, kMaxFrame, [this, self](const std::string& why) {
      if (closed_) return;
      if (!why.empty()) return close(why == "closed" ? "" : why);  // a client hanging up is no news
      pb::Request req;
      if (!decode_request(buf_, req)) return close("malformed request");
      handle(req);
      if (!closed_) read_header();
    });
  }

  void respond(pb::Response& r, Fds fds = {}) {
    if (closed_) return;
    // A request answered at its deadline gets no second answer.
    if (expired_.count(r.id())) return;
    times_.answered(agent_.metrics(), r);
    if (auto t = deadlines_.find(r.id()); t != deadlines_.end()) {
      t->second->cancel();
      deadlines_.erase(t);
    }
    std::string bytes = r.SerializeAsString();
    bool idle = out_.empty();
    Outgoing o;
    o.header = frame::be32(static_cast<std::uint32_t>(bytes.size()));
    o.payload = std::move(bytes);  // no copy of a large payload
    o.fds = std::move(fds);
    out_.push_back(std::move(o));
    if (idle) write_next();
  }

  // Writes the frame at the head of out_. One write at a time, so a
  // frame's descriptors go with its own first bytes and no other's.
  void write_next() {
    auto self = shared_from_this();
    Outgoing& o = out_.front();
    if (!o.fds.empty() && !send_fds(o)) return;
    std::array<asio::const_buffer, 2> bufs{asio::buffer(o.header) + o.header_sent, asio::buffer(o.payload)};
    asio::async_write(sock_, bufs, [this, self](boost::system::error_code ec, std::size_t) {
      if (closed_) return;
      if (ec) return close(ec.message());
      out_.pop_front();
      if (!out_.empty()) write_next();
    });
  }

  // Sends the first bytes of `o`'s header with its descriptors
  // (SCM_RIGHTS), beside Asio, which has no write in flight now. False if
  // the socket cannot take them yet (write_next runs again when it can) or
  // the connection is lost.
  bool send_fds(Outgoing& o) {
    const std::vector<int>& fds = o.fds.get();
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    iovec iov{o.header.data(), o.header.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    for (;;) {
      ssize_t n = ::sendmsg(sock_.native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        o.header_sent = static_cast<std::size_t>(n);
        o.fds.reset();  // the reader has its own now
        return true;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        auto self = shared_from_this();
        sock_.async_wait(unix_socket::socket::wait_write, [this, self](boost::system::error_code ec) {
          if (closed_) return;
          if (ec) return close(ec.message());
          write_next();
        });
        return false;
      }
      close(std::string("cannot pass file descriptors: ") + std::strerror(errno));
      return false;
    }
  }

  void forbidden(std::uint64_t id) {
    fail(id, pb::FORBIDDEN, "user administration is for root, the agent's user and local_admin_group");
  }

  void fail(std::uint64_t id, pb::Code code, const std::string& detail) {
    pb::Response r;
    r.set_id(id);
    r.set_code(code);
    r.set_detail(detail);
    respond(r);
  }

  // Runs a core operation; `fill` turns its reply into the Response.
  void run(std::uint64_t id, const std::function<void(Node&, Time, std::uint64_t)>& call,
           std::function<void(const ClientReply&, pb::Response&)> fill = nullptr) {
    auto self = shared_from_this();
    agent_.op(call, [this, self, id, fill](const ClientReply& c) {
      // On an arena: a listing's thousands of messages go at once.
      google::protobuf::Arena arena;
      pb::Response& r = *google::protobuf::Arena::CreateMessage<pb::Response>(&arena);
      r.set_id(id);
      r.set_code(code_of(c.status));
      r.set_detail(c.detail);
      if (c.status == Status::Ok && fill) fill(c, r);
      respond(r);
    });
  }

  // A request with timeout_ms is answered TEMPFAIL when that passes first
  // (the operation itself still ends within request_timeout_ms).
  void arm_deadline(std::uint64_t id, std::uint32_t ms) {
    if (ms == 0 || deadlines_.count(id)) return;
    auto t = std::make_unique<asio::steady_timer>(sock_.get_executor());
    t->expires_after(std::chrono::milliseconds(ms));
    auto self = shared_from_this();
    t->async_wait([this, self, id](boost::system::error_code ec) {
      if (ec || closed_) return;
      deadlines_.erase(id);
      deliveries_.erase(id);
      fail(id, pb::TEMPFAIL, "deadline of the request passed");
      expire(id);
    });
    deadlines_[id] = std::move(t);
  }

  // A request answered at its deadline: later chunks of it are dropped and
  // it gets no second answer. The oldest are forgotten past kExpiredKept (a
  // client's ids grow; one that old is done).
  static constexpr std::size_t kExpiredKept = 4096;
  void expire(std::uint64_t id) {
    expired_.insert(id);
    while (expired_.size() > kExpiredKept) expired_.erase(expired_.begin());
  }

  void handle(const pb::Request& q) {
    const std::uint64_t id = q.id();
    times_.received(q);
    if (q.client_deadline_ms() != 0 && static_cast<std::uint64_t>(frame::monotonic_ms()) >= q.client_deadline_ms()) {
      // Read after its client gave up (this agent was stopped, or far
      // behind): done now, it would be done behind the client's back (a
      // delivery its MTA retries).
      const bool delivery = q.op_case() == pb::Request::kDeliverBegin || q.op_case() == pb::Request::kDeliverChunk;
      if (delivery && expired_.count(id)) return;  // answered already
      deliveries_.erase(id);
      if (++late_requests_ == 1 || late_requests_ % 100 == 0)
        agent_.log("local: " + std::to_string(late_requests_) +
                   " request(s) read after their client's deadline; not acted on");
      fail(id, pb::TEMPFAIL, "read after the client's deadline; not acted on");
      if (delivery) expire(id);  // its other chunks are dropped
      return;
    }
    if (q.op_case() != pb::Request::kDeliverChunk) arm_deadline(id, q.timeout_ms());
    if (administers(q) && !may_administer()) return forbidden(id);
    if (auto bad = request_problem(q)) return fail(id, pb::BAD_REQUEST, *bad);
    switch (q.op_case()) {
      case pb::Request::kUserGet: {
        const bool with_usage = q.user_get().with_usage();
        return run(
            id, [u = q.user_get().user(), with_usage](Node& n, Time t, std::uint64_t r) { n.lookup_user(t, r, u, with_usage); },
            [](const ClientReply& c, pb::Response& r) {
              const Profile& p = *c.profile;
              auto* u = r.mutable_user();
              u->set_user(p.user);  // never the password hash: UserAuth checks passwords
              u->set_quota_bytes(p.quota_bytes);
              u->set_enabled(p.enabled);
              for (NodeId h : p.holders) u->add_holders(h);
              u->set_manager(c.manager);
              if (c.used_bytes) {
                u->set_used_bytes(*c.used_bytes);
                u->set_has_usage(true);
              }
            });
      }
      case pb::Request::kUserAuth:
        return run(id,
                   [u = q.user_auth().user(), pw = q.user_auth().password()](Node& n, Time t, std::uint64_t r) {
                     n.authenticate(t, r, u, pw);
                   },
                   [](const ClientReply& c, pb::Response& r) {
                     r.mutable_user()->set_user(c.profile->user);
                     r.mutable_user()->set_quota_bytes(c.profile->quota_bytes);
                     r.mutable_user()->set_enabled(true);
                   });
      case pb::Request::kUserCreate: {
        const auto& c = q.user_create();
        return run(id, [u = c.user(), h = c.password_hash()](Node& n, Time t, std::uint64_t r) {
          n.create_user(t, r, u, h);
        });
      }
      case pb::Request::kUserChange: {
        const auto& c = q.user_change();
        UserUpdateRequest u;
        u.user = c.user();
        u.op = static_cast<UserUpdateRequest::Op>(c.op());
        u.password_hash = c.password_hash();
        u.quota_bytes = c.quota_bytes();
        return run(id, [u](Node& n, Time t, std::uint64_t r) { n.update_user(t, r, u); });
      }
      case pb::Request::kUserList:
        return run(id, [](Node& n, Time t, std::uint64_t r) { n.list_users(t, r); },
                   [](const ClientReply& c, pb::Response& r) {
                     for (const auto& u : c.users) r.add_users(u);
                   });
      case pb::Request::kDeliverBegin: {
        const auto& b = q.deliver_begin();
        if (deliveries_.count(id)) return fail(id, pb::BAD_REQUEST, "request id already in use");
        Delivery& d = deliveries_[id];
        d.recipients.assign(b.recipients().begin(), b.recipients().end());
        d.folder = b.folder().empty() ? "INBOX" : b.folder();
        d.timeout_ms = q.timeout_ms();
        d.options.internal_date = b.internal_date_ms();
        d.options.flags = b.flags() & kAllFlags;
        d.options.keywords.assign(b.keywords().begin(), b.keywords().end());
        if (b.meta().size() <= kMaxRecordMeta) d.options.meta = b.meta();  // larger: not kept
        d.options.key = b.delivery_key();
        d.body = std::make_unique<store::BodyBuilder>(agent_.store().incoming_dir());
        if (b.size_hint() > agent_.options().deliver_size_limit()) d.too_large = true;
        return;
      }
      case pb::Request::kDeliverChunk: {
        auto it = deliveries_.find(id);
        if (it == deliveries_.end() && expired_.count(id)) return;  // already answered: deadline
        if (it == deliveries_.end()) return fail(id, pb::BAD_REQUEST, "chunk without a DeliverBegin");
        Delivery& d = it->second;
        if (!d.too_large && d.disk_error.empty()) {
          if (d.body->size() + q.deliver_chunk().data().size() > agent_.options().deliver_size_limit()) {
            d.too_large = true;
            d.body.reset();  // its staging file goes
          } else if (!d.body->append(q.deliver_chunk().data())) {
            d.disk_error = d.body->error();
            d.body.reset();
          } else {
            d.sizes.add(q.deliver_chunk().data());
          }
        }
        if (!q.deliver_chunk().last()) return;
        Delivery whole = std::move(d);
        deliveries_.erase(it);
        if (!whole.disk_error.empty()) {
          agent_.log("local: delivery refused: " + whole.disk_error);
          return fail(id, pb::TEMPFAIL, "the spool cannot take the message now");
        }
        if (whole.too_large)
          return fail(id, pb::TOO_LARGE,
                      "message larger than message_size_limit (" +
                          std::to_string(agent_.options().message_size_limit) + " bytes, and " +
                          std::to_string(AgentOptions::kTraceHeaderMargin) + " for trace headers)");
        if (whole.body->size() == 0) return fail(id, pb::BAD_REQUEST, "empty message");
        auto body = whole.body->finish();
        whole.body.reset();
        if (!body) {
          agent_.log("local: delivery refused: cannot make the message durable");
          return fail(id, pb::TEMPFAIL, "the spool cannot take the message now");
        }
        whole.whole = std::move(*body);
        whole.options.vsize = whole.sizes.vsize();
        whole.options.hdr_size = whole.sizes.hdr_size();
        // The deadline starts again now the message is whole, longer by its
        // store_crossing per recipient, so a large message on a slow node is
        // not a temporary failure retried for ever.
        if (whole.timeout_ms > 0) {
          deadlines_.erase(id);
          const Time crossing = store_crossing(agent_.options().core, whole.whole.size());
          arm_deadline(id, static_cast<std::uint32_t>(whole.timeout_ms +
                                                      crossing * static_cast<Time>(whole.recipients.size())));
        }
        deliver_all(id, std::make_shared<Delivery>(std::move(whole)));
        return;
      }
      case pb::Request::kFolderList: {
        const auto& l = q.folder_list();
        std::string folder = l.folder().empty() ? "INBOX" : l.folder();
        return run(id,
                   [u = l.user(), folder, digest_only = l.digest_only(),
                    meta_from = l.meta_from_uid()](Node& n, Time t, std::uint64_t r) {
                     n.list(t, r, u, folder, digest_only, meta_from);
                   },
                   [](const ClientReply& c, pb::Response& r) {
                     r.set_uidvalidity(c.uidvalidity);
                     r.set_next_uid(c.uid);
                     r.set_folder_digest(c.folder_digest);
                     for (NodeId n : c.reachable) r.add_reachable_nodes(n);
                     r.mutable_messages()->Reserve(static_cast<int>(c.records.size()));
                     for (const auto& m : c.records) {
                       auto* info = r.add_messages();
                       fill_ref(info->mutable_ref(), m, false);
                       info->set_uid(m.uid);
                       info->set_flags(m.flags);
                       for (const auto& k : m.keywords) info->add_keywords(k);
                       info->set_size(m.size);
                       info->set_internal_date_ms(m.internal_date);
                       info->set_vsize(m.vsize);
                       info->set_hdr_size(m.hdr_size);
                       if (!m.meta.empty()) info->set_meta(m.meta);
                     }
                   });
      }
      case pb::Request::kFetch: {
        MessageRecord t = target_of(q.fetch().ref());
        auto self = shared_from_this();
        agent_.op([t](Node& n, Time now, std::uint64_t r) { n.fetch(now, r, t); },
                  [this, self, id](const ClientReply& c) {
                    pb::Response r;
                    r.set_id(id);
                    r.set_code(c.status == Status::NoSuchUser ? pb::NOT_FOUND : code_of(c.status));
                    r.set_detail(c.detail);
                    if (c.status == Status::Ok) {
                      // A large body is read from its file straight into the reply.
                      auto bytes = store::read_body(c.body);
                      if (!bytes) {
                        r.set_code(pb::TEMPFAIL);
                        r.set_detail("the message's file could not be read; try again");
                      } else {
                        *r.mutable_body() = std::move(*bytes);
                      }
                    }
                    respond(r);
                  });
        return;
      }
      case pb::Request::kOpen:
        return open_bodies(id, q.open());
      case pb::Request::kSetFlags: {
        MessageRecord t = target_of(q.set_flags().ref());
        std::vector<std::string> kws(q.set_flags().keywords().begin(), q.set_flags().keywords().end());
        return run(id, [t, f = q.set_flags().flags(), kws](Node& n, Time now, std::uint64_t r) {
          n.set_flags(now, r, t, f, kws);
        });
      }
      case pb::Request::kChangeFlags: {
        const auto& cf = q.change_flags();
        MessageRecord t = target_of(cf.ref());
        std::vector<std::string> add(cf.add_keywords().begin(), cf.add_keywords().end());
        std::vector<std::string> remove(cf.remove_keywords().begin(), cf.remove_keywords().end());
        return run(id, [t, a = cf.add_flags() & kAllFlags, rm = cf.remove_flags() & kAllFlags, add, remove](
                           Node& n, Time now, std::uint64_t r) { n.change_flags(now, r, t, a, rm, add, remove); });
      }
      case pb::Request::kRenumber: {
        const auto& q2 = q.renumber();
        MessageRecord t = target_of(q2.ref());
        t.uidvalidity = q2.uidvalidity();
        t.uid = q2.uid();
        return run(id, [t, above = q2.above()](Node& n, Time now, std::uint64_t r) { n.renumber(now, r, t, above); });
      }
      case pb::Request::kExpunge: {
        MessageRecord t = target_of(q.expunge().ref());
        return run(id, [t](Node& n, Time now, std::uint64_t r) { n.expunge(now, r, t); });
      }
      case pb::Request::kStatus: {
        pb::Response r;
        r.set_id(id);
        r.set_code(pb::OK);
        fill_status(*r.mutable_status());
        return respond(r);
      }
      case pb::Request::kNodeAdmin: {
        const auto& a = q.node_admin();
        AdminState st = a.state() == pb::NodeAdmin::DRAIN  ? AdminState::Draining
                        : a.state() == pb::NodeAdmin::GONE ? AdminState::Gone
                                                           : AdminState::Active;
        return run(id, [n = a.node(), st](Node& node, Time t, std::uint64_t r) { node.administer(t, r, n, st); });
      }
      case pb::Request::kMove: {
        MessageRecord t = target_of(q.move().ref());
        return run(id, [t, to = q.move().to_folder()](Node& n, Time now, std::uint64_t r) { n.move(now, r, t, to); },
                   [](const ClientReply& c, pb::Response& r) {
                     r.set_uidvalidity(c.uidvalidity);
                     r.set_next_uid(c.uid);  // the message's UID in the destination
                   });
      }
      case pb::Request::kFolders:
        return run(id, [u = q.folders().user()](Node& n, Time t, std::uint64_t r) { n.get_user(t, r, u); },
                   [](const ClientReply& c, pb::Response& r) {
                     r.add_folders("INBOX");
                     for (const auto& [name, meta] : c.profile->folders)
                       if (!meta.deleted && name != "INBOX") r.add_folders(name);
                     r.set_has_subscriptions(!c.profile->subscriptions.empty());
                     for (const auto& [name, sub] : c.profile->subscriptions)
                       if (sub.on) r.add_subscribed(name);
                   });
      case pb::Request::kFolderSubscribe: {
        const auto& s = q.folder_subscribe();
        UserUpdateRequest u;
        u.user = s.user();
        u.folder = s.folder();
        u.op = s.on() ? UserUpdateRequest::Op::Subscribe : UserUpdateRequest::Op::Unsubscribe;
        return run(id, [u](Node& n, Time t, std::uint64_t r) { n.update_user(t, r, u); });
      }
      case pb::Request::kFolderCreate: {
        UserUpdateRequest u;
        u.user = q.folder_create().user();
        u.folder = q.folder_create().folder();
        u.op = UserUpdateRequest::Op::CreateFolder;
        return run(id, [u](Node& n, Time t, std::uint64_t r) { n.update_user(t, r, u); });
      }
      case pb::Request::kFolderDelete:
        return run(id, [u = q.folder_delete().user(), f = q.folder_delete().folder()](Node& n, Time t, std::uint64_t r) {
          n.delete_folder(t, r, u, f);
        });
      case pb::Request::kFolderRename: {
        const auto& rn = q.folder_rename();
        return run(id, [u = rn.user(), from = rn.from(), to = rn.to()](Node& n, Time t, std::uint64_t r) {
          n.rename_folder(t, r, u, from, to);
        });
      }
      case pb::Request::OP_NOT_SET:
        break;
    }
    fail(id, pb::BAD_REQUEST, "unknown or missing operation");
  }

  // Open: each body from this node's own copy when it holds the message,
  // else from the node cache, else fetched from a holder (Node::fetch: in a
  // staging file if large, else bytes) and kept in the node cache when it
  // fits, the answer being the cache entry (or the staging file, or a
  // memfd of the bytes, when the cache refuses it). Only the named user's
  // messages are opened: a holder checks the user (its record says whose
  // the message is), and a cache entry is found only for the user it was
  // fetched for (NodeCache owners). HEADER: the node's own copy or cache
  // entry still answers whole (no network); otherwise the holder sends the
  // header part only, answered from a memfd and not cached (a holder that
  // sends the whole body, an older one, is answered as WHOLE).
  void open_bodies(std::uint64_t id, const pb::Open& o) {
    auto op = std::make_shared<Opening>();
    op->out.set_id(id);
    op->out.set_code(pb::OK);
    const auto n = static_cast<std::size_t>(o.refs_size());
    op->fds.assign(n, -1);
    for (std::size_t i = 0; i < n; ++i) op->out.add_opened();
    op->left = n;
    for (std::size_t i = 0; i < n; ++i) {
      MessageRecord t = target_of(o.refs(static_cast<int>(i)));
      if (i < static_cast<std::size_t>(o.sizes_size())) t.size = o.sizes(static_cast<int>(i));
      open_one(op, i, t, o.part() == pb::Open::HEADER ? FetchPart::Header : FetchPart::Whole);
    }
  }

  static std::uint64_t cache_owner(const std::string& user) {
    const std::uint64_t h = std::hash<std::string>()(user);
    return h == 0 ? 1 : h;
  }

  void open_one(const std::shared_ptr<Opening>& op, std::size_t i, const MessageRecord& t, FetchPart part) {
    const auto& records = agent_.node().replicator().records();
    if (auto r = records.find(t.id); r != records.end() && r->second.has_body && !r->second.expunged) {
      if (r->second.user != t.user) return opened(op, i, pb::NOT_FOUND, "no such message of that user", -1);
      int fd = agent_.store().open_body(t.id);
      if (fd >= 0) return opened(op, i, pb::OK, "", fd);
      // Its file cannot be opened here: another holder's copy, as for a
      // node that holds none.
    }
    const std::uint64_t owner = cache_owner(t.user);
    if (auto fd = agent_.cache().open(t.id, owner)) return opened(op, i, pb::OK, "", *fd);
    auto self = shared_from_this();
    agent_.op([t, part](Node& n, Time now, std::uint64_t r) { n.fetch(now, r, t, part); },
              [this, self, op, i, id = t.id, owner](const ClientReply& c) {
                if (c.status != Status::Ok)
                  return opened(op, i, c.status == Status::NoSuchUser ? pb::NOT_FOUND : code_of(c.status), c.detail,
                                -1);
                server_.count_fetch(c.part, c.body.size());
                agent_.metrics().fetched(c.part == FetchPart::Header, c.body.size());
                if (c.part == FetchPart::Header) {
                  // A header part is not the message: never a cache entry.
                  int fd = store::open_body(c.body);
                  if (fd < 0) {
                    agent_.log(std::string("local: cannot open a fetched header: ") + std::strerror(errno));
                    return opened(op, i, pb::TEMPFAIL, "the message could not be opened here; try again", -1);
                  }
                  return opened(op, i, pb::OK, "", fd, true, c.cut);
                }
                store::NodeCache& cache = agent_.cache();
                const bool kept = c.body.where() == Body::Where::File     ? cache.admit_link(id, c.body.file()->path(), owner)
                                  : c.body.where() == Body::Where::Memory ? cache.admit_bytes(id, c.body.bytes(), owner)
                                                                          : false;
                std::optional<int> cached = kept ? cache.open(id, owner) : std::nullopt;
                int fd = cached ? *cached : store::open_body(c.body);
                if (fd < 0) {
                  agent_.log(std::string("local: cannot open a fetched body: ") + std::strerror(errno));
                  return opened(op, i, pb::TEMPFAIL, "the message could not be opened here; try again", -1);
                }
                opened(op, i, pb::OK, "", fd);
              });
  }

  // Item `i` of `op` is done; the answer goes once every item is.
  void opened(const std::shared_ptr<Opening>& op, std::size_t i, pb::Code code, const std::string& detail, int fd,
              bool header_only = false, bool header_cut = false) {
    auto* item = op->out.mutable_opened(static_cast<int>(i));
    item->set_code(code);
    item->set_detail(detail);
    item->set_header_only(header_only);
    item->set_header_cut(header_cut);
    if (fd >= 0) {
      struct stat st {};
      if (::fstat(fd, &st) != 0) {
        ::close(fd);
        item->set_code(pb::TEMPFAIL);
        item->set_detail("the message could not be opened here; try again");
      } else {
        op->fds[i] = fd;
        item->set_size(static_cast<std::uint64_t>(st.st_size));
      }
    }
    if (--op->left > 0) return;
    Fds fds;
    std::uint32_t count = 0;
    for (std::size_t k = 0; k < op->fds.size(); ++k) {
      if (op->fds[k] < 0) continue;
      fds.add(std::exchange(op->fds[k], -1));
      auto* it = op->out.mutable_opened(static_cast<int>(k));
      it->set_how(pb::Opened::FD);
      it->set_fd_index(count++);
    }
    op->out.set_fd_count(count);
    respond(op->out, std::move(fds));
  }

  // The core delivers to each recipient in turn (Node::deliver_all); the
  // answer has every recipient's result, and succeeds only if each did.
  void deliver_all(std::uint64_t id, std::shared_ptr<Delivery> d) {
    auto self = shared_from_this();
    // A file is shared, bytes are copied: the body stays for the cache
    // fill after the answer, unless there is no cache.
    Body body = agent_.cache().enabled() ? d->whole : std::move(d->whole);
    const std::uint64_t size = body.size();
    agent_.op(
        [d, body = std::move(body)](Node& n, Time t, std::uint64_t r) mutable {
          n.deliver_all(t, r, d->recipients, d->folder, std::move(body), d->options);
        },
        [this, self, id, d, size](const ClientReply& c) {
          pb::Response out;
          out.set_id(id);
          out.set_code(code_of(c.status));
          out.set_detail(c.detail);
          for (const Delivered& one : c.delivered) {
            auto* rr = out.add_delivered();
            rr->set_recipient(one.recipient);
            rr->set_code(code_of(one.status));
            agent_.metrics().delivered(rr->code(), size);
            rr->set_detail(one.detail);
            if (one.status != Status::Ok) continue;
            MessageRecord m;
            m.id = one.msg;
            m.replicas = one.replicas;
            m.user = one.user;
            m.folder = d->folder;
            fill_ref(rr->mutable_message()->mutable_ref(), m);
            rr->mutable_message()->set_uid(one.uid);
            rr->set_uidvalidity(one.uidvalidity);
          }
          respond(out);
          // After the answer, off the acknowledged path: the bodies this
          // node holds no replica of go into its node cache, so a read here
          // right after delivery finds them instead of fetching them back.
          if (agent_.cache().enabled())
            asio::post(sock_.get_executor(), [self, d, out = std::move(out)] { self->cache_delivered(*d, out); });
        });
  }

  // The accepting node's cache fill: each recipient's message delivered
  // here whose replicas do not include this node becomes a cache entry of
  // that user (a link of the staging file, or the bytes written out). A
  // refusal is only a later fetch.
  void cache_delivered(const Delivery& d, const pb::Response& out) {
    const NodeId self_id = agent_.node().id();
    store::NodeCache& cache = agent_.cache();
    for (const auto& rr : out.delivered()) {
      if (rr.code() != pb::OK || !rr.has_message()) continue;
      const pb::MessageRef& ref = rr.message().ref();
      if (std::find(ref.replicas().begin(), ref.replicas().end(), self_id) != ref.replicas().end()) continue;
      const MsgId id{ref.origin(), ref.seq()};
      const std::uint64_t owner = cache_owner(ref.user());
      if (d.whole.where() == Body::Where::File)
        cache.admit_link(id, d.whole.file()->path(), owner);
      else if (d.whole.where() == Body::Where::Memory)
        cache.admit_bytes(id, d.whole.bytes(), owner);
    }
  }

  void fill_status(pb::Status& s) {
    s.set_deliver_size_limit(agent_.options().deliver_size_limit());
    Node& n = agent_.node();
    const Membership& m = n.membership();
    s.set_node_id(n.id());
    s.set_epoch(m.epoch().str());
    s.set_in_group(m.in_group());
    s.set_buckets(static_cast<std::uint32_t>(m.map().size()));
    std::map<NodeId, std::uint32_t> per;
    std::uint32_t not_ready = 0;
    for (Bucket b = 0; b < m.map().size(); ++b) {
      ++per[m.map()[b]];
      if (m.map()[b] == n.id() && !n.bucket_ready(b)) ++not_ready;
    }
    s.set_buckets_not_ready(not_ready);
    const auto& book = agent_.peers().addresses();
    for (const auto& mw : m.members()) {
      auto* x = s.add_members();
      x->set_id(mw.id);
      x->set_weight(mw.weight);
      x->set_load(mw.id == n.id() ? n.load() : n.peer_load(mw.id));
      auto a = book.find(mw.id);
      x->set_address(mw.id == n.id() ? agent_.options().listen : (a == book.end() ? "" : a->second));
      x->set_connected(mw.id == n.id() || agent_.peers().connected(mw.id));
      x->set_buckets(per[mw.id]);
      x->set_full(mw.id == n.id() ? n.spool_full() : n.peer_full(mw.id));
    }
    for (NodeId k : m.known())
      if (!m.is_member(k)) s.add_known(k);
    s.set_replication_backlog(n.replicator().backlog());
    s.set_pending_reports(n.pending_reports());
    s.set_records(n.replicator().records().size());
    s.set_uptime_ms(static_cast<std::uint64_t>(agent_.now() - agent_.started()));
    s.set_flushes(agent_.store().stats().flushes);
    if (agent_.store().damage().any()) s.set_store_damage(agent_.store().damage().str());
    auto sync = n.sync_progress();
    s.set_unindexed_bodies(sync.unindexed);
    s.set_sync_rounds(sync.rounds);
    s.set_sync_users_pulled(sync.users_pulled);
    s.set_sync_bodies_copied(sync.bodies_copied);
    s.set_sync_bodies_pending(sync.bodies_pending);
    for (const auto& [node, a] : m.admin()) {
      auto* e = s.add_admin();
      e->set_node(node);
      e->set_state(admin_state_name(a.state));
      e->set_version(a.version.str());
    }
    auto rp = n.repair_progress();
    s.set_repair_copies(rp.copies);
    s.set_repair_bytes(rp.bytes);
    s.set_repair_pending(rp.pending);
    s.set_repair_inflight(rp.inflight);
    s.set_repair_profiles(rp.profiles);
    s.set_repair_passes(rp.passes);
    s.set_repair_failed(rp.copies_failed);
    auto dp = n.drain_progress();
    s.set_admin_state(admin_state_name(dp.state));
    s.set_drain_messages(dp.messages);
    s.set_drain_bytes(dp.bytes);
    s.set_drain_profiles(dp.profiles);
    s.set_drain_buckets(dp.buckets);
    const auto cache = agent_.cache().stats();
    s.set_cache_bytes(cache.bytes);
    s.set_cache_budget(cache.budget);
    s.set_cache_entries(cache.entries);
    s.set_cache_hits(cache.hits);
    s.set_cache_misses(cache.misses);
    s.set_cache_evictions(cache.evictions);
    s.set_cache_refused(cache.refused);
    const LocalServer::Fetched& f = server_.fetched();
    s.set_fetches(f.whole);
    s.set_fetched_bytes(f.whole_bytes);
    s.set_header_fetches(f.headers);
    s.set_header_bytes(f.header_bytes);
    s.set_version(PORCUPINE_VERSION);
    std::string bytes;
    for (NodeId owner : m.map()) bytes.append(reinterpret_cast<const char*>(&owner), sizeof owner);
    s.set_map_digest(std::to_string(user_hash(bytes)));  // XXH64 of the bytes
  }

  static constexpr std::uint32_t kMaxFrame = 4u << 20;  // one request; bodies come in chunks

  LocalServer& server_;
  Agent& agent_;
  unix_socket::socket sock_;
  bool closed_ = false;
  std::optional<bool> admin_;  // the peer may administer users: asked at its first such request

  bool may_administer() {
    if (!admin_) admin_ = peer_is_admin(sock_.native_handle(), agent_.options().local_admin_group);
    return *admin_;
  }
  unsigned char hdr_[4] = {};
  std::string buf_;
  std::deque<Outgoing> out_;
  std::map<std::uint64_t, Delivery> deliveries_;
  std::uint64_t late_requests_ = 0;  // read after their client's deadline
  std::map<std::uint64_t, std::unique_ptr<asio::steady_timer>> deadlines_;
  std::set<std::uint64_t> expired_;
  RequestTimes times_;
};

LocalServer::LocalServer(asio::io_context& io, Agent& agent)
    : io_(io),
      agent_(agent),
      acceptor_(io) {}

LocalServer::~LocalServer() { stop(); }

void LocalServer::start() {
  const std::string& path = agent_.options().local_socket;
  ::unlink(path.c_str());
  boost::system::error_code ec;
  unix_socket::endpoint ep(path);
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error("cannot listen on local socket " + path + ": " + ec.message());
  ::chmod(path.c_str(), 0660);
  const std::string& group = agent_.options().local_socket_group;
  if (!group.empty()) {
    if (const struct group* g = ::getgrnam(group.c_str())) {
      if (::chown(path.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0)
        agent_.log("local: cannot give " + path + " to group " + group + "; only root can connect");
    } else {
      agent_.log("local: group " + group + " does not exist; only root can connect to " + path);
    }
  }
  accept();
}

void LocalServer::stop() {
  if (stopped_) return;
  stopped_ = true;
  boost::system::error_code ec;
  acceptor_.close(ec);
  auto conns = conns_;
  for (const auto& c : conns) c->close("");
  ::unlink(agent_.options().local_socket.c_str());
}

void LocalServer::accept() {
  acceptor_.async_accept([this](boost::system::error_code ec, unix_socket::socket s) {
    if (stopped_) return;
    if (!ec) {
      auto c = std::make_shared<LocalConnection>(*this, agent_, std::move(s));
      conns_.insert(c);
      c->start();
    }
    accept();
  });
}

}  // namespace porcupine::agent
