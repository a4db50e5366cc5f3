// SPDX-License-Identifier: MIT
// hash.cc - see hash.h.
#include "hash.h"

#include <xxhash.h>

namespace porcupine {

std::string canonical_user(std::string_view a) {
  while (!a.empty() && (a.front() == ' ' || a.front() == '\t')) a.remove_prefix(1);
  while (!a.empty() && (a.back() == ' ' || a.back() == '\t' || a.back() == '\r' || a.back() == '\n'))
    a.remove_suffix(1);
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  std::string out(a);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::uint64_t user_hash(std::string_view canonical) {
  return XXH64(canonical.data(), canonical.size(), 0);
}

Bucket bucket_of(std::string_view address, std::uint32_t buckets) {
  return static_cast<Bucket>(user_hash(canonical_user(address)) % buckets);
}

std::uint64_t nodes_digest(const std::set<NodeId>& ids) {
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  for (NodeId n : ids) {
    const unsigned char w[4] = {static_cast<unsigned char>(n), static_cast<unsigned char>(n >> 8),
                                static_cast<unsigned char>(n >> 16), static_cast<unsigned char>(n >> 24)};
    XXH64_update(st, w, sizeof w);
  }
  const std::uint64_t d = XXH64_digest(st);
  XXH64_freeState(st);
  return d;
}

std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  return out;
}

}  // namespace porcupine
