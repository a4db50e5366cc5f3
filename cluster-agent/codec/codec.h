/* SPDX-License-Identifier: MIT */
// codec.h - the cluster core's messages and hard state as bytes.
//
// Internode frames carry one Envelope each; Redis values carry one record,
// profile or log entry each. The schema is cluster-agent/proto/porcupine.proto
// (protobuf, proto3): fields are only ever added, never renumbered, so
// agents of neighbouring versions understand each other during a rolling
// upgrade and unknown fields are skipped.
//
// Decoding never throws and never trusts its input: anything malformed,
// out of range or of an unknown message kind is a false return with a
// one-line reason.
#pragma once

#include <string>
#include <string_view>

#include "core/durable.h"
#include "core/records.h"
#include "core/wire.h"

namespace porcupine::codec {

// The wire protocol version this build speaks (carried in every frame).
constexpr std::uint32_t kProtocolVersion = 1;

// decode_frame's error for a well-formed frame whose body is of a kind
// this build does not know (a newer peer's): the transport drops the
// frame and keeps the connection, so new kinds can be added in a rolling
// upgrade.
constexpr std::string_view kUnknownMessage = "Envelope: no body (a message kind this build does not know?)";

// A file body must be turned into a transfer first (the peer transport
// does): encoding one throws std::invalid_argument.
std::string encode_envelope(const Envelope& e);
bool decode_envelope(std::string_view bytes, Envelope& out, std::string* error = nullptr);

// The peer transport's chunk of a body in transfer (porcupine.proto BodyChunk).
struct BodyChunk {
  std::uint64_t transfer = 0;
  std::string_view data;   // encode: the bytes to send
  std::string data_owned;  // decode: the bytes received
  bool last = false;
};
std::string encode_body_chunk(const BodyChunk& b);
// A frame off a peer connection: an Envelope, or (is_chunk) a BodyChunk.
bool decode_frame(std::string_view bytes, Envelope& out, BodyChunk& chunk, bool& is_chunk,
                  std::string* error = nullptr);

// State at rest. Message bodies are never included: they live in spool
// files (a record's has_body says whether this node holds one).
std::string encode_record(const MessageRecord& r);
bool decode_record(std::string_view bytes, MessageRecord& out, std::string* error = nullptr);
std::string encode_profile(const Profile& p);
bool decode_profile(std::string_view bytes, Profile& out, std::string* error = nullptr);
// What this node has been told of other nodes (drain, gone).
std::string encode_admin(const AdminMap& a);
bool decode_admin(std::string_view bytes, AdminMap& out, std::string* error = nullptr);
// A Store update's body is left out; the store re-attaches it on load.
std::string encode_log_entry(const LogEntry& e);
bool decode_log_entry(std::string_view bytes, LogEntry& out, std::string* error = nullptr);

}  // namespace porcupine::codec
