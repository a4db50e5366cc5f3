/* SPDX-License-Identifier: MIT */
// spool_file.h - message bodies as files in the agent's spool.
//
// A large body is never held whole in memory: whoever receives it (the
// local API from Postfix/Dovecot, the peer transport from another agent)
// writes it chunk by chunk into a staging file under <spool>/incoming with
// a Staging, which on finish() makes the data durable (fdatasync) and
// returns a Body naming the file. The store later links that file into
// msg/<origin>/<seq> (no copy); the staging name is removed when the last
// Body referring to it goes. The startup scan empties incoming/ (nothing
// there was ever acknowledged).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/body.h"

namespace porcupine::store {

// A body file. An owned file (a staging file) is unlinked when destroyed.
class SpoolFile final : public BodyFile {
 public:
  SpoolFile(std::string path, bool owned) : path_(std::move(path)), owned_(owned) {}
  ~SpoolFile() override;
  SpoolFile(const SpoolFile&) = delete;
  SpoolFile& operator=(const SpoolFile&) = delete;
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
  bool owned_;
};

// Bodies at or under this size stay in memory; larger ones go to a file.
constexpr std::size_t kInlineBodyMax = 256u << 10;

class Staging {
 public:
  // Creates a fresh file in `incoming_dir`; throws std::runtime_error
  // (one line) if it cannot.
  explicit Staging(const std::string& incoming_dir);
  ~Staging();  // an unfinished file is removed
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // False (error() says why) if the disk refused.
  bool append(std::string_view data);
  // Durable on return; the Body owns the file.
  std::optional<Body> finish();
  std::uint64_t size() const { return size_; }
  const std::string& error() const { return error_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::string error_;
};

// Gathers a body of unknown length: in memory up to kInlineBodyMax, then in
// a staging file.
class BodyBuilder {
 public:
  explicit BodyBuilder(std::string incoming_dir) : dir_(std::move(incoming_dir)) {}
  bool append(std::string_view data);
  std::optional<Body> finish();
  std::uint64_t size() const { return file_ ? file_->size() : mem_.size(); }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  std::string mem_;
  std::unique_ptr<Staging> file_;
  std::string error_;
};

// The sizes a MessageRecord keeps of its body (vsize, hdr_size), worked
// out from the body's bytes as they come, in pieces of any size.
class MessageSizes {
 public:
  void add(std::string_view data);
  // The size with every bare LF counted as CRLF.
  std::uint64_t vsize() const { return size_ + bare_lf_; }
  // The header up to and including its blank line (LF or CRLF); the whole
  // body while no blank line has come.
  std::uint32_t hdr_size() const;

 private:
  std::uint64_t size_ = 0, bare_lf_ = 0, hdr_end_ = 0;
  bool after_cr_ = false;
  int line_ = 0;  // the header line so far: 0 empty, 1 a CR only, 2 more
};

// A read-only descriptor (close-on-exec) of the body's bytes: its file, or
// for a body in memory an anonymous file (memfd) holding them; -1 (errno
// set) if neither can be had.
int open_body(const Body& b);

// A whole file (at most its first `max` bytes); nothing if it cannot be read.
std::optional<std::string> read_file(const std::string& path, std::uint64_t max = UINT64_MAX);
// The whole body, read from wherever it is; nothing if a file is unreadable.
std::optional<std::string> read_body(const Body& b);
// The body's first `max` bytes (all of it if shorter), without reading the rest.
std::optional<std::string> read_head(const Body& b, std::uint64_t max);

}  // namespace porcupine::store
