/* SPDX-License-Identifier: MIT */
// wire.h - every message one node's core sends another's.
//
// In-memory form only: the agent serializes these (protobuf, versioned),
// the simulator passes them as values. Every message travels in an
// Envelope that piggybacks the sender's load, so each node's load table
// is refreshed by ordinary traffic (ARCHITECTURE.md 4, placement).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "records.h"
#include "types.h"
#include "user_map.h"

namespace porcupine {

// ---- membership --------------------------------------------------------
struct Probe { Epoch epoch; bool operator==(const Probe&) const = default; };
struct ProbeAck { Epoch epoch; bool operator==(const ProbeAck&) const = default; };
// Round 1. What the coordinator holds, so an accepter leaves out what it
// would only repeat (docs/protocols.md, "Membership", deltas): its user
// map when not newer than map_epoch, its known nodes when their digest is
// known_digest. An older coordinator sends neither (null, 0): it is told
// everything.
struct NewGroup {
  Epoch epoch;
  Epoch map_epoch;                 // the coordinator's user map
  std::uint64_t known_digest = 0;  // known_digest() of the coordinator's known nodes and itself
  bool operator==(const NewGroup&) const = default;
};
struct Accept {
  Epoch epoch;
  std::uint32_t weight = 1;
  Epoch map_epoch;  // the epoch of the user map the accepter holds
  UserMap map;      // empty when not newer than the NewGroup's map_epoch
  std::vector<NodeId> known;  // every node the accepter knows of, so none is left out
  bool known_same = false;    // `known` left out: the same set as the coordinator's
  AdminMap admin;             // what the accepter has been told of nodes (drain, gone)
  Epoch installed;            // the accepter's installed epoch (null from an older node)
  bool operator==(const Accept&) const = default;
};
// Round 3. With a null `base`, members and map are whole. Otherwise they
// are a change to the group installed at epoch `base`, which the receiver
// holds (it said so in its Accept): `members` are the nodes that join or
// change weight, `removed` those that leave, `moves` the buckets that
// change manager. A receiver not at `base` installs nothing.
struct Commit {
  Epoch epoch;
  std::vector<MemberWeight> members;
  UserMap map;
  AdminMap admin;  // merged from the accepters; a member is never Gone
  Epoch base;
  std::vector<NodeId> removed;
  std::vector<std::pair<Bucket, NodeId>> moves;
};

// ---- mail map and profile reconstruction ---------------------------------
// The UIDs of one UIDVALIDITY (one lineage) on the messages a node holds.
struct UidRange {
  std::uint32_t uidvalidity = 0;
  std::uint32_t min_uid = 0, max_uid = 0;
  std::uint32_t live = 0;  // of them, messages a client sees (body held, not expunged)
  Version gen;             // the generation of the manager that gave them
  UidView seen;            // what that generation had been shown when it began
  bool operator==(const UidRange&) const = default;
};
// A delivery that carried a key (MessageRecord::delivery_key), as its
// manager knows it: a retry of it is answered with this message.
struct KeyedDelivery {
  std::string key;
  MsgId msg;
  std::uint32_t uidvalidity = 0, uid = 0;
  std::vector<NodeId> nodes;  // its replicas
  bool stored = false;        // a replica acknowledged the whole store
  Time at = 0;                // when it was delivered (its key is kept delivery_key_ttl after)
  // The lineage generation the UID was given in (null: not known, from an
  // older node). A retry not stored is given the same UID only in the
  // same generation: a UID of one generation stamped with a later one
  // would escape the takeover rule that renumbers it.
  Version gen;
  bool operator==(const KeyedDelivery&) const = default;
};
// A manager that lost a bucket hands each folder's UID lineage to the new
// manager, once, in the epoch that moved the bucket.
struct Handoff {
  std::string user;
  std::string folder;
  std::uint32_t uidvalidity = 0;
  std::uint32_t next_uid = 1;
  std::vector<std::uint32_t> inflight;  // UIDs handed out whose messages may not be stored yet
  Version gen;                          // its generation, which the successor continues
  UidView seen;
  std::vector<KeyedDelivery> keys;      // the folder's keyed deliveries still kept
  bool operator==(const Handoff&) const = default;
};
// The bytes of the live messages a node holds under one replica list
// (sorted). Every replica of a message puts it under the same list, so the
// manager counts each list once (Manager::usage_of), however many copies.
struct ReplicaBytes {
  std::vector<NodeId> replicas;
  std::uint64_t bytes = 0;
  bool operator==(const ReplicaBytes&) const = default;
};
struct ReportEntry {
  std::string user;
  std::string folder;
  std::vector<UidRange> ranges;  // expunged messages included: their UIDs were used
  std::uint32_t count = 0;       // live (not expunged) messages held
  // The live messages' bytes by replica list (the quota's usage, kept by
  // the manager); none with count > 0: an older node, which does not say.
  std::vector<ReplicaBytes> bytes;
  // In a bucket's full report: the keyed deliveries held, of the last
  // delivery_key_ttl (their manager may be new and not know them).
  std::vector<KeyedDelivery> keys;
  bool operator==(const ReportEntry&) const = default;
};
struct Report {
  Epoch epoch;
  std::vector<Bucket> complete;       // buckets this report covers in full
  std::vector<std::string> users;     // users covered (possibly with nothing held)
  std::vector<std::uint64_t> generations;  // reporter's change counter per user, echoed in the ack
  std::vector<ReportEntry> entries;
  std::vector<Profile> profiles;
  std::vector<Handoff> handoffs;      // for buckets in `complete` this node managed until now
  bool operator==(const Report&) const = default;
};
struct ReportAck {
  Epoch epoch;
  std::vector<Bucket> complete;
  std::vector<std::string> users;
  std::vector<std::uint64_t> generations;  // echoed from the Report, one per user
  bool operator==(const ReportAck&) const = default;
};
struct ReportPoll {
  Epoch epoch;
  std::vector<Bucket> buckets;
  bool operator==(const ReportPoll&) const = default;
};

// ---- delivery: manager side ---------------------------------------------
// AuthFailed answers local clients only (Node::authenticate): not on the wire.
enum class Status : std::uint8_t { Ok, TryAgain, NoSuchUser, Exists, NotManager, Failed, NotFound, OverQuota, AuthFailed };
const char* status_name(Status s);

struct AllocRequest {
  std::uint64_t req = 0;
  std::string user;
  std::string folder;
  std::uint64_t size = 0;              // the body's bytes (how long its store may take)
  std::vector<NodeId> move_nodes;      // a Move's UID: the message's replicas, no placement
  // A delivery's key (MessageRecord::delivery_key) and the id the front
  // end gives its message: a key the manager knows is answered with the
  // message it names instead of a new UID.
  std::string key;
  MsgId msg;
  bool operator==(const AllocRequest&) const = default;
};
// A reader found the message under a UID below one it had already shown
// (a store that completed after its delivery was given up, or was on its
// way when its manager died): it asks the manager to move it to a new UID
// at the end of the lineage. Answered by an AllocReply once scheduled.
struct RenumberRequest {
  std::uint64_t req = 0;
  std::string user;
  std::string folder;
  MsgId id;
  std::vector<NodeId> replicas;
  std::uint32_t uidvalidity = 0, uid = 0;  // where the reader found it
  std::uint32_t above = 0;                 // the highest UID the reader has taken
  bool operator==(const RenumberRequest&) const = default;
};

// The front end is done with an allocated UID (its store or move is
// acknowledged): messages above it may show in listings.
struct AllocDone {
  std::string user;
  std::string folder;
  std::uint32_t uidvalidity = 0;
  std::uint32_t uid = 0;
  std::string key;  // the delivery's key, now stored
  bool operator==(const AllocDone&) const = default;
};
struct AllocReply {
  std::uint64_t req = 0;
  Status status = Status::Ok;
  std::uint32_t uidvalidity = 0;
  std::uint32_t uid = 0;
  std::vector<NodeId> nodes;  // [0] primary, then replicas
  std::uint64_t quota_bytes = 0;  // the user's quota (0: none)
  // The manager checked the quota (refusing OverQuota). Not set by an
  // older manager, or one that cannot count the user's usage (an older
  // node's report): the front end then gathers the usage itself.
  bool quota_checked = false;
  Version gen;                    // the manager's generation in the folder (stamped with the UID)
  UidView seen;                   // and what it had been shown when it began
  // A key the manager knew: the message it names (stored: acknowledged
  // whole, so the delivery is answered without storing it again).
  MsgId msg;
  bool stored = false;
  bool operator==(const AllocReply&) const = default;
};
struct CreateUserRequest {
  std::uint64_t req = 0;
  std::string user;
  std::string password_hash;
  bool operator==(const CreateUserRequest&) const = default;
};
struct MapRequest {
  std::uint64_t req = 0;
  std::string user;
  std::string folder;
  bool operator==(const MapRequest&) const = default;
};
struct MapReply {
  std::uint64_t req = 0;
  Status status = Status::Ok;
  std::vector<NodeId> nodes;
  std::uint32_t uidvalidity = 0;  // the folder's current lineage (0: none yet)
  std::uint32_t next_uid = 1;
  // Listings show only UIDs below this: the lowest UID handed out whose
  // message may still be on its way (next_uid when none; 0: no limit), so
  // no reader sees UID n+1 before n is stored or known to be abandoned.
  std::uint32_t visible_below = 0;
  // The lineage's takeovers: a listing hides messages they make stale
  // (uid_stale) until the manager has moved them.
  std::vector<UidTakeover> takeovers;
  // The UIDs from visible_below up that are still in flight, ascending.
  // One whose message a holder already lists is stored: the reader shows
  // it and what follows, up to the next one no holder lists. (The front
  // end's AllocDone and its answer to its client race the next reader's
  // MapRequest: an acknowledged message is listed at once all the same.)
  std::vector<std::uint32_t> inflight;
  bool operator==(const MapReply&) const = default;
};

// ---- replication ---------------------------------------------------------
struct StoreRequest { std::uint64_t req = 0; Update update; };
struct MutateRequest { std::uint64_t req = 0; Update update; };
struct OpReply {
  std::uint64_t req = 0;
  Status status = Status::Ok;
  // A store that completed under another replica list than it was asked
  // with (a silent replica replaced): that list. Empty: as asked.
  std::vector<NodeId> replicas;
  bool operator==(const OpReply&) const = default;
};
struct Push { Update update; std::vector<NodeId> have; };
struct PushAck { Version id; bool operator==(const PushAck&) const = default; };
struct Retire { Version id; bool operator==(const Retire&) const = default; };

// ---- reads ---------------------------------------------------------------
struct ListRequest {
  std::uint64_t req = 0;
  std::string user;
  std::string folder;
  bool digest_only = false;  // answer the digest, not the records
  std::uint32_t meta_from_uid = 0;  // records' meta from this UID on (0: none)
  bool in_parts = false;  // the asker takes the records in several replies
  bool without_names = false;  // the asker puts back each record's user and folder
  // Without the versions (of the UID, flags, folder, replicas, expunge) or
  // flag marks: the asker shows the records as they are and merges none
  // into them. An older holder does not look and sends them whole.
  bool light = false;
  bool operator==(const ListRequest&) const = default;
};
struct ListReply {
  std::uint64_t req = 0;
  std::vector<MessageRecord> records;  // bodies stripped; none when digest_only
  bool has_digest = false;             // digest set (older nodes: only when digest_only)
  std::uint64_t digest = 0;            // sum of copy_digest over the folder's records here
  bool full = false;                   // records asked for and included (older nodes: !has_digest)
  // In parts (asked with in_parts): reply `part` of `parts` (each with the
  // digest); 0 parts: one reply has every record.
  std::uint32_t part = 0;
  std::uint32_t parts = 0;
  bool light = false;  // the records came without their versions (asked light)
  bool operator==(const ListReply&) const = default;
};
// What a fetch asks for: the whole message, or its header (the bytes up to
// and including the blank line that ends it), read by the holder from the
// start of its file without reading the body.
enum class FetchPart : std::uint8_t { Whole = 0, Header = 1 };
// The most a header part holds: a message with no blank line within its
// first kHeaderPartMax bytes is answered with those bytes, marked cut.
constexpr std::uint64_t kHeaderPartMax = 256u << 10;

struct FetchRequest {
  std::uint64_t req = 0;
  MsgId id;
  // The user the asker takes the message for (empty: anyone's): a holder
  // whose record is another user's answers NotFound.
  std::string user;
  // An older holder does not know the field and answers Whole.
  FetchPart part = FetchPart::Whole;
  bool operator==(const FetchRequest&) const = default;
};
struct FetchReply {
  std::uint64_t req = 0;
  Status status = Status::Ok;
  Body body;  // a large one by reference to its spool file (streamed by the transport)
  // What `body` is. Whole: the message (what an older holder always
  // sends, and the answer to Header when the header is the whole
  // message). Header: the header up to and including its blank line, or
  // with `cut` the first kHeaderPartMax bytes of a message with no blank
  // line in them (its header is longer: read the whole to parse it).
  FetchPart part = FetchPart::Whole;
  bool cut = false;
  bool operator==(const FetchReply&) const = default;
};

// The length of the header at the start of `head`, up to and including
// the blank line (LF or CRLF line ends) that ends it; 0 if `head` has no
// blank line. As MessageSizes (store/spool_file.h) counts hdr_size.
inline std::size_t header_end(std::string_view head) {
  int line = 0;  // the line so far: 0 empty, 1 a CR only, 2 more
  for (std::size_t i = 0; i < head.size(); ++i) {
    const char c = head[i];
    if (c == '\n') {
      if (line < 2) return i + 1;
      line = 0;
    } else {
      line = (c == '\r' && line == 0) ? 1 : 2;
    }
  }
  return 0;
}

// ---- the user database (profiles, at the user's manager) ------------------
struct ProfileRequest {
  std::uint64_t req = 0;
  std::string user;
  // The profile as the asking front end last got it (its memory), offered
  // after the manager answered TryAgain: the manager takes it when none of
  // the profile's holders is live (Manager::User::adopted). Not from an older node.
  std::optional<Profile> remembered;
  bool operator==(const ProfileRequest&) const = default;
};
struct ProfileReply {
  std::uint64_t req = 0;
  Status status = Status::Ok;
  Profile profile;
  // The bytes of the user's live mail as the manager counts them, once it
  // can (has_usage: every member has reported the bucket); not from an
  // older manager.
  bool has_usage = false;
  std::uint64_t used_bytes = 0;
  bool operator==(const ProfileReply&) const = default;
};
struct UserUpdateRequest {
  enum class Op : std::uint8_t { SetPassword, SetQuota, Enable, Disable, Delete, CreateFolder, DeleteFolder,
                                 RenameFolder, Subscribe, Unsubscribe };
  std::uint64_t req = 0;
  std::string user;
  Op op = Op::SetPassword;
  std::string password_hash;     // SetPassword
  std::uint64_t quota_bytes = 0;  // SetQuota
  std::string folder;             // CreateFolder, DeleteFolder, RenameFolder (from), (Un)Subscribe
  std::string to_folder;          // RenameFolder: the new name (keeps the lineage and every UID)
  bool operator==(const UserUpdateRequest&) const = default;
};
struct UserListRequest {
  std::uint64_t req = 0;
  bool operator==(const UserListRequest&) const = default;
};
// From one manager: the users with a profile in the buckets it manages.
struct UserListReply {
  std::uint64_t req = 0;
  Status status = Status::Ok;
  std::vector<std::string> users;
  bool operator==(const UserListReply&) const = default;
};

// Quota, gathered from every member (only while the manager cannot count
// it, and for an older manager's deliveries): the bytes of the user's live
// messages this node counts, i.e. those for which it is the first live
// replica in its view (so that, with one view, every message is counted
// once).
struct UsageRequest {
  std::uint64_t req = 0;
  std::string user;
  bool operator==(const UsageRequest&) const = default;
};
struct UsageReply {
  std::uint64_t req = 0;
  std::uint64_t bytes = 0;
  bool operator==(const UsageReply&) const = default;
};

// ---- anti-entropy between replicas (sync.cc) -------------------------------
// A node asks a peer what the peer holds that names it as a replica (records)
// or holder (profiles); the peer answers a digest per user; users whose
// digests differ from the asker's own are pulled, records without bodies;
// bodies the asker lacks are asked for a few at a time and come as Push of
// Update::Kind::Copy. Nothing here changes what is replicated where.
struct SyncRequest {
  std::uint64_t round = 0;
  bool operator==(const SyncRequest&) const = default;
};
struct UserDigest {
  std::string user;
  std::uint64_t digest = 0;  // sync_digest() of what names the asker
  bool operator==(const UserDigest&) const = default;
};
struct SyncDigest {
  std::uint64_t round = 0;
  std::vector<UserDigest> users;
  bool last = false;  // the round's last digest (the asker then knows it has them all)
  bool operator==(const SyncDigest&) const = default;
};
struct SyncPull {
  std::uint64_t round = 0;
  std::uint64_t pull = 0;  // the asker's number for this pull, echoed
  std::vector<std::string> users;
  bool operator==(const SyncPull&) const = default;
};
struct SyncRecords {
  std::uint64_t round = 0;
  std::uint64_t pull = 0;
  std::vector<MessageRecord> records;  // bodies stripped; has_body says whether the sender holds one
  std::vector<Profile> profiles;
  bool last = false;  // the pull's last answer
  bool operator==(const SyncRecords&) const = default;
};
struct SyncBodies {
  std::vector<MsgId> ids;
  bool operator==(const SyncBodies&) const = default;
};

using Message = std::variant<Probe, ProbeAck, NewGroup, Accept, Commit, Report, ReportAck,
                             ReportPoll, AllocRequest, AllocReply,
                             CreateUserRequest, MapRequest, MapReply, StoreRequest, MutateRequest,
                             OpReply, Push, PushAck, Retire, ListRequest, ListReply,
                             FetchRequest, FetchReply, ProfileRequest, ProfileReply,
                             UserUpdateRequest, UserListRequest, UserListReply,
                             UsageRequest, UsageReply, AllocDone, RenumberRequest,
                             SyncRequest, SyncDigest, SyncPull, SyncRecords, SyncBodies>;

const char* message_name(const Message& m);

struct Envelope {
  NodeId from = kNoNode;
  NodeId to = kNoNode;
  std::uint32_t load = 0;  // sender's pending disk operations
  Message body;
  // The sender's spool is below its reserve: no new copies are placed on
  // it (placement's NodeLoad::full). Absent from an older sender: not full.
  bool full = false;
};

}  // namespace porcupine
