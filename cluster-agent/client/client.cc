// SPDX-License-Identifier: MIT
// client.cc - see client.h.
#include "client/client.h"

#include "client/frame.h"
#include "core/config.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>

namespace porcupine::client {

namespace {
// The clock of the deadlines, which requests carry (client_deadline_ms).
std::int64_t now_ms() { return frame::monotonic_ms(); }
constexpr std::uint32_t kMaxResponse = 256u << 20;
constexpr std::size_t kMaxFds = 253;  // SCM_MAX_FD: the most one message carries
}  // namespace

const char* code_name(agentpb::Code c) {
  const std::string& n = agentpb::Code_Name(c);
  return n.empty() ? "UNKNOWN" : n.c_str();
}

Client::Client(std::string socket_path, int timeout_ms) : path_(std::move(socket_path)), timeout_ms_(timeout_ms) {}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
  close_fds(fds_);
  close_fds(response_fds_);
}

void Client::close_fds(std::vector<int>& fds) {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

bool Client::connect() {
  if (fd_ >= 0) return true;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof addr.sun_path) {
    error_ = "socket path too long: " + path_;
    return false;
  }
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    error_ = "cannot connect to the agent at " + path_ + ": " + std::strerror(errno);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    return false;
  }
  return true;
}

bool Client::send_frame(const std::string& bytes) {
  std::string f = frame::wrap(bytes);
  std::size_t off = 0;
  while (off < f.size()) {
    ssize_t w = ::send(fd_, f.data() + off, f.size() - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      error_ = std::string("lost the agent: ") + std::strerror(errno);
      ::close(fd_);
      fd_ = -1;
      return false;
    }
    off += static_cast<std::size_t>(w);
  }
  return true;
}

bool Client::read_exact(char* p, std::size_t n) {
  while (n > 0) {
    std::int64_t left = deadline_ - now_ms();
    if (left <= 0) {
      error_ = "the agent did not answer within " + std::to_string(timeout_ms_) + " ms";
      ::close(fd_);
      fd_ = -1;
      return false;
    }
    pollfd pfd{fd_, POLLIN, 0};
    int r = ::poll(&pfd, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    // Descriptors the agent passes come with a frame's first bytes.
    iovec iov{p, n};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t got = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
    if (got < 0 && errno == EINTR) continue;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); got > 0 && c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds_.push_back(fd);
      }
    }
    if (got <= 0) {
      error_ = "the agent closed the connection";
      ::close(fd_);
      fd_ = -1;
      return false;
    }
    p += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

std::optional<agentpb::Response> Client::read_response() {
  agentpb::Response r;
  if (!read_response_into(r)) return std::nullopt;
  return r;
}

bool Client::read_response_into(agentpb::Response& r) {
  close_fds(fds_);
  close_fds(response_fds_);
  unsigned char h[4];
  if (!read_exact(reinterpret_cast<char*>(h), 4)) return false;
  std::uint32_t len = frame::length(h);
  if (len > kMaxResponse) {
    error_ = "response too large";
    ::close(fd_);
    fd_ = -1;
    return false;
  }
  std::string buf(len, '\0');
  if (!read_exact(buf.data(), len)) return false;
  if (!r.ParseFromString(buf)) {
    error_ = "malformed response from the agent";
    ::close(fd_);
    fd_ = -1;
    return false;
  }
  response_fds_.swap(fds_);
  return true;
}

std::optional<agentpb::Response> Client::wait_response(std::uint64_t id) {
  for (;;) {
    auto r = read_response();
    if (!r || r->id() == id) return r;  // a stale answer to an abandoned request is skipped
  }
}

std::vector<std::optional<agentpb::Response>> Client::call_many(std::vector<agentpb::Request>& reqs,
                                                                std::size_t window) {
  std::vector<std::optional<agentpb::Response>> out(reqs.size());
  if (reqs.empty() || !connect()) return out;
  if (window == 0) window = 1;
  std::map<std::uint64_t, std::size_t> outstanding;  // request id -> index
  deadline_ = now_ms() + timeout_ms_;
  std::size_t next = 0, answered = 0;
  while (answered < reqs.size()) {
    while (next < reqs.size() && outstanding.size() < window) {
      agentpb::Request& q = reqs[next];
      q.set_id(next_id_++);
      if (q.timeout_ms() == 0) q.set_timeout_ms(static_cast<std::uint32_t>(timeout_ms_) * 9 / 10);
      if (!send_frame(q.SerializeAsString())) return out;
      outstanding[q.id()] = next++;
    }
    auto r = read_response();
    if (!r) return out;  // the rest stay unanswered
    auto it = outstanding.find(r->id());
    if (it == outstanding.end()) continue;  // a stale answer to an abandoned request
    out[it->second] = std::move(*r);
    outstanding.erase(it);
    ++answered;
    deadline_ = now_ms() + timeout_ms_;  // the wait is per answer: a long batch that moves is not late
  }
  return out;
}

std::optional<agentpb::Response> Client::call_fds(agentpb::Request& req, std::int64_t extra_ms,
                                                  std::vector<int>& fds) {
  fds.clear();
  if (!connect()) return std::nullopt;
  req.set_id(next_id_++);
  const std::int64_t wait = timeout_ms_ + std::max<std::int64_t>(extra_ms, 0);
  if (req.timeout_ms() == 0) req.set_timeout_ms(static_cast<std::uint32_t>(std::min<std::int64_t>(wait * 9 / 10, UINT32_MAX)));
  deadline_ = now_ms() + wait;
  req.set_client_deadline_ms(static_cast<std::uint64_t>(deadline_));
  if (!send_frame(req.SerializeAsString())) return std::nullopt;
  auto r = wait_response(req.id());
  if (!r) return r;
  if (response_fds_.size() != r->fd_count()) {
    close_fds(response_fds_);
    error_ = "the agent's answer came without its file descriptors";
    ::close(fd_);
    fd_ = -1;
    return std::nullopt;
  }
  fds.swap(response_fds_);
  return r;
}

std::optional<agentpb::Response> Client::call(agentpb::Request& req) {
  agentpb::Response r;
  if (!call_into(req, r)) return std::nullopt;
  return r;
}

bool Client::call_into(agentpb::Request& req, agentpb::Response& out) {
  if (!connect()) return false;
  req.set_id(next_id_++);
  // The agent answers TEMPFAIL a little before this client would give up,
  // so the connection stays in step and usable.
  if (req.timeout_ms() == 0) req.set_timeout_ms(static_cast<std::uint32_t>(timeout_ms_) * 9 / 10);
  deadline_ = now_ms() + timeout_ms_;
  req.set_client_deadline_ms(static_cast<std::uint64_t>(deadline_));
  if (!send_frame(req.SerializeAsString())) return false;
  for (;;) {
    if (!read_response_into(out)) return false;
    if (out.id() == req.id()) return true;  // a stale answer to an abandoned request is skipped
  }
}

std::optional<agentpb::Response> Client::deliver(const std::vector<std::string>& recipients,
                                                 const std::string& folder, std::istream& body,
                                                 std::size_t chunk, const agentpb::DeliverBegin& options) {
  if (!connect()) return std::nullopt;
  std::uint64_t id = next_id_++;
  deadline_ = now_ms() + timeout_ms_;
  agentpb::Request begin;
  begin.set_id(id);
  begin.set_timeout_ms(static_cast<std::uint32_t>(timeout_ms_) * 9 / 10);
  begin.set_client_deadline_ms(static_cast<std::uint64_t>(deadline_));
  *begin.mutable_deliver_begin() = options;
  begin.mutable_deliver_begin()->clear_recipients();
  for (const auto& r : recipients) begin.mutable_deliver_begin()->add_recipients(r);
  begin.mutable_deliver_begin()->set_folder(folder);
  if (!send_frame(begin.SerializeAsString())) return std::nullopt;
  std::string data(chunk, '\0');
  std::uint64_t sent = 0;
  for (;;) {
    body.read(data.data(), static_cast<std::streamsize>(data.size()));
    std::size_t got = static_cast<std::size_t>(body.gcount());
    sent += got;
    bool last = got < data.size();
    agentpb::Request c;
    c.set_id(id);
    c.mutable_deliver_chunk()->set_data(data.data(), got);
    c.mutable_deliver_chunk()->set_last(last);
    if (last) {
      // The agent's deadline starts again once the message is whole,
      // longer by its store_crossing per recipient at the agent's rate;
      // this wait is longer by as much at the default rate. The agent
      // does not begin the delivery once this has passed.
      deadline_ = now_ms() + timeout_ms_ +
                  store_crossing(CoreConfig{}, sent) * static_cast<std::int64_t>(recipients.size());
      c.set_client_deadline_ms(static_cast<std::uint64_t>(deadline_));
    }
    if (!send_frame(c.SerializeAsString())) return std::nullopt;
    if (last) break;
  }
  return wait_response(id);
}

}  // namespace porcupine::client
