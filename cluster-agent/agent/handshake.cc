// SPDX-License-Identifier: MIT
// handshake.cc - see handshake.h.
#include "agent/handshake.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <limits>
#include <memory>

#include "agent.pb.h"
#include "client/frame.h"

namespace porcupine::agent::handshake {

namespace {

std::string be64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8) s[static_cast<std::size_t>(i)] = static_cast<char>(v & 0xff);
  return s;
}

const char* role(bool initiator) { return initiator ? "I" : "R"; }

template <class M>
bool parse(std::string_view bytes, M& m) {
  return bytes.size() <= static_cast<std::size_t>(std::numeric_limits<int>::max()) &&
         m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

// HMAC(secret, role ‖ the prover's nonce ‖ the other's nonce ‖ the prover's id).
std::string proof_tag(std::string_view secret, bool prover_initiator, std::string_view prover_nonce,
                      std::string_view other_nonce, NodeId prover) {
  std::string data = role(prover_initiator);
  data.append(prover_nonce);
  data.append(other_nonce);
  data += frame::be32(prover);
  return hmac_sha256(secret, data);
}

}  // namespace

std::string hmac_sha256(std::string_view key, std::string_view data) {
  // Never a null pointer, even for an empty view: OpenSSL reads a null key
  // as "no key given" rather than as an empty one.
  static constexpr char kEmpty[1] = {};
  const char* k = key.empty() ? kEmpty : key.data();
  const char* d = data.empty() ? kEmpty : data.data();
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), k, static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(d), data.size(), out,
       &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string check_hello(std::string_view bytes, const Side& side, PeerHello& out) {
  agentpb::Hello h;
  if (!parse(bytes, h) || h.nonce().size() != kNonce || h.node_id() == kNoNode) return "malformed hello";
  if (h.node_id() == side.self) return "peer claims this node's id " + std::to_string(h.node_id());
  if (h.protocol_version() < 1) return "unsupported protocol version " + std::to_string(h.protocol_version());
  if (!side.initiator && h.to_node() != kNoNode && h.to_node() != side.self)
    return "n" + std::to_string(h.node_id()) + " dialled n" + std::to_string(h.to_node()) +
           ", not this node (a relayed connection?)";
  if (!side.initiator && side.tls && h.to_node() == kNoNode) return "hello names no destination node";
  PeerHello p;
  p.node = h.node_id();
  p.to_node = h.to_node();
  p.nonce = h.nonce();
  p.listen_address = h.listen_address();
  p.address_book.insert(h.address_book().begin(), h.address_book().end());
  p.body_transfers = h.body_transfers();
  out = std::move(p);
  return "";
}

std::string make_proof(std::string_view secret, const Side& side, std::string_view own_nonce,
                       std::string_view peer_nonce) {
  agentpb::Proof p;
  p.set_tag(proof_tag(secret, side.initiator, own_nonce, peer_nonce, side.self));
  return p.SerializeAsString();
}

bool check_proof(std::string_view bytes, std::string_view secret, const Side& side, std::string_view own_nonce,
                 std::string_view peer_nonce, NodeId peer) {
  const std::string want = proof_tag(secret, !side.initiator, peer_nonce, own_nonce, peer);
  agentpb::Proof p;
  return parse(bytes, p) && p.tag().size() == want.size() &&
         CRYPTO_memcmp(p.tag().data(), want.data(), want.size()) == 0;
}

std::string session_key(std::string_view secret, std::string_view initiator_nonce,
                        std::string_view responder_nonce) {
  std::string data = "porcupine-session";
  data.append(initiator_nonce);
  data.append(responder_nonce);
  return hmac_sha256(secret, data);
}

std::string frame_tag(std::string_view session, bool from_initiator, std::uint64_t seq, std::string_view payload) {
  // HMAC(session, role ‖ seq ‖ payload), the payload read where it is: a
  // listing's frames are a few hundred kilobytes each.
  static EVP_MAC* const hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  std::unique_ptr<EVP_MAC_CTX, decltype(&EVP_MAC_CTX_free)> ctx(hmac ? EVP_MAC_CTX_new(hmac) : nullptr,
                                                                 &EVP_MAC_CTX_free);
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0), OSSL_PARAM_construct_end()};
  const std::string head = role(from_initiator) + be64(seq);
  unsigned char out[EVP_MAX_MD_SIZE];
  std::size_t len = 0;
  if (!ctx || session.empty() ||
      !EVP_MAC_init(ctx.get(), reinterpret_cast<const unsigned char*>(session.data()), session.size(), params) ||
      !EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(head.data()), head.size()) ||
      !EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(payload.data()), payload.size()) ||
      !EVP_MAC_final(ctx.get(), out, &len, sizeof out)) {
    // Not expected (the session key is never empty): the one-shot form.
    std::string data = head;
    data.append(payload);
    return hmac_sha256(session, data);
  }
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string check_tag(std::string_view frame, std::string_view session, bool from_initiator, std::uint64_t seq,
                      std::string_view& payload) {
  if (frame.size() < kTag) return "frame shorter than its tag";
  std::string_view body = frame.substr(kTag);
  const std::string want = frame_tag(session, from_initiator, seq, body);
  if (CRYPTO_memcmp(frame.data(), want.data(), kTag) != 0) return "frame with a bad tag";
  payload = body;
  return "";
}

}  // namespace porcupine::agent::handshake
