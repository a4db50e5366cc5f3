/* SPDX-License-Identifier: MIT */
// handshake.h - the checks of the handshake between agents and of the tags
// of later frames (docs/wire.md), as pure functions of bytes: what a peer
// connection (peer_net.cc) decides about a Hello, a Proof and each tagged
// frame, apart from its sockets, so that the decisions can be tested and
// fuzzed without a network.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "core/types.h"

namespace porcupine::agent::handshake {

constexpr std::size_t kNonce = 32;  // bytes of a Hello's nonce
constexpr std::size_t kTag = 32;    // bytes of a Proof's tag and of a frame's tag
constexpr std::size_t kMaxFrame = 1 << 16;  // the largest frame before both Proofs check

// This side of a connection.
struct Side {
  NodeId self = kNoNode;
  bool initiator = false;  // this side dialled
  bool tls = false;        // the handshake runs inside TLS
};

// What the peer's Hello says.
struct PeerHello {
  NodeId node = kNoNode;
  NodeId to_node = kNoNode;
  std::string nonce;
  std::string listen_address;
  std::map<NodeId, std::string> address_book;
  bool body_transfers = false;
};

// Parses and checks the peer's Hello: "" and `out` filled when this side
// goes on to its Proof, otherwise the reason to close (one log line).
// Refused: bytes that are not a Hello, a nonce that is not kNonce bytes,
// node id 0 or this node's own, protocol version 0; and on the accepting
// side a Hello naming another node as the one dialled (a relayed dial),
// or over TLS naming none. `out` is untouched on refusal.
std::string check_hello(std::string_view bytes, const Side& side, PeerHello& out);

// The Proof this side sends (serialized): HMAC-SHA256(secret, role ‖ own
// nonce ‖ peer nonce ‖ own id), role "I" for the side that dialled.
std::string make_proof(std::string_view secret, const Side& side, std::string_view own_nonce,
                       std::string_view peer_nonce);

// Whether `bytes` is the Proof the peer `peer` (as its Hello claimed) owes
// this side; compared in constant time.
bool check_proof(std::string_view bytes, std::string_view secret, const Side& side, std::string_view own_nonce,
                 std::string_view peer_nonce, NodeId peer);

// The key of every later frame's tag.
std::string session_key(std::string_view secret, std::string_view initiator_nonce,
                        std::string_view responder_nonce);

// The tag of frame number `seq` (counting from 0 in each direction) sent
// by the initiator (`from_initiator`) or by the responder.
std::string frame_tag(std::string_view session, bool from_initiator, std::uint64_t seq, std::string_view payload);

// Checks the tag at the front of a received frame: "" and `payload` (what
// follows the tag) when it is right, otherwise the reason to close.
std::string check_tag(std::string_view frame, std::string_view session, bool from_initiator, std::uint64_t seq,
                      std::string_view& payload);

std::string hmac_sha256(std::string_view key, std::string_view data);

}  // namespace porcupine::agent::handshake
