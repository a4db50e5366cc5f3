// SPDX-License-Identifier: MIT
// fuzz_milter_address.cc - libFuzzer target: an RCPT TO address as smtpd
// hands it to porcupine-milter, through milter::recipient() and answer().
//
// Beyond not crashing: only a cluster domain's address is the cluster's;
// a valid one is local@domain with a local part, at most 255 bytes, no
// control character or space (the user database's names); and the answer
// never passes a cluster address, never rejects what is not one, and gives
// 5xx for a reject and 4xx for a temporary failure.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "client/porcupine_client.h"
#include "fuzz_check.h"
#include "policy.h"

using namespace porcupine::milter;
using porcupine::fuzz::check;

namespace {

const std::vector<std::string> kDomains{"example.org", "example.net"};

bool ends_with_a_domain(const std::string& address) {
  return std::any_of(kDomains.begin(), kDomains.end(), [&](const std::string& d) {
    return address.size() > d.size() && address.ends_with(d) && address[address.size() - d.size() - 1] == '@';
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view rcpt(reinterpret_cast<const char*>(data), size);
  const Recipient r = recipient(rcpt, kDomains);
  check(!r.valid || r.cluster, "only a cluster address is valid");
  check(r.cluster || r.address.empty(), "an address outside the cluster is not named");
  if (r.cluster) check(ends_with_a_domain(r.address), "a cluster address ends in a cluster domain");
  if (r.valid) {
    check(r.address.size() <= 255 && r.address.rfind('@') > 0, "a valid address has a local part and fits");
    check(std::none_of(r.address.begin(), r.address.end(), [](unsigned char c) { return c <= ' ' || c == 0x7f; }),
          "a valid address has no control character or space");
  }
  for (int code : {int{PORCUPINE_OK}, int{PORCUPINE_NO_SUCH_USER}, int{PORCUPINE_OVER_QUOTA}, int{PORCUPINE_TEMPFAIL}, 99}) {
    for (bool enabled : {true, false}) {
      const Reply a = answer(r, Lookup{code, enabled, 100, 100, ""});
      check((a.action == Action::kPass) == !r.cluster, "exactly the cluster's addresses are answered");
      if (a.action == Action::kReject) check(a.rcode.starts_with('5') && a.xcode.starts_with('5'), "5xx rejects");
      if (a.action == Action::kTempfail) check(a.rcode.starts_with('4') && a.xcode.starts_with('4'), "4xx tempfails");
      if (!r.valid && r.cluster) check(a.action == Action::kReject, "a malformed cluster address is rejected");
    }
  }
  return 0;
}
