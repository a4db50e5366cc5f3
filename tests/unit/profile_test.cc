// SPDX-License-Identifier: MIT
// profile_test.cc - merging user profiles: subscriptions are about names,
// the newest version of each name wins, whatever order replicas arrive in.
#include <gtest/gtest.h>

#include "core/records.h"

#include <string>
#include <utility>
#include <vector>

namespace porcupine {
namespace {

Profile with(std::map<std::string, Subscription> subs) {
  Profile p;
  p.user = "u@example.org";
  p.subscriptions = std::move(subs);
  return p;
}

TEST(Profile, SubscriptionsMergeNameByNameNewestVersionWins) {
  Profile a = with({{"Work", {true, {100, 1}}}, {"Lists", {true, {100, 2}}}});
  Profile b = with({{"Work", {false, {200, 3}}}, {"Old", {true, {50, 3}}}, {"Lists", {false, {90, 3}}}});

  Profile ab = a;
  EXPECT_TRUE(merge_profile(ab, b));
  Profile ba = b;
  EXPECT_TRUE(merge_profile(ba, a));
  EXPECT_EQ(ab, ba);
  EXPECT_FALSE(ab.subscriptions.at("Work").on);  // newer unsubscribe
  EXPECT_TRUE(ab.subscriptions.at("Lists").on);  // newer subscribe
  EXPECT_TRUE(ab.subscriptions.at("Old").on);    // only one side knew it
  EXPECT_EQ(ab.subscriptions.size(), 3u);
}

TEST(Profile, MergingWhatIsKnownAlreadyChangesNothing) {
  Profile a = with({{"Work", {true, {100, 1}}}});
  Profile same = a;
  EXPECT_FALSE(merge_profile(a, same));
  Profile older = with({{"Work", {false, {99, 1}}}});
  EXPECT_FALSE(merge_profile(a, older));
  EXPECT_TRUE(a.subscriptions.at("Work").on);
}

// What the anti-entropy compares: two holders that merged the same
// updates, in any order, agree; any change a merge would carry shows.
TEST(Profile, DigestsAgreeAfterTheSameMergesAndMoveWithEveryChange) {
  Profile a = with({{"Work", {true, {100, 1}}}});
  FolderMeta& inbox = a.folders["INBOX"];
  inbox.uidvalidity = 7;
  inbox.version = {10, 1};
  inbox.uid_reserved = 40;
  Profile b = with({{"Lists", {true, {120, 2}}}});
  b.password_hash = "{PLAIN}x";
  b.version = {130, 2};
  Profile ab = a, ba = b;
  merge_profile(ab, b);
  merge_profile(ba, a);
  ab.holders = {1, 2};
  ba.holders = {2, 3};  // who holds it is not the profile's state
  EXPECT_EQ(profile_digest(ab), profile_digest(ba));
  Profile c = ab;
  c.folders["INBOX"].uid_reserved = 41;
  EXPECT_NE(profile_digest(c), profile_digest(ab));
  c = ab;
  c.subscriptions["Work"].on = false;
  EXPECT_NE(profile_digest(c), profile_digest(ab));
  c = ab;
  c.password_hash = "{PLAIN}y";
  EXPECT_NE(profile_digest(c), profile_digest(ab));
}

TEST(Profile, SubscriptionsDoNotTouchFolders) {
  Profile a = with({{"Ghost", {true, {100, 1}}}});
  Profile b;
  b.user = a.user;
  b.folders["Ghost"].version = {50, 2};
  b.folders["Ghost"].deleted = true;
  EXPECT_TRUE(merge_profile(a, b));
  EXPECT_TRUE(a.folders.at("Ghost").deleted);
  EXPECT_TRUE(a.subscriptions.at("Ghost").on);
}

TEST(FolderNames, ControlCharactersBadUtf8AndOversizeAreRefused) {
  const std::vector<std::string> good = {"INBOX", "Archive/2024", "a b&-c", "Gr\xc3\xbc\xc3\x9f" "e",
                                         "\xf0\x9f\x93\xa7 mail", std::string(1000, 'x')};
  for (const std::string& ok : good)
    EXPECT_EQ(folder_name_problem(ok), "") << ok;
  const std::pair<std::string, std::string> bad[] = {
      {"", "empty"},
      {std::string(1001, 'x'), "longer"},
      {"forged\nline", "control"},
      {"tab\there", "control"},
      {std::string("nul\0x", 5), "control"},
      {"del\x7f", "control"},
      {"c1\xc2\x85", "control"},            // NEL
      {"\xc3", "UTF-8"},                     // cut short
      {"\xc0\xaf", "UTF-8"},                 // overlong '/'
      {"\xed\xa0\x80", "UTF-8"},             // a surrogate
      {"\xf4\x90\x80\x80", "UTF-8"},         // above U+10FFFF
      {"\xff", "UTF-8"},
  };
  for (const auto& [name, why] : bad)
    EXPECT_NE(folder_name_problem(name).find(why), std::string::npos) << name;
}

}  // namespace
}  // namespace porcupine
