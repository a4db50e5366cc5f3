/* SPDX-License-Identifier: MIT */
// body.h - a message body as the core passes it around.
//
// The core never reads a body: it stores, replicates and counts it. So a
// body may be
//   - bytes in memory (small mail, the simulator, tests);
//   - a file on this node's disk (the agent: a large delivery is streamed
//     into a spool file as it arrives and handed on by reference, so no
//     process holds it whole in memory);
//   - a transfer placeholder: on the wire, a record whose body travels
//     beside it in chunk frames (the peer transport resolves it into a file
//     before the core sees the record).
// Copies are cheap (a file is shared, not copied). The file side is an
// interface so that the core stays free of file I/O: the store implements
// it (store/spool_file.h) and is the one that reads, links and unlinks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace porcupine {

class BodyFile {
 public:
  virtual ~BodyFile() = default;
  virtual const std::string& path() const = 0;
};

class Body {
 public:
  enum class Where { Memory, File, Transfer };

  Body() = default;
  Body(std::string bytes) : bytes_(std::move(bytes)), size_(bytes_.size()) {}  // NOLINT: implicit on purpose
  Body(const char* bytes) : Body(std::string(bytes)) {}                       // NOLINT
  static Body in_file(std::shared_ptr<const BodyFile> f, std::uint64_t size) {
    Body b;
    b.where_ = Where::File;
    b.file_ = std::move(f);
    b.size_ = size;
    return b;
  }
  static Body in_transfer(std::uint64_t transfer, std::uint64_t size) {
    Body b;
    b.where_ = Where::Transfer;
    b.transfer_ = transfer;
    b.size_ = size;
    return b;
  }

  Where where() const { return where_; }
  std::uint64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const std::string& bytes() const { return bytes_; }  // Memory only
  const BodyFile* file() const { return file_.get(); }   // File only
  const std::shared_ptr<const BodyFile>& file_ref() const { return file_; }
  std::uint64_t transfer() const { return transfer_; }  // Transfer only
  void clear() { *this = Body(); }

  bool operator==(const Body& o) const {
    if (where_ != o.where_ || size_ != o.size_) return false;
    switch (where_) {
      case Where::Memory: return bytes_ == o.bytes_;
      case Where::File: return file_ == o.file_ || (file_ && o.file_ && file_->path() == o.file_->path());
      case Where::Transfer: return transfer_ == o.transfer_;
    }
    return false;
  }

 private:
  Where where_ = Where::Memory;
  std::string bytes_;
  std::shared_ptr<const BodyFile> file_;
  std::uint64_t transfer_ = 0;
  std::uint64_t size_ = 0;
};

}  // namespace porcupine
