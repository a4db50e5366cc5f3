// SPDX-License-Identifier: MIT
// password.cc - see password.h.
#include "password.h"

#include <crypt.h>
#include <openssl/crypto.h>

namespace porcupine {

bool password_matches(const std::string& stored, const std::string& password) {
  std::string scheme, hash = stored;
  if (!stored.empty() && stored[0] == '{') {
    auto close = stored.find('}');
    if (close == std::string::npos) return false;
    scheme = stored.substr(1, close - 1);
    hash = stored.substr(close + 1);
  }
  if (scheme == "PLAIN")
    return hash.size() == password.size() && CRYPTO_memcmp(hash.data(), password.data(), hash.size()) == 0;
  if (!scheme.empty() && scheme != "CRYPT" && scheme != "SHA512-CRYPT" && scheme != "SHA256-CRYPT" &&
      scheme != "BLF-CRYPT" && scheme != "MD5-CRYPT")
    return false;
  crypt_data data{};
  const char* out = crypt_r(password.c_str(), hash.c_str(), &data);
  if (!out || out[0] == '*') return false;
  std::string got(out);
  return got.size() == hash.size() && CRYPTO_memcmp(got.data(), hash.data(), got.size()) == 0;
}

}  // namespace porcupine
