// SPDX-License-Identifier: MIT
// frontend.h - the front-end role: local client operations (what the
// milter and the Dovecot plugin ask through the agent) turned into calls
// to the user's manager and to the nodes that store the fragments
// (frontend.cc), and the front end's side of the user database (users.cc).
//
// Soft state only: the operations in flight, and the front end's memory
// of profiles. It reads the node's membership and sends through the node.
//
// The rest it needs of the node comes as callbacks (Hooks): the node's
// clock, request ids, message ids and version counter (shared with every
// other writer of the node), what the node has heard of its peers, the
// node's replies (a composite operation's steps take some), and the
// manager's end of a gathering. The manager's renumbering, and a rename's
// move of every message, reads every holder's records of the folder; the
// front end gathers them as for a listing (gather_for) and gives what came
// to Hooks::gathered.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "body.h"
#include "config.h"
#include "env.h"
#include "membership.h"
#include "wire.h"

namespace porcupine {

// What a delivery may carry besides the body: IMAP APPEND's INTERNALDATE
// and flags, and COPY's source's (0: the time of delivery; none).
struct DeliverOptions {
  Time internal_date = 0;
  std::uint32_t flags = 0;
  std::vector<std::string> keywords;
  // The body's sizes as the receiver counted them (MessageRecord::vsize,
  // hdr_size; 0: not counted).
  std::uint64_t vsize = 0;
  std::uint32_t hdr_size = 0;
  std::string meta;  // MessageRecord::meta (empty: none)
  // MessageRecord::delivery_key (empty: none). A delivery with a key its
  // manager knows is answered with the message it made: stored once,
  // however often it is retried within delivery_key_ttl.
  std::string key;
};

class FrontEnd {
 public:
  // What the front end needs of its node.
  struct Hooks {
    std::function<void(NodeId, Message)> send;
    std::function<void(const std::string&)> log;
    // Every client reply leaves through the node (Node::reply): to Env, or
    // to a composite operation's step.
    std::function<void(ClientReply)> reply;
    // The node's time of the call it is in (Node::now_).
    std::function<Time()> now;
    std::function<Time()> wall;  // Env::wall()
    // A new request id; the node's other requests take theirs from the
    // same counter, so no two are alike.
    std::function<std::uint64_t()> new_req;
    // A new message id of this node's, its sequence persisted.
    std::function<MsgId()> new_msg;
    // The node's next version, stamped with the wall clock (Node::next_version).
    std::function<Version()> next_version;
    // The node's spool is below its reserve (Node::takes_no_copies).
    std::function<bool(NodeId)> takes_no_copies;
    // Nothing heard from the peer for `t`, or it refuses connections
    // (Node::silent_for).
    std::function<bool(NodeId, Time t)> silent_for;
    // A gathering asked by gather_for is over (Manager::on_gathered):
    // `records` are what came, `complete` whether every node asked answered.
    std::function<void(Time now, const std::string& user, const std::string& folder, const std::string& rename_to,
                       const std::map<MsgId, MessageRecord>& records, bool complete)>
        gathered;
  };

  FrontEnd(const CoreConfig& cfg, const Membership& membership, Hooks hooks);

  // ---- client operations (node.h says what each does); each ends in
  // exactly one reply ----
  void create_user(Time now, std::uint64_t req, const std::string& user, const std::string& password_hash);
  void deliver(Time now, std::uint64_t req, const std::string& user, const std::string& folder, Body body,
               DeliverOptions opts);
  void set_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t flags,
                 std::vector<std::string> keywords);
  void change_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t add_flags,
                    std::uint32_t remove_flags, const std::vector<std::string>& add_keywords,
                    const std::vector<std::string>& remove_keywords);
  void expunge(Time now, std::uint64_t req, const MessageRecord& target);
  void renumber(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t above);
  void move(Time now, std::uint64_t req, const MessageRecord& target, const std::string& to_folder);
  void list(Time now, std::uint64_t req, const std::string& user, const std::string& folder, bool digest_only,
            std::uint32_t meta_from_uid);
  void fetch(Time now, std::uint64_t req, const MessageRecord& target, FetchPart part);
  // users.cc
  void get_user(Time now, std::uint64_t req, const std::string& user);
  void update_user(Time now, std::uint64_t req, const UserUpdateRequest& change);
  void list_users(Time now, std::uint64_t req);
  void user_usage(Time now, std::uint64_t req, const std::string& user);

  // ---- the node's events ----
  void tick(Time now);
  // A reply from a peer to one of the front end's requests (by value in
  // the node: its records move into what is gathered).
  void on_reply(NodeId from, Message& m);
  // `n` refuses connections: operations waiting on it are sent again
  // (elsewhere, where they can be) at once.
  void peer_unreachable(NodeId n);
  // The manager's renumbering, or a rename's move (`rename_to`): a
  // RenumberOp gathering the folder's records from `nodes`, handed to
  // Hooks::gathered when done (Manager::Hooks::gather).
  void gather_for(Time now, const std::string& user, const std::string& folder, const std::string& rename_to,
                  const std::vector<NodeId>& nodes);

 private:
  // Work in flight, and the manager's renumberings (gather_for): one type
  // per operation, holding only its own state; a Pending holds one of
  // them, with what every operation has.
  struct CreateUserOp {
    std::string password_hash;
  };
  // A count of the user's bytes, gathered from every live member.
  struct UsageCount {
    std::set<NodeId> awaiting;     // nodes still to answer
    std::uint64_t used_bytes = 0;  // summed so far
  };
  // A delivery's quota, counted here when the manager handed out its UID
  // without checking it (an older manager, or one that cannot count).
  struct QuotaCheck {
    AllocReply alloc;  // the allocation to store with; its quota_bytes: the user's quota
    UsageCount usage;
  };
  // A delivery, until it is stored: a UID asked of the manager, then, if
  // the manager did not check the quota, the user's usage counted. A
  // StoreOp then takes its place.
  struct DeliverOp {
    std::string folder;
    Body body;                        // the message
    DeliverOptions opts;              // date and flags to store with
    MsgId msg;                        // with a key: the message's id, chosen first
    std::optional<QuotaCheck> quota;  // set: the UID is granted, the usage being counted
  };
  // A delivery's store, asked of one replica, which coordinates it.
  struct StoreOp {
    Update update;
    NodeId peer = kNoNode;  // the replica asked
  };
  // An update of a message (flags, expunge, a move's Move), asked of one live replica at a time.
  struct MutateOp {
    Update update;
    NodeId peer = kNoNode;  // the replica asked last
  };
  // A move, until the destination's manager gives it a UID: a MutateOp
  // then sends the Move.
  struct MoveOp {
    Update update;  // the Move; its record's folder is the destination
  };
  // A reader's request that a message be given a new UID (renumber()).
  struct RenumOp {
    MessageRecord target;     // without its body
    std::uint32_t above = 0;  // the reader's highest UID
  };
  // A folder's records, gathered from the nodes of its mail map: by a
  // listing (ListOp) and by a renumbering (RenumberOp).
  struct Gather {
    std::string folder;                                    // the folder listed (a rename's: the old name)
    std::set<NodeId> awaiting;                             // nodes still to answer
    std::set<NodeId> answered;                             // nodes that answered
    std::map<MsgId, MessageRecord> gathered;               // merged records
    std::set<NodeId> full_from;                            // nodes asked for their records
    std::set<NodeId> with_records;                         // nodes whose records came
    std::map<NodeId, std::set<std::uint32_t>> parts_seen;  // parts of a reply in parts
    std::map<NodeId, std::uint64_t> digests;               // each answering node's folder digest
  };
  // A listing: the folder's mail map and lineage from its manager (Map),
  // then its records gathered from the map's nodes (List).
  struct ListOp {
    enum class Phase { Map, List } phase = Phase::Map;
    Gather g;
    std::uint32_t uidvalidity = 0, next_uid = 1;  // the folder's lineage
    std::uint32_t visible_below = 0;              // show only UIDs below (0: all)
    std::vector<std::uint32_t> inflight;          // in flight from visible_below up
    std::vector<UidTakeover> takeovers;           // hide the UIDs these make stale
    // The one node whose records are asked light (no versions), while
    // they are the only records asked for; kNoNode once a merge needs them whole.
    NodeId light_from = kNoNode;
    // The light node's records, by part, taken as they are: nothing is
    // merged into them, so they go to no map (g.gathered stays empty).
    std::vector<std::vector<MessageRecord>> light_parts;
    bool digest_only = false;         // the digest alone
    std::uint32_t meta_from_uid = 0;  // records' meta from this UID on (0: none)
  };
  // A manager's renumbering of a folder, or a rename's move of every
  // message: every holder's records, read whole.
  struct RenumberOp {
    Gather g;
    std::string rename_to;  // a rename's move of every message
  };
  // A message's body, asked of its holders one after another.
  struct FetchOp {
    MsgId msg;
    std::uint64_t size = 0;             // what the reader expects
    FetchPart part = FetchPart::Whole;  // what is asked for
    std::vector<NodeId> candidates;     // holders still to try
    std::set<NodeId> awaiting;          // holders asked
    NodeId peer = kNoNode;              // the holder asked last
  };
  // get_user: the user's manager asked for the profile; after a TryAgain,
  // with this node's memory of it (offer).
  struct ProfileOp {
    bool offer = false;
  };
  struct UserUpdateOp {
    UserUpdateRequest change;
  };
  // list_users: every member asked for the users it manages.
  struct UserListOp {
    std::set<NodeId> awaiting;    // nodes still to answer
    std::set<std::string> users;  // gathered
  };
  struct UsageOp {  // user_usage
    UsageCount count;
  };
  struct Pending {
    std::uint64_t client_req = 0;  // the local client's id (0 for internal work)
    Time deadline = 0;
    Time retry_at = 0;
    // The user (canonical) whose manager is asked; a fetch's as its target
    // names it. Empty for mutations and list_users.
    std::string user;
    using Op = std::variant<CreateUserOp, DeliverOp, StoreOp, MutateOp, MoveOp, RenumOp, ListOp, RenumberOp, FetchOp,
                            ProfileOp, UserUpdateOp, UserListOp, UsageOp>;
    Op op;
  };
  // The operation `id` when it is in flight and a T, with its entry;
  // nulls otherwise.
  template <class T>
  std::pair<Pending*, T*> pending_as(std::uint64_t id) {
    auto it = pending_.find(id);
    T* op = it == pending_.end() ? nullptr : std::get_if<T>(&it->second.op);
    return {op ? &it->second : nullptr, op};
  }
  // The gathering of a listing past its Map step, or of a renumbering;
  // null for any other operation.
  static Gather* gathering(Pending& p);
  static const Gather* gathering(const Pending& p);
  // Whether the operation waits on an answer from `n` (asked it, or waits
  // for it among others).
  static bool waits_on(const Pending& p, NodeId n);

  // frontend.cc
  void send(NodeId to, Message m) { hooks_.send(to, std::move(m)); }
  bool live(NodeId n) const;  // this node or a member
  Bucket bucket(const std::string& user) const;
  void fail(std::uint64_t id, Status s, const std::string& why);
  void gather(Time now, std::uint64_t id, const std::vector<NodeId>& nodes);
  ListRequest list_request(const Pending& p, std::uint64_t id, NodeId n) const;
  // A listing's or a renumbering's nodes still to answer, asked again.
  void list_retry(std::uint64_t id, Pending& p);
  // Nodes that answered their digest alone, equal to no digest of a node
  // whose records came: the records they hold are not gathered.
  std::set<NodeId> list_uncovered(const Pending& p) const;
  // Asks those for their records; false when there are none.
  bool list_more(std::uint64_t id, Pending& p);
  void list_unlight(std::uint64_t id, Pending& p);
  void take_light(Pending& p, ListReply& l);
  void finish_list(std::uint64_t id);
  void take_records(Pending& p, std::vector<MessageRecord>& records);
  void mutate(Time now, std::uint64_t req, Update::Kind kind, const MessageRecord& target,
              const std::function<void(MessageRecord&)>& fill);
  bool fetch_next(Pending& p, std::uint64_t id);

  // users.cc
  std::uint64_t start(Time now, Pending::Op op, std::uint64_t req, const std::string& user);
  // The count of a usage lookup or of a delivery's quota check; null for
  // any other operation.
  static UsageCount* usage_count(Pending& p);
  void usage_gather(Time now, std::uint64_t id);
  void store(std::uint64_t id, const AllocReply& a);
  void usage_reply(NodeId from, const UsageReply& u);
  bool user_reply(NodeId from, const Message& m);
  // The front end's memory of profiles it got (profile_memory_users,
  // profile_memory_ttl): the newest of each user.
  void remember_profile(const Profile& p);
  void forget_profile(const std::string& user);
  const Profile* remembered_profile(const std::string& user) const;
  // Offers the user's manager this node's memory of the profile (a reader
  // was told to try again).
  void offer_profile(const std::string& user);

  const CoreConfig& cfg_;
  const Membership& membership_;
  Hooks hooks_;
  std::map<std::uint64_t, Pending> pending_;
  // By when each was last got, oldest first; each profile holds its place.
  using RememberedOrder = std::multimap<Time, std::string>;
  struct RememberedProfile {
    Profile profile;
    RememberedOrder::iterator order;  // its place in remembered_order_; the key: when last got
  };
  std::map<std::string, RememberedProfile> remembered_;
  RememberedOrder remembered_order_;
};

}  // namespace porcupine
