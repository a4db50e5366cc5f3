// SPDX-License-Identifier: MIT
// fuzz_config.cc - libFuzzer target: porcupine.conf text through the
// reader (config::parse_text). Bytes after a first NUL are -o overrides,
// one per line (an argument with a newline in it is the operator's own
// doing, and its error message would have it too).
//
// Beyond not crashing: every problem has a one-line message and a line
// within the file; a file that loads lists back (print_effective) as text
// that loads to the same parameters, as docs/configuration.md promises.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "fuzz_check.h"

using namespace porcupine;
using fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string_view text = in.substr(0, in.find('\0'));
  std::vector<std::string> overrides;
  if (text.size() < in.size()) {
    std::string_view rest = in.substr(text.size() + 1);
    while (true) {
      auto end = rest.find_first_of(std::string_view("\0\n", 2));
      overrides.emplace_back(rest.substr(0, end));
      if (end == std::string_view::npos) break;
      rest.remove_prefix(end + 1);
    }
  }
  const std::size_t lines = static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n')) + 1;

  std::vector<config::Error> errors;
  auto params = config::parse_text(text, "fuzz.conf", errors, overrides);
  bool failed = false;
  for (const auto& e : errors) {
    check(fuzz::one_line(e.message), "a problem has a one-line message");
    check(e.line >= 0 && static_cast<std::size_t>(e.line) <= lines, "a problem is on a line of the file");
    failed |= e.severity == config::Severity::kError;
  }
  check(params.has_value() != failed, "a file loads exactly when it has no error");
  if (!params) return 0;

  (void)config::to_core(*params);
  const std::string listed = config::print_effective(*params);
  std::vector<config::Error> again;
  auto reread = config::parse_text(listed, "listing", again);
  check(reread.has_value(), "the effective listing loads");
  check(*reread == *params, "the effective listing loads to the same parameters");
  return 0;
}
