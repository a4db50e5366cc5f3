/* SPDX-License-Identifier: MIT */
// frame.h - the framing every porcupine socket uses (peers, the local
// API): a 4-byte big-endian length, then that many bytes.
#pragma once

#include <time.h>

#include <cstdint>
#include <string>

namespace porcupine::frame {

// This host's CLOCK_MONOTONIC in ms, the same in every process of the
// host: the clock of the local API's Request.client_deadline_ms.
inline std::int64_t monotonic_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

inline std::string be32(std::uint32_t v) {
  std::string s(4, '\0');
  for (int i = 3; i >= 0; --i, v >>= 8) s[static_cast<std::size_t>(i)] = static_cast<char>(v & 0xff);
  return s;
}

inline std::uint32_t length(const unsigned char h[4]) {
  return (std::uint32_t(h[0]) << 24) | (std::uint32_t(h[1]) << 16) | (std::uint32_t(h[2]) << 8) | std::uint32_t(h[3]);
}

// The frame that carries `payload`.
inline std::string wrap(const std::string& payload) {
  return be32(static_cast<std::uint32_t>(payload.size())) + payload;
}

}  // namespace porcupine::frame
