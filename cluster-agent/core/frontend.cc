// SPDX-License-Identifier: MIT
// frontend.cc - the front-end role: local client operations (what the
// milter and the Dovecot plugin ask through the agent) turned into calls
// to the user's manager and to the nodes that store the fragments.
//
// Every operation has a deadline (request_timeout) and ends in exactly one
// Env::reply. Requests to peers are resent until answered or until the
// deadline: each is idempotent (same update id, or a fresh harmless UID).
#include <algorithm>
#include <cctype>
#include <functional>
#include <type_traits>
#include <utility>

#include <xxhash.h>

#include "hash.h"
#include "node.h"

namespace porcupine {

namespace {
constexpr Time kRetry = 200;

// IMAP keywords are case-insensitive (RFC 3501): one of each, spelled as
// its first occurrence, in case-insensitive order.
std::vector<std::string> normal_keywords(std::vector<std::string> keywords) {
  auto lower = [](std::string s) {
    for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  std::stable_sort(keywords.begin(), keywords.end(),
                   [&](const std::string& a, const std::string& b) { return lower(a) < lower(b); });
  keywords.erase(std::unique(keywords.begin(), keywords.end(),
                             [&](const std::string& a, const std::string& b) { return lower(a) == lower(b); }),
                 keywords.end());
  return keywords;
}
}  // namespace

void Node::fe_fail(std::uint64_t id, Status s, const std::string& why) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  if (it->second.client_req != 0 || !std::holds_alternative<RenumberOp>(it->second.op)) {
    ClientReply r;
    r.req = it->second.client_req;
    r.status = s;
    r.detail = why;
    reply(std::move(r));
  }
  pending_.erase(it);
}

void Node::create_user(Time now, std::uint64_t req, const std::string& user,
                       const std::string& password_hash) {
  Entry entry(*this, now);
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  p.op = CreateUserOp{password_hash};
  p.retry_at = now;  // sent by fe_tick, which also resends
  fe_tick(now);
}

void Node::deliver(Time now, std::uint64_t req, const std::string& user, const std::string& folder,
                   Body body, DeliverOptions opts) {
  Entry entry(*this, now);
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  DeliverOp& d = p.op.emplace<DeliverOp>();
  d.folder = folder;
  d.body = std::move(body);
  d.opts = std::move(opts);
  d.opts.keywords = normal_keywords(std::move(d.opts.keywords));
  if (!d.opts.key.empty()) {
    // Named before the manager is asked: a retry is answered with it.
    d.msg = MsgId{cfg_.self, next_seq_++};
    persist_counters();
  }
  p.retry_at = now;
  fe_tick(now);
}

void Node::list(Time now, std::uint64_t req, const std::string& user, const std::string& folder,
                bool digest_only, std::uint32_t meta_from_uid) {
  Entry entry(*this, now);
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  ListOp& l = p.op.emplace<ListOp>();
  l.digest_only = digest_only;
  l.meta_from_uid = meta_from_uid;
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  l.g.folder = folder;
  p.retry_at = now;
  fe_tick(now);
}

void Node::mutate(Time now, std::uint64_t req, Update::Kind kind, const MessageRecord& target,
                  const std::function<void(MessageRecord&)>& fill) {
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  Update& u = p.op.emplace<MutateOp>().update;
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  u.kind = kind;
  u.replicas = target.replicas;
  u.record.id = target.id;
  u.record.user = target.user;
  u.record.folder = target.folder;
  u.id = next_version();
  if (fill) fill(u.record);
  p.retry_at = now;
  fe_tick(now);
}

void Node::set_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t flags,
                     std::vector<std::string> keywords) {
  Entry entry(*this, now);
  keywords = normal_keywords(std::move(keywords));
  mutate(now, req, Update::Kind::Flags, target, [flags, &keywords](MessageRecord& r) {
    r.flags = flags;
    r.keywords = keywords;
  });
}

void Node::change_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t add_flags,
                        std::uint32_t remove_flags, const std::vector<std::string>& add_keywords,
                        const std::vector<std::string>& remove_keywords) {
  Entry entry(*this, now);
  mutate(now, req, Update::Kind::Flags, target, [&](MessageRecord& r) {
    // The versions are the update's own, set where it is applied.
    r.flag_marks = flag_marks(Version{}, add_flags, remove_flags, add_keywords, remove_keywords);
  });
}

void Node::move(Time now, std::uint64_t req, const MessageRecord& target, const std::string& to_folder) {
  Entry entry(*this, now);
  // First a UID in the destination, then the Move that carries it.
  MoveOp m;
  m.update.kind = Update::Kind::Move;
  m.update.replicas = target.replicas;
  m.update.record.id = target.id;
  m.update.record.user = target.user;
  m.update.record.folder = to_folder;
  fe_start(now, std::move(m), req, target.user);
  fe_tick(now);
}

void Node::renumber(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t above) {
  Entry entry(*this, now);
  RenumOp r;
  r.target = target;
  r.target.body.clear();
  r.above = above;
  fe_start(now, std::move(r), req, target.user);
  fe_tick(now);
}

void Node::expunge(Time now, std::uint64_t req, const MessageRecord& target) {
  Entry entry(*this, now);
  mutate(now, req, Update::Kind::Expunge, target, nullptr);
}

void Node::fe_tick(Time now) {
  std::vector<std::uint64_t> expired;
  for (auto& [id, p] : pending_) {
    if (now >= p.deadline) {
      expired.push_back(id);
      continue;
    }
    // A listing that waits only for nodes that refuse connections (their
    // processes are down: they will not answer) ends now with what the
    // others gave, as it would at its deadline.
    if (const Gather* g = gathering(p);
        g && p.retry_at != 0 && !g->awaiting.empty() &&
        std::all_of(g->awaiting.begin(), g->awaiting.end(),
                    [this](NodeId n) { return n != cfg_.self && membership_.refuses(n); })) {
      expired.push_back(id);
      continue;
    }
    if (p.retry_at == 0 || now < p.retry_at) continue;
    p.retry_at = now + kRetry;
    NodeId mgr = membership_.in_group() ? membership_.manager_of(bucket(p.user)) : kNoNode;
    std::visit(
        [&, id = id, &p = p](auto& op) {
          using T = std::decay_t<decltype(op)>;
          if constexpr (std::is_same_v<T, CreateUserOp>) {
            send(mgr, CreateUserRequest{id, p.user, op.password_hash});
          } else if constexpr (std::is_same_v<T, DeliverOp>) {
            if (!op.quota) {
              send(mgr, AllocRequest{id, p.user, op.folder, op.body.size(), {}, op.opts.key, op.msg});
            } else {
              p.retry_at = now + cfg_.push_retry;
              for (NodeId n : op.quota->usage.awaiting) send(n, UsageRequest{id, p.user});
            }
          } else if constexpr (std::is_same_v<T, MoveOp>) {
            send(mgr, AllocRequest{id, p.user, op.update.record.folder, 0, op.update.replicas, {}, {}});
          } else if constexpr (std::is_same_v<T, RenumOp>) {
            const MessageRecord& t = op.target;
            send(mgr, RenumberRequest{id, p.user, t.folder, t.id, t.replicas, t.uidvalidity, t.uid, op.above});
          } else if constexpr (std::is_same_v<T, StoreOp>) {
            // Not answered, and nothing at all heard from the node asked: the
            // next replica is asked (any can coordinate, and one that is
            // alive replaces a silent one), so a primary that died does not
            // hold the delivery to its deadline. One that talks is waited for,
            // unless its spool is full (it refuses the copy).
            p.retry_at = now + cfg_.push_retry + store_crossing(cfg_, op.update.record.body.size());
            const auto& list = op.update.replicas;
            if ((op.peer != cfg_.self && silent_for(op.peer, cfg_.push_retry)) || takes_no_copies(op.peer)) {
              auto at = std::find(list.begin(), list.end(), op.peer);
              for (std::size_t k = 1; k < list.size(); ++k) {
                NodeId next = list[(static_cast<std::size_t>(at - list.begin()) + k) % list.size()];
                if (live(next) && !takes_no_copies(next) && (next == cfg_.self || !silent_for(next, cfg_.push_retry))) {
                  op.peer = next;
                  break;
                }
              }
            }
            send(op.peer, StoreRequest{id, op.update});
          } else if constexpr (std::is_same_v<T, MutateOp>) {
            // Any live replica can coordinate; rotate through them on retries.
            NodeId to = kNoNode;
            for (NodeId r : op.update.replicas)
              if (live(r) && r != op.peer) { to = r; break; }
            if (to == kNoNode)
              for (NodeId r : op.update.replicas)
                if (live(r)) { to = r; break; }
            op.peer = to;
            send(to, MutateRequest{id, op.update});
          } else if constexpr (std::is_same_v<T, ListOp> || std::is_same_v<T, RenumberOp>) {
            if constexpr (std::is_same_v<T, ListOp>) {
              if (op.phase == ListOp::Phase::Map) {
                send(mgr, MapRequest{id, p.user, op.g.folder});
                return;
              }
            }
            fe_list_retry(id, p);
          } else if constexpr (std::is_same_v<T, FetchOp>) {
            // The holders asked have not answered yet: ask the next one too.
            // A large body may still be on its way from them, and their answer
            // is still taken; none is asked twice (each ask sends the whole
            // body again). With none left to ask, wait for the deadline,
            // unless every holder asked has left the group.
            for (auto a = op.awaiting.begin(); a != op.awaiting.end();)
              a = live(*a) ? std::next(a) : op.awaiting.erase(a);
            if (!fe_fetch_next(p, id)) {
              if (op.awaiting.empty()) p.deadline = now;  // fails on the next tick
              else p.retry_at = p.deadline;
            }
          } else if constexpr (std::is_same_v<T, ProfileOp>) {
            const Profile* known = op.offer ? remembered_profile(p.user) : nullptr;
            send(mgr, ProfileRequest{id, p.user, known ? std::optional<Profile>(*known) : std::nullopt});
          } else if constexpr (std::is_same_v<T, UserUpdateOp>) {
            op.change.req = id;
            send(mgr, op.change);
          } else if constexpr (std::is_same_v<T, UserListOp>) {
            for (NodeId n : op.awaiting) send(n, UserListRequest{id});
          } else {
            static_assert(std::is_same_v<T, UsageOp>);
            p.retry_at = now + cfg_.push_retry;
            for (NodeId n : op.count.awaiting) send(n, UsageRequest{id, p.user});
          }
        },
        p.op);
  }
  for (std::uint64_t id : expired) {
    Pending& p = pending_[id];
    if (gathering(p)) {
      fe_finish_list(id);  // answer with what the reachable nodes gave
    } else {
      fe_fail(id, Status::TryAgain, "cluster did not answer in time");
    }
  }
}

// A listing's or a renumbering's retry: the nodes still to answer asked again.
void Node::fe_list_retry(std::uint64_t id, Pending& p) {
  Gather& g = *gathering(p);
  const ListOp* l = std::get_if<ListOp>(&p.op);
  const bool digest_only = l && l->digest_only;
  // A node asked for its records that has not answered by now: every
  // node is asked for its records (the listing no longer waits on it
  // for what the others hold).
  if (!digest_only) {
    bool records_late = false;
    for (NodeId n : g.awaiting) records_late |= g.full_from.count(n) > 0;
    if (records_late) {
      fe_list_unlight(id, p);
      for (const auto& [n, d] : g.digests)
        if (!g.with_records.count(n) && g.full_from.insert(n).second) g.awaiting.insert(n);
    }
  }
  for (NodeId n : g.awaiting) {
    if (!digest_only) g.full_from.insert(n);
    send(n, list_request(p, id, n));
  }
}

const Node::Gather* Node::gathering(const Pending& p) {
  if (const auto* l = std::get_if<ListOp>(&p.op)) return l->phase == ListOp::Phase::List ? &l->g : nullptr;
  if (const auto* r = std::get_if<RenumberOp>(&p.op)) return &r->g;
  return nullptr;
}

Node::Gather* Node::gathering(Pending& p) { return const_cast<Gather*>(gathering(std::as_const(p))); }

bool Node::waits_on(const Pending& p, NodeId n) {
  return std::visit(
      [n](const auto& op) {
        using T = std::decay_t<decltype(op)>;
        if constexpr (std::is_same_v<T, StoreOp> || std::is_same_v<T, MutateOp>) {
          return op.peer == n;
        } else if constexpr (std::is_same_v<T, FetchOp>) {
          return op.peer == n || op.awaiting.count(n) > 0;
        } else if constexpr (std::is_same_v<T, ListOp> || std::is_same_v<T, RenumberOp>) {
          return op.g.awaiting.count(n) > 0;
        } else if constexpr (std::is_same_v<T, UserListOp>) {
          return op.awaiting.count(n) > 0;
        } else if constexpr (std::is_same_v<T, UsageOp>) {
          return op.count.awaiting.count(n) > 0;
        } else if constexpr (std::is_same_v<T, DeliverOp>) {
          return op.quota && op.quota->usage.awaiting.count(n) > 0;
        } else {
          return false;  // asks the user's manager, whichever node that is
        }
      },
      p.op);
}

ListRequest Node::list_request(const Pending& p, std::uint64_t id, NodeId n) const {
  const Gather& g = *gathering(p);
  const ListOp* l = std::get_if<ListOp>(&p.op);  // null: a renumbering, which asks for every record whole
  const bool records = !(l && l->digest_only) && g.full_from.count(n);
  // In parts from another node (this node's own come with no encoding);
  // without names, which fe_take_records puts back; light from the one node
  // asked so.
  const std::uint32_t meta_from_uid = records && l ? l->meta_from_uid : 0;
  const bool light = records && l && n == l->light_from;
  return ListRequest{id, p.user, g.folder, !records, meta_from_uid, records && n != cfg_.self, records, light};
}

void Node::fe_gather(Time now, std::uint64_t id, const std::vector<NodeId>& nodes) {
  Pending& p = pending_[id];
  Gather& g = *gathering(p);
  ListOp* l = std::get_if<ListOp>(&p.op);
  g.awaiting.clear();
  g.full_from.clear();
  g.with_records.clear();
  g.parts_seen.clear();
  if (l) {
    l->light_from = kNoNode;
    l->light_parts.clear();
  }
  for (NodeId n : nodes)
    if (live(n)) g.awaiting.insert(n);
  if (g.awaiting.empty()) {
    fe_finish_list(id);
    return;
  }
  if (l) {
    // One node's records (this node's if it holds some: no network), the
    // others' digests: a node whose digest is that node's holds the same
    // records. Those that differ are asked for theirs next (fe_list_more).
    // They come light: shown as they are unless another's differ
    // (fe_list_unlight asks for them whole then).
    const NodeId first = g.awaiting.count(cfg_.self) ? cfg_.self : *g.awaiting.begin();
    g.full_from.insert(first);
    if (!l->digest_only) l->light_from = first;
  } else {
    g.full_from = g.awaiting;  // a renumbering reads every copy
  }
  p.retry_at = now + cfg_.push_retry;
  for (NodeId n : g.awaiting) send(n, list_request(p, id, n));
}

void Node::fe_gather_for(Time now, const std::string& user, const std::string& folder, const std::string& rename_to,
                         const std::vector<NodeId>& nodes) {
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  RenumberOp& r = p.op.emplace<RenumberOp>();
  p.user = user;
  r.g.folder = folder;
  r.rename_to = rename_to;
  p.deadline = now + cfg_.request_timeout;
  fe_gather(now, id, nodes);
}

std::set<NodeId> Node::fe_list_uncovered(const Pending& p) const {
  std::set<NodeId> out;
  const Gather& g = *gathering(p);
  if (const ListOp* l = std::get_if<ListOp>(&p.op); l && l->digest_only) return out;
  std::set<std::uint64_t> have;
  for (NodeId n : g.with_records) have.insert(g.digests.at(n));
  for (const auto& [n, d] : g.digests)
    if (!g.with_records.count(n) && !g.awaiting.count(n) && !have.count(d)) out.insert(n);
  return out;
}

bool Node::fe_list_more(std::uint64_t id, Pending& p) {
  std::set<NodeId> more = fe_list_uncovered(p);
  if (more.empty()) return false;
  fe_list_unlight(id, p);
  p.retry_at = now_ + cfg_.push_retry;
  Gather& g = *gathering(p);
  for (NodeId n : more) {
    g.full_from.insert(n);
    g.awaiting.insert(n);
    send(n, list_request(p, id, n));
  }
  return true;
}

// Records are merged by their versions: once a second node's are asked
// for, the light node's are dropped and asked for again whole (its light
// parts still on their way are not taken: they say they are light).
void Node::fe_list_unlight(std::uint64_t id, Pending& p) {
  ListOp* l = std::get_if<ListOp>(&p.op);  // a renumbering asks for nothing light
  if (!l || l->light_from == kNoNode) return;
  const NodeId n = l->light_from;
  l->light_from = kNoNode;
  l->g.gathered.clear();  // its records, the only ones taken so far
  l->light_parts.clear();
  l->g.with_records.erase(n);
  l->g.parts_seen.erase(n);
  l->g.awaiting.insert(n);
  send(n, list_request(p, id, n));
}

void Node::fe_finish_list(std::uint64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  if (auto* renumber = std::get_if<RenumberOp>(&p.op)) {
    manager_.on_gathered(now_, p.user, renumber->g.folder, renumber->rename_to, renumber->g.gathered,
                         renumber->g.awaiting.empty());
    return;
  }
  ListOp& l = std::get<ListOp>(p.op);
  Gather& g = l.g;
  ClientReply r;
  r.req = p.client_req;
  r.uidvalidity = l.uidvalidity;
  r.uid = l.next_uid;
  // A message still carrying an older lineage's UID is being renumbered:
  // it shows once it has its UID in the current one.
  // One whose UID is at or above the first still in flight waits for it,
  // so UIDs become visible in order; one a takeover made stale (its own
  // copies name the takeovers too) waits for its new UID.
  // An in-flight UID whose message a holder lists is stored (the manager
  // has not heard so yet): the limit moves to the next one none lists.
  // Every record taken: the light node's as they came, or those merged.
  if (!g.gathered.empty())
    for (auto& part : l.light_parts) fe_take_records(p, part);  // not expected: merged rather than shown twice
  std::vector<MessageRecord*> taken;
  if (g.gathered.empty()) {
    std::size_t n = 0;
    for (const auto& part : l.light_parts) n += part.size();
    taken.reserve(n);
    for (auto& part : l.light_parts)
      for (auto& rec : part) taken.push_back(&rec);
  } else {
    taken.reserve(g.gathered.size());
    for (auto& [mid, rec] : g.gathered) taken.push_back(&rec);
  }
  std::uint32_t below = l.visible_below;
  if (below != 0 && !l.inflight.empty()) {
    std::set<std::uint32_t> listed;
    for (const MessageRecord* rec : taken)
      if (rec->has_body && rec->uidvalidity == l.uidvalidity) listed.insert(rec->uid);
    below = l.next_uid;
    for (std::uint32_t uid : l.inflight)
      if (!listed.count(uid)) {
        below = uid;
        break;
      }
  }
  for (const MessageRecord* rec : taken)
    if (rec->uidvalidity == l.uidvalidity) add_takeover(l.takeovers, rec->uid_gen, rec->uid_seen);
  // In UID order (most often already so): the shown records are sorted by
  // reference, then moved once (p is this function's own).
  std::vector<MessageRecord*> shown;
  shown.reserve(taken.size());
  for (MessageRecord* rec : taken)
    if (rec->has_body && !rec->expunged && rec->uidvalidity == l.uidvalidity &&
        (below == 0 || rec->uid < below) && !uid_stale(l.takeovers, rec->uid_gen, rec->uid))
      shown.push_back(rec);
  const auto by_uid = [](const MessageRecord* a, const MessageRecord* b) {
    return std::tie(a->uid, a->id) < std::tie(b->uid, b->id);
  };
  if (!std::is_sorted(shown.begin(), shown.end(), by_uid)) std::sort(shown.begin(), shown.end(), by_uid);
  r.records.reserve(shown.size());
  for (MessageRecord* rec : shown) r.records.push_back(std::move(*rec));
  if (!g.awaiting.empty()) r.detail = "some fragments unreachable";
  std::string d;
  for (const auto& [n, digest] : g.digests) {
    d.append(reinterpret_cast<const char*>(&n), sizeof n);
    d.append(reinterpret_cast<const char*>(&digest), sizeof digest);
  }
  d.append(reinterpret_cast<const char*>(&l.uidvalidity), sizeof l.uidvalidity);
  d.append(reinterpret_cast<const char*>(&l.visible_below), sizeof l.visible_below);
  r.folder_digest = XXH64(d.data(), d.size(), 0);
  if (l.digest_only) r.records.clear();
  std::set<NodeId> reachable{cfg_.self};
  for (const auto& m : membership_.members())
    if (live(m.id) && !membership_.refuses(m.id)) reachable.insert(m.id);
  for (NodeId n : g.awaiting) reachable.erase(n);
  // A node that gave its digest alone, unlike every node whose records
  // came: what it holds is not in the listing.
  for (NodeId n : fe_list_uncovered(p)) {
    reachable.erase(n);
    r.detail = "some fragments unreachable";
  }
  r.reachable.assign(reachable.begin(), reachable.end());
  reply(std::move(r));
}

void Node::fetch(Time now, std::uint64_t req, const MessageRecord& target, FetchPart part) {
  Entry entry(*this, now);
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  FetchOp& f = p.op.emplace<FetchOp>();
  p.client_req = req;
  f.part = part;
  // A body the reader expects to be large is given the time to cross (a
  // header part: at most kHeaderPartMax; an older holder's whole body
  // then has the time of the retries).
  const std::uint64_t expect = part == FetchPart::Header ? std::min(target.size, kHeaderPartMax) : target.size;
  p.deadline = now + cfg_.request_timeout + transfer_time(cfg_, expect);
  f.msg = target.id;
  p.user = target.user;
  f.size = expect;
  // This node first (no network), then the other replicas.
  if (std::find(target.replicas.begin(), target.replicas.end(), cfg_.self) != target.replicas.end())
    f.candidates.push_back(cfg_.self);
  for (NodeId n : target.replicas)
    if (n != cfg_.self) f.candidates.push_back(n);
  if (!fe_fetch_next(p, id)) fe_fail(id, Status::TryAgain, "no live replica holds the message");
}

bool Node::fe_fetch_next(Pending& p, std::uint64_t id) {
  FetchOp& f = std::get<FetchOp>(p.op);
  while (!f.candidates.empty() && !live(f.candidates.front())) f.candidates.erase(f.candidates.begin());
  if (f.candidates.empty()) return false;
  f.peer = f.candidates.front();
  f.candidates.erase(f.candidates.begin());
  f.awaiting.insert(f.peer);
  p.retry_at = now_ + cfg_.push_retry + transfer_time(cfg_, f.size);
  send(f.peer, FetchRequest{id, f.msg, p.user, f.part});
  return true;
}

// The header part of record `r`, whose body this node holds: the bytes up
// to and including the blank line (hdr_size, or found in the first
// kHeaderPartMax bytes of an older record that lacks it), read without
// the body. The whole message when that is all of it; its first
// kHeaderPartMax bytes, cut, when no blank line comes within them.
static std::optional<FetchReply> header_part(DurableStore& disk, const MessageRecord& r) {
  if (r.size == 0) return std::nullopt;  // a record that does not say: the whole body
  const std::uint64_t want = std::min<std::uint64_t>(r.hdr_size != 0 ? r.hdr_size : r.size, kHeaderPartMax);
  auto head = disk.body_head(r.id, want);
  if (!head) return std::nullopt;
  // A body shorter than the record says: what was read is the message.
  const bool short_read = head->size() < want;
  bool complete = r.hdr_size != 0 && r.hdr_size <= kHeaderPartMax && head->size() == r.hdr_size;
  if (r.hdr_size == 0) {
    if (std::size_t end = header_end(*head); end != 0) {
      head->resize(end);
      complete = true;
    }
  }
  FetchReply rep;
  const bool whole = short_read || head->size() == r.size;  // or all of it is header
  rep.part = whole ? FetchPart::Whole : FetchPart::Header;
  rep.cut = !whole && !complete;
  rep.body = Body(std::move(*head));
  return rep;
}

void Node::serve_fetch(NodeId from, const FetchRequest& f) {
  FetchReply rep;
  rep.req = f.req;
  auto r = repl_.records().find(f.id);
  std::optional<Body> body;
  if (r != repl_.records().end() && !f.user.empty() && r->second.user != f.user) {
    rep.status = Status::NotFound;  // not the asker's: as if there were no such message
    send(from, std::move(rep));
    return;
  }
  const bool held = r != repl_.records().end() && r->second.has_body && !r->second.expunged;
  if (held && f.part == FetchPart::Header) {
    if (auto part = header_part(disk_, r->second)) {
      part->req = f.req;
      send(from, std::move(*part));
      return;
    }
  }
  if (held) body = disk_.body_ref(f.id);
  if (body) rep.body = std::move(*body);
  else rep.status = (r != repl_.records().end() && r->second.expunged) ? Status::NoSuchUser : Status::Failed;
  send(from, std::move(rep));
}

void Node::fe_reply(NodeId from, Message& m) {
  if (fe_user_reply(from, m)) return;
  if (const auto* u = std::get_if<UsageReply>(&m)) return fe_usage_reply(from, *u);
  if (const auto* f = std::get_if<FetchReply>(&m)) {
    auto [p, fetch] = pending_as<FetchOp>(f->req);
    if (!fetch || !fetch->awaiting.count(from)) return;
    if (f->status == Status::Ok) {
      ClientReply r;
      r.req = p->client_req;
      r.body = f->body;
      r.part = f->part;
      r.cut = f->cut;
      pending_.erase(f->req);
      reply(std::move(r));
    } else if (f->status == Status::NoSuchUser) {
      fe_fail(f->req, Status::NoSuchUser, "message expunged");
    } else if (f->status == Status::NotFound) {
      fe_fail(f->req, Status::NotFound, "no such message of that user");
    } else {
      // This holder cannot give it: the next one, or wait for those asked.
      fetch->awaiting.erase(from);
      if (!fe_fetch_next(*p, f->req) && fetch->awaiting.empty())
        fe_fail(f->req, Status::TryAgain, "no live replica holds the message");
    }
    return;
  }
  if (const auto* a = std::get_if<AllocReply>(&m)) {
    if (auto [p, renum] = pending_as<RenumOp>(a->req); renum) {
      if (a->status == Status::NotFound || a->status == Status::NoSuchUser)
        return fe_fail(a->req, a->status, "not in that folder's lineage");
      if (a->status != Status::Ok) {
        p->retry_at = now_ + kRetry;
        return;
      }
      ClientReply r;
      r.req = p->client_req;
      r.msg = renum->target.id;
      r.uidvalidity = a->uidvalidity;
      r.uid = a->uid;
      r.replicas = renum->target.replicas;
      pending_.erase(a->req);
      reply(std::move(r));
      return;
    }
    if (auto [p, mv] = pending_as<MoveOp>(a->req); mv) {
      if (a->status == Status::NoSuchUser) return fe_fail(a->req, Status::NoSuchUser, "no such user");
      if (a->status != Status::Ok) {
        p->retry_at = now_ + kRetry;
        return;
      }
      // The Move, with its UID, to a live replica (like any mutation).
      MutateOp mut{std::move(mv->update)};
      mut.update.id = next_version();
      mut.update.record.uidvalidity = a->uidvalidity;
      mut.update.record.uid = a->uid;
      mut.update.record.uid_gen = a->gen;
      mut.update.record.uid_seen = a->seen;
      p->op = std::move(mut);
      p->retry_at = now_;
      fe_tick(now_);
      return;
    }
    auto [p, d] = pending_as<DeliverOp>(a->req);
    if (!d || d->quota) return;
    if (a->status == Status::NoSuchUser) return fe_fail(a->req, Status::NoSuchUser, "no such user");
    if (a->status == Status::OverQuota)
      return fe_fail(a->req, Status::OverQuota,
                     "mailbox over quota (" + std::to_string(a->quota_bytes) + " bytes)");
    if (a->status != Status::Ok) {
      p->retry_at = now_ + kRetry;
      return;
    }
    if (a->stored) {
      // A retry of a delivery stored whole before (its key): answered
      // with that message.
      ClientReply r;
      r.req = p->client_req;
      r.msg = a->msg;
      r.uidvalidity = a->uidvalidity;
      r.uid = a->uid;
      r.replicas = a->nodes;
      env_.log("delivery to " + p->user + "/" + d->folder + " is a retry of message " + a->msg.str() +
               " (UID " + std::to_string(a->uid) + "): not stored again");
      pending_.erase(a->req);
      reply(std::move(r));
      return;
    }
    // The manager checks the quota as it hands out the UID. One that did
    // not (an older one, or one that an older member's reports leave
    // without a count) leaves it to this node, which counts first.
    if (a->quota_bytes > 0 && !a->quota_checked) {
      d->quota = QuotaCheck{*a, {}};
      fe_usage_gather(now_, a->req);
      return;
    }
    fe_store(a->req, *a);
  } else if (const auto* o = std::get_if<OpReply>(&m)) {
    auto it = pending_.find(o->req);
    if (it == pending_.end()) return;
    Pending* p = &it->second;
    auto* store = std::get_if<StoreOp>(&p->op);
    auto* mut = std::get_if<MutateOp>(&p->op);
    if (!store && !mut && !std::holds_alternative<CreateUserOp>(p->op)) return;
    if (o->status == Status::Ok) {
      if (store && !o->replicas.empty()) store->update.replicas = o->replicas;
      ClientReply r;
      r.req = p->client_req;
      const Update* placed = nullptr;  // a message under its new UID: a store's, or a move's
      if (store) placed = &store->update;
      else if (mut && mut->update.kind == Update::Kind::Move && mut->update.record.uid != 0) placed = &mut->update;
      if (placed) {
        r.msg = placed->record.id;
        r.uidvalidity = placed->record.uidvalidity;
        r.uid = placed->record.uid;
        r.replicas = placed->replicas;
        // Its UID is used: listings may show what comes after it.
        NodeId mgr = membership_.in_group() ? membership_.manager_of(bucket(placed->record.user)) : kNoNode;
        if (mgr != kNoNode)
          send(mgr, AllocDone{canonical_user(placed->record.user), placed->record.folder, r.uidvalidity, r.uid,
                              placed->record.delivery_key});
      }
      pending_.erase(o->req);
      reply(std::move(r));
    } else if (o->status == Status::Exists || o->status == Status::NoSuchUser) {
      fe_fail(o->req, o->status, status_name(o->status));
    } else {
      p->retry_at = now_ + kRetry;
    }
  } else if (const auto* mr = std::get_if<MapReply>(&m)) {
    auto [p, l] = pending_as<ListOp>(mr->req);
    if (!l || l->phase != ListOp::Phase::Map) return;
    if (mr->status == Status::NoSuchUser) return fe_fail(mr->req, Status::NoSuchUser, "no such user");
    if (mr->status != Status::Ok) {
      p->retry_at = now_ + kRetry;
      // The profile's holders may be out of reach (a reader whose session
      // began before a split): the manager is offered this node's memory.
      if (mr->status == Status::TryAgain) offer_profile(p->user);
      return;
    }
    l->phase = ListOp::Phase::List;
    l->uidvalidity = mr->uidvalidity;
    l->next_uid = mr->next_uid;
    l->visible_below = mr->visible_below;
    l->inflight = mr->inflight;
    l->takeovers = mr->takeovers;
    fe_gather(now_, mr->req, mr->nodes);
  } else if (auto* l = std::get_if<ListReply>(&m)) {
    auto it = pending_.find(l->req);
    Gather* g = it == pending_.end() ? nullptr : gathering(it->second);
    if (!g) return;
    Pending* p = &it->second;
    ListOp* lo = std::get_if<ListOp>(&p->op);  // null: a renumbering
    const bool digest_only = lo && lo->digest_only;
    if (!g->awaiting.count(from)) return;
    if (l->light && (!lo || from != lo->light_from)) return;  // asked whole since
    std::uint64_t digest = l->digest;
    if (!l->has_digest) {  // an older node's records
      digest = 0;
      for (const auto& rec : l->records) digest += copy_digest(rec);
    }
    const bool with_records = !l->has_digest || l->full;
    if (l->parts > 1 && with_records && !digest_only) {
      // A reply in parts, which may come in any order and more than once
      // (the request is resent): each part's records are taken as they
      // come, and the node has answered once every part has.
      auto& seen = g->parts_seen[from];
      const bool fresh = seen.insert(l->part).second;
      if (l->light) {
        if (fresh) fe_take_light(*p, *l);
      } else {
        fe_take_records(*p, l->records);
      }
      if (seen.size() < l->parts) return;
      l->records.clear();
    }
    g->digests[from] = digest;
    // The digest alone, from before its records were asked for: they
    // are still awaited.
    if (!digest_only && g->full_from.count(from) && !with_records) return;
    g->awaiting.erase(from);
    g->answered.insert(from);
    if (!digest_only && with_records) {
      g->with_records.insert(from);
      if (l->light) fe_take_light(*p, *l);
      else fe_take_records(*p, l->records);
    }
    if (g->awaiting.empty() && !fe_list_more(l->req, *p)) fe_finish_list(l->req);
  }
}

void Node::fe_take_records(Pending& p, std::vector<MessageRecord>& records) {
  // In MsgId order from a node of this version: each goes at the end. Its
  // user and folder are the request's (serve_list leaves them out).
  Gather& g = *gathering(p);
  for (auto& rec : records) {
    if (rec.user.empty()) rec.user = p.user;
    if (rec.folder.empty()) rec.folder = g.folder;
    if (g.gathered.empty() || g.gathered.rbegin()->first < rec.id) {
      g.gathered.emplace_hint(g.gathered.end(), rec.id, std::move(rec));
      continue;
    }
    auto [it, fresh] = g.gathered.try_emplace(rec.id, std::move(rec));
    if (!fresh) merge_record(it->second, rec, wall());
  }
}

void Node::fe_take_light(Pending& p, ListReply& l) {
  if (l.records.empty()) return;  // an empty folder, or a reply in parts whose parts were taken
  ListOp& lo = std::get<ListOp>(p.op);
  for (auto& rec : l.records) {
    if (rec.user.empty()) rec.user = p.user;
    if (rec.folder.empty()) rec.folder = lo.g.folder;
  }
  const std::size_t part = l.parts > 1 ? l.part : 0;
  if (lo.light_parts.size() <= part) lo.light_parts.resize(std::max<std::size_t>(part + 1, l.parts));
  lo.light_parts[part] = std::move(l.records);
  l.records.clear();
}

void Node::fe_store(std::uint64_t id, const AllocReply& a) {
  Pending& p = pending_.at(id);
  DeliverOp& d = std::get<DeliverOp>(p.op);
  Update u;
  u.id = next_version();
  u.kind = Update::Kind::Store;
  u.replicas = a.nodes;
  if (a.msg != MsgId{}) {
    u.record.id = a.msg;  // a keyed delivery's message (an earlier try's, on a retry)
    // Its list wins over an earlier try's, which may have landed somewhere.
    if (a.msg != d.msg) u.record.replicas_version = u.id;
  } else if (d.msg != MsgId{}) {
    u.record.id = d.msg;
  } else {
    u.record.id = MsgId{cfg_.self, next_seq_++};
    persist_counters();
  }
  u.record.delivery_key = d.opts.key;
  u.record.user = p.user;
  u.record.folder = d.folder;
  u.record.size = d.body.size();
  u.record.vsize = d.opts.vsize;
  u.record.hdr_size = d.opts.hdr_size;
  u.record.meta = d.opts.meta;
  u.record.body = std::move(d.body);
  u.record.internal_date = d.opts.internal_date != 0 ? d.opts.internal_date : wall();
  u.record.flags = d.opts.flags;
  u.record.keywords = d.opts.keywords;
  u.record.uidvalidity = a.uidvalidity;
  u.record.uid = a.uid;
  u.record.uid_gen = a.gen;
  u.record.uid_seen = a.seen;
  StoreOp& s = p.op.emplace<StoreOp>(StoreOp{std::move(u), a.nodes.front()});  // in the delivery's place
  const Time transfer = store_crossing(cfg_, s.update.record.body.size());
  p.deadline += transfer;
  p.retry_at = now_ + cfg_.push_retry + transfer;
  send(s.peer, StoreRequest{id, s.update});
}

void Node::user_usage(Time now, std::uint64_t req, const std::string& user) {
  Entry entry(*this, now);
  std::uint64_t id = fe_start(now, UsageOp{}, req, user);
  fe_usage_gather(now, id);
}

Node::UsageCount* Node::usage_count(Pending& p) {
  if (auto* u = std::get_if<UsageOp>(&p.op)) return &u->count;
  if (auto* d = std::get_if<DeliverOp>(&p.op); d && d->quota) return &d->quota->usage;
  return nullptr;
}

void Node::fe_usage_gather(Time now, std::uint64_t id) {
  Pending& p = pending_.at(id);
  UsageCount& c = *usage_count(p);
  c.awaiting.clear();
  c.used_bytes = 0;
  for (const auto& m : membership_.members())
    if (live(m.id)) c.awaiting.insert(m.id);
  if (c.awaiting.empty()) {
    fe_fail(id, Status::TryAgain, "not in a group yet");
    return;
  }
  p.retry_at = now + cfg_.push_retry;
  for (NodeId n : c.awaiting) send(n, UsageRequest{id, p.user});
}

void Node::fe_usage_reply(NodeId from, const UsageReply& u) {
  auto it = pending_.find(u.req);
  if (it == pending_.end()) return;
  Pending& p = it->second;
  UsageCount* c = usage_count(p);
  if (!c || !c->awaiting.erase(from)) return;
  c->used_bytes += u.bytes;
  if (!c->awaiting.empty()) return;
  if (auto* d = std::get_if<DeliverOp>(&p.op)) {
    const QuotaCheck& q = *d->quota;
    if (c->used_bytes + d->body.size() > q.alloc.quota_bytes)
      return fe_fail(u.req, Status::OverQuota,
                     "mailbox over quota (" + std::to_string(c->used_bytes) + " of " +
                         std::to_string(q.alloc.quota_bytes) + " bytes used)");
    AllocReply a = q.alloc;
    return fe_store(u.req, a);
  }
  ClientReply r;
  r.req = p.client_req;
  r.used_bytes = c->used_bytes;
  pending_.erase(it);
  reply(std::move(r));
}

void Node::serve_usage(NodeId from, const UsageRequest& r) {
  UsageReply rep{r.req, 0};
  for (const MsgId& id : repl_.user_records(r.user)) {
    const MessageRecord& m = repl_.records().at(id);
    if (!m.has_body || m.expunged) continue;
    auto first = std::find_if(m.replicas.begin(), m.replicas.end(), [this](NodeId n) { return live(n); });
    if (first != m.replicas.end() && *first == cfg_.self) rep.bytes += m.size;
  }
  send(from, rep);
}

void Node::serve_list(NodeId from, const ListRequest& l) {
  ListReply head;
  head.req = l.req;
  head.has_digest = true;
  head.digest = repl_.folder_digest(l.user, l.folder);
  if (l.digest_only) {
    send(from, std::move(head));
    return;
  }
  head.full = true;
  head.light = l.light;
  // The user's records in MsgId order, found in the node's (also in MsgId
  // order) by stepping to the next where that is the one: one hop for a
  // user whose mail is most of the node's, a lookup otherwise.
  const auto& all = repl_.records();
  const auto& ids = repl_.user_records(l.user);
  std::vector<const MessageRecord*> listed;
  listed.reserve(ids.size());
  auto at = all.end();
  for (const MsgId& id : ids) {
    if (at != all.end()) ++at;
    if (at == all.end() || at->first != id) at = all.find(id);
    if (at != all.end() && at->second.folder == l.folder) listed.push_back(&at->second);
  }
  // Cut into parts when asked so (each sent as it is cut: the asker merges
  // one while the next is encoded). No body (has_body says it is here), no
  // user or folder when the asker puts them back (an asker of an earlier
  // version does not), the meta only where the reader asked for it, the
  // versions only when not asked light.
  const std::size_t n = listed.size();
  const std::size_t part = l.in_parts ? std::max<std::size_t>(cfg_.list_part, 1) : std::max<std::size_t>(n, 1);
  const auto parts = static_cast<std::uint32_t>(std::max<std::size_t>((n + part - 1) / part, 1));
  for (std::uint32_t i = 0; i < parts; ++i) {
    ListReply one = head;
    if (parts > 1) {
      one.part = i;
      one.parts = parts;
    }
    const std::size_t from_i = i * part, to_i = std::min(n, from_i + part);
    one.records.reserve(to_i - from_i);
    for (std::size_t k = from_i; k < to_i; ++k) {
      const MessageRecord& r = *listed[k];
      one.records.push_back(
          listing_copy(r, !l.without_names, l.meta_from_uid != 0 && r.uid >= l.meta_from_uid, !l.light));
    }
    send(from, std::move(one));
  }
}

void Node::serve_store(Time now, NodeId from, const StoreRequest& s) {
  const Version id = s.update.id;
  auto rec = repl_.records().find(s.update.record.id);
  bool held = rec != repl_.records().end() && (rec->second.has_body || rec->second.expunged);
  if (held && !repl_.log().count(id)) {
    // A resend of a store already complete (or a keyed retry of one held
    // here): under the list the record has now.
    OpReply r{s.req, Status::Ok, {}};
    if (!rec->second.replicas_version.is_null()) r.replicas = rec->second.replicas;
    send(from, std::move(r));
    return;
  }
  auto [w, fresh] =
      stores_.try_emplace(id, StoreWaiter{from, s.req, now, s.update.record.body.size(), s.update.record.id, {}, {}, {}, false});
  if (!fresh) {
    w->second.peer = from;  // the front end asked again (through this node)
    w->second.req = s.req;
  }
  // Coordinated here unless an entry for it is here already (a push, or
  // an earlier ask): its coordinator finishes it.
  if (!held && !repl_.log().count(id)) repl_.coordinate(now, s.update);
}

Time Node::store_patience(std::uint64_t size) const {
  // As TCP's retransmission timeout: the smoothed time plus four mean
  // deviations, at least 300 ms and at most half a client's deadline, and
  // longer by the body's crossing.
  const double t = store_srtt_ + 4 * store_rttvar_;
  const Time patience = std::clamp<Time>(static_cast<Time>(t), 300, std::max<Time>(cfg_.request_timeout / 2, 300));
  return patience + transfer_time(cfg_, size);
}

void Node::store_failover(Time now) {
  for (auto& [id, w] : stores_) {
    auto e = repl_.log().find(id);
    if (e == repl_.log().end() || e->second.update.kind != Update::Kind::Store ||
        e->second.update.coordinator != cfg_.self)
      continue;
    const Update& u = e->second.update;
    // Replicas that have not acknowledged it and have said nothing at all
    // for as long (one that talks is slow, not gone: it is waited for),
    // or that refuse connections (down: not waited for at all), or whose
    // spool is full (they refuse the copy: not waited for either).
    const Time patience = store_patience(w.size);
    const Time waited = now - w.since;
    std::vector<NodeId> silent;
    for (NodeId r : u.replicas)
      if (r != cfg_.self && !e->second.have.count(r) &&
          (((membership_.refuses(r) || takes_no_copies(r)) && !w.nowhere) ||
           (waited >= patience && silent_for(r, patience))))
        silent.push_back(r);
    if (silent.empty()) continue;
    // Not this node when it is not a replica (a coordinator whose copy a
    // newer list dropped): the replacement must be pushed to.
    std::vector<NodeId> exclude = u.replicas;
    exclude.insert(exclude.end(), w.replaced.begin(), w.replaced.end());
    exclude.push_back(cfg_.self);
    std::vector<NodeId> to = repair_targets(u.record.user, exclude, silent.size(), false);
    w.since = now;  // the next look after another patience
    w.nowhere = to.empty();
    if (to.empty()) continue;  // nowhere else: wait for the silent ones, until the deadline
    std::vector<NodeId> list = u.replicas;
    std::string told;
    for (std::size_t k = 0; k < to.size(); ++k) {
      std::replace(list.begin(), list.end(), silent[k], to[k]);
      w.replaced.push_back(silent[k]);
      told += (told.empty() ? "" : ", ") + std::string("n") + std::to_string(silent[k]) + " by n" + std::to_string(to[k]);
    }
    const MsgId msg = u.record.id;
    const std::string user = u.record.user;
    const Version relisted = next_version();
    if (!repl_.retarget(now, id, list, relisted)) continue;
    w.replicas = list;
    w.relisted = relisted;
    ++store_failovers_;
    env_.log("store of " + msg.str() + " (" + user + "): replaced silent or down " + told + " after " +
             std::to_string(waited) + " ms");
  }
}

void Node::store_done(const Version& id) {
  auto it = stores_.find(id);
  if (it == stores_.end()) return;
  StoreWaiter w = std::move(it->second);
  stores_.erase(it);
  if (w.replaced.empty()) {
    // How long a whole store takes here, for store_patience.
    const double sample = static_cast<double>(std::max<Time>(now_ - w.since - transfer_time(cfg_, w.size), 0));
    store_rttvar_ = 0.75 * store_rttvar_ + 0.25 * std::abs(sample - store_srtt_);
    store_srtt_ = 0.875 * store_srtt_ + 0.125 * sample;
  } else if (auto cur = repl_.records().find(w.msg); cur != repl_.records().end()) {
    // Retargeted: the new list goes to every replica, the replaced ones
    // too (waited for until they are back or gone), so a copy a silent
    // one may hold is dropped and no replica keeps the old list.
    Update u;
    u.id = next_version();
    u.kind = Update::Kind::Replicas;
    u.replicas = w.replicas;
    for (NodeId x : w.replaced)
      if (std::find(u.replicas.begin(), u.replicas.end(), x) == u.replicas.end() &&
          membership_.admin_state(x) != AdminState::Gone)
        u.replicas.push_back(x);
    u.record = cur->second;
    u.record.body.clear();
    u.record.has_body = false;
    if (newer(w.relisted, u.record.replicas_version)) {  // this node's record: still the list it had
      u.record.replicas = w.replicas;
      u.record.replicas_version = w.relisted;
    }
    repl_.coordinate(now_, std::move(u));
  }
  send(w.peer, OpReply{w.req, Status::Ok, w.replicas});
}

void Node::serve_mutate(Time now, NodeId from, const MutateRequest& m) {
  // Not a holder (any more: a drain or repair moved the copy away): another
  // live replica the sender names is asked instead, which knows the list.
  if (!repl_.records().count(m.update.record.id))
    for (NodeId r : m.update.replicas)
      if (r != cfg_.self && live(r)) {
        send(from, OpReply{m.req, Status::TryAgain, {}});
        return;
      }
  repl_.coordinate(now, m.update);
  send(from, OpReply{m.req, Status::Ok, {}});
}

}  // namespace porcupine
