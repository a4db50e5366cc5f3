// SPDX-License-Identifier: MIT
// fuzz_handshake.cc - libFuzzer target: what a peer sends on a connection,
// read as peer_net.cc reads it (agent/read_frame.h, the same limits) and
// judged by the same checks (agent/handshake.h): its Hello, its Proof,
// then tagged frames decoded by the codec.
//
// The first byte of the input chooses this side's role and whether the
// connection is inside TLS, and whether the target itself writes the
// peer's Proof and the tags of later frames: a fuzzer cannot forge an
// HMAC, so without that it would never get past the Proof. The rest is the
// byte stream from the peer: frames of a 4-byte big-endian length and that
// many bytes.
//
// Beyond not crashing: every refusal has a one-line reason; a Proof made
// with the secret is accepted and this side's own Proof is one the peer
// accepts; a frame tagged with the session key is accepted with its
// payload intact, in order.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio.hpp>

#include "agent/handshake.h"
#include "agent/read_frame.h"
#include "client/frame.h"
#include "codec/codec.h"
#include "fuzz_check.h"
#include "handshake_fixture.h"

namespace asio = boost::asio;
using namespace porcupine;
using namespace porcupine::agent;
using fuzz::check;

namespace {

const std::string& kSecret = fuzz::kHandshakeSecret;
const std::string& kNonce = fuzz::kHandshakeNonce;
constexpr NodeId kSelf = fuzz::kHandshakeSelf;
constexpr std::size_t kMaxFrame = 1 << 20;  // message_size_limit + 1 MiB, scaled down

// The peer's bytes as an Asio stream: each read completes at once with what
// is left (a socket could return less; read_frame.h asks for exact sizes),
// then end of file.
class WireStream {
 public:
  using executor_type = asio::io_context::executor_type;
  WireStream(asio::io_context& io, std::string_view bytes) : io_(io), left_(bytes) {}
  executor_type get_executor() { return io_.get_executor(); }

  template <class Buffers, class Handler>
  void async_read_some(const Buffers& buffers, Handler&& handler) {
    std::size_t n = asio::buffer_copy(buffers, asio::buffer(left_.data(), left_.size()));
    left_.remove_prefix(n);
    boost::system::error_code ec;
    if (n == 0 && asio::buffer_size(buffers) > 0) ec = asio::error::eof;
    asio::post(io_, [h = std::forward<Handler>(handler), ec, n]() mutable { h(ec, n); });
  }

 private:
  asio::io_context& io_;
  std::string_view left_;
};

// One connection from this side, over the fuzzer's bytes.
class Conversation {
 public:
  Conversation(asio::io_context& io, std::string_view wire, std::uint8_t mode)
      : stream_(io, wire), sign_proof_(mode & fuzz::kSignProof), sign_frames_(mode & fuzz::kSignFrames) {
    side_.self = kSelf;
    side_.initiator = mode & fuzz::kInitiator;
    side_.tls = mode & fuzz::kTls;
  }

  void read() {
    std::size_t limit = stage_ == Stage::Ready ? kMaxFrame + handshake::kTag : handshake::kMaxFrame;
    async_read_frame(stream_, hdr_, buf_, limit, [this](const std::string& why) {
      if (!why.empty()) return check(fuzz::one_line(why), "a reading failure has a one-line reason");
      if (handle()) read();
    });
  }

 private:
  enum class Stage { Hello, Proof, Ready };

  bool handle() {
    switch (stage_) {
      case Stage::Hello: {
        std::string why = handshake::check_hello(buf_, side_, peer_);
        if (!why.empty()) {
          check(fuzz::one_line(why), "a refused Hello has a one-line reason");
          return false;
        }
        check(peer_.node != kNoNode && peer_.node != kSelf && peer_.nonce.size() == handshake::kNonce,
              "an accepted Hello names another node and carries a nonce");
        peer_side_ = {peer_.node, !side_.initiator, side_.tls};
        // What this side would send: the peer must accept it.
        std::string mine = handshake::make_proof(kSecret, side_, kNonce, peer_.nonce);
        check(handshake::check_proof(mine, kSecret, peer_side_, peer_.nonce, kNonce, kSelf),
              "this side's Proof is accepted by a peer with the secret");
        stage_ = Stage::Proof;
        return true;
      }
      case Stage::Proof: {
        std::string proof = sign_proof_ ? handshake::make_proof(kSecret, peer_side_, peer_.nonce, kNonce) : buf_;
        bool ok = handshake::check_proof(proof, kSecret, side_, kNonce, peer_.nonce, peer_.node);
        if (sign_proof_) check(ok, "a Proof made with the secret is accepted");
        if (!ok) return false;
        const std::string& ni = side_.initiator ? kNonce : peer_.nonce;
        const std::string& nr = side_.initiator ? peer_.nonce : kNonce;
        session_ = handshake::session_key(kSecret, ni, nr);
        stage_ = Stage::Ready;
        return true;
      }
      case Stage::Ready: {
        std::string frame = buf_;
        if (sign_frames_) frame = handshake::frame_tag(session_, !side_.initiator, seq_, buf_) + buf_;
        std::string_view payload;
        std::string why = handshake::check_tag(frame, session_, !side_.initiator, seq_++, payload);
        if (sign_frames_) check(why.empty() && payload == buf_, "a frame tagged with the session key is accepted");
        if (!why.empty()) {
          check(fuzz::one_line(why), "a refused tag has a one-line reason");
          return false;
        }
        Envelope e;
        codec::BodyChunk chunk;
        bool is_chunk = false;
        if (!codec::decode_frame(payload, e, chunk, is_chunk, &why)) {
          check(fuzz::one_line(why), "a refused frame has a one-line reason");
          return false;
        }
        return true;
      }
    }
    return false;
  }

  WireStream stream_;
  handshake::Side side_, peer_side_;
  bool sign_proof_, sign_frames_;
  Stage stage_ = Stage::Hello;
  unsigned char hdr_[4] = {};
  std::string buf_;
  handshake::PeerHello peer_;
  std::string session_;
  std::uint64_t seq_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_protobuf();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  static asio::io_context io;
  io.restart();
  Conversation c(io, std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1), data[0]);
  c.read();
  io.run();
  return 0;
}
