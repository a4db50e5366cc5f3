/* SPDX-License-Identifier: MIT */
// password.h - a password checked against a stored hash.
#pragma once

#include <string>

namespace porcupine {

// Whether `password` matches `stored`, a hash in one of the schemes
// Dovecot writes: {SHA512-CRYPT}, {SHA256-CRYPT}, {BLF-CRYPT},
// {MD5-CRYPT}, {CRYPT} or no prefix (crypt(3) formats), or {PLAIN}. Any
// other scheme matches nothing. Compared in constant time.
bool password_matches(const std::string& stored, const std::string& password);

}  // namespace porcupine
