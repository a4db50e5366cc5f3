// SPDX-License-Identifier: MIT
// node_cache_test.cc - NodeCache on a real directory.
//
// Each test works in a fresh directory under /tmp. Sizes are what the
// filesystem reports (st_blocks * 512), so the budget checks compare the
// cache's own figure with the files actually on disk. The full-disk test
// mounts a tiny tmpfs and runs only as root.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "store/node_cache.h"

namespace porcupine::store {
namespace {

namespace fs = std::filesystem;

class NodeCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/porcupine-node-cache-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    dir_ = base_ + "/cache";
  }
  void TearDown() override {
    if (!mount_.empty()) ::umount2(mount_.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(base_, ec);
  }

  NodeCache::Options options(std::uint64_t budget, std::uint64_t entry_max = 0) {
    NodeCache::Options o;
    o.dir = dir_;
    o.budget = budget;
    o.entry_max = entry_max;
    return o;
  }
  std::unique_ptr<NodeCache> make(NodeCache::Options o) {
    return std::make_unique<NodeCache>(std::move(o), [this](const std::string& l) { log_ += l + "\n"; });
  }

  // The whole file behind an fd, read from its start; closes it.
  static std::string read_fd(int fd) {
    std::string out;
    char buf[8192];
    off_t at = 0;
    for (;;) {
      ssize_t n = ::pread(fd, buf, sizeof buf, at);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
      at += n;
    }
    ::close(fd);
    return out;
  }
  static std::string body(std::size_t size, unsigned seed) {
    std::mt19937 rng(seed);
    std::string s(size, '\0');
    for (char& c : s) c = static_cast<char>(rng());  // NULs and high bytes included
    return s;
  }
  // What the files under the cache directory take on disk, as the cache counts it.
  std::uint64_t on_disk() const {
    std::uint64_t sum = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir_)) {
      struct stat st {};
      if (e.is_regular_file() && ::stat(e.path().c_str(), &st) == 0)
        sum += std::max<std::uint64_t>(static_cast<std::uint64_t>(st.st_blocks) * 512, 512);
    }
    return sum;
  }
  // The bytes one body of `size` takes here (probes the filesystem).
  std::uint64_t cost_of(std::size_t size) {
    const std::string probe = base_ + "/probe";
    std::ofstream(probe, std::ios::binary) << body(size, 1);
    struct stat st {};
    EXPECT_EQ(::stat(probe.c_str(), &st), 0);
    fs::remove(probe);
    return std::max<std::uint64_t>(static_cast<std::uint64_t>(st.st_blocks) * 512, 512);
  }
  static void set_mtime(const std::string& path, std::time_t sec) {
    struct timespec t[2] = {{sec, 0}, {sec, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), t, 0), 0) << path;
  }

  std::string base_, dir_, mount_, log_;
};

const MsgId A{1, 10}, B{1, 11}, C{2, 12}, D{3, 13};

TEST_F(NodeCacheTest, AdmitThenOpenGivesTheSameBytes) {
  auto cache = make(options(16 << 20, 8 << 20));
  const std::string small = body(100, 1), large = body(3 << 20, 2);
  ASSERT_TRUE(cache->admit_bytes(A, small));
  ASSERT_TRUE(cache->admit_bytes(B, large.data(), large.size()));
  auto fa = cache->open(A);
  auto fb = cache->open(B);
  ASSERT_TRUE(fa && fb);
  EXPECT_EQ(read_fd(*fa), small);
  EXPECT_EQ(read_fd(*fb), large);
  EXPECT_EQ(fs::path(cache->path_of(A)), fs::path(dir_) / "1" / "10");
  EXPECT_EQ(fs::status(dir_).permissions() & fs::perms::all, fs::perms::owner_all);
  EXPECT_EQ(fs::status(fs::path(dir_) / "1").permissions() & fs::perms::all, fs::perms::owner_all);
  auto s = cache->stats();
  EXPECT_EQ(s.entries, 2u);
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 0u);
  EXPECT_EQ(s.bytes, on_disk());
  EXPECT_FALSE(cache->open(C));
  EXPECT_EQ(cache->stats().misses, 1u);
  EXPECT_FALSE(fs::exists(cache->path_of(A) + ".tmp"));
}

TEST_F(NodeCacheTest, OpenedFdIsReadOnlyAndCloseOnExec) {
  auto cache = make(options(1 << 20));
  ASSERT_TRUE(cache->admit_bytes(A, "hello"));
  auto fd = cache->open(A);
  ASSERT_TRUE(fd);
  EXPECT_EQ(::fcntl(*fd, F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_NE(::fcntl(*fd, F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_EQ(::write(*fd, "x", 1), -1);
  ::close(*fd);
}

TEST_F(NodeCacheTest, EvictsTheLeastRecentlyOpened) {
  const std::size_t size = 40000;
  const std::uint64_t cost = cost_of(size);
  auto cache = make(options(3 * cost, size));  // room for three
  ASSERT_TRUE(cache->admit_bytes(A, body(size, 1)));
  ASSERT_TRUE(cache->admit_bytes(B, body(size, 2)));
  ASSERT_TRUE(cache->admit_bytes(C, body(size, 3)));
  auto fd = cache->open(A);  // A is now the most recent, B the least
  ASSERT_TRUE(fd);
  ::close(*fd);
  ASSERT_TRUE(cache->admit_bytes(D, body(size, 4)));
  EXPECT_TRUE(cache->contains(A));
  EXPECT_FALSE(cache->contains(B));
  EXPECT_FALSE(fs::exists(cache->path_of(B)));
  EXPECT_TRUE(cache->contains(C));
  EXPECT_TRUE(cache->contains(D));
  EXPECT_EQ(cache->stats().evictions, 1u);
  // Admitting a body already held marks it used: C, then A, are older now.
  ASSERT_TRUE(cache->admit_bytes(C, body(size, 3)));
  ASSERT_TRUE(cache->admit_bytes(B, body(size, 2)));
  EXPECT_FALSE(cache->contains(A));
  EXPECT_TRUE(cache->contains(C));
  EXPECT_EQ(cache->stats().evictions, 2u);
}

TEST_F(NodeCacheTest, BudgetHoldsAfterEveryAdmit) {
  const std::uint64_t budget = 1 << 20;
  auto cache = make(options(budget));
  std::mt19937 rng(7);
  std::uint64_t kept = 0;
  for (std::uint64_t seq = 1; seq <= 300; ++seq) {
    const std::size_t size = 1 + rng() % (budget / 8);
    if (cache->admit_bytes(MsgId{1 + static_cast<NodeId>(seq % 3), seq}, body(size, static_cast<unsigned>(seq))))
      ++kept;
    auto s = cache->stats();
    ASSERT_LE(s.bytes, budget) << "after " << seq;
    ASSERT_EQ(s.bytes, on_disk()) << "after " << seq;
  }
  EXPECT_EQ(kept, 300u);  // every body was under entry_max (budget / 8)
  EXPECT_GT(cache->stats().evictions, 0u);
  EXPECT_EQ(cache->stats().refused, 0u);
}

TEST_F(NodeCacheTest, RefusesABodyOverEntryMax) {
  auto cache = make(options(1 << 20, 1000));
  EXPECT_FALSE(cache->admit_bytes(A, body(1001, 1)));
  EXPECT_TRUE(cache->admit_bytes(B, body(1000, 2)));
  EXPECT_FALSE(cache->contains(A));
  EXPECT_FALSE(fs::exists(cache->path_of(A)));
  EXPECT_FALSE(fs::exists(cache->path_of(A) + ".tmp"));
  const std::string file = base_ + "/big";
  std::ofstream(file, std::ios::binary) << body(5000, 3);
  EXPECT_FALSE(cache->admit_link(C, file));
  auto s = cache->stats();
  EXPECT_EQ(s.refused, 2u);
  EXPECT_EQ(s.full, 0u);
  EXPECT_EQ(s.entries, 1u);

  // Unset, it is an eighth of the budget.
  auto other = std::make_unique<NodeCache>(NodeCache::Options{base_ + "/other", 80000, 0, 0, {}},
                                           [](const std::string&) {});
  EXPECT_EQ(other->entry_max(), 10000u);
  EXPECT_FALSE(other->admit_bytes(A, body(10001, 4)));
  EXPECT_TRUE(other->admit_bytes(B, body(10000, 5)));
}

TEST_F(NodeCacheTest, ARestartFindsTheEntriesInTheirOrder) {
  const std::size_t size = 40000;
  const std::uint64_t cost = cost_of(size);
  {
    auto cache = make(options(4 * cost, size));
    ASSERT_TRUE(cache->admit_bytes(A, body(size, 1)));
    ASSERT_TRUE(cache->admit_bytes(B, body(size, 2)));
    ASSERT_TRUE(cache->admit_bytes(C, body(size, 3)));
    // Recency as the mtimes will tell it: B oldest, then C, then A.
    set_mtime(cache->path_of(B), 1000000);
    set_mtime(cache->path_of(C), 2000000);
    set_mtime(cache->path_of(A), 3000000);
  }
  // A fill cut off by a crash, and things that are not entries.
  std::ofstream(dir_ + "/2/99.tmp") << "partial";
  std::ofstream(dir_ + "/1/notes") << "mine";
  std::ofstream(dir_ + "/README") << "mine too";
  fs::create_directories(dir_ + "/lost+found");
  log_.clear();

  auto cache = make(options(4 * cost, size));
  auto s = cache->stats();
  EXPECT_EQ(s.entries, 3u);
  EXPECT_EQ(s.bytes, 3 * cost);
  EXPECT_FALSE(fs::exists(dir_ + "/2/99.tmp"));
  EXPECT_TRUE(fs::exists(dir_ + "/1/notes"));
  EXPECT_TRUE(fs::exists(dir_ + "/README"));
  EXPECT_TRUE(fs::exists(dir_ + "/lost+found"));
  EXPECT_NE(log_.find("3 names that are not cache entries"), std::string::npos) << log_;
  EXPECT_NE(log_.find("removed 1 unfinished fills"), std::string::npos) << log_;
  auto fd = cache->open(C);
  ASSERT_TRUE(fd);
  EXPECT_EQ(read_fd(*fd), body(size, 3));

  // Now C is the most recent: the next two admits evict B, then A.
  ASSERT_TRUE(cache->admit_bytes(D, body(size, 4)));  // fits: four
  EXPECT_EQ(cache->stats().evictions, 0u);
  ASSERT_TRUE(cache->admit_bytes(MsgId{3, 14}, body(size, 5)));
  EXPECT_FALSE(cache->contains(B));
  EXPECT_TRUE(cache->contains(A));
  ASSERT_TRUE(cache->admit_bytes(MsgId{3, 15}, body(size, 6)));
  EXPECT_FALSE(cache->contains(A));
  EXPECT_TRUE(cache->contains(C));
  EXPECT_TRUE(fs::exists(dir_ + "/1/notes"));
}

TEST_F(NodeCacheTest, ARestartWithASmallerBudgetShrinksAtOnce) {
  const std::size_t size = 40000;
  const std::uint64_t cost = cost_of(size);
  {
    auto cache = make(options(4 * cost, size));
    for (std::uint64_t seq = 1; seq <= 4; ++seq) ASSERT_TRUE(cache->admit_bytes(MsgId{1, seq}, body(size, 1)));
    for (std::uint64_t seq = 1; seq <= 4; ++seq)
      set_mtime(cache->path_of(MsgId{1, seq}), static_cast<std::time_t>(1000000 * seq));
  }
  auto cache = make(options(2 * cost, size));
  auto s = cache->stats();
  EXPECT_EQ(s.entries, 2u);
  EXPECT_LE(s.bytes, 2 * cost);
  EXPECT_EQ(on_disk(), s.bytes);
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_FALSE(cache->contains(MsgId{1, 1}));  // the oldest went
  EXPECT_FALSE(cache->contains(MsgId{1, 2}));
  EXPECT_TRUE(cache->contains(MsgId{1, 4}));
}

TEST_F(NodeCacheTest, ALoweredBudgetHoldsAfterASweep) {
  const std::size_t size = 40000;
  const std::uint64_t cost = cost_of(size);
  auto cache = make(options(4 * cost, size));
  for (std::uint64_t seq = 1; seq <= 4; ++seq) ASSERT_TRUE(cache->admit_bytes(MsgId{1, seq}, body(size, 1)));
  cache->set_limits(cost, size, 0);
  cache->sweep();
  EXPECT_EQ(cache->stats().entries, 1u);
  EXPECT_TRUE(cache->contains(MsgId{1, 4}));
  EXPECT_EQ(cache->stats().budget, cost);
  EXPECT_EQ(on_disk(), cache->stats().bytes);
}

TEST_F(NodeCacheTest, DropRemovesTheEntryNow) {
  auto cache = make(options(1 << 20));
  ASSERT_TRUE(cache->admit_bytes(A, body(5000, 1)));
  ASSERT_TRUE(cache->admit_bytes(B, body(5000, 2)));
  const auto before = cache->stats().bytes;
  cache->drop(A);
  cache->drop(C);  // not held: nothing happens
  EXPECT_FALSE(cache->contains(A));
  EXPECT_FALSE(fs::exists(cache->path_of(A)));
  EXPECT_FALSE(cache->open(A));
  auto s = cache->stats();
  EXPECT_EQ(s.entries, 1u);
  EXPECT_LT(s.bytes, before);
  EXPECT_EQ(s.bytes, on_disk());
  EXPECT_EQ(s.evictions, 0u);
  EXPECT_TRUE(cache->contains(B));
}

TEST_F(NodeCacheTest, AnFdOpenedBeforeEvictionReadsTheWholeBody) {
  const std::size_t size = 2 << 20;
  auto cache = make(options(cost_of(size) + cost_of(size) / 2, size));
  const std::string first = body(size, 1);
  ASSERT_TRUE(cache->admit_bytes(A, first));
  auto fd = cache->open(A);
  ASSERT_TRUE(fd);
  ASSERT_TRUE(cache->admit_bytes(B, body(size, 2)));  // no room for both: A goes
  EXPECT_FALSE(cache->contains(A));
  EXPECT_FALSE(fs::exists(cache->path_of(A)));
  EXPECT_EQ(read_fd(*fd), first);
  // And after a drop.
  auto fb = cache->open(B);
  ASSERT_TRUE(fb);
  cache->drop(B);
  EXPECT_EQ(read_fd(*fb), body(size, 2));
}

TEST_F(NodeCacheTest, AdmitLinkLinksAFileOfTheSameFilesystem) {
  auto cache = make(options(8 << 20));
  const std::string staging = base_ + "/incoming.1";
  const std::string data = body(300000, 9);
  std::ofstream(staging, std::ios::binary) << data;
  ASSERT_TRUE(cache->admit_link(A, staging));
  struct stat src {}, entry {};
  ASSERT_EQ(::stat(staging.c_str(), &src), 0);
  ASSERT_EQ(::stat(cache->path_of(A).c_str(), &entry), 0);
  EXPECT_EQ(src.st_ino, entry.st_ino);  // one inode: a link, no copy
  EXPECT_EQ(entry.st_nlink, 2u);
  EXPECT_EQ(cache->stats().bytes, static_cast<std::uint64_t>(entry.st_blocks) * 512);
  fs::remove(staging);  // the staging file goes; the entry stays whole
  auto fd = cache->open(A);
  ASSERT_TRUE(fd);
  EXPECT_EQ(read_fd(*fd), data);
  EXPECT_FALSE(cache->admit_link(B, base_ + "/no-such-file"));
  EXPECT_FALSE(cache->contains(B));
  EXPECT_FALSE(fs::exists(cache->path_of(B) + ".tmp"));
}

TEST_F(NodeCacheTest, AdmitLinkCopiesAcrossFilesystems) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  mount_ = base_ + "/other-fs";
  fs::create_directories(mount_);
  if (::mount("tmpfs", mount_.c_str(), "tmpfs", 0, "size=4m") != 0) {
    mount_.clear();
    GTEST_SKIP() << "cannot mount a tmpfs here";
  }
  auto cache = make(options(8 << 20));
  const std::string staging = mount_ + "/incoming.1";
  const std::string data = body(200000, 4);
  std::ofstream(staging, std::ios::binary) << data;
  ASSERT_TRUE(cache->admit_link(A, staging));
  struct stat src {}, entry {};
  ASSERT_EQ(::stat(staging.c_str(), &src), 0);
  ASSERT_EQ(::stat(cache->path_of(A).c_str(), &entry), 0);
  EXPECT_NE(src.st_dev, entry.st_dev);
  EXPECT_EQ(entry.st_nlink, 1u);
  EXPECT_EQ(entry.st_mode & 0777, 0600u);
  auto fd = cache->open(A);
  ASSERT_TRUE(fd);
  EXPECT_EQ(read_fd(*fd), data);
}

TEST_F(NodeCacheTest, AFullDiskRefusesAndLeavesNothingBehind) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  fs::create_directories(dir_);
  if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=1m,mode=0700") != 0) GTEST_SKIP() << "cannot mount a tmpfs here";
  mount_ = dir_;
  auto cache = make(options(64 << 20, 4 << 20));  // a budget the disk cannot give
  ASSERT_TRUE(cache->admit_bytes(A, body(600000, 1)));
  log_.clear();
  EXPECT_FALSE(cache->admit_bytes(B, body(600000, 2)));
  EXPECT_FALSE(cache->admit_bytes(C, body(600000, 3)));
  const std::string staging = base_ + "/incoming.1";
  std::ofstream(staging, std::ios::binary) << body(600000, 4);
  EXPECT_FALSE(cache->admit_link(D, staging));  // EXDEV, then a copy that does not fit
  auto s = cache->stats();
  EXPECT_EQ(s.refused, 3u);
  EXPECT_EQ(s.full, 3u);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.bytes, on_disk());
  for (const MsgId& id : {B, C, D}) {
    EXPECT_FALSE(fs::exists(cache->path_of(id)));
    EXPECT_FALSE(fs::exists(cache->path_of(id) + ".tmp"));
  }
  // One line for the three, not three.
  std::size_t lines = 0;
  for (std::size_t at = 0; (at = log_.find("cache: not kept", at)) != std::string::npos; ++at) ++lines;
  EXPECT_EQ(lines, 1u) << log_;
  EXPECT_NE(log_.find("No space left on device"), std::string::npos) << log_;
  auto fd = cache->open(A);
  ASSERT_TRUE(fd);
  EXPECT_EQ(read_fd(*fd), body(600000, 1));
}

TEST_F(NodeCacheTest, TheReserveEvictsOrRefuses) {
  const std::size_t size = 40000;
  const std::uint64_t cost = cost_of(size);
  std::uint64_t free = 100 * cost;
  auto o = options(100 * cost, size);
  o.reserve = 10 * cost;
  o.free_space = [&free](const std::string&) { return std::optional<std::uint64_t>(free); };
  auto cache = make(o);
  for (std::uint64_t seq = 1; seq <= 5; ++seq) {
    ASSERT_TRUE(cache->admit_bytes(MsgId{1, seq}, body(size, 1)));
    free -= cost;
  }
  // Something else fills the disk to just under the reserve: the oldest
  // entries make room for the new one.
  free = 10 * cost + cost / 2;
  ASSERT_TRUE(cache->admit_bytes(MsgId{1, 6}, body(size, 1)));
  EXPECT_FALSE(cache->contains(MsgId{1, 1}));
  EXPECT_TRUE(cache->contains(MsgId{1, 2}));
  EXPECT_EQ(cache->stats().evictions, 1u);
  // A sweep gives the reserve back when the disk shrinks under it.
  free = 8 * cost;
  cache->sweep();
  EXPECT_EQ(cache->stats().entries, 3u);
  EXPECT_FALSE(cache->contains(MsgId{1, 3}));
  EXPECT_TRUE(cache->contains(MsgId{1, 4}));
  // With everything gone and still no room, an admit is refused.
  free = 0;
  EXPECT_FALSE(cache->admit_bytes(MsgId{1, 7}, body(size, 1)));
  auto s = cache->stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.refused, 1u);
  EXPECT_EQ(s.full, 1u);
  EXPECT_NE(log_.find("below cache_reserve_bytes"), std::string::npos) << log_;
}

TEST_F(NodeCacheTest, BudgetZeroDisablesTheCache) {
  auto cache = make(options(0));
  EXPECT_FALSE(cache->enabled());
  EXPECT_FALSE(cache->admit_bytes(A, "x"));
  const std::string file = base_ + "/f";
  std::ofstream(file) << "x";
  EXPECT_FALSE(cache->admit_link(B, file));
  EXPECT_FALSE(cache->open(A));
  EXPECT_FALSE(fs::exists(dir_));  // nothing was made
  auto s = cache->stats();
  EXPECT_EQ(s.entries + s.bytes + s.hits + s.misses + s.refused, 0u);

  // A cache turned off empties what an earlier run kept.
  {
    auto on = make(options(1 << 20));
    ASSERT_TRUE(on->admit_bytes(A, body(1000, 1)));
    ASSERT_TRUE(on->admit_bytes(B, body(0, 2)));  // no blocks at all, still an entry
  }
  auto off = make(options(0));
  EXPECT_EQ(off->stats().entries, 0u);
  EXPECT_FALSE(fs::exists(off->path_of(A)));
  EXPECT_FALSE(fs::exists(off->path_of(B)));
}

TEST_F(NodeCacheTest, AnEntryRemovedBehindItsBackIsAMiss) {
  auto cache = make(options(1 << 20));
  ASSERT_TRUE(cache->admit_bytes(A, body(1000, 1)));
  fs::remove(cache->path_of(A));
  EXPECT_FALSE(cache->open(A));
  auto s = cache->stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
  EXPECT_EQ(s.misses, 1u);
  ASSERT_TRUE(cache->admit_bytes(A, body(1000, 1)));  // and it can be filled again
  auto fd = cache->open(A);
  ASSERT_TRUE(fd);
  EXPECT_EQ(read_fd(*fd), body(1000, 1));
  // A whole origin directory removed by hand: the next fill makes it again.
  fs::remove_all(fs::path(dir_) / "1");
  ASSERT_TRUE(cache->admit_bytes(B, body(1000, 2)));
  fd = cache->open(B);
  ASSERT_TRUE(fd);
  EXPECT_EQ(read_fd(*fd), body(1000, 2));
}

}  // namespace
}  // namespace porcupine::store
