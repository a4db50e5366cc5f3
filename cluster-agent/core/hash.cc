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

}  // namespace porcupine
