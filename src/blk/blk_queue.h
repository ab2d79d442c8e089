// Private: the per-virtqueue half of BlkDevice — request parsing and
// validation, and the storage queue (io_uring) the requests run on.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vdma/blk/blk_device.h"

namespace vdma::blk {

class BlkQueue {
 public:
  BlkQueue(const BlkDevice& device, std::unique_ptr<StorageQueue> storage, uint32_t max_iovecs);

  // BlkDevice::handle for this queue. One thread at a time.
  [[nodiscard]] Result<uint32_t> handle(const DescriptorChain& chain);

 private:
  // The request's status; `data_in` is the number of writable bytes before
  // the status byte.
  [[nodiscard]] uint8_t execute(const DescriptorChain& chain, uint64_t readable, uint64_t data_in);
  [[nodiscard]] uint8_t read_write(bool is_write, uint64_t guest_sector, const std::vector<Fragment>& frags,
                                   uint64_t skip, uint64_t len);
  [[nodiscard]] uint8_t discard_or_zero(uint32_t type, const DescriptorChain& chain, uint64_t readable);
  [[nodiscard]] uint8_t get_id(const DescriptorChain& chain, uint64_t data_in);
  // Byte offset of [sector, sector + len) if it lies inside the disk and is
  // aligned to blk_size; false otherwise.
  [[nodiscard]] bool check_range(uint64_t guest_sector, uint64_t len, uint64_t& offset) const;
  // Feeds `len` bytes of `frags` starting at `skip` to the storage, at most
  // iov_.size() iovecs per call.
  [[nodiscard]] Result<void> transfer(bool is_write, uint64_t offset, const std::vector<Fragment>& frags,
                                      uint64_t skip, uint64_t len);

  const BlkDevice& device_;
  std::unique_ptr<StorageQueue> storage_;
  std::vector<iovec> iov_;  // preallocated, sized from seg_max
  std::vector<VirtioBlkDiscardWriteZeroes> segments_;  // preallocated, max_*_seg entries
};

}  // namespace vdma::blk
