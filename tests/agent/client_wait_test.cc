// SPDX-License-Identifier: MIT
// client_wait_test.cc - how long the client waits for a delivery's answer,
// against a fake of the agent's local socket that answers a set time after
// the message's last chunk.
//
// The agent's deadline for a delivery starts again once the message is
// whole and is longer by the body's crossing time (twice per recipient, at
// the default body_transfer_rate_kib); the client's wait must grow by as
// much, or a large message on a slow node gives up on an answer that is
// still coming.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>

#include "client/client.h"
#include "client/frame.h"

namespace {

using porcupine::client::Client;
namespace agentpb = porcupine::agentpb;

// Accepts one connection, reads requests until a DeliverChunk marked last,
// then answers OK after `delay_ms`.
class FakeAgent {
 public:
  explicit FakeAgent(int delay_ms) {
    char tmpl[] = "/tmp/porcupine-wait-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/agent.sock";
    listener_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener_, 1) != 0)
      ADD_FAILURE() << "cannot listen on " << path_;
    thread_ = std::thread([this, delay_ms] { serve(delay_ms); });
  }
  ~FakeAgent() {
    ::shutdown(listener_, SHUT_RDWR);
    thread_.join();
    ::close(listener_);
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  static bool read_exact(int fd, char* p, std::size_t n) {
    while (n > 0) {
      ssize_t got = ::recv(fd, p, n, 0);
      if (got <= 0) return false;
      p += got;
      n -= static_cast<std::size_t>(got);
    }
    return true;
  }
  void serve(int delay_ms) {
    int fd = ::accept(listener_, nullptr, nullptr);
    if (fd < 0) return;
    for (;;) {
      unsigned char h[4];
      if (!read_exact(fd, reinterpret_cast<char*>(h), 4)) break;
      std::string buf(porcupine::frame::length(h), '\0');
      if (!read_exact(fd, buf.data(), buf.size())) break;
      agentpb::Request q;
      if (!q.ParseFromString(buf)) break;
      if (q.op_case() != agentpb::Request::kDeliverChunk || !q.deliver_chunk().last()) continue;
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      agentpb::Response r;
      r.set_id(q.id());
      r.set_code(agentpb::OK);
      std::string f = porcupine::frame::wrap(r.SerializeAsString());
      if (::send(fd, f.data(), f.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(f.size())) break;
    }
    ::close(fd);
  }

  std::string dir_, path_;
  int listener_ = -1;
  std::thread thread_;
};

std::optional<agentpb::Response> deliver(const std::string& socket, int timeout_ms, std::size_t bytes,
                                         std::string* error) {
  Client c(socket, timeout_ms);
  std::istringstream body(std::string(bytes, 'x'));
  auto r = c.deliver({"ann@example.org"}, "INBOX", body);
  *error = c.error();
  return r;
}

TEST(ClientWait, ALargeDeliveryIsWaitedForLongerByItsCrossingTime) {
  // 4 MiB at 8 MiB/s is 500 ms a crossing, so 1 s more than the timeout.
  FakeAgent agent(1500);
  std::string error;
  auto r = deliver(agent.path(), 1000, 4u << 20, &error);
  ASSERT_TRUE(r) << error;
  EXPECT_EQ(r->code(), agentpb::OK);
}

TEST(ClientWait, ASmallDeliveryIsNotWaitedForPastTheTimeout) {
  FakeAgent agent(1500);
  std::string error;
  auto r = deliver(agent.path(), 1000, 1024, &error);
  EXPECT_FALSE(r);
  EXPECT_NE(error.find("did not answer within"), std::string::npos) << error;
}

}  // namespace
