// SPDX-License-Identifier: MIT
// checks_test.cc - what the agent decides about bytes from outside before
// any socket or core is involved: the handshake between agents
// (agent/handshake.h) and the local API's requests (agent/local_request.h).
// The fuzz targets of tests/fuzz drive the same functions; inputs they
// showed wrong are kept here, so the ordinary build checks them too.
#include <gtest/gtest.h>

#include <string>

#include "agent.pb.h"
#include "agent/handshake.h"
#include "agent/local_request.h"
#include "codec/codec.h"

namespace porcupine::agent {
namespace {

namespace hs = handshake;
namespace pb = agentpb;

const std::string kSecret = "the cluster secret";
const std::string kNonceA(hs::kNonce, 'a');
const std::string kNonceB(hs::kNonce, 'b');

std::string hello(NodeId node, NodeId to_node, const std::string& nonce = kNonceB) {
  pb::Hello h;
  h.set_protocol_version(codec::kProtocolVersion);
  h.set_node_id(node);
  h.set_to_node(to_node);
  h.set_nonce(nonce);
  h.set_listen_address("127.0.0.2:7400");
  (*h.mutable_address_book())[3] = "127.0.0.3:7400";
  return h.SerializeAsString();
}

// ---- the handshake -------------------------------------------------------------

TEST(Handshake, AHelloNamingThisNodeIsTakenWithEverythingItSays) {
  hs::PeerHello p;
  EXPECT_EQ(hs::check_hello(hello(2, 1), {1, false, true}, p), "");
  EXPECT_EQ(p.node, 2u);
  EXPECT_EQ(p.nonce, kNonceB);
  EXPECT_EQ(p.listen_address, "127.0.0.2:7400");
  EXPECT_EQ(p.address_book.at(3), "127.0.0.3:7400");
}

TEST(Handshake, RefusedHellosSayWhy) {
  const hs::Side responder{1, false, true};
  hs::PeerHello p;
  EXPECT_EQ(hs::check_hello("\x07", responder, p), "malformed hello");
  EXPECT_EQ(hs::check_hello(hello(2, 1, "short"), responder, p), "malformed hello");
  EXPECT_EQ(hs::check_hello(hello(0, 1), responder, p), "malformed hello");
  EXPECT_EQ(hs::check_hello(hello(1, 1), responder, p), "peer claims this node's id 1");
  EXPECT_EQ(hs::check_hello(hello(2, 3), responder, p), "n2 dialled n3, not this node (a relayed connection?)");
  EXPECT_EQ(hs::check_hello(hello(2, 0), responder, p), "hello names no destination node");
  EXPECT_EQ(p.node, kNoNode) << "a refused Hello fills nothing";
  // In clear (an agent before TLS names no node), and on the dialling side.
  EXPECT_EQ(hs::check_hello(hello(2, 0), {1, false, false}, p), "");
  EXPECT_EQ(hs::check_hello(hello(2, 0), {1, true, true}, p), "");
}

TEST(Handshake, EachSideAcceptsTheOthersProofAndOnlyWithTheSecret) {
  const hs::Side a{1, true, true}, b{2, false, true};
  const std::string from_a = hs::make_proof(kSecret, a, kNonceA, kNonceB);
  const std::string from_b = hs::make_proof(kSecret, b, kNonceB, kNonceA);
  EXPECT_TRUE(hs::check_proof(from_a, kSecret, b, kNonceB, kNonceA, 1));
  EXPECT_TRUE(hs::check_proof(from_b, kSecret, a, kNonceA, kNonceB, 2));
  EXPECT_FALSE(hs::check_proof(from_a, "another secret", b, kNonceB, kNonceA, 1));
  EXPECT_FALSE(hs::check_proof(from_a, kSecret, b, kNonceB, kNonceA, 3)) << "claiming another id";
  EXPECT_FALSE(hs::check_proof(from_b, kSecret, b, kNonceB, kNonceA, 2)) << "a proof sent back";
  EXPECT_FALSE(hs::check_proof("", kSecret, b, kNonceB, kNonceA, 1));
}

TEST(Handshake, FramesAreTaggedPerDirectionAndNumber) {
  const std::string session = hs::session_key(kSecret, kNonceA, kNonceB);
  const std::string frame = hs::frame_tag(session, true, 0, "payload") + "payload";
  std::string_view payload;
  EXPECT_EQ(hs::check_tag(frame, session, true, 0, payload), "");
  EXPECT_EQ(payload, "payload");
  EXPECT_EQ(hs::check_tag(frame, session, true, 1, payload), "frame with a bad tag") << "replayed";
  EXPECT_EQ(hs::check_tag(frame, session, false, 0, payload), "frame with a bad tag") << "reflected";
  EXPECT_EQ(hs::check_tag("short", session, true, 0, payload), "frame shorter than its tag");
}

// ---- the local API -----------------------------------------------------------------

pb::Request create(const std::string& user) {
  pb::Request q;
  q.mutable_user_create()->set_user(user);
  return q;
}

TEST(LocalRequest, AUserIsCreatedOnlyUnderANameThatFindsItAgain) {
  EXPECT_EQ(request_problem(create("alice@example.org")), std::nullopt);
  EXPECT_EQ(request_problem(create("<Alice@Example.org>")), std::nullopt);
  EXPECT_EQ(request_problem(create("alice")), "user must be an address (local@domain)");
  // fuzz_local_request's regression: the cluster would keep these as
  // "alice@example.org " and "<alice@example.org>", and list them so, but
  // asking for either name finds nothing.
  EXPECT_EQ(request_problem(create("<alice@example.org >")), "user must be an address (local@domain)");
  EXPECT_EQ(request_problem(create("<<alice@example.org>>")), "user must be an address (local@domain)");
}

TEST(LocalRequest, WrongRequestsAreRefusedWithAReason) {
  pb::Request q;
  EXPECT_EQ(request_problem(q), "unknown or missing operation");
  q.mutable_user_get();
  EXPECT_EQ(request_problem(q), "user is empty");
  q.mutable_user_change()->set_user("alice@example.org");
  q.mutable_user_change()->set_op(static_cast<pb::UserChange::Op>(99));
  EXPECT_EQ(request_problem(q), "unknown change");
  auto* b = q.mutable_deliver_begin();
  EXPECT_EQ(request_problem(q), "no recipients");
  b->add_recipients("alice@example.org");
  EXPECT_EQ(request_problem(q), std::nullopt);
  b->set_folder("bad\nname");
  EXPECT_TRUE(request_problem(q).has_value());
  b->set_folder("INBOX");
  b->add_keywords("\\Seen");
  EXPECT_EQ(request_problem(q), "not an IMAP keyword: \\Seen");
  q.mutable_set_flags()->mutable_ref()->set_origin(3);
  EXPECT_EQ(request_problem(q), "message reference is incomplete");
  q.mutable_folder_delete()->set_user("alice@example.org");
  q.mutable_folder_delete()->set_folder("INBOX");
  EXPECT_EQ(request_problem(q), "user and a folder other than INBOX are required");
}

TEST(LocalRequest, OnlyUserAndNodeAdministrationNeedAnAdministrator) {
  pb::Request q;
  q.mutable_user_list();
  EXPECT_TRUE(administers(q));
  q.mutable_user_change();
  EXPECT_TRUE(administers(q));
  q.mutable_node_admin()->set_node(3);
  EXPECT_TRUE(administers(q));
  q.mutable_user_auth();
  EXPECT_FALSE(administers(q));
  q.mutable_status();
  EXPECT_FALSE(administers(q));
}

TEST(LocalRequest, NodeAdministrationNamesANodeAndAKnownState) {
  pb::Request q;
  q.mutable_node_admin()->set_state(pb::NodeAdmin::DRAIN);
  EXPECT_EQ(request_problem(q), "node id missing");
  q.mutable_node_admin()->set_node(4);
  EXPECT_EQ(request_problem(q), std::nullopt);
  q.mutable_node_admin()->set_state(static_cast<pb::NodeAdmin::State>(9));
  EXPECT_EQ(request_problem(q), "unknown node state");
}

TEST(LocalRequest, AnOpenNamesOneUsersMessagesAtMost128AndTakesDescriptors) {
  pb::Request q;
  auto* o = q.mutable_open();
  EXPECT_EQ(request_problem(q), "no message references");
  auto add = [o](const char* user, std::uint32_t origin) {
    auto* r = o->add_refs();
    r->set_user(user);
    r->set_origin(origin);
    r->set_seq(1);
    r->add_replicas(1);
  };
  add("<Ann@example.org>", 1);
  EXPECT_EQ(request_problem(q), "Open answers with file descriptors only: set pass_fds");
  o->set_pass_fds(true);
  EXPECT_EQ(request_problem(q), std::nullopt);
  add("ann@example.org", 2);  // the same user, however spelled
  EXPECT_EQ(request_problem(q), std::nullopt);
  add("ann@example.org", 0);
  EXPECT_EQ(request_problem(q), "message reference is empty");
  o->mutable_refs()->RemoveLast();
  add("bob@example.org", 3);
  EXPECT_EQ(request_problem(q), "an Open names one user's messages");
  o->mutable_refs()->RemoveLast();
  o->set_part(pb::Open::HEADER);
  EXPECT_EQ(request_problem(q), std::nullopt);
  o->set_part(static_cast<pb::Open::Part>(7));
  EXPECT_EQ(request_problem(q), "unknown part");
  o->set_part(pb::Open::WHOLE);
  while (o->refs_size() < 128) add("ann@example.org", 4);
  EXPECT_EQ(request_problem(q), std::nullopt);
  add("ann@example.org", 5);
  EXPECT_EQ(request_problem(q), "more than 128 messages in one Open");
  o->clear_refs();
  add("", 1);
  EXPECT_EQ(request_problem(q), "user is empty");
}

TEST(LocalRequest, BytesThatAreNotARequestAreNotDecoded) {
  pb::Request q;
  EXPECT_FALSE(decode_request("\x07", q));
  EXPECT_TRUE(decode_request(create("alice@example.org").SerializeAsString(), q));
  EXPECT_EQ(q.user_create().user(), "alice@example.org");
}

}  // namespace
}  // namespace porcupine::agent
