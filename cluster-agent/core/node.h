// SPDX-License-Identifier: MIT
// node.h - one node's cluster core: membership, replication, the manager
// role (mail maps, profiles, UIDs, placement) and the front-end role
// (local client operations), wired together.
//
// Pure state machine. The shell calls start(), then tick() every 100 ms or
// so, receive() for each message from a peer, and the client operations
// for local requests; effects leave through Env and the DurableStore.
// Single-threaded: every call must come from the same thread.
//
// Files: node.cc (wiring, dispatch), manager.h/manager.cc (manager role:
// Manager; its side of the user database in users.cc), report.h/report.cc
// (mail-map reporting: Reporter), frontend.h/frontend.cc (front-end role,
// the client operations: FrontEnd; its side of the user database in
// users.cc), serve.cc (the mail this node holds, served to peers),
// sync.h/sync.cc (anti-entropy: AntiEntropy).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "config.h"
#include "durable.h"
#include "env.h"
#include "frontend.h"
#include "manager.h"
#include "membership.h"
#include "placement.h"
#include "replication.h"
#include "report.h"
#include "sync.h"
#include "throttle.h"

namespace porcupine {

class Node {
 public:
  Node(CoreConfig cfg, Env& env, DurableStore& disk);

  void start(Time now);
  void tick(Time now);
  // By value: a reply's records move into what the node keeps.
  void receive(Time now, Envelope e);
  // The transport could not connect to `n`: its address refused (no
  // process listens there). Membership takes it out at once
  // (Membership::unreachable), a store waiting for it is failed over
  // without waiting out its patience, and requests waiting on it are sent
  // again (elsewhere, where they can be) at once.
  void peer_unreachable(Time now, NodeId n);
  // A connection with `n` is up (again): a refusal no longer stands.
  void peer_reachable(NodeId n) { membership_.reachable(n); }

  // ---- local client operations; each ends in exactly one Env::reply ----
  void create_user(Time now, std::uint64_t req, const std::string& user,
                   const std::string& password_hash);
  void deliver(Time now, std::uint64_t req, const std::string& user, const std::string& folder,
               Body body, DeliverOptions opts = {});
  // `target` needs id, user, folder and replicas (as a list or deliver gave them).
  // The message's whole flag state: system flags and keywords (last writer wins).
  void set_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t flags,
                 std::vector<std::string> keywords = {});
  // Sets and clears some flags and keywords, leaving the others as they
  // are: changes of different flags by different writers all survive; for
  // one flag the last writer wins.
  void change_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t add_flags,
                    std::uint32_t remove_flags, const std::vector<std::string>& add_keywords = {},
                    const std::vector<std::string>& remove_keywords = {});
  void expunge(Time now, std::uint64_t req, const MessageRecord& target);
  // Asks the folder's manager to move the message (`target`: id, user,
  // folder, replicas, and the uidvalidity and uid it was found under) to a
  // new UID at the end of the lineage, above `above` (the highest UID the
  // asking reader has taken): done by a renumbering that lists the holders
  // first, so only if the message is still there under that UID. The reply
  // says it is scheduled; listings show the message again under its new UID.
  void renumber(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t above);
  // Into another folder of the same user, under a UID the destination's
  // manager gives it first (the reply's uid and uidvalidity): it shows in
  // that folder's listings once the reply is given.
  void move(Time now, std::uint64_t req, const MessageRecord& target, const std::string& to_folder);
  // The folder's messages, gathered from every node of its mail map; with
  // digest_only, only a digest of them (ClientReply::folder_digest), which
  // changes whenever what a listing would show changes. Records carry
  // their meta only from UID meta_from_uid on (0: none), so a reader that
  // has indexed the lower UIDs is not sent theirs again.
  void list(Time now, std::uint64_t req, const std::string& user, const std::string& folder,
            bool digest_only = false, std::uint32_t meta_from_uid = 0);
  // `target` needs id and replicas; tries this node first, then each replica.
  // With a user (canonical), only that user's message is given (NotFound
  // otherwise); with a size (what the reader expects), the deadline is
  // longer by its crossing time. Header: the holder sends the header part
  // only (ClientReply::part says what came: an older holder sends Whole).
  void fetch(Time now, std::uint64_t req, const MessageRecord& target, FetchPart part = FetchPart::Whole);
  // ---- operations made of several (composite.cc); each ends in one reply ----
  // One body to each recipient's `folder`, one recipient after another:
  // the reply's `delivered` has each one's outcome in order; its status is
  // Ok only if every recipient's is (TryAgain if any is, else the first
  // failure's).
  void deliver_all(Time now, std::uint64_t req, const std::vector<std::string>& recipients,
                   const std::string& folder, Body body, DeliverOptions opts = {});
  // The folder's messages expunged (listed, then each in turn), then the
  // folder deleted; the first failure ends it.
  void delete_folder(Time now, std::uint64_t req, const std::string& user, const std::string& folder);
  // A folder renamed with its UIDVALIDITY and every message's UID (the
  // manager's RenameFolder). INBOX stays, emptied: `to` is created and
  // INBOX's messages are moved there (new UIDs).
  void rename_folder(Time now, std::uint64_t req, const std::string& user, const std::string& from,
                     const std::string& to);
  // get_user, with the user's used bytes in the reply when `with_usage` or
  // the user has a quota: the manager's count, or, while it has none (a
  // member has still to report to a new manager), gathered from every node.
  void lookup_user(Time now, std::uint64_t req, const std::string& user, bool with_usage);
  // A password check (password.h): Ok with the profile (no hash) when the
  // user is enabled and the password matches its stored hash; AuthFailed
  // otherwise. A user's failures are limited (cfg auth_failures_per_user
  // per auth_failure_window): past them, TryAgain without a check.
  void authenticate(Time now, std::uint64_t req, const std::string& user, const std::string& password);

  // The user database (users.cc), answered by each user's manager.
  void get_user(Time now, std::uint64_t req, const std::string& user);
  void update_user(Time now, std::uint64_t req, const UserUpdateRequest& change);
  void list_users(Time now, std::uint64_t req);
  // The bytes of the user's live mail, gathered from every live node (a
  // reply's used_bytes). The manager counts them too (get_user's
  // used_bytes, managed_usage); this is the fallback while it cannot.
  void user_usage(Time now, std::uint64_t req, const std::string& user);
  // Operators (repair.cc): drain a node (Draining), take it back (Active),
  // or declare it lost for good (Gone: it must not be a live member).
  // Spread to every member by a membership round; answered at once.
  void administer(Time now, std::uint64_t req, NodeId n, AdminState state);

  // ---- observation (status, tests, the simulator's checker) ----
  // The manager's state of a folder and of a user (manager.h).
  using MgrFolder = Manager::Folder;
  using MgrUser = Manager::User;
  NodeId id() const { return cfg_.self; }
  // Stores of this node's that replaced a silent replica (store_failover).
  std::uint64_t store_failovers() const { return store_failovers_; }
  const CoreConfig& config() const { return cfg_; }
  const Membership& membership() const { return membership_; }
  const Replicator& replicator() const { return repl_; }
  std::uint32_t load() const;
  std::uint32_t peer_load(NodeId n) const {
    auto it = loads_.find(n);
    return it == loads_.end() ? 0 : it->second;
  }
  // The shell's measure of this node's spool: below its reserve the node
  // is full, and says so on every message it sends (Envelope::full), so
  // managers place no new copies on it. A full node is sent few messages
  // by most managers (it acknowledges no copies), so every member is also
  // told each second while it is full and for a few seconds after.
  void set_spool_full(bool full);
  bool spool_full() const { return spool_full_; }
  // What `n`'s last message said of its spool (an older node: not full).
  bool peer_full(NodeId n) const { return full_peers_.count(n) > 0; }
  // Its spool is below its reserve (this node's, or as the peer last said).
  bool takes_no_copies(NodeId n) const { return n == cfg_.self ? spool_full_ : peer_full(n); }
  const MgrUser* managed_user(const std::string& user) const { return manager_.managed_user(user); }
  MgrUser* managed_user(const std::string& user) { return manager_.managed_user(user); }
  // The answer for a user this manager has no live profile of.
  Status missing_user_status(Bucket b, const MgrUser* u) const { return manager_.missing_user_status(b, u); }
  bool bucket_ready(Bucket b) const { return manager_.bucket_ready(b); }
  // The bytes of the user's live mail as this node, its manager, counts
  // them; nothing while it cannot: not the manager, the bucket not ready,
  // a member yet to report it, or a member that does not say (older).
  std::optional<std::uint64_t> managed_usage(const std::string& user) const {
    return manager_.managed_usage(user, now_);
  }
  std::size_t pending_reports() const { return reporter_.pending(); }
  // Anti-entropy (sync.h): what this node has asked of its peers and got.
  using SyncProgress = AntiEntropy::Progress;
  SyncProgress sync_progress() const { return anti_entropy_.progress(); }
  // Repair and drain (repair.cc), as this node sees them.
  struct RepairProgress {
    std::uint64_t copies = 0;         // new copies acknowledged
    std::uint64_t bytes = 0;          // their bytes
    std::uint64_t lists = 0;          // new replica lists written
    std::uint64_t profiles = 0;       // profiles given new holders (as manager)
    std::uint64_t copies_failed = 0;  // copies given up (tried again later)
    std::uint64_t pending = 0;        // messages this node leads that still need a copy (last full pass)
    std::uint64_t passes = 0;         // full passes over this node's records
    std::size_t inflight = 0;         // messages being copied now
    std::size_t draining = 0, gone = 0;  // nodes the table names so
  };
  RepairProgress repair_progress() const;
  // What still lives on this node (a draining node is done at all zeros).
  struct DrainProgress {
    AdminState state = AdminState::Active;
    std::uint64_t messages = 0, bytes = 0;  // live messages whose replica list names this node
    std::uint64_t profiles = 0;             // profiles naming it a holder
    std::uint64_t buckets = 0;              // buckets it manages
  };
  DrainProgress drain_progress() const;
  // The digest of what this node holds of `user` that names `node` (its
  // records listing `node` as a replica, and the profile if `node` is a
  // holder): X's digest for Y equals Y's for X when the two hold the same
  // of what they share.
  std::uint64_t sync_digest(const std::string& user, NodeId node) const { return anti_entropy_.digest(user, node); }

 private:
  // node.cc
  // Every public entry holds one: when the outermost returns, the replies
  // of steps (below) are handed to their continuations, so a continuation
  // never runs inside the operation that replied.
  class Entry {
   public:
    Entry(Node& n, Time now);
    ~Entry();
    Entry(const Entry&) = delete;
    Entry& operator=(const Entry&) = delete;

   private:
    Node& n_;
  };
  // A step of a composite operation: an operation of this node's own whose
  // reply goes to `then` instead of Env (request ids with kStepBit).
  static constexpr std::uint64_t kStepBit = std::uint64_t{1} << 62;
  using Then = std::function<void(ClientReply&)>;
  std::uint64_t step(Then then);
  void run_steps();
  // Every client reply leaves through here: to Env, or to its step.
  void reply(ClientReply r);

  // composite.cc
  struct Fanout;
  void deliver_next(const std::shared_ptr<Fanout>& f);
  using PerMessage = std::function<void(std::uint64_t sub, const MessageRecord&)>;
  using Last = std::function<void(std::uint64_t sub)>;
  // Lists the folder, runs `each` on its messages one after another, then
  // `last` (none: the reply is Ok); the first failure is the reply.
  void for_each_message(std::uint64_t req, const std::string& user, const std::string& folder, PerMessage each,
                        Last last);
  void step_messages(std::uint64_t req, std::shared_ptr<std::vector<MessageRecord>> msgs, std::size_t i,
                     PerMessage each, Last last);
  // A reply to the client `req` with `c`'s status and detail (nothing else).
  void relay(std::uint64_t req, const ClientReply& c);

  void send(NodeId to, Message m);
  void on_change(const Membership::Change& ch);
  bool live(NodeId n) const;
  Version next_version();     // stamped with the wall clock
  Time wall() const { return env_.wall(); }
  void persist_counters();
  Bucket bucket(const std::string& user) const;
  bool manages(const std::string& user) const;

  // Members and their loads for placement (the manager's and repair's);
  // draining nodes count as full unless `with_draining`.
  std::vector<NodeLoad> live_loads(bool with_draining = false) const;

  // Request ids: the front end's (FrontEnd::Hooks::new_req) and repair's.
  std::uint64_t new_req() { return next_req_++; }

  // serve.cc: the mail this node holds, served to the peers' front ends.
  void serve_list(NodeId from, const ListRequest& l);
  void serve_store(Time now, NodeId from, const StoreRequest& s);
  // Stores waiting on a replica silent beyond store_patience: it is
  // replaced by another live node, and the store completes on live nodes.
  void store_failover(Time now);
  Time store_patience(std::uint64_t size) const;
  void store_done(const Version& id);
  void serve_mutate(Time now, NodeId from, const MutateRequest& m);
  void serve_fetch(NodeId from, const FetchRequest& f);
  void serve_usage(NodeId from, const UsageRequest& r);

  // repair.cc
  // A record as this node holds it (its body if `r` carries one) to one
  // node, as a Push of a Copy under `id` (copy_push).
  void send_copy(NodeId to, MessageRecord r, const Version& id) {
    send(to, copy_push(cfg_.self, to, std::move(r), id));
  }
  struct RepairCopy {
    MessageRecord rec;           // under its new replica list (without body)
    std::vector<NodeId> old;     // the list it replaces
    std::set<NodeId> waiting;    // new replicas yet to acknowledge their copy
    std::uint64_t size = 0;
    Time until = 0;
    int attempts = 0;
  };
  bool admin_active(NodeId n) const;
  bool anything_leaving() const;
  void admin_tick(Time now);
  void repair_tick(Time now);
  void repair_start(Time now, const MessageRecord& r);
  bool repair_send(Time now, const MsgId& id, RepairCopy& c);
  void repair_ack(Time now, NodeId from, const Version& v);
  void repair_profiles(Time now);
  // A draining node asks the managers about the profiles it holds (its
  // copy may be older than a new holder list that left it out).
  void drain_check_profiles(Time now);
  bool drain_profile_reply(const ProfileReply& r);
  std::vector<NodeId> repair_targets(const std::string& user, const std::vector<NodeId>& exclude, std::size_t want,
                                     bool for_profile, bool draining = false) const;

  CoreConfig cfg_;
  Env& env_;
  DurableStore& disk_;
  Time now_ = 0;
  Membership membership_;
  Replicator repl_;
  std::uint64_t next_seq_ = 1;
  Time last_version_ = 0;
  std::uint32_t last_lineage_ = 0;
  std::uint64_t next_req_ = 1;
  // composite operations (node.cc Entry, step; composite.cc)
  int depth_ = 0;
  std::uint64_t next_step_ = 1;
  std::map<std::uint64_t, Then> steps_;
  std::deque<ClientReply> step_replies_;
  FailureThrottle auth_throttle_;

  // manager role (soft state; manager.h); before the reporter, which
  // sends its handoffs
  Manager manager_;
  // load table, piggybacked on every message (placement by the manager,
  // repair targets)
  std::map<NodeId, std::uint32_t> loads_;
  std::set<NodeId> full_peers_;                    // nodes whose last message said their spool is full
  bool spool_full_ = false;                        // this node's (set_spool_full)
  Time full_told_until_ = 0, full_told_at_ = 0;    // announcing spool_full_ to every member

  // reporter role (soft state; report.h)
  Reporter reporter_;

  // anti-entropy (soft state; sync.h)
  AntiEntropy anti_entropy_;

  // repair and drain (soft state)
  std::map<MsgId, RepairCopy> repair_;
  std::map<Version, MsgId> repair_versions_;  // a copy's list version -> its message
  MsgId repair_cursor_;
  std::uint64_t repair_found_ = 0;
  RepairProgress repair_stats_;
  std::map<NodeId, Time> missing_since_;  // known nodes not in the group, since
  std::map<std::uint64_t, std::string> profile_checks_;  // drain_check_profiles: request -> user
  Time profile_checked_ = 0;
  std::set<MsgId> repair_forward_;        // records changed through an outdated list (on_list_outdated)

  // front-end role (soft state; frontend.h)
  FrontEnd fe_;

  // the holder's side of the front ends' stores (serve.cc)
  // A store this node coordinates for a front end (serve_store), answered
  // when every replica holds it (on_complete).
  struct StoreWaiter {
    NodeId peer;
    std::uint64_t req;
    Time since = 0;                 // asked, or last retargeted
    std::uint64_t size = 0;         // the body's bytes
    MsgId msg;
    std::vector<NodeId> replaced;   // replicas a retarget left out
    std::vector<NodeId> replicas;   // the list after a retarget (empty: as asked)
    Version relisted;               // that list's version
    bool nowhere = false;           // the last look found no node to replace one with
  };
  std::map<Version, StoreWaiter> stores_;
  // How long the stores this node coordinates take to be held by every
  // replica (smoothed, and its mean deviation, in ms): a replica silent
  // well beyond it is replaced (store_failover).
  double store_srtt_ = 200, store_rttvar_ = 100;
  // When each peer was last heard from (any message): a replica is taken
  // for silent only when it has said nothing at all for a while.
  std::map<NodeId, Time> heard_;
  bool silent_for(NodeId n, Time t) const {
    if (membership_.refuses(n)) return true;
    auto h = heard_.find(n);
    return h == heard_.end() || now_ - h->second >= t;
  }
  std::uint64_t store_failovers_ = 0;  // silent replicas replaced
};

}  // namespace porcupine
