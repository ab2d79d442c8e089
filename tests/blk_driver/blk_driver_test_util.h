// Shared helpers of the blk_driver suites: a temporary disk file that can be
// read back, byte patterns, and a loopback transport + driver pair.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "loopback_transport.h"
#include "vdma/blk_driver/blk_driver.h"

namespace vdma::blk::test_util {

// A sparse temporary file of `size` bytes, removed on destruction.
class TempDisk {
 public:
  explicit TempDisk(uint64_t size) {
    std::string tmpl = ::testing::TempDir() + "vdma-blk-driver-XXXXXX";
    fd_ = ::mkstemp(tmpl.data());
    path_ = tmpl;
    if (fd_ >= 0 && ::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~TempDisk() {
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
  TempDisk(const TempDisk&) = delete;
  TempDisk& operator=(const TempDisk&) = delete;

  [[nodiscard]] bool ok() const { return fd_ >= 0; }
  [[nodiscard]] const std::string& path() const { return path_; }
  // The file's bytes at [offset, offset+len), read with pread (what the
  // device really stored, independent of the driver).
  [[nodiscard]] std::vector<std::byte> read(uint64_t offset, size_t len) const {
    std::vector<std::byte> out(len);
    size_t done = 0;
    while (done < len) {
      const ssize_t r = ::pread(fd_, out.data() + done, len - done, static_cast<off_t>(offset + done));
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
    out.resize(done);
    return out;
  }
  void write(uint64_t offset, const std::vector<std::byte>& bytes) const {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t r = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// Bytes that differ for every (seed, position), so a misplaced or stale
// sector never matches.
inline std::vector<std::byte> pattern(size_t n, uint32_t seed) {
  std::vector<std::byte> b(n);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b[i] = std::byte(static_cast<uint8_t>(x));
  }
  return b;
}

inline std::vector<std::byte> to_vector(std::span<const std::byte> s) { return {s.begin(), s.end()}; }

}  // namespace vdma::blk::test_util
