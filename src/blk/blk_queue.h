// Private: the per-virtqueue half of BlkDevice — request parsing and
// validation, and the storage queue (io_uring) the requests run on.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "vdma/blk/blk_device.h"

namespace vdma::blk {

class BlkQueue {
 public:
  BlkQueue(const BlkDevice& device, std::unique_ptr<StorageQueue> storage, uint32_t max_iovecs);

  // BlkDevice::handle for this queue. One thread at a time.
  [[nodiscard]] Result<uint32_t> handle(const DescriptorChain& chain);

  // BlkDevice::start / submit / reap / completion_fd / max_in_flight.
  [[nodiscard]] std::optional<Result<uint32_t>> start(const DescriptorChain& chain, uint32_t tag);
  void submit() { storage_->submit(); }
  [[nodiscard]] size_t reap(std::span<BlkDeviceCompletion> out);
  [[nodiscard]] int completion_fd() const noexcept { return storage_->completion_fd(); }
  [[nodiscard]] uint32_t max_in_flight() const noexcept { return storage_->max_in_flight(); }
  // Requests completed with a status other than OK (IOERR, UNSUPP). Any thread.
  [[nodiscard]] uint64_t errors() const noexcept { return errors_.load(std::memory_order_relaxed); }

 private:
  // The request's status; `data_in` is the number of writable bytes before
  // the status byte.
  [[nodiscard]] uint8_t execute(const DescriptorChain& chain, uint64_t readable, uint64_t data_in);
  [[nodiscard]] uint8_t read_write(IoDir dir, uint64_t guest_sector, const std::vector<Fragment>& frags,
                                   uint64_t skip, uint64_t len);
  [[nodiscard]] uint8_t discard_or_zero(uint32_t type, const DescriptorChain& chain, uint64_t readable);
  [[nodiscard]] uint8_t get_id(const DescriptorChain& chain, uint64_t data_in);
  // Byte offset of [sector, sector + len) if it lies inside the disk and is
  // aligned to blk_size; false otherwise.
  [[nodiscard]] bool check_range(uint64_t guest_sector, uint64_t len, uint64_t& offset) const;
  // Feeds `len` bytes of `frags` starting at `skip` to the storage, at most
  // iov_.size() iovecs per call.
  [[nodiscard]] Result<void> transfer(IoDir dir, uint64_t offset, const std::vector<Fragment>& frags,
                                      uint64_t skip, uint64_t len);

  // Where fill_iov() goes on: a fragment, bytes to skip in it, bytes left.
  struct IovCursor {
    size_t frag = 0;
    uint64_t skip = 0;
    uint64_t len = 0;
  };
  // Fills iov_ from `at` with the bytes left, host-adjacent fragments merged,
  // until iov_ is full or nothing is left; returns the number of iovecs and
  // moves `at` past what they cover. Used by transfer() (batch after batch)
  // and start() (one operation: at.len != 0 afterwards means it did not fit).
  [[nodiscard]] size_t fill_iov(const std::vector<Fragment>& frags, IovCursor& at);
  // A started request's result once its storage operation ended: the status
  // byte is written; returns false when a writethrough flush still runs.
  [[nodiscard]] bool complete(uint32_t tag, const std::optional<Error>& error);

  struct InFlight {
    std::byte* status = nullptr;  // pinned by the caller until completion
    uint32_t used = 0;
    StorageQueue::Op op = StorageQueue::Op::kRead;
    bool flushing = false;  // the writethrough flush after the data
    // A read's data buffers (pinned too), zeroed if the read fails: the used
    // length claims them (see complete()). Capacity is kept between requests.
    std::vector<iovec> data;
  };

  const BlkDevice& device_;
  std::unique_ptr<StorageQueue> storage_;
  std::vector<iovec> iov_;  // preallocated, sized from seg_max
  std::vector<VirtioBlkDiscardWriteZeroes> segments_;  // preallocated, max_*_seg entries
  std::vector<InFlight> in_flight_;                     // by tag, grown to the largest tag used
  std::vector<StorageQueue::Completion> reaped_;       // reap() scratch
  std::atomic<uint64_t> errors_{0};                    // written by this queue's thread only
  void set_status(std::byte* status, uint8_t value) noexcept {
    *status = std::byte{value};
    if (value != kBlkStatusOk) errors_.store(errors_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
};

}  // namespace vdma::blk
