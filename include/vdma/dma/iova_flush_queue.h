// IovaFlushQueue: what happens to an IOVA run after the IOMMU DMA ops removed
// it from the page table: the device IOTLB is invalidated through an
// InvalidationSink, and only then does the run go back to the IovaAllocator
// (Linux dma-iommu's strict mode and its flush queue, "lazy" mode).
//
//   IovaFlushQueue fq(*allocator, sink, {.mode = InvalidationMode::kLazy, .max_entries = 256,
//                                        .max_delay = std::chrono::milliseconds(10)});
//   VDMA_TRY(fq.release(run, size));   // after the page-table unmap of [run, run + size)
//   VDMA_TRY(fq.release(run2, size2, {.gpa = g, .len = l, .perms = Access::kRead}));   // revivable (lazy)
//   if (auto iova = fq.revive({.gpa = g, .len = l, .perms = Access::kRead}, l, limit)) ...;  // back in use
//   VDMA_TRY(fq.flush());              // e.g. before a device reset: everything invalidated and freed
//
// Strict: release() calls the sink for the run on the calling thread and
// frees the run when it returns success. Unmap latency includes the
// invalidation round trip; the device loses access before unmap returns.
// release_batch() does the same for several runs with ONE sink call (the
// runs' ranges sorted and adjacent ones merged), as Linux gathers the
// IOTLB flush of several unmaps (iommu_iotlb_gather) before one sync.
//
// Lazy: release() queues the run. The whole queue is flushed as one batch
// (one sink call with the sorted, merged ranges, then every run freed) when
// it holds max_entries runs. When a release() or flush_expired() finds its
// oldest run queued for max_delay or longer, the runs queued for half of
// max_delay or longer are flushed as one batch and the younger ones stay:
// every run is still invalidated within max_delay of its release (give or
// take the caller's next call), expiry flushes come at most twice per
// max_delay, and runs a driver is about to map again stay revivable (a
// whole-queue flush at each expiry took every queued buffer of a mixed
// read/write workload with it, each then an IOTLB miss). There is no timer thread: an
// owner with an event loop calls flush_expired() when idle so the device's
// stale IOTLB entries do not outlive max_delay by much. Until the flush the
// device may still reach the buffer through a stale IOTLB entry (the lazy
// trade-off), but its IOVA is never handed out again before the flush that
// covers it has returned.
//
// Revival (lazy only; not something Linux does). A virtio driver maps the
// same few buffers over and over (a block driver's per-slot header, data
// and status buffers), and behind a vIOMMU every new IOVA costs the device
// an IOTLB miss round trip and every invalidation another. So release()
// may be given the RevivalKey of the run (the Gpa, len and page-table
// permission of the one map() it served), and revive() takes such a run
// back out of the queue when the same buffer is mapped again with exactly
// the same key: the DMA ops re-install its page-table entries and hand
// out the same DMA address, with no new IOVA, no miss and no invalidation.
// Why it is safe:
//   - Only runs still waiting in the queue are revived. A flush takes the
//     whole queue into its batch under the queue lock before it calls the
//     sink, so a run whose invalidation is in progress (or done) is never
//     revived, and a revived run is never in a batch.
//   - The key is exact. The revived run maps the same Gpa pages with the
//     same permission as before, so any translation the device still holds
//     for it (the lazy trade-off) is the page table's own again: the
//     device's view never differs from the page table, and it grants no more
//     than the new live mapping does. A read-only mapping never revives a
//     writable run or vice versa; another len or Gpa never matches.
//   - The exposure is not extended: a revived run is a live mapping, and
//     its next unmap queues it again with a fresh age, flushed within
//     max_delay like any other. Its IOVA never reached the allocator, so no
//     other mapping can hold it.
//   - revive() only returns a run that ends at or below the caller's
//     `limit` (the device's DMA mask; devices of one domain share a queue).
// Two queued runs with the same key (a buffer mapped twice at once): the
// newest is revivable, the older one is simply flushed. The index is a
// fixed-size hash beside the queue (O(1), nothing allocated once built);
// a run it has no room for (only possible once failed flushes requeued
// more than max_entries runs) is not revivable.
//
// Shards (lazy). Each thread releases into, and revives from, its own
// queue (threads are numbered once, modulo the shard count), so the queue
// threads of a multi-queue device never take one lock or touch one index:
// with one shared queue its spin lock was a quarter of a 2-queue lazy run.
// A driver maps a buffer again on the thread that unmapped it, so revival
// keeps working; a buffer another thread maps again just gets a new IOVA.
// A full shard flushes itself; an expiry flush and flush() take runs from
// every shard in one sink call.
//
// Failure of the sink (either mode): the runs stay out of the allocator,
// queued for the next flush, and the error is returned, with context, from
// the release() or flush() that called the sink. Nothing is freed that the
// device might still translate.
//
// flush() is a barrier: when it returns success, every run released before
// it was called has been invalidated and freed (sink calls of lazy flushes
// are serialised for this).
//
// Thread safety: every method may be called concurrently. The sink is
// called with no lock of this queue held, except the lock that serialises
// lazy flushes with each other.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/invalidation_sink.h"
#include "vdma/dma/iova_allocator.h"
#include "vdma/base/spin_lock.h"
#include "vdma/mem/device_memory.h"

namespace vdma {

enum class InvalidationMode : uint8_t { kStrict, kLazy };
[[nodiscard]] std::string_view to_string(InvalidationMode m) noexcept;

struct FlushQueueConfig {
  InvalidationMode mode = InvalidationMode::kStrict;
  size_t max_entries = 256;                       // lazy: flush when this many runs are queued (>= 1)
  std::chrono::nanoseconds max_delay = std::chrono::milliseconds(10);  // lazy: age limit of the oldest run
  // Time source for the age limit; empty: the coarse monotonic clock
  // (steady_clock's origin, a scheduler tick of resolution, like Linux's
  // jiffies). Tests inject a fake clock.
  std::function<std::chrono::steady_clock::time_point()> clock;
  // Lazy: let revive() take queued runs back (see "Revival" above).
  bool revive = true;
  // Lazy: queues, one per thread modulo this many (see "Shards" above),
  // rounded up to a power of two; max_entries applies to each. 0: one per
  // hardware thread (at most 64).
  uint32_t shards = 0;
};

struct FlushQueueStats {
  uint64_t flushes = 0;          // successful sink calls
  uint64_t runs_freed = 0;       // runs returned to the allocator
  uint64_t failed_flushes = 0;
  size_t pending = 0;            // runs waiting for an invalidation
  uint64_t revived = 0;          // runs taken back out of the queue by revive()
};

// What a run mapped: the buffer and permission of one map() call. Two
// mappings with equal keys put the same Gpa pages in the page table with the
// same rights. len == 0: not revivable (scatter lists, strict mode).
struct RevivalKey {
  uint64_t gpa = 0;  // as passed to map(), in-page offset included
  uint64_t len = 0;  // as passed to map()
  Access perms = Access::kNone;
  friend constexpr bool operator==(const RevivalKey&, const RevivalKey&) = default;
};

// One run for release_batch().
struct ReleasedRun {
  Iova iova;         // the run's first page
  uint64_t size = 0;  // as passed to IovaAllocator::allocate
  RevivalKey key;     // len 0: not revivable
};

class IovaRevivalIndex;

class IovaFlushQueue {
 public:
  // `allocator` must outlive the queue. A null sink is a NoopInvalidationSink.
  IovaFlushQueue(IovaAllocator& allocator, std::shared_ptr<InvalidationSink> sink, FlushQueueConfig config);
  ~IovaFlushQueue();
  IovaFlushQueue(const IovaFlushQueue&) = delete;
  IovaFlushQueue& operator=(const IovaFlushQueue&) = delete;

  // The run [iova, iova + IovaAllocator::allocation_size(size)) was
  // allocated with `size` and is no longer in the page table.
  // Errors: the sink's error (with context) when an invalidation this call
  // made failed; the run is then kept for the next flush.
  // With a non-empty `key`, a lazy queue can revive() the run.
  [[nodiscard]] Result<void> release(Iova iova, uint64_t size, const RevivalKey& key = {});
  // release() of several runs: strict mode makes one sink call for all of
  // them (sorted, merged) and frees them all when it returns success; on
  // failure all stay queued. Lazy mode queues them under one lock.
  // Preconditions: as release(), for each run; the runs are disjoint.
  // Errors: as release().
  [[nodiscard]] Result<void> release_batch(std::span<const ReleasedRun> runs);
  // Lazy mode: takes the newest queued run released with `key` back out of
  // the queue, if it is still waiting (not taken into a flush) and ends at
  // or below `limit`; it is then the caller's again, as if just allocated
  // with `size` (which must be the size it was released with, VDMA_CHECK).
  // The caller must map it again exactly as the key says (or release it).
  // nullopt in strict mode, for key.len == 0, and when no such run waits.
  [[nodiscard]] std::optional<Iova> revive(const RevivalKey& key, uint64_t size, Iova limit);
  // Whether revive() can ever succeed (lazy mode with revival enabled).
  [[nodiscard]] bool revives() const noexcept { return revive_; }
  // Invalidates and frees every queued run. Errors: the sink's.
  [[nodiscard]] Result<void> flush();
  // When the oldest queued run is at least max_delay old: invalidates and
  // frees the runs queued for max_delay / 2 or longer. Errors: the sink's.
  [[nodiscard]] Result<void> flush_expired();

  [[nodiscard]] InvalidationMode mode() const noexcept { return config_.mode; }
  [[nodiscard]] FlushQueueStats stats() const;

 private:
  struct Run {
    uint64_t iova = 0;
    uint64_t size = 0;     // as passed to IovaAllocator::allocate
    RevivalKey key;        // len 0: not revivable
    bool indexed = false;  // index_ maps key to this run's position in queue_
    std::chrono::steady_clock::time_point queued{};  // when it was (last) queued
  };

  // One queue of runs (FlushQueueConfig::shards), on its own cache lines.
  struct alignas(64) Shard {
    mutable SpinLock mu;                       // short sections: a push, a revival, a swap
    std::vector<Run> queue;                    // guarded by mu; in no particular order
    std::unique_ptr<IovaRevivalIndex> index;   // guarded by mu; revivable runs of queue by key
    // Guarded by mu: no later than the oldest run's `queued` (a revival may
    // have taken that run out since).
    std::chrono::steady_clock::time_point oldest{};
    std::atomic<size_t> pending{0};   // queue.size(), readable without mu
    std::atomic<uint64_t> revived{0};  // written under mu only; read without it
  };
  enum class Take : uint8_t { kAll, kExpired };

  [[nodiscard]] std::chrono::steady_clock::time_point now() const;
  [[nodiscard]] Shard& mine() noexcept;  // the calling thread's shard
  [[nodiscard]] size_t pending() const noexcept;
  // flush_mu_ held. From `only` (null: every shard): every run (kAll), or
  // the runs queued at or before now - max_delay / 2 (kExpired).
  [[nodiscard]] Result<void> flush_locked(Take take, Shard* only);
  void requeue(std::vector<Run>& runs);
  void push_locked(Shard& s, Run run);  // s.mu held
  [[nodiscard]] Result<void> release_strict(std::span<const ReleasedRun> runs);

  IovaAllocator& alloc_;
  const std::shared_ptr<InvalidationSink> sink_;
  const FlushQueueConfig config_;
  const bool revive_;  // lazy mode with config_.revive
  uint32_t nshards_ = 1;
  std::unique_ptr<Shard[]> shards_;
  std::atomic<uint64_t> flushes_{0}, runs_freed_{0}, failed_flushes_{0};

  std::mutex flush_mu_;                  // serialises batch flushes (flush() is a barrier)
  std::vector<Run> batch_;               // guarded by flush_mu_; reused, no allocation once warm
  std::vector<AddrRange<Iova>> ranges_;  // guarded by flush_mu_
};

}  // namespace vdma
