/* SPDX-License-Identifier: MIT */
// fuzz_check.h - what the fuzz targets assert beyond not crashing. A
// failed check prints what was expected and aborts, which libFuzzer
// reports as a crash, with the input that caused it saved.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <google/protobuf/stubs/logging.h>

namespace porcupine::fuzz {

inline void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz check failed: %s\n", what);
  std::abort();
}

// A reason for the log: one line, never empty.
inline bool one_line(std::string_view s) { return !s.empty() && s.find('\n') == std::string_view::npos; }

// Protobuf writes a line to stderr for each string field that is not
// UTF-8; hostile bytes are full of them, and the lines would only slow the
// run down and bury libFuzzer's own output.
inline void quiet_protobuf() { google::protobuf::SetLogHandler(nullptr); }

}  // namespace porcupine::fuzz
