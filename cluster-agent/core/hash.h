/* SPDX-License-Identifier: MIT */
// hash.h - the user map's hash: canonical address -> 64-bit hash -> bucket.
//
// The hash is XXH64 (libxxhash, seed 0) of the canonical address. It is
// part of the on-disk and on-wire contract: every node of every version
// must compute the same bucket for the same user, so it never changes.
#pragma once

#include <cstdint>
#include <string>
#include <set>
#include <string_view>

#include "types.h"

namespace porcupine {

// Canonical form of a mail address: surrounding whitespace and one pair of
// angle brackets removed, ASCII lower-cased.
std::string canonical_user(std::string_view address);
// At most the first 64 bytes of `s`, each byte outside printable ASCII as
// '?': a client's string made safe for a log line or a reply's detail.
std::string printable(std::string_view s);

// XXH64(canonical, seed 0).
std::uint64_t user_hash(std::string_view canonical);

// bucket = user_hash(canonical_user(address)) mod buckets.
Bucket bucket_of(std::string_view address, std::uint32_t buckets);

// XXH64 of a set of node ids (32-bit little-endian words, ascending): the
// same set gives the same digest on every node (NewGroup.known_digest).
std::uint64_t nodes_digest(const std::set<NodeId>& ids);

}  // namespace porcupine
