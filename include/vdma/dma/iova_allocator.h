// IovaAllocator: hands out IOVA ranges of one IO address space to the IOMMU
// DMA ops (Linux drivers/iommu/iova.c: the rbtree allocator plus the
// per-CPU "rcache" of magazines).
//
//   auto alloc = *IovaAllocator::create({.ranges = ioas->iova_ranges().ranges});
//   Iova a = *alloc->allocate(0x1800, /*limit=*/Iova{0xffffffff});   // 8 KiB run, 8 KiB aligned
//   ...
//   alloc->free(a, 0x1800);                                           // same size as allocate
//
// Sizes. A request is rounded up to whole 4 KiB pages; up to kMaxCachedSize
// (128 KiB) it is rounded further up to a power of two of pages, so freed
// runs fit the next request of the same class. Every run is aligned to the
// power of two at or above its page count (at most 1 GiB), as Linux's
// size-aligned IOVAs. allocation_size() gives the rounded size.
//
// Placement. The lowest aligned free run that ends at or below `limit`
// (the device's last addressable IOVA). With prefer_below_4g (the default,
// as Linux does for PCI devices) the search first runs with the limit
// clamped to 4 GiB - 1 and only then with the real limit, so 32-bit IOVAs
// are used while there are any: devices and descriptors with 32-bit fields
// keep working and the page-table walks stay in one upper-level table.
// IOVA page 0 is never handed out (IOVA 0 looks like a null DMA address).
//
// Magazines (Linux iova rcache). Freed runs of a cached size class (4 KiB ..
// 128 KiB) go to a per-CPU magazine instead of the free-range map: a
// thread uses the shard of the CPU it runs on (sched_getcpu() modulo
// `shards`; a per-thread number where the CPU is unknown), each shard
// holding a loaded and a previous magazine of kMagazineSize IOVAs per class
// under its own spin lock (uncontended unless threads share a CPU or
// migrate); full magazines move to a bounded depot shared by all
// shards, and overflow beyond it returns to the free-range map. allocate()
// pops from the thread's magazines first (the most recent free below the
// limit), then from the depot, and only then searches the map. When the map
// has no room it drains every magazine back into it and searches again, so
// cached IOVAs never cause an exhaustion error.
//
// Errors: allocate() fails with DmaErrc::kIovaExhausted, naming the size,
// alignment and limit with the free space left ("IOVA space exhausted: no
// free run of 0x2000 bytes aligned to 0x2000 at or below iova:0xffffffff
// (0x1000 bytes free in 1 range, largest 0x1000)"), and with
// BaseErrc::kInvalidArgument for size 0 or a size beyond the address space.
//
// free() preconditions (VDMA_CHECK, a caller bug): the run was returned by
// allocate() with the same size and is not free already. The IOMMU DMA ops
// guarantee this by freeing only what they found mapped in the IOAS.
//
// Thread safety: every method may be called concurrently. Lifetime: no
// thread-local state refers to an allocator, so allocators may be created
// and destroyed freely while threads run.
#pragma once

#include <bit>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/errors.h"
#include "vdma/iommu/io_address_space.h"

namespace vdma {

struct IovaAllocatorConfig {
  // The usable IOVA ranges (inclusive), e.g. IoAddressSpace::iova_ranges();
  // rounded inwards to whole pages. Must leave at least one page besides page 0.
  std::vector<IovaRange> ranges;
  // Magazine shards; 0: one per hardware thread. Rounded up to a power of two.
  uint32_t shards = 0;
  bool prefer_below_4g = true;
};

struct IovaAllocatorStats {
  uint64_t free_bytes = 0;     // in the free-range map (not counting magazines)
  size_t free_ranges = 0;
  uint64_t largest_free = 0;
  uint64_t cached = 0;         // IOVAs held by magazines and the depot
  uint64_t cache_hits = 0;     // allocations served by a magazine or the depot
  uint64_t map_allocations = 0;  // allocations served by the free-range map
};

class IovaAllocator {
 public:
  static constexpr uint64_t kGranule = kIovaGranule;
  static constexpr unsigned kCachedOrders = 6;  // 1, 2, 4 .. 32 pages
  static constexpr uint64_t kMaxCachedSize = kGranule << (kCachedOrders - 1);
  static constexpr uint32_t kMagazineSize = 64;
  static constexpr uint32_t kDepotMagazines = 32;  // per size class
  static constexpr uint64_t k4G = 1ull << 32;

  // Errors: DmaErrc::kInvalidConfig when no usable page remains.
  [[nodiscard]] static Result<std::unique_ptr<IovaAllocator>> create(IovaAllocatorConfig config);
  ~IovaAllocator();
  IovaAllocator(const IovaAllocator&) = delete;
  IovaAllocator& operator=(const IovaAllocator&) = delete;

  // A run of allocation_size(size) bytes ending at or below `limit`.
  [[nodiscard]] Result<Iova> allocate(uint64_t size, Iova limit);
  // Returns a run; `size` as passed to allocate().
  void free(Iova iova, uint64_t size);

  // The bytes a request of `size` occupies (0 for size 0 or past 2^63).
  [[nodiscard]] static constexpr uint64_t allocation_size(uint64_t size) noexcept {
    if (size == 0 || size > (1ull << 63)) return 0;
    const uint64_t pages = (size - 1) / kGranule + 1;
    if (pages <= (1u << (kCachedOrders - 1))) return std::bit_ceil(pages) * kGranule;
    return pages * kGranule;
  }
  // Moves every cached IOVA back to the free-range map.
  void drain_caches();
  [[nodiscard]] IovaAllocatorStats stats() const;
  [[nodiscard]] std::span<const IovaRange> ranges() const noexcept { return ranges_; }

 private:
  struct Magazine;
  struct Shard;
  struct Depot;

  explicit IovaAllocator(std::vector<IovaRange> ranges, uint32_t shards, bool prefer_below_4g);
  [[nodiscard]] Shard& my_shard() noexcept;
  [[nodiscard]] bool cache_get(unsigned order, uint64_t limit, uint64_t& out);
  void cache_put(unsigned order, uint64_t iova);
  // Searches the free-range map; false when nothing fits.
  [[nodiscard]] bool map_allocate(uint64_t bytes, uint64_t align, uint64_t limit, uint64_t& out);
  void map_free(uint64_t iova, uint64_t bytes);
  void map_free_locked(uint64_t iova, uint64_t bytes);
  void return_magazine(unsigned order, Magazine& m);

  const std::vector<IovaRange> ranges_;
  const bool prefer_below_4g_;
  const uint32_t shard_mask_;
  std::unique_ptr<Shard[]> shards_;
  std::unique_ptr<Depot> depot_;

  mutable std::mutex map_mu_;
  std::map<uint64_t, uint64_t> free_;  // first byte -> last byte (inclusive); guarded by map_mu_
  uint64_t map_allocations_ = 0;       // guarded by map_mu_
};

}  // namespace vdma
