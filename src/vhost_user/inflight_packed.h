// PackedInflight: the back-end's side of one packed queue's inflight region
// (vhost-user.rst "Inflight I/O tracking", QueueRegionPacked), private to Vring.
//
//   PackedInflight t(region, vring_num);
//   auto rec = VDMA_TRY(t.recover(base, probe_queue));      // at queue creation
//   auto q = PackedDeviceQueue::create_resumed(..., rec.used_position, rec.inflight_slots);
//   ... q->walk_copy(c.descs, chain) for each c in rec.chains (counter order), then pop ...
//   uint16_t entry = t.popped(*q, chain);                     // right after pop()
//   t.before_push(entry); q->push_used(...); t.after_push(entry);
//
// The region. Each popped chain is logged as a list of DescStatePacked
// entries taken from a free list threaded through desc[].next: the first
// (the chain's "head entry") carries inflight, counter, num (descriptors) and
// last (its last entry); every entry holds a copy of one ring descriptor.
// free_head / used_idx / used_wrap_counter move as the back-end works; their
// old_* twins are the last consistent values, so that the next back-end can
// roll back a half-done step ("When reconnecting").
//
// Trust. The region is memory the front-end shares and keeps across
// back-end restarts. recover() reads it once, validates it (version,
// desc_num, indices, counters of descriptors, free list without loops, chain
// lists inside the table and disjoint, copies that form one chain each) and
// builds a private shadow of the free list; from then on the tracker only
// writes the region, so nothing the front-end changes later can steer it.
//
// Ordering: every store is a release store (inflight_fields.h), so the stores
// reach the region in the order the spec lists them; the used element itself
// is published by PackedDeviceQueue::push_used() between before_push() and
// after_push().
//
// Thread safety: none; used by the ring's worker, or by the session thread
// while the worker is stopped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/virtio/packed_device_queue.h"

namespace vdma::vhost_user {

class PackedInflight {
 public:
  // `region`: inflight::kPackedHeaderSize + num descriptor states, mapped.
  PackedInflight(std::byte* region, uint16_t num) noexcept : region_(region), num_(num) {}

  // A chain a previous back-end popped and did not complete.
  struct Chain {
    uint16_t entry = 0;                // its head entry in the region
    std::vector<PackedDescCopy> descs;  // its ring descriptors, validated to form one chain
  };
  struct Recovery {
    std::vector<Chain> chains;     // lowest counter first
    uint16_t used_position = 0;    // next used index | used wrap counter << 15
    uint16_t inflight_slots = 0;   // descriptors of all chains
    bool fresh = false;            // version was 0: initialised at `base`, nothing to resume
  };

  // "When reconnecting". A version-0 region is initialised for a ring at
  // `base` (index | wrap << 15, nothing in flight). Otherwise an in-progress
  // used update is committed when `ring` shows the used element at
  // old_used_idx, else rolled back; entries on the free list lose their
  // inflight mark; the chains still in flight are returned in counter order.
  // `ring` is a queue on the ring (at any position), read only at
  // old_used_idx. Errors: VhostUserErrc::kBadField (anything the region
  // cannot hold legitimately, named), those of ring.is_available_at().
  [[nodiscard]] Result<Recovery> recover(uint16_t base, PackedDeviceQueue& ring);

  // "When receiving available buffers": logs `chain`, which queue.pop() just
  // returned, and returns its head entry. Allocation-free.
  [[nodiscard]] uint16_t popped(const PackedDeviceQueue& queue, const DescriptorChain& chain);
  // "When supplying used buffers" steps 3-6, before the used element is
  // written: the chain's entries go back to the free list, used_idx moves.
  void before_push(uint16_t entry) noexcept;
  // Steps 8-9, after the used element's flags were published: inflight = 0,
  // then the old_* fields catch up.
  void after_push(uint16_t entry) noexcept;

 private:
  [[nodiscard]] std::byte* desc(uint16_t i) const noexcept;
  void initialise(uint16_t base);
  // Threads every entry not in `in_chain` into a fresh free list, in the
  // region and in next_.
  void rebuild_free_list(const std::vector<bool>& in_chain);

  std::byte* region_;
  uint16_t num_;
  // Shadow of the region, the only copy the tracker reads after recover().
  std::vector<uint16_t> next_;   // desc[].next
  std::vector<uint16_t> last_;   // desc[head].last, for head entries in flight
  std::vector<uint16_t> count_;  // desc[head].num, for head entries in flight
  std::vector<PackedDescCopy> scratch_;  // popped(): the chain's descriptors
  uint16_t free_head_ = 0;
  uint16_t used_idx_ = 0;
  bool used_wrap_ = true;
  uint64_t counter_ = 0;  // the spec's global counter
};

}  // namespace vdma::vhost_user
