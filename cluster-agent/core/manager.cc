// SPDX-License-Identifier: MIT
// manager.cc - the manager role (Manager, manager.h): for the users of the
// buckets this node manages, the mail map (which nodes hold which folder's
// fragments), the profile rebuilt from its replicas, UID allocation and
// placement.
//
// All of it is soft state, rebuilt after every user-map change from the
// members' reports (report.cc). A bucket that moved here serves nothing
// until every member has reported it ("ready").
//
// Quota. The reports also say the bytes of each user's live mail, by
// replica list, so the manager counts the user's usage (the largest
// report of each list, plus deliveries it gave a UID that no report shows
// yet) and refuses a delivery over the quota when it hands out the UID:
// no delivery asks every node. While a member has not reported the bucket
// (after a takeover) the count is not known; the front end then gathers it
// from the nodes as before.
//
// UIDs. Each folder has one lineage at a time: a UIDVALIDITY and a next
// UID, and only one manager hands out UIDs under it. A manager that loses
// a bucket hands each folder's lineage to the new manager in its report,
// valid only in the epoch that moved the bucket, so a lineage never forks.
// A manager that receives no handoff for a folder (its predecessor crashed
// or is on the far side of a partition, still handing out UIDs perhaps)
// starts a new lineage, and every message still carrying another
// lineage's UID is renumbered into the current one.

#include "manager.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "hash.h"
#include "placement.h"

namespace porcupine {

namespace {
// UIDs a manager reserves in a folder's lineage at a time (one profile
// write per this many deliveries into the folder).
constexpr std::uint32_t kUidBlock = 64;
}  // namespace

Manager::Manager(const CoreConfig& cfg, const Membership& membership, Replicator& repl, Hooks hooks)
    : cfg_(cfg), membership_(membership), repl_(repl), hooks_(std::move(hooks)) {}

Bucket Manager::bucket(const std::string& user) const { return bucket_of(user, cfg_.buckets); }

const Manager::User* Manager::managed_user(const std::string& user) const {
  auto b = managed_.find(bucket(user));
  if (b == managed_.end()) return nullptr;
  auto u = b->second.find(user);
  return u == b->second.end() ? nullptr : &u->second;
}

bool Manager::bucket_ready(Bucket b) const {
  return membership_.in_group() && membership_.manager_of(b) == cfg_.self && !awaiting_.count(b);
}

void Manager::each_ready_user(const std::function<bool(const std::string&, User&)>& fn) {
  for (auto& [b, users] : managed_) {
    if (!bucket_ready(b)) continue;
    for (auto& [name, u] : users)
      if (!fn(name, u)) return;
  }
}

std::optional<std::uint64_t> Manager::usage_of(const User& u, Time now) const {
  if (!u.unsized.empty()) return std::nullopt;
  // Every replica of a message reports it under the same list: the
  // largest report of a list is its bytes, counted once however many
  // copies there are, and whichever of them is down or still waits for
  // its body. (A replica behind on an expunge makes it briefly more; a
  // copy left under a list a repair or drain replaced, on a node that
  // missed the new list, is counted under both lists until anti-entropy
  // tells that node and it drops the copy.)
  std::map<std::vector<NodeId>, std::uint64_t> most;
  for (const auto& [n, lists] : u.held)
    for (const auto& [list, bytes] : lists) most[list] = std::max(most[list], bytes);
  std::uint64_t sum = 0;
  for (const auto& [list, bytes] : most) sum += bytes;
  for (const auto& g : u.granted)
    if (g.until > now) sum += g.size;
  return sum;
}

std::optional<std::uint64_t> Manager::managed_usage(const std::string& user, Time now) const {
  Bucket b = bucket(user);
  if (!bucket_ready(b) || expected_.count(b)) return std::nullopt;
  const User* u = managed_user(user);
  return u ? usage_of(*u, now) : std::optional<std::uint64_t>(0);
}

void Manager::absorb_usage(const std::string& user, User& u, NodeId from, const std::vector<ReportEntry>& entries) {
  std::map<std::vector<NodeId>, std::uint64_t> held;
  bool sized = true;
  for (const auto& e : entries) {
    if (e.user != user) continue;
    if (e.count > 0 && e.bytes.empty()) sized = false;
    for (const auto& b : e.bytes) held[b.replicas] += b.bytes;
    // A delivery is in the report once a node it went to reports its UID
    // (a UID below another it holds while its own store is still on the
    // way goes uncounted until that store is reported too).
    std::erase_if(u.granted, [&](const User::Grant& g) {
      if (g.folder != e.folder || std::find(g.nodes.begin(), g.nodes.end(), from) == g.nodes.end()) return false;
      for (const auto& r : e.ranges)
        if (r.uidvalidity == g.uidvalidity && r.min_uid <= g.uid && g.uid <= r.max_uid) return true;
      return false;
    });
  }
  if (held.empty()) u.held.erase(from);
  else u.held[from] = std::move(held);
  if (sized) u.unsized.erase(from);
  else u.unsized.insert(from);
}

std::uint32_t Manager::Folder::visible_below(Time now) const {
  for (const auto& [uid, until] : inflight)
    if (until > now) return uid;
  return next_uid;
}

UidView Manager::Folder::view() const {
  UidView out;
  for (const auto& [key, t] : gen_top)
    if (key.first == uidvalidity) out.push_back(GenTop{key.second, t.top});
  return out;
}

void Manager::on_change(Time now, const Membership::Change& ch) {
  std::set<NodeId> now_members, departed;
  for (const auto& m : ch.members) now_members.insert(m.id);
  for (const auto& m : ch.old_members)
    if (!now_members.count(m.id)) departed.insert(m.id);
  handoffs_.clear();  // a handoff not delivered in its epoch is void
  bool same_size = ch.old_map.size() == ch.map.size();
  for (Bucket b = 0; b < ch.map.size(); ++b) {
    NodeId was = same_size ? ch.old_map[b] : kNoNode;
    if (ch.map[b] != cfg_.self) {
      // Lost: hand each folder's lineage to the new manager, if this node
      // was handing out UIDs for the bucket.
      if (was == cfg_.self && !awaiting_.count(b))
        if (auto m = managed_.find(b); m != managed_.end())
          for (const auto& [name, u] : m->second)
            for (const auto& [fname, f] : u.folders)
              if (f.uidvalidity != 0) {
                Handoff h{name, fname, f.uidvalidity, f.next_uid, {}, f.gen, f.start_seen, {}};
                for (const auto& [uid, until] : f.inflight)
                  if (until > now) h.inflight.push_back(uid);
                for (const auto& [key, k] : f.keys)
                  if (k.at + cfg_.delivery_key_ttl > hooks_.wall()) h.keys.push_back(k);
                handoffs_[b].push_back(std::move(h));
              }
      expected_.erase(b);
      managed_.erase(b);
      awaiting_.erase(b);
      reported_.erase(b);
    } else if (was != cfg_.self) {
      // Moved here: start from nothing and wait for every member's report.
      managed_.erase(b);
      reported_.erase(b);
      awaiting_[b] = now_members;
    } else {
      // Kept: forget what departed nodes held; they report again on return.
      auto& users = managed_[b];
      for (auto& [name, u] : users) {
        for (auto& [fname, f] : u.folders)
          for (NodeId d : departed) f.nodes.erase(d);
        for (NodeId d : departed) {
          u.held.erase(d);  // its copies are counted by the replicas still here
          u.unsized.erase(d);
        }
      }
      for (NodeId d : departed) reported_[b].erase(d);
      // A member new to this manager may hold fragments of the bucket while
      // its own view says nothing moved (or have been in another group that
      // handed out UIDs): ask it. Listings go on; UIDs wait for its report.
      if (auto x = expected_.find(b); x != expected_.end()) {
        for (NodeId d : departed) x->second.erase(d);
        if (x->second.empty()) expected_.erase(x);
      }
      for (NodeId n : now_members)
        if (n != cfg_.self && !reported_[b].count(n)) expected_[b].insert(n);
      if (auto a = awaiting_.find(b); a != awaiting_.end()) {
        for (NodeId d : departed) a->second.erase(d);
        for (NodeId n : now_members)
          if (!reported_[b].count(n)) a->second.insert(n);
        if (a->second.empty()) {
          awaiting_.erase(a);
          decide_lineages(now, b);
        }
      }
    }
  }
  awaiting_since_ = now;
  last_poll_ = now - cfg_.report_poll;  // new members of kept buckets are asked at once
}

void Manager::absorb_entry(const std::string& user, Folder& f, const ReportEntry& e) {
  for (const auto& r : e.ranges) {
    if (r.max_uid != 0) {
      auto [it, fresh] = f.seen.try_emplace(r.uidvalidity, r.max_uid);
      if (!fresh) it->second = std::max(it->second, r.max_uid);
    }
    if (r.live == 0) continue;
    f.seen_live.insert(r.uidvalidity);
    auto& top = f.gen_top[{r.uidvalidity, r.gen}];
    top.top = std::max(top.top, r.max_uid);
    top.seen = r.seen;
    if (f.uidvalidity != 0 && r.uidvalidity != f.uidvalidity && !f.renumber_due) {
      f.renumber_due = true;
      renumbers_due_.insert({user, e.folder});
    }
  }
  if (f.uidvalidity != 0)
    if (auto s = f.seen.find(f.uidvalidity); s != f.seen.end())
      f.next_uid = std::max(f.next_uid, s->second + 1);
}

bool Manager::majority() const {
  const auto& known = membership_.known();
  std::size_t in = 0;
  for (NodeId n : known) in += hooks_.live(n) ? 1 : 0;
  if (!known.count(cfg_.self)) ++in;
  std::size_t all = known.size() + (known.count(cfg_.self) ? 0 : 1);
  if (2 * in != all) return 2 * in > all;
  // Exactly half: the half with the lowest known node.
  NodeId lowest = cfg_.self;
  for (NodeId n : known) lowest = std::min(lowest, n);
  return hooks_.live(lowest);
}

std::uint32_t Manager::fresh_uidvalidity(std::uint32_t before) const {
  // Seconds since 1970, and above what the folder had before (RFC 3501: a
  // folder created again under the same name gets a greater value).
  return std::max(static_cast<std::uint32_t>(hooks_.wall() / 1000), before + 1);
}

FolderMeta* Manager::lineage_meta(Time now, User& u, const std::string& folder, bool create) {
  if (!u.profile || u.profile->deleted) return nullptr;
  auto it = u.profile->folders.find(folder);
  if (it != u.profile->folders.end() && it->second.uidvalidity != 0 && !it->second.deleted) return &it->second;
  if (!create || u.adopted) return nullptr;  // an adopted profile gets no new lineage
  // A folder with no lineage yet (INBOX of a user from before lineages
  // were kept in the profile, or a delivery into a folder never created):
  // its UIDVALIDITY is fixed now, for good.
  FolderMeta& m = u.profile->folders[folder];
  if (m.version.is_null() || m.deleted) m.version = hooks_.next_version();
  m.deleted = false;  // new mail into a deleted folder makes it again
  m.renamed_to.clear();
  m.uidvalidity = fresh_uidvalidity(m.uidvalidity);
  m.uid_reserved = 0;
  m.takeovers.clear();
  write_profile(now, u);
  return &m;
}

Version Manager::write_profile(Time now, User& u, const std::vector<NodeId>& also) {
  if (!u.profile || u.adopted) return {};
  Update up;
  up.id = hooks_.next_version();
  up.kind = Update::Kind::Profile;
  up.replicas = u.profile->holders;
  up.replicas.insert(up.replicas.end(), also.begin(), also.end());
  up.profile = *u.profile;
  Version id = up.id;
  repl_.coordinate(now, std::move(up));
  return id;
}

bool Manager::settle_lineage(Time now, const std::string& user, const std::string& folder,
                             Folder& f, bool for_new_mail) {
  if (f.uidvalidity != 0) return true;
  User& u = managed_[bucket(user)][user];
  // The lineage is the profile's: decided only once a holder of it is
  // heard from (what the others were shown is not enough).
  if (!u.profile || u.profile->deleted) return false;
  auto seen_top = [&f](std::uint32_t v) {
    auto s = f.seen.find(v);
    return s == f.seen.end() ? 0u : s->second;
  };
  if (auto gone = u.profile->folders.find(folder);
      gone != u.profile->folders.end() && gone->second.deleted && !gone->second.renamed_to.empty())
    return false;  // renamed: its mail goes to the new name, it gets no lineage of its own
  if (auto gone = u.profile->folders.find(folder);
      !for_new_mail && gone != u.profile->folders.end() && gone->second.deleted)
    return false;  // deleted: what is still reported of it is on its way out, and a listing has no folder
  FolderMeta* m = lineage_meta(now, u, folder, false);
  if (!m && u.adopted) return false;  // decided once a holder of the profile reports it
  if (!m && !u.profile->folders.count(folder) && (!f.handed.empty() || !f.seen.empty())) {
    // No lineage in the profile (mail from before lineages were kept
    // there): the handed-on one, or the newest that holds live mail,
    // recorded in the profile from now on.
    std::uint32_t v = 0;
    if (!f.handed.empty()) {
      v = std::max_element(f.handed.begin(), f.handed.end(), [](const auto& x, const auto& y) {
            return std::pair(x.second, x.first) < std::pair(y.second, y.first);
          })->first;
    } else if (!f.seen_live.empty()) {
      v = *f.seen_live.rbegin();
    } else {
      v = f.seen.rbegin()->first;
    }
    m = &u.profile->folders[folder];
    if (m->version.is_null()) m->version = hooks_.next_version();
    m->uidvalidity = v;
    m->uid_reserved = std::max(m->uid_reserved, seen_top(v));
    write_profile(now, u);
  }
  if (!m) {
    // A new folder: its lineage starts now (in the profile first).
    m = lineage_meta(now, u, folder, true);
    if (!m) return false;
  }
  // The profile holds the folder's lineage: it is always that one.
  f.uidvalidity = m->uidvalidity;
  if (auto h = f.handed.find(f.uidvalidity); h != f.handed.end() && !f.handed_gen.is_null()) {
    // Handed on: the predecessor stopped handing out UIDs; the rest of
    // its reservation and its generation are ours.
    f.gen = f.handed_gen;
    f.start_seen = f.handed_seen;
    f.next_uid = std::max(h->second, seen_top(f.uidvalidity) + 1);
    f.reserved = m->uid_reserved;
  } else {
    // Taken over (the predecessor crashed, or is behind a partition, or
    // the folder is new): above everything the predecessor may have
    // handed out, under a generation of its own, begun before the first
    // UID (begin_generation).
    f.gen = {};
    f.next_uid = std::max(m->uid_reserved, seen_top(f.uidvalidity)) + 1;
    f.reserved = f.next_uid - 1;
    if (majority()) begin_generation(now, user, folder, f);
  }
  f.handed.clear();
  f.handed_gen = {};
  f.handed_seen.clear();
  bool others = false;
  for (std::uint32_t v : f.seen_live) others |= v != f.uidvalidity;
  if (others && !f.renumber_due) {
    f.renumber_due = true;
    renumbers_due_.insert({user, folder});
  }
  check_stale(user, folder, f);
  return true;
}

bool Manager::current_generation(Time now, const std::string& user, const std::string& folder, Folder& f) {
  bool newer = f.gen.is_null();
  for (const auto& t : takeovers_of(user, folder, f)) newer |= t.gen > f.gen;
  if (!newer) return !f.takeover_pending;
  // No generation yet (taken over in a group that was not most of the
  // cluster), or another manager began a newer one meanwhile: only a group
  // of most of the cluster begins one, and UIDs wait for it.
  if (majority()) begin_generation(now, user, folder, f);
  return false;
}

void Manager::begin_generation(Time now, const std::string& user, const std::string& folder, Folder& f) {
  User& u = managed_[bucket(user)][user];
  if (u.adopted) return;  // a takeover is written to the profile's holders
  FolderMeta* m = lineage_meta(now, u, folder, false);
  if (!m || m->uidvalidity != f.uidvalidity) return;
  // What this manager has been shown of the lineage, its own generation's
  // UIDs included (when it goes on after another took over meanwhile).
  UidView seen = f.view();
  if (!f.gen.is_null()) {
    bool mine = false;
    for (auto& g : seen)
      if (g.gen == f.gen) g.top = std::max(g.top, f.next_uid - 1), mine = true;
    if (!mine) seen.push_back(GenTop{f.gen, f.next_uid - 1});
  }
  f.gen = hooks_.next_version();
  f.start_seen = seen;
  f.next_uid = std::max(f.next_uid, m->uid_reserved + 1);
  if (auto s = f.seen.find(f.uidvalidity); s != f.seen.end()) f.next_uid = std::max(f.next_uid, s->second + 1);
  f.reserved = f.next_uid - 1;
  m->takeovers.push_back(UidTakeover{f.gen, seen});
  if (m->takeovers.size() > 32) m->takeovers.erase(m->takeovers.begin());
  // On the holders (with a first reservation) before any listing shows
  // what it makes stale, or any UID is handed out under it.
  f.takeover_pending = true;
  f.reserve_write = {};
  reserve_uids(now, user, folder, f, 1);
}

std::vector<UidTakeover> Manager::takeovers_of(const std::string& user, const std::string& folder,
                                               const Folder& f) const {
  std::vector<UidTakeover> out;
  if (const User* u = managed_user(user); u && u->profile)
    if (auto m = u->profile->folders.find(folder);
        m != u->profile->folders.end() && m->second.uidvalidity == f.uidvalidity)
      out = m->second.takeovers;
  for (const auto& [key, t] : f.gen_top)
    if (key.first == f.uidvalidity) add_takeover(out, UidTakeover{key.second, t.seen});
  add_takeover(out, UidTakeover{f.gen, f.start_seen});
  return out;
}

void Manager::check_stale(const std::string& user, const std::string& folder, Folder& f) {
  if (f.uidvalidity == 0 || f.renumber_due) return;
  const auto t = takeovers_of(user, folder, f);
  for (const auto& [key, top] : f.gen_top)
    if (key.first == f.uidvalidity && uid_stale(t, key.second, top.top)) {
      f.renumber_due = true;
      renumbers_due_.insert({user, folder});
      return;
    }
}

void Manager::decide_lineages(Time now, Bucket b) {
  auto m = managed_.find(b);
  if (m == managed_.end()) return;
  for (auto& [name, u] : m->second)
    for (auto& [fname, f] : u.folders)
      if (f.uidvalidity == 0 && (!f.handed.empty() || !f.seen.empty() || !f.seen_live.empty()))
        settle_lineage(now, name, fname, f);
}

std::uint32_t Manager::take_uid(Time now, const std::string& user, const std::string& folder,
                                Folder& f) {
  if (!settle_lineage(now, user, folder, f, true) || !current_generation(now, user, folder, f)) return 0;
  if (f.next_uid > f.reserved) {
    reserve_uids(now, user, folder, f, 1);
    return 0;
  }
  std::uint32_t uid = f.next_uid++;
  // The next block is reserved before this one runs out.
  if (f.reserved - uid < kUidBlock / 2) reserve_uids(now, user, folder, f, 1);
  return uid;
}

void Manager::reserve_uids(Time now, const std::string& user, const std::string& folder, Folder& f,
                           std::uint32_t need) {
  if (!f.reserve_write.is_null()) return;  // one at a time
  User& u = managed_[bucket(user)][user];
  FolderMeta* m = lineage_meta(now, u, folder, false);
  if (!m || m->uidvalidity != f.uidvalidity || u.adopted) return;  // no profile here: nothing can be reserved
  const std::uint32_t first = std::max(f.reserved + 1, f.next_uid);
  const std::uint32_t last = std::max(first + kUidBlock - 1, f.next_uid + need - 1);
  m->uid_reserved = std::max(m->uid_reserved, last);
  f.reserve_to = last;
  f.reserve_write = write_profile(now, u);
  reserving_.insert({user, folder});
  check_reservations();  // a profile with one holder, this node, is durable at once
}

void Manager::check_reservations() {
  for (auto it = reserving_.begin(); it != reserving_.end();) {
    auto b = managed_.find(bucket(it->first));
    auto u = b == managed_.end() ? decltype(b->second.end()){} : b->second.find(it->first);
    if (b == managed_.end() || u == b->second.end() || !u->second.profile) {
      it = reserving_.erase(it);
      continue;
    }
    auto f = u->second.folders.find(it->second);
    if (f == u->second.folders.end() || f->second.reserve_write.is_null()) {
      it = reserving_.erase(it);
      continue;
    }
    Folder& mf = f->second;
    // Taken once every holder has it (its log entry is gone then); or, in
    // a group of most of the cluster, once every live holder has it. So
    // two groups (the sides of a partition, a restarted node that has not
    // found the others yet) never both hand out UIDs of new reservations:
    // only one of them can be most of the cluster, and the other cannot
    // reach every holder then.
    auto e = repl_.log().find(mf.reserve_write);
    bool durable = e == repl_.log().end();
    if (!durable && majority()) {
      bool all_live = true, any = false;
      for (NodeId h : u->second.profile->holders) {
        if (!hooks_.live(h)) continue;
        any = true;
        all_live &= e->second.have.count(h) > 0;
      }
      durable = any && all_live;
    }
    if (!durable) {
      ++it;
      continue;
    }
    mf.reserved = std::max(mf.reserved, mf.reserve_to);
    mf.reserve_write = {};
    mf.takeover_pending = false;
    it = reserving_.erase(it);
  }
}

void Manager::on_report(Time now, NodeId from, const Report& r) {
  if (r.epoch != membership_.epoch()) return;  // sender retries under the right epoch
  ReportAck ack;
  ack.epoch = r.epoch;
  for (const auto& h : r.handoffs) {
    // Only a folder still without a lineage takes a handoff; one that has
    // a lineage keeps it (the other's messages get renumbered).
    Bucket b = bucket(h.user);
    if (membership_.manager_of(b) != cfg_.self) continue;
    Folder& f = managed_[b][h.user].folders[h.folder];
    for (const KeyedDelivery& k : h.keys) remember_key(f, k);
    if (f.uidvalidity != 0) continue;
    auto& next = f.handed[h.uidvalidity];
    next = std::max(next, h.next_uid);
    // Two handed on (the two sides of a healed partition): the newer
    // generation goes on; what the older one handed out that the newer
    // could not see is stale by the newer's takeover.
    if (h.gen > f.handed_gen) {
      f.handed_gen = h.gen;
      f.handed_seen = h.seen;
    }
    // The old manager's allocations still on their way keep later UIDs
    // out of listings here too, for as long as a store may take.
    for (std::uint32_t uid : h.inflight)
      f.inflight[uid] = std::max(f.inflight[uid], now + cfg_.request_timeout + cfg_.push_retry);
  }
  for (std::size_t i = 0; i < r.users.size(); ++i) {
    const std::string& user = r.users[i];
    Bucket b = bucket(user);
    if (membership_.manager_of(b) != cfg_.self) continue;
    User& mu = managed_[b][user];
    std::set<std::string> holding;
    for (const auto& e : r.entries)
      if (e.user == user && e.count > 0) holding.insert(e.folder);
    for (auto& [fname, f] : mu.folders)
      if (!holding.count(fname)) f.nodes.erase(from);
    absorb_usage(user, mu, from, r.entries);
    for (const auto& p : r.profiles) {
      if (p.user != user) continue;
      if (!mu.profile) mu.profile = p;
      else merge_profile(*mu.profile, p);
      if (mu.adopted)
        hooks_.log("manager: " + printable(user) + ": node " + std::to_string(from) +
                 " holds its profile; the adopted copy is merged into it");
      mu.adopted = false;  // a holder's copy: the manager's own again
    }
    for (const auto& e : r.entries) {
      if (e.user != user) continue;
      Folder& f = mu.folders[e.folder];
      if (e.count > 0) f.nodes.insert(from);
      absorb_entry(user, f, e);
      for (KeyedDelivery k : e.keys) {
        k.stored = true;  // a holder has it
        remember_key(f, k);
      }

      // A folder first heard of after the bucket became ready.
      if (f.uidvalidity == 0 && (!f.seen.empty() || !f.seen_live.empty()) && bucket_ready(b))
        settle_lineage(now, user, e.folder, f);
    }
    // A folder created on both sides of a partition: the newer lineage
    // won the profile's merge, and the folder follows it (the other's
    // messages are renumbered into it).
    if (mu.profile)
      for (auto& [fname, f] : mu.folders) {
        auto meta = mu.profile->folders.find(fname);
        if (f.uidvalidity == 0 || meta == mu.profile->folders.end() || meta->second.uidvalidity <= f.uidvalidity)
          continue;
        hooks_.log("manager: " + user + "/" + fname + " follows the newer lineage " +
                   std::to_string(meta->second.uidvalidity) + " of the profile, not " + std::to_string(f.uidvalidity));
        f.uidvalidity = 0;
        f.next_uid = 1;
        f.reserved = 0;
        f.gen = {};
        f.inflight.clear();
      }
    // Mail still under a name that was renamed (the rename's manager
    // changed before it had moved everything): moved over now.
    if (mu.profile)
      for (const auto& e : r.entries) {
        if (e.user != user || e.count == 0) continue;
        auto gone = mu.profile->folders.find(e.folder);
        if (gone == mu.profile->folders.end() || !gone->second.deleted || gone->second.renamed_to.empty())
          continue;
        const std::string tname = gone->second.renamed_to;
        auto target = mu.profile->folders.find(tname);
        if (target == mu.profile->folders.end() || target->second.deleted) continue;
        {
          Folder& to = mu.folders[tname];
          if (auto old = mu.folders.find(e.folder); old != mu.folders.end())
            to.nodes.insert(old->second.nodes.begin(), old->second.nodes.end());
          to.nodes.insert(from);
          if (to.renamed_from.empty()) {
            to.renamed_from = e.folder;
            renames_due_.insert({user, tname});
          }
        }
      }
    // Lineages that waited for the profile are decided once it is here.
    if (mu.profile && bucket_ready(b))
      for (auto& [fname, f] : mu.folders)
        if (f.uidvalidity == 0 && (!f.handed.empty() || !f.seen.empty() || !f.seen_live.empty()))
          settle_lineage(now, user, fname, f);
    for (auto& [fname, f] : mu.folders) check_stale(user, fname, f);
    // A lineage this manager goes on with that another manager took over
    // meanwhile (the two sides of a healed partition): a new generation
    // here too, above all that either handed out.
    if (mu.profile)
      for (auto& [fname, f] : mu.folders) {
        if (f.uidvalidity == 0) continue;
        auto meta = mu.profile->folders.find(fname);
        if (meta == mu.profile->folders.end() || meta->second.uidvalidity != f.uidvalidity) continue;
        bool superseded = false;
        for (const auto& t : takeovers_of(user, fname, f)) superseded |= t.gen > f.gen;
        if (!superseded || f.gen.is_null()) continue;
        if (!majority()) {
          f.gen = {};  // begun again once this group is most of the cluster
          continue;
        }
        begin_generation(now, user, fname, f);
        hooks_.log("manager: " + user + "/" + fname + " was taken over elsewhere meanwhile; generation " +
                   f.gen.str() + " from UID " + std::to_string(f.next_uid));
        if (!f.renumber_due) {
          f.renumber_due = true;
          renumbers_due_.insert({user, fname});
        }
      }
    ack.users.push_back(user);
    ack.generations.push_back(i < r.generations.size() ? r.generations[i] : 0);
  }
  for (Bucket b : r.complete) {
    if (membership_.manager_of(b) != cfg_.self) continue;
    reported_[b].insert(from);
    ack.complete.push_back(b);
    if (auto x = expected_.find(b); x != expected_.end()) {
      x->second.erase(from);
      if (x->second.empty()) expected_.erase(x);
    }
    auto a = awaiting_.find(b);
    if (a == awaiting_.end()) continue;
    a->second.erase(from);
    if (!a->second.empty()) continue;
    awaiting_.erase(a);
    decide_lineages(now, b);
  }
  hooks_.send(from, std::move(ack));
}

void Manager::tick(Time now) {
  check_reservations();
  if (now - last_inflight_prune_ >= 1000) {
    last_inflight_prune_ = now;
    for (auto& [b, users] : managed_)
      for (auto& [name, u] : users) {
        for (auto& [fname, f] : u.folders)
          std::erase_if(f.inflight, [now](const auto& e) { return e.second <= now; });
        std::erase_if(u.granted, [now](const User::Grant& g) { return g.until <= now; });
      }
  }
  // A renumbering may end at once (no holder to ask) and be due again: the
  // set is walked on a copy, and an entry leaves it only before its start.
  const auto due = renumbers_due_;
  for (const auto& [user, folder] : due) {
    Bucket b = bucket(user);
    const User* u = managed_user(user);
    auto f = u ? u->folders.find(folder) : decltype(u->folders.end()){};
    if (!u || f == u->folders.end() || !f->second.renumber_due) {
      renumbers_due_.erase({user, folder});  // the bucket went, or the folder's state with it
    } else if (membership_.manager_of(b) == cfg_.self && bucket_ready(b) && !f->second.renumber_running) {
      renumbers_due_.erase({user, folder});
      start_renumber(now, user, folder);
    }
  }
  for (const auto& [user, to] : std::set<std::pair<std::string, std::string>>(renames_due_)) {
    Bucket b = bucket(user);
    const User* u = managed_user(user);
    auto f = u ? u->folders.find(to) : decltype(u->folders.end()){};
    if (!u || f == u->folders.end() || f->second.renamed_from.empty()) {
      renames_due_.erase({user, to});
    } else if (membership_.manager_of(b) == cfg_.self && bucket_ready(b) && !f->second.renumber_running) {
      renames_due_.erase({user, to});
      start_rename(now, user, to);
    }
  }
  // A member that has not reported a moved bucket (its commit or report
  // was lost, or it holds another view of the old map) is asked directly.
  if ((awaiting_.empty() && expected_.empty()) || now - last_poll_ < cfg_.report_poll) return;
  last_poll_ = now;
  std::map<NodeId, std::vector<Bucket>> ask;
  if (now - awaiting_since_ >= cfg_.report_poll)
    for (const auto& [b, nodes] : awaiting_)
      for (NodeId n : nodes) ask[n].push_back(b);
  for (const auto& [b, nodes] : expected_)
    for (NodeId n : nodes) ask[n].push_back(b);
  for (auto& [n, bs] : ask) hooks_.send(n, ReportPoll{membership_.epoch(), std::move(bs)});
}

const Manager::User::Grant* Manager::regrant(const User& u, NodeId from, const AllocRequest& a, Time now) const {
  auto f = u.folders.find(a.folder);
  if (f == u.folders.end()) return nullptr;
  for (const auto& g : u.granted)
    if (g.front_end == from && g.req == a.req && g.folder == a.folder && g.until > now &&
        g.uidvalidity == f->second.uidvalidity && g.gen == f->second.gen &&
        std::none_of(g.nodes.begin(), g.nodes.end(), [this](NodeId n) { return hooks_.takes_no_copies(n); }))
      return &g;
  return nullptr;
}

void Manager::grant(AllocReply& rep, Folder& f, const std::vector<NodeId>& nodes, Time until) {
  rep.uidvalidity = f.uidvalidity;
  rep.gen = f.gen;
  rep.seen = f.start_seen;
  rep.nodes = nodes;
  f.nodes.insert(nodes.begin(), nodes.end());
  f.inflight[rep.uid] = until;
}

void Manager::on_alloc(Time now, NodeId from, const AllocRequest& a) {
  AllocReply rep;
  rep.req = a.req;
  Bucket b = bucket(a.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b) || expected_.count(b)) {
    rep.status = Status::TryAgain;  // not every member has reported the bucket
  } else {
    auto& users = managed_[b];
    auto it = users.find(a.user);
    if (it == users.end() || !it->second.profile || it->second.profile->deleted) {
      rep.status = missing_user_status(b, it == users.end() ? nullptr : &it->second);
    } else if (it->second.adopted) {
      rep.status = Status::TryAgain;  // UIDs are reserved on the profile's holders
    } else if (!a.move_nodes.empty()) {
      // A Move's UID in the destination: the message stays on its nodes.
      Folder& f = it->second.folders[a.folder];
      rep.uid = take_uid(now, a.user, a.folder, f);
      if (rep.uid == 0) {
        rep.status = Status::TryAgain;  // its reservation is on its way
      } else {
        grant(rep, f, a.move_nodes, now + cfg_.request_timeout + cfg_.push_retry);
      }
    } else if (const User::Grant* again = regrant(it->second, from, a, now)) {
      // The same request again (sent before its answer came): the same
      // UID, while the folder is in the generation that gave it. A second one would stay in flight, unused, and hide every
      // message after it from listings until its time ran out.
      Folder& f = it->second.folders[a.folder];
      rep.uid = again->uid;
      rep.uidvalidity = f.uidvalidity;
      rep.gen = f.gen;
      rep.seen = f.start_seen;
      rep.nodes = again->nodes;
      rep.quota_bytes = it->second.profile->quota_bytes;
      rep.quota_checked = true;  // counted with its grant
      if (!a.key.empty())
        if (auto k = f.keys.find(a.key); k != f.keys.end()) rep.msg = k->second.msg;
    } else if (const KeyedDelivery* k = retry_of(it->second, a)) {
      // A retry of a keyed delivery: stored whole, its message and nothing
      // stored again; otherwise the same message at the same UID on the
      // same nodes, stored again (where a copy landed, the store is
      // answered at once).
      Folder& f = it->second.folders[a.folder];
      rep.uid = k->uid;
      rep.uidvalidity = k->uidvalidity;
      rep.nodes = k->nodes;
      rep.msg = k->msg;
      rep.stored = k->stored;
      rep.gen = f.gen;
      rep.seen = f.start_seen;
      rep.quota_bytes = it->second.profile->quota_bytes;
      rep.quota_checked = true;  // counted with its first grant
      if (!k->stored)
        if (auto in = f.inflight.find(k->uid); in != f.inflight.end())
          in->second = std::max(in->second, now + cfg_.request_timeout + store_crossing(cfg_, a.size) + cfg_.push_retry);
    } else {
      const std::uint64_t quota = it->second.profile->quota_bytes;
      const std::optional<std::uint64_t> used = usage_of(it->second, now);
      if (quota > 0 && used && *used + a.size > quota) {
        // Refused with the UID's answer: no front end asks every node.
        rep.status = Status::OverQuota;
        rep.quota_bytes = quota;
        rep.quota_checked = true;
        hooks_.send(from, std::move(rep));
        return;
      }
      Folder& f = it->second.folders[a.folder];
      PlacementInput in;
      in.mail_map.assign(f.nodes.begin(), f.nodes.end());
      in.live = hooks_.live_loads(false);
      in.spread = cfg_.spread;
      in.replicas = cfg_.replicas;
      in.salt = user_hash(a.user);
      in.grow_when_busy = true;
      Placement pl = choose_placement(in);
      if (pl.nodes.size() < cfg_.replicas) {
        // Fewer than R active nodes with room: draining ones (with room)
        // make up the copies rather than the message having fewer; they
        // move off with the rest of the drain.
        in.live = hooks_.live_loads(true);
        pl = choose_placement(in);
      }
      if (pl.nodes.empty()) {
        rep.status = Status::TryAgain;
      } else if ((rep.uid = take_uid(now, a.user, a.folder, f)) == 0) {
        rep.status = Status::TryAgain;  // its reservation is on its way
      } else {
        rep.quota_bytes = quota;
        rep.quota_checked = used.has_value();  // else the front end counts (an older member's reports)
        // In flight until the front end's deadline for this store (and the
        // quota count before it) has passed, at the latest.
        const Time until = now + cfg_.request_timeout + store_crossing(cfg_, a.size) + cfg_.push_retry;
        grant(rep, f, pl.nodes, until);
        auto& granted = it->second.granted;
        std::erase_if(granted, [&](const User::Grant& g) { return g.front_end == from && g.req == a.req; });
        granted.push_back({from, a.req, a.folder, rep.uidvalidity, rep.uid, a.size, pl.nodes, until, rep.gen});
        if (!a.key.empty()) {
          // A retry of one not stored whose UID or nodes cannot serve (a
          // new lineage, a node gone): a new UID and placement, the same
          // message (its first store may yet land: one record).
          auto known = f.keys.find(a.key);
          rep.msg = known != f.keys.end() ? known->second.msg : a.msg;
          KeyedDelivery kd{a.key, rep.msg, rep.uidvalidity, rep.uid, pl.nodes, false, hooks_.wall(), rep.gen};
          if (known != f.keys.end()) kd.at = known->second.at;
          f.keys.erase(a.key);
          remember_key(f, kd);
        }
      }
    }
  }
  hooks_.send(from, std::move(rep));
}

void Manager::on_alloc_done(const AllocDone& d) {
  auto b = managed_.find(bucket(d.user));
  if (b == managed_.end()) return;
  auto u = b->second.find(d.user);
  if (u == b->second.end()) return;
  auto f = u->second.folders.find(d.folder);
  if (f == u->second.folders.end() || f->second.uidvalidity != d.uidvalidity) return;
  f->second.inflight.erase(d.uid);
  if (d.key.empty()) return;
  if (auto k = f->second.keys.find(d.key); k != f->second.keys.end() && k->second.uid == d.uid) {
    k->second.stored = true;
  }
}

const KeyedDelivery* Manager::retry_of(User& u, const AllocRequest& a) {
  if (a.key.empty()) return nullptr;
  auto f = u.folders.find(a.folder);
  if (f == u.folders.end()) return nullptr;
  prune_keys(f->second);
  auto k = f->second.keys.find(a.key);
  if (k == f->second.keys.end()) return nullptr;
  if (k->second.stored) return &k->second;
  // Its UID only in the generation it was given in (wire.h, KeyedDelivery).
  if (k->second.uidvalidity != f->second.uidvalidity || k->second.gen != f->second.gen) return nullptr;
  // Its nodes only while each can take the copy: live, and (a spool that
  // filled since) not full. Otherwise a new placement, or every retry of
  // it would wait on a node that refuses the copy until its deadline.
  for (NodeId n : k->second.nodes)
    if (!hooks_.live(n) || hooks_.takes_no_copies(n)) return nullptr;
  return &k->second;
}

void Manager::prune_keys(Folder& f) {
  // Keys are dated by the wall clock (a key's date travels in reports).
  while (!f.key_order.empty() && f.key_order.begin()->first + cfg_.delivery_key_ttl <= hooks_.wall()) {
    auto o = f.key_order.begin();
    if (auto x = f.keys.find(o->second); x != f.keys.end() && x->second.at == o->first) f.keys.erase(x);
    f.key_order.erase(o);
  }
}

void Manager::remember_key(Folder& f, const KeyedDelivery& k) {
  prune_keys(f);
  if (k.key.empty() || k.at + cfg_.delivery_key_ttl <= hooks_.wall()) return;
  auto [it, fresh] = f.keys.try_emplace(k.key, k);
  if (fresh) {
    // (A key put back after a retry keeps its first time, which may still
    // be in the order.)
    auto [lo, hi] = f.key_order.equal_range(k.at);
    if (std::none_of(lo, hi, [&](const auto& o) { return o.second == k.key; })) f.key_order.emplace(k.at, k.key);
  } else if (k.stored && !it->second.stored) {
    // Known stored now (a holder's report, the front end's done): the
    // stored message is the one a retry is answered with.
    const Time at = it->second.at;
    it->second = k;
    it->second.at = at;
  }
}

void Manager::on_renumber(Time now, NodeId from, const RenumberRequest& r) {
  AllocReply rep;
  rep.req = r.req;
  Bucket b = bucket(r.user);
  User* u = managed_user(r.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b) || expected_.count(b)) {
    rep.status = Status::TryAgain;
  } else if (!u || !u->profile || u->profile->deleted) {
    rep.status = missing_user_status(b, u);
  } else if (u->adopted) {
    rep.status = Status::TryAgain;
  } else {
    Folder& f = u->folders[r.folder];
    if (!settle_lineage(now, r.user, r.folder, f)) {
      rep.status = Status::TryAgain;
    } else if (r.uidvalidity != f.uidvalidity || r.id.origin == kNoNode || r.replicas.empty()) {
      rep.status = Status::NotFound;  // another lineage: the renumbering of lineages takes it
    } else {
      // Moved by the renumbering below (which lists its holders, so it
      // moves the message only if it is still there, under that UID): the
      // reader takes it at its next sync.
      f.next_uid = std::max(f.next_uid, r.above + 1);
      f.late[r.id] = r.uid;
      if (!f.renumber_due) {
        f.renumber_due = true;
        renumbers_due_.insert({r.user, r.folder});
      }
      hooks_.log("manager: " + r.user + "/" + r.folder + " " + r.id.str() + " found under UID " +
                 std::to_string(r.uid) + ", below UID " + std::to_string(r.above) +
                 " a reader had taken: moving it to the end");
    }
    rep.uidvalidity = f.uidvalidity;
  }
  hooks_.send(from, std::move(rep));
}

void Manager::on_create_user(Time now, NodeId from, const CreateUserRequest& c) {
  OpReply rep{c.req, Status::Ok, {}};
  Bucket b = bucket(c.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b)) {
    rep.status = Status::TryAgain;
  } else if (managed_[b].count(c.user) && managed_[b][c.user].profile &&
             !managed_[b][c.user].profile->deleted) {
    rep.status = Status::Exists;
  } else {
    PlacementInput in;
    in.live = hooks_.live_loads(false);
    for (NodeLoad& l : in.live) l.full = false;  // a profile lives in the metadata store, not the spool
    in.spread = cfg_.replicas;
    in.replicas = cfg_.replicas;
    in.salt = user_hash(c.user);
    Placement pl = choose_placement(in);
    User& u = managed_[b][c.user];
    Profile p;
    p.user = c.user;
    p.version = hooks_.next_version();
    p.password_hash = c.password_hash;
    p.holders = pl.nodes;
    // INBOX exists from the start, its UIDVALIDITY with it (above any a
    // deleted user of the same name had).
    FolderMeta inbox;
    if (u.profile) {
      if (auto old = u.profile->folders.find("INBOX"); old != u.profile->folders.end()) inbox = old->second;
    }
    inbox.version = p.version;
    inbox.deleted = false;
    inbox.uidvalidity = fresh_uidvalidity(inbox.uidvalidity);
    inbox.uid_reserved = 0;
    inbox.takeovers.clear();
    p.folders["INBOX"] = inbox;
    u.profile = p;
    u.folders.clear();
    write_profile(now, u);
  }
  hooks_.send(from, rep);
}

void Manager::on_map(Time now, NodeId from, const MapRequest& m) {
  MapReply rep;
  rep.req = m.req;
  Bucket b = bucket(m.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b) || expected_.count(b)) {
    // A member back in the group has not reported the bucket yet: the
    // mail map may lack the nodes its fragments are on, and a listing
    // without them would claim to cover them (an absent message taken
    // for expunged).
    rep.status = Status::TryAgain;
  } else if (const User* u = managed_user(m.user); !u || !u->profile || u->profile->deleted) {
    rep.status = missing_user_status(b, u);
  } else {
    User& mu = managed_[b][m.user];
    auto pf = mu.profile->folders.find(m.folder);
    bool exists = m.folder == "INBOX" || mu.folders.count(m.folder) ||
                  (pf != mu.profile->folders.end() && !pf->second.deleted);
    if (exists) {
      // An empty folder has its UIDVALIDITY too, the same on every node.
      Folder& f = mu.folders[m.folder];
      settle_lineage(now, m.user, m.folder, f);
      if (f.renumber_due || f.renumber_running || f.takeover_pending || !f.renamed_from.empty()) {
        rep.status = Status::TryAgain;  // a list now would miss messages being renumbered
      } else {
        rep.nodes.assign(f.nodes.begin(), f.nodes.end());
        rep.uidvalidity = f.uidvalidity;
        rep.next_uid = f.next_uid;
        rep.visible_below = f.visible_below(now);
        for (const auto& [uid, until] : f.inflight)
          if (until > now && uid >= rep.visible_below) rep.inflight.push_back(uid);
        rep.takeovers = takeovers_of(m.user, m.folder, f);
      }
    }
  }
  hooks_.send(from, std::move(rep));
}

bool Manager::start_renumber(Time now, const std::string& user, const std::string& folder) {
  Folder& f = managed_[bucket(user)][user].folders[folder];
  if (f.renumber_running) return false;  // due again once this one ends
  f.renumber_due = false;
  f.renumber_running = true;
  hooks_.gather(now, user, folder, {}, std::vector<NodeId>(f.nodes.begin(), f.nodes.end()));
  return true;
}

void Manager::start_rename(Time now, const std::string& user, const std::string& to) {
  Folder& f = managed_[bucket(user)][user].folders[to];
  f.renumber_running = true;
  // Listed under the old name.
  hooks_.gather(now, user, f.renamed_from, to, std::vector<NodeId>(f.nodes.begin(), f.nodes.end()));
}

void Manager::on_rename_done(Time now, const std::string& user, const std::string& folder, const std::string& to,
                             const std::map<MsgId, MessageRecord>& records, bool complete) {
  auto b = managed_.find(bucket(user));
  if (b == managed_.end()) return;  // no longer the manager
  auto u = b->second.find(user);
  if (u == b->second.end()) return;
  auto fi = u->second.folders.find(to);
  if (fi == u->second.folders.end()) return;
  Folder& f = fi->second;
  f.renumber_running = false;
  // Each message goes over under its UID, UIDVALIDITY and generation: the
  // new name has the folder's lineage.
  for (const auto& [id, r] : records) {
    if (r.expunged || r.folder != folder) continue;
    Update up;
    up.id = hooks_.next_version();
    up.kind = Update::Kind::Move;
    up.replicas = r.replicas;
    up.record.id = r.id;
    up.record.user = user;
    up.record.folder = to;
    up.record.uidvalidity = r.uidvalidity;
    up.record.uid = r.uid;
    up.record.uid_gen = r.uid_gen;
    up.record.uid_seen = r.uid_seen;
    repl_.coordinate(now, std::move(up));
  }
  if (!complete) {
    renames_due_.insert({user, to});  // some holders silent: again
    return;
  }
  hooks_.log("manager: " + user + "/" + f.renamed_from + " renamed " + to + ": " +
             std::to_string(records.size()) + " messages moved over under their UIDs");
  f.renamed_from.clear();
}

void Manager::on_gathered(Time now, const std::string& user, const std::string& folder, const std::string& rename_to,
                          const std::map<MsgId, MessageRecord>& records, bool complete) {
  if (!rename_to.empty()) return on_rename_done(now, user, folder, rename_to, records, complete);
  on_renumber_done(now, user, folder, records, complete);
}

void Manager::on_renumber_done(Time now, const std::string& user, const std::string& folder,
                               const std::map<MsgId, MessageRecord>& records, bool complete) {
  auto b = managed_.find(bucket(user));
  if (b == managed_.end()) return;  // no longer the manager
  auto u = b->second.find(user);
  if (u == b->second.end()) return;
  Folder& f = u->second.folders[folder];
  f.renumber_running = false;
  if (!settle_lineage(now, user, folder, f) || !current_generation(now, user, folder, f)) {
    f.renumber_due = true;
    renumbers_due_.insert({user, folder});
    return;
  }
  // Messages of other lineages, and every message but the first stamped of
  // those holding the same UID (two managers handed it out), get UIDs at
  // the end of the lineage, in their old order: to a client, an expunge and
  // new mail, never a UID naming two messages.
  std::vector<const MessageRecord*> todo, dups;
  std::map<std::uint32_t, std::vector<const MessageRecord*>> by_uid;
  auto takeovers = takeovers_of(user, folder, f);
  for (const auto& [id, r] : records)
    if (r.uidvalidity == f.uidvalidity) add_takeover(takeovers, UidTakeover{r.uid_gen, r.uid_seen});
  for (const auto& [id, r] : records) {
    if (!r.has_body || r.expunged) continue;
    auto late = f.late.find(id);
    if (r.uidvalidity != f.uidvalidity || uid_stale(takeovers, r.uid_gen, r.uid) ||
        (late != f.late.end() && late->second == r.uid))
      todo.push_back(&r);
    else
      by_uid[r.uid].push_back(&r);
  }
  for (auto& [uid, rs] : by_uid) {
    if (rs.size() < 2) continue;
    std::sort(rs.begin(), rs.end(), [](const MessageRecord* x, const MessageRecord* y) {
      return std::tie(x->uid_version, x->id) < std::tie(y->uid_version, y->id);
    });
    dups.insert(dups.end(), rs.begin() + 1, rs.end());
  }
  auto order = [](const MessageRecord* x, const MessageRecord* y) {
    return std::tie(x->uidvalidity, x->uid, x->id) < std::tie(y->uidvalidity, y->uid, y->id);
  };
  std::sort(todo.begin(), todo.end(), order);
  std::sort(dups.begin(), dups.end(), order);
  todo.insert(todo.end(), dups.begin(), dups.end());
  // Every new UID must be reserved first; until then listings wait.
  const std::uint32_t avail = f.reserved >= f.next_uid ? f.reserved - f.next_uid + 1 : 0;
  if (todo.size() > avail) {
    reserve_uids(now, user, folder, f, static_cast<std::uint32_t>(todo.size()));
    f.renumber_due = true;
    renumbers_due_.insert({user, folder});
    return;
  }
  for (const MessageRecord* r : todo) {
    // The new UID must win over whatever stamped the old one, whatever
    // that node's clock said.
    hooks_.version_above(r->uid_version.time);
    Update up;
    up.id = hooks_.next_version();
    up.kind = Update::Kind::SetUid;
    up.replicas = r->replicas;
    up.record.id = r->id;
    up.record.user = user;
    up.record.folder = folder;
    up.record.folder_version = r->folder_version;  // the placement this UID is for
    up.record.uidvalidity = f.uidvalidity;
    up.record.uid = f.next_uid++;
    up.record.uid_gen = f.gen;
    up.record.uid_seen = f.start_seen;
    repl_.coordinate(now, std::move(up));
  }
  bool incomplete = !complete;
  if (!todo.empty() || incomplete)
    hooks_.log("manager: " + user + "/" + folder + " renumbered " + std::to_string(todo.size()) +
               " messages (" + std::to_string(dups.size()) + " of them held a UID twice) in UIDVALIDITY " +
               std::to_string(f.uidvalidity) + (incomplete ? "; some holders silent, again" : ""));
  if (incomplete && !f.renumber_due) {
    f.renumber_due = true;
    renumbers_due_.insert({user, folder});
  }
  if (incomplete) return;
  f.late.clear();
  // Every holder answered: no live message is left in another lineage, or
  // stale.
  std::erase_if(f.seen_live, [&f](std::uint32_t v) { return v != f.uidvalidity; });
  std::erase_if(f.gen_top, [&](const auto& e) {
    return e.first.first != f.uidvalidity || uid_stale(takeovers, e.first.second, e.second.top);
  });

}

}  // namespace porcupine
