#include "ring_factories.h"

namespace vdma {

// For queues without a gathered unmap: one get_used() after the other.
Result<size_t> DriverQueue::get_used_batch(std::span<UsedBuffer> out) {
  size_t n = 0;
  while (n < out.size()) {
    auto u = get_used();
    if (!u) {
      if (n == 0) return std::move(u).error();
      break;
    }
    if (!*u) break;
    out[n++] = **u;
  }
  return n;
}

Result<std::unique_ptr<DriverQueue>> make_driver_queue(RingFormat format, DmaOps& dma, const QueueConfig& config) {
  return format == RingFormat::kSplit ? make_split_driver_queue(dma, config) : make_packed_driver_queue(dma, config);
}

Result<std::unique_ptr<DeviceQueue>> make_device_queue(RingFormat format, const DeviceMemory& mem,
                                                       const QueueConfig& config, RingAddresses rings,
                                                       uint16_t avail_position) {
  return format == RingFormat::kSplit ? make_split_device_queue(mem, config, rings, avail_position)
                                      : make_packed_device_queue(mem, config, rings, avail_position);
}

}  // namespace vdma
