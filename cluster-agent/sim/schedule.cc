// SPDX-License-Identifier: MIT
// schedule.cc - see schedule.h.
#include "schedule.h"

#include <algorithm>
#include <random>
#include <set>
#include <sstream>

#include "core/hash.h"

namespace porcupine::sim {

namespace {

std::string user_name(int i) { return "user" + std::to_string(i) + "@example.org"; }

struct Outstanding {
  enum Kind { Deliver, Flags, Expunge, List } kind;
  std::size_t acked_index = 0;  // Flags/Expunge: which delivered message
  Time issued = 0;
  NodeId via = kNoNode;         // List: the node asked
  std::string user, folder;     // List
};

// What IMAP clients rely on, checked on every listing a node gives over
// the run (one reader per node and folder, as that node's Dovecot cache): a
// folder's UIDVALIDITY never changes, and a reader never takes a UID below
// one it has shown, nor a UID it has shown for another message. A message
// found so (a store that completed after its delivery was given up, one on
// its way when its manager died, one handed out by another group during a
// split) is not taken: the reader asks for it to be moved to a new UID, as
// the Dovecot plugin does, and takes it there. At the end every reader
// must have taken every message the cluster lists.
class ListingChecker {
 public:
  // The messages this listing showed below what the reader had taken,
  // each with the highest UID the reader has taken.
  std::vector<std::pair<MessageRecord, std::uint32_t>> observe(NodeId via, const std::string& user, const std::string& folder,
                                     const ClientReply& l, bool last = false) {
    const std::string where = user + "/" + folder;
    Reader& o = readers_[{via, where}];
    std::uint32_t& first_validity = validity_[where];
    if (first_validity == 0) first_validity = l.uidvalidity;
    if (l.uidvalidity != first_validity && !changed_.count(where)) {
      changed_.insert(where);
      fail("(f) " + where + " UIDVALIDITY changed from " + std::to_string(first_validity) + " to " +
           std::to_string(l.uidvalidity) + " (listing at n" + std::to_string(via) + ")");
    }
    if (o.validity != l.uidvalidity) o = Reader{l.uidvalidity, {}, {}, 0};
    std::vector<std::pair<MessageRecord, std::uint32_t>> below;
    std::uint32_t top = o.max;
    for (const auto& r : l.records) {
      auto s = o.taken.find(r.id);
      if (s != o.taken.end() && s->second == r.uid) continue;
      auto owner = o.owner.find(r.uid);
      if (r.uid > o.max && owner == o.owner.end()) {
        o.taken[r.id] = r.uid;
        o.owner[r.uid] = r.id;
        top = std::max(top, r.uid);
        continue;
      }
      if (last)
        fail("(f) " + where + " at n" + std::to_string(via) + ": " + r.id.str() + " still listed under UID " +
             std::to_string(r.uid) + ", at or below " + std::to_string(o.max) + " that this reader had taken");
      MessageRecord t = r;
      t.user = user;
      t.folder = folder;
      t.uidvalidity = l.uidvalidity;
      below.push_back({std::move(t), o.max});
    }
    o.max = top;
    return below;
  }
  const std::vector<std::string>& failures() const { return bad_; }
  std::vector<std::pair<NodeId, std::pair<std::string, std::string>>> readers() const {
    std::vector<std::pair<NodeId, std::pair<std::string, std::string>>> out;
    for (const auto& [key, r] : readers_) {
      auto slash = key.second.find('/');
      out.push_back({key.first, {key.second.substr(0, slash), key.second.substr(slash + 1)}});
    }
    return out;
  }

 private:
  struct Reader {
    std::uint32_t validity = 0;
    std::map<MsgId, std::uint32_t> taken;
    std::map<std::uint32_t, MsgId> owner;
    std::uint32_t max = 0;
  };
  void fail(const std::string& s) {
    if (bad_.size() < 20) bad_.push_back(s);
  }
  std::map<std::pair<NodeId, std::string>, Reader> readers_;
  std::map<std::string, std::uint32_t> validity_;
  std::set<std::string> changed_;
  std::vector<std::string> bad_;
};

}  // namespace

std::vector<std::string> check_invariants(Cluster& c, const WorkloadLog& w, bool destroyed_any) {
  std::vector<std::string> bad;
  auto fail = [&](std::string s) {
    if (bad.size() < 20) bad.push_back(std::move(s));
  };
  std::vector<NodeId> up = c.up();
  std::set<NodeId> upset(up.begin(), up.end());
  if (up.empty()) return {"no node running"};

  // (a) one group: same epoch, members == running nodes, same user map.
  if (!c.converged()) {
    std::ostringstream o;
    o << "(a) membership not converged:";
    for (NodeId n : up) {
      const Membership& m = c.node(n)->membership();
      o << " n" << n << "@" << m.epoch().str() << "[";
      for (const auto& mw : m.members()) o << mw.id << ",";
      o << "]";
    }
    fail(o.str());
    return bad;  // the rest presumes one group
  }
  const Membership& mem = c.node(up.front())->membership();

  // (b) every bucket has exactly one live manager, and it is ready.
  for (Bucket b = 0; b < mem.map().size(); ++b) {
    NodeId m = mem.map()[b];
    if (!upset.count(m)) fail("(b) bucket " + std::to_string(b) + " managed by non-running n" + std::to_string(m));
    else if (!c.node(m)->bucket_ready(b)) fail("(b) bucket " + std::to_string(b) + " not ready at n" + std::to_string(m));
  }

  // (c) acknowledged messages survive and replicas converge. A message's
  // replicas are those of the newest list its copies name (a repair or
  // drain rewrites it), else those its delivery gave.
  for (const Acked& a : w.delivered) {
    std::vector<const MessageRecord*> copies;
    std::vector<NodeId> holders;
    std::vector<NodeId> replicas = a.target.replicas;
    Version list_version;
    for (NodeId n : c.ids()) {
      const auto& recs = c.disk(n)->data().records;
      auto it = recs.find(a.target.id);
      if (it != recs.end() && newer(it->second.replicas_version, list_version)) {
        list_version = it->second.replicas_version;
        replicas = it->second.replicas;
      }
    }
    std::string reps;
    for (NodeId x : replicas) reps += " n" + std::to_string(x);
    if (!list_version.is_null()) reps += " at " + list_version.str();
    bool any_alive_replica = false;
    for (NodeId r : replicas) {
      if (c.is_destroyed(r)) continue;
      any_alive_replica = true;
      const auto& recs = c.disk(r)->data().records;
      auto it = recs.find(a.target.id);
      if (it == recs.end()) {
        // The only copy, on a node whose index lost it: no peer can give
        // the record back; the body must still be on its disk (or the
        // message was expunged, and its certificate went with the index).
        // (Only copy: the others destroyed; a death certificate gets no
        // new copies from a repair.)
        std::size_t kept = 0;
        for (NodeId x : replicas) kept += !c.is_destroyed(x);
        if (kept == 1 && c.is_damaged(r) &&
            (c.disk(r)->orphans().count(a.target.id) || a.expunge_acked ||
             (a.expunge_issued && replicas.size() > 1)))
          continue;
        fail("(c) message " + a.target.id.str() + " missing on replica n" + std::to_string(r) + " (replicas" + reps +
             (a.expunge_acked ? ", expunged)" : ")"));
        continue;
      }
      copies.push_back(&it->second);
      holders.push_back(r);
    }
    if (!any_alive_replica) {
      // (An expunged message's certificate has no new copies made: with
      // its last holders destroyed it is gone, as it should be.)
      if ((replicas.size() >= 2 && !a.expunge_issued) || !destroyed_any)
        fail("(c) message " + a.target.id.str() + " lost: every replica destroyed (replicas" + reps + ")");
      continue;
    }
    for (std::size_t k = 0; k < copies.size(); ++k) {
      const MessageRecord* r = copies[k];
      // (The only copy's certificate lost with a damaged index, a late
      // update for the message leaves a bodiless record: hidden, not back.
      // The only copy: its other replicas destroyed, as in the case above.)
      std::size_t undestroyed = 0;
      for (NodeId x : replicas) undestroyed += !c.is_destroyed(x);
      bool lone_lost_cert = a.expunge_acked && undestroyed == 1 && c.is_damaged(holders[k]);
      if (!r->expunged && !r->has_body && !lone_lost_cert)
        fail("(c) message " + a.target.id.str() + " has no body on n" + std::to_string(holders[k]) + " (replicas" +
             reps + ")" + (a.expunge_acked ? " expunge acked" : a.expunge_issued ? " expunge issued" : "") + (c.is_damaged(holders[k]) ? " damaged" : ""));
      if (a.expunge_acked && !destroyed_any && !r->expunged)
        fail("(c) message " + a.target.id.str() + " expunge acknowledged but not applied");
      const MessageRecord* f = copies.front();
      if (r->flags != f->flags || r->expunged != f->expunged || r->uid != f->uid)
        fail("(c) replicas of " + a.target.id.str() + " diverge: n" + std::to_string(holders.front()) + " flags " +
             std::to_string(f->flags) + (f->expunged ? " expunged" : "") + " uid " + std::to_string(f->uid) + ", n" +
             std::to_string(holders[k]) + " flags " + std::to_string(r->flags) + (r->expunged ? " expunged" : "") +
             " uid " + std::to_string(r->uid) + " (replicas" + reps + ")");
    }
  }
  // Replication backlogs drain (entries for destroyed replicas excepted).
  for (NodeId n : up)
    for (const auto& [id, e] : c.node(n)->replicator().log()) {
      bool blocked = false;
      for (NodeId r : e.update.replicas)
        if (c.is_destroyed(r) && !e.have.count(r)) blocked = true;
      if (!blocked) {
        std::string lists, have;
        for (NodeId r : e.update.replicas) lists += (lists.empty() ? "" : ",") + std::to_string(r);
        for (NodeId r : e.have) have += (have.empty() ? "" : ",") + std::to_string(r);
        fail("(c) n" + std::to_string(n) + " still holds update " + id.str() + " (" +
             kind_name(e.update.kind) + " of " + e.update.record.id.str() + " by n" +
             std::to_string(e.update.coordinator) + ", replicas " + lists + ", held by " + have + ")");
      }
    }

  // (d) every fragment on a running node is in its user's mail map.
  for (NodeId n : up) {
    for (const auto& [id, r] : c.node(n)->replicator().records()) {
      if (!r.has_body || r.expunged) continue;
      NodeId mgr = mem.manager_of(bucket_of(r.user, mem.map().size()));
      const Node::MgrUser* u = c.node(mgr)->managed_user(r.user);
      auto f = u ? u->folders.find(r.folder) : decltype(u->folders.end()){};
      if (!u || f == u->folders.end() || !f->second.nodes.count(n))
        fail("(d) " + r.user + "/" + r.folder + " fragment on n" + std::to_string(n) +
             " missing from mail map at n" + std::to_string(mgr) + " (" + id.str() + ")");
    }
  }

  // (g) the quota's usage, as each user's manager counts it, is the bytes
  // of the user's live messages on the running nodes, each counted once;
  // a message whose live copies name different replica lists (one left
  // under a list a repair or drain replaced, on a node that missed the
  // new one, until anti-entropy drops it) may be counted once per list.
  {
    std::map<std::string, std::map<MsgId, std::pair<std::uint64_t, std::set<std::vector<NodeId>>>>> live;
    for (NodeId n : up) {
      for (const auto& [id, r] : c.node(n)->replicator().records()) {
        auto& mine = live[r.user];
        if (!r.has_body || r.expunged) continue;
        std::vector<NodeId> list = r.replicas;
        std::sort(list.begin(), list.end());
        mine[id].first = r.size;
        mine[id].second.insert(list);
      }
      for (const auto& [user, p] : c.node(n)->replicator().profiles()) live[user];
    }
    for (const auto& [user, msgs] : live) {
      std::uint64_t least = 0, most = 0;
      for (const auto& [id, m] : msgs) {
        least += m.first;
        most += m.first * m.second.size();
      }
      NodeId mgr = mem.manager_of(bucket_of(user, mem.map().size()));
      if (!upset.count(mgr)) continue;  // (b)
      std::optional<std::uint64_t> got = c.node(mgr)->managed_usage(user);
      if (!got)
        fail("(g) " + user + " usage not known at its manager n" + std::to_string(mgr));
      else if (*got < least || *got > most)
        fail("(g) " + user + " usage " + std::to_string(*got) + " at its manager n" + std::to_string(mgr) +
             ", its live mail " + std::to_string(least) + " bytes in " + std::to_string(msgs.size()) + " messages" +
             (most != least ? " (" + std::to_string(most) + " with copies under replaced lists)" : ""));
    }
  }

  // (h) every folder digest a node keeps is its records' (none went stale).
  for (NodeId n : up) {
    const Replicator& repl = c.node(n)->replicator();
    std::set<std::pair<std::string, std::string>> seen;
    for (const auto& [id, r] : repl.records())
      if (seen.insert({r.user, r.folder}).second) {
        std::uint64_t fresh = 0;
        for (const MsgId& m : repl.user_records(r.user))
          if (repl.records().at(m).folder == r.folder) fresh += copy_digest(repl.records().at(m));
        if (repl.folder_digest(r.user, r.folder) != fresh)
          fail("(h) n" + std::to_string(n) + " keeps a stale digest of " + r.user + "/" + r.folder);
      }
  }

  // (e) UIDs unique per folder; in allocation order within one UIDVALIDITY.
  std::map<std::pair<std::string, std::string>, std::map<MsgId, MessageRecord>> folders;
  for (NodeId n : up)
    for (const auto& [id, r] : c.node(n)->replicator().records()) {
      auto& slot = folders[{r.user, r.folder}];
      auto [it, fresh] = slot.try_emplace(id, r);
      if (!fresh) merge_record(it->second, r, 0);
    }
  for (const auto& [key, recs] : folders) {
    std::map<std::uint32_t, MsgId> seen;
    NodeId mgr = mem.manager_of(bucket_of(key.first, mem.map().size()));
    const Node::MgrUser* u = c.node(mgr)->managed_user(key.first);
    auto f = u ? u->folders.find(key.second) : decltype(u->folders.end()){};
    std::uint32_t lineage = u && f != u->folders.end() ? f->second.uidvalidity : 0;
    for (const auto& [id, r] : recs) {
      if (r.expunged || !r.has_body) continue;  // no client sees it
      if (r.uidvalidity != lineage)
        fail("(e) " + key.first + "/" + key.second + " message " + id.str() + " has UIDVALIDITY " +
             std::to_string(r.uidvalidity) + ", the folder " + std::to_string(lineage));
      auto [it, fresh] = seen.emplace(r.uid, id);
      if (!fresh)
        fail("(e) " + key.first + "/" + key.second + " UID " + std::to_string(r.uid) +
             " held by " + it->second.str() + " and " + id.str());
    }
  }
  // A message moved to a new UID (its UID was stale after a takeover, or
  // held twice) is, to a client, expunged and new: its old UID is out of
  // the ordering below. With a node destroyed for good, the latest UID
  // reservation of a folder may be gone with it (its other holder was down
  // when it was written): a later manager then hands out lower UIDs, which
  // readers (check (f)) have moved when they saw them below; the order of
  // acknowledgements is not checked then.
  auto still = [&](const Acked& a) {
    auto f = folders.find({a.target.user, a.target.folder});
    if (f == folders.end()) return false;
    auto r = f->second.find(a.target.id);
    return r != f->second.end() && r->second.has_body && !r->second.expunged &&
           r->second.uidvalidity == a.uidvalidity && r->second.uid == a.uid;
  };
  for (std::size_t i = 0; i < w.delivered.size() && !destroyed_any; ++i)
    for (std::size_t j = 0; j < w.delivered.size(); ++j) {
      const Acked& a = w.delivered[i];
      const Acked& b = w.delivered[j];
      if (a.target.user != b.target.user || a.target.folder != b.target.folder) continue;
      if (a.uidvalidity != b.uidvalidity || a.acked >= b.issued) continue;
      if (!still(a) || !still(b)) continue;
      NodeId mgr = mem.manager_of(bucket_of(a.target.user, mem.map().size()));
      const Node::MgrUser* u = c.node(mgr)->managed_user(a.target.user);
      if (!u) continue;
      auto f = u->folders.find(a.target.folder);
      if (f == u->folders.end() || f->second.uidvalidity != a.uidvalidity) continue;
      if (b.uid <= a.uid)
        fail("(e) " + a.target.user + "/" + a.target.folder + " UID went back from " +
             std::to_string(a.uid) + " to " + std::to_string(b.uid) + " in UIDVALIDITY " +
             std::to_string(a.uidvalidity) + " (" + a.target.id.str() + " acked at " + std::to_string(a.acked) +
             ", " + b.target.id.str() + " issued at " + std::to_string(b.issued) + ")");
    }
  return bad;
}

std::vector<std::string> repair_unfinished(Cluster& c, std::size_t replicas, bool exact) {
  std::vector<std::string> bad;
  auto fail = [&](std::string s) {
    if (bad.size() < 20) bad.push_back(std::move(s));
  };
  std::vector<NodeId> up = c.up();
  if (up.empty()) return {"no node running"};
  const Membership& mem = c.node(up.front())->membership();
  std::size_t active = 0;
  for (NodeId n : up) active += mem.admin_state(n) == AdminState::Active;
  const std::size_t want = std::min(replicas, active);
  auto list_str = [](const std::vector<NodeId>& v) {
    std::string s;
    for (NodeId x : v) s += " n" + std::to_string(x);
    return s;
  };
  // With fewer Active nodes than R, a draining node holds the copies that
  // make up R (repair and delivery put them there).
  auto good_holder = [&](NodeId x) {
    return c.is_up(x) && (mem.admin_state(x) == AdminState::Active ||
                          (active < replicas && mem.admin_state(x) == AdminState::Draining));
  };
  for (NodeId n : up)
    if (c.node(n)->repair_progress().inflight > 0) fail("n" + std::to_string(n) + " still copying");
  // Messages: the newest list of each, from every running disk.
  std::map<MsgId, MessageRecord> newest;
  std::set<MsgId> dead;
  for (NodeId n : up)
    for (const auto& [id, r] : c.disk(n)->data().records) {
      if (r.expunged) dead.insert(id);
      auto [it, fresh] = newest.try_emplace(id, r);
      if (!fresh && newer(r.replicas_version, it->second.replicas_version)) it->second = r;
      if (r.has_body) it->second.has_body = true;
    }
  for (const auto& [id, r] : newest) {
    if (dead.count(id) || !r.has_body) continue;
    if (exact ? r.replicas.size() != want : r.replicas.empty() || r.replicas.size() > replicas)
      fail("message " + id.str() + " has" + list_str(r.replicas));
    for (NodeId x : r.replicas) {
      if (!good_holder(x)) {
        fail("message " + id.str() + " names n" + std::to_string(x) + " (" +
             (c.is_up(x) ? admin_state_name(mem.admin_state(x)) : "down") + "):" + list_str(r.replicas));
        continue;
      }
      const auto& recs = c.disk(x)->data().records;
      auto it = recs.find(id);
      if (it == recs.end() || !it->second.has_body)
        fail("message " + id.str() + " not on the disk of n" + std::to_string(x));
      else if (it->second.replicas != r.replicas)
        fail("message " + id.str() + " on n" + std::to_string(x) + " under the old list" +
             list_str(it->second.replicas));
    }
  }
  // Profiles: the newest of each.
  std::map<std::string, Profile> profiles;
  for (NodeId n : up)
    for (const auto& [user, p] : c.disk(n)->data().profiles) {
      auto [it, fresh] = profiles.try_emplace(user, p);
      if (!fresh && newer(p.version, it->second.version)) it->second = p;
    }
  for (const auto& [user, p] : profiles) {
    // (Repair tops a profile up to R holders whenever nodes are there.)
    if (exact ? p.holders.size() != want : p.holders.size() < want || p.holders.size() > replicas)
      fail("profile of " + user + " has" + list_str(p.holders));
    for (NodeId x : p.holders) {
      if (!good_holder(x)) {
        fail("profile of " + user + " names n" + std::to_string(x) + ":" + list_str(p.holders));
        continue;
      }
      const auto& ps = c.disk(x)->data().profiles;
      auto it = ps.find(user);
      if (it == ps.end() || it->second.holders != p.holders)
        fail("profile of " + user + " not on the disk of n" + std::to_string(x) + " under its newest holders");
    }
  }
  return bad;
}

ScheduleResult run_schedule(std::uint64_t seed, const ScheduleOptions& opt) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 1);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };

  CoreConfig cfg;
  cfg.buckets = opt.buckets;
  cfg.death_ttl = 10 * 60 * 1000;  // longer than the run: certificates stay
  // Anti-entropy every 20 s of simulated time (15 min in a real node): the
  // settle then holds at least two rounds, and what only a periodic round
  // repairs (a copy that lost an acknowledged change with a damaged index,
  // while its peers learned it later) is checked as converged too.
  cfg.sync_interval = 20 * 1000;
  // Listings in parts of 3 records: a folder of a few messages comes in
  // several replies, lost, duplicated and reordered like any other.
  cfg.list_part = 3;
  Cluster c(seed, cfg);
  c.keep_trace = opt.trace;

  const int n = pick(opt.min_nodes, opt.max_nodes);
  std::vector<NodeId> seeds;
  for (int i = 1; i <= n; ++i) seeds.push_back(static_cast<NodeId>(i));
  for (int i = 1; i <= n; ++i) c.add_node(static_cast<NodeId>(i), seeds, chance(0.2) ? 2 : 1);
  const bool joiner = chance(0.3);
  const NodeId join_id = static_cast<NodeId>(n + 1);
  const Time join_at = 5'000 + pick(0, static_cast<int>(opt.fault_phase));
  c.network().latency_max = pick(2, 30);

  // Users exist before the faults start.
  const int users = 10;
  c.run_until_pred([&] { return c.converged(); }, 10'000);
  for (int u = 0; u < users; ++u) {
    for (int attempt = 0; attempt < 10; ++attempt) {
      const ClientReply* r = c.wait(c.create_user(static_cast<NodeId>(1 + u % n), user_name(u)), 10'000);
      if (r && (r->status == Status::Ok || r->status == Status::Exists)) break;
    }
    // Its second folder too (a folder created on both sides of a
    // partition gets the newer side's lineage: not what this checks).
    UserUpdateRequest mk;
    mk.user = user_name(u);
    mk.op = UserUpdateRequest::Op::CreateFolder;
    mk.folder = "Archive";
    for (int attempt = 0; attempt < 10; ++attempt) {
      const ClientReply* r = c.wait(c.call(static_cast<NodeId>(1 + u % n), [&](Node& node, Time now, std::uint64_t req) {
        node.update_user(now, req, mk);
      }), 10'000);
      if (r && (r->status == Status::Ok || r->status == Status::Exists)) break;
    }
  }

  WorkloadLog w;
  std::map<std::uint64_t, Outstanding> out;
  std::map<std::uint64_t, std::string> bodies;
  ListingChecker listings;
  int destroyed = 0, damaged = 0, crashes = 0, partitions = 0;
  // Permanent loss with repair: `lost` was destroyed and is to be (or was)
  // forgotten; until repair has made every copy again it counts against
  // the budget of R-1 (`unrepaired`, with plain destroys and damage).
  int unrepaired = 0, forgotten = 0, repaired = 0, drains = 0;
  NodeId lost = kNoNode;
  bool lost_forgotten = false;
  Time next_forget = 0, next_repair_check = 0;
  NodeId draining = kNoNode;
  const int budget = static_cast<int>(cfg.replicas) - 1;
  std::vector<std::string> repair_failures;
  const Time start = c.now();
  const Time fault_end = start + opt.fault_phase;
  Time next_fault = start + pick(1000, 4000);
  const char* folders[] = {"INBOX", "Archive"};

  auto random_up = [&]() -> NodeId {
    auto up = c.up();
    return up.empty() ? kNoNode : up[static_cast<std::size_t>(pick(0, static_cast<int>(up.size()) - 1))];
  };

  // Forgets `lost` through a running node of the group that no longer
  // counts it a member (administer refuses otherwise).
  auto try_forget = [&] {
    for (NodeId via : c.up()) {
      const Membership& m = c.node(via)->membership();
      if (!m.in_group() || m.is_member(lost)) continue;
      const ClientReply* r = c.reply(c.call(via, [&](Node& node, Time now, std::uint64_t req) {
        node.administer(now, req, lost, AdminState::Gone);
      }));
      if (r && r->status == Status::Ok) {
        lost_forgotten = true;
        ++forgotten;
        return;
      }
    }
  };
  // Repair of `lost` is done: every node not destroyed is up (so every
  // copy is looked at), in one group, and the disks show every live
  // message and profile with R Active holders.
  auto lost_repaired = [&] {
    return c.up().size() == c.ids().size() && c.converged() && repair_unfinished(c, cfg.replicas, false).empty();
  };
  auto second_loss = [&] {
    // The budget is free again: a second node is lost for good at once.
    lost = kNoNode;
    lost_forgotten = false;
    --unrepaired;
    ++repaired;
    auto up = c.up();
    if (unrepaired + damaged < budget && up.size() > 2) {
      NodeId v = random_up();
      if (v == draining) draining = kNoNode;
      c.destroy(v);
      ++destroyed;
      ++unrepaired;
      if (chance(0.5)) lost = v;  // and forgotten in its turn
    }
  };

  auto collect = [&] {
    for (auto it = out.begin(); it != out.end();) {
      const ClientReply* r = c.reply(it->first);
      if (!r) { ++it; continue; }
      if (it->second.kind == Outstanding::Deliver) {
        if (r->status == Status::Ok) {
          Acked a;
          a.deliver_req = it->first;
          a.target.id = r->msg;
          a.target.replicas = r->replicas;
          a.uidvalidity = r->uidvalidity;
          a.uid = r->uid;
          a.issued = it->second.issued;
          a.acked = c.reply_time(it->first);
          auto b = bodies.find(it->first);
          std::string tag = b->second;
          a.target.user = tag.substr(0, tag.find('|'));
          a.target.folder = tag.substr(tag.find('|') + 1);
          w.delivered.push_back(a);
        } else {
          ++w.tempfailed;
        }
      } else if (it->second.kind == Outstanding::Expunge && r->status != Status::Ok) {
        // (it may still have been applied: expunge_issued stays)
      } else if (it->second.kind == Outstanding::Expunge && r->status == Status::Ok) {
        w.delivered[it->second.acked_index].expunge_acked = true;
      } else if (it->second.kind == Outstanding::List && r->status == Status::Ok) {
        for (const auto& [t, above] : listings.observe(it->second.via, it->second.user, it->second.folder, *r))
          c.call(it->second.via, [t, above](Node& node, Time now, std::uint64_t req) { node.renumber(now, req, t, above); });
      }
      it = out.erase(it);
    }
  };

  for (Time t = start; t < fault_end; t += 50) {
    c.run_until(t);
    collect();
    if (joiner && t >= join_at && !c.disk(join_id)) {
      std::vector<NodeId> js;
      for (NodeId id : c.ids())
        if (js.size() < 2) js.push_back(id);
      c.add_node(join_id, js);
    }
    if (lost != kNoNode && !lost_forgotten && t >= next_forget) {
      next_forget = t + 500;
      try_forget();
    }
    if (lost != kNoNode && lost_forgotten && t >= next_repair_check) {
      next_repair_check = t + 1000;
      if (lost_repaired()) second_loss();
    }
    if (t >= next_fault) {
      next_fault = t + pick(1000, 4000);
      auto up = c.up();
      switch (pick(0, 7)) {
        case 0:
        case 1:
          // A process killed (peers are refused at once) or a host lost
          // (peers hear nothing): both ways of finding a node down.
          if (up.size() > 1) {
            const NodeId v = random_up();
            if (chance(0.5)) c.crash(v);
            else c.power_off(v);
            ++crashes;
          }
          break;
        case 2:
          for (NodeId id : c.ids())
            if (!c.is_up(id)) { c.restart(id); break; }
          break;
        case 3: {
          if (!opt.partitions) break;
          std::set<NodeId> a, b;
          for (NodeId id : c.ids()) (chance(0.5) ? a : b).insert(id);
          c.partition({a, b});
          ++partitions;
          break;
        }
        case 4: c.heal(); break;
        case 5:
          c.network().loss = chance(0.5) ? 0.0 : 0.2 * std::uniform_real_distribution<double>(0, 1)(rng);
          c.network().duplicate = chance(0.5) ? 0.0 : 0.05;
          break;
        case 6:
          if (unrepaired + damaged < budget && up.size() > 2 && chance(0.3)) {
            NodeId v = random_up();
            if (v == draining) draining = kNoNode;
            c.destroy(v);
            ++destroyed;
            ++unrepaired;
            // A permanent loss: the node is forgotten, its copies made
            // again elsewhere.
            if (chance(0.6)) lost = v;
          } else if (unrepaired + damaged < budget && chance(0.5)) {
            // A crashed node's index is cut short (a damaged Redis file):
            // its peers' sync must give everything back.
            for (NodeId id : c.ids())
              if (!c.is_up(id) && !c.is_destroyed(id) && c.damage_index(id, 2, static_cast<std::size_t>(pick(0, 1)))) {
                ++damaged;
                break;
              }
          }
          break;
        case 7:
          // A drain (one node at a time), or its end (the node is Active again).
          if (!opt.drains) break;
          if (draining != kNoNode) {
            if (chance(0.3)) {
              NodeId d = draining, via = random_up();
              if (c.reply(c.call(via, [&](Node& node, Time now, std::uint64_t req) {
                    node.administer(now, req, d, AdminState::Active);
                  }))->status == Status::Ok)
                draining = kNoNode;
            }
          } else if (chance(0.5) && up.size() > 2) {
            NodeId d = random_up(), via = random_up();
            if (c.reply(c.call(via, [&](Node& node, Time now, std::uint64_t req) {
                  node.administer(now, req, d, AdminState::Draining);
                }))->status == Status::Ok) {
              draining = d;
              ++drains;
            }
          }
          break;
      }
    }
    // Workload: one operation every 50 ms at a random running node.
    NodeId via = random_up();
    if (via == kNoNode) continue;
    int kind = pick(0, 9);
    if (kind < 6 || w.delivered.empty()) {
      std::string user = user_name(pick(0, users - 1));
      std::string folder = folders[pick(0, 1)];
      std::uint64_t req = c.deliver(via, user, folder, "Subject: m" + std::to_string(w.attempted) + "\r\n\r\nbody\r\n");
      ++w.attempted;
      out[req] = {Outstanding::Deliver, 0, t, kNoNode, {}, {}};
      bodies[req] = user + "|" + folder;
    } else if (kind < 8) {
      std::size_t i = static_cast<std::size_t>(pick(0, static_cast<int>(w.delivered.size()) - 1));
      out[c.set_flags(via, w.delivered[i].target, static_cast<std::uint32_t>(pick(0, 31)))] = {Outstanding::Flags, i, t, kNoNode, {}, {}};
      ++w.flag_ops;
    } else if (kind < 9) {
      std::size_t i = static_cast<std::size_t>(pick(0, static_cast<int>(w.delivered.size()) - 1));
      out[c.expunge(via, w.delivered[i].target)] = {Outstanding::Expunge, i, t, kNoNode, {}, {}};
      w.delivered[i].expunge_issued = true;
      ++w.expunge_ops;
    } else if (chance(0.5)) {
      std::string user = user_name(pick(0, users - 1));
      std::string folder = folders[pick(0, 1)];
      out[c.list(via, user, folder)] = {Outstanding::List, 0, t, via, user, folder};
      ++w.lists;
      // Every running node's kept digest of the folder (a poll's): check
      // (h) compares them with their records at the end.
      for (NodeId up : c.up()) (void)c.node(up)->replicator().folder_digest(user, folder);
    } else {
      std::size_t i = static_cast<std::size_t>(pick(0, static_cast<int>(w.delivered.size()) - 1));
      const MessageRecord& t0 = w.delivered[i].target;
      std::string to = t0.folder == folders[0] ? folders[1] : folders[0];
      out[c.call(via, [&](Node& node, Time now, std::uint64_t req) { node.move(now, req, t0, to); })] =
          {Outstanding::Flags, i, t, kNoNode, {}, {}};
      ++w.moves;
    }
  }

  // Settle: heal, restart, reliable network; let outstanding requests end.
  c.heal();
  c.network().loss = 0;
  c.network().duplicate = 0;
  for (NodeId id : c.ids())
    if (!c.is_up(id)) c.restart(id);
  c.run_for(CoreConfig{}.request_timeout + 1000);
  collect();
  c.run_until_pred([&] { return false; }, opt.settle);
  // A permanent loss is finished: the node is forgotten (if it was not
  // yet), repair must complete, and then a second node is lost for good.
  // A drain must complete too (when there are nodes to take its copies).
  if (draining != kNoNode && c.is_up(draining)) {
    std::size_t active = 0;
    for (NodeId id : c.up()) active += c.node(id)->membership().admin_state(id) == AdminState::Active;
    auto drained = [&] {
      Node::DrainProgress d = c.node(draining)->drain_progress();
      return d.messages == 0 && d.profiles == 0 && d.buckets == 0;
    };
    if (active >= cfg.replicas && !c.run_until_pred(drained, 120'000)) {
      Node::DrainProgress d = c.node(draining)->drain_progress();
      repair_failures.push_back("(r) drain of n" + std::to_string(draining) + " unfinished: " +
                                std::to_string(d.messages) + " messages, " + std::to_string(d.profiles) +
                                " profiles, " + std::to_string(d.buckets) + " buckets");
      int shown = 0;
      for (const auto& [id, r] : c.node(draining)->replicator().records()) {
        if (r.expunged || !r.has_body || shown == 3) continue;
        if (std::find(r.replicas.begin(), r.replicas.end(), draining) == r.replicas.end()) continue;
        ++shown;
        std::string line = "(r)   " + id.str() + " here under";
        for (NodeId x : r.replicas) line += " n" + std::to_string(x);
        line += " at " + r.replicas_version.str() + ";";
        for (NodeId x : c.up()) {
          if (x == draining) continue;
          auto o = c.node(x)->replicator().records().find(id);
          if (o == c.node(x)->replicator().records().end()) continue;
          line += " n" + std::to_string(x) + ":";
          for (NodeId y : o->second.replicas) line += " n" + std::to_string(y);
          line += " at " + o->second.replicas_version.str() + (o->second.has_body ? "" : " bodiless") +
                  (o->second.expunged ? " expunged" : "") + ";";
        }
        for (NodeId x : c.up())
          for (const auto& [v, e] : c.node(x)->replicator().log())
            if (e.update.record.id == id) line += " log@n" + std::to_string(x) + " " + kind_name(e.update.kind);
        repair_failures.push_back(line);
      }
      for (const auto& [user, p] : c.node(draining)->replicator().profiles()) {
        if (std::find(p.holders.begin(), p.holders.end(), draining) == p.holders.end()) continue;
        std::string line = "(r)   profile " + user + " here v " + p.version.str() + (p.deleted ? " deleted" : "") +
                           " holders";
        for (NodeId x : p.holders) line += " n" + std::to_string(x);
        for (NodeId x : c.up()) {
          if (x == draining) continue;
          auto o = c.node(x)->replicator().profiles().find(user);
          if (o != c.node(x)->replicator().profiles().end()) {
            line += "; n" + std::to_string(x) + " v " + o->second.version.str() + " holders";
            for (NodeId y : o->second.holders) line += " n" + std::to_string(y);
          }
          if (const auto* mu = c.node(x)->managed_user(user); mu && mu->profile) {
            line += "; manager n" + std::to_string(x) + " v " + mu->profile->version.str() + " holders";
            for (NodeId y : mu->profile->holders) line += " n" + std::to_string(y);
          }
        }
        repair_failures.push_back(line);
      }
    }
  }
  if (lost != kNoNode) {
    if (!lost_forgotten) try_forget();
    if (!lost_forgotten) repair_failures.push_back("(r) n" + std::to_string(lost) + " could not be forgotten");
    else if (c.run_until_pred(lost_repaired, 120'000)) second_loss();
    else
      for (const auto& g : repair_unfinished(c, cfg.replicas, false))
        repair_failures.push_back("(r) repair after the loss of n" + std::to_string(lost) + " unfinished: " + g);
  }
  c.run_until_pred([&] { return c.converged(); }, 30'000);
  c.run_for(20'000);
  // Every reader lists its folders once more, asks for what it finds below
  // what it took, and then must find every message it can take.
  // (A reader asks at each of its syncs; three rounds here, then a check.)
  for (int round = 0; round < 4; ++round) {
    const bool last = round == 3;
    for (const auto& [via, uf] : listings.readers()) {
      if (!c.is_up(via)) continue;
      const ClientReply* r = c.wait(c.list(via, uf.first, uf.second), 30'000);
      if (!r || r->status != Status::Ok) continue;
      for (const auto& [t, above] : listings.observe(via, uf.first, uf.second, *r, last))
        if (!last) c.call(via, [t, above](Node& node, Time now, std::uint64_t req) { node.renumber(now, req, t, above); });
    }
    if (!last) c.run_for(5'000);
  }

  ScheduleResult res;
  res.seed = seed;
  // A damaged node loses its log: an expunge or flag change it had
  // acknowledged (optimistic: logged, not yet pushed) may go with it.
  res.failures = check_invariants(c, w, destroyed > 0 || damaged > 0);
  res.failures.insert(res.failures.end(), listings.failures().begin(), listings.failures().end());
  res.failures.insert(res.failures.end(), repair_failures.begin(), repair_failures.end());
  res.ok = res.failures.empty();
  std::ostringstream s;
  s << "seed " << seed << ": " << n << " nodes" << (joiner ? " +1 joined" : "") << ", " << crashes
    << " crashes, " << partitions << " partitions, " << destroyed << " destroyed, " << damaged
    << " damaged, " << forgotten << " forgotten, " << repaired << " repaired, " << drains << " drains; "
    << w.delivered.size() << "/" << w.attempted << " deliveries acknowledged, " << w.tempfailed
    << " tempfailed, " << w.flag_ops << " flag ops, " << w.expunge_ops << " expunges, " << w.moves << " moves, "
    << c.messages_sent() << " messages; " << (res.ok ? "ok" : "FAILED");
  res.summary = s.str();
  if (opt.trace) res.trace = c.trace();
  return res;
}

}  // namespace porcupine::sim
