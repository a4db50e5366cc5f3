// SPDX-License-Identifier: MIT
// peer_net.cc - see peer_net.h for the protocol and its rules.
#include "agent/peer_net.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>

#include "agent.pb.h"
#include "agent/handshake.h"
#include "agent/read_frame.h"
#include "client/frame.h"
#include "codec/codec.h"
#include "store/spool_file.h"

namespace porcupine::agent {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

// ---- TLS 1.3 with an external pre-shared key --------------------------------
// Both ends hold the same key (derived from the cluster secret), offered and
// found under one identity; no certificates. The handshake is TLS 1.3's
// psk_dhe_ke (an ephemeral key exchange as well, so a secret that leaks later
// does not open recorded traffic). A side without the key fails the PSK
// binder and gets nothing.
constexpr unsigned char kPskIdentity[] = "porcupine-cluster-psk-v1";
constexpr unsigned char kAes128GcmSha256[] = {0x13, 0x01};

int psk_index() {
  static const int i = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return i;
}

SSL_SESSION* psk_session(SSL* s) {
  const auto* key = static_cast<const std::string*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(s), psk_index()));
  const SSL_CIPHER* cipher = SSL_CIPHER_find(s, kAes128GcmSha256);
  if (!key || !cipher) return nullptr;
  SSL_SESSION* sess = SSL_SESSION_new();
  if (!sess || !SSL_SESSION_set1_master_key(sess, reinterpret_cast<const unsigned char*>(key->data()), key->size()) ||
      !SSL_SESSION_set_cipher(sess, cipher) || !SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION)) {
    SSL_SESSION_free(sess);
    return nullptr;
  }
  return sess;
}

int psk_use(SSL* s, const EVP_MD* md, const unsigned char** id, size_t* idlen, SSL_SESSION** sess) {
  SSL_SESSION* ss = psk_session(s);
  if (!ss) return 0;
  if (md && md != SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(ss))) {
    SSL_SESSION_free(ss);
    *sess = nullptr;
    return 1;
  }
  *sess = ss;
  *id = kPskIdentity;
  *idlen = sizeof kPskIdentity - 1;
  return 1;
}

int psk_find(SSL* s, const unsigned char* id, size_t idlen, SSL_SESSION** sess) {
  *sess = nullptr;
  if (idlen != sizeof kPskIdentity - 1 || std::memcmp(id, kPskIdentity, idlen) != 0) return 1;  // no such key
  *sess = psk_session(s);
  return *sess ? 1 : 0;
}

void setup_tls(ssl::context& ctx, const std::string* key) {
  SSL_CTX* c = ctx.native_handle();
  SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
  SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256");
  SSL_CTX_set_psk_use_session_callback(c, psk_use);
  SSL_CTX_set_psk_find_session_callback(c, psk_find);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(c, 0);
  SSL_CTX_set_ex_data(c, psk_index(), const_cast<std::string*>(key));
}

using handshake::kTag;
constexpr std::size_t kHandshakeMax = handshake::kMaxFrame;
constexpr std::size_t kChunk = 256u << 10;       // a body in transfer, per frame
constexpr std::size_t kMaxQueuedFiles = 256;     // file bodies waiting to go, per connection
constexpr std::size_t kMaxArrived = 4;           // transfers done, their frame not yet come

// The updates of a message that may carry a body (the only ones whose
// bodies travel as transfers).
template <class E, class F>
void for_each_body(E& e, F f) {
  if (auto* s = std::get_if<StoreRequest>(&e.body)) f(s->update.record.body);
  else if (auto* p = std::get_if<Push>(&e.body)) f(p->update.record.body);
  else if (auto* r = std::get_if<FetchReply>(&e.body)) f(r->body);
}

bool split_address(const std::string& a, std::string& host, std::string& port) {
  auto colon = a.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == a.size()) return false;
  host = a.substr(0, colon);
  port = a.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return true;
}

}  // namespace

// One TCP connection, either direction. Lives while its socket does.
class PeerConnection : public std::enable_shared_from_this<PeerConnection> {
 public:
  // `counted`: an accepted connection counted in the net's handshakes in
  // progress from `address` until it is ready or closed.
  PeerConnection(PeerNet& net, tcp::socket s, bool initiator, NodeId expect, bool counted = false,
                 std::string address = {})
      : net_(net),
        sock_(std::move(s)),
        initiator_(initiator),
        expect_(expect),
        counted_(counted),
        address_(std::move(address)),
        deadline_(sock_.get_executor()) {
    nonce_.resize(32);
    RAND_bytes(reinterpret_cast<unsigned char*>(nonce_.data()), static_cast<int>(nonce_.size()));
  }

  void start() {
    boost::system::error_code ec;
    auto ep = sock_.remote_endpoint(ec);
    remote_ = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
    auto self = shared_from_this();
    deadline_.expires_after(std::chrono::milliseconds(net_.options().handshake_timeout_ms));
    deadline_.async_wait([this, self](boost::system::error_code err) {
      if (err || closed_ || ready_) return;
      close("handshake not finished in " + std::to_string(net_.options().handshake_timeout_ms) + " ms");
    });
    const auto security = net_.options().security;
    if (initiator_) return security == PeerNet::Security::Tls ? tls_handshake() : begin();
    if (security == PeerNet::Security::Legacy) return begin();
    if (security == PeerNet::Security::Tls) return tls_handshake();
    // Both: a TLS record starts with 0x16 (handshake); the old handshake's
    // first frame with a length that is never that large.
    sock_.async_receive(asio::buffer(peek_, 1), tcp::socket::message_peek,
                        [this, self](boost::system::error_code err, std::size_t n) {
                          if (closed_) return;
                          if (err || n != 1) return close(err ? err.message() : "peer closed");
                          if (peek_[0] == 0x16) return tls_handshake();
                          begin();
                        });
  }

 private:
  void tls_handshake() {
    auto type = initiator_ ? ssl::stream_base::client : ssl::stream_base::server;
    tls_ = std::make_unique<ssl::stream<tcp::socket&>>(sock_, initiator_ ? net_.tls_client() : net_.tls_server());
    auto self = shared_from_this();
    tls_->async_handshake(type, [this, self](boost::system::error_code ec) {
      if (closed_) return;
      if (ec) return close("TLS handshake failed (wrong cluster secret, or not an agent speaking TLS?): " +
                           ec.message());
      begin();
    });
  }

  handshake::Side side() const { return {net_.options().self, initiator_, tls_ != nullptr}; }

  // The stream frames go over: TLS once it is up, else the socket.
  template <class F>
  void with_stream(F&& f) {
    if (tls_) f(*tls_);
    else f(sock_);
  }

  // The handshake inside the channel: Hello and Proof each way.
  void begin() {
    agentpb::Hello h;
    h.set_to_node(initiator_ ? expect_ : kNoNode);
    h.set_protocol_version(codec::kProtocolVersion);
    h.set_node_id(net_.options().self);
    h.set_listen_address(net_.options().listen);
    h.set_nonce(nonce_);
    h.set_body_transfers(true);
    for (const auto& [id, addr] : net_.addresses()) (*h.mutable_address_book())[id] = addr;
    write_raw(h.SerializeAsString());
    read_header();
  }

 public:

  // A body in a file goes first, in chunk frames read from the file as the
  // socket drains (never whole in memory); the frame then names its transfer.
  void send_envelope(Envelope&& e) {
    if (!ready_ || closed_) return;
    // A listing's part behind others waits as it is, encoded when its turn
    // comes: the first parts are on their way (and being read) while the
    // next are encoded. Counted in the queue at an estimate until then.
    if (const auto* l = std::get_if<ListReply>(&e.body); l && !out_.empty()) {
      Out o;
      o.estimate = 64;
      for (const MessageRecord& r : l->records) o.estimate += 128 + r.meta.size() + r.user.size() + r.folder.size();
      o.envelope = std::make_unique<Envelope>(std::move(e));
      queue(std::move(o));
      return;
    }
    Envelope copy;
    const Envelope* out = &e;
    bool has_file = false;
    for_each_body(e, [&](const Body& b) { has_file |= b.where() == Body::Where::File; });
    if (has_file) {
      copy = e;
      bool ok = true;
      for_each_body(copy, [&](Body& body) {
        if (!ok || body.where() != Body::Where::File) return;
        if (!peer_transfers_) {  // an older agent: the body inline, read whole
          auto bytes = store::read_body(body);
          if (!bytes) {
            net_.log("peer n" + std::to_string(peer_) + ": cannot read body " + body.file()->path() +
                     " to send; frame dropped (resent later)");
            ok = false;
            return;
          }
          body = std::move(*bytes);
          return;
        }
        int fd = ::open(body.file()->path().c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
          net_.log("peer n" + std::to_string(peer_) + ": cannot read body " + body.file()->path() +
                   " to send; frame dropped (resent later)");
          ok = false;
          return;
        }
        if (files_queued_ >= kMaxQueuedFiles) {
          ::close(fd);
          ok = false;
          return close("peer not reading; too many bodies queued");
        }
        std::uint64_t t = ++out_transfer_;
        Out job;
        job.file = std::make_shared<FileJob>(fd, t, body.size());
        ++files_queued_;
        queue(std::move(job));
        body = Body::in_transfer(t, body.size());
      });
      if (!ok) return;
      out = &copy;
    }
    std::string payload;
    try {
      payload = codec::encode_envelope(*out);
    } catch (const std::exception& ex) {
      net_.log(std::string("peer: frame not sent: ") + ex.what());
      return;
    }
    Out o;
    o.payload = std::move(payload);
    o.tagged = true;
    queue(std::move(o));
  }

  void close(const std::string& why) {
    if (closed_) return;
    closed_ = true;
    deadline_.cancel();
    if (counted_) {
      counted_ = false;
      net_.handshake_over(address_, true);
    }
    if (!why.empty()) {
      if (peer_)
        net_.log("peer n" + std::to_string(peer_) + ": connection closed: " + why);
      else
        net_.log_stranger("peer " + remote_ + ": connection closed: " + why);
    }
    boost::system::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_both, ec);
    sock_.close(ec);
    net_.on_closed(shared_from_this());
  }

  NodeId peer() const { return peer_; }
  NodeId expected() const { return expect_; }
  bool in_handshake() const { return counted_; }
  bool ready() const { return ready_; }
  bool initiator() const { return initiator_; }

 private:
  // What waits to be written: a frame (tagged when it goes, so tags follow
  // the order on the wire), or a body file to send in chunks.
  struct FileJob {
    FileJob(int f, std::uint64_t t, std::uint64_t n) : fd(f), transfer(t), left(n) {}
    ~FileJob() { ::close(fd); }
    FileJob(const FileJob&) = delete;
    FileJob& operator=(const FileJob&) = delete;
    int fd;
    std::uint64_t transfer;
    std::uint64_t left;
  };
  struct Out {
    std::string payload;
    bool tagged = false;
    std::shared_ptr<FileJob> file;
    std::unique_ptr<Envelope> envelope;  // to be encoded (tagged) when it comes to the front
    std::size_t estimate = 0;            // its size in queued_bytes_ until then
  };

  void write_raw(std::string payload) {
    Out o;
    o.payload = std::move(payload);
    queue(std::move(o));
  }

  void queue(Out o) {
    if (closed_) return;
    const std::size_t size = o.envelope ? o.estimate : o.payload.size();
    if (queued_bytes_ + size > net_.options().max_frame * 2) {
      close("peer not reading; output queue full");
      return;
    }
    queued_bytes_ += size;
    out_.push_back(std::move(o));
    if (out_.size() == 1) write_next();
  }

  // length ‖ tag ‖ payload, built once.
  std::string tag_and_wrap(const std::string& payload) {
    const std::string tag = handshake::frame_tag(session_, initiator_, out_seq_++, payload);
    std::string wire;
    wire.reserve(4 + tag.size() + payload.size());
    wire += frame::be32(static_cast<std::uint32_t>(tag.size() + payload.size()));
    wire += tag;
    wire += payload;
    return wire;
  }

  void write_next() {
    Out& front = out_.front();
    if (front.envelope) {
      try {
        front.payload = codec::encode_envelope(*front.envelope);
      } catch (const std::exception& ex) {
        net_.log(std::string("peer: frame not sent: ") + ex.what());
      }
      front.envelope.reset();
      front.tagged = true;
      queued_bytes_ = queued_bytes_ - front.estimate + front.payload.size();
      front.estimate = 0;
      if (front.payload.empty()) {  // not encoded: the next
        out_.pop_front();
        if (!out_.empty()) write_next();
        return;
      }
    }
    if (front.file) {
      FileJob& j = *front.file;
      std::string data(static_cast<std::size_t>(std::min<std::uint64_t>(j.left, kChunk)), '\0');
      std::size_t got = 0;
      while (got < data.size()) {
        ssize_t n = ::read(j.fd, data.data() + got, data.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return close("cannot read a body being sent (" + std::string(n < 0 ? std::strerror(errno) : "short file") + ")");
        got += static_cast<std::size_t>(n);
      }
      j.left -= got;
      wire_ = tag_and_wrap(codec::encode_body_chunk(codec::BodyChunk{j.transfer, data, {}, j.left == 0}));
    } else {
      wire_ = front.tagged ? tag_and_wrap(front.payload) : frame::wrap(front.payload);
    }
    auto self = shared_from_this();
    with_stream([&](auto& s) {
      asio::async_write(s, asio::buffer(wire_), [this, self](boost::system::error_code ec, std::size_t) {
        if (closed_) return;
        if (ec) return close(ec.message());
        Out& done = out_.front();
        if (done.file && done.file->left > 0) return write_next();  // the next chunk
        if (done.file) --files_queued_;
        queued_bytes_ -= done.payload.size();
        out_.pop_front();
        if (!out_.empty()) write_next();
      });
    });
  }

  void read_header() {
    auto self = shared_from_this();
    std::size_t limit = stage_ == Stage::Ready ? net_.options().max_frame + kTag : kHandshakeMax;
    with_stream([&](auto& s) {
      async_read_frame(s, hdr_, buf_, limit, [this, self](const std::string& why) {
        if (closed_) return;
        if (!why.empty()) return close(why == "closed" ? "peer closed" : why);
        if (handle()) read_header();
      });
    });
  }

  // False when the connection was closed.
  bool handle() {
    switch (stage_) {
      case Stage::Hello: {
        handshake::PeerHello h;
        if (auto why = handshake::check_hello(buf_, side(), h); !why.empty()) {
          close(why);
          return false;
        }
        claimed_ = h.node;
        peer_transfers_ = h.body_transfers;
        peer_nonce_ = std::move(h.nonce);
        claimed_address_ = std::move(h.listen_address);
        book_.merge(h.address_book);
        write_raw(handshake::make_proof(net_.options().secret, side(), nonce_, peer_nonce_));
        stage_ = Stage::Proof;
        return true;
      }
      case Stage::Proof: {
        if (!handshake::check_proof(buf_, net_.options().secret, side(), nonce_, peer_nonce_, claimed_)) {
          close("authentication failed (wrong cluster secret?) from " + remote_ + " claiming n" +
                std::to_string(claimed_));
          return false;
        }
        peer_ = claimed_;
        deadline_.cancel();
        if (counted_) {
          counted_ = false;
          net_.handshake_over(address_, false);
        }
        const std::string& ni = initiator_ ? nonce_ : peer_nonce_;
        const std::string& nr = initiator_ ? peer_nonce_ : nonce_;
        session_ = handshake::session_key(net_.options().secret, ni, nr);
        stage_ = Stage::Ready;
        ready_ = true;
        if (!claimed_address_.empty()) net_.learn(peer_, claimed_address_);
        for (const auto& [id, addr] : book_)
          if (id != net_.options().self) net_.learn(id, addr);
        net_.on_ready(shared_from_this());
        return !closed_;
      }
      case Stage::Ready: {
        std::string_view payload;
        if (auto why = handshake::check_tag(buf_, session_, !initiator_, in_seq_++, payload); !why.empty()) {
          close(why);
          return false;
        }
        Envelope e;
        codec::BodyChunk chunk;
        bool is_chunk = false;
        std::string why;
        if (!codec::decode_frame(payload, e, chunk, is_chunk, &why)) {
          if (why == codec::kUnknownMessage) {
            if (!unknown_logged_) net_.log("peer n" + std::to_string(peer_) + ": " + why + "; dropped");
            unknown_logged_ = true;
            return true;
          }
          close("malformed frame: " + why);
          return false;
        }
        if (is_chunk) return take_chunk(chunk);
        bool resolved = true;
        std::optional<std::string> refused;
        for_each_body(e, [&](Body& body) {
          if (body.where() != Body::Where::Transfer) return;
          if (auto no = refused_.find(body.transfer()); no != refused_.end() && no->second.whole) {
            refused = std::move(no->second.why);
            refused_.erase(no);
            return;
          }
          auto it = arrived_.find(body.transfer());
          if (it == arrived_.end() || it->second.size() != body.size()) {
            resolved = false;
            return;
          }
          body = std::move(it->second);
          arrived_.erase(it);
        });
        if (!resolved) {
          close("frame names a body transfer that did not arrive whole");
          return false;
        }
        if (refused) {
          log_refusal(message_name(e.body), *refused);
          return true;
        }
        e.from = peer_;  // the authenticated peer, whatever the frame says
        e.to = net_.options().self;
        net_.on_frame(peer_, std::move(e));
        return !closed_;
      }
    }
    return false;
  }

  // A chunk of a body in transfer: into a staging file; the last one makes
  // it durable and holds it for the frame that names it. A body the disk
  // refuses (full) is refused alone: the rest of its chunks are read and
  // dropped (the framing is unchanged, so the stream stays in step), and
  // so is the frame that names it; the connection goes on.
  bool take_chunk(codec::BodyChunk& c) {
    auto in = incoming_.find(c.transfer);
    auto no = refused_.find(c.transfer);
    if (in == incoming_.end() && no == refused_.end()) {  // a new transfer: one at a time
      const bool refusing =
          std::any_of(refused_.begin(), refused_.end(), [](const auto& r) { return !r.second.whole; });
      if (!incoming_.empty() || refusing || arrived_.size() + refused_.size() >= kMaxArrived ||
          arrived_.count(c.transfer)) {
        close("body transfers out of order");
        return false;
      }
      try {
        in = incoming_.emplace(c.transfer, std::make_unique<store::Staging>(net_.options().staging_dir)).first;
      } catch (const std::exception& ex) {
        no = refuse(c.transfer, ex.what());
      }
    } else if (no != refused_.end() && no->second.whole) {
      close("body transfers out of order");
      return false;
    }
    const std::uint64_t so_far = in != incoming_.end() ? in->second->size() : no->second.size;
    const std::uint64_t after = so_far + c.data_owned.size();
    if (after > net_.options().max_frame) {
      close("body transfer over the size limit");
      return false;
    }
    if (in != incoming_.end() && !in->second->append(c.data_owned)) {
      std::string err = in->second->error();
      incoming_.erase(in);  // and what was written of it
      in = incoming_.end();
      no = refuse(c.transfer, err);
    }
    if (no != refused_.end()) {
      no->second.size = after;
      no->second.whole = c.last;
      return true;
    }
    if (!c.last) return true;
    auto body = in->second->finish();
    std::string err = in->second->error();
    incoming_.erase(in);
    if (!body) {
      no = refuse(c.transfer, err);
      no->second.size = after;
      no->second.whole = true;
      return true;
    }
    arrived_.emplace(c.transfer, std::move(*body));
    return true;
  }

  // A transfer whose body could not be staged.
  struct Refused {
    std::uint64_t size = 0;  // read so far
    bool whole = false;      // its last chunk came: its frame is next
    std::string why;
  };
  std::map<std::uint64_t, Refused>::iterator refuse(std::uint64_t transfer, const std::string& why) {
    net_.staging_failed();
    return refused_.insert_or_assign(transfer, Refused{0, false, why}).first;
  }

  // One line per refusal, at most one each 10 s per connection (counting
  // those left out): a full disk refuses every resend.
  void log_refusal(const char* what, const std::string& why) {
    net_.transfer_refused();
    ++refusals_unlogged_;
    auto now = std::chrono::steady_clock::now();
    if (now - refusal_logged_ < std::chrono::seconds(10)) return;
    net_.log("peer n" + std::to_string(peer_) + ": " + what + " dropped: its body could not be staged (" + why +
             "), as if lost on the way (it is sent again or asked of another node); the connection stays" +
             (refusals_unlogged_ > 1
                  ? " (" + std::to_string(refusals_unlogged_) + " dropped since the last such line)"
                  : std::string()));
    refusals_unlogged_ = 0;
    refusal_logged_ = now;
  }

  enum class Stage { Hello, Proof, Ready };
  PeerNet& net_;
  tcp::socket sock_;
  bool initiator_;
  NodeId expect_;
  bool counted_;
  std::string address_;
  asio::steady_timer deadline_;  // the handshake's
  std::unique_ptr<ssl::stream<tcp::socket&>> tls_;  // set once TLS is chosen
  unsigned char peek_[1] = {};
  NodeId claimed_ = kNoNode, peer_ = kNoNode;
  std::string remote_, claimed_address_;
  std::map<NodeId, std::string> book_;
  std::string nonce_, peer_nonce_, session_;
  Stage stage_ = Stage::Hello;
  bool ready_ = false, closed_ = false;
  bool unknown_logged_ = false;  // a frame of a kind this build does not know was dropped
  bool peer_transfers_ = false;  // the peer takes bodies as BodyChunk transfers
  unsigned char hdr_[4] = {};
  std::string buf_;
  std::deque<Out> out_;
  std::string wire_;  // the frame being written
  std::size_t queued_bytes_ = 0, files_queued_ = 0;
  std::uint64_t out_transfer_ = 0;
  std::map<std::uint64_t, std::unique_ptr<store::Staging>> incoming_;
  std::map<std::uint64_t, Body> arrived_;
  std::map<std::uint64_t, Refused> refused_;  // transfers being dropped, or dropped and their frame not yet come
  std::uint64_t refusals_unlogged_ = 0;
  std::chrono::steady_clock::time_point refusal_logged_{};
  std::uint64_t in_seq_ = 0, out_seq_ = 0;
};

PeerNet::PeerNet(asio::io_context& io, Options o, OnEnvelope on_envelope, LogFn log)
    : io_(io),
      opt_(std::move(o)),
      psk_(handshake::hmac_sha256(opt_.secret, "porcupine peer tls psk v1")),
      tls_client_(ssl::context::tls_client),
      tls_server_(ssl::context::tls_server),
      on_envelope_(std::move(on_envelope)),
      log_(std::move(log)),
      acceptor_(io) {
  setup_tls(tls_client_, &psk_);
  setup_tls(tls_server_, &psk_);
  for (const auto& [id, addr] : opt_.seeds)
    if (id != opt_.self) book_[id] = addr;
}

PeerNet::~PeerNet() { stop(); }

void PeerNet::start() {
  std::string host, port;
  if (!split_address(opt_.listen, host, port)) throw std::runtime_error("bad listen address '" + opt_.listen + "'");
  tcp::resolver res(io_);
  boost::system::error_code ec;
  auto eps = res.resolve(host, port, ec);
  if (ec || eps.empty()) throw std::runtime_error("cannot resolve listen address " + opt_.listen + ": " + ec.message());
  tcp::endpoint ep = *eps.begin();
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error("cannot listen on " + opt_.listen + ": " + ec.message());
  accept();
  for (const auto& [id, addr] : book_) dial(id);
}

void PeerNet::stop() {
  if (stopped_) return;
  stopped_ = true;
  boost::system::error_code ec;
  acceptor_.close(ec);
  if (accept_timer_) accept_timer_->cancel();
  auto conns = all_;
  for (const auto& c : conns) c->close("");
  for (auto& [id, d] : dials_)
    if (d.timer) d.timer->cancel();
}

void PeerNet::accept() {
  acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
    if (stopped_) return;
    if (ec) {
      // Out of descriptors (or another resource): accepting again at once
      // would fail at once, for ever; wait a little.
      if (ec != asio::error::operation_aborted) {
        log_stranger("peer: accepting a connection failed: " + ec.message());
        return accept_later();
      }
      return;
    }
    boost::system::error_code ignored;
    auto ep = s.remote_endpoint(ignored);
    std::string address = ignored ? "?" : ep.address().to_string();
    if (pending_by_address_[address] >= opt_.max_unauthenticated_per_address) {
      ++strangers_refused_;
      log_stranger("peer " + address + ": connection refused: " + std::to_string(pending_by_address_[address]) +
                   " handshakes in progress from this address");
      s.close(ignored);
      return accept();
    }
    while (pending_ >= opt_.max_unauthenticated && !pending_order_.empty()) {
      auto oldest = pending_order_.front().lock();
      pending_order_.pop_front();
      if (oldest && oldest->in_handshake()) {
        ++strangers_refused_;
        oldest->close("closed for a newer connection: " + std::to_string(pending_) + " handshakes in progress");
      }
    }
    ++pending_;
    ++pending_by_address_[address];
    s.set_option(tcp::no_delay(true), ignored);
    auto c = std::make_shared<PeerConnection>(*this, std::move(s), false, kNoNode, true, address);
    all_.insert(c);
    pending_order_.push_back(c);
    if (pending_order_.size() > 4 * opt_.max_unauthenticated) {
      // Drop the entries of connections long done with their handshake.
      std::erase_if(pending_order_, [](const std::weak_ptr<PeerConnection>& w) {
        auto p = w.lock();
        return !p || !p->in_handshake();
      });
    }
    c->start();
    accept();
  });
}

void PeerNet::accept_later() {
  if (!accept_timer_) accept_timer_ = std::make_unique<asio::steady_timer>(io_);
  accept_timer_->expires_after(std::chrono::milliseconds(100));
  accept_timer_->async_wait([this](boost::system::error_code ec) {
    if (!ec && !stopped_) accept();
  });
}

void PeerNet::handshake_over(const std::string& address, bool failed) {
  if (pending_ > 0) --pending_;
  if (auto it = pending_by_address_.find(address); it != pending_by_address_.end() && --it->second == 0)
    pending_by_address_.erase(it);
  if (failed) ++handshakes_failed_;
}

void PeerNet::log_stranger(const std::string& line) {
  auto now = std::chrono::steady_clock::now();
  if (now - log_window_ >= std::chrono::seconds(10)) {
    if (log_suppressed_ > 0)
      log_("peer: " + std::to_string(log_suppressed_) + " more lines about unauthenticated connections left out");
    log_window_ = now;
    log_written_ = 0;
    log_suppressed_ = 0;
  }
  if (log_written_ < opt_.stranger_log_burst) {
    ++log_written_;
    log_(line);
  } else {
    ++log_suppressed_;
  }
}

void PeerNet::learn(NodeId n, const std::string& address) {
  if (n == opt_.self || n == kNoNode || address.empty()) return;
  auto [it, fresh] = book_.try_emplace(n, address);
  if (!fresh && it->second != address) it->second = address;
  if (fresh && !ready_.count(n)) dial(n);
}

bool PeerNet::connected(NodeId n) const {
  auto it = ready_.find(n);
  return it != ready_.end() && !it->second.empty();
}

void PeerNet::send(Envelope e) {
  auto it = ready_.find(e.to);
  if (it == ready_.end() || it->second.empty()) {
    ++dropped_;
    if (!dials_[e.to].in_progress && book_.count(e.to)) schedule_dial(e.to);
    return;
  }
  ++frames_out_;
  (*it->second.begin())->send_envelope(std::move(e));
}

void PeerNet::dial(NodeId n) {
  if (stopped_ || connected(n)) return;
  auto a = book_.find(n);
  if (a == book_.end()) return;
  Dial& d = dials_[n];
  if (d.in_progress) return;
  std::string host, port;
  if (!split_address(a->second, host, port)) {
    log_("peer n" + std::to_string(n) + ": bad address '" + a->second + "'");
    return;
  }
  d.in_progress = true;
  auto res = std::make_shared<tcp::resolver>(io_);
  res->async_resolve(host, port, [this, n, res](boost::system::error_code ec, tcp::resolver::results_type eps) {
    if (stopped_) return;
    if (ec) {
      dials_[n].in_progress = false;
      schedule_dial(n);
      return;
    }
    auto sock = std::make_shared<tcp::socket>(io_);
    auto connected = [this, n, sock](boost::system::error_code ec2) {
      if (stopped_) return;
      dials_[n].in_progress = false;
      if (ec2) {
        if (ec2 == asio::error::connection_refused && opt_.on_refused) opt_.on_refused(n);
        schedule_dial(n);
        return;
      }
      sock->set_option(tcp::no_delay(true), ec2);
      auto c = std::make_shared<PeerConnection>(*this, std::move(*sock), true, n);
      all_.insert(c);
      c->start();
    };
    if (opt_.source_address.empty()) {
      asio::async_connect(*sock, eps, [connected](boost::system::error_code e, const tcp::endpoint&) { connected(e); });
      return;
    }
    // From the node's own address: the first of the peer's addresses of the
    // same family.
    boost::system::error_code bec;
    const auto from = asio::ip::make_address(opt_.source_address, bec);
    std::optional<tcp::endpoint> to;
    for (const auto& r : eps)
      if (!bec && r.endpoint().address().is_v4() == from.is_v4()) {
        to = r.endpoint();
        break;
      }
    if (!to) {
      log_("peer n" + std::to_string(n) + ": no address of the family of source_address " + opt_.source_address);
      dials_[n].in_progress = false;
      schedule_dial(n);
      return;
    }
    sock->open(to->protocol(), bec);
    if (!bec) sock->bind(tcp::endpoint(from, 0), bec);
    if (bec) {
      log_("peer n" + std::to_string(n) + ": cannot connect from " + opt_.source_address + ": " + bec.message());
      dials_[n].in_progress = false;
      schedule_dial(n);
      return;
    }
    sock->async_connect(*to, connected);
  });
}

void PeerNet::schedule_dial(NodeId n) {
  if (stopped_ || connected(n)) return;
  Dial& d = dials_[n];
  if (d.in_progress) return;
  if (!d.timer) d.timer = std::make_unique<asio::steady_timer>(io_);
  if (d.timer->expiry() > asio::steady_timer::clock_type::now()) return;  // already scheduled
  d.timer->expires_after(std::chrono::milliseconds(d.backoff_ms));
  d.backoff_ms = std::min<std::int64_t>(d.backoff_ms * 2, opt_.backoff_max_ms);
  d.timer->async_wait([this, n](boost::system::error_code ec) {
    if (!ec) dial(n);
  });
}

void PeerNet::on_ready(const std::shared_ptr<PeerConnection>& c) {
  NodeId n = c->peer();
  if (c->initiator() && c->expected() != kNoNode && c->expected() != n) {
    c->close("dialled n" + std::to_string(c->expected()) + " but reached n" + std::to_string(n));
    return;
  }
  bool first = !connected(n);
  ready_[n].insert(c);
  dials_[n].backoff_ms = 100;
  if (first) {
    log_("peer n" + std::to_string(n) + ": connected");
    if (opt_.on_connected) opt_.on_connected(n);
  }
}

void PeerNet::on_closed(const std::shared_ptr<PeerConnection>& c) {
  all_.erase(c);
  NodeId n = c->peer();
  if (n == kNoNode) n = c->expected();
  if (auto it = ready_.find(n); it != ready_.end()) {
    it->second.erase(c);
    if (it->second.empty()) {
      ready_.erase(it);
      // Soon: if the peer went down, the dial is refused and says so.
      dials_[n].backoff_ms = opt_.dial_after_close_ms;
      if (!stopped_) schedule_dial(n);
    }
  } else if (c->initiator() && !stopped_) {
    schedule_dial(n);
  }
}

void PeerNet::on_frame(NodeId, Envelope e) {
  ++frames_in_;
  on_envelope_(std::move(e));
}

}  // namespace porcupine::agent
