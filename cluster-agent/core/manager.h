// SPDX-License-Identifier: MIT
// manager.h - the manager role: for the users of the buckets this node
// manages, the mail map (which nodes hold which folder's fragments), the
// profile rebuilt from its replicas, UID allocation, placement and the
// quota's count (manager.cc), and the manager's side of the user database
// (users.cc).
//
// Soft state only, rebuilt after every user-map change from the members'
// reports (report.h). It reads the node's membership, writes profiles and
// renumberings through its replicas, and sends through the node.
//
// The rest it needs of the node comes as callbacks (Hooks): the node's
// version counter (shared with every other writer of the node), the load
// table and spool states (shared with repair and the front end), and the
// front end's gathering. A renumbering, and a rename's move of every
// message, reads every holder's records of the folder; the front end
// already gathers them for a listing (asked again, parts, digests), so the
// manager asks the node to run one (Hooks::gather) and is given what came
// (on_gathered).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "membership.h"
#include "placement.h"
#include "replication.h"
#include "wire.h"

namespace porcupine {

class Manager {
 public:
  // What the manager needs of its node.
  struct Hooks {
    std::function<void(NodeId, Message)> send;
    std::function<void(const std::string&)> log;
    // The node's next version, stamped with the wall clock (Node::next_version).
    std::function<Version()> next_version;
    // The next version the node stamps is above `t` (a renumbering's new
    // UID must win over the old one, whatever its node's clock said).
    std::function<void(Time t)> version_above;
    std::function<Time()> wall;  // Env::wall()
    // This node or a member.
    std::function<bool(NodeId)> live;
    // The node's spool is below its reserve (Node::takes_no_copies).
    std::function<bool(NodeId)> takes_no_copies;
    // Members and their loads for placement; draining nodes count as full
    // unless `with_draining` (Node::live_loads).
    std::function<std::vector<NodeLoad>(bool with_draining)> live_loads;
    // Gathers every record of the user's `folder` from `nodes`, then gives
    // them to on_gathered. `rename_to`: a rename's move of every message
    // (empty: a renumbering). It may end at once (no node to ask).
    std::function<void(Time now, const std::string& user, const std::string& folder,
                       const std::string& rename_to, const std::vector<NodeId>& nodes)>
        gather;
  };

  Manager(const CoreConfig& cfg, const Membership& membership, Replicator& repl, Hooks hooks);

  struct Folder {
    std::set<NodeId> nodes;        // the mail map: nodes holding fragments
    // The folder's UID lineage: UIDVALIDITY and the next UID. Only this
    // manager hands out UIDs under it, until it hands the lineage on.
    std::uint32_t uidvalidity = 0;  // 0: not decided yet
    std::uint32_t next_uid = 1;
    std::map<std::uint32_t, std::uint32_t> handed;  // lineage -> next UID, from handoffs
    Version handed_gen;                              // the newest generation handed on
    UidView handed_seen;
    std::map<std::uint32_t, std::uint32_t> seen;    // lineage -> highest UID reported
    std::set<std::uint32_t> seen_live;              // lineages reported with live messages
    // (lineage, generation) -> highest UID reported where live mail is:
    // what a takeover may make stale.
    struct GenInfo {
      std::uint32_t top = 0;
      UidView seen;  // what the generation had been shown when it began
    };
    std::map<std::pair<std::uint32_t, Version>, GenInfo> gen_top;
    // What this manager has been shown of the lineage, per generation.
    UidView view() const;
    bool renumber_due = false;     // messages of other lineages await new UIDs
    bool renumber_running = false;
    // UIDs handed out (current lineage) whose store or move may still be
    // on its way, each until it is done or its deadline passes: listings
    // show nothing from the lowest of them on.
    std::map<std::uint32_t, Time> inflight;
    std::uint32_t visible_below(Time now) const;
    // Deliveries with a key (KeyedDelivery) of the last delivery_key_ttl,
    // by key, and their keys by time (pruned as the folder is delivered to).
    std::map<std::string, KeyedDelivery> keys;
    std::multimap<Time, std::string> key_order;
    // UIDs up to `reserved` may be handed out: their reservation is in the
    // profile on every live holder. One reservation is written at a time.
    std::uint32_t reserved = 0;
    Version reserve_write;         // the profile write of a reservation on its way
    std::uint32_t reserve_to = 0;
    // This manager's generation in the lineage: its predecessor's, handed
    // on, or a new one (a UidTakeover in the profile) when taken over.
    Version gen;
    UidView start_seen;  // what this generation had been shown when it began
    std::map<MsgId, std::uint32_t> late;  // readers found these below what they took: UID found under
    // Renamed from this folder (its lineage, mail map and state came
    // along): its messages are moved over under their UIDs; listings wait.
    std::string renamed_from;
    // This generation began by a takeover that is not yet on the profile's
    // holders: no listing is answered until it is (a reader must not see
    // what it hides come back if it were lost).
    bool takeover_pending = false;
  };
  struct User {
    std::optional<Profile> profile;
    // The profile came from a front end's memory (ProfileRequest::remembered),
    // not from a holder: none of its holders is live. It answers lookups
    // and listings; nothing is written to the profile (no UID is handed
    // out, no user change is taken) until a holder reports it.
    bool adopted = false;
    std::map<std::string, Folder> folders;
    // The quota's usage, soft state like the mail map: per member, the
    // bytes of the user's live mail it last reported, by replica list
    // (summed over folders). Each list counts once, at its largest report.
    std::map<NodeId, std::map<std::vector<NodeId>, std::uint64_t>> held;
    std::set<NodeId> unsized;  // members whose reports say no bytes (older nodes)
    // Deliveries given a UID that no report of their nodes shows yet:
    // counted until one does, or until their store's deadline, so racing
    // deliveries count each other.
    struct Grant {
      NodeId front_end = kNoNode;
      std::uint64_t req = 0;  // a request asked again replaces its grant
      std::string folder;
      std::uint32_t uidvalidity = 0, uid = 0;
      std::uint64_t size = 0;
      std::vector<NodeId> nodes;
      Time until = 0;
      Version gen;  // the folder's generation when granted
    };
    std::vector<Grant> granted;
  };

  // ---- observation ----
  const User* managed_user(const std::string& user) const;
  User* managed_user(const std::string& user) {
    return const_cast<User*>(std::as_const(*this).managed_user(user));
  }
  // The answer for a user this manager has no live profile of.
  Status missing_user_status(Bucket b, const User* u) const;
  bool bucket_ready(Bucket b) const;
  // The bytes of the user's live mail as this node, its manager, counts
  // them at `now`; nothing while it cannot: not the manager, the bucket not
  // ready, a member yet to report it, or a member that does not say (older).
  std::optional<std::uint64_t> managed_usage(const std::string& user, Time now) const;
  // This node's group holds most of the nodes it knows of (exactly half:
  // the half with the lowest id).
  bool majority() const;

  // ---- the node's events ----
  void on_change(Time now, const Membership::Change& ch);
  void tick(Time now);
  void on_report(Time now, NodeId from, const Report& r);
  void on_alloc(Time now, NodeId from, const AllocRequest& a);
  void on_alloc_done(const AllocDone& d);
  void on_renumber(Time now, NodeId from, const RenumberRequest& r);
  void on_create_user(Time now, NodeId from, const CreateUserRequest& c);
  void on_map(Time now, NodeId from, const MapRequest& m);
  // users.cc: the user database's manager side.
  void on_profile(Time now, NodeId from, const ProfileRequest& r);
  void on_user_update(Time now, NodeId from, const UserUpdateRequest& r);
  void on_user_list(NodeId from, const UserListRequest& r);
  // A gathering asked by Hooks::gather is over: `records` are what came,
  // `complete` whether every node asked answered.
  void on_gathered(Time now, const std::string& user, const std::string& folder, const std::string& rename_to,
                   const std::map<MsgId, MessageRecord>& records, bool complete);

  // Lineages of buckets this node managed until the last change, for their
  // new managers (the reporter sends them, and drops them once
  // acknowledged); valid only in the epoch that moved them.
  std::map<Bucket, std::vector<Handoff>>& handoffs() { return handoffs_; }

  // Repair and drain (repair.cc) give profiles new holders: `fn` is given
  // each user of the buckets this node manages and has ready, in order,
  // until it returns false.
  void each_ready_user(const std::function<bool(const std::string&, User&)>& fn);
  // To the profile's holders, and to `also` (old holders a new holder
  // list leaves out, so they drop their copies).
  Version write_profile(Time now, User& u, const std::vector<NodeId>& also = {});

 private:
  Bucket bucket(const std::string& user) const;
  // Notes a keyed delivery in `f` (a stored one stays stored), after
  // dropping those older than delivery_key_ttl (prune_keys).
  void remember_key(Folder& f, const KeyedDelivery& k);
  void prune_keys(Folder& f);  // by the wall clock: a key is dated by it
  // The keyed delivery an AllocRequest retries, when it is answered with
  // it: stored, or in the folder's lineage on live nodes.
  const KeyedDelivery* retry_of(User& u, const AllocRequest& a);
  // The grant of an AllocRequest asked again (same front end and request)
  // before its time ran out; null if none.
  const User::Grant* regrant(const User& u, NodeId from, const AllocRequest& a, Time now) const;
  // Fills an allocation's answer (rep.uid taken) and notes its nodes in
  // the mail map and its UID in flight until `until`.
  void grant(AllocReply& rep, Folder& f, const std::vector<NodeId>& nodes, Time until);
  void absorb_entry(const std::string& user, Folder& f, const ReportEntry& e);
  // A member's report of the user (all its mail of the user) replaces what
  // it said of the user's bytes before.
  void absorb_usage(const std::string& user, User& u, NodeId from, const std::vector<ReportEntry>& entries);
  std::optional<std::uint64_t> usage_of(const User& u, Time now) const;
  void decide_lineages(Time now, Bucket b);
  bool settle_lineage(Time now, const std::string& user, const std::string& folder, Folder& f,
                      bool for_new_mail = false);
  FolderMeta* lineage_meta(Time now, User& u, const std::string& folder, bool create);
  std::uint32_t fresh_uidvalidity(std::uint32_t before) const;
  // The next UID of the folder's lineage, or 0 while none is reserved (a
  // reservation is then on its way: try again).
  std::uint32_t take_uid(Time now, const std::string& user, const std::string& folder, Folder& f);
  void reserve_uids(Time now, const std::string& user, const std::string& folder, Folder& f,
                    std::uint32_t need);
  void check_reservations();
  // Whether UIDs may be handed out under the folder's generation now: it
  // exists, no newer takeover is known, and it is on the holders. Begins a
  // new one when due and this group is most of the cluster.
  bool current_generation(Time now, const std::string& user, const std::string& folder, Folder& f);
  // A new generation of the folder's lineage (a takeover, in the profile).
  void begin_generation(Time now, const std::string& user, const std::string& folder, Folder& f);
  // Renumbering is due if the folder's reported mail holds UIDs a
  // takeover of its lineage makes stale.
  void check_stale(const std::string& user, const std::string& folder, Folder& f);
  // Every takeover known of the folder's lineage: the profile's, and those
  // its reported mail names (each message carries its generation's).
  std::vector<UidTakeover> takeovers_of(const std::string& user, const std::string& folder,
                                        const Folder& f) const;
  bool start_renumber(Time now, const std::string& user, const std::string& folder);
  void on_renumber_done(Time now, const std::string& user, const std::string& folder,
                        const std::map<MsgId, MessageRecord>& records, bool complete);
  // A rename's move of every message from `folder`, the old name, to `to`.
  void start_rename(Time now, const std::string& user, const std::string& to);
  void on_rename_done(Time now, const std::string& user, const std::string& folder, const std::string& to,
                      const std::map<MsgId, MessageRecord>& records, bool complete);
  // users.cc
  Status rename_folder(Time now, const UserUpdateRequest& r, User& u);
  // Takes a front end's memory of a profile (from `from`) when this
  // manager has none and none of its holders is live; null when it does not.
  const User* adopt(Bucket b, NodeId from, const Profile& p);

  const CoreConfig& cfg_;
  const Membership& membership_;
  Replicator& repl_;
  Hooks hooks_;

  std::map<Bucket, std::map<std::string, User>> managed_;
  std::map<Bucket, std::set<NodeId>> awaiting_;   // bucket -> members yet to report
  std::map<Bucket, std::set<NodeId>> reported_;   // bucket -> members that have reported
  std::map<Bucket, std::set<NodeId>> expected_;   // kept bucket -> members back that have not reported it (allocations and listings wait)
  std::set<std::pair<std::string, std::string>> renumbers_due_;  // (user, folder)
  std::set<std::pair<std::string, std::string>> reserving_;      // (user, folder): reservation on its way
  std::set<std::pair<std::string, std::string>> renames_due_;    // (user, new name): messages to move over
  std::map<Bucket, std::vector<Handoff>> handoffs_;              // handoffs()
  Time awaiting_since_ = 0;
  Time last_inflight_prune_ = 0;
  Time last_poll_ = 0;
};

}  // namespace porcupine
