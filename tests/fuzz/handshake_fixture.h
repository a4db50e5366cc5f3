/* SPDX-License-Identifier: MIT */
// handshake_fixture.h - the secret, nonce and node id of the side that
// fuzz_handshake plays, shared with make_seeds so that its seeds carry a
// valid Proof and valid tags.
#pragma once

#include <string>

#include "agent/handshake.h"

namespace porcupine::fuzz {

inline const std::string kHandshakeSecret = "fuzzing secret of the cluster, 32+ bytes";
inline const std::string kHandshakeNonce(agent::handshake::kNonce, '\x5a');
constexpr NodeId kHandshakeSelf = 1;

// The first byte of a fuzz_handshake input.
enum HandshakeMode : unsigned char {
  kInitiator = 1,   // this side dialled
  kTls = 2,         // inside TLS
  kSignProof = 4,   // the target writes the peer's Proof
  kSignFrames = 8,  // the target tags the peer's later frames
};

}  // namespace porcupine::fuzz
