// SPDX-License-Identifier: MIT
// make_seeds.cc - writes the seed corpora of the fuzz targets
// (corpus/<target>/) and fuzz_config.dict: a few valid inputs of each kind
// for the fuzzers to start from. The output is committed; run it again
// when a format changes:
//
//   build-fuzz/tests/fuzz/fuzz_make_seeds tests/fuzz
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "agent.pb.h"
#include "agent/handshake.h"
#include "client/frame.h"
#include "codec/codec.h"
#include "config/config.h"
#include "handshake_fixture.h"

namespace fs = std::filesystem;
using namespace porcupine;
namespace hs = porcupine::agent::handshake;
namespace pb = porcupine::agentpb;

namespace {

fs::path out_dir;

void write(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::path dir = out_dir / "corpus" / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

MessageRecord record(std::uint64_t seq) {
  MessageRecord r;
  r.id = {3, seq};
  r.user = "alice@example.org";
  r.folder = "INBOX";
  r.replicas = {3, 5};
  r.has_body = true;
  r.body = std::string("From: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n");
  r.size = r.body.size();
  r.internal_date = 1'700'000'000'123;
  r.uidvalidity = 42;
  r.uid = 17;
  r.uid_version = {1'700'000'000'200, 3};
  r.flags = kSeen | kFlagged;
  r.keywords = {"$Label1"};
  r.flags_version = {1'700'000'000'300, 5};
  r.flag_marks = {{"\\Answered", true, {1'700'000'000'310, 2}}};
  return r;
}

Profile profile() {
  Profile p;
  p.user = "alice@example.org";
  p.version = {1'700'000'001'000, 2};
  p.password_hash = "{SHA512-CRYPT}$6$salt$hash";
  p.quota_bytes = 1 << 20;
  p.enabled = true;
  p.holders = {2, 3};
  return p;
}

Update update(Update::Kind kind) {
  Update u;
  u.id = {1'700'000'002'000, 3};
  u.kind = kind;
  u.coordinator = 3;
  u.replicas = {3, 5};
  u.record = record(11);
  if (kind == Update::Kind::Profile) u.profile = profile();
  return u;
}

std::vector<std::pair<std::string, Message>> messages() {
  const Epoch epoch{1'700'000'003'000, 4};
  return {
      {"probe", Probe{epoch}},
      {"accept", Accept{.epoch = epoch, .weight = 3, .map_epoch = {1'600'000'000'000, 2}, .map = {1, 2, 2, 0},
                        .known = {1, 2, 9}}},
      {"commit", Commit{.epoch = epoch, .members = {{1, 1}, {2, 3}}, .map = {1, 2, 2, 2}}},
      {"report", Report{.epoch = epoch,
                        .complete = {0, 5},
                        .users = {"alice@example.org"},
                        .generations = {7},
                        .entries = {{"alice@example.org", "INBOX", {{42, 1, 17, 12, {1'700'000'000'900, 3}, {}}}, 12}},
                        .profiles = {profile()},
                        .handoffs = {}}},
      {"alloc_request", AllocRequest{101, "alice@example.org", "INBOX", 4096, {}}},
      {"store_request", StoreRequest{106, update(Update::Kind::Store)}},
      {"mutate_request", MutateRequest{107, update(Update::Kind::Flags)}},
      {"push_profile", Push{update(Update::Kind::Profile), {3, 5}}},
      {"list_reply", ListReply{110, {record(1), record(2)}}},
      {"fetch_reply_transfer", FetchReply{112, Status::Ok, Body::in_transfer(4, 51)}},
      {"fetch_request_header", FetchRequest{111, {3, 99}, "alice@example.org", FetchPart::Header}},
      {"fetch_reply_header", FetchReply{112, Status::Ok, "Subject: x\r\n\r\n", FetchPart::Header}},
      {"user_update", UserUpdateRequest{.req = 115, .user = "alice@example.org",
                                        .op = UserUpdateRequest::Op::RenameFolder, .password_hash = "",
                                        .quota_bytes = 0, .folder = "Old", .to_folder = "New"}},
  };
}

std::string envelope(const Message& m) { return codec::encode_envelope(Envelope{.from = 2, .to = 1, .load = 5, .body = m}); }

void peer_frames() {
  for (const auto& [name, m] : messages()) write("fuzz_peer_frame", name, envelope(m));
  write("fuzz_peer_frame", "body_chunk", codec::encode_body_chunk({4, "hello\r\n", {}, true}));
}

// A whole conversation from peer n2: Hello, a Proof made with the secret,
// then tagged frames.
void handshakes() {
  const std::string peer_nonce(hs::kNonce, '\x33');
  for (unsigned char mode : {0, 1, 2, 3, 2 | 4 | 8, 1 | 4 | 8}) {
    const bool initiator = mode & fuzz::kInitiator;
    pb::Hello h;
    h.set_protocol_version(codec::kProtocolVersion);
    h.set_node_id(2);
    h.set_to_node(initiator ? 0 : fuzz::kHandshakeSelf);  // the peer dialled this side
    h.set_listen_address("127.0.0.2:7400");
    h.set_nonce(peer_nonce);
    h.set_body_transfers(true);
    (*h.mutable_address_book())[3] = "127.0.0.3:7400";
    const hs::Side peer{2, !initiator, bool(mode & fuzz::kTls)};
    std::string wire(1, static_cast<char>(mode));
    wire += frame::wrap(h.SerializeAsString());
    wire += frame::wrap(hs::make_proof(fuzz::kHandshakeSecret, peer, peer_nonce, fuzz::kHandshakeNonce));
    const std::string session = hs::session_key(fuzz::kHandshakeSecret, initiator ? fuzz::kHandshakeNonce : peer_nonce,
                                                initiator ? peer_nonce : fuzz::kHandshakeNonce);
    std::uint64_t seq = 0;
    for (const std::string& payload :
         {envelope(Probe{{1'700'000'003'000, 2}}), codec::encode_body_chunk({1, "body", {}, true}),
          envelope(StoreRequest{106, update(Update::Kind::Store)})}) {
      const bool sign = mode & fuzz::kSignFrames;
      wire += frame::wrap(sign ? payload : hs::frame_tag(session, !initiator, seq, payload) + payload);
      ++seq;
    }
    write("fuzz_handshake", "mode" + std::to_string(mode), wire);
  }
}

void local_requests() {
  auto ref = [](pb::MessageRef* r) {
    r->set_origin(3);
    r->set_seq(9);
    r->add_replicas(3);
    r->add_replicas(5);
    r->set_user("alice@example.org");
    r->set_folder("INBOX");
  };
  std::vector<std::pair<std::string, pb::Request>> rs;
  auto add = [&](const std::string& name) -> pb::Request& {
    rs.emplace_back(name, pb::Request());
    pb::Request& q = rs.back().second;
    q.set_id(rs.size());
    q.set_timeout_ms(5000);
    return q;
  };
  add("user_get").mutable_user_get()->set_user("alice@example.org");
  {
    auto* a = add("user_auth").mutable_user_auth();
    a->set_user("alice@example.org");
    a->set_password("secret");
  }
  {
    auto* c = add("user_create").mutable_user_create();
    c->set_user("alice@example.org");
    c->set_password_hash("{PLAIN}secret");
  }
  {
    // Angle brackets and capitals, which the cluster's name for the user drops.
    auto* c = add("user_create_bracketed").mutable_user_create();
    c->set_user("<Alice@Example.org>");
    c->set_password_hash("{SHA512-CRYPT}$6$salt$hash");
  }
  {
    auto* c = add("user_change").mutable_user_change();
    c->set_user("alice@example.org");
    c->set_op(pb::UserChange::SET_QUOTA);
    c->set_quota_bytes(1 << 20);
  }
  add("user_list").mutable_user_list();
  {
    auto* b = add("deliver_begin").mutable_deliver_begin();
    b->add_recipients("alice@example.org");
    b->add_recipients("bob@example.org");
    b->set_folder("Archive/2024");
    b->set_size_hint(100);
    b->set_internal_date_ms(1'700'000'000'000);
    b->set_flags(kSeen);
    b->add_keywords("$Label1");
  }
  {
    auto* c = add("deliver_chunk").mutable_deliver_chunk();
    c->set_data("Subject: hi\r\n\r\nhello\r\n");
    c->set_last(true);
  }
  {
    auto* l = add("folder_list").mutable_folder_list();
    l->set_user("alice@example.org");
    l->set_digest_only(true);
  }
  ref(add("fetch").mutable_fetch()->mutable_ref());
  {
    auto* f = add("set_flags").mutable_set_flags();
    ref(f->mutable_ref());
    f->set_flags(kSeen | kDeleted);
    f->add_keywords("NonJunk");
  }
  {
    auto* f = add("change_flags").mutable_change_flags();
    ref(f->mutable_ref());
    f->set_add_flags(kAnswered);
    f->add_add_keywords("$Forwarded");
    f->add_remove_keywords("$Label1");
  }
  {
    auto* r = add("renumber").mutable_renumber();
    ref(r->mutable_ref());
    r->set_uidvalidity(42);
    r->set_uid(7);
    r->set_above(9);
  }
  ref(add("expunge").mutable_expunge()->mutable_ref());
  add("status").mutable_status();
  {
    auto* m = add("move").mutable_move();
    ref(m->mutable_ref());
    m->set_to_folder("Trash");
  }
  add("folders").mutable_folders()->set_user("alice@example.org");
  {
    auto* c = add("folder_create").mutable_folder_create();
    c->set_user("alice@example.org");
    c->set_folder("Lists/porcupine");
  }
  {
    auto* d = add("folder_delete").mutable_folder_delete();
    d->set_user("alice@example.org");
    d->set_folder("Lists");
  }
  {
    auto* r = add("folder_rename").mutable_folder_rename();
    r->set_user("alice@example.org");
    r->set_from("INBOX");
    r->set_to("Old mail");
  }
  {
    auto* s = add("folder_subscribe").mutable_folder_subscribe();
    s->set_user("alice@example.org");
    s->set_folder("Lists");
    s->set_on(true);
  }
  for (const auto& [name, q] : rs) write("fuzz_local_request", name, q.SerializeAsString());
}

void configs() {
  write("fuzz_config", "minimal", "node_id = 1\n");
  write("fuzz_config", "example",
        "# porcupine.conf\n"
        "node_id = 1\n"
        "listen_address = 10.0.0.1:7400\n"
        "peers = 1@10.0.0.1:7400, 2@10.0.0.2:7400,\n"
        "    3@[::1]:7400\n"
        "secret_file = /etc/porcupine/secret\n"
        "spool_directory = /var/lib/porcupine/spool\n"
        "local_socket_group = mail\n"
        "replication_factor = 2\n"
        "spread = 2\n"
        "probe_timeout_ms = 2s\n"
        "death_certificate_ttl = 7d\n"
        "peer_security = both\n"
        "log_to = stderr\n"
        "cluster_domains = example.org, example.com\n");
  write("fuzz_config", "expansion",
        "node_id = 2\n"
        "spool_directory = /srv/porcupine\n"
        "redis_socket = ${spool_directory}/redis.sock\n"
        "local_socket = $(spool_directory)/agent.sock\n"
        "milter_socket = $spool_directory/milter.sock\n"
        "milter_trace_header = X-Porcupine-$$node\n");
  write("fuzz_config", "overrides",
        std::string("node_id = 3\nlisten_address = 0.0.0.0:7400\n") + '\0' + "spread = 3" + '\0' +
            "secret_file = $spool_directory/secret");
  // Every parameter's name and type words, for the fuzzer to splice in.
  std::ofstream dict(out_dir / "fuzz_config.dict");
  dict << "# Parameter names of porcupine.conf (written by make_seeds.cc).\n";
  for (const auto& p : config::parameters()) dict << "\"" << p.name << "\"\n";
  for (const char* w : {" = ", "$", "${", "$(", "$$", "}", ")", "\\x0a ", "#", "ms", "s", "m", "h", "d", "yes", "no",
                        "@", ":", "[::1]", ",", "\\x00", "tls", "both", "legacy", "stderr", "syslog"})
    dict << "\"" << w << "\"\n";
}

void addresses() {
  const char* rows[] = {
      "<alice@example.org>",
      "Alice@EXAMPLE.Org",
      "<bob@example.net.>",
      "<carol@example.com>",
      "<\"b\\\"o\\\\b\"@example.org>",
      "<\"bob smith\"@example.org>",
      "<@a.example.com,@b.example.com:bob@example.org>",
      "<postmaster>",
  };
  int i = 0;
  for (const char* r : rows) write("fuzz_milter_address", "rcpt" + std::to_string(++i), r);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_make_seeds DIR (tests/fuzz)\n";
    return 2;
  }
  out_dir = argv[1];
  peer_frames();
  handshakes();
  local_requests();
  configs();
  addresses();
  return 0;
}
