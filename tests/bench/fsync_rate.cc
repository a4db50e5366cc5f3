// SPDX-License-Identifier: MIT
// fsync_rate.cc - the disk's raw rate of small synchronous writes, the
// ceiling for anything that must be durable before it is acknowledged.
//
//   fsync_rate DIR [COUNT]   prints: fsyncs_per_second=N (4 KiB append + fdatasync)
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: fsync_rate DIR [COUNT]\n");
    return 2;
  }
  int count = argc > 2 ? std::atoi(argv[2]) : 500;
  std::string path = std::string(argv[1]) + "/fsync_rate.tmp";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror(path.c_str());
    return 1;
  }
  char block[4096] = {};
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < count; ++i) {
    if (::write(fd, block, sizeof block) != static_cast<ssize_t>(sizeof block) || ::fdatasync(fd) != 0) {
      std::perror("write/fdatasync");
      return 1;
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ::close(fd);
  ::unlink(path.c_str());
  std::printf("fsyncs_per_second=%.0f\n", count / secs);
  return 0;
}
