// SPDX-License-Identifier: MIT
// spool_file.cc - see spool_file.h.
#include "store/spool_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace porcupine::store {

namespace {
std::string errno_text() { return std::strerror(errno); }
}  // namespace

SpoolFile::~SpoolFile() {
  if (owned_) ::unlink(path_.c_str());
}

Staging::Staging(const std::string& incoming_dir) {
  static std::atomic<std::uint64_t> counter{0};
  path_ = incoming_dir + "/" + std::to_string(::getpid()) + "." + std::to_string(++counter);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd_ < 0) throw std::runtime_error("cannot create " + path_ + ": " + errno_text());
}

Staging::~Staging() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
}

bool Staging::append(std::string_view data) {
  if (fd_ < 0) return false;
  while (!data.empty()) {
    ssize_t n = ::write(fd_, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error_ = "cannot write " + path_ + ": " + errno_text();
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
    size_ += static_cast<std::uint64_t>(n);
  }
  return true;
}

std::optional<Body> Staging::finish() {
  if (fd_ < 0) return std::nullopt;
  int fd = fd_;
  fd_ = -1;
  if (::fdatasync(fd) != 0 || ::close(fd) != 0) {
    error_ = "cannot sync " + path_ + ": " + errno_text();
    ::unlink(path_.c_str());
    return std::nullopt;
  }
  return Body::in_file(std::make_shared<SpoolFile>(path_, true), size_);
}

bool BodyBuilder::append(std::string_view data) {
  if (!file_ && mem_.size() + data.size() <= kInlineBodyMax) {
    mem_.append(data);
    return true;
  }
  if (!file_) {
    try {
      file_ = std::make_unique<Staging>(dir_);
    } catch (const std::exception& e) {
      error_ = e.what();
      return false;
    }
    if (!file_->append(mem_)) {
      error_ = file_->error();
      return false;
    }
    std::string().swap(mem_);
  }
  if (!file_->append(data)) {
    error_ = file_->error();
    return false;
  }
  return true;
}

std::optional<Body> BodyBuilder::finish() {
  if (!file_) return Body(std::move(mem_));
  auto b = file_->finish();
  if (!b) error_ = file_->error();
  file_.reset();
  return b;
}

void MessageSizes::add(std::string_view data) {
  for (char c : data) {
    if (c == '\n' && !after_cr_) ++bare_lf_;
    after_cr_ = c == '\r';
    ++size_;
    if (hdr_end_ != 0) continue;
    if (c == '\n') {
      if (line_ < 2) hdr_end_ = size_;
      line_ = 0;
    } else {
      line_ = (c == '\r' && line_ == 0) ? 1 : 2;
    }
  }
}

std::uint32_t MessageSizes::hdr_size() const {
  std::uint64_t h = hdr_end_ != 0 ? hdr_end_ : size_;
  return h > UINT32_MAX ? UINT32_MAX : static_cast<std::uint32_t>(h);
}

int open_body(const Body& b) {
  switch (b.where()) {
    case Body::Where::File:
      return ::open(b.file()->path().c_str(), O_RDONLY | O_CLOEXEC);
    case Body::Where::Memory: {
      int fd = ::memfd_create("porcupine-body", MFD_CLOEXEC | MFD_ALLOW_SEALING);
      if (fd < 0) return -1;
      std::string_view data = b.bytes();
      while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          int e = n < 0 ? errno : EIO;
          ::close(fd);
          errno = e;
          return -1;
        }
        data.remove_prefix(static_cast<std::size_t>(n));
      }
      // The reader gets the bytes as they are: it can neither change nor
      // grow them, and reads from the start.
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
      ::lseek(fd, 0, SEEK_SET);
      return fd;
    }
    case Body::Where::Transfer:
      break;
  }
  errno = EINVAL;
  return -1;
}

std::optional<std::string> read_file(const std::string& path, std::uint64_t max) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0)
    out.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(static_cast<std::uint64_t>(st.st_size), max)));
  char buf[1 << 16];
  while (out.size() < max) {
    ssize_t n = ::read(fd, buf, static_cast<std::size_t>(std::min<std::uint64_t>(sizeof buf, max - out.size())));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

std::optional<std::string> read_body(const Body& b) {
  switch (b.where()) {
    case Body::Where::Memory: return b.bytes();
    case Body::Where::Transfer: return std::nullopt;
    case Body::Where::File: return read_file(b.file()->path());
  }
  return std::nullopt;
}

std::optional<std::string> read_head(const Body& b, std::uint64_t max) {
  switch (b.where()) {
    case Body::Where::Memory:
      return b.bytes().substr(0, static_cast<std::size_t>(std::min<std::uint64_t>(max, b.size())));
    case Body::Where::Transfer: return std::nullopt;
    case Body::Where::File: return read_file(b.file()->path(), max);
  }
  return std::nullopt;
}

}  // namespace porcupine::store
