// SPDX-License-Identifier: MIT
// policy_test.cc - the recipient rules of porcupine-milter, as tables.
#include "policy.h"

#include <gtest/gtest.h>

#include "client/porcupine_client.h"

namespace porcupine::milter {
namespace {

const std::vector<std::string> kDomains{"example.org", "example.net"};

TEST(MilterRecipient, ClusterDomainsAreRecognisedWhateverTheirCase) {
  struct Row {
    const char* rcpt;
    bool cluster, valid;
    const char* address;
  } rows[] = {
      {"<alice@example.org>", true, true, "alice@example.org"},
      {"alice@example.org", true, true, "alice@example.org"},
      {"<Alice@EXAMPLE.Org>", true, true, "Alice@example.org"},
      {"<bob@example.net.>", true, true, "bob@example.net"},
      {"<carol@example.com>", false, false, ""},
      {"<carol@sub.example.org>", false, false, ""},
      {"<postmaster>", false, false, ""},
      {"<@example.org>", true, false, "@example.org"},
      {"<a b@example.org>", true, false, "a b@example.org"},
      // RFC 5321 paths as Postfix and Dovecot's LMTP read them.
      {"<\"bob\"@example.org>", true, true, "bob@example.org"},
      {"\"bob\"@Example.ORG", true, true, "bob@example.org"},
      {"<\"b\\\"o\\\\b\"@example.org>", true, true, "b\"o\\b@example.org"},
      {"<\"bob smith\"@example.org>", true, false, "bob smith@example.org"},
      {"<\"bob@example.org\"@example.com>", false, false, ""},
      {"<\"bob@x\"@example.org>", true, true, "bob@x@example.org"},
      {"<\"bob@example.org>", true, false, "\"bob@example.org"},
      {"<@relay.example.com:bob@example.org>", true, true, "bob@example.org"},
      {"<@a.example.com,@b.example.com:bob@example.org>", true, true, "bob@example.org"},
      {"<@a.example.com,@b.example.com:\"bob\"@example.org>", true, true, "bob@example.org"},
      {"<@example.org:bob@example.com>", false, false, ""},
  };
  for (const auto& row : rows) {
    auto r = recipient(row.rcpt, kDomains);
    EXPECT_EQ(r.cluster, row.cluster) << row.rcpt;
    EXPECT_EQ(r.valid, row.valid) << row.rcpt;
    if (row.cluster) {
      EXPECT_EQ(r.address, row.address) << row.rcpt;
    }
  }
}

TEST(MilterRecipient, OverlongAddressIsInvalid) {
  auto r = recipient("<" + std::string(250, 'x') + "@example.org>", kDomains);
  EXPECT_TRUE(r.cluster);
  EXPECT_FALSE(r.valid);
}

TEST(MilterAnswer, EachAgentAnswerMapsToOneSmtpReply) {
  Recipient ours{true, true, "alice@example.org"};
  struct Row {
    Lookup lookup;
    Action action;
    const char* rcode;
    const char* xcode;
  } rows[] = {
      {{PORCUPINE_OK, true, 0, 0, ""}, Action::kAccept, "", ""},
      {{PORCUPINE_OK, true, 1000, 999, ""}, Action::kAccept, "", ""},
      {{PORCUPINE_OK, true, 1000, 1000, ""}, Action::kTempfail, "452", "4.2.2"},
      {{PORCUPINE_OK, true, 0, 1u << 30, ""}, Action::kAccept, "", ""},  // quota 0: unlimited
      {{PORCUPINE_OK, false, 0, 0, ""}, Action::kReject, "550", "5.2.1"},
      {{PORCUPINE_NO_SUCH_USER, true, 0, 0, ""}, Action::kReject, "550", "5.1.1"},
      {{PORCUPINE_OVER_QUOTA, true, 0, 0, ""}, Action::kTempfail, "452", "4.2.2"},
      {{PORCUPINE_TEMPFAIL, true, 0, 0, ""}, Action::kTempfail, "451", "4.3.0"},
      {{PORCUPINE_UNREACHABLE, true, 0, 0, ""}, Action::kTempfail, "451", "4.3.0"},
      {{PORCUPINE_INTERNAL, true, 0, 0, ""}, Action::kTempfail, "451", "4.3.0"},
      {{PORCUPINE_BAD_REQUEST, true, 0, 0, ""}, Action::kTempfail, "451", "4.3.0"},
      {{4242, true, 0, 0, ""}, Action::kTempfail, "451", "4.3.0"},
  };
  for (const auto& row : rows) {
    auto a = answer(ours, row.lookup);
    EXPECT_EQ(a.action, row.action) << "code " << row.lookup.code;
    EXPECT_EQ(a.rcode, row.rcode) << "code " << row.lookup.code;
    EXPECT_EQ(a.xcode, row.xcode) << "code " << row.lookup.code;
  }
}

TEST(MilterAnswer, OtherDomainsPassWhateverTheLookupSays) {
  Recipient other{false, false, ""};
  EXPECT_EQ(answer(other, {PORCUPINE_UNREACHABLE, true, 0, 0, ""}).action, Action::kPass);
  EXPECT_EQ(answer(other, {PORCUPINE_NO_SUCH_USER, true, 0, 0, ""}).action, Action::kPass);
}

TEST(MilterAnswer, MalformedClusterAddressIsRejectedWithoutAsking) {
  Recipient bad{true, false, "@example.org"};
  auto a = answer(bad, {PORCUPINE_OK, true, 0, 0, ""});
  EXPECT_EQ(a.action, Action::kReject);
  EXPECT_EQ(a.rcode, "550");
  EXPECT_EQ(a.xcode, "5.1.3");
}

}  // namespace
}  // namespace porcupine::milter
