/* SPDX-License-Identifier: MIT */
// policy.h - what porcupine-milter answers for one recipient: pure
// functions, no I/O, no state, callable from any thread.
//
// recipient() decides whether an RCPT TO address belongs to the cluster
// (its domain is one of cluster_domains) and gives the name to look up;
// answer() turns the agent's reply to that lookup into an SMTP reply.
// The rules, which never accept what the cluster cannot place and never
// bounce for a transient fault:
//   not a cluster domain                 pass (the milter does not touch it)
//   malformed cluster address            550 5.1.3
//   user exists, enabled, within quota   accept
//   no such user                         550 5.1.1
//   user disabled                        550 5.2.1
//   over quota (agent says so, or
//     used_bytes >= quota_bytes > 0)     452 4.2.2
//   anything else (timeout, no agent,
//     internal error, odd answer)        451 4.3.0
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace porcupine::milter {

enum class Action {
  kPass,      // not ours: continue, add nothing
  kAccept,    // a cluster user who can take the message
  kReject,    // 5xx: permanent
  kTempfail,  // 4xx: the client retries
};

struct Reply {
  Action action = Action::kPass;
  std::string rcode;  // "550", "452", "451"; empty for pass/accept
  std::string xcode;  // "5.1.1", ...
  std::string text;
};

// A recipient as smtpd hands it (`<alice@Example.org>`, brackets optional).
struct Recipient {
  bool cluster = false;  // its domain is a cluster domain
  bool valid = false;    // well-formed enough to look up
  std::string address;   // local@domain, domain lower-cased: the user name
};

// `domains` must be lower case (see lower()).
Recipient recipient(std::string_view rcpt, const std::vector<std::string>& domains);

std::string lower(std::string_view s);

// What the lookup returned; `code` is a porcupine_code.
struct Lookup {
  int code = 0;
  bool enabled = true;
  std::uint64_t quota_bytes = 0;  // 0: unlimited
  std::uint64_t used_bytes = 0;
  std::string error;              // the client's reason when code != OK
};

Reply answer(const Recipient& r, const Lookup& l);

}  // namespace porcupine::milter
