/* SPDX-License-Identifier: MIT */
// client.h - the C++ client of the agent's local API (agent.proto).
//
// Blocking, one connection, one request at a time; every call has a
// deadline (the timeout given at construction) and reports failure as a
// false/empty result with a one-line reason, never an exception.
#pragma once

#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <vector>

#include "agent.pb.h"

namespace porcupine::client {

class Client {
 public:
  explicit Client(std::string socket_path, int timeout_ms = 10000);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connect();
  // Sends `req` (its id is set here) and waits for its Response.
  std::optional<agentpb::Response> call(agentpb::Request& req);
  // call() answered into `out` (which may be on an arena: a listing of
  // thousands of messages parses without an allocation each); false on
  // failure (error()).
  bool call_into(agentpb::Request& req, agentpb::Response& out);
  // call() for a request answered with file descriptors (Open): they come
  // in `fds` (the caller owns them), fd_count of the response; the wait
  // is longer by `extra_ms`. Descriptors that came with any other answer
  // are closed.
  std::optional<agentpb::Response> call_fds(agentpb::Request& req, std::int64_t extra_ms, std::vector<int>& fds);
  // Sends every request (ids set here), at most `window` unanswered at a
  // time, and collects the answers, which the agent gives in any order;
  // the timeout is the longest wait for the next answer (a batch of
  // thousands may take longer in all). An entry stays empty when the
  // connection failed or the wait passed before its answer (error()).
  std::vector<std::optional<agentpb::Response>> call_many(std::vector<agentpb::Request>& reqs,
                                                          std::size_t window = 64);
  // Streams the body in chunks of `chunk` bytes. `begin` may carry the
  // message's internal date, flags and keywords (its recipients and folder
  // are set here).
  std::optional<agentpb::Response> deliver(const std::vector<std::string>& recipients,
                                           const std::string& folder, std::istream& body,
                                           std::size_t chunk = 256 * 1024,
                                           const agentpb::DeliverBegin& begin = {});
  const std::string& error() const { return error_; }

 private:
  bool send_frame(const std::string& bytes);
  std::optional<agentpb::Response> read_response();
  bool read_response_into(agentpb::Response& r);
  std::optional<agentpb::Response> wait_response(std::uint64_t id);
  bool read_exact(char* p, std::size_t n);
  void close_fds(std::vector<int>& fds);

  std::string path_;
  int timeout_ms_;
  int fd_ = -1;
  std::int64_t deadline_ = 0;
  std::uint64_t next_id_ = 1;
  std::string error_;
  // Descriptors that came with the frame being read (SCM_RIGHTS), then
  // with the last response read.
  std::vector<int> fds_;
  std::vector<int> response_fds_;
};

// "OK", "TEMPFAIL", ... for messages and exit codes.
const char* code_name(agentpb::Code c);

}  // namespace porcupine::client
