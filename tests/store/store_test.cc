// SPDX-License-Identifier: MIT
// store_test.cc - RedisStore against a real redis-server.
//
// Each test starts its own /usr/bin/redis-server (AOF on, fsync always) on
// a unix socket in a fresh temp directory, and stops it by its PID. Crashes
// are real: SIGKILL of redis-server by PID, and a store dropped without a
// flush stands for a killed agent.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "store/redis_store.h"

namespace porcupine::store {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- a redis-server of our own

class RedisServer {
 public:
  explicit RedisServer(std::string dir) : dir_(std::move(dir)), socket_(dir_ + "/redis.sock") {}
  ~RedisServer() { stop(); }

  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }

  void start() {
    std::vector<std::string> args = {"/usr/bin/redis-server",
                                     "--port",
                                     "0",
                                     "--unixsocket",
                                     socket_,
                                     "--dir",
                                     dir_,
                                     "--appendonly",
                                     "yes",
                                     "--appendfsync",
                                     "always",
                                     "--save",
                                     "",
                                     "--daemonize",
                                     "no"};
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      int fd = ::open((dir_ + "/redis.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    // Ready once PING answers PONG (not -LOADING while the AOF replays).
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
      int status = 0;
      ASSERT_EQ(::waitpid(pid_, &status, WNOHANG), 0) << "redis-server exited; see " << dir_ << "/redis.log";
      if (redisContext* c = redisConnectUnix(socket_.c_str())) {
        bool up = false;
        if (!c->err) {
          auto* r = static_cast<redisReply*>(redisCommand(c, "PING"));
          up = r && r->type == REDIS_REPLY_STATUS && std::string(r->str) == "PONG";
          if (r) freeReplyObject(r);
        }
        redisFree(c);
        if (up) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    FAIL() << "redis-server did not come up on " << socket_;
  }

  void kill9() { halt(SIGKILL); }
  void stop() { halt(SIGTERM); }

 private:
  void halt(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  std::string dir_, socket_;
  pid_t pid_ = -1;
};

// ---------------------------------------------------------------- fixture and values

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "porcupine-store-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    spool_ = dir_ + "/spool";
    redis_ = std::make_unique<RedisServer>(dir_);
    ASSERT_NO_FATAL_FAILURE(redis_->start());
  }
  void TearDown() override {
    redis_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::unique_ptr<RedisStore> open_store() {
    RedisStore::Options o;
    o.redis_socket = redis_->socket();
    o.spool_dir = spool_;
    o.timeout_ms = 2000;
    return std::make_unique<RedisStore>(o, [this](const std::string& line) { logs_.push_back(line); });
  }

  bool logged(const std::string& part) const {
    for (const auto& l : logs_)
      if (l.find(part) != std::string::npos) return true;
    return false;
  }
  std::string all_logs() const {
    std::string out;
    for (const auto& l : logs_) out += l + "\n";
    return out;
  }

  std::string body_file(const MsgId& id) const {
    return spool_ + "/msg/" + std::to_string(id.origin) + "/" + std::to_string(id.seq);
  }
  static std::string read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  // Every value of every key in Redis, concatenated.
  std::string redis_dump() const {
    redisContext* c = redisConnectUnix(redis_->socket().c_str());
    std::string out;
    auto* keys = static_cast<redisReply*>(redisCommand(c, "KEYS *"));
    for (std::size_t i = 0; keys && i < keys->elements; ++i) {
      std::string k(keys->element[i]->str, keys->element[i]->len);
      auto* h = static_cast<redisReply*>(redisCommand(c, "HGETALL %b", k.data(), k.size()));
      for (std::size_t j = 0; h && j < h->elements; ++j) out.append(h->element[j]->str, h->element[j]->len);
      if (h) freeReplyObject(h);
    }
    if (keys) freeReplyObject(keys);
    redisFree(c);
    return out;
  }

  std::string dir_, spool_;
  std::unique_ptr<RedisServer> redis_;
  std::vector<std::string> logs_;
};

MessageRecord record(NodeId origin, std::uint64_t seq, std::string body) {
  MessageRecord r;
  r.id = MsgId{origin, seq};
  r.user = "alice@example.com";
  r.folder = "INBOX";
  r.replicas = {1, 2, 3};
  r.has_body = true;
  r.body = std::move(body);
  r.internal_date = 1700000000000 + static_cast<Time>(seq);
  r.uidvalidity = 7;
  r.uid = static_cast<std::uint32_t>(seq);
  r.uid_version = Version{1000 + static_cast<Time>(seq), origin};
  r.flags = kSeen;
  r.flags_version = r.uid_version;
  return r;
}

MessageRecord without_body(MessageRecord r) {
  r.body.clear();
  return r;
}

Profile profile(const std::string& user) {
  Profile p;
  p.user = user;
  p.version = Version{500, 2};
  p.password_hash = "{SHA512-CRYPT}$6$salt$hash";
  p.quota_bytes = 1 << 30;
  p.folders["INBOX"].uidvalidity = 7;
  p.folders["Sent"].uidvalidity = 9;
  p.holders = {1, 2};
  return p;
}

LogEntry store_entry(const MessageRecord& r, Time t) {
  LogEntry e;
  e.update.id = Version{t, r.id.origin};
  e.update.kind = Update::Kind::Store;
  e.update.coordinator = r.id.origin;
  e.update.replicas = {1, 2, 3};
  e.update.record = r;
  e.have = {r.id.origin};
  return e;
}

LogEntry flags_entry(const MsgId& id, Time t) {
  LogEntry e;
  e.update.id = Version{t, 2};
  e.update.kind = Update::Kind::Flags;
  e.update.coordinator = 2;
  e.update.replicas = {1, 2};
  e.update.record.id = id;
  e.update.record.user = "alice@example.com";
  e.update.record.folder = "INBOX";
  e.update.record.flags = kSeen | kFlagged;
  e.have = {2};
  return e;
}

void expect_same(const LogEntry& got, const LogEntry& want) {
  EXPECT_EQ(got.update.id, want.update.id);
  EXPECT_EQ(got.update.kind, want.update.kind);
  EXPECT_EQ(got.update.coordinator, want.update.coordinator);
  EXPECT_EQ(got.update.replicas, want.update.replicas);
  // The body comes back by reference to its spool file: the bytes must match.
  EXPECT_EQ(read_body(got.update.record.body), std::optional<std::string>(read_body(want.update.record.body)));
  MessageRecord g = got.update.record, w = want.update.record;
  g.body.clear();
  w.body.clear();
  EXPECT_EQ(g, w);
  EXPECT_EQ(got.update.profile, want.update.profile);
  EXPECT_EQ(got.have, want.have);
}

// ---------------------------------------------------------------- tests

TEST_F(RedisStoreTest, EverythingSurvivesAStoreRestart) {
  std::string binary_body("From: a\r\n\r\nnul \0 and \xff bytes\r\n", 31);
  MessageRecord a = record(1, 1, binary_body);
  MessageRecord b = record(2, 40, "Subject: b\r\n\r\nhello\r\n");
  LogEntry store_log = store_entry(a, 2000);
  LogEntry flags_log = flags_entry(b.id, 2001);
  Profile odd = profile(std::string("bin\0user %s", 11));
  {
    auto s = open_store();
    s->load();
    s->put_record(a);
    s->put_record(b);
    s->put_profile(profile("alice@example.com"));
    s->put_profile(odd);
    s->put_log(store_log);
    s->put_log(flags_log);
    s->put_counters(41, 2001, 9);
    ASSERT_TRUE(s->flush()) << all_logs();
    EXPECT_FALSE(s->dirty());
  }
  auto s = open_store();
  DurableSnapshot snap = s->load();
  ASSERT_EQ(snap.records.size(), 2u);
  EXPECT_EQ(snap.records.at(a.id), without_body(a));  // bodies stay in their files
  EXPECT_EQ(snap.records.at(b.id), without_body(b));
  ASSERT_EQ(snap.profiles.size(), 2u);
  EXPECT_EQ(snap.profiles.at("alice@example.com"), profile("alice@example.com"));
  EXPECT_EQ(snap.profiles.at(odd.user), odd);
  ASSERT_EQ(snap.log.size(), 2u);
  expect_same(snap.log.at(store_log.update.id), store_log);  // body re-attached from the spool
  expect_same(snap.log.at(flags_log.update.id), flags_log);
  EXPECT_EQ(snap.next_seq, 41u);
  EXPECT_EQ(snap.last_version, 2001);
  EXPECT_EQ(snap.last_lineage, 9u);
  EXPECT_EQ(s->get_body(a.id), binary_body);
  EXPECT_EQ(s->get_body(b.id), b.body);
  EXPECT_EQ(s->get_body(MsgId{3, 3}), std::nullopt);
  EXPECT_TRUE(
      logged("store: loaded 2 records, 2 profiles, 2 log entries; removed 0 bodies of expunged messages, "
             "0 temp files"))
      << all_logs();
  EXPECT_FALSE(s->damage().any()) << s->damage().str();
}

TEST_F(RedisStoreTest, TheAdminTableAndAProfileErasedSurviveARestartAndANewStoreSaysItIsFresh) {
  const AdminMap admin = {{4, {AdminState::Gone, {2000, 1}}}, {5, {AdminState::Draining, {2001, 2}}}};
  {
    auto s = open_store();
    DurableSnapshot first = s->load();
    EXPECT_TRUE(first.fresh);
    EXPECT_TRUE(first.admin.empty());
    s->put_profile(profile("alice@example.com"));
    s->put_profile(profile("bob@example.com"));
    ASSERT_TRUE(s->flush()) << all_logs();
    s->erase_profile("alice@example.com");
    s->put_admin(admin);
    EXPECT_TRUE(s->dirty());
    ASSERT_TRUE(s->flush()) << all_logs();
  }
  auto s = open_store();
  DurableSnapshot snap = s->load();
  EXPECT_FALSE(snap.fresh);
  EXPECT_EQ(snap.admin, admin);
  ASSERT_EQ(snap.profiles.size(), 1u);
  EXPECT_TRUE(snap.profiles.count("bob@example.com"));
}

TEST_F(RedisStoreTest, BodiesLiveInSpoolFilesNotInRedis) {
  auto s = open_store();
  s->load();
  MessageRecord r = record(4, 12, "Subject: x\r\n\r\nUNIQUE-BODY-MARKER-1234\r\n");
  s->put_record(r);
  s->put_log(store_entry(r, 3000));
  ASSERT_TRUE(s->flush());
  EXPECT_EQ(read(body_file(r.id)), r.body);
  std::string dump = redis_dump();
  EXPECT_NE(dump.find("alice@example.com"), std::string::npos);
  EXPECT_EQ(dump.find("UNIQUE-BODY-MARKER"), std::string::npos);
  EXPECT_EQ(s->stats().flushes, 1u);
  EXPECT_EQ(s->stats().body_files, 1u);  // the log entry shares the record's file
  EXPECT_EQ(s->stats().fsyncs, 3u);      // the file, its new directory, msg/
}

TEST_F(RedisStoreTest, RecordPutAgainWithoutBodyKeepsItsBody) {
  MessageRecord r = record(1, 5, "the body");
  {
    auto s = open_store();
    s->load();
    s->put_record(r);
    ASSERT_TRUE(s->flush());
    MessageRecord flagged = without_body(r);
    flagged.flags = kSeen | kAnswered;
    flagged.flags_version = Version{9000, 2};
    s->put_record(flagged);
    EXPECT_EQ(s->get_body(r.id), "the body");
    ASSERT_TRUE(s->flush());
    EXPECT_EQ(s->stats().body_files, 1u);
  }
  auto s = open_store();
  DurableSnapshot snap = s->load();
  EXPECT_EQ(snap.records.at(r.id).flags, kSeen | kAnswered);
  EXPECT_TRUE(snap.records.at(r.id).has_body);
  EXPECT_EQ(s->get_body(r.id), "the body");
}

TEST_F(RedisStoreTest, ExpungedRecordLosesItsBodyFileAfterTheFlush) {
  auto s = open_store();
  s->load();
  MessageRecord r = record(1, 6, "doomed");
  MessageRecord gone = record(1, 7, "erased");
  s->put_record(r);
  s->put_record(gone);
  ASSERT_TRUE(s->flush());
  MessageRecord cert = without_body(r);
  cert.has_body = false;
  cert.expunged = true;
  cert.expunge_version = Version{7000, 1};
  cert.expunged_at = 7000;
  s->put_record(cert);
  s->erase_record(gone.id);
  EXPECT_TRUE(fs::exists(body_file(r.id)));  // the index still names it until the EXEC
  EXPECT_TRUE(fs::exists(body_file(gone.id)));
  EXPECT_EQ(s->get_body(r.id), std::nullopt);
  ASSERT_TRUE(s->flush());
  EXPECT_FALSE(fs::exists(body_file(r.id)));
  EXPECT_FALSE(fs::exists(body_file(gone.id)));

  auto fresh = open_store();
  DurableSnapshot snap = fresh->load();
  EXPECT_EQ(snap.records.size(), 1u);
  EXPECT_EQ(snap.records.at(r.id), cert);
  EXPECT_TRUE(logged("removed 0 bodies of expunged messages, 0 temp files")) << all_logs();
  EXPECT_FALSE(fresh->damage().any()) << fresh->damage().str();
}

TEST_F(RedisStoreTest, NothingIsDurableBeforeTheFlush) {
  auto s = open_store();
  s->load();
  EXPECT_FALSE(s->dirty());
  MessageRecord r = record(1, 8, "unflushed");
  s->put_record(r);
  s->put_profile(profile("bob@example.com"));
  s->put_log(flags_entry(r.id, 4000));
  s->put_counters(9, 4000, 1);
  EXPECT_TRUE(s->dirty());

  auto other = open_store();  // the same Redis and spool, as after a kill -9 of the agent
  DurableSnapshot snap = other->load();
  EXPECT_TRUE(snap.records.empty());
  EXPECT_TRUE(snap.profiles.empty());
  EXPECT_TRUE(snap.log.empty());
  EXPECT_EQ(snap.next_seq, 1u);
  EXPECT_EQ(snap.last_version, 0);
  EXPECT_FALSE(fs::exists(body_file(r.id)));
  EXPECT_EQ(other->get_body(r.id), std::nullopt);
}

TEST_F(RedisStoreTest, QueuedReadsSeeQueuedWrites) {
  auto s = open_store();
  s->load();
  MessageRecord kept = record(1, 1, "kept");
  LogEntry old_log = flags_entry(kept.id, 100);
  s->put_record(kept);
  s->put_log(old_log);
  s->put_counters(2, 100, 1);
  ASSERT_TRUE(s->flush());

  MessageRecord fresh = record(1, 2, "queued body");
  s->put_record(fresh);
  EXPECT_EQ(s->get_body(fresh.id), "queued body");
  s->erase_log(old_log.update.id);
  LogEntry new_log = store_entry(fresh, 200);
  s->put_log(new_log);
  s->put_profile(profile("carol@example.com"));
  s->put_counters(3, 200, 2);
  MessageRecord kept_cert = without_body(kept);
  kept_cert.has_body = false;
  kept_cert.expunged = true;
  s->put_record(kept_cert);
  EXPECT_EQ(s->get_body(kept.id), std::nullopt);

  DurableSnapshot snap = s->load();
  EXPECT_EQ(snap.records.at(fresh.id), without_body(fresh));
  EXPECT_EQ(snap.records.at(kept.id), kept_cert);
  ASSERT_EQ(snap.log.size(), 1u);
  expect_same(snap.log.at(new_log.update.id), new_log);
  EXPECT_EQ(snap.profiles.count("carol@example.com"), 1u);
  EXPECT_EQ(snap.next_seq, 3u);
  EXPECT_EQ(snap.last_lineage, 2u);
  EXPECT_TRUE(fs::exists(body_file(kept.id)));  // dropped only by the flush
  EXPECT_FALSE(s->damage().any()) << s->damage().str();
  EXPECT_EQ(s->get_body(fresh.id), "queued body");

  ASSERT_TRUE(s->flush());
  EXPECT_FALSE(fs::exists(body_file(kept.id)));
  EXPECT_EQ(read(body_file(fresh.id)), "queued body");
}

TEST_F(RedisStoreTest, StartupScanKeepsUnindexedBodiesRemovesTempFilesAndFlagsAMissingBody) {
  MessageRecord a = record(1, 1, "body a");
  MessageRecord b = record(1, 2, "body b");
  MessageRecord gone = record(1, 4, "expunged");
  {
    auto s = open_store();
    s->load();
    s->put_record(a);
    s->put_record(b);
    MessageRecord cert = without_body(gone);
    cert.has_body = false;
    cert.expunged = true;
    s->put_record(cert);
    ASSERT_TRUE(s->flush());
  }
  // A body no record names (an index write that never happened, or an
  // index that lost it), a temp file of a write cut short, a body file
  // lost under the index, and the body of an expunged message whose
  // unlink a crash cut off.
  fs::create_directories(spool_ + "/msg/9");
  std::ofstream(spool_ + "/msg/9/77") << "named by no record";
  std::ofstream(spool_ + "/msg/1/3.tmp") << "half writ";
  std::ofstream(body_file(gone.id)) << "expunged";
  fs::remove(body_file(b.id));

  auto s = open_store();
  DurableSnapshot snap = s->load();
  EXPECT_TRUE(fs::exists(spool_ + "/msg/9/77"));  // never deleted to make the index agree
  ASSERT_EQ(snap.unindexed.size(), 1u);
  EXPECT_EQ(snap.unindexed.at(MsgId{9, 77}).size, std::string("named by no record").size());
  EXPECT_GT(snap.unindexed.at(MsgId{9, 77}).written, 0);
  EXPECT_FALSE(fs::exists(spool_ + "/msg/1/3.tmp"));
  EXPECT_FALSE(fs::exists(body_file(gone.id)));
  EXPECT_TRUE(snap.records.at(a.id).has_body);
  EXPECT_FALSE(snap.records.at(b.id).has_body);  // a peer's copy brings it back
  EXPECT_EQ(s->get_body(a.id), "body a");
  EXPECT_EQ(s->get_body(b.id), std::nullopt);
  EXPECT_TRUE(logged("error: store: body file " + spool_ + "/msg/9/77 is named by no record")) << all_logs();
  EXPECT_TRUE(logged("error: store: BODY LOST: record 1:2")) << all_logs();
  EXPECT_TRUE(logged("error: store: the index and the spool disagree (1 bodies named by no record, "
                     "1 records missing their bodies")) << all_logs();
  EXPECT_EQ(s->damage().unindexed, 1u);
  EXPECT_EQ(s->damage().missing_bodies, 1u);
  EXPECT_EQ(s->unindexed(), 1u);

  // A record that names the body claims it, with no body of its own.
  MessageRecord claim = without_body(record(9, 77, ""));
  claim.has_body = true;
  s->put_record(claim);
  ASSERT_TRUE(s->flush());
  EXPECT_EQ(s->unindexed(), 0u);
  auto again = open_store();
  snap = again->load();
  EXPECT_TRUE(snap.unindexed.empty());
  EXPECT_TRUE(snap.records.at(MsgId{9, 77}).has_body);
  EXPECT_EQ(again->get_body(MsgId{9, 77}), "named by no record");
}

TEST_F(RedisStoreTest, CoordinatorOutsideTheReplicasKeepsTheBodyForItsLog) {
  MessageRecord r = record(5, 1, "only in the log");
  LogEntry e = store_entry(r, 5000);
  e.update.record.has_body = false;  // as the front end builds a Store
  {
    auto s = open_store();
    s->load();
    s->put_log(e);
    ASSERT_TRUE(s->flush());
  }
  auto s = open_store();
  DurableSnapshot snap = s->load();
  ASSERT_EQ(snap.log.size(), 1u);
  EXPECT_EQ(snap.log.at(e.update.id).update.record.body.where(), Body::Where::File);  // not read into memory
  EXPECT_EQ(read_body(snap.log.at(e.update.id).update.record.body), std::optional<std::string>("only in the log"));
  EXPECT_FALSE(s->damage().any()) << s->damage().str();
  s->erase_log(e.update.id);
  ASSERT_TRUE(s->flush());
  EXPECT_FALSE(fs::exists(body_file(r.id)));
}

TEST_F(RedisStoreTest, RedisKilledAfterAFlushLosesNothing) {
  MessageRecord r = record(1, 1, "acknowledged");
  LogEntry e = store_entry(r, 6000);
  {
    auto s = open_store();
    s->load();
    s->put_record(r);
    s->put_log(e);
    s->put_profile(profile("alice@example.com"));
    s->put_counters(2, 6000, 3);
    ASSERT_TRUE(s->flush());
  }
  redis_->kill9();
  ASSERT_NO_FATAL_FAILURE(redis_->start());
  auto s = open_store();
  DurableSnapshot snap = s->load();
  EXPECT_EQ(snap.records.at(r.id), without_body(r));
  expect_same(snap.log.at(e.update.id), e);
  EXPECT_EQ(snap.profiles.at("alice@example.com"), profile("alice@example.com"));
  EXPECT_EQ(snap.next_seq, 2u);
  EXPECT_EQ(snap.last_version, 6000);
  EXPECT_EQ(snap.last_lineage, 3u);
  EXPECT_EQ(s->get_body(r.id), "acknowledged");
}

TEST_F(RedisStoreTest, FlushFailsWhenRedisIsGoneAndTheBatchLeavesOnlyAnOrphan) {
  MessageRecord before = record(1, 1, "flushed");
  MessageRecord after = record(1, 2, "never acknowledged");
  auto s = open_store();
  s->load();
  s->put_record(before);
  ASSERT_TRUE(s->flush());
  s->put_record(after);
  redis_->kill9();
  EXPECT_FALSE(s->flush());  // an error, not a SIGPIPE
  EXPECT_TRUE(s->dirty());
  EXPECT_TRUE(logged("store: flush failed")) << all_logs();
  EXPECT_TRUE(fs::exists(body_file(after.id)));  // written before the EXEC failed

  ASSERT_NO_FATAL_FAILURE(redis_->start());
  auto fresh = open_store();
  DurableSnapshot snap = fresh->load();
  EXPECT_EQ(snap.records.size(), 1u);
  EXPECT_EQ(fresh->get_body(before.id), "flushed");
  EXPECT_TRUE(fs::exists(body_file(after.id)));  // kept: it cannot be told from a body the index lost
  ASSERT_EQ(snap.unindexed.size(), 1u);
  EXPECT_EQ(snap.unindexed.count(after.id), 1u);
}

// A writer process stores and expunges messages as fast as it can and
// reports each flush that returned true; it is SIGKILLed at some moment,
// every other round together with redis-server. After a restart every
// acknowledged write is there, and the spool holds exactly the bodies the
// index names.
TEST_F(RedisStoreTest, KillNineAtAnyMomentLosesNothingAcknowledged) {
  std::uint64_t acked = 0;  // highest seq whose flush returned true
  for (int round = 0; round < 4; ++round) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(fds[0]);
      try {
        auto s = open_store();
        DurableSnapshot snap = s->load();
        for (std::uint64_t seq = snap.next_seq;; ++seq) {
          s->put_record(record(1, seq, "body " + std::to_string(seq)));
          if (seq % 2 == 0) {  // expunge the odd one before
            MessageRecord cert = without_body(record(1, seq - 1, ""));
            cert.has_body = false;
            cert.expunged = true;
            s->put_record(cert);
          }
          s->put_counters(seq + 1, static_cast<Time>(seq), 1);
          if (!s->flush()) ::_exit(1);
          if (::write(fds[1], &seq, sizeof seq) != sizeof seq) ::_exit(1);
        }
      } catch (...) {
        ::_exit(2);
      }
    }
    ::close(fds[1]);
    std::uint64_t seq = 0;
    ASSERT_EQ(::read(fds[0], &seq, sizeof seq), static_cast<ssize_t>(sizeof seq)) << "writer died";
    acked = std::max(acked, seq);
    std::this_thread::sleep_for(std::chrono::milliseconds(13 + 29 * round));  // then kill, mid-flush or not
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    EXPECT_TRUE(WIFSIGNALED(status)) << "writer exited by itself, status " << status;
    bool both = round % 2 == 1;
    if (both) redis_->kill9();
    while (::read(fds[0], &seq, sizeof seq) == sizeof seq) acked = std::max(acked, seq);
    ::close(fds[0]);
    if (both) {
      ASSERT_NO_FATAL_FAILURE(redis_->start());
    }

    logs_.clear();
    auto s = open_store();
    DurableSnapshot snap = s->load();
    EXPECT_GE(snap.next_seq, acked + 1);
    for (std::uint64_t i = 1; i <= acked; ++i) {
      MsgId id{1, i};
      ASSERT_TRUE(snap.records.count(id))
          << "round " << round << ": acknowledged record " << id.str() << " lost";
      const MessageRecord& r = snap.records.at(id);
      bool expunge_acked = i % 2 == 1 && i + 1 <= acked;
      if (expunge_acked) {
        EXPECT_TRUE(r.expunged) << id.str();
        EXPECT_FALSE(fs::exists(body_file(id))) << id.str();
      } else if (!r.expunged) {
        EXPECT_EQ(s->get_body(id), "body " + std::to_string(i)) << id.str();
      }
    }
    // Every file is a body the index names, or one of the write the kill
    // cut off (never acknowledged, kept: it cannot be told from a body an
    // index lost).
    std::size_t with_body = 0;
    for (const auto& [id, r] : snap.records) with_body += r.has_body;
    std::size_t files = 0;
    for (const auto& f : fs::directory_iterator(spool_ + "/msg/1")) {
      MsgId id{1, std::stoull(f.path().filename().string())};
      bool named = snap.records.count(id) && snap.records.at(id).has_body;
      EXPECT_TRUE(named || (snap.unindexed.count(id) && id.seq > acked)) << "unaccounted file " << f.path();
      ++files;
    }
    EXPECT_EQ(files, with_body + snap.unindexed.size());
    EXPECT_LE(snap.unindexed.size(), 2u);
    EXPECT_EQ(s->damage().missing_bodies, 0u) << all_logs();
  }
}

TEST_F(RedisStoreTest, UnreachableRedisIsAClearStartupError) {
  RedisStore::Options o;
  o.redis_socket = dir_ + "/no-such.sock";
  o.spool_dir = spool_;
  try {
    RedisStore s(o, nullptr);
    FAIL() << "constructed without redis";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("redis unreachable at " + o.redis_socket), std::string::npos)
        << e.what();
  }
}

TEST_F(RedisStoreTest, UnusableSpoolIsAClearStartupError) {
  std::ofstream(dir_ + "/not-a-dir") << "a file";
  RedisStore::Options o;
  o.redis_socket = redis_->socket();
  o.spool_dir = dir_ + "/not-a-dir";
  try {
    RedisStore s(o, nullptr);
    FAIL() << "constructed on a file";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("store: spool " + o.spool_dir + " unusable"), std::string::npos)
        << e.what();
  }
}

TEST_F(RedisStoreTest, WeakRedisDurabilityIsReported) {
  redisContext* c = redisConnectUnix(redis_->socket().c_str());
  freeReplyObject(redisCommand(c, "CONFIG SET appendfsync everysec"));
  redisFree(c);
  auto s = open_store();
  EXPECT_TRUE(logged("store: WARNING: redis has appendfsync everysec, not always")) << all_logs();
  EXPECT_FALSE(logged("appendonly")) << all_logs();
}

TEST_F(RedisStoreTest, FlushTimeForOneAndForAHundredRecords) {
  auto s = open_store();
  s->load();
  std::uint64_t seq = 1;
  auto time_batch = [&](int n, bool bodies) {
    for (int i = 0; i < n; ++i) {
      MessageRecord r = record(1, seq++, bodies ? std::string(512, 'x') : std::string());
      s->put_record(r);
    }
    s->put_counters(seq, static_cast<Time>(seq), 1);
    auto t0 = Clock::now();
    EXPECT_TRUE(s->flush());
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  };
  const int rounds = 2;
  for (bool bodies : {true, false})
    for (int n : {1, 100}) {
      double total = 0;
      for (int i = 0; i < rounds; ++i) total += time_batch(n, bodies);
      std::printf("[ timing ] flush of %3d records %s: %.2f ms (mean of %d)\n", n,
                  bodies ? "with 512-byte bodies" : "metadata only       ", total / rounds, rounds);
    }
}

TEST_F(RedisStoreTest, ALargeBodyIsStagedThenLinkedIntoPlaceWithoutACopyAndItsStagingNameGoes) {
  auto s = open_store();
  s->load();
  std::string big(3u << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 4096);
  BodyBuilder b(s->incoming_dir());
  for (std::size_t at = 0; at < big.size(); at += 100000) ASSERT_TRUE(b.append(std::string_view(big).substr(at, 100000)));
  std::optional<Body> body = b.finish();
  ASSERT_TRUE(body);
  ASSERT_EQ(body->where(), Body::Where::File);  // over kInlineBodyMax: on disk, not in memory
  EXPECT_EQ(body->size(), big.size());
  const std::string staged = body->file()->path();
  EXPECT_EQ(staged.rfind(s->incoming_dir(), 0), 0u);
  MessageRecord r = record(3, 41, "");
  r.body = *body;
  r.size = big.size();
  s->put_record(r);
  ASSERT_TRUE(s->flush());
  struct stat a {}, c {};
  ASSERT_EQ(::stat(staged.c_str(), &a), 0);
  ASSERT_EQ(::stat(body_file(r.id).c_str(), &c), 0);
  EXPECT_EQ(a.st_ino, c.st_ino);  // the same file: linked, not copied
  EXPECT_EQ(read(body_file(r.id)), big);
  body.reset();
  r.body.clear();
  s.reset();  // the queue's reference goes with the store
  EXPECT_NE(::access(staged.c_str(), F_OK), 0);  // the staging name went with the last reference
  EXPECT_EQ(read(body_file(r.id)), big);          // the message stays
  auto again = open_store();
  DurableSnapshot snap = again->load();
  ASSERT_TRUE(snap.records.count(r.id));
  EXPECT_EQ(again->get_body(r.id), std::optional<std::string>(big));
}

TEST_F(RedisStoreTest, ASmallBodyStaysInMemoryAndStagingLeftByACrashIsRemovedAtStart) {
  {
    auto s = open_store();
    s->load();
    BodyBuilder small(s->incoming_dir());
    ASSERT_TRUE(small.append("Subject: hi\r\n\r\nsmall\r\n"));
    std::optional<Body> b = small.finish();
    ASSERT_TRUE(b);
    EXPECT_EQ(b->where(), Body::Where::Memory);
    // A delivery cut off by a crash: its staging file stays behind.
    std::ofstream(s->incoming_dir() + "/4242.1") << "half a message";
  }
  auto s = open_store();
  s->load();
  EXPECT_NE(::access((s->incoming_dir() + "/4242.1").c_str(), F_OK), 0);
  EXPECT_TRUE(logged("1 temp files")) << all_logs();
}

// What a reader (Open) gets: a descriptor of the body while it is queued
// and once it is in its file, none for a body the node does not keep; and
// the sizes worked out at delivery stay with the record.
TEST_F(RedisStoreTest, ABodyOpensForAReaderQueuedOrFlushedAndItsSizesAreKept) {
  auto read_fd = [](int fd) {
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return out;
  };
  auto s = open_store();
  s->load();
  MessageRecord r = record(3, 51, "Subject: open\n\nme\n");
  r.vsize = 21;
  r.hdr_size = 15;
  s->put_record(r);
  int fd = s->open_body(r.id);  // queued: from memory
  ASSERT_GE(fd, 0);
  EXPECT_EQ(read_fd(fd), "Subject: open\n\nme\n");
  ASSERT_TRUE(s->flush());
  fd = s->open_body(r.id);  // its file now
  ASSERT_GE(fd, 0);
  struct stat a {}, b {};
  ASSERT_EQ(::fstat(fd, &a), 0);
  ASSERT_EQ(::stat(body_file(r.id).c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(read_fd(fd), "Subject: open\n\nme\n");
  EXPECT_EQ(s->open_body(MsgId{3, 52}), -1);
  s.reset();
  auto again = open_store();
  DurableSnapshot snap = again->load();
  ASSERT_TRUE(snap.records.count(r.id));
  EXPECT_EQ(snap.records.at(r.id).vsize, 21u);
  EXPECT_EQ(snap.records.at(r.id).hdr_size, 15u);
}

// The sizes come out the same however the body is cut into chunks: a CR
// and its LF, or the blank line, split between two.
TEST(MessageSizes, CountBareLineFeedsAndTheHeaderWhateverTheChunks) {
  struct Case {
    std::string body;
    std::uint64_t vsize;
    std::uint32_t hdr;
  };
  const Case cases[] = {
      {"A: b\r\n\r\nbody\r\n", 14, 8},
      {"A: b\n\nbody\n", 14, 6},
      {"A: b\r\nC: d\n\r\nx\ny", 18, 13},
      {"\r\nbody", 6, 2},  // no header at all: the blank line only
      {"\nbody", 6, 1},
      {"A: b\r\n", 6, 6},  // no blank line: all header
      {"A: b\r\r\n\r\n", 9, 9},  // "\r\r\n" is not a blank line
  };
  for (const Case& c : cases) {
    for (std::size_t cut = 1; cut <= c.body.size(); ++cut) {
      MessageSizes m;
      for (std::size_t at = 0; at < c.body.size(); at += cut) m.add(std::string_view(c.body).substr(at, cut));
      EXPECT_EQ(m.vsize(), c.vsize) << c.body << " in pieces of " << cut;
      EXPECT_EQ(m.hdr_size(), c.hdr) << c.body << " in pieces of " << cut;
    }
  }
}

// A body in memory opens as an anonymous file with its bytes, sealed.
TEST(OpenBody, ABodyInMemoryOpensAsASealedAnonymousFile) {
  const std::string bytes = std::string("Subject: m\r\n\r\n") + std::string(1000, '\0') + "end";
  int fd = open_body(Body(bytes));
  ASSERT_GE(fd, 0);
  EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_EQ(::write(fd, "x", 1), -1);  // sealed against writes
  std::string got(bytes.size() + 10, '\0');
  EXPECT_EQ(::pread(fd, got.data(), got.size(), 0), static_cast<ssize_t>(bytes.size()));
  got.resize(bytes.size());
  EXPECT_EQ(got, bytes);
  ::close(fd);
  EXPECT_EQ(open_body(Body::in_transfer(7, 10)), -1);
}

}  // namespace
}  // namespace porcupine::store
