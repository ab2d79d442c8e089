// Private: loads and stores of packed-ring fields in memory shared with the
// other side (virtio 1.2 §2.8), used by both PackedDriverQueue and
// PackedDeviceQueue.
//
// Descriptor flags and event suppression areas are what the two sides poll
// concurrently, so they go through std::atomic_ref. The other descriptor
// fields (addr, len, id) are written by one side before it publishes the
// flags with release ordering and read by the other only after it loaded the
// flags with acquire ordering, so plain copies suffice for them.
//
// Preconditions for every function: the pointer is the host view of a ring
// area the caller translated or allocated, aligned as the spec requires
// (descriptor ring 16 bytes, event areas 4 bytes; checked at queue creation),
// and the index is below the queue size (the caller's own state, never a
// guest value).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "vdma/virtio/barriers.h"
#include "vdma/virtio/packed_layout.h"

namespace vdma::packed {

// Bit 15 of an event offset and of a saved ring position: the wrap counter.
inline constexpr uint16_t kWrapBit = uint16_t{1} << 15;
inline constexpr uint16_t kOffsetMask = kWrapBit - 1;

[[nodiscard]] constexpr uint16_t encode_position(uint16_t index, bool wrap) noexcept {
  return static_cast<uint16_t>(index | (wrap ? kWrapBit : 0));
}

// §2.8.1: a driver making a descriptor available sets AVAIL to its wrap
// counter and USED to the inverse.
[[nodiscard]] constexpr uint16_t avail_flag_bits(bool wrap) noexcept { return wrap ? kDescFAvail : kDescFUsed; }
// §2.8.1: a device marking a descriptor used sets both bits to its wrap counter.
[[nodiscard]] constexpr uint16_t used_flag_bits(bool wrap) noexcept {
  return wrap ? static_cast<uint16_t>(kDescFAvail | kDescFUsed) : uint16_t{0};
}
// §2.8.2: available when AVAIL matches the wrap counter and USED does not.
[[nodiscard]] constexpr bool is_available(uint16_t flags, bool wrap) noexcept {
  return ((flags & kDescFAvail) != 0) == wrap && ((flags & kDescFUsed) != 0) != wrap;
}
// §2.8.2: used when AVAIL and USED are equal and match the wrap counter.
[[nodiscard]] constexpr bool is_used(uint16_t flags, bool wrap) noexcept {
  const bool avail = (flags & kDescFAvail) != 0;
  const bool used = (flags & kDescFUsed) != 0;
  return avail == used && used == wrap;
}

// A descriptor copied out of shared memory: every field is whatever the other
// side wrote, to be validated before use.
struct DescValue {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t id = 0;
  uint16_t flags = 0;
};

[[nodiscard]] inline std::byte* desc_at(std::byte* ring, uint16_t index) noexcept {
  return ring + size_t{index} * sizeof(Desc);
}

// Field-sized copies (never one 16-byte copy): each field is read exactly
// once, and each load matches one earlier store of the same size, so the CPU
// can forward it from its store buffer when the other side ran on this core.
template <class T>
[[nodiscard]] inline T load_le_field(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return from_le(v);
}
template <class T>
inline void store_le_field(std::byte* p, T v) noexcept {
  v = to_le(v);
  std::memcpy(p, &v, sizeof v);
}

[[nodiscard]] inline DescValue read_desc(const std::byte* p) noexcept {
  return {load_le_field<uint64_t>(p + offsetof(Desc, addr)), load_le_field<uint32_t>(p + offsetof(Desc, len)),
          load_le_field<uint16_t>(p + offsetof(Desc, id)), load_le_field<uint16_t>(p + offsetof(Desc, flags))};
}

// Writes addr, len and id; the flags are published separately.
inline void write_desc_body(std::byte* p, uint64_t addr, uint32_t len, uint16_t id) noexcept {
  store_le_field(p + offsetof(Desc, addr), addr);
  store_le_field(p + offsetof(Desc, len), len);
  store_le_field(p + offsetof(Desc, id), id);
}

// Writes id and len of a used descriptor, leaving addr alone (§2.8.22: the
// device writes only the buffer id and the written length).
inline void write_used_body(std::byte* p, uint16_t id, uint32_t len) noexcept {
  store_le_field(p + offsetof(Desc, len), len);
  store_le_field(p + offsetof(Desc, id), id);
}

[[nodiscard]] inline uint16_t* flags_ptr(std::byte* desc) noexcept {
  return static_cast<uint16_t*>(static_cast<void*>(desc + offsetof(Desc, flags)));
}

[[nodiscard]] inline uint16_t load_flags_acquire(std::byte* desc) noexcept {
  return from_le(std::atomic_ref<uint16_t>(*flags_ptr(desc)).load(std::memory_order_acquire));
}
inline void store_flags_relaxed(std::byte* desc, uint16_t flags) noexcept {
  std::atomic_ref<uint16_t>(*flags_ptr(desc)).store(to_le(flags), std::memory_order_relaxed);
}
inline void store_flags_release(std::byte* desc, uint16_t flags) noexcept {
  std::atomic_ref<uint16_t>(*flags_ptr(desc)).store(to_le(flags), std::memory_order_release);
}

// §2.8.14 struct pvirtq_event_suppress, read as one 32-bit snapshot so that
// off_wrap and flags belong together (as Linux's virtqueue_kick_prepare_packed).
struct EventValue {
  uint16_t off_wrap = 0;
  uint16_t flags = 0;
};

[[nodiscard]] inline EventValue load_event(std::byte* area) noexcept {
  auto* word = static_cast<uint32_t*>(static_cast<void*>(area));
  const uint32_t v = from_le(std::atomic_ref<uint32_t>(*word).load(std::memory_order_acquire));
  return {static_cast<uint16_t>(v & 0xffff), static_cast<uint16_t>(v >> 16)};
}
inline void store_event_off_wrap(std::byte* area, uint16_t off_wrap) noexcept {
  auto* p = static_cast<uint16_t*>(static_cast<void*>(area + offsetof(EventSuppress, off_wrap)));
  std::atomic_ref<uint16_t>(*p).store(to_le(off_wrap), std::memory_order_relaxed);
}
inline void store_event_flags(std::byte* area, uint16_t flags) noexcept {
  auto* p = static_cast<uint16_t*>(static_cast<void*>(area + offsetof(EventSuppress, flags)));
  std::atomic_ref<uint16_t>(*p).store(to_le(flags), std::memory_order_relaxed);
}

// §2.8.10 with EVENT_IDX (flags == DESC): whether the descriptor the other
// side named in `off_wrap` lies among the `added` positions that ended just
// before `new_pos` in the lap whose wrap counter is `cur_wrap`. An event in
// the previous lap is moved back by one ring so the u16 window test of
// vring_need_event() applies (as Linux's virtqueue_kick_prepare_packed).
// Precondition: added < size (with a full ring passed the answer is "yes").
[[nodiscard]] constexpr bool need_event(uint16_t off_wrap, bool cur_wrap, uint16_t size, uint16_t new_pos,
                                        uint16_t added) noexcept {
  uint16_t event = off_wrap & kOffsetMask;
  if (((off_wrap & kWrapBit) != 0) != cur_wrap) event = static_cast<uint16_t>(event - size);
  return vring_need_event(event, new_pos, static_cast<uint16_t>(new_pos - added));
}

}  // namespace vdma::packed
