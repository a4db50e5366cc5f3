// SPDX-License-Identifier: MIT
// policy.cc - the recipient rules of porcupine-milter (see policy.h).
#include "policy.h"

#include <algorithm>

#include "client/porcupine_client.h"

namespace porcupine::milter {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : char(c); });
  return out;
}

// An RFC 5321 path, read as Postfix and Dovecot's LMTP read it: the
// brackets, a source route (`@relay,@relay2:`) dropped, a quoted local
// part unquoted (`"bob"` is bob, `"a\"b"` is a"b). The user is the
// unquoted local part @ the lower-cased domain (a trailing dot dropped).
Recipient recipient(std::string_view rcpt, const std::vector<std::string>& domains) {
  Recipient r;
  if (rcpt.size() >= 2 && rcpt.front() == '<' && rcpt.back() == '>') rcpt = rcpt.substr(1, rcpt.size() - 2);
  if (!rcpt.empty() && rcpt.front() == '@') {
    auto colon = rcpt.find(':');
    if (colon != std::string_view::npos) rcpt = rcpt.substr(colon + 1);
  }
  std::string local;
  bool well_formed = true;
  std::size_t at;
  if (!rcpt.empty() && rcpt.front() == '"') {
    std::size_t i = 1;
    bool closed = false;
    for (; i < rcpt.size(); ++i) {
      if (rcpt[i] == '\\' && i + 1 < rcpt.size()) {
        local += rcpt[++i];
      } else if (rcpt[i] == '"') {
        closed = true;
        break;
      } else {
        local += rcpt[i];
      }
    }
    at = closed && i + 1 < rcpt.size() && rcpt[i + 1] == '@' ? i + 1 : rcpt.rfind('@');
    well_formed = closed && at == i + 1;
    if (!well_formed && at != std::string_view::npos) local = std::string(rcpt.substr(0, at));
  } else {
    at = rcpt.rfind('@');
    if (at != std::string_view::npos) local = std::string(rcpt.substr(0, at));
  }
  if (at == std::string_view::npos) return r;  // a bare local name: not for a cluster domain
  std::string domain = lower(rcpt.substr(at + 1));
  if (!domain.empty() && domain.back() == '.') domain.pop_back();
  if (std::find(domains.begin(), domains.end(), domain) == domains.end()) return r;
  r.cluster = true;
  r.address = local + "@" + domain;
  // The user database keeps names of at most 255 bytes; control characters
  // and whitespace never belong to one.
  r.valid = well_formed && !local.empty() && r.address.size() <= 255 &&
            std::none_of(r.address.begin(), r.address.end(),
                         [](unsigned char c) { return c <= ' ' || c == 0x7f; });
  return r;
}

Reply answer(const Recipient& r, const Lookup& l) {
  if (!r.cluster) return {Action::kPass, "", "", ""};
  if (!r.valid) return {Action::kReject, "550", "5.1.3", "Bad recipient address syntax"};
  switch (l.code) {
    case PORCUPINE_OK:
      if (!l.enabled) return {Action::kReject, "550", "5.2.1", "Mailbox disabled"};
      if (l.quota_bytes > 0 && l.used_bytes >= l.quota_bytes)
        return {Action::kTempfail, "452", "4.2.2", "Mailbox full, try again later"};
      return {Action::kAccept, "", "", ""};
    case PORCUPINE_NO_SUCH_USER:
      return {Action::kReject, "550", "5.1.1", "No such user here"};
    case PORCUPINE_OVER_QUOTA:
      return {Action::kTempfail, "452", "4.2.2", "Mailbox full, try again later"};
    default:
      // TEMPFAIL, UNREACHABLE, INTERNAL, and anything this milter does not
      // know: the cluster could not say, so the client keeps the message.
      return {Action::kTempfail, "451", "4.3.0", "Mail cluster unavailable, try again later"};
  }
}

}  // namespace porcupine::milter
