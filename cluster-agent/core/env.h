/* SPDX-License-Identifier: MIT */
// env.h - the effects a node's core produces: messages to send, replies to
// local clients, log lines. The shell (agent or simulator) implements it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "records.h"
#include "wire.h"

namespace porcupine {

// One recipient's outcome of a delivery to several (Node::deliver_all).
struct Delivered {
  std::string recipient;         // as given
  std::string user;              // canonical (canonical_user)
  Status status = Status::Ok;
  std::string detail;
  MsgId msg;
  std::uint32_t uidvalidity = 0, uid = 0;
  std::vector<NodeId> replicas;
};

// The answer to one local client operation (deliver, flags, expunge,
// create user, list). `req` is the id the client passed in.
struct ClientReply {
  std::uint64_t req = 0;
  Status status = Status::Ok;
  std::string detail;              // human-readable reason on failure
  MsgId msg;                       // deliver: the new message
  std::uint32_t uidvalidity = 0;   // deliver; list: the folder's UIDVALIDITY
  std::uint32_t uid = 0;           // deliver; list: the next UID
  std::vector<NodeId> replicas;    // deliver: where it is stored
  std::vector<MessageRecord> records;  // list: merged view, bodies stripped
  // list: the live members whose records the view includes (those that
  // answered, and those with nothing of the user's to say). A message
  // absent from `records` none of whose replicas is here may just be out
  // of reach, not gone.
  std::vector<NodeId> reachable;
  // list: a digest of everything the listing shows (and of which nodes
  // answered): equal digests, nothing changed. With digest_only, the
  // records are not sent.
  std::uint64_t folder_digest = 0;
  Body body;                           // fetch (a large one: in its spool file)
  FetchPart part = FetchPart::Whole;   // fetch: what `body` is (FetchReply::part)
  bool cut = false;                    // fetch, Header: the first kHeaderPartMax bytes only
  std::optional<Profile> profile;      // get_user
  NodeId manager = kNoNode;            // get_user: the node that answered as the user's manager
  std::vector<std::string> users;      // list_users, sorted
  // user_usage; get_user: the manager's count, when it has one
  std::optional<std::uint64_t> used_bytes;
  std::vector<Delivered> delivered;    // deliver_all: one per recipient, in order
};

class Env {
 public:
  virtual ~Env() = default;
  // Delivers asynchronously, never by calling back into the node (a
  // message to self included).
  virtual void send(Envelope e) = 0;
  virtual void reply(ClientReply r) = 0;
  virtual void log(const std::string& line) = 0;
  // The wall clock, ms since 1970: for what is compared across nodes or
  // kept on disk (version stamps, epochs, UIDVALIDITY, internal dates,
  // the age of a death certificate or a delivery key). The `now` the
  // shell passes to every call is a monotonic clock, for deadlines and
  // timers only, so a step of the wall clock moves no timer.
  virtual Time wall() const = 0;
};

}  // namespace porcupine
