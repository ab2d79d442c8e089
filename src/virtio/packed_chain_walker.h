// Private: walks one packed-ring descriptor chain for the device side
// (virtio 1.2 §2.8.6 chaining, §2.8.7 indirect tables), translating every
// buffer through DeviceMemory into a DescriptorChain.
//
//   PackedChainWalker w(mem, size, indirect_negotiated);
//   ChainWalk r = w.walk(ring_host, position, head_flags, chain);
//   if (r != ChainWalk::kComplete) ... the ring is corrupt ...
//   ... chain.id, chain.ring_slots ...
//
// Every descriptor is guest-controlled. The walk over the ring is bounded by
// the queue size, an indirect table by the queue size too. Problems with one
// buffer (bad flags, wrap, translation failure) become chain.error and the
// walk carries on over the ring only to find where the chain ends and its
// buffer id, so the chain can still be returned. Problems that leave the end of
// the chain unknown, or an id that cannot be returned, are the outcome. A
// chain that carries an error has no fragments (readable/writable empty,
// lengths 0), so nothing can be written through it by mistake. After a
// translation miss the walk goes on translating the chain's other buffers,
// only to list their misses too (DescriptorChain::more_faults); the miss is
// the chain's error however the walk ends.
//
// Thread safety: none; owned by one device queue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "vdma/mem/device_memory.h"
#include "vdma/virtio/device_queue.h"

namespace vdma {

enum class ChainWalk : uint8_t {
  kComplete,      // chain.error may still be set for a bad buffer
  kNoEnd,         // size descriptors, all with NEXT: the next chain's position is unknown
  kIdOutOfRange,  // chain.id (guest-controlled) is >= size
};

class PackedChainWalker {
 public:
  PackedChainWalker(const DeviceMemory& mem, uint16_t size, bool indirect_negotiated);

  // Walks the chain whose first descriptor is at `position` of `ring` (the
  // host view of the descriptor ring) and whose flags were already read
  // (once, with acquire ordering) as `head_flags`. Appends to chain.readable /
  // chain.writable and sets chain.id (the last descriptor's id) and
  // chain.ring_slots (descriptors walked); the caller cleared `chain`.
  [[nodiscard]] ChainWalk walk(std::byte* ring, uint16_t position, uint16_t head_flags, DescriptorChain& chain);

 private:
  // What one buffer descriptor names: a ring descriptor, or entry `entry` of
  // the indirect table that ring descriptor `ring_index` points at.
  struct Where {
    uint16_t ring_index;
    int32_t entry;  // -1 for the ring descriptor itself
  };

  void add_ring_descriptor(Where at, uint64_t guest_addr, uint32_t guest_len, uint16_t guest_flags,
                           DescriptorChain& chain);
  void add_indirect_table(Where at, uint64_t guest_addr, uint32_t guest_len, DescriptorChain& chain);
  void add_buffer(Where at, uint64_t guest_addr, uint32_t guest_len, bool writable, DescriptorChain& chain);
  static void drop_buffers(DescriptorChain& chain) noexcept;

  const DeviceMemory& mem_;
  const uint16_t size_;
  const bool indirect_;
  bool seen_writable_ = false;        // per walk: readable after writable is an error (§2.8.18)
  std::optional<Error> miss_;         // per walk: the first translation miss, while the walk lists more
  std::vector<Fragment> table_frags_;  // host pieces of the current indirect table, reused
};

}  // namespace vdma
