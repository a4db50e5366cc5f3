/* SPDX-License-Identifier: MIT */
// records.h - the hard state of a node: message records, user profiles,
// and replication log entries (updates not yet known to all replicas).
//
// Plain values with their merge rules. The DurableStore (durable.h) keeps
// them; the Replicator owns the in-memory copies.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "body.h"
#include "types.h"

namespace porcupine {

// The highest UID of generation `gen` a manager had been shown.
struct GenTop {
  Version gen;
  std::uint32_t top = 0;
  bool operator==(const GenTop&) const = default;
};
using UidView = std::vector<GenTop>;  // by generation; a generation not named: nothing shown

// One change to one flag of a message, newer than the record's flag base
// (`MessageRecord::flags_version`): a system flag by its IMAP name
// ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft") or an IMAP
// keyword, set or cleared, at `version`.
struct FlagMark {
  std::string name;
  bool set = false;
  Version version;
  bool operator==(const FlagMark&) const = default;
};

// One message as one replica holds it. The body is immutable; flags, the
// UID stamp and the expunge mark are mutable, each with its own version
// (last writer wins per attribute; for flags, per flag). An expunged record
// without a body is a death certificate.
struct MessageRecord {
  MsgId id;
  std::string user;    // canonical address
  std::string folder;  // e.g. "INBOX"
  Version folder_version;  // a Move's version; the newest Move names the folder
  std::vector<NodeId> replicas;  // every node that should hold this record
  // The list's version: null as the store wrote it; a repair or drain that
  // moves a copy writes a newer list (repair.cc), and the newest list wins
  // a merge.
  Version replicas_version;
  bool has_body = false;
  Body body;  // memory, a file, or (on the wire) a transfer: body.h
  std::uint64_t size = 0;  // body bytes (kept when the body is not in memory)
  // Worked out once from the body where it is delivered, immutable like it
  // (0: not known, a record from before they were kept): the size with CRLF
  // line ends (every bare LF counts 2; IMAP's RFC822.SIZE, Dovecot's virtual
  // size) and the header's bytes up to and including the blank line (the
  // whole body when it has none).
  std::uint64_t vsize = 0;
  std::uint32_t hdr_size = 0;
  // What the reader's mail server worked out from the body where it was
  // delivered (Dovecot: its IMAP BODYSTRUCTURE), opaque to the cluster and
  // immutable like the body; at most kMaxRecordMeta bytes; empty: none.
  // Listings carry it only for the UIDs the reader asks for.
  std::string meta;
  Time internal_date = 0;
  // What identifies the delivery that made this message, the same for
  // every retry of it (an MTA's, after a 4xx or a lost answer): empty for
  // none (IMAP APPEND, COPY). Immutable like the body; its manager answers
  // a retry with this message (docs/architecture.md, "Exactly once").
  std::string delivery_key;

  std::uint32_t uidvalidity = 0;
  std::uint32_t uid = 0;
  Version uid_version;
  // The generation of the manager that gave the UID, and what that manager
  // had been shown when its generation began (UidTakeover): every copy of
  // the message says which takeover it came from.
  Version uid_gen;
  UidView uid_seen;

  // The flag state a reader sees: system flags and IMAP keywords (sorted
  // without regard to case). Each flag is its own last-writer-wins value:
  // a flag named in `flag_marks` has that mark's value and version; any
  // other flag has its value here at `flags_version` (the base: the store,
  // or the last whole-state write). A change of some flags (a STORE +FLAGS)
  // adds marks, so changes of different flags by different writers merge.
  std::uint32_t flags = 0;
  std::vector<std::string> keywords;
  Version flags_version;
  std::vector<FlagMark> flag_marks;  // sorted by lower-cased name, versions > flags_version

  bool expunged = false;
  Version expunge_version;
  Time expunged_at = 0;  // local time the death certificate was written

  bool operator==(const MessageRecord&) const = default;
};

// The largest MessageRecord::meta kept; a larger one is dropped at delivery.
inline constexpr std::size_t kMaxRecordMeta = 8 * 1024;
// The largest delivery key taken (a SHA-256 is 32 bytes).
inline constexpr std::size_t kMaxDeliveryKey = 64;

// `r` as a listing carries it: every field but the body (named by
// has_body), the user and folder unless `with_names` (the listing's, for
// an asker that puts them back), the meta unless `with_meta`, and the
// versions and flag marks unless `with_versions` (a light listing: shown
// as it is, merged with no other). Built field by field: a listing of a
// large folder copies no string it does not send. A field added to
// MessageRecord that listings merge on belongs here too.
MessageRecord listing_copy(const MessageRecord& r, bool with_names, bool with_meta, bool with_versions = true);

// The IMAP names of the system flags, bit i of `flags` for name i.
extern const char* const kFlagNames[5];

// Sets or clears flags of `r` as one change at `v`: `add_flags` /
// `remove_flags` system flag bits, and keywords (compared without regard to
// case). The result is what merging a Flags update with those marks gives.
void mark_flags(MessageRecord& r, Version v, std::uint32_t add_flags, std::uint32_t remove_flags,
                const std::vector<std::string>& add_keywords,
                const std::vector<std::string>& remove_keywords);

// The marks of one such change (what a Flags update carries), at `v`.
// Adding wins over removing the same flag in one change.
std::vector<FlagMark> flag_marks(Version v, std::uint32_t add_flags, std::uint32_t remove_flags,
                                 const std::vector<std::string>& add_keywords,
                                 const std::vector<std::string>& remove_keywords);

// Merge `in` into `cur`, attribute by attribute (Thomas write rule).
// Expunge is sticky: once expunged, always expunged. Returns true if
// anything changed.
bool merge_record(MessageRecord& cur, const MessageRecord& in, Time now);

// A 64-bit digest of what a reader of a folder listing sees of a record
// (id, folder, UIDVALIDITY, UID, flags, keywords, expunged, body held):
// XXH64 of a fixed encoding, the same on every node. A node's digest of a
// folder is the sum of its records' digests (any order).
std::uint64_t record_digest(const MessageRecord& r);
// record_digest and the version of the record's replica list: two copies
// equal in it are the same to a listing's reader and to anti-entropy
// (two replicas that hold different lists differ). A folder digest, what
// a listing compares to know that two nodes hold the same, sums these.
std::uint64_t copy_digest(const MessageRecord& r);

// A manager took a folder's lineage over without a handoff (its
// predecessor crashed, or sits behind a partition and may still hand out
// UIDs): from then on it hands out UIDs under generation `gen`, having
// been shown `seen` of the older ones. A message of an older generation
// with a UID above what `seen` says of it was handed out where this
// manager's readers could not see it: it is moved to a new UID at the end
// of the lineage (to a client, an expunge and new mail) and hidden until
// then.
struct UidTakeover {
  Version gen;
  UidView seen;
  bool operator==(const UidTakeover&) const = default;
};

// A folder the user has, kept in the profile: created or deleted by the
// newest version (a deleted folder stays as a tombstone), and its UID
// lineage, which is hard state: the UIDVALIDITY fixed when the folder was
// created, and the UIDs reserved in it (a manager writes a reservation to
// the profile's holders before it hands out any UID of it, so its
// successor, after a crash, continues above it under the same UIDVALIDITY).
struct FolderMeta {
  std::uint32_t uidvalidity = 0;  // the folder's UIDVALIDITY (the newest lineage wins a merge)
  Version version;
  bool deleted = false;
  std::uint32_t uid_reserved = 0;  // every UID handed out in `uidvalidity` is at most this
  std::vector<UidTakeover> takeovers;  // recent ones, by generation
  std::string renamed_to;  // a tombstone left by RENAME: the new name (with `version`)
  bool operator==(const FolderMeta&) const = default;
};

// Whether a message of generation `gen` with UID `uid` was handed out
// where the manager of a later takeover could not see it (see UidTakeover).
bool uid_stale(const std::vector<UidTakeover>& takeovers, const Version& gen, std::uint32_t uid);
// Adds `t` to `list` (by generation) unless it is there.
void add_takeover(std::vector<UidTakeover>& list, const UidTakeover& t);
// The same, copying `seen` only when the generation is new to `list`.
void add_takeover(std::vector<UidTakeover>& list, const Version& gen, const UidView& seen);

// A subscription (IMAP SUBSCRIBE/UNSUBSCRIBE) of one name: about names,
// not folders, as in IMAP: a name may be subscribed with no folder of
// that name, DELETE and RENAME leave subscriptions alone. The newest
// version wins.
struct Subscription {
  bool on = false;
  Version version;
  bool operator==(const Subscription&) const = default;
};

// A user's profile: scalar fields last-writer-wins by `version`; folder
// metadata max-merged so concurrent writers never lose a folder;
// subscriptions last-writer-wins per name.
struct Profile {
  std::string user;
  Version version;
  std::string password_hash;
  std::uint64_t quota_bytes = 0;  // 0 = unlimited
  bool enabled = true;
  bool deleted = false;  // a deleted user's profile stays as a tombstone
  std::map<std::string, FolderMeta> folders;
  std::vector<NodeId> holders;  // nodes that keep a replica of this profile
  std::map<std::string, Subscription> subscriptions;  // empty: none ever recorded

  bool operator==(const Profile&) const = default;
};

bool merge_profile(Profile& cur, const Profile& in);

// A 64-bit digest of a profile's state (everything merge_profile merges
// but the holders), the same on every node that holds it: two holders
// that have seen the same updates agree.
std::uint64_t profile_digest(const Profile& p);

// Why `name` cannot be a folder name (or a subscribed name) the cluster
// stores, or "" if it can: it must be 1..1000 bytes of valid UTF-8 with no
// control character (C0, DEL, C1), so it can never forge a log line or
// break a client's parser.
std::string folder_name_problem(std::string_view name);

// What the cluster has been told of a node by an operator or by its long
// silence (porcupinectl drain / node forget, node_dead_timeout): Draining,
// its buckets, profiles and copies are moved off while it serves; Gone, it
// is lost for good and its copies are made again elsewhere (repair.cc).
// Every node keeps the table durably; membership rounds carry it (newest
// version per node wins), and a Gone node that rejoins is Active again.
enum class AdminState : std::uint8_t { Active, Draining, Gone };
struct NodeAdmin {
  AdminState state = AdminState::Active;
  Version version;
  bool operator==(const NodeAdmin&) const = default;
};
using AdminMap = std::map<NodeId, NodeAdmin>;
const char* admin_state_name(AdminState s);
// Merges `in` into `cur`, per node the newest version; true if it changed.
bool merge_admin(AdminMap& cur, const AdminMap& in);

// One replicated update. Its id (a Version, unique cluster-wide) is also
// the version it writes.
struct Update {
  // Copy: a whole record as one replica holds it, versions and all, for a
  // replica that lacks it or its body (sync.cc); merged attribute by
  // attribute like any other update, and never logged.
  // Replicas: a record's new replica list (record.replicas at
  // record.replicas_version), written by a repair once the new copies are
  // made; a replica it no longer names drops its copy.
  enum class Kind : std::uint8_t { Store, Flags, Expunge, SetUid, Profile, Move, Copy, Replicas };
  Version id;
  Kind kind = Kind::Store;
  NodeId coordinator = kNoNode;
  std::vector<NodeId> replicas;
  MessageRecord record;  // Store: the whole record; others: id/user/folder + changed field
                         // (Move: folder is the destination)
  Profile profile;       // Profile
};

const char* kind_name(Update::Kind k);

// What the node does with an update until every replica has it.
struct LogEntry {
  Update update;
  std::set<NodeId> have;  // replicas known to hold it (always includes self if a replica)
};

}  // namespace porcupine
