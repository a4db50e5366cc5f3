/* SPDX-License-Identifier: MIT */
// peer_net.h - TCP between agents: TLS 1.3, authenticated, framed,
// self-healing.
//
// A connection is TLS 1.3 with an external pre-shared key derived from the
// cluster secret (no certificates; a process without the secret fails the
// handshake and learns nothing). Inside, frames are a 4-byte big-endian
// length and that many bytes, starting with a Hello and a Proof each way
// (agent.proto): each side proves it knows the secret with an HMAC over
// both nonces and its id, and the dialling side names the node it dialled
// (to_node), which a responder that is not that node refuses, so a
// relayed dial goes nowhere. Every later frame carries an HMAC-SHA256 tag
// (session key from the secret and both nonces, direction, frame number).
// Security::Both and ::Legacy speak the old handshake in clear (a rolling
// upgrade from agents before TLS): docs/wire.md.
//
// A large body (a record body the agent holds in a spool file) crosses as
// BodyChunk frames read from the file as the socket drains, then the
// frame whose record names that transfer; the receiver writes the chunks
// to a staging file and hands the core a body in that file. A body it
// cannot stage (the disk refused: full) is refused alone: its remaining
// chunks are read and dropped, and so is the frame that names it, as if
// lost on the way (its sender keeps it and sends it again); the
// connection and everything else on it go on.
//
// Anything wrong on a connection - a bad proof, a bad tag, a frame that
// does not parse, a length over the limit, a peer claiming our own id -
// closes that connection with one log line; nothing else is affected.
//
// Strangers are bounded: a connection must finish its handshake within
// handshake_timeout_ms; at most max_unauthenticated_per_address accepted
// connections from one address may be in their handshake at once (any
// more are closed as they are accepted), and at most max_unauthenticated
// in all (a new one then closes the oldest still in its handshake: a
// peer's handshake takes milliseconds, so strangers holding connections
// open cannot keep a peer out); when the
// process is out of file descriptors, accepting pauses briefly instead of
// spinning; and lines about unauthenticated connections are rate-limited
// (stranger_log_burst per 10 s, then one line counting what was left out).
// Messages to a peer with no connection are dropped (the core resends)
// while the connection is dialled again with exponential backoff. A dial
// refused (no process listens at the peer's address) is told to the
// owner at once: it is the quickest sign that a peer went down.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
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
  // How connections are secured: TLS 1.3 with a key derived from the
  // cluster secret (dial and accept); Both (dial the old handshake, accept
  // either: for a rolling upgrade from agents before TLS); Legacy (the old
  // handshake only).
  enum class Security { Tls, Both, Legacy };
  struct Options {
    NodeId self = kNoNode;
    Security security = Security::Tls;
    std::string listen;                   // host:port
    std::string source_address;           // connections to peers leave from it (empty: the kernel's choice)
    std::string secret;                   // the cluster secret (bytes)
    std::map<NodeId, std::string> seeds;  // id -> host:port
    std::int64_t backoff_max_ms = 5000;
    std::size_t max_frame = 64u << 20;    // largest frame (and body in transfer) accepted
    std::string staging_dir;              // where bodies in transfer are written (spool/incoming)
    std::function<void()> on_staging_failed;  // a body could not be staged (the disk may be full)
    // A dial to a peer was refused (nothing listens at its address: the
    // process is not running). A connection that closes is dialled again
    // within dial_after_close_ms, so a killed peer is known in that time.
    std::function<void(NodeId)> on_refused;
    std::function<void(NodeId)> on_connected;  // the first authenticated connection with a peer is up
    std::int64_t dial_after_close_ms = 50;
    std::int64_t handshake_timeout_ms = 10000;
    std::size_t max_unauthenticated = 64;
    std::size_t max_unauthenticated_per_address = 8;
    std::size_t stranger_log_burst = 20;
  };
  using OnEnvelope = std::function<void(Envelope)>;
  using LogFn = std::function<void(const std::string&)>;

  PeerNet(boost::asio::io_context& io, Options o, OnEnvelope on_envelope, LogFn log);
  ~PeerNet();

  // Binds and listens; throws std::runtime_error if the address is unusable.
  void start();
  void stop();
  // Sends to e.to (never self); dropped if no authenticated connection yet.
  void send(Envelope e);

  bool connected(NodeId n) const;
  const std::map<NodeId, std::string>& addresses() const { return book_; }
  std::uint64_t frames_in() const { return frames_in_; }
  std::uint64_t frames_out() const { return frames_out_; }
  std::uint64_t dropped() const { return dropped_; }
  // Frames dropped because the body they carry could not be staged.
  std::uint64_t transfers_refused() const { return transfers_refused_; }
  // Accepted connections refused at once (over the caps above), and those
  // closed before their handshake finished (any reason).
  std::uint64_t strangers_refused() const { return strangers_refused_; }
  std::uint64_t handshakes_failed() const { return handshakes_failed_; }

  // ---- for PeerConnection ----
  const Options& options() const { return opt_; }
  boost::asio::ssl::context& tls_client() { return tls_client_; }
  boost::asio::ssl::context& tls_server() { return tls_server_; }
  void on_ready(const std::shared_ptr<PeerConnection>& c);
  void on_closed(const std::shared_ptr<PeerConnection>& c);
  void on_frame(NodeId from, Envelope e);
  void transfer_refused() { ++transfers_refused_; }
  void staging_failed() {
    if (opt_.on_staging_failed) opt_.on_staging_failed();
  }
  void learn(NodeId n, const std::string& address);
  void log(const std::string& line) { log_(line); }
  // A line about a connection not (yet) authenticated: rate-limited.
  void log_stranger(const std::string& line);
  // An accepted connection from `address` left its handshake (ready or
  // closed).
  void handshake_over(const std::string& address, bool failed);

 private:
  void accept();
  void accept_later();
  void dial(NodeId n);
  void schedule_dial(NodeId n);

  boost::asio::io_context& io_;
  Options opt_;
  std::string psk_;  // the TLS pre-shared key, from the secret
  boost::asio::ssl::context tls_client_, tls_server_;
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
  std::uint64_t frames_in_ = 0, frames_out_ = 0, dropped_ = 0, transfers_refused_ = 0;
  // Accepted connections in their handshake: in all, and by remote address.
  std::size_t pending_ = 0;
  std::map<std::string, std::size_t> pending_by_address_;
  std::deque<std::weak_ptr<PeerConnection>> pending_order_;  // oldest first
  std::uint64_t strangers_refused_ = 0, handshakes_failed_ = 0;
  std::unique_ptr<boost::asio::steady_timer> accept_timer_;
  // Stranger log lines: the window's start, lines written, lines left out.
  std::chrono::steady_clock::time_point log_window_{};
  std::size_t log_written_ = 0, log_suppressed_ = 0;
};

}  // namespace porcupine::agent
