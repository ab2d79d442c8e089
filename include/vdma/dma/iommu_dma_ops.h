// IommuDmaOps: the platform DMA ops of a device behind an IOMMU (Linux
// drivers/iommu/dma-iommu.c). The DMA address a device is given is an IOVA
// of its domain.
//
//   auto ioas = IoAddressSpace::create();
//   auto paging = *PagingDomain::create(*ioas);
//   VDMA_TRY(paging->attach_device(DeviceId{3}, kMsiWindow));      // before the DMA domain: it reads iova_ranges()
//   auto dom = *IommuDmaDomain::create(*ioas, *paging, {.mode = InvalidationMode::kLazy, .sink = sink});
//   auto ops = *IommuDmaOps::create(*mem, dom, {.coherent = coherent_pool});
//   DmaAddr d = *ops->map(gpa, 4096, DmaDirection::kToDevice);     // an IOVA, mapped read-only
//   ...
//   VDMA_TRY(ops->unmap(d, 4096, DmaDirection::kToDevice));        // page table cleared, then invalidated
//
// IommuDmaDomain is the DMA state of one domain (Linux's iommu_dma_cookie),
// shared by the DmaOps of every device attached to it: the IOVA window, the
// IOVA allocator (iova_allocator.h), the flush queue (iova_flush_queue.h),
// the table of live mappings, and the lock that serialises the page table.
//
// The DMA window. As Linux's kernel DMA domains, the DMA API manages its
// IOVAs itself instead of going through the IO address space: create()
// reserves a window in the IOAS (IommuDomainConfig::window, by default every
// range usable at that time) under ReservationOwner::dma_api, the allocator
// hands out IOVAs only from it, and map/unmap write the PagingDomain's page
// table directly (PagingDomain::map_pages, Linux iommu_map). The IOAS can
// never place a mapping of its own there, so the IOAS and the page table
// stay consistent; the DMA mappings are not IOAS mappings (IoAddressSpace::
// find() and mappings() do not list them; mapping_count() here does). The
// page table is what the vIOMMU walks, so it sees every DMA mapping.
//
// map(gpa, len, dir): allocates an IOVA run for the pages around
// [gpa, gpa+len) (the in-page offset is kept: dma % 4 KiB == gpa % 4 KiB)
// below the device's DMA mask, preferring IOVAs below 4 GiB, maps its pages
// in the page table and records the mapping. Permissions follow the
// direction: kToDevice -> read, kFromDevice -> write, kBidirectional ->
// read/write. As with Linux dma-iommu the device can reach the rest of the
// first and last page.
// unmap(dma, len, dir): checks that (dma, len) is exactly one live mapping,
// clears its pages from the page table, and hands the run to the flush
// queue: strict invalidates before returning and frees the IOVA after the
// sink returned; lazy queues it (see iova_flush_queue.h).
// map_sg merges a scatter list into one IOVA run: entry i keeps its in-page
// offset and starts on the page after entry i-1's last page; entries that
// meet on a page boundary form one DMA segment. unmap_sg ends the whole run
// (a single entry of it cannot be unmapped with unmap()).
// unmap_batch(reqs): every page-table unmap first, under one hold of the
// domain lock, then ONE release of all the runs to the flush queue: strict
// mode makes a single sink call with all their ranges (sorted, adjacent
// ones merged) instead of one round trip per buffer, as Linux gathers the
// IOTLB flush of several unmaps (iommu_iotlb_gather) before one
// iommu_iotlb_sync. An entry that is not exactly a live mapping fails as
// unmap() would and is left untouched (still mapped, still live, its IOVA
// not freed); the other entries are unmapped and released all the same, and
// the first such error is returned ("unmap_batch entry 1 of 3: ...").
//
// Map announcements (IommuDomainConfig::announce_maps; Linux
// iommu_ops::iotlb_sync_map): after map(), map_sg() or alloc_coherent() has
// written the page table, outside the domain lock and before it returns,
// the sink's mapped() gets the whole pages just mapped, with their Gpa and
// permission (invalidation_sink.h), so a vIOMMU can hand the translation to
// the device before the device asks for it. Revived runs are not announced:
// they were never invalidated, so the device still has (or may still ask
// for) exactly that translation.
//
// Lazy revival (not what Linux does; see iova_flush_queue.h "Revival" for
// the safety argument). In lazy mode an unmapped run waits in the flush
// queue with its key: the Gpa and len it was mapped with and the page-table
// permission. map() of exactly the same (gpa, len, direction) takes such a
// waiting run back, re-installs its pages (same IOVA -> same Gpa, same
// rights) and returns the same DMA address: no new IOVA, so the device
// finds its old translation (no IOTLB miss), and no invalidation. A run
// already taken into a flush, a different Gpa, len or permission, or a run
// beyond this device's DMA mask is never revived. The revived mapping is a
// normal live mapping (mapping_count(), unmap, the debug checker), and its
// next unmap queues it again. Strict mode never revives.
// FlushQueueStats::revived counts revivals; IommuDomainConfig::
// revive_lazy_unmaps = false turns revival off.
//
// sync_*: a coherent device needs none (no-ops, need_sync() false); a
// non-coherent device gets the CacheMaintenance hooks on the Gpa behind the
// IOVA (from the page table), on map/unmap (unless kSkipCpuSync) and every
// sync, as DirectDmaOps.
// alloc_coherent: memory from the CoherentPool, mapped read/write through
// the IOMMU as well; the CoherentBuffer's dma is its IOVA.
// max_mapping_size(): the largest usable IOVA range below the DMA mask.
//
// Bounce through the IOMMU (IommuDmaOpsConfig::bounce_pool; a confidential
// guest whose device sits behind an IOMMU, Linux dma-iommu with swiotlb):
// the device may reach shared memory only, so the IOMMU never maps the
// caller's buffer. map() takes a slot of the pool (shared memory), copies
// the buffer in (every direction, as BouncePool::map) and maps the SLOT's
// pages through the domain; the DMA address is the slot's IOVA. unmap()
// ends the IOMMU mapping first, with the invalidation semantics of the
// domain's mode (strict: the device has lost the IOVA when the sink
// returns), and only then copies the device's bytes back (kFromDevice,
// kBidirectional, unless kSkipCpuSync) and frees the slot; unmap_batch()
// does every page-table unmap and ONE strict invalidation before any
// copy-back. In lazy mode the slot is freed before the invalidation, as
// Linux does: a stale IOTLB entry then reaches a shared slot, which the
// host can reach anyway. A strict invalidation that fails keeps the slot
// out of the pool (the device may still write it) and returns the error.
// sync_for_cpu/sync_for_device copy between the slot and the buffer, so
// need_sync() is true. map_sg maps entry by entry (each entry its own slot
// and IOVA, as Linux's iommu_dma_map_sg_swiotlb). The largest mapping is
// the pool's (256 KiB less the min_align_mask slack). alloc_coherent still
// comes from the coherent pool, which create() then requires to be shared.
// kind() is "iommu-bounce" ("iommu-identity-bounce" in a passthrough domain,
// where the DMA address is the slot's Gpa).
//
// Identity (passthrough) domains: create_identity(). DMA address == Gpa, no
// IOVA allocation, no invalidation; map checks that the identity domain
// covers the range (its window, minus attached devices' reserved regions)
// and that it is below the DMA mask. IommuDmaOps::create checks the same of
// the coherent pool's window, which the device must reach for its rings.
//
// Errors of map: BaseErrc::kInvalidArgument (len 0), BaseErrc::kOverflow,
// MemErrc::kNotMapped (not guest memory), DmaErrc::kTooLarge (beyond
// max_mapping_size()), DmaErrc::kIovaExhausted (with the numbers),
// DmaErrc::kNotCovered (identity domain: a page it does not translate),
// DmaErrc::kBeyondMask (identity domain), IommuErrc::kInvalidArgument (a
// Gpa beyond the page table's 52-bit output).
// Errors of unmap/sync: DmaErrc::kUnknownMapping naming the address; the
// sink's error when an invalidation fails (the page table no longer maps
// the buffer, but the device's IOTLB may, so the CPU must not reuse it).
//
// Lifetime: the IOAS and domain must outlive the IommuDmaDomain, which the
// DmaOps hold by shared_ptr; every mapping must be unmapped before the
// DmaOps is destroyed (a domain destroyed with live mappings clears them
// from the page table and gives the window back to the IOAS). Devices
// attached to the domain after create() must not reserve IOVAs inside the
// window: the allocator does not see later reservations (IommuPlatform gives
// every device of a domain the same reserved ranges).
// Thread safety: every method may be called concurrently; map/unmap
// serialise briefly on the domain lock (the page table is not thread-safe),
// and the IOVA magazines are per thread. The IOAS itself is not touched
// after create() (but by the destructor), so its owner may keep using it
// under its own serialisation.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "vdma/dma/bounce_pool.h"
#include "vdma/dma/cache_maintenance.h"
#include "vdma/dma/coherent_pool.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/dma/invalidation_sink.h"
#include "vdma/dma/iova_allocator.h"
#include "vdma/dma/iova_flush_queue.h"
#include "vdma/base/spin_lock.h"
#include "vdma/iommu/domain.h"
#include "vdma/iommu/io_address_space.h"

namespace vdma {

struct IommuDomainConfig {
  InvalidationMode mode = InvalidationMode::kStrict;
  std::shared_ptr<InvalidationSink> sink;  // null: NoopInvalidationSink
  // Lazy: runs the flush queue holds before it flushes them all. With
  // revival the queue also keeps the buffers a driver maps again (a
  // virtio-blk queue at depth D keeps about 4 D runs: header, status, and a
  // data buffer in each direction), so it must hold every queue's working
  // set: 256 flushed two queues at depth 32 in full, again and again, and
  // each buffer then missed in the device's IOTLB. Linux: 256 per CPU.
  size_t flush_queue_entries = 1024;
  // Lazy: per-thread flush queues (FlushQueueConfig::shards), each holding
  // up to flush_queue_entries runs; 0: one per hardware thread.
  uint32_t flush_queue_shards = 0;
  std::chrono::nanoseconds flush_queue_delay = std::chrono::milliseconds(10);
  std::function<std::chrono::steady_clock::time_point()> clock;  // empty: steady_clock
  bool revive_lazy_unmaps = true;                                 // lazy: map() may revive a queued run
  // Every mapping is announced to sink->mapped() (invalidation_sink.h "Map
  // announcements"): a vIOMMU pushes it to the device before it is used.
  bool announce_maps = false;
  uint32_t magazine_shards = 0;                                   // 0: one per hardware thread
  bool prefer_below_4g = true;
  // The IOVA ranges the DMA API takes for itself (reserved in the IOAS);
  // empty: every range usable when the domain is created.
  std::vector<IovaRange> window;
};

class IovaMappingTable;

class IommuDmaDomain {
 public:
  // A paging domain over `ioas`. Reserves the window in the IOAS; with the
  // default window, attach devices (their reserved regions) first.
  // Errors: DmaErrc::kInvalidConfig (domain not over ioas, no usable IOVA in
  // the window, the window overlaps an IOAS mapping (names it) or lies
  // beyond the page table's 48-bit input).
  [[nodiscard]] static Result<std::shared_ptr<IommuDmaDomain>> create(IoAddressSpace& ioas, PagingDomain& domain,
                                                                      IommuDomainConfig config = {});
  [[nodiscard]] static std::shared_ptr<IommuDmaDomain> create_identity(IdentityDomain& domain);
  ~IommuDmaDomain();
  IommuDmaDomain(const IommuDmaDomain&) = delete;
  IommuDmaDomain& operator=(const IommuDmaDomain&) = delete;

  [[nodiscard]] bool is_identity() const noexcept { return ioas_ == nullptr; }
  [[nodiscard]] Domain& domain() const noexcept { return domain_; }
  // Null for an identity domain.
  [[nodiscard]] IoAddressSpace* ioas() const noexcept { return ioas_; }
  [[nodiscard]] IovaAllocator* allocator() const noexcept { return alloc_.get(); }
  [[nodiscard]] IovaFlushQueue* flush_queue() const noexcept { return fq_.get(); }
  // The IOVA ranges reserved for the DMA API (page-rounded; empty for an
  // identity domain).
  [[nodiscard]] std::span<const IovaRange> window() const noexcept { return window_; }
  // Live mappings: map() calls and scatter lists not yet unmapped.
  [[nodiscard]] size_t mapping_count() const;

  // Translates through the domain under its lock: what the device's IOMMU
  // would do. For tests and device models that share the process.
  [[nodiscard]] Result<PageTranslation> translate(Iova iova, Access access) const;
  // The flush queue's flush() / flush_expired(); no-ops for identity domains.
  [[nodiscard]] Result<void> flush();
  [[nodiscard]] Result<void> flush_expired();

 private:
  friend class IommuDmaOps;
  IommuDmaDomain(IoAddressSpace* ioas, Domain& domain);

  IoAddressSpace* const ioas_;
  Domain& domain_;
  PagingDomain* paging_ = nullptr;  // null for an identity domain
  ReservationOwner owner_{};        // of the window in *ioas_
  std::vector<IovaRange> window_;   // as reserved in *ioas_
  std::unique_ptr<IovaAllocator> alloc_;
  std::unique_ptr<IovaFlushQueue> fq_;
  mutable SpinLock mu_;  // guards domain_ (page table, identity reservations) and *live_; never held across a sink call
  std::shared_ptr<InvalidationSink> announce_;  // IommuDomainConfig::announce_maps: the sink; else null
  std::unique_ptr<IovaMappingTable> live_;  // guarded by mu_
};

struct IommuDmaOpsConfig {
  uint64_t dma_mask = UINT64_MAX;             // 2^n - 1
  std::shared_ptr<CoherentPool> coherent;     // required: alloc_coherent carves from it
  bool coherent_device = true;
  std::shared_ptr<CacheMaintenance> cache;    // required when !coherent_device
  // Non-null: every streaming mapping bounces through this pool and the
  // IOMMU maps the slot (a restricted platform; see "Bounce through the
  // IOMMU" above). The coherent window must then be shared memory.
  std::shared_ptr<BouncePool> bounce_pool;
  uint64_t min_align_mask = 0;                // bits of the buffer address a slot preserves
};

class IommuDmaOps final : public DmaOps {
 public:
  // Errors: DmaErrc::kInvalidConfig (no coherent pool, a non-coherent
  // device without cache hooks, a mask not of the form 2^n-1, no usable
  // IOVA below the mask; with a bounce pool: a private coherent window, or
  // in an identity domain a pool window it does not translate or that lies
  // beyond the mask).
  [[nodiscard]] static Result<std::unique_ptr<IommuDmaOps>> create(const GuestMemory& mem,
                                                                   std::shared_ptr<IommuDmaDomain> domain,
                                                                   IommuDmaOpsConfig config);

  [[nodiscard]] Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir,
                                    DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir,
                                   DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> unmap_batch(std::span<const DmaUnmapRequest> reqs) override;
  [[nodiscard]] Result<void> sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) override;
  [[nodiscard]] Result<void> sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) override;
  [[nodiscard]] Result<CoherentBuffer> alloc_coherent(uint64_t size) override;
  [[nodiscard]] Result<void> free_coherent(const CoherentBuffer& buf) override;
  [[nodiscard]] uint64_t max_mapping_size() const override { return max_mapping_; }
  [[nodiscard]] bool need_sync(DmaAddr) const override { return cache_ != nullptr || bounce_ != nullptr; }
  [[nodiscard]] Result<size_t> map_sg(std::span<SgEntry> sg, DmaDirection dir,
                                      DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> unmap_sg(std::span<const SgEntry> sg, DmaDirection dir,
                                      DmaAttrs attrs = DmaAttrs::kNone) override;
  // "iommu", or "iommu-identity" for a passthrough domain; "-bounce"
  // appended when every mapping bounces.
  [[nodiscard]] std::string_view kind() const noexcept override;

  [[nodiscard]] IommuDmaDomain& domain() const noexcept { return *dom_; }
  // The pool every streaming mapping bounces through; null unless configured.
  [[nodiscard]] BouncePool* bounce_pool() const noexcept { return bounce_.get(); }

 private:
  IommuDmaOps(const GuestMemory& mem, std::shared_ptr<IommuDmaDomain> dom, IommuDmaOpsConfig config,
              uint64_t max_mapping);
  [[nodiscard]] Result<void> check_guest(Gpa gpa, uint64_t len, std::string_view op) const;
  [[nodiscard]] bool in_last_region(Gpa gpa, uint64_t len) const noexcept;
  [[nodiscard]] Result<void> check_guest_slow(Gpa gpa, uint64_t len, std::string_view op) const;
  // map() without the cache hooks and the failure log.
  [[nodiscard]] Result<DmaAddr> map_unbounced(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs);
  // The bounce path (iommu_dma_bounce.cc): slot, copy-in, IOMMU map of the slot.
  [[nodiscard]] Result<DmaAddr> map_bounced(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs);
  // After the IOMMU no longer maps the slot (and, strict, after the
  // invalidation): copy back the first `written` bytes and free it;
  // `released` is the invalidation's outcome (a failed strict one keeps the slot).
  [[nodiscard]] Result<void> end_bounce(Gpa slot, uint64_t len, DmaDirection dir, DmaAttrs attrs,
                                        const Result<void>& released,
                                        uint64_t written = DmaUnmapRequest::kAllWritten);
  // unmap() of one unmap_batch() entry, honouring its `written`.
  [[nodiscard]] Result<void> unmap_one(const DmaUnmapRequest& q);
  [[nodiscard]] Result<void> sync_bounced_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir);
  [[nodiscard]] Result<void> sync_bounced_for_device(DmaAddr addr, uint64_t len, DmaDirection dir);
  [[nodiscard]] Result<DmaAddr> map_identity(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs);
  [[nodiscard]] Result<DmaAddr> map_paging(Gpa gpa, uint64_t len, Access perms);
  [[nodiscard]] Result<DmaAddr> map_run(Iova run, Gpa gpa, uint64_t len, Access perms, bool revived);
  // Ends the mapping (addr, len) in the IOMMU, runs the cache hooks and
  // releases its run (strict: invalidates). `ended` is set to the Gpa the
  // mapping reached once the IOMMU no longer maps it, even when the release
  // then fails; unset when (addr, len) was not a live mapping.
  [[nodiscard]] Result<void> unmap_in_place(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs,
                                            std::optional<Gpa>& ended);
  // Ends the live mapping (addr, len) in the page table and the live table
  // (domain lock held); the caller releases the returned run.
  [[nodiscard]] Result<ReleasedRun> unmap_locked(DmaAddr addr, uint64_t len);
  // Whether the identity domain translates [gpa, gpa + len) (domain lock held).
  [[nodiscard]] static Result<void> identity_covers(Domain& domain, Gpa gpa, uint64_t len, Access access);
  // Cache hooks for the Gpas behind [iova, iova + len) (domain lock held).
  void sync_range_for_cpu(uint64_t iova, uint64_t len, DmaDirection dir) const;
  // The Gpa behind a live IOVA (paging) for cache maintenance.
  [[nodiscard]] Result<Gpa> cpu_of(DmaAddr addr, std::string_view op) const;

  const GuestMemory& mem_;
  const std::shared_ptr<IommuDmaDomain> dom_;
  const uint64_t dma_mask_;
  const std::shared_ptr<CoherentPool> coherent_;
  const std::shared_ptr<CacheMaintenance> cache_;  // null for a coherent device
  const std::shared_ptr<BouncePool> bounce_;       // null: buffers are mapped in place
  const uint64_t min_align_mask_;
  const uint64_t max_mapping_;
  // The guest-memory region that held the last mapped buffer (a hint).
  mutable std::atomic<const GuestRegion*> last_region_{nullptr};
};

}  // namespace vdma
