// Types shared by the driver-side and device-side virtqueues, both ring formats.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/dma/posted_write_flush.h"
#include "vdma/mem/device_memory.h"

namespace vdma {

enum class RingFormat : uint8_t { kSplit, kPacked };
[[nodiscard]] std::string_view to_string(RingFormat f) noexcept;

enum class BufferType : uint8_t { kDeviceReadable, kDeviceWritable };

// Where the three ring areas live, as the device sees them.
//   split:  desc = descriptor table, driver = avail ring, device = used ring
//   packed: desc = descriptor ring,  driver = driver event suppression,
//           device = device event suppression
struct RingAddresses {
  DmaAddr desc;
  DmaAddr driver;
  DmaAddr device;
};

struct QueueConfig {
  // Split: a power of two, 1..32768. Packed: 1..32768.
  uint16_t size = 256;
  // Negotiated features. The queues honour INDIRECT_DESC, EVENT_IDX and
  // ORDER_PLATFORM; the ring format is chosen by RingFormat, not by this.
  uint64_t features = 0;
  // Driver side: the largest chain put into one indirect table; longer chains
  // use direct descriptors. 0 selects min(size, 64).
  uint16_t max_indirect = 0;
  // Driver side: the platform hook run once each time kick_prepare() says to
  // notify (PlatformDma::notify_flush; null: none). Must outlive the queue.
  PostedWriteFlush* notify_flush = nullptr;
};

// Ring memory sizes and alignment for a format and queue size.
struct RingLayout {
  size_t desc_size, desc_align;
  size_t driver_size, driver_align;
  size_t device_size, device_align;
};
[[nodiscard]] RingLayout ring_layout(RingFormat f, uint16_t size) noexcept;

}  // namespace vdma
