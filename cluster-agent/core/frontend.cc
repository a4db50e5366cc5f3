// SPDX-License-Identifier: MIT
// frontend.cc - the front-end role: local client operations (what the
// milter and the Dovecot plugin ask through the agent) turned into calls
// to the user's manager and to the nodes that store the fragments.
//
// Every operation has a deadline (request_timeout) and ends in exactly one
// reply (Hooks::reply). Requests to peers are resent until answered or
// until the deadline: each is idempotent (same update id, or a fresh
// harmless UID).
#include "frontend.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <type_traits>
#include <utility>

#include <xxhash.h>

#include "hash.h"
#include "records.h"

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

FrontEnd::FrontEnd(const CoreConfig& cfg, const Membership& membership, Hooks hooks)
    : cfg_(cfg), membership_(membership), hooks_(std::move(hooks)) {}

bool FrontEnd::live(NodeId n) const { return n == cfg_.self || membership_.is_member(n); }

Bucket FrontEnd::bucket(const std::string& user) const { return bucket_of(user, cfg_.buckets); }

void FrontEnd::peer_unreachable(NodeId n) {
  for (auto& [id, p] : pending_)
    if (p.retry_at != 0 && waits_on(p, n)) p.retry_at = hooks_.now();
}

void FrontEnd::fail(std::uint64_t id, Status s, const std::string& why) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  if (it->second.client_req != 0 || !std::holds_alternative<RenumberOp>(it->second.op)) {
    ClientReply r;
    r.req = it->second.client_req;
    r.status = s;
    r.detail = why;
    hooks_.reply(std::move(r));
  }
  pending_.erase(it);
}

void FrontEnd::create_user(Time now, std::uint64_t req, const std::string& user,
                           const std::string& password_hash) {
  std::uint64_t id = hooks_.new_req();
  Pending& p = pending_[id];
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  p.op = CreateUserOp{password_hash};
  p.retry_at = now;  // sent by tick, which also resends
  tick(now);
}

void FrontEnd::deliver(Time now, std::uint64_t req, const std::string& user, const std::string& folder,
                       Body body, DeliverOptions opts) {
  std::uint64_t id = hooks_.new_req();
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
    d.msg = hooks_.new_msg();
  }
  p.retry_at = now;
  tick(now);
}

void FrontEnd::list(Time now, std::uint64_t req, const std::string& user, const std::string& folder,
                    bool digest_only, std::uint32_t meta_from_uid) {
  std::uint64_t id = hooks_.new_req();
  Pending& p = pending_[id];
  ListOp& l = p.op.emplace<ListOp>();
  l.digest_only = digest_only;
  l.meta_from_uid = meta_from_uid;
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  l.g.folder = folder;
  p.retry_at = now;
  tick(now);
}

void FrontEnd::mutate(Time now, std::uint64_t req, Update::Kind kind, const MessageRecord& target,
                      const std::function<void(MessageRecord&)>& fill) {
  std::uint64_t id = hooks_.new_req();
  Pending& p = pending_[id];
  Update& u = p.op.emplace<MutateOp>().update;
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  u.kind = kind;
  u.replicas = target.replicas;
  u.record.id = target.id;
  u.record.user = target.user;
  u.record.folder = target.folder;
  u.id = hooks_.next_version();
  if (fill) fill(u.record);
  p.retry_at = now;
  tick(now);
}

void FrontEnd::set_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t flags,
                         std::vector<std::string> keywords) {
  keywords = normal_keywords(std::move(keywords));
  mutate(now, req, Update::Kind::Flags, target, [flags, &keywords](MessageRecord& r) {
    r.flags = flags;
    r.keywords = keywords;
  });
}

void FrontEnd::change_flags(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t add_flags,
                            std::uint32_t remove_flags, const std::vector<std::string>& add_keywords,
                            const std::vector<std::string>& remove_keywords) {
  mutate(now, req, Update::Kind::Flags, target, [&](MessageRecord& r) {
    // The versions are the update's own, set where it is applied.
    r.flag_marks = flag_marks(Version{}, add_flags, remove_flags, add_keywords, remove_keywords);
  });
}

void FrontEnd::move(Time now, std::uint64_t req, const MessageRecord& target, const std::string& to_folder) {
  // First a UID in the destination, then the Move that carries it.
  MoveOp m;
  m.update.kind = Update::Kind::Move;
  m.update.replicas = target.replicas;
  m.update.record.id = target.id;
  m.update.record.user = target.user;
  m.update.record.folder = to_folder;
  start(now, std::move(m), req, target.user);
  tick(now);
}

void FrontEnd::renumber(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t above) {
  RenumOp r;
  r.target = target;
  r.target.body.clear();
  r.above = above;
  start(now, std::move(r), req, target.user);
  tick(now);
}

void FrontEnd::expunge(Time now, std::uint64_t req, const MessageRecord& target) {
  mutate(now, req, Update::Kind::Expunge, target, nullptr);
}

void FrontEnd::tick(Time now) {
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
            if ((op.peer != cfg_.self && hooks_.silent_for(op.peer, cfg_.push_retry)) ||
                hooks_.takes_no_copies(op.peer)) {
              auto at = std::find(list.begin(), list.end(), op.peer);
              for (std::size_t k = 1; k < list.size(); ++k) {
                NodeId next = list[(static_cast<std::size_t>(at - list.begin()) + k) % list.size()];
                if (live(next) && !hooks_.takes_no_copies(next) &&
                    (next == cfg_.self || !hooks_.silent_for(next, cfg_.push_retry))) {
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
            list_retry(id, p);
          } else if constexpr (std::is_same_v<T, FetchOp>) {
            // The holders asked have not answered yet: ask the next one too.
            // A large body may still be on its way from them, and their answer
            // is still taken; none is asked twice (each ask sends the whole
            // body again). With none left to ask, wait for the deadline,
            // unless every holder asked has left the group.
            for (auto a = op.awaiting.begin(); a != op.awaiting.end();)
              a = live(*a) ? std::next(a) : op.awaiting.erase(a);
            if (!fetch_next(p, id)) {
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
      finish_list(id);  // answer with what the reachable nodes gave
    } else {
      fail(id, Status::TryAgain, "cluster did not answer in time");
    }
  }
}

// A listing's or a renumbering's retry: the nodes still to answer asked again.
void FrontEnd::list_retry(std::uint64_t id, Pending& p) {
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
      list_unlight(id, p);
      for (const auto& [n, d] : g.digests)
        if (!g.with_records.count(n) && g.full_from.insert(n).second) g.awaiting.insert(n);
    }
  }
  for (NodeId n : g.awaiting) {
    if (!digest_only) g.full_from.insert(n);
    send(n, list_request(p, id, n));
  }
}

const FrontEnd::Gather* FrontEnd::gathering(const Pending& p) {
  if (const auto* l = std::get_if<ListOp>(&p.op)) return l->phase == ListOp::Phase::List ? &l->g : nullptr;
  if (const auto* r = std::get_if<RenumberOp>(&p.op)) return &r->g;
  return nullptr;
}

FrontEnd::Gather* FrontEnd::gathering(Pending& p) { return const_cast<Gather*>(gathering(std::as_const(p))); }

bool FrontEnd::waits_on(const Pending& p, NodeId n) {
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

ListRequest FrontEnd::list_request(const Pending& p, std::uint64_t id, NodeId n) const {
  const Gather& g = *gathering(p);
  const ListOp* l = std::get_if<ListOp>(&p.op);  // null: a renumbering, which asks for every record whole
  const bool records = !(l && l->digest_only) && g.full_from.count(n);
  // In parts from another node (this node's own come with no encoding);
  // without names, which take_records puts back; light from the one node
  // asked so.
  const std::uint32_t meta_from_uid = records && l ? l->meta_from_uid : 0;
  const bool light = records && l && n == l->light_from;
  return ListRequest{id, p.user, g.folder, !records, meta_from_uid, records && n != cfg_.self, records, light};
}

void FrontEnd::gather(Time now, std::uint64_t id, const std::vector<NodeId>& nodes) {
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
    finish_list(id);
    return;
  }
  if (l) {
    // One node's records (this node's if it holds some: no network), the
    // others' digests: a node whose digest is that node's holds the same
    // records. Those that differ are asked for theirs next (list_more).
    // They come light: shown as they are unless another's differ
    // (list_unlight asks for them whole then).
    const NodeId first = g.awaiting.count(cfg_.self) ? cfg_.self : *g.awaiting.begin();
    g.full_from.insert(first);
    if (!l->digest_only) l->light_from = first;
  } else {
    g.full_from = g.awaiting;  // a renumbering reads every copy
  }
  p.retry_at = now + cfg_.push_retry;
  for (NodeId n : g.awaiting) send(n, list_request(p, id, n));
}

void FrontEnd::gather_for(Time now, const std::string& user, const std::string& folder, const std::string& rename_to,
                          const std::vector<NodeId>& nodes) {
  std::uint64_t id = hooks_.new_req();
  Pending& p = pending_[id];
  RenumberOp& r = p.op.emplace<RenumberOp>();
  p.user = user;
  r.g.folder = folder;
  r.rename_to = rename_to;
  p.deadline = now + cfg_.request_timeout;
  gather(now, id, nodes);
}

std::set<NodeId> FrontEnd::list_uncovered(const Pending& p) const {
  std::set<NodeId> out;
  const Gather& g = *gathering(p);
  if (const ListOp* l = std::get_if<ListOp>(&p.op); l && l->digest_only) return out;
  std::set<std::uint64_t> have;
  for (NodeId n : g.with_records) have.insert(g.digests.at(n));
  for (const auto& [n, d] : g.digests)
    if (!g.with_records.count(n) && !g.awaiting.count(n) && !have.count(d)) out.insert(n);
  return out;
}

bool FrontEnd::list_more(std::uint64_t id, Pending& p) {
  std::set<NodeId> more = list_uncovered(p);
  if (more.empty()) return false;
  list_unlight(id, p);
  p.retry_at = hooks_.now() + cfg_.push_retry;
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
void FrontEnd::list_unlight(std::uint64_t id, Pending& p) {
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

void FrontEnd::finish_list(std::uint64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  if (auto* renumber = std::get_if<RenumberOp>(&p.op)) {
    hooks_.gathered(hooks_.now(), p.user, renumber->g.folder, renumber->rename_to, renumber->g.gathered,
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
    for (auto& part : l.light_parts) take_records(p, part);  // not expected: merged rather than shown twice
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
  for (NodeId n : list_uncovered(p)) {
    reachable.erase(n);
    r.detail = "some fragments unreachable";
  }
  r.reachable.assign(reachable.begin(), reachable.end());
  hooks_.reply(std::move(r));
}

void FrontEnd::fetch(Time now, std::uint64_t req, const MessageRecord& target, FetchPart part) {
  std::uint64_t id = hooks_.new_req();
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
  if (!fetch_next(p, id)) fail(id, Status::TryAgain, "no live replica holds the message");
}

bool FrontEnd::fetch_next(Pending& p, std::uint64_t id) {
  FetchOp& f = std::get<FetchOp>(p.op);
  while (!f.candidates.empty() && !live(f.candidates.front())) f.candidates.erase(f.candidates.begin());
  if (f.candidates.empty()) return false;
  f.peer = f.candidates.front();
  f.candidates.erase(f.candidates.begin());
  f.awaiting.insert(f.peer);
  p.retry_at = hooks_.now() + cfg_.push_retry + transfer_time(cfg_, f.size);
  send(f.peer, FetchRequest{id, f.msg, p.user, f.part});
  return true;
}

void FrontEnd::on_reply(NodeId from, Message& m) {
  if (user_reply(from, m)) return;
  if (const auto* u = std::get_if<UsageReply>(&m)) return usage_reply(from, *u);
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
      hooks_.reply(std::move(r));
    } else if (f->status == Status::NoSuchUser) {
      fail(f->req, Status::NoSuchUser, "message expunged");
    } else if (f->status == Status::NotFound) {
      fail(f->req, Status::NotFound, "no such message of that user");
    } else {
      // This holder cannot give it: the next one, or wait for those asked.
      fetch->awaiting.erase(from);
      if (!fetch_next(*p, f->req) && fetch->awaiting.empty())
        fail(f->req, Status::TryAgain, "no live replica holds the message");
    }
    return;
  }
  if (const auto* a = std::get_if<AllocReply>(&m)) {
    if (auto [p, renum] = pending_as<RenumOp>(a->req); renum) {
      if (a->status == Status::NotFound || a->status == Status::NoSuchUser)
        return fail(a->req, a->status, "not in that folder's lineage");
      if (a->status != Status::Ok) {
        p->retry_at = hooks_.now() + kRetry;
        return;
      }
      ClientReply r;
      r.req = p->client_req;
      r.msg = renum->target.id;
      r.uidvalidity = a->uidvalidity;
      r.uid = a->uid;
      r.replicas = renum->target.replicas;
      pending_.erase(a->req);
      hooks_.reply(std::move(r));
      return;
    }
    if (auto [p, mv] = pending_as<MoveOp>(a->req); mv) {
      if (a->status == Status::NoSuchUser) return fail(a->req, Status::NoSuchUser, "no such user");
      if (a->status != Status::Ok) {
        p->retry_at = hooks_.now() + kRetry;
        return;
      }
      // The Move, with its UID, to a live replica (like any mutation).
      MutateOp mut{std::move(mv->update)};
      mut.update.id = hooks_.next_version();
      mut.update.record.uidvalidity = a->uidvalidity;
      mut.update.record.uid = a->uid;
      mut.update.record.uid_gen = a->gen;
      mut.update.record.uid_seen = a->seen;
      p->op = std::move(mut);
      p->retry_at = hooks_.now();
      tick(hooks_.now());
      return;
    }
    auto [p, d] = pending_as<DeliverOp>(a->req);
    if (!d || d->quota) return;
    if (a->status == Status::NoSuchUser) return fail(a->req, Status::NoSuchUser, "no such user");
    if (a->status == Status::OverQuota)
      return fail(a->req, Status::OverQuota,
                  "mailbox over quota (" + std::to_string(a->quota_bytes) + " bytes)");
    if (a->status != Status::Ok) {
      p->retry_at = hooks_.now() + kRetry;
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
      hooks_.log("delivery to " + p->user + "/" + d->folder + " is a retry of message " + a->msg.str() +
                 " (UID " + std::to_string(a->uid) + "): not stored again");
      pending_.erase(a->req);
      hooks_.reply(std::move(r));
      return;
    }
    // The manager checks the quota as it hands out the UID. One that did
    // not (an older one, or one that an older member's reports leave
    // without a count) leaves it to this node, which counts first.
    if (a->quota_bytes > 0 && !a->quota_checked) {
      d->quota = QuotaCheck{*a, {}};
      usage_gather(hooks_.now(), a->req);
      return;
    }
    store(a->req, *a);
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
      hooks_.reply(std::move(r));
    } else if (o->status == Status::Exists || o->status == Status::NoSuchUser) {
      fail(o->req, o->status, status_name(o->status));
    } else {
      p->retry_at = hooks_.now() + kRetry;
    }
  } else if (const auto* mr = std::get_if<MapReply>(&m)) {
    auto [p, l] = pending_as<ListOp>(mr->req);
    if (!l || l->phase != ListOp::Phase::Map) return;
    if (mr->status == Status::NoSuchUser) return fail(mr->req, Status::NoSuchUser, "no such user");
    if (mr->status != Status::Ok) {
      p->retry_at = hooks_.now() + kRetry;
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
    gather(hooks_.now(), mr->req, mr->nodes);
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
        if (fresh) take_light(*p, *l);
      } else {
        take_records(*p, l->records);
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
      if (l->light) take_light(*p, *l);
      else take_records(*p, l->records);
    }
    if (g->awaiting.empty() && !list_more(l->req, *p)) finish_list(l->req);
  }
}

void FrontEnd::take_records(Pending& p, std::vector<MessageRecord>& records) {
  // In MsgId order from a node of this version: each goes at the end. Its
  // user and folder are the request's (Node::serve_list leaves them out).
  Gather& g = *gathering(p);
  for (auto& rec : records) {
    if (rec.user.empty()) rec.user = p.user;
    if (rec.folder.empty()) rec.folder = g.folder;
    if (g.gathered.empty() || g.gathered.rbegin()->first < rec.id) {
      g.gathered.emplace_hint(g.gathered.end(), rec.id, std::move(rec));
      continue;
    }
    auto [it, fresh] = g.gathered.try_emplace(rec.id, std::move(rec));
    if (!fresh) merge_record(it->second, rec, hooks_.wall());
  }
}

void FrontEnd::take_light(Pending& p, ListReply& l) {
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

void FrontEnd::store(std::uint64_t id, const AllocReply& a) {
  Pending& p = pending_.at(id);
  DeliverOp& d = std::get<DeliverOp>(p.op);
  Update u;
  u.id = hooks_.next_version();
  u.kind = Update::Kind::Store;
  u.replicas = a.nodes;
  if (a.msg != MsgId{}) {
    u.record.id = a.msg;  // a keyed delivery's message (an earlier try's, on a retry)
    // Its list wins over an earlier try's, which may have landed somewhere.
    if (a.msg != d.msg) u.record.replicas_version = u.id;
  } else if (d.msg != MsgId{}) {
    u.record.id = d.msg;
  } else {
    u.record.id = hooks_.new_msg();
  }
  u.record.delivery_key = d.opts.key;
  u.record.user = p.user;
  u.record.folder = d.folder;
  u.record.size = d.body.size();
  u.record.vsize = d.opts.vsize;
  u.record.hdr_size = d.opts.hdr_size;
  u.record.meta = d.opts.meta;
  u.record.body = std::move(d.body);
  u.record.internal_date = d.opts.internal_date != 0 ? d.opts.internal_date : hooks_.wall();
  u.record.flags = d.opts.flags;
  u.record.keywords = d.opts.keywords;
  u.record.uidvalidity = a.uidvalidity;
  u.record.uid = a.uid;
  u.record.uid_gen = a.gen;
  u.record.uid_seen = a.seen;
  StoreOp& s = p.op.emplace<StoreOp>(StoreOp{std::move(u), a.nodes.front()});  // in the delivery's place
  const Time transfer = store_crossing(cfg_, s.update.record.body.size());
  p.deadline += transfer;
  p.retry_at = hooks_.now() + cfg_.push_retry + transfer;
  send(s.peer, StoreRequest{id, s.update});
}

void FrontEnd::user_usage(Time now, std::uint64_t req, const std::string& user) {
  std::uint64_t id = start(now, UsageOp{}, req, user);
  usage_gather(now, id);
}

FrontEnd::UsageCount* FrontEnd::usage_count(Pending& p) {
  if (auto* u = std::get_if<UsageOp>(&p.op)) return &u->count;
  if (auto* d = std::get_if<DeliverOp>(&p.op); d && d->quota) return &d->quota->usage;
  return nullptr;
}

void FrontEnd::usage_gather(Time now, std::uint64_t id) {
  Pending& p = pending_.at(id);
  UsageCount& c = *usage_count(p);
  c.awaiting.clear();
  c.used_bytes = 0;
  for (const auto& m : membership_.members())
    if (live(m.id)) c.awaiting.insert(m.id);
  if (c.awaiting.empty()) {
    fail(id, Status::TryAgain, "not in a group yet");
    return;
  }
  p.retry_at = now + cfg_.push_retry;
  for (NodeId n : c.awaiting) send(n, UsageRequest{id, p.user});
}

void FrontEnd::usage_reply(NodeId from, const UsageReply& u) {
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
      return fail(u.req, Status::OverQuota,
                  "mailbox over quota (" + std::to_string(c->used_bytes) + " of " +
                      std::to_string(q.alloc.quota_bytes) + " bytes used)");
    AllocReply a = q.alloc;
    return store(u.req, a);
  }
  ClientReply r;
  r.req = p.client_req;
  r.used_bytes = c->used_bytes;
  pending_.erase(it);
  hooks_.reply(std::move(r));
}


}  // namespace porcupine
