// SPDX-License-Identifier: MIT
// c_api_test.cc - the C ABI of the client against a real one-node cluster
// (porcupine-local: a real agent and redis-server on 127.0.26.1).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "client/porcupine_client.h"

extern "C" int c_deliver(porcupine_client* c, const char* user, const char* message, uint32_t* uid);

namespace {

class CApi : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/porcupine-capi-XXXXXX";
    dir_ = mkdtemp(tmpl);
    local_ = std::string("python3 ") + PORCUPINE_SOURCE_DIR + "/scripts/porcupine-local --dir " + dir_ +
             " --build " + PORCUPINE_BUILD_DIR + " ";
    ASSERT_EQ(std::system((local_ + "start 1 --replicas 1 --subnet 26").c_str()), 0);
    ASSERT_EQ(std::system((local_ + "wait-converged --timeout 30").c_str()), 0);
    ASSERT_EQ(std::system((local_ + "ctl 1 user add ann@example.org --password s3cret >/dev/null").c_str()), 0);
    client_ = porcupine_open((dir_ + "/n1/agent.sock").c_str(), 10000);
    ASSERT_NE(client_, nullptr);
  }
  void TearDown() override {
    porcupine_close(client_);
    std::system((local_ + "stop").c_str());
    std::error_code ec;  // the cluster's files go with it
    std::filesystem::remove_all(dir_, ec);
  }
  std::string dir_, local_;
  porcupine_client* client_ = nullptr;
};

TEST_F(CApi, DeliverListFetchFlagExpungeAndAuthenticate) {
  uint32_t uid = 0;
  const char* msg = "Subject: from C\r\n\r\nhello\r\n";
  ASSERT_EQ(c_deliver(client_, "ann@example.org", msg, &uid), PORCUPINE_OK) << porcupine_error(client_);
  EXPECT_EQ(uid, 1u);

  porcupine_folder f;
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &f), PORCUPINE_OK);
  ASSERT_EQ(f.count, 1u);
  EXPECT_NE(f.uidvalidity, 0u);
  EXPECT_EQ(f.next_uid, 2u);
  EXPECT_EQ(f.messages[0].uid, 1u);
  EXPECT_EQ(f.messages[0].size, std::strlen(msg));
  // The listing covers the one node, which holds the message; a message
  // held only by a node it does not cover is out of reach, not gone.
  ASSERT_EQ(f.nreachable, 1u);
  EXPECT_EQ(porcupine_folder_covers(&f, &f.messages[0].ref), 1);
  porcupine_msgref elsewhere = f.messages[0].ref;
  elsewhere.nreplicas = 1;
  elsewhere.replicas[0] = f.reachable[0] + 1;
  EXPECT_EQ(porcupine_folder_covers(&f, &elsewhere), 0);

  char* body = nullptr;
  size_t len = 0;
  ASSERT_EQ(porcupine_fetch(client_, "ann@example.org", "INBOX", &f.messages[0].ref, &body, &len), PORCUPINE_OK);
  EXPECT_EQ(std::string(body, len), msg);
  porcupine_body_free(body);

  // The digest alone is the listing's, until something changes.
  uint64_t digest = 0;
  ASSERT_EQ(porcupine_folder_digest(client_, "ann@example.org", "INBOX", &digest), PORCUPINE_OK);
  EXPECT_EQ(digest, f.digest);
  EXPECT_NE(digest, 0u);

  ASSERT_EQ(porcupine_set_flags(client_, "ann@example.org", "INBOX", &f.messages[0].ref, 1 | 4), PORCUPINE_OK);
  uint64_t after = 0;
  ASSERT_EQ(porcupine_folder_digest(client_, "ann@example.org", "INBOX", &after), PORCUPINE_OK);
  EXPECT_NE(after, digest);
  porcupine_folder g;
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &g), PORCUPINE_OK);
  ASSERT_EQ(g.count, 1u);
  EXPECT_EQ(g.messages[0].flags, 5u);
  EXPECT_EQ(g.messages[0].nkeywords, 0u);
  porcupine_folder_free(&g);
  // Keywords travel with the flags, sorted, duplicates gone; bad ones refused.
  const char* kws[] = {"NonJunk", "$Label1", "NonJunk"};
  ASSERT_EQ(porcupine_set_flags_keywords(client_, "ann@example.org", "INBOX", &f.messages[0].ref, 1, kws, 3),
            PORCUPINE_OK)
      << porcupine_error(client_);
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &g), PORCUPINE_OK);
  ASSERT_EQ(g.count, 1u);
  EXPECT_EQ(g.messages[0].flags, 1u);
  ASSERT_EQ(g.messages[0].nkeywords, 2u);
  EXPECT_STREQ(g.messages[0].keywords[0], "$Label1");
  EXPECT_STREQ(g.messages[0].keywords[1], "NonJunk");
  porcupine_folder_free(&g);
  const char* bad[] = {"two words"};
  EXPECT_EQ(porcupine_set_flags_keywords(client_, "ann@example.org", "INBOX", &f.messages[0].ref, 1, bad, 1),
            PORCUPINE_BAD_REQUEST);
  EXPECT_NE(std::string(porcupine_error(client_)).find("not an IMAP keyword"), std::string::npos);
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &g), PORCUPINE_OK);
  EXPECT_EQ(g.messages[0].nkeywords, 2u);  // the refused change changed nothing
  ASSERT_EQ(porcupine_expunge(client_, "ann@example.org", "INBOX", &g.messages[0].ref), PORCUPINE_OK);
  porcupine_folder_free(&g);
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &g), PORCUPINE_OK);
  EXPECT_EQ(g.count, 0u);
  EXPECT_EQ(porcupine_fetch(client_, "ann@example.org", "INBOX", &f.messages[0].ref, &body, &len),
            PORCUPINE_NOT_FOUND);
  porcupine_folder_free(&f);
  porcupine_folder_free(&g);

  EXPECT_EQ(porcupine_user_auth(client_, "ann@example.org", "s3cret"), PORCUPINE_OK);
  EXPECT_EQ(porcupine_user_auth(client_, "ann@example.org", "nope"), PORCUPINE_AUTH_FAILED);
  EXPECT_NE(std::string(porcupine_error(client_)).find("AUTH_FAILED"), std::string::npos);
  porcupine_user u;
  EXPECT_EQ(porcupine_user_lookup(client_, "Ann@Example.ORG", &u), PORCUPINE_OK);
  EXPECT_STREQ(u.user, "ann@example.org");
  EXPECT_EQ(porcupine_user_lookup(client_, "nobody@example.org", &u), PORCUPINE_NO_SUCH_USER);
  EXPECT_EQ(c_deliver(client_, "nobody@example.org", msg, &uid), PORCUPINE_NO_SUCH_USER);
}

// Many fetches and many flag states, each in one pipelined batch: each
// gets its own answer, a bad one fails alone, the rest are done.
TEST_F(CApi, FetchManyAndSetFlagsManyAnswerEachItem) {
  const char* msg = "Subject: batch\r\n\r\nhello\r\n";
  const size_t n = 100;  // more than the client's window of 64
  uint32_t uid = 0;
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ(c_deliver(client_, "ann@example.org", msg, &uid), PORCUPINE_OK) << porcupine_error(client_);
  porcupine_folder f;
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &f), PORCUPINE_OK);
  ASSERT_EQ(f.count, n);
  // Every body in one pipelined batch; a reference no live node holds
  // fails alone.
  std::vector<porcupine_fetched> items(n + 1);
  for (size_t i = 0; i < n; ++i) items[i].ref = f.messages[i].ref;
  items[n].ref = f.messages[0].ref;
  items[n].ref.replicas[0] = 200;
  items[n].ref.nreplicas = 1;
  ASSERT_EQ(porcupine_fetch_many(client_, "ann@example.org", "INBOX", items.data(), n + 1), PORCUPINE_OK)
      << porcupine_error(client_);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(items[i].result, PORCUPINE_OK) << i;
    EXPECT_EQ(std::string(items[i].body, items[i].len), msg);
    porcupine_body_free(items[i].body);
  }
  EXPECT_EQ(items[n].result, PORCUPINE_TEMPFAIL);
  EXPECT_EQ(items[n].body, nullptr);

  std::vector<porcupine_flag_change> changes(n);
  const char* kws[] = {"$Label2"};
  const char* bad[] = {"two words"};
  for (size_t i = 0; i < n; ++i) {
    changes[i].ref = f.messages[i].ref;
    changes[i].flags = static_cast<uint32_t>(i % 2 ? 1 : 4);
    changes[i].keywords = i == 7 ? bad : kws;
    changes[i].nkeywords = 1;
    changes[i].result = -1;
  }
  ASSERT_EQ(porcupine_set_flags_many(client_, "ann@example.org", "INBOX", changes.data(), n), PORCUPINE_OK)
      << porcupine_error(client_);
  for (size_t i = 0; i < n; ++i)
    EXPECT_EQ(changes[i].result, i == 7 ? PORCUPINE_BAD_REQUEST : PORCUPINE_OK) << i;
  EXPECT_NE(std::string(porcupine_error(client_)).find("BAD_REQUEST"), std::string::npos);
  porcupine_folder g;
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &g), PORCUPINE_OK);
  ASSERT_EQ(g.count, n);
  for (size_t i = 0; i < n; ++i) {
    if (i == 7) {
      EXPECT_EQ(g.messages[i].flags, 0u);
      EXPECT_EQ(g.messages[i].nkeywords, 0u);
      continue;
    }
    EXPECT_EQ(g.messages[i].flags, i % 2 ? 1u : 4u) << i;
    ASSERT_EQ(g.messages[i].nkeywords, 1u) << i;
    EXPECT_STREQ(g.messages[i].keywords[0], "$Label2");
  }
  porcupine_folder_free(&f);
  porcupine_folder_free(&g);
  EXPECT_EQ(porcupine_set_flags_many(client_, "ann@example.org", "INBOX", nullptr, 0), PORCUPINE_OK);
}

TEST_F(CApi, NoAgentIsUnreachableNotACrash) {
  porcupine_client* c = porcupine_open((dir_ + "/no-such.sock").c_str(), 500);
  porcupine_user u;
  EXPECT_EQ(porcupine_user_lookup(c, "ann@example.org", &u), PORCUPINE_UNREACHABLE);
  EXPECT_NE(std::string(porcupine_error(c)).find("cannot connect"), std::string::npos);
  EXPECT_EQ(porcupine_user_lookup(c, nullptr, &u), PORCUPINE_BAD_REQUEST);
  porcupine_close(c);
}

}  // namespace

namespace {
struct Source {
  const char* data;
  size_t left;
};
ssize_t read_source(void* context, char* buf, size_t len) {
  auto* s = static_cast<Source*>(context);
  size_t n = len < s->left ? len : s->left;
  std::memcpy(buf, s->data, n);
  s->data += n;
  s->left -= n;
  return static_cast<ssize_t>(n);
}
}  // namespace

// An APPEND's date and flags travel with the delivery; flag changes carry
// only what they change, so two of them on different flags both stay; a
// move answers the message's UID in its new folder.
TEST_F(CApi, DeliverWithDateAndFlagsChangeSomeFlagsAndMoveWithItsNewUid) {
  const char* msg = "Subject: appended\r\n\r\nold mail\r\n";
  const char* kws[] = {"Work", "$Label2"};
  porcupine_deliver_options o{1'500'000'000'000, 1 /* \Seen */, kws, 2, nullptr, 0};
  Source src{msg, std::strlen(msg)};
  porcupine_delivered d{};
  ASSERT_EQ(porcupine_deliver_with(client_, "ann@example.org", "INBOX", &o, read_source, &src, &d), PORCUPINE_OK)
      << porcupine_error(client_);
  porcupine_folder f;
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &f), PORCUPINE_OK);
  ASSERT_EQ(f.count, 1u);
  EXPECT_EQ(f.messages[0].internal_date_ms, 1'500'000'000'000);
  EXPECT_EQ(f.messages[0].flags, 1u);
  ASSERT_EQ(f.messages[0].nkeywords, 2u);
  EXPECT_STREQ(f.messages[0].keywords[0], "$Label2");
  EXPECT_STREQ(f.messages[0].keywords[1], "Work");

  // One change adds \Answered, another (later, from a stale view) clears
  // \Seen and the keyword Work: both stay.
  const char* work[] = {"Work"};
  porcupine_flag_delta a{f.messages[0].ref, 2 /* \Answered */, 0, nullptr, 0, nullptr, 0, -1};
  porcupine_flag_delta b{f.messages[0].ref, 0, 1 /* \Seen */, nullptr, 0, work, 1, -1};
  ASSERT_EQ(porcupine_change_flags_many(client_, "ann@example.org", "INBOX", &a, 1), PORCUPINE_OK);
  ASSERT_EQ(porcupine_change_flags_many(client_, "ann@example.org", "INBOX", &b, 1), PORCUPINE_OK);
  EXPECT_EQ(a.result, PORCUPINE_OK);
  EXPECT_EQ(b.result, PORCUPINE_OK);
  porcupine_folder g;
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &g), PORCUPINE_OK);
  ASSERT_EQ(g.count, 1u);
  EXPECT_EQ(g.messages[0].flags, 2u);
  ASSERT_EQ(g.messages[0].nkeywords, 1u);
  EXPECT_STREQ(g.messages[0].keywords[0], "$Label2");
  porcupine_folder_free(&g);
  const char* bad[] = {"two words"};
  porcupine_flag_delta x{f.messages[0].ref, 0, 0, bad, 1, nullptr, 0, -1};
  EXPECT_EQ(porcupine_change_flags_many(client_, "ann@example.org", "INBOX", &x, 1), PORCUPINE_OK);
  EXPECT_EQ(x.result, PORCUPINE_BAD_REQUEST);

  // A bad date or keyword refuses the delivery before anything is stored.
  porcupine_deliver_options neg{-5, 0, nullptr, 0, nullptr, 0};
  Source src2{msg, std::strlen(msg)};
  EXPECT_EQ(porcupine_deliver_with(client_, "ann@example.org", "INBOX", &neg, read_source, &src2, nullptr),
            PORCUPINE_BAD_REQUEST);

  ASSERT_EQ(porcupine_folder_create(client_, "ann@example.org", "Archive"), PORCUPINE_OK);
  porcupine_delivered moved{};
  ASSERT_EQ(porcupine_move_uid(client_, "ann@example.org", "INBOX", &f.messages[0].ref, "Archive", &moved),
            PORCUPINE_OK)
      << porcupine_error(client_);
  EXPECT_EQ(moved.uid, 1u);
  porcupine_folder h;
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "Archive", &h), PORCUPINE_OK);
  ASSERT_EQ(h.count, 1u);  // there at once
  EXPECT_EQ(h.uidvalidity, moved.uidvalidity);
  EXPECT_EQ(h.messages[0].uid, moved.uid);
  EXPECT_EQ(h.messages[0].internal_date_ms, 1'500'000'000'000);  // the move keeps the date
  porcupine_folder_free(&h);
  porcupine_folder_free(&f);
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &f), PORCUPINE_OK);
  EXPECT_EQ(f.count, 0u);
  porcupine_folder_free(&f);
}

// A delivery's meta is kept with the message and given back only for the
// UIDs the reader asks for; one over PORCUPINE_MAX_META is not kept (the
// message is).
TEST_F(CApi, MetaIsKeptWithTheMessageAndListedOnlyFromTheUidAskedFor) {
  const char* msg = "Subject: meta\r\n\r\nbody\r\n";
  const std::string small = "\x01structure";
  const std::string big(PORCUPINE_MAX_META + 1, 'x');
  for (const std::string* meta : {&small, &small, &big}) {
    porcupine_deliver_options o{};
    o.meta = meta->data();
    o.meta_len = meta->size();
    Source src{msg, std::strlen(msg)};
    ASSERT_EQ(porcupine_deliver_with(client_, "ann@example.org", "INBOX", &o, read_source, &src, nullptr),
              PORCUPINE_OK)
        << porcupine_error(client_);
  }
  porcupine_folder f;
  ASSERT_EQ(porcupine_folder_list_meta(client_, "ann@example.org", "INBOX", 2, &f), PORCUPINE_OK);
  ASSERT_EQ(f.count, 3u);
  EXPECT_EQ(f.messages[0].meta, nullptr);  // UID 1: below the UID asked for
  ASSERT_NE(f.messages[1].meta, nullptr);
  EXPECT_EQ(std::string(f.messages[1].meta, f.messages[1].meta_len), small);
  EXPECT_EQ(f.messages[2].meta, nullptr);  // over the limit: not kept
  porcupine_folder_free(&f);
  ASSERT_EQ(porcupine_folder_list_meta(client_, "ann@example.org", "INBOX", 1, &f), PORCUPINE_OK);
  ASSERT_EQ(f.count, 3u);
  ASSERT_NE(f.messages[0].meta, nullptr);
  EXPECT_EQ(std::string(f.messages[0].meta, f.messages[0].meta_len), small);
  porcupine_folder_free(&f);
  ASSERT_EQ(porcupine_folder_list(client_, "ann@example.org", "INBOX", &f), PORCUPINE_OK);
  ASSERT_EQ(f.count, 3u);
  for (size_t i = 0; i < f.count; ++i) EXPECT_EQ(f.messages[i].meta, nullptr);
  porcupine_folder_free(&f);
}
