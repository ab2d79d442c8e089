// SplitRingBuilder: reads and writes a split virtqueue's raw bytes in
// GuestMemory (virtio 1.2 §2.7), so tests can build any ring a driver or a
// device could, hostile ones included (rust-vmm's MockSplitQueue).
//
//   SplitRingBuilder ring(*mem, Gpa{0x10000}, 16);   // lays out and zeroes desc/avail/used
//   ring.set_desc(0, {.addr = 0x20000, .len = 512, .flags = split::kDescFNext, .next = 1});
//   ring.set_desc(1, {.addr = 0x30000, .len = 512, .flags = split::kDescFWrite});
//   ring.make_available(0);                           // avail ring[idx % 16] = 0, then idx + 1
//   auto q = *SplitDeviceQueue::create(table, {.size = 16}, ring.addresses());
//
//   SplitRingBuilder dev(*mem, driver_queue->ring_addresses(), 256);   // a driver queue's rings
//   dev.push_used(300, 0);                            // play a device returning a bad id
//
// Addresses are guest-physical; addresses() reports them as DMA addresses
// one-to-one (the bypass). Every access is bounds-checked by GuestMemory; an
// access outside guest memory is a bug in the test and fails it.
// Nothing is cached: every getter reads memory, every setter writes it.
#pragma once

#include <cstdint>
#include <span>

#include "vdma/base/address.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/virtio/queue.h"
#include "vdma/virtio/split_layout.h"

namespace vdma::testing {

struct RawDesc {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
  uint16_t next = 0;
  bool operator==(const RawDesc&) const = default;
};

struct RawUsedElem {
  uint32_t id = 0;
  uint32_t len = 0;
  bool operator==(const RawUsedElem&) const = default;
};

class SplitRingBuilder {
 public:
  // Lays a ring of `size` entries out at `base` (16-byte aligned): the
  // descriptor table, the avail ring right after it, the used ring at the
  // next 4-byte boundary; zeroes all three.
  SplitRingBuilder(const GuestMemory& mem, Gpa base, uint16_t size);
  // Views rings laid out by someone else (a driver queue), DMA == GPA.
  SplitRingBuilder(const GuestMemory& mem, RingAddresses rings, uint16_t size);

  [[nodiscard]] uint16_t size() const noexcept { return size_; }
  [[nodiscard]] RingAddresses addresses() const noexcept;
  [[nodiscard]] Gpa desc_gpa() const noexcept { return desc_; }
  [[nodiscard]] Gpa avail_gpa() const noexcept { return avail_; }
  [[nodiscard]] Gpa used_gpa() const noexcept { return used_; }
  [[nodiscard]] AddrRange<Gpa> used_range() const noexcept { return {used_, split::used_size(size_)}; }

  // Descriptor table, and indirect tables anywhere in memory.
  void set_desc(uint16_t index, RawDesc d) const;
  [[nodiscard]] RawDesc desc(uint16_t index) const;
  void write_table(Gpa table, std::span<const RawDesc> descs) const;
  [[nodiscard]] RawDesc table_entry(Gpa table, uint16_t index) const;

  // Avail ring (the driver's side).
  void set_avail_flags(uint16_t flags) const;
  [[nodiscard]] uint16_t avail_flags() const;
  void set_avail_idx(uint16_t idx) const;
  [[nodiscard]] uint16_t avail_idx() const;
  void set_avail_entry(uint16_t slot, uint16_t head) const;
  [[nodiscard]] uint16_t avail_entry(uint16_t slot) const;
  void set_used_event(uint16_t v) const;
  [[nodiscard]] uint16_t used_event() const;
  // avail ring[idx % size] = head, then idx + 1.
  void make_available(uint16_t head) const;

  // Used ring (the device's side).
  void set_used_flags(uint16_t flags) const;
  [[nodiscard]] uint16_t used_flags() const;
  void set_used_idx(uint16_t idx) const;
  [[nodiscard]] uint16_t used_idx() const;
  void set_used_entry(uint16_t slot, RawUsedElem e) const;
  [[nodiscard]] RawUsedElem used_entry(uint16_t slot) const;
  void set_avail_event(uint16_t v) const;
  [[nodiscard]] uint16_t avail_event() const;
  // used ring[idx % size] = {id, len}, then idx + 1. `id` is 32 bits so a
  // test can return any value a device could.
  void push_used(uint32_t id, uint32_t len) const;

 private:
  template <class T>
  [[nodiscard]] T read_le(Gpa at) const;
  template <class T>
  void write_le(Gpa at, T v) const;

  const GuestMemory& mem_;
  uint16_t size_;
  Gpa desc_;
  Gpa avail_;
  Gpa used_;
};

}  // namespace vdma::testing
