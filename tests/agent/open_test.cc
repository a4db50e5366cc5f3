// SPDX-License-Identifier: MIT
// open_test.cc - message sizes in listings and porcupine_open_many (Open:
// bodies as file descriptors) against a real three-node cluster
// (porcupine-local on 127.0.K.i, K from PORCUPINE_TEST_SUBNET, default 31).
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "client/porcupine_client.h"

namespace {

struct Reader {
  const std::string* data;
  size_t off = 0;
};

ssize_t read_chunk(void* context, char* buf, size_t len) {
  auto* r = static_cast<Reader*>(context);
  size_t n = std::min(len, r->data->size() - r->off);
  std::memcpy(buf, r->data->data() + r->off, n);
  r->off += n;
  return static_cast<ssize_t>(n);
}

// Everything from `fd`'s offset to its end.
std::string read_all(int fd) {
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Open descriptors of process `pid`.
int fd_count(int pid) {
  int n = 0;
  if (DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
    while (const dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
}

std::string fd_target(int fd) {
  char buf[4096];
  ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

bool holds(const porcupine_msgref& ref, uint32_t node) {
  for (uint32_t i = 0; i < ref.nreplicas; ++i)
    if (ref.replicas[i] == node) return true;
  return false;
}

class Open : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/porcupine-open-XXXXXX";
    dir_ = mkdtemp(tmpl);
    const char* subnet = std::getenv("PORCUPINE_TEST_SUBNET");
    local_ = std::string("python3 ") + PORCUPINE_SOURCE_DIR + "/scripts/porcupine-local --dir " + dir_ +
             " --build " + PORCUPINE_BUILD_DIR + " ";
    ASSERT_EQ(std::system((local_ + "start 3 --replicas 2 --subnet " + (subnet ? subnet : "31")).c_str()), 0);
    ASSERT_EQ(std::system((local_ + "wait-converged --timeout 30").c_str()), 0);
    ASSERT_EQ(std::system((local_ + "ctl 1 user add ann@example.org --password s3cret >/dev/null").c_str()), 0);
    ASSERT_EQ(std::system((local_ + "ctl 1 user add bob@example.org --password s3cret >/dev/null").c_str()), 0);
    for (int i = 1; i <= 3; ++i) {
      clients_[i] = porcupine_open((node_dir(i) + "/agent.sock").c_str(), 15000);
      ASSERT_NE(clients_[i], nullptr);
    }
  }
  void TearDown() override {
    for (auto* c : clients_) porcupine_close(c);
    std::system((local_ + "stop").c_str());
    std::error_code ec;  // the cluster's files go with it
    std::filesystem::remove_all(dir_, ec);
  }
  std::string node_dir(int i) const { return dir_ + "/n" + std::to_string(i); }
  int agent_pid(int i) const {
    std::ifstream f(node_dir(i) + "/agent.pid");
    int pid = 0;
    f >> pid;
    return pid;
  }
  void deliver(const std::string& user, const std::string& body) {
    Reader r{&body};
    porcupine_delivered d;
    ASSERT_EQ(porcupine_deliver(clients_[1], user.c_str(), "INBOX", read_chunk, &r, &d), PORCUPINE_OK)
        << porcupine_error(clients_[1]);
  }

  std::string dir_, local_;
  porcupine_client* clients_[4] = {};
};

// A listing gives each message's size with CRLF line ends and its
// header's size, however its lines end.
TEST_F(Open, ListingShowsTheSizeWithCrlfLineEndsAndTheHeaderSize) {
  const std::string lf = "Subject: bare\nFrom: a@example.org\n\nline one\nline two\n";
  const std::string crlf = "Subject: crlf\r\n\r\nline one\r\nline two\r\n";
  const std::string mixed = "Subject: mixed\r\nX: y\n\r\nbody\nend\r\n";
  const std::string headless = "no blank line at all\n";
  for (const auto* m : {&lf, &crlf, &mixed, &headless}) deliver("ann@example.org", *m);
  porcupine_folder f;
  ASSERT_EQ(porcupine_folder_list(clients_[2], "ann@example.org", "INBOX", &f), PORCUPINE_OK);
  ASSERT_EQ(f.count, 4u);
  EXPECT_EQ(f.messages[0].size, lf.size());
  EXPECT_EQ(f.messages[0].vsize, lf.size() + 5);  // five bare LFs
  EXPECT_EQ(f.messages[0].hdr_size, std::string("Subject: bare\nFrom: a@example.org\n\n").size());
  EXPECT_EQ(f.messages[1].vsize, crlf.size());
  EXPECT_EQ(f.messages[1].hdr_size, std::string("Subject: crlf\r\n\r\n").size());
  EXPECT_EQ(f.messages[2].vsize, mixed.size() + 2);
  EXPECT_EQ(f.messages[2].hdr_size, std::string("Subject: mixed\r\nX: y\n\r\n").size());
  EXPECT_EQ(f.messages[3].vsize, headless.size() + 1);
  EXPECT_EQ(f.messages[3].hdr_size, headless.size());
  porcupine_folder_free(&f);
}

// Every message opened through every node: a node holding a copy gives
// its own spool file, one holding none the entry of its node cache where
// it keeps the copy it fetched (the first time; a hit after); the bytes
// are the message's. Another user's open finds no cache entry of Ann's. Unknown and foreign references get a code and no descriptor,
// and the agents keep no descriptor after the answers.
TEST_F(Open, BodiesComeAsDescriptorsFromAHolderAndThroughANodeHoldingNone) {
  std::vector<std::string> bodies = {"Subject: small\n\nbare LF body\n",
                                     "Subject: crlf\r\n\r\nCRLF body\r\n",
                                     "Subject: large\r\n\r\n" + std::string(700 * 1024, 'x') + "\r\n"};
  for (const auto& b : bodies) deliver("ann@example.org", b);
  porcupine_folder f;
  ASSERT_EQ(porcupine_folder_list(clients_[1], "ann@example.org", "INBOX", &f), PORCUPINE_OK);
  ASSERT_EQ(f.count, bodies.size());

  // The agents' descriptors once every connection is up.
  int before[4] = {};
  for (int i = 1; i <= 3; ++i) {
    uint64_t digest;
    ASSERT_EQ(porcupine_folder_digest(clients_[i], "ann@example.org", "INBOX", &digest), PORCUPINE_OK);
    before[i] = fd_count(agent_pid(i));
  }

  bool through_holder = false, through_other = false;
  for (int round = 0; round < 3; ++round) {
    for (uint32_t node = 1; node <= 3; ++node) {
      std::vector<porcupine_opened> items(f.count + 2);
      for (size_t k = 0; k < f.count; ++k) {
        items[k].ref = f.messages[k].ref;
        items[k].size_hint = f.messages[k].size;
      }
      items[f.count].ref = f.messages[0].ref;
      items[f.count].ref.seq = 999999;  // no such message
      items[f.count + 1].ref = f.messages[0].ref;
      items[f.count + 1].ref.seq = 999998;
      items[f.count + 1].ref.nreplicas = 1;
      items[f.count + 1].ref.replicas[0] = 200;  // on no such node
      ASSERT_EQ(porcupine_open_many(clients_[node], "ann@example.org", "INBOX", items.data(), items.size()),
                PORCUPINE_OK)
          << porcupine_error(clients_[node]);
      for (size_t k = 0; k < f.count; ++k) {
        SCOPED_TRACE("node " + std::to_string(node) + " message " + std::to_string(k));
        ASSERT_EQ(items[k].result, PORCUPINE_OK);
        ASSERT_GE(items[k].fd, 0);
        EXPECT_EQ(items[k].size, bodies[k].size());
        EXPECT_EQ(read_all(items[k].fd), bodies[k]);
        const std::string target = fd_target(items[k].fd);
        const porcupine_msgref& ref = f.messages[k].ref;
        if (holds(ref, node)) {
          through_holder = true;
          struct stat got {}, spool {};
          ASSERT_EQ(::fstat(items[k].fd, &got), 0);
          const std::string path = node_dir(static_cast<int>(node)) + "/spool/msg/" + std::to_string(ref.origin) +
                                   "/" + std::to_string(ref.seq);
          ASSERT_EQ(::stat(path.c_str(), &spool), 0) << path;
          EXPECT_EQ(got.st_ino, spool.st_ino) << target;
          EXPECT_EQ(got.st_dev, spool.st_dev);
        } else {
          // A node holding none keeps what it fetched in its node cache
          // (large bodies as a link of the staging file they came in,
          // small ones written out) and answers with the entry.
          through_other = true;
          EXPECT_EQ(target, node_dir(static_cast<int>(node)) + "/spool/cache/" + std::to_string(ref.origin) + "/" +
                                std::to_string(ref.seq));
        }
        ::close(items[k].fd);
      }
      EXPECT_EQ(items[f.count].result, PORCUPINE_TEMPFAIL);  // no holder has it (yet)
      EXPECT_EQ(items[f.count].fd, -1);
      EXPECT_EQ(items[f.count + 1].result, PORCUPINE_TEMPFAIL);
      EXPECT_EQ(items[f.count + 1].fd, -1);

      // Ann's messages are not Bob's: no descriptor, through a holder or not.
      std::vector<porcupine_opened> foreign(f.count);
      for (size_t k = 0; k < f.count; ++k) foreign[k].ref = f.messages[k].ref;
      ASSERT_EQ(porcupine_open_many(clients_[node], "bob@example.org", "INBOX", foreign.data(), foreign.size()),
                PORCUPINE_OK);
      for (size_t k = 0; k < f.count; ++k) {
        EXPECT_EQ(foreign[k].result, PORCUPINE_NOT_FOUND) << "node " << node << " message " << k;
        EXPECT_EQ(foreign[k].fd, -1);
      }
    }
  }
  EXPECT_TRUE(through_holder);
  EXPECT_TRUE(through_other);

  // Staging files of fetched bodies go with the answer (none is left
  // under incoming/), and no agent keeps a descriptor.
  for (int i = 1; i <= 3; ++i) {
    DIR* d = ::opendir((node_dir(i) + "/spool/incoming").c_str());
    ASSERT_NE(d, nullptr);
    while (const dirent* e = ::readdir(d)) EXPECT_EQ(e->d_name[0], '.') << "node " << i << ": " << e->d_name;
    ::closedir(d);
    int now = fd_count(agent_pid(i));
    for (int tries = 0; tries < 50 && now != before[i]; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      now = fd_count(agent_pid(i));
    }
    EXPECT_EQ(now, before[i]) << "agent " << i;
  }
  porcupine_folder_free(&f);

  // A batch larger than one Open (128) is split, and each gets its answer.
  std::vector<porcupine_opened> many(300);
  porcupine_folder g;
  ASSERT_EQ(porcupine_folder_list(clients_[1], "ann@example.org", "INBOX", &g), PORCUPINE_OK);
  for (size_t k = 0; k < many.size(); ++k) many[k].ref = g.messages[k % 2].ref;
  ASSERT_EQ(porcupine_open_many(clients_[1], "ann@example.org", "INBOX", many.data(), many.size()), PORCUPINE_OK)
      << porcupine_error(clients_[1]);
  for (size_t k = 0; k < many.size(); ++k) {
    ASSERT_EQ(many[k].result, PORCUPINE_OK) << k;
    EXPECT_EQ(read_all(many[k].fd), bodies[k % 2]) << k;
    ::close(many[k].fd);
  }
  porcupine_folder_free(&g);
  EXPECT_EQ(porcupine_open_many(clients_[1], "ann@example.org", "INBOX", nullptr, 0), PORCUPINE_OK);
  EXPECT_EQ(porcupine_open_many(clients_[1], nullptr, "INBOX", many.data(), 1), PORCUPINE_BAD_REQUEST);
}

// Headers for a reader of headers (porcupine_open_headers): a node
// holding a copy gives the whole (its own file, no network); one holding
// none fetches the header part alone (up to and including the blank line,
// as the listing's hdr_size) and keeps nothing in its node cache; a
// message with no blank line comes whole (that is its header), or, longer
// than 256 KiB, as its first 256 KiB marked cut. Another user gets no descriptor.
TEST_F(Open, HeadersComeWholeFromAHolderAndAsTheHeaderAloneThroughANodeHoldingNone) {
  const std::string big_header = "Subject: big\r\nFrom: a@example.org\r\n\r\n";
  const std::string lf_header = "Subject: bare\nTo: b@example.org\n\n";
  std::vector<std::string> bodies = {big_header + std::string(300 * 1024, 'x') + "\r\n",
                                     lf_header + "line\n\nafter a blank line\n",
                                     "no blank line at all\n",
                                     std::string(300 * 1024, 'h')};
  const std::vector<std::string> parts = {big_header, lf_header, bodies[2], bodies[3].substr(0, 256 * 1024)};
  const std::vector<int> kinds = {PORCUPINE_PART_HEADER, PORCUPINE_PART_HEADER, PORCUPINE_PART_WHOLE,
                                  PORCUPINE_PART_HEADER_CUT};
  // Each body delivered through a node that keeps a copy of it: the node
  // holding none then has no cache entry from the delivery (a node
  // accepting a message it holds no copy of keeps it in its cache).
  std::vector<porcupine_msgref> refs;
  for (const auto& b : bodies) {
    for (int tries = 0;; ++tries) {
      ASSERT_LT(tries, 12) << "no delivery landed on the node it went through";
      const int via = 1 + tries % 3;
      Reader r{&b};
      porcupine_delivered d;
      ASSERT_EQ(porcupine_deliver(clients_[via], "ann@example.org", "INBOX", read_chunk, &r, &d), PORCUPINE_OK)
          << porcupine_error(clients_[via]);
      if (holds(d.ref, static_cast<uint32_t>(via))) {
        refs.push_back(d.ref);
        break;
      }
    }
  }

  bool through_holder = false, through_other = false;
  for (uint32_t node = 1; node <= 3; ++node) {
    std::vector<porcupine_opened> items(refs.size());
    for (size_t k = 0; k < refs.size(); ++k) {
      items[k].ref = refs[k];
      items[k].size_hint = bodies[k].size();
    }
    ASSERT_EQ(porcupine_open_headers(clients_[node], "ann@example.org", "INBOX", items.data(), items.size()),
              PORCUPINE_OK)
        << porcupine_error(clients_[node]);
    for (size_t k = 0; k < refs.size(); ++k) {
      SCOPED_TRACE("node " + std::to_string(node) + " message " + std::to_string(k));
      ASSERT_EQ(items[k].result, PORCUPINE_OK);
      ASSERT_GE(items[k].fd, 0);
      const std::string got = read_all(items[k].fd);
      ::close(items[k].fd);
      const std::string& want = holds(refs[k], node) ? bodies[k] : parts[k];
      EXPECT_EQ(items[k].part, holds(refs[k], node) ? PORCUPINE_PART_WHOLE : kinds[k]);
      EXPECT_EQ(items[k].size, want.size());
      EXPECT_EQ(got.size(), want.size());
      EXPECT_TRUE(got == want) << "not the expected bytes";
      if (holds(refs[k], node)) {
        through_holder = true;
        continue;
      }
      through_other = true;
      if (kinds[k] == PORCUPINE_PART_WHOLE) continue;
      // A header part is not the message: the node cache keeps none.
      const std::string entry = node_dir(static_cast<int>(node)) + "/spool/cache/" +
                                std::to_string(refs[k].origin) + "/" + std::to_string(refs[k].seq);
      struct stat st {};
      EXPECT_NE(::stat(entry.c_str(), &st), 0) << entry;
    }

    // Ann's messages are not Bob's, header or not.
    std::vector<porcupine_opened> foreign(refs.size());
    for (size_t k = 0; k < refs.size(); ++k) foreign[k].ref = refs[k];
    ASSERT_EQ(porcupine_open_headers(clients_[node], "bob@example.org", "INBOX", foreign.data(), foreign.size()),
              PORCUPINE_OK);
    for (size_t k = 0; k < refs.size(); ++k) {
      EXPECT_EQ(foreign[k].result, PORCUPINE_NOT_FOUND) << "node " << node << " message " << k;
      EXPECT_EQ(foreign[k].fd, -1);
    }

    // The whole bodies are still whole, and once in the node cache a
    // reader of headers gets the entry, whole.
    for (bool headers : {false, true}) {
      std::vector<porcupine_opened> again(refs.size());
      for (size_t k = 0; k < refs.size(); ++k) again[k].ref = refs[k];
      ASSERT_EQ(headers ? porcupine_open_headers(clients_[node], "ann@example.org", "INBOX", again.data(), again.size())
                        : porcupine_open_many(clients_[node], "ann@example.org", "INBOX", again.data(), again.size()),
                PORCUPINE_OK);
      for (size_t k = 0; k < refs.size(); ++k) {
        SCOPED_TRACE("node " + std::to_string(node) + " message " + std::to_string(k) +
                     (headers ? " headers" : " whole"));
        ASSERT_EQ(again[k].result, PORCUPINE_OK);
        EXPECT_EQ(again[k].part, PORCUPINE_PART_WHOLE);
        EXPECT_EQ(again[k].size, bodies[k].size());
        EXPECT_TRUE(read_all(again[k].fd) == bodies[k]) << "not the whole body";
        ::close(again[k].fd);
      }
    }
  }
  EXPECT_TRUE(through_holder);
  EXPECT_TRUE(through_other);
}

}  // namespace
