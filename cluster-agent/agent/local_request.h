/* SPDX-License-Identifier: MIT */
// local_request.h - the local API's requests (agent.proto Request) checked
// on their own, before anything runs: reading one off its frame, and what
// makes a well-formed request wrong whoever sends it and whatever else is
// in flight (BAD_REQUEST). The local server (local_server.cc) adds what
// depends on the connection (who asks, deliveries in progress) and on the
// agent (size limits). Pure functions of the request, so they can be
// tested and fuzzed without a socket or a core.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "agent.pb.h"

namespace porcupine::agent {

// Parses one request frame's bytes; false when they are not a Request (the
// connection is closed: nothing in it can be answered).
bool decode_request(std::string_view bytes, agentpb::Request& out);

// Whether `q` administers users (UserCreate, UserChange, UserList): root,
// the agent's user and local_admin_group only.
bool administers(const agentpb::Request& q);

// Why `q` must be answered BAD_REQUEST (one line), or nothing when it may
// go ahead: missing users, folders and message references, a user to
// create that is not an address the cluster finds again under its own name,
// folder names the cluster cannot store, keywords that are not IMAP atoms
// (at most 64), dates before 1970, unknown operations.
std::optional<std::string> request_problem(const agentpb::Request& q);

}  // namespace porcupine::agent
