// IovaFlushQueue: what happens to an IOVA run after the IOMMU DMA ops removed
// it from the page table: the device IOTLB is invalidated through an
// InvalidationSink, and only then does the run go back to the IovaAllocator
// (Linux dma-iommu's strict mode and its flush queue, "lazy" mode).
//
//   IovaFlushQueue fq(*allocator, sink, {.mode = InvalidationMode::kLazy, .max_entries = 256,
//                                        .max_delay = std::chrono::milliseconds(10)});
//   VDMA_TRY(fq.release(run, size));   // after the page-table unmap of [run, run + size)
//   VDMA_TRY(fq.flush());              // e.g. before a device reset: everything invalidated and freed
//
// Strict: release() calls the sink for the run on the calling thread and
// frees the run when it returns success. Unmap latency includes the
// invalidation round trip; the device loses access before unmap returns.
//
// Lazy: release() queues the run. The queue is flushed as one batch (one
// sink call with the sorted, merged ranges, then every run freed) when it
// holds max_entries runs, or when a release() or flush_expired() finds its
// oldest run queued for max_delay or longer. There is no timer thread: an
// owner with an event loop calls flush_expired() when idle so the device's
// stale IOTLB entries do not outlive max_delay by much. Until the flush the
// device may still reach the buffer through a stale IOTLB entry (the lazy
// trade-off), but its IOVA is never handed out again before the flush that
// covers it has returned.
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
#include <string_view>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/invalidation_sink.h"
#include "vdma/dma/iova_allocator.h"
#include "vdma/dma/spin_lock.h"

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
};

struct FlushQueueStats {
  uint64_t flushes = 0;          // successful sink calls
  uint64_t runs_freed = 0;       // runs returned to the allocator
  uint64_t failed_flushes = 0;
  size_t pending = 0;            // runs waiting for an invalidation
};

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
  [[nodiscard]] Result<void> release(Iova iova, uint64_t size);
  // Invalidates and frees every queued run. Errors: the sink's.
  [[nodiscard]] Result<void> flush();
  // flush() if the oldest queued run is at least max_delay old.
  [[nodiscard]] Result<void> flush_expired();

  [[nodiscard]] InvalidationMode mode() const noexcept { return config_.mode; }
  [[nodiscard]] FlushQueueStats stats() const;

 private:
  struct Run {
    uint64_t iova = 0;
    uint64_t size = 0;  // as passed to IovaAllocator::allocate
  };

  [[nodiscard]] std::chrono::steady_clock::time_point now() const;
  [[nodiscard]] Result<void> flush_locked();  // flush_mu_ held
  void requeue(std::vector<Run>& runs);

  IovaAllocator& alloc_;
  const std::shared_ptr<InvalidationSink> sink_;
  const FlushQueueConfig config_;

  mutable SpinLock mu_;  // short sections: a push, a swap
  std::vector<Run> queue_;                              // guarded by mu_
  std::chrono::steady_clock::time_point oldest_{};      // guarded by mu_; when queue_ became non-empty
  std::atomic<size_t> pending_{0};                      // queue_.size(), readable without mu_
  std::atomic<uint64_t> flushes_{0}, runs_freed_{0}, failed_flushes_{0};

  std::mutex flush_mu_;                  // serialises batch flushes (flush() is a barrier)
  std::vector<Run> batch_;               // guarded by flush_mu_; reused, no allocation once warm
  std::vector<AddrRange<Iova>> ranges_;  // guarded by flush_mu_
};

}  // namespace vdma
