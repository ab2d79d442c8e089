// Split virtqueue layout (virtio 1.2 §2.7).
#pragma once

#include <cstddef>
#include <cstdint>

#include "vdma/virtio/le.h"

namespace vdma::split {

// §2.7.5 struct virtq_desc
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;

struct Desc {
  Le64 addr;
  Le32 len;
  Le16 flags;
  Le16 next;
};
static_assert(sizeof(Desc) == 16);

// §2.7.6 struct virtq_avail: flags, idx, ring[N], used_event
inline constexpr uint16_t kAvailFNoInterrupt = 1;
// §2.7.8 struct virtq_used: flags, idx, ring[N] of {id, len}, avail_event
inline constexpr uint16_t kUsedFNoNotify = 1;

struct UsedElem {
  Le32 id;
  Le32 len;
};
static_assert(sizeof(UsedElem) == 8);

inline constexpr size_t kDescAlign = 16;   // §2.7: Descriptor Table alignment
inline constexpr size_t kAvailAlign = 2;   // Available Ring
inline constexpr size_t kUsedAlign = 4;    // Used Ring
inline constexpr uint16_t kMaxQueueSize = 32768;

[[nodiscard]] constexpr size_t desc_table_size(uint16_t n) noexcept { return size_t{16} * n; }
// flags + idx + ring[n] + used_event
[[nodiscard]] constexpr size_t avail_size(uint16_t n) noexcept { return 2 + 2 + size_t{2} * n + 2; }
// flags + idx + ring[n] + avail_event
[[nodiscard]] constexpr size_t used_size(uint16_t n) noexcept { return 2 + 2 + size_t{8} * n + 2; }

// Byte offsets inside the avail / used areas.
inline constexpr size_t kAvailFlagsOff = 0;
inline constexpr size_t kAvailIdxOff = 2;
inline constexpr size_t kAvailRingOff = 4;
[[nodiscard]] constexpr size_t used_event_off(uint16_t n) noexcept { return 4 + size_t{2} * n; }
inline constexpr size_t kUsedFlagsOff = 0;
inline constexpr size_t kUsedIdxOff = 2;
inline constexpr size_t kUsedRingOff = 4;
[[nodiscard]] constexpr size_t avail_event_off(uint16_t n) noexcept { return 4 + size_t{8} * n; }

}  // namespace vdma::split
