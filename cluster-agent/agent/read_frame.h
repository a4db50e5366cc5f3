/* SPDX-License-Identifier: MIT */
// read_frame.h - reading one frame (client/frame.h: a 4-byte big-endian
// length, then that many bytes) off an Asio stream: the peer transport and
// the local API share it.
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange
#include <boost/asio.hpp>
#include <cstdint>
#include <string>

#include "client/frame.h"

namespace porcupine::agent {

// `done(why)`: why is empty when `buf` holds the frame; otherwise one line
// for the log: "" never, "closed" (the other side closed between frames),
// "truncated frame", "frame of N bytes exceeds the limit of L", or the
// socket's error.
template <class Stream, class Done>
void async_read_frame(Stream& s, unsigned char (&hdr)[4], std::string& buf, std::size_t limit, Done done) {
  namespace asio = boost::asio;
  asio::async_read(s, asio::buffer(hdr, 4), [&s, &hdr, &buf, limit, done](boost::system::error_code ec, std::size_t) {
    if (ec) return done(std::string(ec == asio::error::eof ? "closed" : ec.message()));
    std::uint32_t len = frame::length(hdr);
    if (len > limit)
      return done("frame of " + std::to_string(len) + " bytes exceeds the limit of " + std::to_string(limit));
    buf.resize(len);
    asio::async_read(s, asio::buffer(buf), [done](boost::system::error_code ec2, std::size_t) {
      if (ec2) return done(std::string(ec2 == asio::error::eof ? "truncated frame" : ec2.message()));
      done(std::string());
    });
  });
}

}  // namespace porcupine::agent
