// SPDX-License-Identifier: MIT
// node_cache.cc - see node_cache.h.
#include "store/node_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace porcupine::store {

namespace {

// An entry's mtime seeds the LRU order after a restart; a hit refreshes it
// only when it is older than this, so reads do not turn into inode writes.
constexpr std::int64_t kTouchEvery = 3600;  // s
// Refusals for want of room are logged at most this often.
constexpr std::int64_t kFullLogEvery = 60;  // s
// The least an entry is counted as, so that every entry costs something
// against the budget (an empty file has no blocks, and a filesystem that
// stores tiny files inline reports none): the budget bounds their number.
constexpr std::uint64_t kMinEntryBytes = 512;

std::string errno_text(int e) { return std::strerror(e); }

std::int64_t steady_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::int64_t wall_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string mib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

std::uint64_t entry_bytes(const struct stat& st) {
  return std::max<std::uint64_t>(static_cast<std::uint64_t>(st.st_blocks) * 512, kMinEntryBytes);
}

// A decimal number exactly as path_of() writes it (no sign, no leading
// zero), so that a name parsed here names the same file again.
template <typename T>
bool parse_decimal(std::string_view s, T& out) {
  if (s.empty() || (s.size() > 1 && s[0] == '0')) return false;
  if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

// 0, or the errno of the failed write.
int write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return 0;
}

bool is_room_error(int e) { return e == ENOSPC || e == EDQUOT; }

}  // namespace

NodeCache::NodeCache(Options opt, LogFn log)
    : dir_(std::move(opt.dir)), free_space_fn_(std::move(opt.free_space)), log_(std::move(log)) {
  set_limits(opt.budget, opt.entry_max, opt.reserve);
  if (dir_.empty()) throw std::runtime_error("cache: no directory configured");
  scan();
  sweep();
}

void NodeCache::set_limits(std::uint64_t budget, std::uint64_t entry_max, std::uint64_t reserve) {
  budget_ = budget;
  // An entry larger than the whole budget could never be kept.
  entry_max_ = std::min(entry_max ? entry_max : budget / 8, budget);
  reserve_ = reserve;
}

std::string NodeCache::path_of(const MsgId& id) const {
  return dir_ + "/" + std::to_string(id.origin) + "/" + std::to_string(id.seq);
}

NodeCache::Stats NodeCache::stats() const {
  Stats s = counts_;
  s.bytes = used_;
  s.budget = budget_;
  s.entries = map_.size();
  return s;
}

std::optional<std::uint64_t> NodeCache::free_space() const {
  if (free_space_fn_) return free_space_fn_(dir_);
  struct statvfs st {};
  if (::statvfs(dir_.c_str(), &st) != 0) return std::nullopt;
  return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
}

// ---------------------------------------------------------------- start-up

void NodeCache::scan() {
  struct stat st {};
  if (::stat(dir_.c_str(), &st) != 0) {
    if (const int e = errno; e != ENOENT) {
      const std::string why = "cache: " + dir_ + " unusable: " + errno_text(e);
      if (enabled()) throw std::runtime_error(why);
      log_(why);
      return;
    }
    if (!enabled()) return;  // off, and nothing was ever kept
    // The parent is made as the spool's directories are (std::filesystem);
    // the cache directory itself holds other users' mail: the agent's only.
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) throw std::runtime_error("cache: cannot create " + dir_ + ": " + ec.message());
    if (::chmod(dir_.c_str(), 0700) != 0) {
      const int e = errno;
      throw std::runtime_error("cache: cannot chmod " + dir_ + ": " + errno_text(e));
    }
    return;
  }
  if (!S_ISDIR(st.st_mode)) {
    const std::string why = "cache: " + dir_ + " is not a directory";
    if (enabled()) throw std::runtime_error(why);
    log_(why);
    return;
  }
  if ((st.st_mode & 077) != 0) {
    if (::chmod(dir_.c_str(), 0700) == 0) {
      log_("cache: " + dir_ + " was open to others; made it 0700");
    } else {
      const int e = errno;
      log_("warning: cache: " + dir_ + " is open to others and cannot be made 0700: " + errno_text(e));
    }
  }

  struct Found {
    std::int64_t sec, nsec;
    MsgId id;
    std::uint64_t bytes;
  };
  std::vector<Found> found;
  std::uint64_t unknown = 0, tmp_removed = 0;
  std::string unknown_example;
  auto stranger = [&](const std::string& path) {
    if (unknown++ == 0) unknown_example = path;
  };

  DIR* top = ::opendir(dir_.c_str());
  if (!top) {
    const int e = errno;
    const std::string why = "cache: cannot read " + dir_ + ": " + errno_text(e);
    if (enabled()) throw std::runtime_error(why);
    log_(why);
    return;
  }
  while (struct dirent* d = ::readdir(top)) {
    const std::string name = d->d_name;
    if (name == "." || name == "..") continue;
    const std::string sub = dir_ + "/" + name;
    NodeId origin = 0;
    struct stat sst {};
    if (!parse_decimal(name, origin) || origin == kNoNode || ::lstat(sub.c_str(), &sst) != 0 ||
        !S_ISDIR(sst.st_mode)) {
      stranger(sub);
      continue;
    }
    DIR* od = ::opendir(sub.c_str());
    if (!od) {
      const int e = errno;
      log_("cache: cannot read " + sub + ": " + errno_text(e) + " (left alone)");
      continue;
    }
    origin_dirs_.insert(origin);
    while (struct dirent* e = ::readdir(od)) {
      std::string_view fname = e->d_name;
      if (fname == "." || fname == "..") continue;
      const std::string path = sub + "/" + std::string(fname);
      std::uint64_t seq = 0;
      if (fname.ends_with(".tmp") && parse_decimal(fname.substr(0, fname.size() - 4), seq)) {
        // A fill the agent did not finish: never an entry.
        if (::unlink(path.c_str()) == 0) ++tmp_removed;
        continue;
      }
      struct stat fst {};
      if (!parse_decimal(fname, seq) || ::lstat(path.c_str(), &fst) != 0 || !S_ISREG(fst.st_mode)) {
        stranger(path);
        continue;
      }
      found.push_back(Found{fst.st_mtim.tv_sec, fst.st_mtim.tv_nsec, MsgId{origin, seq}, entry_bytes(fst)});
    }
    ::closedir(od);
  }
  ::closedir(top);

  // Oldest first, each pushed to the front: the newest ends most recent.
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return std::tie(a.sec, a.nsec, a.id) < std::tie(b.sec, b.nsec, b.id);
  });
  for (const Found& f : found) {
    lru_.push_front(f.id);
    map_[f.id] = Entry{f.bytes, f.sec, lru_.begin(), 0};
    used_ += f.bytes;
  }
  log_("cache: " + dir_ + ": " + std::to_string(map_.size()) + " entries, " + mib(used_) + " (budget " +
       mib(budget_) + ")" + (tmp_removed ? "; removed " + std::to_string(tmp_removed) + " unfinished fills" : ""));
  if (unknown > 0)
    log_("cache: " + dir_ + " holds " + std::to_string(unknown) + " names that are not cache entries (e.g. " +
         unknown_example + "); left alone");
}

// ---------------------------------------------------------------- reads

std::optional<int> NodeCache::open(const MsgId& id, std::uint64_t owner) {
  if (!enabled()) return std::nullopt;
  auto it = map_.find(id);
  if (it == map_.end() || (owner != 0 && it->second.owner != owner)) {
    ++counts_.misses;
    return std::nullopt;
  }
  const std::string path = path_of(id);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    // Removed behind the agent's back: forgotten, the next fetch fills it
    // again. Anything else (out of descriptors) passes: the entry stays.
    if (e == ENOENT) remove(id);
    else note("cannot open " + path + ": " + errno_text(e));
    ++counts_.misses;
    return std::nullopt;
  }
  Entry& entry = it->second;
  lru_.splice(lru_.begin(), lru_, entry.pos);
  ++counts_.hits;
  const std::int64_t now = wall_seconds();
  if (now - entry.mtime >= kTouchEvery && ::futimens(fd, nullptr) == 0) entry.mtime = now;
  return fd;
}

// ---------------------------------------------------------------- fills

bool NodeCache::readmit(Entry& e, std::uint64_t owner) {
  lru_.splice(lru_.begin(), lru_, e.pos);
  if (owner != 0) e.owner = owner;
  return true;
}

bool NodeCache::admit_bytes(const MsgId& id, const char* data, std::size_t size, std::uint64_t owner) {
  if (!enabled()) return false;
  if (auto it = map_.find(id); it != map_.end()) return readmit(it->second, owner);
  if (size > entry_max_) {
    refuse(false, "");
    return false;
  }
  // What the file will take, as far as can be told before it is written;
  // install() settles the difference with the real block count.
  const std::uint64_t estimate = std::max<std::uint64_t>((size + 4095) / 4096 * 4096, kMinEntryBytes);
  if (!make_room(estimate) || !ensure_origin_dir(id.origin)) return false;
  const std::string tmp = path_of(id) + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 && errno == ENOENT) {
    // The directory went away under the agent (removed by hand): made again.
    origin_dirs_.erase(id.origin);
    if (!ensure_origin_dir(id.origin)) return false;
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  }
  if (fd < 0) {
    const int e = errno;
    refuse(is_room_error(e), "cannot create " + tmp + ": " + errno_text(e));
    return false;
  }
  int e = write_all(fd, data, size);
  if (::close(fd) != 0 && e == 0) e = errno;
  if (e != 0) {
    ::unlink(tmp.c_str());
    refuse(is_room_error(e), "cannot write " + tmp + ": " + errno_text(e));
    return false;
  }
  return install(id, tmp, owner);
}

bool NodeCache::admit_link(const MsgId& id, const std::string& path, std::uint64_t owner) {
  if (!enabled()) return false;
  if (auto it = map_.find(id); it != map_.end()) return readmit(it->second, owner);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int e = errno;
    refuse(false, "cannot keep " + path + ": " + errno_text(e));
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    refuse(false, "cannot keep " + path + ": not a file");
    return false;
  }
  if (static_cast<std::uint64_t>(st.st_size) > entry_max_) {
    refuse(false, "");
    return false;
  }
  if (!make_room(entry_bytes(st)) || !ensure_origin_dir(id.origin)) return false;
  const std::string tmp = path_of(id) + ".tmp";
  ::unlink(tmp.c_str());
  if (::link(path.c_str(), tmp.c_str()) != 0) {
    int e = errno;
    // Another filesystem (cache_dir set apart from the spool), or one
    // without hard links: a copy.
    if (e == EXDEV || e == EPERM) e = copy_file(path, tmp);
    if (e != 0) {
      ::unlink(tmp.c_str());
      refuse(is_room_error(e), "cannot keep " + path + " as " + tmp + ": " + errno_text(e));
      return false;
    }
  }
  return install(id, tmp, owner);
}

int NodeCache::copy_file(const std::string& from, const std::string& tmp) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return errno;
  int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (out < 0) {
    const int e = errno;
    ::close(in);
    return e;
  }
  int e = 0;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) e = errno;
    if (n <= 0) break;
    if ((e = write_all(out, buf, static_cast<std::size_t>(n))) != 0) break;
  }
  ::close(in);
  if (::close(out) != 0 && e == 0) e = errno;
  return e;
}

bool NodeCache::install(const MsgId& id, const std::string& tmp, std::uint64_t owner) {
  struct stat st {};
  if (::lstat(tmp.c_str(), &st) != 0) {
    const int e = errno;
    refuse(false, "cannot stat " + tmp + ": " + errno_text(e));
    return false;
  }
  const std::uint64_t bytes = entry_bytes(st);
  while (used_ + bytes > budget_ && !lru_.empty()) evict_tail();
  if (used_ + bytes > budget_) {
    ::unlink(tmp.c_str());
    refuse(false, "");
    return false;
  }
  const std::string path = path_of(id);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    refuse(false, "cannot rename " + tmp + ": " + errno_text(e));
    return false;
  }
  lru_.push_front(id);
  map_[id] = Entry{bytes, st.st_mtim.tv_sec, lru_.begin(), owner};
  used_ += bytes;
  return true;
}

bool NodeCache::ensure_origin_dir(NodeId origin) {
  if (origin_dirs_.count(origin)) return true;
  // The cache directory itself goes missing only if it was off at start
  // (budget 0, then raised) or removed by hand.
  if (::mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST) {
    const int e = errno;
    refuse(is_room_error(e), "cannot create " + dir_ + ": " + errno_text(e));
    return false;
  }
  const std::string sub = dir_ + "/" + std::to_string(origin);
  if (::mkdir(sub.c_str(), 0700) != 0 && errno != EEXIST) {
    const int e = errno;
    refuse(is_room_error(e), "cannot create " + sub + ": " + errno_text(e));
    return false;
  }
  origin_dirs_.insert(origin);
  return true;
}

bool NodeCache::make_room(std::uint64_t bytes) {
  while (used_ + bytes > budget_ && !lru_.empty()) evict_tail();
  if (reserve_ == 0) return true;
  auto free = free_space();
  if (!free || *free >= reserve_ + bytes) return true;
  // Evicting an entry frees its blocks unless another name still links
  // them (a staging file): this may stop short, and the next admit or
  // sweep measures again.
  const std::uint64_t deficit = reserve_ + bytes - *free;
  std::uint64_t freed = 0;
  while (freed < deficit && !lru_.empty()) {
    freed += map_.at(lru_.back()).bytes;
    evict_tail();
  }
  if (freed >= deficit) return true;
  refuse(true, "the filesystem has " + mib(*free + freed) + " free, below cache_reserve_bytes (" + mib(reserve_) +
                   ")");
  return false;
}

// ---------------------------------------------------------------- removal

void NodeCache::remove(const MsgId& id) {
  auto it = map_.find(id);
  if (it == map_.end()) return;
  const std::string path = path_of(id);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    const int e = errno;
    note("cannot remove " + path + ": " + errno_text(e) + " (forgotten; the next start sees it again)");
  }
  used_ -= it->second.bytes;
  lru_.erase(it->second.pos);
  map_.erase(it);
}

void NodeCache::evict_tail() {
  remove(lru_.back());
  ++counts_.evictions;
}

void NodeCache::drop(const MsgId& id) { remove(id); }

void NodeCache::sweep() {
  // Off: nothing is kept, not even entries of no size.
  while (!lru_.empty() && (budget_ == 0 || used_ > budget_)) evict_tail();
  if (reserve_ > 0 && !lru_.empty()) {
    if (auto free = free_space(); free && *free < reserve_) {
      const std::uint64_t deficit = reserve_ - *free;
      std::uint64_t freed = 0, evicted = 0;
      while (freed < deficit && !lru_.empty()) {
        freed += map_.at(lru_.back()).bytes;
        evict_tail();
        ++evicted;
      }
      log_("cache: " + dir_ + "'s filesystem has " + mib(*free) + " free, below cache_reserve_bytes (" +
           mib(reserve_) + "): evicted " + std::to_string(evicted) + " entries (" + mib(freed) + ")");
    }
  }
  if (full_unlogged_ > 0 && steady_seconds() - full_logged_ >= kFullLogEvery) {
    log_("cache: " + std::to_string(full_unlogged_) + " more failures since the last line");
    full_unlogged_ = 0;
    full_logged_ = steady_seconds();
  }
}

void NodeCache::refuse(bool for_room, const std::string& why) {
  ++counts_.refused;
  if (for_room) ++counts_.full;
  if (why.empty()) return;  // over entry_max or the budget: routine, counted only
  note("not kept: " + why);
}

void NodeCache::note(const std::string& what) {
  // A full disk or a broken directory would say the same for every fill.
  const std::int64_t now = steady_seconds();
  if (now - full_logged_ < kFullLogEvery) {
    ++full_unlogged_;
    return;
  }
  std::string line = "cache: " + what;
  if (full_unlogged_ > 0) line += " (and " + std::to_string(full_unlogged_) + " more failures since the last line)";
  log_(line);
  full_unlogged_ = 0;
  full_logged_ = now;
}

}  // namespace porcupine::store
