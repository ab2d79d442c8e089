// The null disk: completes every operation at once, stores nothing, reads
// zeroes. Useful to measure the transport without storage costs.
#include <cstring>

#include <fmt/format.h>

#include "storage_impl.h"

namespace vdma::blk {
namespace {

class NullQueue final : public StorageQueue {
 public:
  Result<void> read(uint64_t /*offset*/, std::span<const iovec> iov) override {
    for (const iovec& v : iov) {
      if (v.iov_len != 0) std::memset(v.iov_base, 0, v.iov_len);
    }
    return ok();
  }
  Result<void> write(uint64_t /*offset*/, std::span<const iovec> /*iov*/) override { return ok(); }
  Result<void> flush() override { return ok(); }
  Result<void> discard(uint64_t /*offset*/, uint64_t /*len*/) override { return ok(); }
  Result<void> write_zeroes(uint64_t /*offset*/, uint64_t /*len*/, bool /*unmap*/) override { return ok(); }
};

class NullStorage final : public StorageBackend {
 public:
  NullStorage(uint64_t size, bool read_only) : size_(size), read_only_(read_only) {}
  uint64_t size_bytes() const noexcept override { return size_; }
  bool read_only() const noexcept override { return read_only_; }
  Result<std::unique_ptr<StorageQueue>> make_queue(uint32_t /*max_iovecs*/) override {
    return std::unique_ptr<StorageQueue>(std::make_unique<NullQueue>());
  }
  std::string describe() const override { return fmt::format("null disk of {} bytes{}", size_, read_only_ ? ", read-only" : ""); }

 private:
  uint64_t size_;
  bool read_only_;
};

}  // namespace

std::unique_ptr<StorageBackend> make_null_storage(uint64_t size_bytes, bool read_only) {
  return std::make_unique<NullStorage>(size_bytes, read_only);
}

}  // namespace vdma::blk
