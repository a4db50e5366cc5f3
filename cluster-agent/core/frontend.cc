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
  if (it->second.client_req != 0 || it->second.kind != Pending::Kind::Renumber) {
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
  p.kind = Pending::Kind::CreateUser;
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  p.body = password_hash;
  p.retry_at = now;  // sent by fe_tick, which also resends
  fe_tick(now);
}

void Node::deliver(Time now, std::uint64_t req, const std::string& user, const std::string& folder,
                   Body body, DeliverOptions opts) {
  Entry entry(*this, now);
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  p.kind = Pending::Kind::Alloc;
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  p.folder = folder;
  p.body = std::move(body);
  p.deliver = std::move(opts);
  p.deliver.keywords = normal_keywords(std::move(p.deliver.keywords));
  if (!p.deliver.key.empty()) {
    // Named before the manager is asked: a retry is answered with it.
    p.msg = MsgId{cfg_.self, next_seq_++};
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
  p.kind = Pending::Kind::Map;
  p.digest_only = digest_only;
  p.meta_from_uid = meta_from_uid;
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  p.folder = folder;
  p.retry_at = now;
  fe_tick(now);
}

void Node::mutate(Time now, std::uint64_t req, Update::Kind kind, const MessageRecord& target,
                  const std::function<void(MessageRecord&)>& fill) {
  std::uint64_t id = new_req();
  Pending& p = pending_[id];
  p.kind = Pending::Kind::Mutate;
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.update.kind = kind;
  p.update.replicas = target.replicas;
  p.update.record.id = target.id;
  p.update.record.user = target.user;
  p.update.record.folder = target.folder;
  p.update.id = next_version();
  if (fill) fill(p.update.record);
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
  Pending& p = pending_[fe_start(now, Pending::Kind::MoveAlloc, req, target.user)];
  p.folder = to_folder;
  p.update.kind = Update::Kind::Move;
  p.update.replicas = target.replicas;
  p.update.record.id = target.id;
  p.update.record.user = target.user;
  p.update.record.folder = to_folder;
  fe_tick(now);
}

void Node::renumber(Time now, std::uint64_t req, const MessageRecord& target, std::uint32_t above) {
  Entry entry(*this, now);
  Pending& p = pending_[fe_start(now, Pending::Kind::Renum, req, target.user)];
  p.folder = target.folder;
  p.update.record = target;
  p.update.record.body.clear();
  p.above = above;
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
    if ((p.kind == Pending::Kind::List || p.kind == Pending::Kind::Renumber) && p.retry_at != 0 &&
        !p.awaiting.empty() && std::all_of(p.awaiting.begin(), p.awaiting.end(), [this](NodeId n) {
          return n != cfg_.self && membership_.refuses(n);
        })) {
      expired.push_back(id);
      continue;
    }
    if (p.retry_at == 0 || now < p.retry_at) continue;
    p.retry_at = now + kRetry;
    NodeId mgr = membership_.in_group() ? membership_.manager_of(bucket(p.user)) : kNoNode;
    switch (p.kind) {
      case Pending::Kind::CreateUser:
        send(mgr, CreateUserRequest{id, p.user, p.body.bytes()});
        break;
      case Pending::Kind::Alloc:
        send(mgr, AllocRequest{id, p.user, p.folder, p.body.size(), {}, p.deliver.key, p.msg});
        break;
      case Pending::Kind::MoveAlloc:
        send(mgr, AllocRequest{id, p.user, p.folder, 0, p.update.replicas, {}, {}});
        break;
      case Pending::Kind::Renum: {
        const MessageRecord& t = p.update.record;
        send(mgr, RenumberRequest{id, p.user, p.folder, t.id, t.replicas, t.uidvalidity, t.uid, p.above});
        break;
      }
      case Pending::Kind::Map:
        send(mgr, MapRequest{id, p.user, p.folder});
        break;
      case Pending::Kind::Store: {
        // Not answered, and nothing at all heard from the node asked: the
        // next replica is asked (any can coordinate, and one that is
        // alive replaces a silent one), so a primary that died does not
        // hold the delivery to its deadline. One that talks is waited for,
        // unless its spool is full (it refuses the copy).
        p.retry_at = now + cfg_.push_retry + store_crossing(cfg_, p.update.record.body.size());
        const auto& list = p.update.replicas;
        if ((p.peer != cfg_.self && silent_for(p.peer, cfg_.push_retry)) || takes_no_copies(p.peer)) {
          auto at = std::find(list.begin(), list.end(), p.peer);
          for (std::size_t k = 1; k < list.size(); ++k) {
            NodeId next = list[(static_cast<std::size_t>(at - list.begin()) + k) % list.size()];
            if (live(next) && !takes_no_copies(next) && (next == cfg_.self || !silent_for(next, cfg_.push_retry))) {
              p.peer = next;
              break;
            }
          }
        }
        send(p.peer, StoreRequest{id, p.update});
        break;
      }
      case Pending::Kind::Mutate: {
        // Any live replica can coordinate; rotate through them on retries.
        NodeId to = kNoNode;
        for (NodeId r : p.update.replicas)
          if (live(r) && r != p.peer) { to = r; break; }
        if (to == kNoNode)
          for (NodeId r : p.update.replicas)
            if (live(r)) { to = r; break; }
        p.peer = to;
        send(to, MutateRequest{id, p.update});
        break;
      }
      case Pending::Kind::List:
      case Pending::Kind::Renumber:
        // A node asked for its records that has not answered by now: every
        // node is asked for its records (the listing no longer waits on it
        // for what the others hold).
        if (!p.digest_only) {
          bool records_late = false;
          for (NodeId n : p.awaiting) records_late |= p.full_from.count(n) > 0;
          if (records_late) {
            fe_list_unlight(id, p);
            for (const auto& [n, d] : p.digests)
              if (!p.with_records.count(n) && p.full_from.insert(n).second) p.awaiting.insert(n);
          }
        }
        for (NodeId n : p.awaiting) {
          if (!p.digest_only) p.full_from.insert(n);
          send(n, list_request(p, id, n));
        }
        break;
      case Pending::Kind::Fetch:
        // The holders asked have not answered yet: ask the next one too.
        // A large body may still be on its way from them, and their answer
        // is still taken; none is asked twice (each ask sends the whole
        // body again). With none left to ask, wait for the deadline,
        // unless every holder asked has left the group.
        for (auto a = p.awaiting.begin(); a != p.awaiting.end();)
          a = live(*a) ? std::next(a) : p.awaiting.erase(a);
        if (!fe_fetch_next(p, id)) {
          if (p.awaiting.empty()) p.deadline = now;  // fails on the next tick
          else p.retry_at = p.deadline;
        }
        break;
      case Pending::Kind::Profile:
        send(mgr, ProfileRequest{id, p.user});
        break;
      case Pending::Kind::UserUpdate:
        p.change.req = id;
        send(mgr, p.change);
        break;
      case Pending::Kind::UserList:
        for (NodeId n : p.awaiting) send(n, UserListRequest{id});
        break;
      case Pending::Kind::Usage:
      case Pending::Kind::Quota:
        p.retry_at = now + cfg_.push_retry;
        for (NodeId n : p.awaiting) send(n, UsageRequest{id, p.user});
        break;
    }
  }
  for (std::uint64_t id : expired) {
    Pending& p = pending_[id];
    if (p.kind == Pending::Kind::List || p.kind == Pending::Kind::Renumber) {
      fe_finish_list(id);  // answer with what the reachable nodes gave
    } else {
      fe_fail(id, Status::TryAgain, "cluster did not answer in time");
    }
  }
}

ListRequest Node::list_request(const Pending& p, std::uint64_t id, NodeId n) const {
  const bool records = !p.digest_only && p.full_from.count(n);
  // In parts from another node (this node's own come with no encoding);
  // without names, which fe_take_records puts back; light from the one node
  // asked so.
  return ListRequest{id,      p.user, p.folder, !records, records ? p.meta_from_uid : 0, records && n != cfg_.self,
                     records, records && n == p.light_from};
}

void Node::fe_gather(Time now, std::uint64_t id, const std::vector<NodeId>& nodes) {
  Pending& p = pending_[id];
  p.awaiting.clear();
  p.full_from.clear();
  p.with_records.clear();
  p.parts_seen.clear();
  p.light_from = kNoNode;
  p.light_parts.clear();
  for (NodeId n : nodes)
    if (live(n)) p.awaiting.insert(n);
  if (p.awaiting.empty()) {
    fe_finish_list(id);
    return;
  }
  if (p.kind == Pending::Kind::List) {
    // One node's records (this node's if it holds some: no network), the
    // others' digests: a node whose digest is that node's holds the same
    // records. Those that differ are asked for theirs next (fe_list_more).
    // They come light: shown as they are unless another's differ
    // (fe_list_unlight asks for them whole then).
    const NodeId first = p.awaiting.count(cfg_.self) ? cfg_.self : *p.awaiting.begin();
    p.full_from.insert(first);
    if (!p.digest_only) p.light_from = first;
  } else {
    p.full_from = p.awaiting;  // a renumbering reads every copy
  }
  p.retry_at = now + cfg_.push_retry;
  for (NodeId n : p.awaiting) send(n, list_request(p, id, n));
}

std::set<NodeId> Node::fe_list_uncovered(const Pending& p) const {
  std::set<NodeId> out;
  if (p.digest_only) return out;
  std::set<std::uint64_t> have;
  for (NodeId n : p.with_records) have.insert(p.digests.at(n));
  for (const auto& [n, d] : p.digests)
    if (!p.with_records.count(n) && !p.awaiting.count(n) && !have.count(d)) out.insert(n);
  return out;
}

bool Node::fe_list_more(std::uint64_t id, Pending& p) {
  std::set<NodeId> more = fe_list_uncovered(p);
  if (more.empty()) return false;
  fe_list_unlight(id, p);
  p.retry_at = now_ + cfg_.push_retry;
  for (NodeId n : more) {
    p.full_from.insert(n);
    p.awaiting.insert(n);
    send(n, list_request(p, id, n));
  }
  return true;
}

// Records are merged by their versions: once a second node's are asked
// for, the light node's are dropped and asked for again whole (its light
// parts still on their way are not taken: they say they are light).
void Node::fe_list_unlight(std::uint64_t id, Pending& p) {
  const NodeId n = p.light_from;
  if (n == kNoNode) return;
  p.light_from = kNoNode;
  p.gathered.clear();  // its records, the only ones taken so far
  p.light_parts.clear();
  p.with_records.erase(n);
  p.parts_seen.erase(n);
  p.awaiting.insert(n);
  send(n, list_request(p, id, n));
}

void Node::fe_finish_list(std::uint64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  if (p.kind == Pending::Kind::Renumber) {
    on_renumber_done(now_, p);
    return;
  }
  ClientReply r;
  r.req = p.client_req;
  r.uidvalidity = p.uidvalidity;
  r.uid = p.next_uid;
  // A message still carrying an older lineage's UID is being renumbered:
  // it shows once it has its UID in the current one.
  // One whose UID is at or above the first still in flight waits for it,
  // so UIDs become visible in order; one a takeover made stale (its own
  // copies name the takeovers too) waits for its new UID.
  // An in-flight UID whose message a holder lists is stored (the manager
  // has not heard so yet): the limit moves to the next one none lists.
  // Every record taken: the light node's as they came, or those merged.
  if (!p.gathered.empty())
    for (auto& part : p.light_parts) fe_take_records(p, part);  // not expected: merged rather than shown twice
  std::vector<MessageRecord*> taken;
  if (p.gathered.empty()) {
    std::size_t n = 0;
    for (const auto& part : p.light_parts) n += part.size();
    taken.reserve(n);
    for (auto& part : p.light_parts)
      for (auto& rec : part) taken.push_back(&rec);
  } else {
    taken.reserve(p.gathered.size());
    for (auto& [mid, rec] : p.gathered) taken.push_back(&rec);
  }
  std::uint32_t below = p.visible_below;
  if (below != 0 && !p.inflight.empty()) {
    std::set<std::uint32_t> listed;
    for (const MessageRecord* rec : taken)
      if (rec->has_body && rec->uidvalidity == p.uidvalidity) listed.insert(rec->uid);
    below = p.next_uid;
    for (std::uint32_t uid : p.inflight)
      if (!listed.count(uid)) {
        below = uid;
        break;
      }
  }
  for (const MessageRecord* rec : taken)
    if (rec->uidvalidity == p.uidvalidity) add_takeover(p.takeovers, rec->uid_gen, rec->uid_seen);
  // In UID order (most often already so): the shown records are sorted by
  // reference, then moved once (p is this function's own).
  std::vector<MessageRecord*> shown;
  shown.reserve(taken.size());
  for (MessageRecord* rec : taken)
    if (rec->has_body && !rec->expunged && rec->uidvalidity == p.uidvalidity &&
        (below == 0 || rec->uid < below) && !uid_stale(p.takeovers, rec->uid_gen, rec->uid))
      shown.push_back(rec);
  const auto by_uid = [](const MessageRecord* a, const MessageRecord* b) {
    return std::tie(a->uid, a->id) < std::tie(b->uid, b->id);
  };
  if (!std::is_sorted(shown.begin(), shown.end(), by_uid)) std::sort(shown.begin(), shown.end(), by_uid);
  r.records.reserve(shown.size());
  for (MessageRecord* rec : shown) r.records.push_back(std::move(*rec));
  if (!p.awaiting.empty()) r.detail = "some fragments unreachable";
  std::string d;
  for (const auto& [n, digest] : p.digests) {
    d.append(reinterpret_cast<const char*>(&n), sizeof n);
    d.append(reinterpret_cast<const char*>(&digest), sizeof digest);
  }
  d.append(reinterpret_cast<const char*>(&p.uidvalidity), sizeof p.uidvalidity);
  d.append(reinterpret_cast<const char*>(&p.visible_below), sizeof p.visible_below);
  r.folder_digest = XXH64(d.data(), d.size(), 0);
  if (p.digest_only) r.records.clear();
  std::set<NodeId> reachable{cfg_.self};
  for (const auto& m : membership_.members())
    if (live(m.id) && !membership_.refuses(m.id)) reachable.insert(m.id);
  for (NodeId n : p.awaiting) reachable.erase(n);
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
  p.kind = Pending::Kind::Fetch;
  p.client_req = req;
  p.part = part;
  // A body the reader expects to be large is given the time to cross (a
  // header part: at most kHeaderPartMax; an older holder's whole body
  // then has the time of the retries).
  const std::uint64_t expect = part == FetchPart::Header ? std::min(target.size, kHeaderPartMax) : target.size;
  p.deadline = now + cfg_.request_timeout + transfer_time(cfg_, expect);
  p.update.record.id = target.id;
  p.update.record.user = target.user;
  p.update.record.size = expect;
  // This node first (no network), then the other replicas.
  if (std::find(target.replicas.begin(), target.replicas.end(), cfg_.self) != target.replicas.end())
    p.candidates.push_back(cfg_.self);
  for (NodeId n : target.replicas)
    if (n != cfg_.self) p.candidates.push_back(n);
  if (!fe_fetch_next(p, id)) fe_fail(id, Status::TryAgain, "no live replica holds the message");
}

bool Node::fe_fetch_next(Pending& p, std::uint64_t id) {
  while (!p.candidates.empty() && !live(p.candidates.front())) p.candidates.erase(p.candidates.begin());
  if (p.candidates.empty()) return false;
  p.peer = p.candidates.front();
  p.candidates.erase(p.candidates.begin());
  p.awaiting.insert(p.peer);
  p.retry_at = now_ + cfg_.push_retry + transfer_time(cfg_, p.update.record.size);
  send(p.peer, FetchRequest{id, p.update.record.id, p.update.record.user, p.part});
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
    auto it = pending_.find(f->req);
    Pending* p = it == pending_.end() ? nullptr : &it->second;
    if (!p || p->kind != Pending::Kind::Fetch || !p->awaiting.count(from)) return;
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
      p->awaiting.erase(from);
      if (!fe_fetch_next(*p, f->req) && p->awaiting.empty())
        fe_fail(f->req, Status::TryAgain, "no live replica holds the message");
    }
    return;
  }
  auto find = [this](std::uint64_t req) -> Pending* {
    auto it = pending_.find(req);
    return it == pending_.end() ? nullptr : &it->second;
  };
  if (const auto* a = std::get_if<AllocReply>(&m)) {
    Pending* p = find(a->req);
    if (p && p->kind == Pending::Kind::Renum) {
      if (a->status == Status::NotFound || a->status == Status::NoSuchUser)
        return fe_fail(a->req, a->status, "not in that folder's lineage");
      if (a->status != Status::Ok) {
        p->retry_at = now_ + kRetry;
        return;
      }
      ClientReply r;
      r.req = p->client_req;
      r.msg = p->update.record.id;
      r.uidvalidity = a->uidvalidity;
      r.uid = a->uid;
      r.replicas = p->update.record.replicas;
      pending_.erase(a->req);
      reply(std::move(r));
      return;
    }
    if (p && p->kind == Pending::Kind::MoveAlloc) {
      if (a->status == Status::NoSuchUser) return fe_fail(a->req, Status::NoSuchUser, "no such user");
      if (a->status != Status::Ok) {
        p->retry_at = now_ + kRetry;
        return;
      }
      // The Move, with its UID, to a live replica (like any mutation).
      p->kind = Pending::Kind::Mutate;
      p->update.id = next_version();
      p->update.record.uidvalidity = a->uidvalidity;
      p->update.record.uid = a->uid;
      p->update.record.uid_gen = a->gen;
      p->update.record.uid_seen = a->seen;
      p->retry_at = now_;
      fe_tick(now_);
      return;
    }
    if (!p || p->kind != Pending::Kind::Alloc) return;
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
      env_.log("delivery to " + p->user + "/" + p->folder + " is a retry of message " + a->msg.str() +
               " (UID " + std::to_string(a->uid) + "): not stored again");
      pending_.erase(a->req);
      reply(std::move(r));
      return;
    }
    // The manager checks the quota as it hands out the UID. One that did
    // not (an older one, or one that an older member's reports leave
    // without a count) leaves it to this node, which counts first.
    if (a->quota_bytes > 0 && !a->quota_checked) {
      p->kind = Pending::Kind::Quota;
      p->alloc = *a;
      p->quota_bytes = a->quota_bytes;
      fe_usage_gather(now_, a->req);
      return;
    }
    fe_store(a->req, *a);
  } else if (const auto* o = std::get_if<OpReply>(&m)) {
    Pending* p = find(o->req);
    if (!p || (p->kind != Pending::Kind::Store && p->kind != Pending::Kind::Mutate &&
               p->kind != Pending::Kind::CreateUser))
      return;
    if (o->status == Status::Ok) {
      if (p->kind == Pending::Kind::Store && !o->replicas.empty()) p->update.replicas = o->replicas;
      ClientReply r;
      r.req = p->client_req;
      const bool placed = p->kind == Pending::Kind::Store ||
                          (p->kind == Pending::Kind::Mutate && p->update.kind == Update::Kind::Move &&
                           p->update.record.uid != 0);
      if (placed) {
        r.msg = p->update.record.id;
        r.uidvalidity = p->update.record.uidvalidity;
        r.uid = p->update.record.uid;
        r.replicas = p->update.replicas;
        // Its UID is used: listings may show what comes after it.
        NodeId mgr = membership_.in_group() ? membership_.manager_of(bucket(p->update.record.user)) : kNoNode;
        if (mgr != kNoNode)
          send(mgr, AllocDone{canonical_user(p->update.record.user), p->update.record.folder,
                              r.uidvalidity, r.uid, p->update.record.delivery_key});
      }
      pending_.erase(o->req);
      reply(std::move(r));
    } else if (o->status == Status::Exists || o->status == Status::NoSuchUser) {
      fe_fail(o->req, o->status, status_name(o->status));
    } else {
      p->retry_at = now_ + kRetry;
    }
  } else if (const auto* mr = std::get_if<MapReply>(&m)) {
    Pending* p = find(mr->req);
    if (!p || p->kind != Pending::Kind::Map) return;
    if (mr->status == Status::NoSuchUser) return fe_fail(mr->req, Status::NoSuchUser, "no such user");
    if (mr->status != Status::Ok) {
      p->retry_at = now_ + kRetry;
      return;
    }
    p->kind = Pending::Kind::List;
    p->uidvalidity = mr->uidvalidity;
    p->next_uid = mr->next_uid;
    p->visible_below = mr->visible_below;
    p->inflight = mr->inflight;
    p->takeovers = mr->takeovers;
    fe_gather(now_, mr->req, mr->nodes);
  } else if (auto* l = std::get_if<ListReply>(&m)) {
    Pending* p = find(l->req);
    if (!p || (p->kind != Pending::Kind::List && p->kind != Pending::Kind::Renumber)) return;
    if (!p->awaiting.count(from)) return;
    if (l->light && from != p->light_from) return;  // asked whole since
    std::uint64_t digest = l->digest;
    if (!l->has_digest) {  // an older node's records
      digest = 0;
      for (const auto& rec : l->records) digest += copy_digest(rec);
    }
    const bool with_records = !l->has_digest || l->full;
    if (l->parts > 1 && with_records && !p->digest_only) {
      // A reply in parts, which may come in any order and more than once
      // (the request is resent): each part's records are taken as they
      // come, and the node has answered once every part has.
      auto& seen = p->parts_seen[from];
      const bool fresh = seen.insert(l->part).second;
      if (l->light) {
        if (fresh) fe_take_light(*p, *l);
      } else {
        fe_take_records(*p, l->records);
      }
      if (seen.size() < l->parts) return;
      l->records.clear();
    }
    p->digests[from] = digest;
    // The digest alone, from before its records were asked for: they
    // are still awaited.
    if (!p->digest_only && p->full_from.count(from) && !with_records) return;
    p->awaiting.erase(from);
    p->answered.insert(from);
    if (!p->digest_only && with_records) {
      p->with_records.insert(from);
      if (l->light) fe_take_light(*p, *l);
      else fe_take_records(*p, l->records);
    }
    if (p->awaiting.empty() && !fe_list_more(l->req, *p)) fe_finish_list(l->req);
  }
}

void Node::fe_take_records(Pending& p, std::vector<MessageRecord>& records) {
  // In MsgId order from a node of this version: each goes at the end. Its
  // user and folder are the request's (serve_list leaves them out).
  for (auto& rec : records) {
    if (rec.user.empty()) rec.user = p.user;
    if (rec.folder.empty()) rec.folder = p.folder;
    if (p.gathered.empty() || p.gathered.rbegin()->first < rec.id) {
      p.gathered.emplace_hint(p.gathered.end(), rec.id, std::move(rec));
      continue;
    }
    auto [it, fresh] = p.gathered.try_emplace(rec.id, std::move(rec));
    if (!fresh) merge_record(it->second, rec, wall());
  }
}

void Node::fe_take_light(Pending& p, ListReply& l) {
  if (l.records.empty()) return;  // an empty folder, or a reply in parts whose parts were taken
  for (auto& rec : l.records) {
    if (rec.user.empty()) rec.user = p.user;
    if (rec.folder.empty()) rec.folder = p.folder;
  }
  const std::size_t part = l.parts > 1 ? l.part : 0;
  if (p.light_parts.size() <= part) p.light_parts.resize(std::max<std::size_t>(part + 1, l.parts));
  p.light_parts[part] = std::move(l.records);
  l.records.clear();
}

void Node::fe_store(std::uint64_t id, const AllocReply& a) {
  Pending& p = pending_.at(id);
  Update u;
  u.id = next_version();
  u.kind = Update::Kind::Store;
  u.replicas = a.nodes;
  if (a.msg != MsgId{}) {
    u.record.id = a.msg;  // a keyed delivery's message (an earlier try's, on a retry)
    // Its list wins over an earlier try's, which may have landed somewhere.
    if (a.msg != p.msg) u.record.replicas_version = u.id;
  } else if (p.msg != MsgId{}) {
    u.record.id = p.msg;
  } else {
    u.record.id = MsgId{cfg_.self, next_seq_++};
    persist_counters();
  }
  u.record.delivery_key = p.deliver.key;
  u.record.user = p.user;
  u.record.folder = p.folder;
  u.record.size = p.body.size();
  u.record.vsize = p.deliver.vsize;
  u.record.hdr_size = p.deliver.hdr_size;
  u.record.meta = p.deliver.meta;
  u.record.body = std::move(p.body);
  u.record.internal_date = p.deliver.internal_date != 0 ? p.deliver.internal_date : wall();
  u.record.flags = p.deliver.flags;
  u.record.keywords = p.deliver.keywords;
  u.record.uidvalidity = a.uidvalidity;
  u.record.uid = a.uid;
  u.record.uid_gen = a.gen;
  u.record.uid_seen = a.seen;
  p.kind = Pending::Kind::Store;
  p.update = std::move(u);
  p.peer = a.nodes.front();
  const Time transfer = store_crossing(cfg_, p.update.record.body.size());
  p.deadline += transfer;
  p.retry_at = now_ + cfg_.push_retry + transfer;
  send(p.peer, StoreRequest{id, p.update});
}

void Node::user_usage(Time now, std::uint64_t req, const std::string& user) {
  Entry entry(*this, now);
  std::uint64_t id = fe_start(now, Pending::Kind::Usage, req, user);
  fe_usage_gather(now, id);
}

void Node::fe_usage_gather(Time now, std::uint64_t id) {
  Pending& p = pending_.at(id);
  p.awaiting.clear();
  p.used_bytes = 0;
  for (const auto& m : membership_.members())
    if (live(m.id)) p.awaiting.insert(m.id);
  if (p.awaiting.empty()) {
    fe_fail(id, Status::TryAgain, "not in a group yet");
    return;
  }
  p.retry_at = now + cfg_.push_retry;
  for (NodeId n : p.awaiting) send(n, UsageRequest{id, p.user});
}

void Node::fe_usage_reply(NodeId from, const UsageReply& u) {
  auto it = pending_.find(u.req);
  if (it == pending_.end()) return;
  Pending& p = it->second;
  if ((p.kind != Pending::Kind::Usage && p.kind != Pending::Kind::Quota) || !p.awaiting.erase(from)) return;
  p.used_bytes += u.bytes;
  if (!p.awaiting.empty()) return;
  if (p.kind == Pending::Kind::Quota) {
    if (p.used_bytes + p.body.size() > p.quota_bytes)
      return fe_fail(u.req, Status::OverQuota,
                     "mailbox over quota (" + std::to_string(p.used_bytes) + " of " +
                         std::to_string(p.quota_bytes) + " bytes used)");
    AllocReply a = p.alloc;
    return fe_store(u.req, a);
  }
  ClientReply r;
  r.req = p.client_req;
  r.used_bytes = p.used_bytes;
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
