// SPDX-License-Identifier: MIT
// codec_test.cc - every message through an Envelope and back, records,
// profiles and log entries at rest (without bodies), and hostile bytes:
// garbage, truncation, no body, unknown kinds and out-of-range values.
#include "codec/codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "proto/porcupine.pb.h"

namespace porcupine::codec {
namespace {

using namespace std::string_literals;

// ---- equality where the structs have none -----------------------------------

template <class T>
bool same(const T& a, const T& b) {
  return a == b;
}
bool same(const MemberWeight& a, const MemberWeight& b) {
  return a.id == b.id && a.weight == b.weight;
}
bool same(const Update& a, const Update& b) {
  return a.id == b.id && a.kind == b.kind && a.coordinator == b.coordinator &&
         a.replicas == b.replicas && a.record == b.record && a.profile == b.profile;
}
bool same(const LogEntry& a, const LogEntry& b) {
  return same(a.update, b.update) && a.have == b.have;
}
bool same(const Commit& a, const Commit& b) {
  auto eq = [](const MemberWeight& x, const MemberWeight& y) { return same(x, y); };
  return a.epoch == b.epoch && a.map == b.map && a.admin == b.admin && a.base == b.base &&
         a.removed == b.removed && a.moves == b.moves &&
         std::equal(a.members.begin(), a.members.end(), b.members.begin(), b.members.end(), eq);
}
bool same(const StoreRequest& a, const StoreRequest& b) {
  return a.req == b.req && same(a.update, b.update);
}
bool same(const MutateRequest& a, const MutateRequest& b) {
  return a.req == b.req && same(a.update, b.update);
}
bool same(const Push& a, const Push& b) { return same(a.update, b.update) && a.have == b.have; }
bool same(const Message& a, const Message& b) {
  return a.index() == b.index() && std::visit(
                                       [&](const auto& x) {
                                         using T = std::decay_t<decltype(x)>;
                                         return same(x, std::get<T>(b));
                                       },
                                       a);
}

// ---- values with every field set to something other than its default ----------

// A body with a NUL, CR LF and bytes that are not UTF-8.
const std::string kBody = "From: alice@example.com\r\nSubject: hi\r\n\r\n\0\xff\xfe body-marker"s;
const std::string kUser = "\xC3\x89ve\xff@example.com";  // not valid UTF-8: names are octets
const std::string kFolder = "Archive/2023 &AOk-t\xe9";

MessageRecord full_record(std::uint64_t seq) {
  MessageRecord r;
  r.id = {3, seq};
  r.user = kUser;
  r.folder = kFolder;
  r.replicas = {3, 5, 7};
  r.replicas_version = {1'700'000'000'800, 5};
  r.has_body = true;
  r.body = kBody;
  r.size = kBody.size();
  r.vsize = kBody.size() + 3;
  r.hdr_size = 40;
  r.meta = std::string("\x01\x01\x00\x03" "abc", 7);
  r.delivery_key = std::string(32, '\x5a');
  r.folder_version = {1'700'000'000'700, 3};
  r.internal_date = 1'700'000'000'123;
  r.uidvalidity = 42;
  r.uid = 17;
  r.uid_version = {1'700'000'000'200, 3};
  r.uid_gen = {1'700'000'000'150, 1};
  r.uid_seen = {{{1'700'000'000'100, 1}, 11}, {{1'700'000'000'120, 2}, 4}};
  r.flags = kSeen | kFlagged | kDraft;
  r.keywords = {"$Forwarded", "$Label1", "NonJunk"};
  r.flags_version = {1'700'000'000'300, 5};
  r.flag_marks = {{"\\Answered", true, {1'700'000'000'310, 2}}, {"$Label1", false, {1'700'000'000'320, 4}}};
  r.expunged = true;
  r.expunge_version = {1'700'000'000'400, 7};
  r.expunged_at = 1'700'000'000'500;
  return r;
}

Profile full_profile() {
  Profile p;
  p.user = kUser;
  p.version = {1'700'000'001'000, 2};
  p.password_hash = "{SHA512-CRYPT}$6$salt$hash";
  p.quota_bytes = std::uint64_t{1} << 40;
  p.enabled = false;
  p.deleted = true;
  p.folders = {{"INBOX", {7, {1'700'000'001'100, 2}, false, 128, {{{1'700'000'001'050, 2}, {}}, {{1'700'000'001'060, 3}, {{{1'700'000'001'050, 2}, 70}}}}, ""}},
               {kFolder, {9, {1'700'000'001'200, 3}, true, 0, {}, "Renamed"}},
               {"Sent", {4'000'000'000u, {1'700'000'001'300, 4}, false, 0, {}, ""}}};
  p.holders = {2, 4, 6};
  p.subscriptions = {{"Lists", {false, {1'700'000'001'400, 5}}}, {"No folder", {true, {1'700'000'001'500, 2}}}};
  return p;
}

Update full_update(Update::Kind kind) {
  Update u;
  u.id = {1'700'000'002'000, 3};
  u.kind = kind;
  u.coordinator = 3;
  u.replicas = {3, 5};
  u.record = full_record(11);
  u.profile = full_profile();
  return u;
}

// One of each Message alternative.
std::vector<Message> every_message() {
  const Epoch epoch{1'700'000'003'000, 4};
  return {
      Probe{epoch},
      ProbeAck{epoch},
      NewGroup{epoch, {}, 0},
      NewGroup{epoch, {1'600'000'000'000, 2}, 0x8000'0000'0000'0001},
      Accept{.epoch = epoch,
             .weight = 3,
             .map_epoch = {1'600'000'000'000, 2},
             .map = {1, 0, 2, 2},
             .known = {1, 2, 9},
             .known_same = false,
             .admin = {{9, {AdminState::Gone, {1'700'000'000'050, 2}}}, {5, {AdminState::Draining, {1'700'000'000'060, 1}}}},
             .installed = {}},
      Accept{.epoch = epoch, .weight = 1, .map_epoch = {1'600'000'000'000, 2}, .map = {}, .known = {},
             .known_same = true, .admin = {}, .installed = {1'600'000'000'000, 2}},
      Commit{.epoch = epoch,
             .members = {{1, 1}, {2, 3}},
             .map = {1, 2, 2, 2},
             .admin = {{9, {AdminState::Gone, {1'700'000'000'050, 2}}}, {2, {AdminState::Active, {1'700'000'000'070, 2}}}},
             .base = {},
             .removed = {},
             .moves = {}},
      Commit{.epoch = epoch, .members = {{70000, 2}}, .map = {}, .admin = {}, .base = {1'600'000'000'000, 2},
             .removed = {4, 65535}, .moves = {{0, 70000}, {1023, 1}}},
      Report{.epoch = epoch,
             .complete = {0, 5, 1023},
             .users = {kUser, "bob@example.com"},
             .generations = {7, std::numeric_limits<std::uint64_t>::max()},
             .entries = {{kUser, kFolder, {{42, 1, 17, 12, {1'700'000'000'900, 3}, {{{1'700'000'000'100, 1}, 9}}}, {43, 1, 3, 0, {}, {}}}, 12,
                          {{{2, 3}, 40'000}, {{3, 5}, std::uint64_t{1} << 40}},
                          {{std::string(32, '\xab'), {2, 77}, 42, 16, {2, 3}, true, 1'700'000'000'500, {1'700'000'000'400, 2}}}}},
             .profiles = {full_profile()},
             .handoffs = {{kUser, kFolder, 42, 18, {16, 17}, {1'700'000'000'900, 3}, {{{1'700'000'000'100, 1}, 9}},
                           {{"k1", {3, 5}, 42, 17, {3, 5}, false, 1'700'000'000'600, {}}}}}},
      ReportAck{.epoch = epoch, .complete = {5}, .users = {kUser}, .generations = {7}},
      ReportPoll{.epoch = epoch, .buckets = {1, 2, 3}},
      AllocRequest{101, kUser, kFolder, 4096, {}, {}, {}},
      AllocRequest{101, kUser, kFolder, 4096, {}, std::string(32, '\x01'), {3, 1'000'001}},
      AllocRequest{101, kUser, kFolder, 0, {2, 3}, {}, {}},
      AllocDone{kUser, kFolder, 42, 17, {}},
      AllocDone{kUser, kFolder, 42, 17, "key"},
      RenumberRequest{120, kUser, kFolder, {3, 99}, {3, 5}, 42, 16, 30},
      AllocReply{
          .req = 102, .status = Status::TryAgain, .uidvalidity = 42, .uid = 17, .nodes = {3, 5},
          .quota_bytes = 4096, .gen = {1'700'000'000'900, 3}, .seen = {{{1'700'000'000'100, 1}, 9}}, .msg = {}},
      AllocReply{.req = 102, .status = Status::OverQuota, .uidvalidity = 0, .uid = 0, .nodes = {},
                 .quota_bytes = 4096, .quota_checked = true, .gen = {}, .seen = {}, .msg = {}},
      AllocReply{.req = 102, .status = Status::Ok, .uidvalidity = 42, .uid = 9, .nodes = {2, 3},
                 .quota_bytes = 0, .quota_checked = true, .gen = {}, .seen = {}, .msg = {2, 8}, .stored = true},
      CreateUserRequest{103, kUser, "{PLAIN}secret"},
      MapRequest{104, kUser, kFolder},
      MapReply{.req = 105,
               .status = Status::NotManager,
               .nodes = {2},
               .uidvalidity = 42,
               .next_uid = 18,
               .visible_below = 16,
               .takeovers = {{{1'700'000'000'900, 3}, {{{1'700'000'000'100, 1}, 12}}}},
               .inflight = {16, 17}},
      StoreRequest{106, full_update(Update::Kind::Store)},
      MutateRequest{107, full_update(Update::Kind::Flags)},
      OpReply{108, Status::Failed, {}},
      OpReply{108, Status::Ok, {3, 7}},
      Push{full_update(Update::Kind::Store), {3, 5}},
      PushAck{{1'700'000'004'000, 5}},
      Retire{{1'700'000'005'000, 6}},
      ListRequest{109, kUser, kFolder},
      ListRequest{109, kUser, kFolder, true},
      ListRequest{109, kUser, kFolder, false, 12},
      ListRequest{109, kUser, kFolder, false, 12, true},
      ListRequest{109, kUser, kFolder, false, 12, false, true},
      ListRequest{109, kUser, kFolder, false, 12, true, true, true},
      ListReply{110, {full_record(1), full_record(2)}},
      ListReply{110, {}, true, 0xfedcba9876543210ULL},
      ListReply{110, {full_record(1)}, true, 0x0123456789abcdefULL, true},
      ListReply{110, {full_record(1)}, true, 0x0123456789abcdefULL, true, 2, 3},
      ListReply{110, {full_record(1)}, true, 0x0123456789abcdefULL, true, 2, 3, true},
      FetchRequest{111, {3, 99}, kUser},
      FetchRequest{111, {3, 99}, kUser, FetchPart::Header},
      FetchReply{112, Status::Exists, kBody},
      FetchReply{112, Status::Ok, "Subject: x\r\n\r\n", FetchPart::Header},
      FetchReply{112, Status::Ok, std::string(300, 'h'), FetchPart::Header, true},
      ProfileRequest{113, kUser, std::nullopt},
      ProfileRequest{113, kUser, full_profile()},
      ProfileReply{114, Status::NoSuchUser, full_profile()},
      ProfileReply{114, Status::Ok, full_profile(), true, 123456789},
      UserUpdateRequest{.req = 115,
                        .user = kUser,
                        .op = UserUpdateRequest::Op::DeleteFolder,
                        .password_hash = "{PLAIN}new",
                        .quota_bytes = 5'000'000,
                        .folder = kFolder,
                        .to_folder = "Renamed"},
      UserListRequest{116},
      UserListReply{117, Status::TryAgain, {kUser, "bob@example.com"}},
      UsageRequest{118, kUser},
      UsageReply{119, 123456789},
      SyncRequest{120},
      SyncDigest{121, {{kUser, 0x0123456789abcdefULL}, {"bob@example.com", 7}}, true},
      SyncPull{122, 4, {kUser, "bob@example.com"}},
      SyncRecords{123, 4, {full_record(1), full_record(2)}, {full_profile()}, true},
      SyncBodies{{{3, 99}, {4, 1}}},
      Push{full_update(Update::Kind::Copy), {3}},
  };
}

Envelope envelope(Message m) {
  return Envelope{.from = 3, .to = 5, .load = 12, .body = std::move(m)};
}

// Decodes and expects a refusal with a reason.
template <class T>
void expect_rejected(bool (*decode)(std::string_view, T&, std::string*), std::string_view bytes,
                     const std::string& what) {
  T out;
  std::string error;
  EXPECT_FALSE(decode(bytes, out, &error)) << what;
  EXPECT_FALSE(error.empty()) << what;
  EXPECT_EQ(error.find('\n'), std::string::npos) << what << ": " << error;
}

std::string frame(const pb::Envelope& p) { return p.SerializeAsString(); }

pb::Envelope frame_header() {
  pb::Envelope p;
  p.set_protocol_version(kProtocolVersion);
  p.set_from(3);
  p.set_to(5);
  return p;
}

// ---- round trips -------------------------------------------------------------

Message a_report() {
  for (const Message& m : every_message())
    if (std::holds_alternative<Report>(m)) return m;
  throw std::logic_error("every_message() has no Report");
}

TEST(Codec, EveryMessageKindHasATestValue) {
  std::set<std::size_t> kinds;
  for (const Message& m : every_message()) kinds.insert(m.index());
  EXPECT_EQ(kinds.size(), std::variant_size_v<Message>);
}

TEST(Codec, EveryMessageRoundTripsThroughAnEnvelope) {
  for (const Message& m : every_message()) {
    const Envelope in = envelope(m);
    Envelope out;
    std::string error;
    ASSERT_TRUE(decode_envelope(encode_envelope(in), out, &error))
        << message_name(m) << ": " << error;
    EXPECT_EQ(out.from, in.from);
    EXPECT_EQ(out.to, in.to);
    EXPECT_EQ(out.load, in.load);
    EXPECT_TRUE(same(out.body, in.body)) << message_name(m);
  }
}

TEST(Codec, DefaultMessagesRoundTripThroughAnEnvelope) {
  for (const Message& filled : every_message()) {
    Message m =
        std::visit([](const auto& x) -> Message { return std::decay_t<decltype(x)>{}; }, filled);
    Envelope out;
    std::string error;
    ASSERT_TRUE(decode_envelope(encode_envelope(envelope(m)), out, &error))
        << message_name(m) << ": " << error;
    EXPECT_TRUE(same(out.body, m)) << message_name(m);
  }
}

TEST(Codec, AFullSpoolTravelsWithTheLoadAndAnOlderSenderIsNotFull) {
  Envelope in = envelope(ProbeAck{{7, 8}});
  in.full = true;
  Envelope out;
  ASSERT_TRUE(decode_envelope(encode_envelope(in), out));
  EXPECT_TRUE(out.full);
  EXPECT_EQ(out.load, 12u);
  // A sender before the field: an envelope without it.
  pb::Envelope old = frame_header();
  old.set_load(3);
  old.mutable_probe_ack();
  out.full = true;
  ASSERT_TRUE(decode_envelope(frame(old), out));
  EXPECT_FALSE(out.full);
}

// What an older agent sends without the quota fields: a report entry
// without bytes, an AllocReply whose quota the front end must check, a
// ProfileReply without a count.
TEST(Codec, QuotaFieldsFromAnOlderAgentDecodeAsAbsent) {
  pb::Envelope old = frame_header();
  pb::ReportEntry* e = old.mutable_report()->add_entries();
  e->set_user(kUser);
  e->set_count(3);
  Envelope out;
  ASSERT_TRUE(decode_envelope(frame(old), out));
  const auto& r = std::get<Report>(out.body);
  ASSERT_EQ(r.entries.size(), 1u);
  EXPECT_EQ(r.entries[0].count, 3u);
  EXPECT_TRUE(r.entries[0].bytes.empty());

  old = frame_header();
  old.mutable_alloc_reply()->set_quota_bytes(100);
  ASSERT_TRUE(decode_envelope(frame(old), out));
  EXPECT_EQ(std::get<AllocReply>(out.body).quota_bytes, 100u);
  EXPECT_FALSE(std::get<AllocReply>(out.body).quota_checked);

  old = frame_header();
  old.mutable_profile_reply();
  ASSERT_TRUE(decode_envelope(frame(old), out));
  EXPECT_FALSE(std::get<ProfileReply>(out.body).has_usage);
}

// A holder before header parts answers a fetch without saying which part
// it sent: the whole body. A part the receiver does not know (a newer
// asker's) is asked as the whole; a reply naming one is refused.
TEST(Codec, AFetchPartFromOrToAnOlderAgentIsTheWholeBody) {
  pb::Envelope old = frame_header();
  old.mutable_fetch_reply()->set_body("Subject: x\r\n\r\nbody\r\n");
  Envelope out;
  ASSERT_TRUE(decode_envelope(frame(old), out));
  EXPECT_EQ(std::get<FetchReply>(out.body).part, FetchPart::Whole);
  EXPECT_FALSE(std::get<FetchReply>(out.body).cut);

  old = frame_header();
  old.mutable_fetch_request()->set_req(7);
  ASSERT_TRUE(decode_envelope(frame(old), out));
  EXPECT_EQ(std::get<FetchRequest>(out.body).part, FetchPart::Whole);

  old = frame_header();
  old.mutable_fetch_request()->set_part(static_cast<pb::FetchRequest::Part>(9));
  ASSERT_TRUE(decode_envelope(frame(old), out));
  EXPECT_EQ(std::get<FetchRequest>(out.body).part, FetchPart::Whole);

  old = frame_header();
  old.mutable_fetch_reply()->set_part(static_cast<pb::FetchRequest::Part>(9));
  expect_rejected(decode_envelope, frame(old), "a reply of an unknown part");
}

TEST(Codec, EveryStatusKindAndOpSurvivesTheWire) {
  for (Status s : {Status::Ok, Status::TryAgain, Status::NoSuchUser, Status::Exists,
                   Status::NotManager, Status::Failed}) {
    Envelope out;
    ASSERT_TRUE(decode_envelope(encode_envelope(envelope(OpReply{1, s, {}})), out));
    EXPECT_EQ(std::get<OpReply>(out.body).status, s) << status_name(s);
  }
  for (Update::Kind k : {Update::Kind::Store, Update::Kind::Flags, Update::Kind::Expunge,
                         Update::Kind::SetUid, Update::Kind::Profile}) {
    Envelope out;
    ASSERT_TRUE(decode_envelope(encode_envelope(envelope(Push{full_update(k), {3}})), out));
    EXPECT_EQ(std::get<Push>(out.body).update.kind, k) << kind_name(k);
  }
  using Op = UserUpdateRequest::Op;
  for (Op op : {Op::SetPassword, Op::SetQuota, Op::Enable, Op::Disable, Op::Delete, Op::CreateFolder,
                Op::DeleteFolder, Op::RenameFolder, Op::Subscribe, Op::Unsubscribe}) {
    UserUpdateRequest m;
    m.op = op;
    Envelope out;
    ASSERT_TRUE(decode_envelope(encode_envelope(envelope(m)), out));
    EXPECT_EQ(std::get<UserUpdateRequest>(out.body).op, op);
  }
}

TEST(Codec, StoreUpdatePushedToAReplicaCarriesItsBody) {
  Update u = full_update(Update::Kind::Store);
  std::string bytes(1 << 20, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 131);
  u.record.body = bytes;
  Envelope out;
  ASSERT_TRUE(decode_envelope(encode_envelope(envelope(Push{u, {3}})), out));
  EXPECT_EQ(std::get<Push>(out.body).update.record.body, u.record.body);
}

TEST(Codec, ABodyInTransferTravelsAsItsTransferIdAndChunksAsChunks) {
  Update u = full_update(Update::Kind::Store);
  u.record.size = 5u << 20;
  u.record.body = Body::in_transfer(77, u.record.size);
  Envelope out;
  BodyChunk chunk;
  bool is_chunk = true;
  ASSERT_TRUE(decode_frame(encode_envelope(envelope(StoreRequest{9, u})), out, chunk, is_chunk));
  EXPECT_FALSE(is_chunk);
  const Body& b = std::get<StoreRequest>(out.body).update.record.body;
  EXPECT_EQ(b.where(), Body::Where::Transfer);
  EXPECT_EQ(b.transfer(), 77u);
  EXPECT_EQ(b.size(), 5u << 20);

  std::string data = "chunk of a large message";
  ASSERT_TRUE(decode_frame(encode_body_chunk(BodyChunk{77, data, {}, true}), out, chunk, is_chunk));
  EXPECT_TRUE(is_chunk);
  EXPECT_EQ(chunk.transfer, 77u);
  EXPECT_EQ(chunk.data_owned, data);
  EXPECT_TRUE(chunk.last);
  // The core's decoder does not take a chunk for a message.
  std::string why;
  EXPECT_FALSE(decode_envelope(encode_body_chunk(BodyChunk{77, data, {}, false}), out, &why));
  // Transfer 0 and a record naming both a body and a transfer are refused.
  EXPECT_FALSE(decode_frame(encode_body_chunk(BodyChunk{0, data, {}, false}), out, chunk, is_chunk, &why));
  pb::Envelope p = frame_header();
  auto* r = p.mutable_store_request()->mutable_update()->mutable_record();
  r->set_body("x");
  r->set_body_transfer(3);
  expect_rejected(decode_envelope, frame(p), "body and transfer");
}

TEST(Codec, RecordAtRestRoundTripsWithoutItsBody) {
  const MessageRecord r = full_record(9);
  const std::string bytes = encode_record(r);
  EXPECT_EQ(bytes.find("body-marker"), std::string::npos);
  MessageRecord out;
  std::string error;
  ASSERT_TRUE(decode_record(bytes, out, &error)) << error;
  MessageRecord want = r;
  want.body.clear();
  EXPECT_EQ(out, want);
  EXPECT_TRUE(out.has_body);
}

TEST(Codec, BodySizesTravelAndAreKeptAtRestAndARecordWithoutThemHasZero) {
  const MessageRecord r = full_record(9);
  MessageRecord out;
  std::string error;
  ASSERT_TRUE(decode_record(encode_record(r), out, &error)) << error;
  EXPECT_EQ(out.vsize, kBody.size() + 3);
  EXPECT_EQ(out.hdr_size, 40u);

  Envelope e = envelope(ListReply{5, {r}, false, 0});
  Envelope got;
  ASSERT_TRUE(decode_envelope(encode_envelope(e), got, &error)) << error;
  const auto& listed = std::get<ListReply>(got.body).records.at(0);
  EXPECT_EQ(listed.vsize, kBody.size() + 3);
  EXPECT_EQ(listed.hdr_size, 40u);

  // What a node from before these fields writes: the same record without
  // them (fields 23 and 24).
  pb::MessageRecord old;
  ASSERT_TRUE(old.ParseFromString(encode_record(r)));
  old.clear_vsize();
  old.clear_hdr_size();
  ASSERT_TRUE(decode_record(old.SerializeAsString(), out, &error)) << error;
  EXPECT_EQ(out.vsize, 0u);
  EXPECT_EQ(out.hdr_size, 0u);
  EXPECT_EQ(out.size, r.size);
}

TEST(Codec, AListingPartOutOfRangeIsRefused) {
  pb::Envelope p = frame_header();
  p.mutable_list_reply()->set_req(3);
  p.mutable_list_reply()->set_part(3);
  p.mutable_list_reply()->set_parts(3);
  Envelope got;
  std::string error;
  EXPECT_FALSE(decode_envelope(frame(p), got, &error));
  EXPECT_NE(error.find("part 3 of 3"), std::string::npos) << error;
  p.mutable_list_reply()->set_part(2);
  EXPECT_TRUE(decode_envelope(frame(p), got, &error)) << error;
}

TEST(Codec, NullStampsAreLeftOutAndDecodeAsNull) {
  MessageRecord r = full_record(9);
  r.expunged = false;
  r.expunge_version = {};
  r.folder_version = {};
  r.replicas_version = {};
  pb::MessageRecord p;
  ASSERT_TRUE(p.ParseFromString(encode_record(r)));
  EXPECT_FALSE(p.has_expunge_version());
  EXPECT_FALSE(p.has_folder_version());
  EXPECT_FALSE(p.has_replicas_version());
  EXPECT_TRUE(p.has_uid_version());
  MessageRecord out;
  std::string error;
  ASSERT_TRUE(decode_record(p.SerializeAsString(), out, &error)) << error;
  MessageRecord want = r;
  want.body.clear();
  EXPECT_EQ(out, want);
  EXPECT_TRUE(out.expunge_version.is_null());

  // What a node from before writes: the empty stamps present. The same record.
  p.mutable_expunge_version();
  p.mutable_folder_version();
  ASSERT_TRUE(decode_record(p.SerializeAsString(), out, &error)) << error;
  EXPECT_EQ(out, want);
}

TEST(Codec, AListingCopyLeavesOutTheBodyAndWhatTheAskerDoesNotNeed) {
  const MessageRecord r = full_record(9);
  MessageRecord want = r;
  want.body.clear();
  want.delivery_key.clear();  // only its manager asks for it
  EXPECT_EQ(listing_copy(r, true, true), want);  // for an asker of an earlier version
  want.user.clear();
  want.folder.clear();
  EXPECT_EQ(listing_copy(r, false, true), want);
  want.meta.clear();
  EXPECT_EQ(listing_copy(r, false, false), want);
  // Light: no versions or flag marks either; what is shown stays.
  MessageRecord light = want;
  light.folder_version = light.replicas_version = light.uid_version = light.flags_version =
      light.expunge_version = Stamp{};
  light.flag_marks.clear();
  EXPECT_EQ(listing_copy(r, false, false, false), light);
  EXPECT_EQ(light.flags, r.flags);
  EXPECT_EQ(light.keywords, r.keywords);
  EXPECT_EQ(light.uid_seen, r.uid_seen);
  // Through the wire as a listing: what was copied, nothing more.
  Envelope got;
  std::string error;
  ASSERT_TRUE(decode_envelope(encode_envelope(envelope(ListReply{5, {listing_copy(r, false, true)}, true, 1, true})),
                              got, &error))
      << error;
  want.meta = r.meta;
  EXPECT_EQ(std::get<ListReply>(got.body).records.at(0), want);
}

TEST(Codec, DeliveryKeyIsKeptAtRestAndOneOver64BytesIsRefused) {
  MessageRecord r = full_record(9);
  MessageRecord out;
  std::string error;
  ASSERT_TRUE(decode_record(encode_record(r), out, &error)) << error;
  EXPECT_EQ(out.delivery_key, r.delivery_key);
  r.delivery_key.assign(kMaxDeliveryKey + 1, 'k');
  EXPECT_FALSE(decode_record(encode_record(r), out, &error));
  EXPECT_NE(error.find("delivery_key"), std::string::npos) << error;
  Envelope got;
  AllocRequest a{1, "u@x", "INBOX", 10, {}, std::string(kMaxDeliveryKey + 1, 'k'), {1, 2}};
  EXPECT_FALSE(decode_envelope(encode_envelope(envelope(a)), got, &error));
}

TEST(Codec, MetaIsKeptAtRestTravelsInListingsAndOneOver8KiBIsDropped) {
  MessageRecord r = full_record(9);
  MessageRecord out;
  std::string error;
  ASSERT_TRUE(decode_record(encode_record(r), out, &error)) << error;
  EXPECT_EQ(out.meta, r.meta);
  Envelope got;
  ASSERT_TRUE(decode_envelope(encode_envelope(envelope(ListReply{5, {r}, false, 0})), got, &error)) << error;
  EXPECT_EQ(std::get<ListReply>(got.body).records.at(0).meta, r.meta);

  // No node makes one larger; one that comes anyway is not kept, and the
  // record still decodes.
  r.meta.assign(kMaxRecordMeta + 1, 'x');
  ASSERT_TRUE(decode_record(encode_record(r), out, &error)) << error;
  EXPECT_EQ(out.meta, "");
  EXPECT_EQ(out.uid, r.uid);

  // A node from before the field (25) writes none: the record has none.
  pb::MessageRecord old;
  ASSERT_TRUE(old.ParseFromString(encode_record(full_record(9))));
  old.clear_meta();
  ASSERT_TRUE(decode_record(old.SerializeAsString(), out, &error)) << error;
  EXPECT_EQ(out.meta, "");
}

TEST(Codec, ProfileAtRestRoundTrips) {
  const Profile p = full_profile();
  Profile out;
  std::string error;
  ASSERT_TRUE(decode_profile(encode_profile(p), out, &error)) << error;
  EXPECT_EQ(out, p);

  Profile fresh;  // enabled, no folders
  fresh.user = "new@example.com";
  fresh.version = {1, 1};
  ASSERT_TRUE(decode_profile(encode_profile(fresh), out, &error)) << error;
  EXPECT_EQ(out, fresh);
}

TEST(Codec, TheTableOfDrainedAndGoneNodesAtRestRoundTripsAndRefusesNonsense) {
  const AdminMap a = {{3, {AdminState::Draining, {1'700'000'000'010, 1}}},
                      {4, {AdminState::Gone, {1'700'000'000'020, 2}}},
                      {5, {AdminState::Active, {1'700'000'000'030, 5}}}};
  AdminMap out;
  std::string error;
  ASSERT_TRUE(decode_admin(encode_admin(a), out, &error)) << error;
  EXPECT_EQ(out, a);
  ASSERT_TRUE(decode_admin(encode_admin({}), out, &error)) << error;
  EXPECT_TRUE(out.empty());

  pb::AdminTable t;
  t.add_admin()->set_node(0);
  expect_rejected(decode_admin, t.SerializeAsString(), "node 0");
  t.Clear();
  t.add_admin()->set_node(3);
  t.add_admin()->set_node(3);
  expect_rejected(decode_admin, t.SerializeAsString(), "node twice");
  t.Clear();
  t.add_admin()->set_node(3);
  t.mutable_admin(0)->set_state(static_cast<pb::AdminState>(7));
  expect_rejected(decode_admin, t.SerializeAsString(), "state 7");
  expect_rejected(decode_admin, std::string("\xff\xff\xff"), "garbage");
}

TEST(Codec, LogEntryOfAStoreRoundTripsWithoutTheBody) {
  const LogEntry e{full_update(Update::Kind::Store), {3, 5}};
  const std::string bytes = encode_log_entry(e);
  EXPECT_EQ(bytes.find("body-marker"), std::string::npos);
  LogEntry out;
  std::string error;
  ASSERT_TRUE(decode_log_entry(bytes, out, &error)) << error;
  LogEntry want = e;
  want.update.record.body.clear();
  EXPECT_TRUE(same(out, want));
}

TEST(Codec, LogEntryOfAProfileUpdateRoundTrips) {
  LogEntry e{full_update(Update::Kind::Profile), {5}};
  e.update.record = {};
  e.update.coordinator = kNoNode;  // not yet taken on by a coordinator
  LogEntry out;
  ASSERT_TRUE(decode_log_entry(encode_log_entry(e), out));
  EXPECT_TRUE(same(out, e));
}

TEST(Codec, UnknownFieldsFromANewerAgentAreSkipped) {
  // Fields 99 (a varint) and 100 (4 bytes), as a newer agent might add
  // them: an older agent skips both.
  const std::string extra = "\x98\x06\x07\xa2\x06\004abcd";
  const Envelope in = envelope(ReportPoll{{7, 8}, {1, 2}});
  Envelope out;
  std::string error;
  ASSERT_TRUE(decode_envelope(encode_envelope(in) + extra, out, &error)) << error;
  EXPECT_TRUE(same(out.body, in.body));

  MessageRecord r;
  ASSERT_TRUE(decode_record(encode_record(full_record(1)) + extra, r, &error)) << error;
  MessageRecord want = full_record(1);
  want.body.clear();
  EXPECT_EQ(r, want);
}

// ---- hostile bytes -------------------------------------------------------------

TEST(Codec, EmptyBufferIsRejectedEverywhere) {
  expect_rejected(decode_envelope, "", "envelope");
  expect_rejected(decode_record, "", "record");
  expect_rejected(decode_profile, "", "profile");
  expect_rejected(decode_log_entry, "", "log entry");
}

TEST(Codec, GarbageBytesAreRejected) {
  const std::string garbage[] = {
      std::string("\x00", 1),                          // field number 0
      "\x07",                                          // wire type 7
      "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  // a varint that never ends
      "\x0a\005ab",                                    // a length past the end
      "\x82\x01\xff\xff\xff\xff\x0f",                  // a length of 4 GiB
  };
  for (const std::string& g : garbage) {
    expect_rejected(decode_envelope, g, "envelope");
    expect_rejected(decode_record, g, "record");
    expect_rejected(decode_profile, g, "profile");
    expect_rejected(decode_log_entry, g, "log entry");
  }
}

TEST(Codec, RandomBytesNeverCrashAndAlwaysExplainARefusal) {
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<int> byte(0, 255), len(1, 64);
  for (int i = 0; i < 5000; ++i) {
    std::string b(static_cast<std::size_t>(len(rng)), '\0');
    for (char& ch : b) ch = static_cast<char>(byte(rng));
    Envelope e;
    MessageRecord r;
    LogEntry l;
    std::string e_error, r_error, l_error;
    EXPECT_TRUE(decode_envelope(b, e, &e_error) || !e_error.empty());
    EXPECT_TRUE(decode_record(b, r, &r_error) || !r_error.empty());
    EXPECT_TRUE(decode_log_entry(b, l, &l_error) || !l_error.empty());
  }
}

TEST(Codec, EveryTruncationOfAValidFrameIsRejected) {
  const std::string bytes = encode_envelope(envelope(a_report()));
  ASSERT_GT(bytes.size(), 100u);
  for (std::size_t n = 0; n < bytes.size(); ++n)
    expect_rejected(decode_envelope, std::string_view(bytes).substr(0, n),
                    "prefix " + std::to_string(n));
}

TEST(Codec, MutatedFramesNeverCrash) {
  const std::string bytes = encode_envelope(envelope(a_report()));
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    for (int x : {0x01, 0x80, 0xff}) {
      std::string b = bytes;
      b[i] = static_cast<char>(b[i] ^ x);
      Envelope e;
      std::string error;
      EXPECT_TRUE(decode_envelope(b, e, &error) || !error.empty());
    }
  }
}

TEST(Codec, FrameWithoutABodyIsRejected) {
  expect_rejected(decode_envelope, frame(frame_header()), "no body");
}

TEST(Codec, FrameOfAMessageKindThisBuildDoesNotKnowIsRejected) {
  // Field 99 of Envelope, an empty message: a body kind added later.
  expect_rejected(decode_envelope, frame(frame_header()) + std::string("\x9a\x06\x00", 3),
                  "unknown kind");
}

TEST(Codec, FrameOfANewerOrMissingProtocolVersionIsRejected) {
  pb::Envelope p = frame_header();
  p.mutable_probe();
  p.set_protocol_version(kProtocolVersion + 1);
  expect_rejected(decode_envelope, frame(p), "newer version");
  p.set_protocol_version(0);
  expect_rejected(decode_envelope, frame(p), "no version");
}

TEST(Codec, NodeIdZeroIsRejectedWhereANodeIsNamed) {
  pb::Envelope p = frame_header();
  p.mutable_probe();
  p.set_from(0);
  expect_rejected(decode_envelope, frame(p), "from 0");

  p = frame_header();
  p.mutable_push()->add_have(0);
  expect_rejected(decode_envelope, frame(p), "Push.have");

  p = frame_header();
  p.mutable_commit()->add_members()->set_weight(1);
  expect_rejected(decode_envelope, frame(p), "Commit member 0");

  p = frame_header();
  p.mutable_report()->add_entries()->add_bytes()->add_replicas(0);
  expect_rejected(decode_envelope, frame(p), "ReplicaBytes.replicas");

  pb::LogEntry l;
  l.mutable_update()->mutable_record()->add_replicas(0);
  expect_rejected(decode_log_entry, l.SerializeAsString(), "record replica 0");

  // A user map may name no manager for a bucket.
  p = frame_header();
  p.mutable_accept()->add_map(0);
  Envelope out;
  EXPECT_TRUE(decode_envelope(frame(p), out));
}

TEST(Codec, EnumValuesOutOfRangeAreRejected) {
  pb::Envelope p = frame_header();
  p.mutable_op_reply()->set_status(static_cast<pb::Status>(8));
  expect_rejected(decode_envelope, frame(p), "status 8");

  p = frame_header();
  p.mutable_mutate_request()->mutable_update()->set_kind(static_cast<pb::UpdateKind>(-1));
  expect_rejected(decode_envelope, frame(p), "kind -1");

  p = frame_header();
  p.mutable_user_update_request()->set_op(static_cast<pb::UserOp>(100));
  expect_rejected(decode_envelope, frame(p), "op 100");
}

TEST(Codec, ProfileNamingAFolderTwiceIsRejected) {
  pb::Profile p;
  p.add_folders()->set_name("INBOX");
  p.add_folders()->set_name("INBOX");
  expect_rejected(decode_profile, p.SerializeAsString(), "folder twice");
}

TEST(Codec, FailedDecodeLeavesTheOutputUntouched) {
  Envelope e = envelope(Probe{{5, 5}});
  EXPECT_FALSE(decode_envelope(frame(frame_header()), e));
  EXPECT_EQ(e.from, 3u);
  EXPECT_TRUE(same(e.body, Message{Probe{{5, 5}}}));

  MessageRecord r = full_record(4);
  pb::MessageRecord bad;
  bad.set_uid(1);
  bad.add_replicas(0);
  EXPECT_FALSE(decode_record(bad.SerializeAsString(), r));
  EXPECT_EQ(r, full_record(4));
}

TEST(Codec, DecodeWorksWithoutAnErrorString) {
  Envelope e;
  EXPECT_FALSE(decode_envelope("\x07", e));
}

}  // namespace
}  // namespace porcupine::codec
