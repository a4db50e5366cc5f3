// SPDX-License-Identifier: MIT
// fuzz_local_request.cc - libFuzzer target: one request frame on the local
// API's socket, decoded and checked as local_server.cc does before
// anything reaches the core (agent/local_request.h).
//
// Beyond not crashing: a refusal has a one-line reason, and the response
// carrying it is one a client can parse (Response.detail is a proto3
// string, which must be UTF-8 or the client's parse fails); a user that
// may be created is found again under the name the cluster keeps for it.
#include <cstdint>
#include <string>
#include <string_view>

#include "agent.pb.h"
#include "agent/local_request.h"
#include "core/hash.h"
#include "fuzz_check.h"

using namespace porcupine;
using fuzz::check;
namespace pb = porcupine::agentpb;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_protobuf();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  pb::Request q;
  if (!agent::decode_request(std::string_view(reinterpret_cast<const char*>(data), size), q)) return 0;
  const bool admin = agent::administers(q);
  check(!admin || q.op_case() == pb::Request::kUserCreate || q.op_case() == pb::Request::kUserChange ||
            q.op_case() == pb::Request::kUserList || q.op_case() == pb::Request::kNodeAdmin,
        "only user and node administration needs an administrator");
  if (auto why = agent::request_problem(q)) {
    check(fuzz::one_line(*why), "a refused request has a one-line reason");
    pb::Response r;
    r.set_id(q.id());
    r.set_code(pb::BAD_REQUEST);
    r.set_detail(*why);
    pb::Response parsed;
    check(parsed.ParseFromString(r.SerializeAsString()) && parsed.detail() == *why,
          "the refusal reaches the client intact");
    return 0;
  }
  check(q.op_case() != pb::Request::OP_NOT_SET, "a request without an operation is refused");
  // The core keeps a user under canonical_user(name) and lists it so; that
  // name must find the same user again.
  if (q.op_case() == pb::Request::kUserCreate) {
    const std::string kept = canonical_user(q.user_create().user());
    check(canonical_user(kept) == kept, "a user created is found under the name the cluster keeps");
  }
  return 0;
}
