// IotlbQueueView: one virtqueue's view of a DeviceIotlb, with a ring
// translation cache (Linux vhost's vq_meta_prefetch / iotlb_access_ok).
//
//   IotlbQueueView view(iotlb);                        // registers with the IOTLB
//   auto q = *make_device_queue(RingFormat::kSplit, view, config, rings);
//   ReaderHandle reader = *iotlb.register_reader();
//   while (running) {
//     ReadSection section(reader);      // covers ring pointers and chain fragments
//     ... q->pop(chain) ... q->push_used(chain, n) ...
//   }
//   // On queue stop/reset: view.forget_rings();
//
// The device queue translates each ring area (descriptor table, driver area,
// device area) once with translate_ring() and keeps the host pointer; before
// each use it loads *ring_epoch() (acquire) and translates again when the
// value changed (DeviceMemory's contract, device_memory.h). The view records
// every range given to translate_ring(); any insert or invalidate of the
// IOTLB that overlaps a recorded range, and every invalidate_all(), bumps the
// view's epoch after publishing the new table and before the grace-period
// wait. A queue that checks the epoch inside its section therefore either
// sees the bump, or is inside a section the writer waits for: no reader keeps
// using a revoked ring pointer once the IOTLB writer has returned. A ring
// access per request then costs one atomic load, as in bypass.
//
// Evicting an entry for the size limit does not bump the epoch: the
// translation stays valid (the front-end did not revoke it). A recorded range
// stays recorded until forget_rings() or destruction, also when its
// translation failed (the later UPDATE then bumps the epoch). At most
// kMaxRanges distinct ranges are kept; beyond that they are merged into one
// covering range (more bumps, never fewer).
//
// Stale state after a queue stops (DPDK kept translations of stopped rings):
// call forget_rings() when the queue stops or its ring addresses change; it
// drops the recorded ranges and bumps the epoch, so a queue still holding
// pointers translates again.
//
// Lifetime: the view must not outlive its DeviceIotlb, and must outlive the
// device queue built on it. Not movable (the IOTLB holds its address).
// Thread safety: translate() and translate_ring() may be called
// concurrently; the epoch may be read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/iommu/device_iotlb.h"
#include "vdma/mem/device_memory.h"

namespace vdma {

class IotlbQueueView final : public DeviceMemory {
 public:
  static constexpr size_t kMaxRanges = 8;

  explicit IotlbQueueView(DeviceIotlb& iotlb);
  ~IotlbQueueView() override;
  IotlbQueueView(const IotlbQueueView&) = delete;
  IotlbQueueView& operator=(const IotlbQueueView&) = delete;

  // Forwards to DeviceIotlb::translate (same errors, same section rules).
  [[nodiscard]] Result<void> translate(DmaAddr addr, uint64_t len, Access access,
                                       std::vector<Fragment>& out) const override;
  using DeviceMemory::translate;

  // Records [addr, addr+len) as a ring range of this queue, then translates
  // it to one contiguous host span. Errors: BaseErrc::kOverflow (nothing
  // recorded), MemErrc::kNotMapped / kPermissionDenied / kTooManyFragments
  // (the range stays recorded).
  [[nodiscard]] Result<std::span<std::byte>> translate_ring(DmaAddr addr, uint64_t len,
                                                            Access access) const override;
  [[nodiscard]] const std::atomic<uint64_t>* ring_epoch() const noexcept override { return &epoch_; }

  // Drops the recorded ring ranges and bumps the epoch.
  void forget_rings();

  // Request tracking (BackendOptions::iotlb_cache per-request): while on,
  // translate() (descriptor buffers and indirect tables; not translate_ring)
  // appends each range it is asked for, translated or not, to tracked(), so
  // the queue's worker can drop exactly those translations once the request
  // completes (DeviceIotlb::forget). Tracking is for one thread: turn it on
  // only for a view that a single worker uses (the vring worker's own view).
  void set_tracking(bool on) noexcept { tracking_ = on; }
  [[nodiscard]] std::span<const AddrRange<Iova>> tracked() const noexcept { return tracked_; }
  void clear_tracked() noexcept { tracked_.clear(); }
  // Moves tracked() to the end of `out` (a request keeps what its walk
  // translated until it completes) and clears it.
  void take_tracked(std::vector<AddrRange<Iova>>& out) {
    out.insert(out.end(), tracked_.begin(), tracked_.end());
    tracked_.clear();
  }

  [[nodiscard]] uint64_t epoch() const noexcept { return epoch_.load(std::memory_order_acquire); }
  // The recorded ranges as inclusive [first, last] IOVA pairs (tests, debugging).
  struct RingRange {
    Iova first;
    Iova last;
    constexpr bool operator==(const RingRange&) const noexcept = default;
  };
  [[nodiscard]] std::vector<RingRange> ring_ranges() const;
  [[nodiscard]] DeviceIotlb& iotlb() const noexcept { return iotlb_; }

  // For DeviceIotlb's writers (passkey): whether a recorded range overlaps
  // [first, last] (inclusive), and the bump.
  class WriterKey {
    friend class DeviceIotlb;
    WriterKey() = default;
  };
  [[nodiscard]] bool overlaps_ring(WriterKey, uint64_t first, uint64_t last) const;
  void bump_epoch(WriterKey) noexcept { bump(); }

 private:
  void bump() noexcept;

  DeviceIotlb& iotlb_;
  mutable std::mutex ranges_mutex_;                 // guards ranges_ only; never held while waiting
  mutable std::vector<RingRange> ranges_;           // recorded by translate_ring (a const method)
  std::atomic<uint64_t> epoch_{0};
  bool tracking_ = false;
  mutable std::vector<AddrRange<Iova>> tracked_;    // appended by translate (a const method); one thread
};

}  // namespace vdma
