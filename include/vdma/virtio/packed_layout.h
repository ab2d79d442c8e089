// Packed virtqueue layout (virtio 1.2 §2.8).
#pragma once

#include <cstddef>
#include <cstdint>

#include "vdma/virtio/le.h"

namespace vdma::packed {

// §2.8.13 struct pvirtq_desc
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
inline constexpr uint16_t kDescFAvail = 1u << 7;
inline constexpr uint16_t kDescFUsed = 1u << 15;

struct Desc {
  Le64 addr;
  Le32 len;
  Le16 id;
  Le16 flags;
};
static_assert(sizeof(Desc) == 16);

// §2.8.10 struct pvirtq_event_suppress
inline constexpr uint16_t kEventFlagsEnable = 0x0;
inline constexpr uint16_t kEventFlagsDisable = 0x1;
inline constexpr uint16_t kEventFlagsDesc = 0x2;

struct EventSuppress {
  Le16 off_wrap;  // bits 0-14 descriptor offset, bit 15 wrap counter
  Le16 flags;
};
static_assert(sizeof(EventSuppress) == 4);

inline constexpr size_t kDescAlign = 16;
inline constexpr size_t kEventAlign = 4;
inline constexpr uint16_t kMaxQueueSize = 32768;

[[nodiscard]] constexpr size_t desc_ring_size(uint16_t n) noexcept { return size_t{16} * n; }
inline constexpr size_t kEventSize = sizeof(EventSuppress);

}  // namespace vdma::packed
