// peer_net.h - TCP between agents: authenticated, framed, self-healing.
//
// Frames are a 4-byte big-endian length and that many bytes. A connection
// starts with a Hello and a Proof each way (agent.proto): each side proves
// it knows the cluster secret with an HMAC over both nonces, so a process
// without the secret learns nothing and can send nothing. Every later
// frame carries an HMAC-SHA256 tag (session key from the secret and both
// nonces, direction, frame number), so frames cannot be injected, replayed
// or altered. Frames are not encrypted: run the cluster network on a
// private segment (see docs/agent.md).
//
// A large body (a record body the agent holds in a spool file) crosses as
// BodyChunk frames read from the file as the socket drains, then the
// frame whose record names that transfer; the receiver writes the chunks
// to a staging file and hands the core a body in that file.
//
// Anything wrong on a connection - a bad proof, a bad tag, a frame that
// does not parse, a length over the limit, a peer claiming our own id -
// closes that connection with one log line; nothing else is affected.
// Messages to a peer with no connection are dropped (the core resends)
// while the connection is dialled again with exponential backoff.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange
#include <boost/asio.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "core/wire.h"

namespace porcupine::agent {

class PeerConnection;

class PeerNet {
 public:
  struct Options {
    NodeId self = kNoNode;
    std::string listen;                   // host:port
    std::string secret;                   // the cluster secret (bytes)
    std::map<NodeId, std::string> seeds;  // id -> host:port
    std::int64_t backoff_max_ms = 5000;
    std::size_t max_frame = 64u << 20;    // largest frame (and body in transfer) accepted
    std::string staging_dir;              // where bodies in transfer are written (spool/incoming)
  };
  using OnEnvelope = std::function<void(Envelope)>;
  using LogFn = std::function<void(const std::string&)>;

  PeerNet(boost::asio::io_context& io, Options o, OnEnvelope on_envelope, LogFn log);
  ~PeerNet();

  // Binds and listens; throws std::runtime_error if the address is unusable.
  void start();
  void stop();
  // Sends to e.to (never self); dropped if no authenticated connection yet.
  void send(const Envelope& e);

  bool connected(NodeId n) const;
  const std::map<NodeId, std::string>& addresses() const { return book_; }
  std::uint64_t frames_in() const { return frames_in_; }
  std::uint64_t frames_out() const { return frames_out_; }
  std::uint64_t dropped() const { return dropped_; }

  // ---- for PeerConnection ----
  const Options& options() const { return opt_; }
  void on_ready(const std::shared_ptr<PeerConnection>& c);
  void on_closed(const std::shared_ptr<PeerConnection>& c);
  void on_frame(NodeId from, Envelope e);
  void learn(NodeId n, const std::string& address);
  void log(const std::string& line) { log_(line); }

 private:
  void accept();
  void dial(NodeId n);
  void schedule_dial(NodeId n);

  boost::asio::io_context& io_;
  Options opt_;
  OnEnvelope on_envelope_;
  LogFn log_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::map<NodeId, std::string> book_;  // address book: node -> host:port
  std::map<NodeId, std::set<std::shared_ptr<PeerConnection>>> ready_;
  std::set<std::shared_ptr<PeerConnection>> all_;
  struct Dial {
    std::int64_t backoff_ms = 100;
    bool in_progress = false;
    std::unique_ptr<boost::asio::steady_timer> timer;
  };
  std::map<NodeId, Dial> dials_;
  bool stopped_ = false;
  std::uint64_t frames_in_ = 0, frames_out_ = 0, dropped_ = 0;
};

}  // namespace porcupine::agent
