// records.cc - merge rules of the replicated hard state (see records.h).
#include "records.h"

#include <xxhash.h>

#include <algorithm>

namespace porcupine {

std::uint64_t record_digest(const MessageRecord& r) {
  std::string b;
  auto put = [&b](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  auto put_str = [&](const std::string& s) {
    put(s.size());
    b += s;
  };
  put(r.id.origin);
  put(r.id.seq);
  put_str(r.folder);
  put(r.uidvalidity);
  put(r.uid);
  put(r.flags);
  put(r.keywords.size());
  for (const auto& k : r.keywords) put_str(k);
  put((r.expunged ? 1u : 0u) | (r.has_body ? 2u : 0u));
  return XXH64(b.data(), b.size(), 0);
}

bool merge_record(MessageRecord& cur, const MessageRecord& in, Time now) {
  bool changed = false;
  if (cur.replicas.empty() && !in.replicas.empty()) {
    cur.replicas = in.replicas;
    changed = true;
  }
  if (in.has_body && !cur.has_body && !cur.expunged && !in.expunged) {
    cur.has_body = true;
    cur.body = in.body;
    cur.size = in.size;
    cur.internal_date = in.internal_date;
    changed = true;
  }
  if (newer(in.folder_version, cur.folder_version)) {
    cur.folder = in.folder;
    cur.folder_version = in.folder_version;
    changed = true;
  }
  if (newer(in.uid_version, cur.uid_version)) {
    cur.uid = in.uid;
    cur.uidvalidity = in.uidvalidity;
    cur.uid_version = in.uid_version;
    changed = true;
  }
  if (newer(in.flags_version, cur.flags_version)) {
    cur.flags = in.flags;
    cur.keywords = in.keywords;
    cur.flags_version = in.flags_version;
    changed = true;
  }
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
    merged.uidvalidity = std::max(m.uidvalidity, meta.uidvalidity);
    if (newer(meta.version, m.version)) {
      merged.version = meta.version;
      merged.deleted = meta.deleted;
    }
    if (!(merged == m)) {
      m = merged;
      changed = true;
    }
  }
  return changed;
}

const char* kind_name(Update::Kind k) {
  switch (k) {
    case Update::Kind::Store: return "store";
    case Update::Kind::Flags: return "flags";
    case Update::Kind::Expunge: return "expunge";
    case Update::Kind::SetUid: return "setuid";
    case Update::Kind::Profile: return "profile";
    case Update::Kind::Move: return "move";
  }
  return "?";
}

}  // namespace porcupine
