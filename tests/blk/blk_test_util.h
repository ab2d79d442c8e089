// Shared helpers of the blk suites: requests built directly as
// DescriptorChain objects whose fragments point into test-owned buffers.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "vdma/blk/virtio_blk.h"
#include "vdma/virtio/device_queue.h"

namespace vdma::blk::test_util {

inline std::vector<std::byte> header_bytes(uint32_t type, uint64_t sector, uint32_t reserved = 0) {
  VirtioBlkOutHeader h{};
  h.type.store(type);
  h.reserved.store(reserved);
  h.sector.store(sector);
  std::vector<std::byte> b(sizeof(h));
  std::memcpy(b.data(), &h, sizeof(h));
  return b;
}

inline std::vector<std::byte> segment_bytes(uint64_t sector, uint32_t num, uint32_t flags) {
  VirtioBlkDiscardWriteZeroes s{};
  s.sector.store(sector);
  s.num_sectors.store(num);
  s.flags.store(flags);
  std::vector<std::byte> b(sizeof(s));
  std::memcpy(b.data(), &s, sizeof(s));
  return b;
}

inline std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
  return b;
}

// Owns the buffers; chain() hands out fragments into them. Buffers live in a
// deque so earlier fragments stay valid as more are added.
class RequestBuilder {
 public:
  // A readable fragment holding `bytes`.
  RequestBuilder& readable(std::vector<std::byte> bytes) {
    Fragment f = keep(std::move(bytes));
    chain_.readable.push_back(f);
    chain_.readable_len += f.len;
    return *this;
  }
  // A writable fragment of `n` bytes, filled with `fill`.
  RequestBuilder& writable(size_t n, std::byte fill = std::byte{0xee}) {
    Fragment f = keep(std::vector<std::byte>(n, fill));
    chain_.writable.push_back(f);
    chain_.writable_len += f.len;
    return *this;
  }
  RequestBuilder& status() { return writable(1, std::byte{0xee}); }
  const DescriptorChain& chain() const { return chain_; }
  // The bytes of writable fragment i.
  std::vector<std::byte> out(size_t i) const {
    const Fragment& f = chain_.writable.at(i);
    return {f.host, f.host + f.len};
  }
  uint8_t status_byte() const {
    for (auto it = chain_.writable.rbegin(); it != chain_.writable.rend(); ++it) {
      if (it->len != 0) return std::to_integer<uint8_t>(it->host[it->len - 1]);
    }
    return 0xff;
  }

 private:
  Fragment keep(std::vector<std::byte> bytes) {
    buffers_.push_back(std::move(bytes));
    auto& b = buffers_.back();
    return Fragment{b.empty() ? nullptr : b.data(), b.size()};
  }
  std::deque<std::vector<std::byte>> buffers_;
  DescriptorChain chain_;
};

// A temporary file of `size` bytes filled with `fill`, removed at the end.
class TempFile {
 public:
  explicit TempFile(uint64_t size, std::byte fill = std::byte{0}) {
    char name[] = "/tmp/vdma-blk-test-XXXXXX";
    fd_ = ::mkstemp(name);
    if (fd_ < 0) std::abort();
    path_ = name;
    std::vector<std::byte> buf(size, fill);
    if (::pwrite(fd_, buf.data(), buf.size(), 0) != static_cast<ssize_t>(size)) std::abort();
  }
  ~TempFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }
  std::vector<std::byte> read(uint64_t offset, size_t n) const {
    std::vector<std::byte> b(n);
    if (::pread(fd_, b.data(), n, static_cast<off_t>(offset)) != static_cast<ssize_t>(n)) std::abort();
    return b;
  }
  void write(uint64_t offset, const std::vector<std::byte>& b) const {
    if (::pwrite(fd_, b.data(), b.size(), static_cast<off_t>(offset)) != static_cast<ssize_t>(b.size())) std::abort();
  }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace vdma::blk::test_util
