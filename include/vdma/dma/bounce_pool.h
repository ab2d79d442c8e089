// BouncePool: Linux swiotlb semantics over a window of *shared* guest memory.
//
//   auto pool = *BouncePool::create(*mem, {.window = {Gpa{1ull << 32}, 4 << 20}});
//   Gpa slot = *pool->map(buf, 4096, DmaDirection::kFromDevice);  // copies buf in (every direction)
//   ... the device writes through `slot` ...
//   (void)pool->unmap(slot, 4096, DmaDirection::kFromDevice, DmaAttrs::kNone);  // copies back
//
// Layout. The window is cut into 2 KiB slots; 128 consecutive slots form a
// segment and a mapping never crosses a segment, so the largest mapping is
// 256 KiB (less the alignment slack of a min_align_mask, see
// max_mapping_size()). The slots are split into areas, each with its own
// lock and whole segments (so >= 128 slots). The area count is a power of two
// at least the number of threads asked for (Config::min_areas; default: the
// hardware threads), reduced only when the pool has too few segments. A
// thread starts its search at the area of the CPU it runs on (as Linux
// does), then walks the other areas in order, so threads on different CPUs
// never share a lock.
//
// Bookkeeping: one 128-bit word per segment, a bit per slot in use. A search
// tests a whole segment at once (free runs of the wanted length, ANDed with
// the positions the alignment allows) instead of walking slot by slot, and a
// release clears bits instead of renumbering the free slots before it
// (swiotlb's io_tlb_slot.list).
//
// Placement rules (swiotlb_search_pool_area):
//   - the bits of the original address under min_align_mask are preserved in
//     the bounce address (the low 11 by an offset into the first slot, the
//     higher ones by the choice of slot);
//   - with no min_align_mask, a mapping of >= 4 KiB starts on a 4 KiB boundary;
//   - the search in an area starts where the previous one ended (next fit);
//     freeing the area's most recent mapping moves that start back to it, so
//     a steady map/unmap reuses cache-warm slots.
//
// Data movement (swiotlb_bounce):
//   - map copies the original buffer into the slots for EVERY direction, so
//     bytes a device leaves unwritten read back as the original bytes, never
//     as stale pool contents of an earlier mapping; the one exception is a
//     kFromDevice map with DmaAttrs::kNoCopyIn, whose caller says at unmap
//     how many bytes the device wrote (`written`);
//   - unmap copies back for kFromDevice and kBidirectional, unless
//     kSkipCpuSync: the first `written` bytes (all of them by default);
//   - sync_for_cpu copies back (kFromDevice, kBidirectional), sync_for_device
//     copies in (kToDevice, kBidirectional), for any sub-range of a mapping.
//
// Growth (swiotlb dynamic): with a growth window, a map that finds every pool
// full carves another pool of growth_pool_size bytes from it and retries.
// Pools are never removed.
//
// Lifetime: the GuestMemory must outlive the pool. Every mapping must be
// unmapped before the pool is destroyed.
// Thread safety: every method may be called concurrently; operations on one
// mapping (unmap, sync) must not race with each other, as with Linux DMA.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/dma/errors.h"
#include "vdma/mem/gpa_allocator.h"
#include "vdma/mem/guest_memory.h"

namespace vdma {

class BouncePool {
 public:
  static constexpr uint64_t kSlotShift = 11;
  static constexpr uint64_t kSlotSize = uint64_t{1} << kSlotShift;  // 2 KiB
  static constexpr uint32_t kSegmentSlots = 128;
  static constexpr uint64_t kSegmentSize = kSlotSize * kSegmentSlots;  // 256 KiB
  static constexpr uint64_t kPageSize = 4096;
  static constexpr uint32_t kMaxPools = 64;

  struct Config {
    // Shared guest memory inside one region: page aligned, a multiple of 256 KiB.
    AddrRange<Gpa> window;
    // Threads expected to map concurrently; 0: std::thread::hardware_concurrency().
    uint32_t min_areas = 0;
    // Optional growth: shared guest memory (one region) from which extra
    // pools of growth_pool_size bytes (a multiple of 256 KiB) are carved.
    AddrRange<Gpa> growth_window{};
    uint64_t growth_pool_size = 0;
  };

  // Statistics. Each area counts its own slots (no shared counter on the
  // map/unmap path, so areas scale); the high-water mark is sampled, as the
  // sum over all areas, whenever one area reaches a new peak of its own.
  // With one area that is exact; with several it can miss a pool-wide peak
  // reached while no area exceeded its own earlier peak, so it is a lower
  // bound (never below used_slots).
  struct Stats {
    uint64_t total_slots = 0;  // in every pool
    uint64_t used_slots = 0;
    uint64_t high_water = 0;   // the most slots seen in use at once (see above)
    uint32_t pools = 0;        // 1 + pools added by growth
    uint32_t areas = 0;        // per pool
  };

  // Errors: DmaErrc::kInvalidConfig naming the rule a window breaks (not
  // page aligned, not a multiple of 256 KiB, not inside one region, not
  // shared memory), or a growth window without a pool size.
  [[nodiscard]] static Result<std::shared_ptr<BouncePool>> create(const GuestMemory& mem, Config config);

  BouncePool(const BouncePool&) = delete;
  BouncePool& operator=(const BouncePool&) = delete;
  ~BouncePool();

  // Takes slots for [orig, orig+len), copies the original bytes in (not for
  // kFromDevice with kNoCopyIn) and returns the bounce address of the first byte.
  // Errors: BaseErrc::kInvalidArgument (len 0), DmaErrc::kTooLarge (len >
  // max_mapping_size(min_align_mask)), MemErrc::kNotMapped (orig is not
  // guest memory), DmaErrc::kPoolFull (with slot statistics).
  [[nodiscard]] Result<Gpa> map(Gpa orig, uint64_t len, DmaDirection dir, uint64_t min_align_mask = 0,
                                DmaAttrs attrs = DmaAttrs::kNone);
  // Copies back the first min(written, len) bytes (kFromDevice/kBidirectional
  // without kSkipCpuSync) and frees the slots.
  // Errors: DmaErrc::kUnknownMapping (tlb is not the start of a live
  // mapping), DmaErrc::kMisuse (len differs from the mapped len).
  [[nodiscard]] Result<void> unmap(Gpa tlb, uint64_t len, DmaDirection dir, DmaAttrs attrs,
                                   uint64_t written = DmaUnmapRequest::kAllWritten);
  // Errors: DmaErrc::kUnknownMapping when [tlb, tlb+len) is not inside one live mapping.
  [[nodiscard]] Result<void> sync_for_cpu(Gpa tlb, uint64_t len, DmaDirection dir);
  [[nodiscard]] Result<void> sync_for_device(Gpa tlb, uint64_t len, DmaDirection dir);

  // The original buffer behind [tlb, tlb+len), which must lie in one live mapping.
  // Errors: DmaErrc::kUnknownMapping.
  [[nodiscard]] Result<Gpa> original(Gpa tlb, uint64_t len) const;

  // Coherent memory from the pool (restricted-dma-pool): page aligned,
  // zeroed, at most one segment (256 KiB). Never bounced.
  // Errors: BaseErrc::kInvalidArgument (size 0), DmaErrc::kTooLarge, DmaErrc::kPoolFull.
  [[nodiscard]] Result<CoherentPool::Allocation> alloc(uint64_t size);
  // Errors: DmaErrc::kUnknownMapping unless (gpa, size) is a live alloc().
  [[nodiscard]] Result<void> free(Gpa gpa, uint64_t size);

  // Whether gpa lies in one of the pools (is_swiotlb_buffer).
  [[nodiscard]] bool contains(Gpa gpa) const noexcept;
  // 256 KiB, less roundup(min_align_mask, 2 KiB) when a mask is given.
  [[nodiscard]] static uint64_t max_mapping_size(uint64_t min_align_mask) noexcept;
  [[nodiscard]] Stats stats() const noexcept;
  // Every window slots may come from: the initial pool and the growth window.
  [[nodiscard]] std::vector<AddrRange<Gpa>> windows() const;
  // O(slots) consistency check of every pool's in-use bits against the
  // slots' owners and the areas' counts (for tests and debugging).
  // Errors: DmaErrc::kInvalidConfig naming the slot or area.
  [[nodiscard]] Result<void> validate() const;

 private:
  struct SlotPool;
  struct Found {
    SlotPool* pool = nullptr;
    uint32_t slot = 0;
  };

  BouncePool(const GuestMemory& mem, Config config, uint32_t areas);
  [[nodiscard]] Result<void> add_pool(AddrRange<Gpa> window);
  // The hot paths return bool and build an Error only on failure.
  // Takes slots for a mapping (or a coherent allocation); false when every
  // pool is full, after growing when that is configured.
  [[nodiscard]] bool find_slots(Gpa orig, std::byte* orig_host, uint64_t len, uint32_t offset, uint32_t nslots,
                                uint64_t alloc_align_mask, uint64_t iotlb_align_mask, bool coherent, Found& out);
  [[nodiscard]] bool search_pool(SlotPool& p, uint32_t home, Gpa orig, std::byte* orig_host, uint64_t len,
                                 uint32_t offset, uint32_t nslots, uint64_t alloc_align_mask,
                                 uint64_t iotlb_align_mask, bool coherent, uint32_t& slot);
  [[nodiscard]] Error pool_full(Gpa orig, uint64_t len, uint32_t nslots) const;
  void release(SlotPool& p, uint32_t head, uint32_t nslots);
  [[nodiscard]] SlotPool* pool_of(Gpa gpa) const noexcept;
  // The head slot of the live mapping containing [tlb, tlb+len).
  [[nodiscard]] bool lookup(Gpa tlb, uint64_t len, Found& out) const noexcept;
  [[nodiscard]] Error lookup_error(Gpa tlb, uint64_t len, std::string_view op) const;
  // Bounce copies between the original buffer (at `delta` into the mapping) and the slots.
  void copy_to_slots(const Found& f, uint64_t delta, std::byte* slots, uint64_t len) const;
  void copy_from_slots(const Found& f, uint64_t delta, const std::byte* slots, uint64_t len) const;
  [[nodiscard]] std::byte* host_of(const SlotPool& p, Gpa tlb) const noexcept;
  [[nodiscard]] uint64_t largest_free_run() const;
  [[nodiscard]] uint64_t used_slots() const noexcept;
  void sample_high_water() noexcept;

  const GuestMemory& mem_;
  const Config config_;
  const uint32_t areas_;

  // Pools are appended under grow_mu_ and never removed: readers load
  // pool_count_ (acquire) and use pools_[0..count) without a lock.
  std::array<std::unique_ptr<SlotPool>, kMaxPools> pools_;
  std::atomic<uint32_t> pool_count_{0};
  std::mutex grow_mu_;
  std::unique_ptr<GpaAllocator> growth_;  // guarded by grow_mu_

  std::atomic<uint64_t> total_slots_{0};
  std::atomic<uint64_t> high_water_{0};
};

}  // namespace vdma
