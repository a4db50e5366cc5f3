/* SPDX-License-Identifier: MIT */
// local_server.h - the agent's local API on a unix socket (agent.proto:
// Request/Response frames), for the milter, the Dovecot plugin and
// porcupinectl.
//
// The socket is created mode 0660, group local_socket_group, so only root
// and that group (postfix and dovecot are put in it) can connect. User
// administration (create, change, list) is further kept to root, the
// agent's user and local_admin_group, by the connection's peer credentials
// (SO_PEERCRED); no answer carries a password hash, and a user's failed
// password checks are limited (Node::authenticate). Requests
// on one connection may be pipelined; each gets exactly one Response with
// its id. A malformed frame or request closes that connection with a log
// line; a request that is well-formed but wrong gets BAD_REQUEST.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange
#include <boost/asio.hpp>
#include <memory>
#include <set>

#include "core/wire.h"

namespace porcupine::agent {

class Agent;
class LocalConnection;

class LocalServer {
 public:
  LocalServer(boost::asio::io_context& io, Agent& agent);
  ~LocalServer();
  void start();  // throws std::runtime_error if the socket cannot be created
  void stop();
  void closed(const std::shared_ptr<LocalConnection>& c) { conns_.erase(c); }
  // What Open fetched from holders since the start (Status): whole
  // bodies and header parts, and their bytes.
  struct Fetched {
    std::uint64_t whole = 0, whole_bytes = 0, headers = 0, header_bytes = 0;
  };
  const Fetched& fetched() const { return fetched_; }
  void count_fetch(FetchPart part, std::uint64_t bytes) {
    if (part == FetchPart::Header) {
      ++fetched_.headers;
      fetched_.header_bytes += bytes;
    } else {
      ++fetched_.whole;
      fetched_.whole_bytes += bytes;
    }
  }

 private:
  void accept();
  boost::asio::io_context& io_;
  Agent& agent_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  std::set<std::shared_ptr<LocalConnection>> conns_;
  Fetched fetched_;
  bool stopped_ = false;
};

}  // namespace porcupine::agent
