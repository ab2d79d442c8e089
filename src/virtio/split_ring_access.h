// Private: loads and stores of split-ring fields in memory shared with the
// other side (virtio 1.2 §2.7), used by SplitDriverQueue and SplitDeviceQueue.
//
// Indices and flags that the other side changes concurrently go through
// std::atomic_ref so each is read or written exactly once, with the memory
// order the caller names. Descriptors and used elements are copied whole
// into / out of locals with memcpy: the reader never looks at shared memory
// twice for one field.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "vdma/virtio/le.h"
#include "vdma/virtio/split_layout.h"

namespace vdma::split_ring {

// Precondition for both: `p` is 2-byte aligned (the ring areas are validated
// to be, and every le16 field sits at an even offset).
[[nodiscard]] inline uint16_t load_le16(const std::byte* p, std::memory_order order) noexcept {
  auto* field = static_cast<uint16_t*>(static_cast<void*>(const_cast<std::byte*>(p)));
  return from_le(std::atomic_ref<uint16_t>(*field).load(order));
}

inline void store_le16(std::byte* p, uint16_t v, std::memory_order order) noexcept {
  auto* field = static_cast<uint16_t*>(static_cast<void*>(p));
  std::atomic_ref<uint16_t>(*field).store(to_le(v), order);
}

// One descriptor, copied out of shared memory once.
struct DescCopy {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
  uint16_t next = 0;
};

[[nodiscard]] inline DescCopy read_desc(const std::byte* p) noexcept {
  split::Desc raw;
  std::memcpy(&raw, p, sizeof raw);
  return {raw.addr.load(), raw.len.load(), raw.flags.load(), raw.next.load()};
}

inline void write_desc(std::byte* p, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) noexcept {
  split::Desc raw;
  raw.addr.store(addr);
  raw.len.store(len);
  raw.flags.store(flags);
  raw.next.store(next);
  std::memcpy(p, &raw, sizeof raw);
}

[[nodiscard]] inline split::UsedElem read_used_elem(const std::byte* p) noexcept {
  split::UsedElem e;
  std::memcpy(&e, p, sizeof e);
  return e;
}

inline void write_used_elem(std::byte* p, uint32_t id, uint32_t len) noexcept {
  split::UsedElem e;
  e.id.store(id);
  e.len.store(len);
  std::memcpy(p, &e, sizeof e);
}

// Byte offsets of ring entries inside the avail / used areas.
[[nodiscard]] constexpr size_t avail_ring_off(uint16_t slot) noexcept {
  return split::kAvailRingOff + size_t{2} * slot;
}
[[nodiscard]] constexpr size_t used_ring_off(uint16_t slot) noexcept { return split::kUsedRingOff + size_t{8} * slot; }

}  // namespace vdma::split_ring
