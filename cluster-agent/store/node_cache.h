/* SPDX-License-Identifier: MIT */
// node_cache.h - the node's bounded cache of message bodies it does not
// hold as a replica.
//
// A node reads mail it holds no replica of (a user whose messages live on
// other nodes reads them here): each body it fetches from a holder may be
// kept here, so the next read of it is local. The cache is one directory,
// one LRU and one budget per node, owned by the agent; readers (Dovecot,
// through the agent's local API) only ever get file descriptors.
//
// Layout: <dir>/<origin>/<seq>, one file per message (MsgId), directories
// mode 0700, files 0600 (a hard-linked staging file keeps its own mode).
// Nothing else in <dir> is touched: a name that is not an entry is left
// alone and logged once at start.
//
// Size is what the disk gives each entry, st_blocks * 512. A hard link
// shared with a staging file or with another entry counts in full for each
// entry: an overcount, which keeps the cache below its budget.
//
// The cache is disposable: it is never fsynced. A fill writes <seq>.tmp (or
// links the file under that name) and renames it, so a crash leaves no
// partial entry; the start-up scan removes stray *.tmp files and seeds the
// LRU order from the entries' mtimes (refreshed at most once an hour per
// entry on a hit, only for that purpose).
//
// Bounds:
//   budget      the sum of entry sizes after any admit or sweep (0: no
//               cache at all; nothing is admitted, what the directory
//               holds is removed)
//   entry_max   a larger body is never admitted (0: budget / 8)
//   reserve     free space to keep on the directory's filesystem: an admit
//               that would go below it evicts, or is refused; a sweep
//               evicts until it is free again (0: no reserve)
// A refusal is never an error for the caller: it serves the body from
// wherever it has it (the staging file, memory) and simply does not keep it.
// A disk that refuses a write (ENOSPC, EDQUOT) is logged at most once a
// minute.
//
// Readers: open() hands out an fd; evicting or dropping the entry while
// the fd is open only removes the name (POSIX), so the reader still reads
// the whole body. The caller owns and closes the fd.
//
// Thread: the agent's event loop only (no locking). The agent calls sweep()
// from its periodic tick and drop() for a message it expunges; the local
// API's open path calls open(), and admit_link()/admit_bytes() after
// fetching a body from a holder.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <list>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/types.h"

namespace porcupine::store {

class NodeCache {
 public:
  struct Options {
    std::string dir;                   // cache_dir: created (0700) if missing, unless budget is 0
    std::uint64_t budget = 1ull << 30;  // cache_size, bytes; 0 disables the cache
    std::uint64_t entry_max = 0;       // cache_entry_max, bytes; 0: budget / 8
    std::uint64_t reserve = 0;         // cache_reserve_bytes on dir's filesystem; 0: none
    // Free bytes on dir's filesystem (statvfs f_bavail * f_frsize) or
    // nothing if it cannot be measured; only tests replace it.
    std::function<std::optional<std::uint64_t>(const std::string& dir)> free_space;
  };
  using LogFn = std::function<void(const std::string&)>;

  // Scans `dir` (see above), then sweeps, so a budget lowered since the
  // last run holds at once. Throws std::runtime_error (one line) if the
  // directory cannot be created or read while the cache is enabled.
  NodeCache(Options opt, LogFn log);
  NodeCache(const NodeCache&) = delete;
  NodeCache& operator=(const NodeCache&) = delete;

  bool enabled() const { return budget_ > 0; }

  // An O_RDONLY|O_CLOEXEC fd of the entry, which becomes the most recently
  // used (a hit); nothing if there is no entry (a miss). The caller closes it.
  //
  // Owners: an entry remembers (in memory) whose message it is, as a
  // nonzero tag of the user the caller gives at admit. An open that names
  // an owner finds only that owner's entries: one admitted for another
  // user, or not known since a restart, is a miss, so the caller fetches it
  // from a holder (which checks the user) and admits it again, which tags
  // it. Owner 0 finds any entry.
  std::optional<int> open(const MsgId& id, std::uint64_t owner = 0);
  bool contains(const MsgId& id) const { return map_.count(id) > 0; }

  // Keeps a body as the entry of `id` (most recently used), evicting least
  // recently used entries to make room. False if refused: the cache is off,
  // the body is over entry_max, or the disk has no room (see above). A body
  // already held is only marked used (bodies never change under one id).
  //
  // admit_link: a hard link of an existing file (a staging file on the
  // same filesystem), a copy where link(2) says EXDEV.
  bool admit_link(const MsgId& id, const std::string& path, std::uint64_t owner = 0);
  // admit_bytes: the bytes written to a new file.
  bool admit_bytes(const MsgId& id, const char* data, std::size_t size, std::uint64_t owner = 0);
  bool admit_bytes(const MsgId& id, std::string_view data, std::uint64_t owner = 0) {
    return admit_bytes(id, data.data(), data.size(), owner);
  }

  // Removes the entry now (an expunged message); not an eviction.
  void drop(const MsgId& id);

  // The periodic pass: evicts down to the budget (lowered by set_limits)
  // and until the filesystem has the reserve free again.
  void sweep();

  // New bounds (a reload); the next admit or sweep enforces them. A budget
  // of 0 on a cache started enabled empties it and admits nothing more.
  void set_limits(std::uint64_t budget, std::uint64_t entry_max, std::uint64_t reserve);

  struct Stats {
    std::uint64_t bytes = 0;      // sum of entry sizes (st_blocks * 512)
    std::uint64_t budget = 0;
    std::uint64_t entries = 0;
    std::uint64_t hits = 0;       // open() found an entry
    std::uint64_t misses = 0;     // open() found none
    std::uint64_t evictions = 0;  // entries removed for the budget or the reserve
    std::uint64_t refused = 0;    // admits refused: too big, or no room on the disk
    std::uint64_t full = 0;       // of those, for want of room (ENOSPC, EDQUOT, below the reserve)
  };
  Stats stats() const;
  const std::string& dir() const { return dir_; }
  std::uint64_t entry_max() const { return entry_max_; }
  // The entry's path (whether or not it exists).
  std::string path_of(const MsgId& id) const;

 private:
  struct MsgIdHash {
    std::size_t operator()(const MsgId& id) const noexcept {
      return std::hash<std::uint64_t>()(id.seq * 0x9e3779b97f4a7c15ull ^ id.origin);
    }
  };
  struct Entry {
    std::uint64_t bytes = 0;
    std::int64_t mtime = 0;  // seconds; refreshed at most hourly on a hit
    std::list<MsgId>::iterator pos;
    std::uint64_t owner = 0;  // 0: not known (scanned at start)
  };

  void scan();
  // Makes room for `bytes` more within the budget and the reserve; false
  // (counted, logged) when the reserve cannot be met even by emptying.
  bool make_room(std::uint64_t bytes);
  bool ensure_origin_dir(NodeId origin);
  // Renames `tmp` to the entry of `id` and accounts for it; false if it
  // cannot be kept within the budget after all.
  bool install(const MsgId& id, const std::string& tmp, std::uint64_t owner);
  // An admit of an entry already held: marked used, and tagged.
  bool readmit(Entry& e, std::uint64_t owner);
  // 0, or the errno of what failed.
  int copy_file(const std::string& from, const std::string& tmp);
  void evict_tail();
  void remove(const MsgId& id);
  void refuse(bool for_room, const std::string& why);
  // Logs a failure, at most one line a minute (then with a count of the rest).
  void note(const std::string& what);
  std::optional<std::uint64_t> free_space() const;

  std::string dir_;
  std::uint64_t budget_, entry_max_, reserve_;
  std::function<std::optional<std::uint64_t>(const std::string&)> free_space_fn_;
  LogFn log_;

  std::list<MsgId> lru_;  // front: most recently used
  std::unordered_map<MsgId, Entry, MsgIdHash> map_;
  std::set<NodeId> origin_dirs_;  // <dir>/<origin> known to exist
  std::uint64_t used_ = 0;
  Stats counts_;

  // Refusals that say why (a full disk, a directory that cannot be
  // written): one line at once, then at most one a minute that counts the
  // others.
  std::int64_t full_logged_ = std::numeric_limits<std::int64_t>::min() / 2;  // steady-clock seconds
  std::uint64_t full_unlogged_ = 0;
};

}  // namespace porcupine::store
