// Tests that run the project's programs (vdma-blk, vdma-bench) as real
// processes: where the binaries are, waiting for a child's exit status,
// connecting to a unix socket that may not exist yet, and the one
// vhost-user request such tests send by hand (GET_FEATURES).
//
// Header-only on purpose: VDMA_BLK_BINARY and VDMA_BENCH_BINARY are
// compile definitions of the test binaries that run the programs, not of
// the support library.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace vdma::testing {

// ${build}/apps/<name>: tests live in ${build}/tests.
inline std::string build_dir_program(const char* name) {
  char self[PATH_MAX] = {};
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string dir = n > 0 ? std::string(self, static_cast<size_t>(n)) : std::string();
  return dir.substr(0, dir.rfind('/')) + "/../apps/" + name;
}

// The programs under test: the compile definitions name them where the
// test binary defines them, else ${build}/apps.
inline std::string vdma_blk_binary() {
#ifdef VDMA_BLK_BINARY
  return VDMA_BLK_BINARY;
#else
  return build_dir_program("vdma-blk");
#endif
}

inline std::string vdma_bench_binary() {
#ifdef VDMA_BENCH_BINARY
  return VDMA_BENCH_BINARY;
#else
  return build_dir_program("vdma-bench");
#endif
}

// Waits up to `seconds` for `pid` to end: its exit status, 128+N for
// signal N, or -1 after SIGKILL when it did not end in time.
inline int wait_exit(pid_t pid, int seconds = 20) {
  for (int i = 0; i < seconds * 100; ++i) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -1;
}

// A unix socket address; a path starting with '@' is in the abstract
// namespace. Aborts on a path too long for sun_path (a bug in the test).
inline sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) std::abort();
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  return addr;
}

inline socklen_t unix_address_length(const std::string& path) {
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '@' ? 0 : 1));
}

// One connection attempt: the connected fd, or -1.
inline int connect_once(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const sockaddr_un addr = unix_address(path);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), unix_address_length(path)) == 0) return fd;
  ::close(fd);
  return -1;
}

// Retries every 10 ms for up to `seconds` (the program may not listen yet).
inline int connect_to(const std::string& path, int seconds = 20) {
  for (int i = 0; i < seconds * 100; ++i) {
    const int fd = connect_once(path);
    if (fd >= 0) return fd;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

// vhost-user GET_FEATURES (request 1, flags version 1, no payload): the u64
// of the reply, or 0 when the reply is missing, late (10 s) or malformed.
inline uint64_t get_features(int fd) {
  const uint32_t req[3] = {1, 0x1, 0};
  if (::send(fd, req, sizeof(req), MSG_NOSIGNAL) != sizeof(req)) return 0;
  uint8_t reply[20];
  size_t got = 0;
  while (got < sizeof(reply)) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) <= 0) return 0;
    const ssize_t n = ::recv(fd, reply + got, sizeof(reply) - got, 0);
    if (n <= 0) return 0;
    got += static_cast<size_t>(n);
  }
  uint32_t hdr[3];
  std::memcpy(hdr, reply, sizeof(hdr));
  if (hdr[0] != 1 || hdr[1] != (0x1 | 0x4) || hdr[2] != 8) return 0;
  uint64_t features = 0;
  std::memcpy(&features, reply + 12, 8);
  return features;
}

}  // namespace vdma::testing
