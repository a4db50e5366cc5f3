// SPDX-License-Identifier: MIT
// codec.cc - the core's structs to and from porcupine.proto (see codec.h).
//
// One to_pb / from_pb pair per type, in the order of the schema; the
// Message variant maps onto the Envelope's oneof through one table,
// PORCUPINE_MESSAGES. Encoding cannot fail. Decoding fills a fresh value
// and hands it over only when all of it is good, checking what the schema
// cannot: enum values in range, no node id 0 where a node is named, a
// body present, a protocol version this build speaks. Pure functions; any
// thread.
#include "codec/codec.h"

#include <limits>
#include <stdexcept>
#include <set>
#include <utility>
#include <variant>

#include <google/protobuf/arena.h>

#include "proto/porcupine.pb.h"

namespace porcupine::codec {
namespace {

namespace gpb = google::protobuf;

// The proto enums carry the core's enumerator values unchanged.
static_assert(pb::STATUS_OK == int(Status::Ok) && pb::STATUS_TRY_AGAIN == int(Status::TryAgain) &&
              pb::STATUS_NO_SUCH_USER == int(Status::NoSuchUser) &&
              pb::STATUS_EXISTS == int(Status::Exists) &&
              pb::STATUS_NOT_MANAGER == int(Status::NotManager) &&
              pb::STATUS_FAILED == int(Status::Failed) &&
              pb::STATUS_NOT_FOUND == int(Status::NotFound) && pb::STATUS_OVER_QUOTA == int(Status::OverQuota));
// Status::AuthFailed answers local clients only: no peer sends it, and a
// frame that carries it is rejected.
static_assert(pb::UPDATE_KIND_STORE == int(Update::Kind::Store) &&
              pb::UPDATE_KIND_FLAGS == int(Update::Kind::Flags) &&
              pb::UPDATE_KIND_EXPUNGE == int(Update::Kind::Expunge) &&
              pb::UPDATE_KIND_SET_UID == int(Update::Kind::SetUid) &&
              pb::UPDATE_KIND_PROFILE == int(Update::Kind::Profile) &&
              pb::UPDATE_KIND_MOVE == int(Update::Kind::Move) &&
              pb::UPDATE_KIND_COPY == int(Update::Kind::Copy) &&
              pb::UPDATE_KIND_REPLICAS == int(Update::Kind::Replicas));
static_assert(pb::ADMIN_STATE_ACTIVE == int(AdminState::Active) &&
              pb::ADMIN_STATE_DRAINING == int(AdminState::Draining) &&
              pb::ADMIN_STATE_GONE == int(AdminState::Gone));
static_assert(pb::USER_OP_SET_PASSWORD == int(UserUpdateRequest::Op::SetPassword) &&
              pb::USER_OP_SET_QUOTA == int(UserUpdateRequest::Op::SetQuota) &&
              pb::USER_OP_ENABLE == int(UserUpdateRequest::Op::Enable) &&
              pb::USER_OP_DISABLE == int(UserUpdateRequest::Op::Disable) &&
              pb::USER_OP_DELETE == int(UserUpdateRequest::Op::Delete) &&
              pb::USER_OP_CREATE_FOLDER == int(UserUpdateRequest::Op::CreateFolder) &&
              pb::USER_OP_DELETE_FOLDER == int(UserUpdateRequest::Op::DeleteFolder) &&
              pb::USER_OP_RENAME_FOLDER == int(UserUpdateRequest::Op::RenameFolder) &&
              pb::USER_OP_SUBSCRIBE == int(UserUpdateRequest::Op::Subscribe) &&
              pb::USER_OP_UNSUBSCRIBE == int(UserUpdateRequest::Op::Unsubscribe));

// Whether message bodies go into the bytes: on the wire yes, at rest no.
enum class Bodies { Keep, Drop };

// Where a decode failure is reported.
class Check {
 public:
  explicit Check(std::string* error) : error_(error) {}
  bool fail(std::string why) {
    if (error_) *error_ = std::move(why);
    return false;
  }

 private:
  std::string* error_;
};

// ---- repeated fields ------------------------------------------------------

template <class C, class P>
void put(const C& in, gpb::RepeatedField<P>* out) {
  out->Add(in.begin(), in.end());
}
void put(const std::vector<std::string>& in, gpb::RepeatedPtrField<std::string>* out) {
  out->Add(in.begin(), in.end());
}
template <class T, class P>
void get(const gpb::RepeatedField<P>& in, std::vector<T>& out) {
  out.assign(in.begin(), in.end());
}
void get(const gpb::RepeatedPtrField<std::string>& in, std::vector<std::string>& out) {
  out.assign(in.begin(), in.end());
}

// A list of nodes (a vector or a set): node id 0 names no node.
template <class C>
bool get_nodes(const gpb::RepeatedField<std::uint32_t>& in, C& out, const char* field, Check& c) {
  for (std::uint32_t n : in) {
    if (n == kNoNode) return c.fail(std::string(field) + ": node id 0");
    out.insert(out.end(), n);
  }
  return true;
}

template <class E>
bool get_enum(int v, bool (*valid)(int), E& out, const char* field, Check& c) {
  if (!valid(v)) return c.fail(std::string(field) + ": unknown value " + std::to_string(v));
  out = static_cast<E>(v);
  return true;
}

// ---- shared values ----------------------------------------------------------

void to_pb(const Stamp& s, pb::Stamp& p) {
  p.set_time(s.time);
  p.set_node(s.node);
}
bool from_pb(const pb::Stamp& p, Stamp& s, Check&) {
  s = {p.time(), p.node()};
  return true;
}

// A null stamp is left out: absent, it decodes as null (Stamp{0, kNoNode}),
// and a listing of many records parses no empty messages.
void put_stamp(const Stamp& s, pb::Stamp* (pb::MessageRecord::*field)(), pb::MessageRecord& p) {
  if (!s.is_null()) to_pb(s, *(p.*field)());
}

void to_pb(const MsgId& m, pb::MsgId& p) {
  p.set_origin(m.origin);
  p.set_seq(m.seq);
}
bool from_pb(const pb::MsgId& p, MsgId& m, Check&) {
  m = {p.origin(), p.seq()};
  return true;
}

void to_pb(const MemberWeight& m, pb::MemberWeight& p) {
  p.set_id(m.id);
  p.set_weight(m.weight);
}
bool from_pb(const pb::MemberWeight& p, MemberWeight& m, Check& c) {
  if (p.id() == kNoNode) return c.fail("MemberWeight.id: node id 0");
  m = {p.id(), p.weight()};
  return true;
}

template <class R>
void put_view(const UidView& v, R* out) {
  for (const auto& g : v) {
    auto& q = *out->Add();
    to_pb(g.gen, *q.mutable_gen());
    q.set_top(g.top);
  }
}
template <class R>
bool get_view(const R& in, UidView& v, Check& c) {
  v.clear();
  for (const auto& q : in) {
    GenTop g;
    g.top = q.top();
    if (!from_pb(q.gen(), g.gen, c)) return false;
    v.push_back(g);
  }
  return true;
}

void to_pb(const UidTakeover& t, pb::UidTakeover& p) {
  to_pb(t.gen, *p.mutable_gen());
  put_view(t.seen, p.mutable_seen());
}
bool from_pb(const pb::UidTakeover& p, UidTakeover& t, Check& c) {
  return get_view(p.seen(), t.seen, c) && from_pb(p.gen(), t.gen, c);
}

// ---- hard state ---------------------------------------------------------------

void to_pb(const MessageRecord& r, pb::MessageRecord& p, Bodies bodies = Bodies::Keep) {
  to_pb(r.id, *p.mutable_id());
  p.set_user(r.user);
  p.set_folder(r.folder);
  put(r.replicas, p.mutable_replicas());
  p.set_has_body(r.has_body);
  if (bodies == Bodies::Keep) {
    switch (r.body.where()) {
      case Body::Where::Memory: p.set_body(r.body.bytes()); break;
      case Body::Where::Transfer: p.set_body_transfer(r.body.transfer()); break;
      case Body::Where::File:
        // The peer transport turns file bodies into transfers first.
        throw std::invalid_argument("codec: a file body cannot be encoded inline");
    }
  }
  p.set_internal_date(r.internal_date);
  p.set_uidvalidity(r.uidvalidity);
  p.set_uid(r.uid);
  put_stamp(r.uid_version, &pb::MessageRecord::mutable_uid_version, p);
  put_stamp(r.uid_gen, &pb::MessageRecord::mutable_uid_gen, p);
  put_view(r.uid_seen, p.mutable_uid_seen());
  p.set_flags(r.flags);
  put(r.keywords, p.mutable_keywords());
  put_stamp(r.flags_version, &pb::MessageRecord::mutable_flags_version, p);
  for (const auto& m : r.flag_marks) {
    pb::FlagMark& f = *p.add_flag_marks();
    f.set_name(m.name);
    f.set_set(m.set);
    to_pb(m.version, *f.mutable_version());
  }
  p.set_expunged(r.expunged);
  put_stamp(r.expunge_version, &pb::MessageRecord::mutable_expunge_version, p);
  p.set_expunged_at(r.expunged_at);
  p.set_size(r.size);
  put_stamp(r.folder_version, &pb::MessageRecord::mutable_folder_version, p);
  put_stamp(r.replicas_version, &pb::MessageRecord::mutable_replicas_version, p);
  p.set_vsize(r.vsize);
  p.set_hdr_size(r.hdr_size);
  p.set_meta(r.meta);
  p.set_delivery_key(r.delivery_key);
}
bool from_pb(const pb::MessageRecord& p, MessageRecord& r, Check& c) {
  r.user = p.user();
  r.folder = p.folder();
  r.has_body = p.has_body();
  if (p.body_transfer() != 0) {
    if (!p.body().empty()) return c.fail("MessageRecord: both a body and a body transfer");
    r.body = Body::in_transfer(p.body_transfer(), p.size());
  } else {
    r.body = p.body();
  }
  r.internal_date = p.internal_date();
  r.uidvalidity = p.uidvalidity();
  r.uid = p.uid();
  if (!get_view(p.uid_seen(), r.uid_seen, c)) return false;
  r.flags = p.flags();
  get(p.keywords(), r.keywords);
  r.expunged = p.expunged();
  r.expunged_at = p.expunged_at();
  r.size = p.size();
  r.vsize = p.vsize();
  r.hdr_size = p.hdr_size();
  r.meta = p.meta();
  if (r.meta.size() > kMaxRecordMeta) r.meta.clear();  // never made so: not kept
  r.delivery_key = p.delivery_key();
  if (r.delivery_key.size() > kMaxDeliveryKey) return c.fail("MessageRecord.delivery_key: over 64 bytes");
  r.flag_marks.clear();
  for (const auto& f : p.flag_marks()) {
    FlagMark m;
    m.name = f.name();
    m.set = f.set();
    if (m.name.empty()) return c.fail("MessageRecord.flag_marks: a flag without a name");
    if (!from_pb(f.version(), m.version, c)) return false;
    r.flag_marks.push_back(std::move(m));
  }
  return from_pb(p.id(), r.id, c) &&
         get_nodes(p.replicas(), r.replicas, "MessageRecord.replicas", c) &&
         from_pb(p.uid_version(), r.uid_version, c) && from_pb(p.uid_gen(), r.uid_gen, c) &&
         from_pb(p.flags_version(), r.flags_version, c) &&
         from_pb(p.expunge_version(), r.expunge_version, c) &&
         from_pb(p.folder_version(), r.folder_version, c) &&
         from_pb(p.replicas_version(), r.replicas_version, c);
}

void to_pb(const Profile& u, pb::Profile& p) {
  p.set_user(u.user);
  to_pb(u.version, *p.mutable_version());
  p.set_password_hash(u.password_hash);
  p.set_quota_bytes(u.quota_bytes);
  p.set_enabled(u.enabled);
  p.set_deleted(u.deleted);
  for (const auto& [name, meta] : u.folders) {
    pb::Folder& f = *p.add_folders();
    f.set_name(name);
    f.mutable_meta()->set_uidvalidity(meta.uidvalidity);
    to_pb(meta.version, *f.mutable_meta()->mutable_version());
    f.mutable_meta()->set_deleted(meta.deleted);
    f.mutable_meta()->set_uid_reserved(meta.uid_reserved);
    f.mutable_meta()->set_renamed_to(meta.renamed_to);
    for (const auto& t : meta.takeovers) to_pb(t, *f.mutable_meta()->add_takeovers());
  }
  put(u.holders, p.mutable_holders());
  for (const auto& [name, sub] : u.subscriptions) {
    pb::Subscription& s = *p.add_subscriptions();
    s.set_name(name);
    s.set_on(sub.on);
    to_pb(sub.version, *s.mutable_version());
  }
}
bool from_pb(const pb::Profile& p, Profile& u, Check& c) {
  u.user = p.user();
  u.password_hash = p.password_hash();
  u.quota_bytes = p.quota_bytes();
  u.enabled = p.enabled();
  u.deleted = p.deleted();
  for (const pb::Folder& f : p.folders()) {
    FolderMeta meta;
    meta.uidvalidity = f.meta().uidvalidity();
    meta.deleted = f.meta().deleted();
    meta.uid_reserved = f.meta().uid_reserved();
    meta.renamed_to = f.meta().renamed_to();
    for (const auto& q : f.meta().takeovers()) {
      UidTakeover t;
      if (!from_pb(q, t, c)) return false;
      meta.takeovers.push_back(t);
    }
    if (!from_pb(f.meta().version(), meta.version, c)) return false;
    if (!u.folders.emplace(f.name(), meta).second) return c.fail("Profile.folders: folder named twice");
  }
  for (const pb::Subscription& s : p.subscriptions()) {
    Subscription sub;
    sub.on = s.on();
    if (!from_pb(s.version(), sub.version, c)) return false;
    if (!u.subscriptions.emplace(s.name(), sub).second) return c.fail("Profile.subscriptions: name given twice");
  }
  return from_pb(p.version(), u.version, c) &&
         get_nodes(p.holders(), u.holders, "Profile.holders", c);
}

void to_pb(const Update& u, pb::Update& p, Bodies bodies = Bodies::Keep) {
  to_pb(u.id, *p.mutable_id());
  p.set_kind(pb::UpdateKind(u.kind));
  p.set_coordinator(u.coordinator);
  put(u.replicas, p.mutable_replicas());
  to_pb(u.record, *p.mutable_record(), bodies);
  to_pb(u.profile, *p.mutable_profile());
}
bool from_pb(const pb::Update& p, Update& u, Check& c) {
  u.coordinator = p.coordinator();  // 0: no coordinator yet
  return from_pb(p.id(), u.id, c) &&
         get_enum(p.kind(), pb::UpdateKind_IsValid, u.kind, "Update.kind", c) &&
         get_nodes(p.replicas(), u.replicas, "Update.replicas", c) &&
         from_pb(p.record(), u.record, c) && from_pb(p.profile(), u.profile, c);
}

void to_pb(const LogEntry& e, pb::LogEntry& p, Bodies bodies) {
  to_pb(e.update, *p.mutable_update(), bodies);
  put(e.have, p.mutable_have());
}
bool from_pb(const pb::LogEntry& p, LogEntry& e, Check& c) {
  return from_pb(p.update(), e.update, c) && get_nodes(p.have(), e.have, "LogEntry.have", c);
}

// ---- membership -----------------------------------------------------------------

void put_admin(const AdminMap& a, google::protobuf::RepeatedPtrField<pb::NodeAdmin>* out) {
  for (const auto& [n, s] : a) {
    pb::NodeAdmin& p = *out->Add();
    p.set_node(n);
    p.set_state(pb::AdminState(s.state));
    to_pb(s.version, *p.mutable_version());
  }
}
bool get_admin(const google::protobuf::RepeatedPtrField<pb::NodeAdmin>& in, AdminMap& a, Check& c) {
  a.clear();
  for (const pb::NodeAdmin& p : in) {
    NodeAdmin s;
    if (p.node() == kNoNode) return c.fail("NodeAdmin: node 0");
    if (!get_enum(p.state(), pb::AdminState_IsValid, s.state, "NodeAdmin.state", c) ||
        !from_pb(p.version(), s.version, c))
      return false;
    if (!a.emplace(p.node(), s).second) return c.fail("NodeAdmin: node given twice");
  }
  return true;
}

void to_pb(const Probe& m, pb::Probe& p) { to_pb(m.epoch, *p.mutable_epoch()); }
bool from_pb(const pb::Probe& p, Probe& m, Check& c) { return from_pb(p.epoch(), m.epoch, c); }
void to_pb(const ProbeAck& m, pb::ProbeAck& p) { to_pb(m.epoch, *p.mutable_epoch()); }
bool from_pb(const pb::ProbeAck& p, ProbeAck& m, Check& c) {
  return from_pb(p.epoch(), m.epoch, c);
}
void to_pb(const NewGroup& m, pb::NewGroup& p) {
  to_pb(m.epoch, *p.mutable_epoch());
  if (!m.map_epoch.is_null()) to_pb(m.map_epoch, *p.mutable_map_epoch());
  p.set_known_digest(m.known_digest);
}
bool from_pb(const pb::NewGroup& p, NewGroup& m, Check& c) {
  m.known_digest = p.known_digest();
  return from_pb(p.epoch(), m.epoch, c) && from_pb(p.map_epoch(), m.map_epoch, c);
}

void to_pb(const Accept& m, pb::Accept& p) {
  to_pb(m.epoch, *p.mutable_epoch());
  p.set_weight(m.weight);
  to_pb(m.map_epoch, *p.mutable_map_epoch());
  put(m.map, p.mutable_map());
  put(m.known, p.mutable_known());
  put_admin(m.admin, p.mutable_admin());
  p.set_known_same(m.known_same);
  if (!m.installed.is_null()) to_pb(m.installed, *p.mutable_installed());
}
bool from_pb(const pb::Accept& p, Accept& m, Check& c) {
  m.weight = p.weight();
  m.known_same = p.known_same();
  get(p.map(), m.map);  // 0 is a bucket without a manager
  return from_pb(p.epoch(), m.epoch, c) && from_pb(p.map_epoch(), m.map_epoch, c) &&
         get_nodes(p.known(), m.known, "Accept.known", c) && get_admin(p.admin(), m.admin, c) &&
         from_pb(p.installed(), m.installed, c);
}

void to_pb(const Commit& m, pb::Commit& p) {
  to_pb(m.epoch, *p.mutable_epoch());
  for (const MemberWeight& w : m.members) to_pb(w, *p.add_members());
  put(m.map, p.mutable_map());
  put_admin(m.admin, p.mutable_admin());
  if (!m.base.is_null()) to_pb(m.base, *p.mutable_base());
  put(m.removed, p.mutable_removed());
  for (const auto& [b, n] : m.moves) {
    pb::BucketMove& mv = *p.add_moves();
    mv.set_bucket(b);
    mv.set_node(n);
  }
}
bool from_pb(const pb::Commit& p, Commit& m, Check& c) {
  get(p.map(), m.map);
  for (const pb::MemberWeight& w : p.members())
    if (!from_pb(w, m.members.emplace_back(), c)) return false;
  for (const pb::BucketMove& mv : p.moves()) m.moves.emplace_back(mv.bucket(), mv.node());
  return from_pb(p.epoch(), m.epoch, c) && get_admin(p.admin(), m.admin, c) && from_pb(p.base(), m.base, c) &&
         get_nodes(p.removed(), m.removed, "Commit.removed", c);
}

// ---- mail map and profile reconstruction ------------------------------------------

void to_pb(const UidRange& r, pb::UidRange& p) {
  p.set_uidvalidity(r.uidvalidity);
  p.set_min_uid(r.min_uid);
  p.set_max_uid(r.max_uid);
  p.set_live(r.live);
  to_pb(r.gen, *p.mutable_gen());
  put_view(r.seen, p.mutable_seen());
}
bool from_pb(const pb::UidRange& p, UidRange& r, Check& c) {
  r = {p.uidvalidity(), p.min_uid(), p.max_uid(), p.live(), {}, {}};
  return get_view(p.seen(), r.seen, c) && from_pb(p.gen(), r.gen, c);
}

void to_pb(const KeyedDelivery& k, pb::KeyedDelivery& p) {
  p.set_key(k.key);
  to_pb(k.msg, *p.mutable_msg());
  p.set_uidvalidity(k.uidvalidity);
  p.set_uid(k.uid);
  put(k.nodes, p.mutable_nodes());
  p.set_stored(k.stored);
  p.set_at(k.at);
  if (!k.gen.is_null()) to_pb(k.gen, *p.mutable_gen());
}
bool from_pb(const pb::KeyedDelivery& p, KeyedDelivery& k, Check& c) {
  k.key = p.key();
  if (k.key.empty() || k.key.size() > kMaxDeliveryKey) return c.fail("KeyedDelivery.key: empty or over 64 bytes");
  k.uidvalidity = p.uidvalidity();
  k.uid = p.uid();
  k.stored = p.stored();
  k.at = p.at();
  return from_pb(p.msg(), k.msg, c) && get_nodes(p.nodes(), k.nodes, "KeyedDelivery.nodes", c) &&
         from_pb(p.gen(), k.gen, c);
}

void to_pb(const Handoff& h, pb::Handoff& p) {
  p.set_user(h.user);
  p.set_folder(h.folder);
  p.set_uidvalidity(h.uidvalidity);
  p.set_next_uid(h.next_uid);
  put(h.inflight, p.mutable_inflight());
  to_pb(h.gen, *p.mutable_gen());
  put_view(h.seen, p.mutable_seen());
  for (const KeyedDelivery& k : h.keys) to_pb(k, *p.add_keys());
}
bool from_pb(const pb::Handoff& p, Handoff& h, Check& c) {
  h = {p.user(), p.folder(), p.uidvalidity(), p.next_uid(), {}, {}, {}, {}};
  get(p.inflight(), h.inflight);
  for (const pb::KeyedDelivery& k : p.keys())
    if (!from_pb(k, h.keys.emplace_back(), c)) return false;
  return get_view(p.seen(), h.seen, c) && from_pb(p.gen(), h.gen, c);
}

void to_pb(const ReportEntry& e, pb::ReportEntry& p) {
  p.set_user(e.user);
  p.set_folder(e.folder);
  for (const UidRange& r : e.ranges) to_pb(r, *p.add_ranges());
  p.set_count(e.count);
  for (const ReplicaBytes& b : e.bytes) {
    pb::ReplicaBytes& q = *p.add_bytes();
    put(b.replicas, q.mutable_replicas());
    q.set_bytes(b.bytes);
  }
  for (const KeyedDelivery& k : e.keys) to_pb(k, *p.add_keys());
}
bool from_pb(const pb::ReportEntry& p, ReportEntry& e, Check& c) {
  e.user = p.user();
  e.folder = p.folder();
  e.count = p.count();
  for (const pb::UidRange& r : p.ranges())
    if (!from_pb(r, e.ranges.emplace_back(), c)) return false;
  for (const pb::ReplicaBytes& q : p.bytes()) {
    ReplicaBytes& b = e.bytes.emplace_back();
    b.bytes = q.bytes();
    if (!get_nodes(q.replicas(), b.replicas, "ReplicaBytes.replicas", c)) return false;
  }
  for (const pb::KeyedDelivery& k : p.keys())
    if (!from_pb(k, e.keys.emplace_back(), c)) return false;
  return true;
}

void to_pb(const Report& m, pb::Report& p) {
  to_pb(m.epoch, *p.mutable_epoch());
  put(m.complete, p.mutable_complete());
  put(m.users, p.mutable_users());
  put(m.generations, p.mutable_generations());
  for (const ReportEntry& e : m.entries) to_pb(e, *p.add_entries());
  for (const Profile& u : m.profiles) to_pb(u, *p.add_profiles());
  for (const Handoff& h : m.handoffs) to_pb(h, *p.add_handoffs());
}
bool from_pb(const pb::Report& p, Report& m, Check& c) {
  get(p.complete(), m.complete);
  get(p.users(), m.users);
  get(p.generations(), m.generations);
  for (const pb::ReportEntry& e : p.entries())
    if (!from_pb(e, m.entries.emplace_back(), c)) return false;
  for (const pb::Profile& u : p.profiles())
    if (!from_pb(u, m.profiles.emplace_back(), c)) return false;
  for (const pb::Handoff& h : p.handoffs())
    if (!from_pb(h, m.handoffs.emplace_back(), c)) return false;
  return from_pb(p.epoch(), m.epoch, c);
}

void to_pb(const ReportAck& m, pb::ReportAck& p) {
  to_pb(m.epoch, *p.mutable_epoch());
  put(m.complete, p.mutable_complete());
  put(m.users, p.mutable_users());
  put(m.generations, p.mutable_generations());
}
bool from_pb(const pb::ReportAck& p, ReportAck& m, Check& c) {
  get(p.complete(), m.complete);
  get(p.users(), m.users);
  get(p.generations(), m.generations);
  return from_pb(p.epoch(), m.epoch, c);
}

void to_pb(const ReportPoll& m, pb::ReportPoll& p) {
  to_pb(m.epoch, *p.mutable_epoch());
  put(m.buckets, p.mutable_buckets());
}
bool from_pb(const pb::ReportPoll& p, ReportPoll& m, Check& c) {
  get(p.buckets(), m.buckets);
  return from_pb(p.epoch(), m.epoch, c);
}

// ---- delivery: manager side -----------------------------------------------------------

void to_pb(const AllocRequest& m, pb::AllocRequest& p) {
  p.set_req(m.req);
  p.set_user(m.user);
  p.set_folder(m.folder);
  p.set_size(m.size);
  put(m.move_nodes, p.mutable_move_nodes());
  if (!m.key.empty()) {
    p.set_key(m.key);
    to_pb(m.msg, *p.mutable_msg());
  }
}
bool from_pb(const pb::AllocRequest& p, AllocRequest& m, Check& c) {
  m = {p.req(), p.user(), p.folder(), p.size(), {}, p.key(), {}};
  if (m.key.size() > kMaxDeliveryKey) return c.fail("AllocRequest.key: over 64 bytes");
  return get_nodes(p.move_nodes(), m.move_nodes, "AllocRequest.move_nodes", c) && from_pb(p.msg(), m.msg, c);
}

void to_pb(const AllocDone& m, pb::AllocDone& p) {
  p.set_user(m.user);
  p.set_folder(m.folder);
  p.set_uidvalidity(m.uidvalidity);
  p.set_uid(m.uid);
  p.set_key(m.key);
}
bool from_pb(const pb::AllocDone& p, AllocDone& m, Check&) {
  m = {p.user(), p.folder(), p.uidvalidity(), p.uid(), p.key()};
  return true;
}

void to_pb(const RenumberRequest& m, pb::RenumberRequest& p) {
  p.set_req(m.req);
  p.set_user(m.user);
  p.set_folder(m.folder);
  to_pb(m.id, *p.mutable_id());
  put(m.replicas, p.mutable_replicas());
  p.set_uidvalidity(m.uidvalidity);
  p.set_uid(m.uid);
  p.set_above(m.above);
}
bool from_pb(const pb::RenumberRequest& p, RenumberRequest& m, Check& c) {
  m.above = p.above();
  m.req = p.req();
  m.user = p.user();
  m.folder = p.folder();
  m.uidvalidity = p.uidvalidity();
  m.uid = p.uid();
  return from_pb(p.id(), m.id, c) && get_nodes(p.replicas(), m.replicas, "RenumberRequest.replicas", c);
}

void to_pb(const AllocReply& m, pb::AllocReply& p) {
  p.set_req(m.req);
  p.set_status(pb::Status(m.status));
  p.set_uidvalidity(m.uidvalidity);
  p.set_uid(m.uid);
  put(m.nodes, p.mutable_nodes());
  p.set_quota_bytes(m.quota_bytes);
  to_pb(m.gen, *p.mutable_gen());
  put_view(m.seen, p.mutable_seen());
  p.set_quota_checked(m.quota_checked);
  if (m.msg != MsgId{}) to_pb(m.msg, *p.mutable_msg());
  p.set_stored(m.stored);
}
bool from_pb(const pb::AllocReply& p, AllocReply& m, Check& c) {
  m.req = p.req();
  m.stored = p.stored();
  if (!from_pb(p.msg(), m.msg, c)) return false;
  m.uidvalidity = p.uidvalidity();
  m.uid = p.uid();
  m.quota_bytes = p.quota_bytes();
  m.quota_checked = p.quota_checked();
  if (!get_view(p.seen(), m.seen, c)) return false;
  return from_pb(p.gen(), m.gen, c) &&
         get_enum(p.status(), pb::Status_IsValid, m.status, "AllocReply.status", c) &&
         get_nodes(p.nodes(), m.nodes, "AllocReply.nodes", c);
}

void to_pb(const CreateUserRequest& m, pb::CreateUserRequest& p) {
  p.set_req(m.req);
  p.set_user(m.user);
  p.set_password_hash(m.password_hash);
}
bool from_pb(const pb::CreateUserRequest& p, CreateUserRequest& m, Check&) {
  m = {p.req(), p.user(), p.password_hash()};
  return true;
}

void to_pb(const MapRequest& m, pb::MapRequest& p) {
  p.set_req(m.req);
  p.set_user(m.user);
  p.set_folder(m.folder);
}
bool from_pb(const pb::MapRequest& p, MapRequest& m, Check&) {
  m = {p.req(), p.user(), p.folder()};
  return true;
}

void to_pb(const MapReply& m, pb::MapReply& p) {
  p.set_req(m.req);
  p.set_status(pb::Status(m.status));
  put(m.nodes, p.mutable_nodes());
  p.set_uidvalidity(m.uidvalidity);
  p.set_next_uid(m.next_uid);
  p.set_visible_below(m.visible_below);
  for (const auto& t : m.takeovers) to_pb(t, *p.add_takeovers());
  put(m.inflight, p.mutable_inflight());
}
bool from_pb(const pb::MapReply& p, MapReply& m, Check& c) {
  m.req = p.req();
  m.uidvalidity = p.uidvalidity();
  m.next_uid = p.next_uid();
  m.visible_below = p.visible_below();
  get(p.inflight(), m.inflight);
  for (const auto& q : p.takeovers()) {
    UidTakeover t;
    if (!from_pb(q, t, c)) return false;
    m.takeovers.push_back(t);
  }
  return get_enum(p.status(), pb::Status_IsValid, m.status, "MapReply.status", c) &&
         get_nodes(p.nodes(), m.nodes, "MapReply.nodes", c);
}

// ---- replication --------------------------------------------------------------------------

void to_pb(const StoreRequest& m, pb::StoreRequest& p) {
  p.set_req(m.req);
  to_pb(m.update, *p.mutable_update());
}
bool from_pb(const pb::StoreRequest& p, StoreRequest& m, Check& c) {
  m.req = p.req();
  return from_pb(p.update(), m.update, c);
}

void to_pb(const MutateRequest& m, pb::MutateRequest& p) {
  p.set_req(m.req);
  to_pb(m.update, *p.mutable_update());
}
bool from_pb(const pb::MutateRequest& p, MutateRequest& m, Check& c) {
  m.req = p.req();
  return from_pb(p.update(), m.update, c);
}

void to_pb(const OpReply& m, pb::OpReply& p) {
  p.set_req(m.req);
  p.set_status(pb::Status(m.status));
  put(m.replicas, p.mutable_replicas());
}
bool from_pb(const pb::OpReply& p, OpReply& m, Check& c) {
  m.req = p.req();
  return get_enum(p.status(), pb::Status_IsValid, m.status, "OpReply.status", c) &&
         get_nodes(p.replicas(), m.replicas, "OpReply.replicas", c);
}

void to_pb(const Push& m, pb::Push& p) {
  to_pb(m.update, *p.mutable_update());
  put(m.have, p.mutable_have());
}
bool from_pb(const pb::Push& p, Push& m, Check& c) {
  return from_pb(p.update(), m.update, c) && get_nodes(p.have(), m.have, "Push.have", c);
}

void to_pb(const PushAck& m, pb::PushAck& p) { to_pb(m.id, *p.mutable_id()); }
bool from_pb(const pb::PushAck& p, PushAck& m, Check& c) { return from_pb(p.id(), m.id, c); }
void to_pb(const Retire& m, pb::Retire& p) { to_pb(m.id, *p.mutable_id()); }
bool from_pb(const pb::Retire& p, Retire& m, Check& c) { return from_pb(p.id(), m.id, c); }

// ---- reads ----------------------------------------------------------------------------------

void to_pb(const ListRequest& m, pb::ListRequest& p) {
  p.set_req(m.req);
  p.set_user(m.user);
  p.set_folder(m.folder);
  p.set_digest_only(m.digest_only);
  p.set_meta_from_uid(m.meta_from_uid);
  p.set_in_parts(m.in_parts);
  p.set_without_names(m.without_names);
  p.set_light(m.light);
}
bool from_pb(const pb::ListRequest& p, ListRequest& m, Check&) {
  m = {p.req(),         p.user(),          p.folder(), p.digest_only(), p.meta_from_uid(), p.in_parts(),
       p.without_names(), p.light()};
  return true;
}

void to_pb(const ListReply& m, pb::ListReply& p) {
  p.set_req(m.req);
  p.mutable_records()->Reserve(static_cast<int>(m.records.size()));
  for (const MessageRecord& r : m.records) to_pb(r, *p.add_records());
  p.set_has_digest(m.has_digest);
  p.set_digest(m.digest);
  p.set_full(m.full);
  p.set_part(m.part);
  p.set_parts(m.parts);
  p.set_light(m.light);
}
bool from_pb(const pb::ListReply& p, ListReply& m, Check& c) {
  m.req = p.req();
  m.has_digest = p.has_digest();
  m.digest = p.digest();
  m.full = p.full();
  m.part = p.part();
  m.parts = p.parts();
  m.light = p.light();
  if (m.parts > 0 && m.part >= m.parts) return c.fail("ListReply: part " + std::to_string(m.part) + " of " +
                                                      std::to_string(m.parts));
  m.records.reserve(static_cast<std::size_t>(p.records_size()));
  for (const pb::MessageRecord& r : p.records())
    if (!from_pb(r, m.records.emplace_back(), c)) return false;
  return true;
}

void to_pb(const FetchRequest& m, pb::FetchRequest& p) {
  p.set_req(m.req);
  to_pb(m.id, *p.mutable_id());
  p.set_user(m.user);
  p.set_part(m.part == FetchPart::Header ? pb::FetchRequest::HEADER : pb::FetchRequest::WHOLE);
}
bool from_pb(const pb::FetchRequest& p, FetchRequest& m, Check& c) {
  m.req = p.req();
  m.user = p.user();
  // A part this node does not know (a newer asker's) is answered whole.
  m.part = p.part() == pb::FetchRequest::HEADER ? FetchPart::Header : FetchPart::Whole;
  return from_pb(p.id(), m.id, c);
}

void to_pb(const FetchReply& m, pb::FetchReply& p) {
  p.set_req(m.req);
  p.set_status(pb::Status(m.status));
  p.set_part(m.part == FetchPart::Header ? pb::FetchRequest::HEADER : pb::FetchRequest::WHOLE);
  p.set_header_cut(m.cut);
  switch (m.body.where()) {
    case Body::Where::Memory: p.set_body(m.body.bytes()); break;
    case Body::Where::Transfer:
      p.set_body_transfer(m.body.transfer());
      p.set_body_size(m.body.size());
      break;
    case Body::Where::File: throw std::invalid_argument("codec: a file body cannot be encoded inline");
  }
}
bool from_pb(const pb::FetchReply& p, FetchReply& m, Check& c) {
  m.req = p.req();
  if (p.body_transfer() != 0) {
    if (!p.body().empty()) return c.fail("FetchReply: both a body and a body transfer");
    m.body = Body::in_transfer(p.body_transfer(), p.body_size());
  } else {
    m.body = p.body();
  }
  m.cut = p.header_cut();
  return get_enum(p.part(), pb::FetchRequest_Part_IsValid, m.part, "FetchReply.part", c) &&
         get_enum(p.status(), pb::Status_IsValid, m.status, "FetchReply.status", c);
}

// ---- the user database ---------------------------------------------------------------------

void to_pb(const ProfileRequest& m, pb::ProfileRequest& p) {
  p.set_req(m.req);
  p.set_user(m.user);
  if (m.remembered) to_pb(*m.remembered, *p.mutable_remembered());
}
bool from_pb(const pb::ProfileRequest& p, ProfileRequest& m, Check& c) {
  m = {p.req(), p.user(), std::nullopt};
  if (!p.has_remembered()) return true;
  m.remembered.emplace();
  return from_pb(p.remembered(), *m.remembered, c);
}

void to_pb(const ProfileReply& m, pb::ProfileReply& p) {
  p.set_req(m.req);
  p.set_status(pb::Status(m.status));
  to_pb(m.profile, *p.mutable_profile());
  p.set_has_usage(m.has_usage);
  p.set_used_bytes(m.used_bytes);
}
bool from_pb(const pb::ProfileReply& p, ProfileReply& m, Check& c) {
  m.req = p.req();
  m.has_usage = p.has_usage();
  m.used_bytes = p.used_bytes();
  return get_enum(p.status(), pb::Status_IsValid, m.status, "ProfileReply.status", c) &&
         from_pb(p.profile(), m.profile, c);
}

void to_pb(const UserUpdateRequest& m, pb::UserUpdateRequest& p) {
  p.set_req(m.req);
  p.set_user(m.user);
  p.set_op(pb::UserOp(m.op));
  p.set_password_hash(m.password_hash);
  p.set_quota_bytes(m.quota_bytes);
  p.set_folder(m.folder);
  p.set_to_folder(m.to_folder);
}
bool from_pb(const pb::UserUpdateRequest& p, UserUpdateRequest& m, Check& c) {
  m.to_folder = p.to_folder();
  m.req = p.req();
  m.user = p.user();
  m.password_hash = p.password_hash();
  m.quota_bytes = p.quota_bytes();
  m.folder = p.folder();
  return get_enum(p.op(), pb::UserOp_IsValid, m.op, "UserUpdateRequest.op", c);
}

void to_pb(const UserListRequest& m, pb::UserListRequest& p) { p.set_req(m.req); }
bool from_pb(const pb::UserListRequest& p, UserListRequest& m, Check&) {
  m.req = p.req();
  return true;
}

void to_pb(const UserListReply& m, pb::UserListReply& p) {
  p.set_req(m.req);
  p.set_status(pb::Status(m.status));
  put(m.users, p.mutable_users());
}
bool from_pb(const pb::UserListReply& p, UserListReply& m, Check& c) {
  m.req = p.req();
  get(p.users(), m.users);
  return get_enum(p.status(), pb::Status_IsValid, m.status, "UserListReply.status", c);
}

void to_pb(const UsageRequest& m, pb::UsageRequest& p) {
  p.set_req(m.req);
  p.set_user(m.user);
}
bool from_pb(const pb::UsageRequest& p, UsageRequest& m, Check&) {
  m = {p.req(), p.user()};
  return true;
}

void to_pb(const UsageReply& m, pb::UsageReply& p) {
  p.set_req(m.req);
  p.set_bytes(m.bytes);
}
bool from_pb(const pb::UsageReply& p, UsageReply& m, Check&) {
  m = {p.req(), p.bytes()};
  return true;
}

// ---- anti-entropy ---------------------------------------------------------------------------

void to_pb(const SyncRequest& m, pb::SyncRequest& p) { p.set_round(m.round); }
bool from_pb(const pb::SyncRequest& p, SyncRequest& m, Check&) {
  m.round = p.round();
  return true;
}

void to_pb(const SyncDigest& m, pb::SyncDigest& p) {
  p.set_round(m.round);
  p.set_last(m.last);
  for (const UserDigest& u : m.users) {
    pb::UserDigest* d = p.add_users();
    d->set_user(u.user);
    d->set_digest(u.digest);
  }
}
bool from_pb(const pb::SyncDigest& p, SyncDigest& m, Check&) {
  m.round = p.round();
  m.last = p.last();
  for (const pb::UserDigest& d : p.users()) m.users.push_back({d.user(), d.digest()});
  return true;
}

void to_pb(const SyncPull& m, pb::SyncPull& p) {
  p.set_round(m.round);
  p.set_pull(m.pull);
  put(m.users, p.mutable_users());
}
bool from_pb(const pb::SyncPull& p, SyncPull& m, Check&) {
  m.round = p.round();
  m.pull = p.pull();
  get(p.users(), m.users);
  return true;
}

void to_pb(const SyncRecords& m, pb::SyncRecords& p) {
  p.set_round(m.round);
  p.set_pull(m.pull);
  p.set_last(m.last);
  for (const MessageRecord& r : m.records) to_pb(r, *p.add_records());
  for (const Profile& u : m.profiles) to_pb(u, *p.add_profiles());
}
bool from_pb(const pb::SyncRecords& p, SyncRecords& m, Check& c) {
  m.round = p.round();
  m.pull = p.pull();
  m.last = p.last();
  for (const pb::MessageRecord& r : p.records())
    if (!from_pb(r, m.records.emplace_back(), c)) return false;
  for (const pb::Profile& u : p.profiles())
    if (!from_pb(u, m.profiles.emplace_back(), c)) return false;
  return true;
}

void to_pb(const SyncBodies& m, pb::SyncBodies& p) {
  for (const MsgId& id : m.ids) to_pb(id, *p.add_ids());
}
bool from_pb(const pb::SyncBodies& p, SyncBodies& m, Check& c) {
  for (const pb::MsgId& id : p.ids())
    if (!from_pb(id, m.ids.emplace_back(), c)) return false;
  return true;
}

// ---- the frame ----------------------------------------------------------------------------

// Each Message alternative and its field in Envelope.body.
#define PORCUPINE_MESSAGES(X)               \
  X(Probe, probe)                           \
  X(ProbeAck, probe_ack)                    \
  X(NewGroup, new_group)                    \
  X(Accept, accept)                         \
  X(Commit, commit)                         \
  X(Report, report)                         \
  X(ReportAck, report_ack)                  \
  X(ReportPoll, report_poll)                \
  X(AllocRequest, alloc_request)            \
  X(AllocReply, alloc_reply)                \
  X(CreateUserRequest, create_user_request) \
  X(MapRequest, map_request)                \
  X(MapReply, map_reply)                    \
  X(StoreRequest, store_request)            \
  X(MutateRequest, mutate_request)          \
  X(OpReply, op_reply)                      \
  X(Push, push)                             \
  X(PushAck, push_ack)                      \
  X(Retire, retire)                         \
  X(ListRequest, list_request)              \
  X(ListReply, list_reply)                  \
  X(FetchRequest, fetch_request)            \
  X(FetchReply, fetch_reply)                \
  X(ProfileRequest, profile_request)        \
  X(ProfileReply, profile_reply)            \
  X(UserUpdateRequest, user_update_request) \
  X(UserListRequest, user_list_request)     \
  X(UserListReply, user_list_reply)         \
  X(UsageRequest, usage_request)            \
  X(UsageReply, usage_reply)                \
  X(AllocDone, alloc_done)                  \
  X(RenumberRequest, renumber_request)      \
  X(SyncRequest, sync_request)              \
  X(SyncDigest, sync_digest)                \
  X(SyncPull, sync_pull)                    \
  X(SyncRecords, sync_records)              \
  X(SyncBodies, sync_bodies)

#define PORCUPINE_COUNT(T, field) +1
static_assert(0 PORCUPINE_MESSAGES(PORCUPINE_COUNT) == std::variant_size_v<Message>,
              "every Message alternative needs a field in Envelope.body");
#undef PORCUPINE_COUNT

#define PORCUPINE_BODY_OF(T, field) \
  pb::T& body_of(pb::Envelope& p, const T&) { return *p.mutable_##field(); }
PORCUPINE_MESSAGES(PORCUPINE_BODY_OF)
#undef PORCUPINE_BODY_OF

bool from_pb(const pb::Envelope& p, Envelope& e, Check& c) {
  if (p.protocol_version() == 0) return c.fail("Envelope: no protocol version");
  if (p.protocol_version() > kProtocolVersion)
    return c.fail("Envelope: protocol version " + std::to_string(p.protocol_version()) +
                  " is newer than this build's " + std::to_string(kProtocolVersion));
  if (p.from() == kNoNode || p.to() == kNoNode) return c.fail("Envelope: node id 0");
  e.from = p.from();
  e.to = p.to();
  e.load = p.load();
  e.full = p.full();
#define PORCUPINE_DECODE(T, field) \
  if (p.has_##field()) return from_pb(p.field(), e.body.emplace<T>(), c);
  PORCUPINE_MESSAGES(PORCUPINE_DECODE)
#undef PORCUPINE_DECODE
  return c.fail(std::string(kUnknownMessage));
}

// Parses `bytes` as P and converts it into a fresh T; `out` is assigned
// only on success.
template <class P, class T>
bool decode(std::string_view bytes, T& out, const char* what, std::string* error) {
  Check c(error);
  // Nothing this codec writes is empty: every frame has a body and every
  // record, profile and log entry has a stamp.
  if (bytes.empty()) return c.fail(std::string(what) + ": empty");
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    return c.fail(std::string(what) + ": too large");
  // One arena for the message and its parts (a listing's thousands of
  // records), freed at once.
  google::protobuf::Arena arena;
  P& p = *google::protobuf::Arena::CreateMessage<P>(&arena);
  if (!p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    return c.fail(std::string(what) + ": not a valid protobuf message");
  T value;
  if (!from_pb(p, value, c)) return false;
  out = std::move(value);
  return true;
}

}  // namespace

std::string encode_envelope(const Envelope& e) {
  google::protobuf::Arena arena;
  pb::Envelope& p = *google::protobuf::Arena::CreateMessage<pb::Envelope>(&arena);
  p.set_protocol_version(kProtocolVersion);
  p.set_from(e.from);
  p.set_to(e.to);
  p.set_load(e.load);
  p.set_full(e.full);
  std::visit([&](const auto& m) { to_pb(m, body_of(p, m)); }, e.body);
  return p.SerializeAsString();
}

bool decode_envelope(std::string_view bytes, Envelope& out, std::string* error) {
  return decode<pb::Envelope>(bytes, out, "Envelope", error);
}

std::string encode_body_chunk(const BodyChunk& b) {
  pb::Envelope p;
  p.set_protocol_version(kProtocolVersion);
  p.set_from(kNoNode + 1);  // unused: the connection names the peer
  p.set_to(kNoNode + 1);
  auto* c = p.mutable_body_chunk();
  c->set_transfer(b.transfer);
  c->set_data(std::string(b.data));
  c->set_last(b.last);
  return p.SerializeAsString();
}

bool decode_frame(std::string_view bytes, Envelope& out, BodyChunk& chunk, bool& is_chunk, std::string* error) {
  Check c(error);
  if (bytes.empty()) return c.fail("Envelope: empty");
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) return c.fail("Envelope: too large");
  google::protobuf::Arena arena;
  pb::Envelope& p = *google::protobuf::Arena::CreateMessage<pb::Envelope>(&arena);
  if (!p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    return c.fail("Envelope: not a valid protobuf message");
  if (p.has_body_chunk()) {
    if (p.body_chunk().transfer() == 0) return c.fail("BodyChunk: transfer 0");
    is_chunk = true;
    chunk.transfer = p.body_chunk().transfer();
    chunk.data_owned = std::move(*p.mutable_body_chunk()->mutable_data());
    chunk.data = {};
    chunk.last = p.body_chunk().last();
    return true;
  }
  is_chunk = false;
  Envelope value;
  if (!from_pb(p, value, c)) return false;
  out = std::move(value);
  return true;
}

std::string encode_record(const MessageRecord& r) {
  pb::MessageRecord p;
  to_pb(r, p, Bodies::Drop);
  return p.SerializeAsString();
}

bool decode_record(std::string_view bytes, MessageRecord& out, std::string* error) {
  return decode<pb::MessageRecord>(bytes, out, "MessageRecord", error);
}

std::string encode_profile(const Profile& u) {
  pb::Profile p;
  to_pb(u, p);
  return p.SerializeAsString();
}

bool decode_profile(std::string_view bytes, Profile& out, std::string* error) {
  return decode<pb::Profile>(bytes, out, "Profile", error);
}

std::string encode_admin(const AdminMap& a) {
  pb::AdminTable p;
  put_admin(a, p.mutable_admin());
  return p.SerializeAsString();
}

bool decode_admin(std::string_view bytes, AdminMap& out, std::string* error) {
  pb::AdminTable p;
  Check c(error);
  if (!p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return c.fail("AdminTable: not a valid message");
  return get_admin(p.admin(), out, c);
}

std::string encode_log_entry(const LogEntry& e) {
  pb::LogEntry p;
  to_pb(e, p, Bodies::Drop);
  return p.SerializeAsString();
}

bool decode_log_entry(std::string_view bytes, LogEntry& out, std::string* error) {
  return decode<pb::LogEntry>(bytes, out, "LogEntry", error);
}

}  // namespace porcupine::codec
