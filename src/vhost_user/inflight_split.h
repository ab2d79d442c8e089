// SplitInflight: the back-end's side of one split queue's inflight region
// (vhost-user.rst "Inflight I/O tracking", QueueRegionSplit), private to Vring.
//
//   SplitInflight t(region, vring_num);
//   auto rec = VDMA_TRY(t.recover(used_idx_in_ring));  // at queue creation
//   ... resubmit rec.heads (counter order), then pop from rec.next_avail ...
//   t.popped(chain.id);                                 // after pop()
//   t.before_push(chain.id); queue.push_used(...); t.after_push(chain.id);
//
// The region lives in memory the front-end shares and keeps across back-end
// restarts, so every field read back from it is front-end-controlled: it is
// read once, validated, and a region that cannot be right (wrong version or
// size, a batch list running out of the table) is an error, never a reason
// to touch memory outside the region.
//
// Ordering: every store is a release store (inflight_fields.h), so the stores
// reach the region in the order the spec lists them.
//
// Thread safety: none; used by the ring's worker, or by the session thread
// while the worker is stopped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "vdma/base/result.h"

namespace vdma::vhost_user {

class SplitInflight {
 public:
  // `region`: inflight::kSplitHeaderSize + num descriptor states, mapped.
  SplitInflight(std::byte* region, uint16_t num) noexcept : region_(region), num_(num) {}

  struct Recovery {
    std::vector<uint16_t> heads;  // inflight heads, lowest counter first
    uint16_t next_avail = 0;      // used idx + heads.size(): every popped entry is used or inflight
    bool fresh = false;           // version was 0: nothing to resume, next_avail not meaningful
  };

  // "When reconnecting": a version-0 region is initialised (nothing to
  // resume); otherwise the last batch whose used idx was published but not
  // recorded is cleared, and the inflight heads are returned in counter order.
  // Errors: VhostUserErrc::kBadField (version not 1, desc_num not the vring's
  // size, a last-batch list leaving the table or longer than the ring).
  [[nodiscard]] Result<Recovery> recover(uint16_t ring_used_idx);

  // "When receiving available buffers": counter, then inflight = 1.
  void popped(uint16_t head) noexcept;
  // "When supplying used buffers" steps 1-3, before the used idx moves.
  void before_push(uint16_t head) noexcept;
  // Steps 6-7, after the used idx was published: inflight = 0, then used_idx.
  void after_push(uint16_t head) noexcept;

 private:
  [[nodiscard]] std::byte* desc(uint16_t i) const noexcept;

  std::byte* region_;
  uint16_t num_;
  uint64_t counter_ = 0;  // the spec's global counter
  uint16_t used_idx_ = 0;  // our copy of the region's used_idx
};

}  // namespace vdma::vhost_user
