// SPDX-License-Identifier: MIT
// records.cc - merge rules of the replicated hard state (see records.h).
#include "records.h"

#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <map>

namespace porcupine {

const char* const kFlagNames[5] = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"};

namespace {

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

int system_flag(const std::string& lowered) {
  for (int i = 0; i < 5; ++i)
    if (lowered == lower(kFlagNames[i])) return i;
  return -1;
}

// A flag's value as a record has it, and the version of that value.
struct FlagValue {
  std::string name;
  bool set = false;
  Version version;
};
using FlagState = std::map<std::string, FlagValue>;  // by lower-cased name

// Every flag the record names: set ones at the base version, then marks.
// A flag it does not name is clear at its base version.
FlagState flag_state(const MessageRecord& r) {
  FlagState out;
  for (int i = 0; i < 5; ++i)
    if (r.flags & (1u << i)) out[lower(kFlagNames[i])] = {kFlagNames[i], true, r.flags_version};
  for (const auto& k : r.keywords) out[lower(k)] = {k, true, r.flags_version};
  for (const auto& m : r.flag_marks) out[lower(m.name)] = {m.name, m.set, m.version};
  return out;
}

// Writes `state` back into `r` over the base version `base`.
void set_flag_state(MessageRecord& r, const FlagState& state, Version base) {
  r.flags = 0;
  r.keywords.clear();
  r.flag_marks.clear();
  r.flags_version = base;
  for (const auto& [key, v] : state) {
    if (v.set) {
      int bit = system_flag(key);
      if (bit >= 0) r.flags |= 1u << bit;
      else r.keywords.push_back(v.name);
    }
    if (v.version > base) r.flag_marks.push_back({v.name, v.set, v.version});
  }
}

// Per flag, the newer value wins; the base is the newer base.
bool merge_flags(MessageRecord& cur, const MessageRecord& in) {
  if (in.flags_version <= cur.flags_version && in.flag_marks.empty()) return false;
  FlagState a = flag_state(cur), b = flag_state(in);
  const Version base = std::max(cur.flags_version, in.flags_version);
  FlagState out;
  auto pick = [&](const std::string& key) {
    auto x = a.find(key), y = b.find(key);
    FlagValue va = x != a.end() ? x->second : FlagValue{y->second.name, false, cur.flags_version};
    FlagValue vb = y != b.end() ? y->second : FlagValue{x->second.name, false, in.flags_version};
    const FlagValue& w = vb.version > va.version ? vb : va;
    if (w.set || w.version > base) out[key] = w;
  };
  for (const auto& [key, v] : a) pick(key);
  for (const auto& [key, v] : b)
    if (!a.count(key)) pick(key);
  MessageRecord next = cur;
  set_flag_state(next, out, base);
  if (next.flags == cur.flags && next.keywords == cur.keywords && next.flag_marks == cur.flag_marks &&
      next.flags_version == cur.flags_version)
    return false;
  cur.flags = next.flags;
  cur.keywords = std::move(next.keywords);
  cur.flag_marks = std::move(next.flag_marks);
  cur.flags_version = next.flags_version;
  return true;
}

}  // namespace

void mark_flags(MessageRecord& r, Version v, std::uint32_t add_flags, std::uint32_t remove_flags,
                const std::vector<std::string>& add_keywords,
                const std::vector<std::string>& remove_keywords) {
  MessageRecord d;
  d.flag_marks = flag_marks(v, add_flags, remove_flags, add_keywords, remove_keywords);
  merge_flags(r, d);
}

std::vector<FlagMark> flag_marks(Version v, std::uint32_t add_flags, std::uint32_t remove_flags,
                                 const std::vector<std::string>& add_keywords,
                                 const std::vector<std::string>& remove_keywords) {
  FlagState s;
  for (int i = 0; i < 5; ++i) {
    if (remove_flags & (1u << i)) s[lower(kFlagNames[i])] = {kFlagNames[i], false, v};
    if (add_flags & (1u << i)) s[lower(kFlagNames[i])] = {kFlagNames[i], true, v};
  }
  for (const auto& k : remove_keywords) s[lower(k)] = {k, false, v};
  for (const auto& k : add_keywords) s[lower(k)] = {k, true, v};
  std::vector<FlagMark> out;
  for (const auto& [key, f] : s)
    if (system_flag(key) >= 0 || !key.empty()) out.push_back({f.name, f.set, f.version});
  return out;
}

namespace {
// A fixed little-endian encoding of values, hashed with XXH64: the same on
// every node, whatever its compiler or the order it met the values in.
class DigestInput {
 public:
  void put(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) b_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void put(const std::string& s) {
    put(s.size());
    b_ += s;
  }
  void put(const Version& v) {
    put(static_cast<std::uint64_t>(v.time));
    put(v.node);
  }
  std::uint64_t digest() const { return XXH64(b_.data(), b_.size(), 0); }

 private:
  std::string b_;
};
}  // namespace

std::uint64_t record_digest(const MessageRecord& r) {
  DigestInput d;
  d.put(r.id.origin);
  d.put(r.id.seq);
  d.put(r.folder);
  d.put(r.uidvalidity);
  d.put(r.uid);
  d.put(r.flags);
  d.put(r.keywords.size());
  for (const auto& k : r.keywords) d.put(k);
  d.put((r.expunged ? 1u : 0u) | (r.has_body ? 2u : 0u));
  return d.digest();
}

std::uint64_t copy_digest(const MessageRecord& r) {
  return record_digest(r) + static_cast<std::uint64_t>(r.replicas_version.time) * 0x9e3779b97f4a7c15ULL +
         r.replicas_version.node;
}

std::uint64_t profile_digest(const Profile& p) {
  DigestInput d;
  d.put(p.user);
  d.put(p.version);
  d.put(p.password_hash);
  d.put(p.quota_bytes);
  d.put((p.enabled ? 1u : 0u) | (p.deleted ? 2u : 0u));
  d.put(p.folders.size());
  for (const auto& [name, f] : p.folders) {
    d.put(name);
    d.put(f.uidvalidity);
    d.put(f.version);
    d.put(f.deleted ? 1u : 0u);
    d.put(f.uid_reserved);
    d.put(f.takeovers.size());
    d.put(f.renamed_to);
  }
  d.put(p.subscriptions.size());
  for (const auto& [name, sub] : p.subscriptions) {
    d.put(name);
    d.put(sub.on ? 1u : 0u);
    d.put(sub.version);
  }
  return d.digest();
}

bool merge_record(MessageRecord& cur, const MessageRecord& in, Time now) {
  bool changed = false;
  if ((cur.replicas.empty() && !in.replicas.empty()) || newer(in.replicas_version, cur.replicas_version)) {
    if (cur.replicas != in.replicas || cur.replicas_version != in.replicas_version) changed = true;
    cur.replicas = in.replicas;
    cur.replicas_version = std::max(cur.replicas_version, in.replicas_version);
  }
  if (in.has_body && !cur.has_body && !cur.expunged && !in.expunged) {
    cur.has_body = true;
    cur.body = in.body;
    cur.size = in.size;
    cur.internal_date = in.internal_date;
    changed = true;
  }
  // Sizes worked out from the body are the same wherever they were; a
  // copy that lacks them (an older node's) learns them from one that has.
  if (cur.vsize == 0 && in.vsize != 0 && !cur.expunged) {
    cur.vsize = in.vsize;
    cur.hdr_size = in.hdr_size;
    changed = true;
  }
  if (cur.meta.empty() && !in.meta.empty() && !cur.expunged) {
    cur.meta = in.meta;
    changed = true;
  }
  if (cur.delivery_key.empty() && !in.delivery_key.empty()) {
    cur.delivery_key = in.delivery_key;
    changed = true;
  }
  // A UID belongs to the folder it was given in: the newer placement (a
  // Move) brings its own, and a UID given for an older placement (a
  // renumbering that crossed a Move) is ignored.
  const bool moved = newer(in.folder_version, cur.folder_version);
  if (moved) {
    cur.folder = in.folder;
    cur.folder_version = in.folder_version;
    changed = true;
  }
  if (moved || (in.folder_version == cur.folder_version && newer(in.uid_version, cur.uid_version))) {
    cur.uid = in.uid;
    cur.uidvalidity = in.uidvalidity;
    cur.uid_version = in.uid_version;
    cur.uid_gen = in.uid_gen;
    cur.uid_seen = in.uid_seen;
    changed = true;
  }
  if (merge_flags(cur, in)) changed = true;
  if (in.expunged) {
    if (!cur.expunged) {
      // The body goes at once; the record stays as a death certificate so
      // a late store or flag change for it cannot bring it back.
      cur.expunged = true;
      cur.expunge_version = in.expunge_version;
      cur.expunged_at = now;
      cur.has_body = false;
      cur.body.clear();
      changed = true;
    } else if (newer(in.expunge_version, cur.expunge_version)) {
      cur.expunge_version = in.expunge_version;
      changed = true;
    }
  }
  return changed;
}

namespace {
constexpr std::size_t kKeptTakeovers = 32;

// The newer UIDVALIDITY wins with its state; within one, the highest
// reservation and the union of the recent takeovers.
void merge_lineage(FolderMeta& m, const FolderMeta& in) {
  if (in.uidvalidity < m.uidvalidity) return;
  if (in.uidvalidity > m.uidvalidity) {
    m.uidvalidity = in.uidvalidity;
    m.uid_reserved = in.uid_reserved;
    m.takeovers = in.takeovers;
    return;
  }
  m.uid_reserved = std::max(m.uid_reserved, in.uid_reserved);
  for (const auto& t : in.takeovers)
    if (std::find(m.takeovers.begin(), m.takeovers.end(), t) == m.takeovers.end()) m.takeovers.push_back(t);
  std::sort(m.takeovers.begin(), m.takeovers.end(),
            [](const UidTakeover& a, const UidTakeover& b) { return a.gen < b.gen; });
  if (m.takeovers.size() > kKeptTakeovers)
    m.takeovers.erase(m.takeovers.begin(), m.takeovers.end() - static_cast<std::ptrdiff_t>(kKeptTakeovers));
}
}  // namespace

void add_takeover(std::vector<UidTakeover>& list, const UidTakeover& t) { add_takeover(list, t.gen, t.seen); }

void add_takeover(std::vector<UidTakeover>& list, const Version& gen, const UidView& seen) {
  if (gen.is_null()) return;
  for (const auto& x : list)
    if (x.gen == gen) return;
  list.push_back(UidTakeover{gen, seen});
}

MessageRecord listing_copy(const MessageRecord& r, bool with_names, bool with_meta, bool with_versions) {
  MessageRecord c;
  c.id = r.id;
  if (with_names) {
    c.user = r.user;
    c.folder = r.folder;
  }
  c.replicas = r.replicas;
  c.has_body = r.has_body;
  c.size = r.size;
  c.vsize = r.vsize;
  c.hdr_size = r.hdr_size;
  if (with_meta) c.meta = r.meta;
  c.internal_date = r.internal_date;
  c.uidvalidity = r.uidvalidity;
  c.uid = r.uid;
  c.uid_gen = r.uid_gen;
  c.uid_seen = r.uid_seen;
  c.flags = r.flags;
  c.keywords = r.keywords;
  c.expunged = r.expunged;
  c.expunged_at = r.expunged_at;
  if (with_versions) {
    c.folder_version = r.folder_version;
    c.replicas_version = r.replicas_version;
    c.uid_version = r.uid_version;
    c.flags_version = r.flags_version;
    c.flag_marks = r.flag_marks;
    c.expunge_version = r.expunge_version;
  }
  return c;
}

bool uid_stale(const std::vector<UidTakeover>& takeovers, const Version& gen, std::uint32_t uid) {
  for (const auto& t : takeovers) {
    if (!(t.gen > gen)) continue;
    std::uint32_t top = 0;
    for (const auto& s : t.seen)
      if (s.gen == gen) top = s.top;
    if (uid > top) return true;
  }
  return false;
}

bool merge_profile(Profile& cur, const Profile& in) {
  bool changed = false;
  if (newer(in.version, cur.version)) {
    cur.version = in.version;
    cur.password_hash = in.password_hash;
    cur.quota_bytes = in.quota_bytes;
    cur.enabled = in.enabled;
    cur.deleted = in.deleted;
    cur.holders = in.holders;
    changed = true;
  }
  if (cur.user.empty()) cur.user = in.user;
  for (const auto& [name, meta] : in.folders) {
    FolderMeta& m = cur.folders[name];
    FolderMeta merged = m;
    merge_lineage(merged, meta);
    if (newer(meta.version, m.version)) {
      merged.version = meta.version;
      merged.deleted = meta.deleted;
      merged.renamed_to = meta.renamed_to;
    }
    if (!(merged == m)) {
      m = merged;
      changed = true;
    }
  }
  for (const auto& [name, sub] : in.subscriptions) {
    auto [it, added] = cur.subscriptions.try_emplace(name, sub);
    if (added) {
      changed = true;
    } else if (newer(sub.version, it->second.version)) {
      it->second = sub;
      changed = true;
    }
  }
  return changed;
}

std::string folder_name_problem(std::string_view name) {
  if (name.empty()) return "folder name is empty";
  if (name.size() > 1000) return "folder name is longer than 1000 bytes";
  for (std::size_t i = 0; i < name.size();) {
    const auto c = static_cast<unsigned char>(name[i]);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > name.size()) return "folder name is not valid UTF-8";
    std::uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (std::size_t k = 1; k < n; ++k) {
      const auto cc = static_cast<unsigned char>(name[i + k]);
      if ((cc & 0xc0) != 0x80) return "folder name is not valid UTF-8";
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return "folder name is not valid UTF-8";
    if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) return "folder name has a control character";
    i += n;
  }
  return "";
}

const char* kind_name(Update::Kind k) {
  switch (k) {
    case Update::Kind::Store: return "store";
    case Update::Kind::Flags: return "flags";
    case Update::Kind::Expunge: return "expunge";
    case Update::Kind::SetUid: return "setuid";
    case Update::Kind::Profile: return "profile";
    case Update::Kind::Move: return "move";
    case Update::Kind::Copy: return "copy";
    case Update::Kind::Replicas: return "replicas";
  }
  return "?";
}

const char* admin_state_name(AdminState s) {
  switch (s) {
    case AdminState::Active: return "active";
    case AdminState::Draining: return "draining";
    case AdminState::Gone: return "gone";
  }
  return "?";
}

bool merge_admin(AdminMap& cur, const AdminMap& in) {
  bool changed = false;
  for (const auto& [n, a] : in) {
    auto [it, fresh] = cur.try_emplace(n, a);
    if (fresh || newer(a.version, it->second.version)) {
      it->second = a;
      changed = true;
    }
  }
  return changed;
}

}  // namespace porcupine
