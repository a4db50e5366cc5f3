// SPDX-License-Identifier: MIT
// serve.cc - a node's serving of its peers' requests for the mail it
// holds: listings, fetches, usage counts, and the stores and updates it
// coordinates for a front end (frontend.h), with the failover of a store
// whose replica is silent.
#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "node.h"

namespace porcupine {

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
