#include "vdma/dma/iova_flush_queue.h"

#include <time.h>

#include <algorithm>

namespace vdma {

std::string_view to_string(InvalidationMode m) noexcept {
  switch (m) {
    case InvalidationMode::kStrict: return "strict";
    case InvalidationMode::kLazy: return "lazy";
  }
  return "invalid";
}

IovaFlushQueue::IovaFlushQueue(IovaAllocator& allocator, std::shared_ptr<InvalidationSink> sink,
                               FlushQueueConfig config)
    : alloc_(allocator),
      sink_(sink != nullptr ? std::move(sink) : std::make_shared<NoopInvalidationSink>()),
      config_(std::move(config)) {
  VDMA_CHECK(config_.max_entries >= 1, "a flush queue needs room for one run");
  queue_.reserve(config_.max_entries);
}

// Runs still queued at destruction were never invalidated: leaving them out
// of the allocator is the safe choice, and the allocator is going away with
// the domain anyway.
IovaFlushQueue::~IovaFlushQueue() = default;

// The age limit needs no better than a scheduler tick (Linux's flush queue
// uses jiffies), and every lazy unmap reads the clock: the coarse monotonic
// clock is a load of what the kernel last wrote, where steady_clock::now()
// reads the TSC. Both count from the same origin (CLOCK_MONOTONIC).
std::chrono::steady_clock::time_point IovaFlushQueue::now() const {
  if (config_.clock) return config_.clock();
#ifdef CLOCK_MONOTONIC_COARSE
  timespec ts{};
  if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0) {
    return std::chrono::steady_clock::time_point(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
  }
#endif
  return std::chrono::steady_clock::now();
}

Result<void> IovaFlushQueue::release(Iova iova, uint64_t size) {
  if (config_.mode == InvalidationMode::kStrict) {
    const AddrRange<Iova> range{iova, IovaAllocator::allocation_size(size)};
    auto r = sink_->invalidate({&range, 1});
    if (!r) {
      failed_flushes_.fetch_add(1, std::memory_order_relaxed);
      std::vector<Run> one{{iova.value(), size}};
      requeue(one);
      return Unexpected(std::move(r).error().with_context(
          fmt::format("IOTLB invalidation of {} + {:#x} failed; the IOVAs stay out of the allocator until a flush "
                      "succeeds",
                      iova, range.len)));
    }
    flushes_.fetch_add(1, std::memory_order_relaxed);
    alloc_.free(iova, size);
    runs_freed_.fetch_add(1, std::memory_order_relaxed);
    // Runs whose invalidation failed earlier get another chance.
    if (pending_.load(std::memory_order_relaxed) != 0) return flush();
    return ok();
  }
  bool full = false, expired = false;
  {
    const auto t = now();
    std::lock_guard lock(mu_);
    if (queue_.empty()) oldest_ = t;
    queue_.push_back({iova.value(), size});
    pending_.store(queue_.size(), std::memory_order_relaxed);
    full = queue_.size() >= config_.max_entries;
    expired = t - oldest_ >= config_.max_delay;
  }
  if (full || expired) return flush();
  return ok();
}

Result<void> IovaFlushQueue::flush_expired() {
  {
    const auto t = now();
    std::lock_guard lock(mu_);
    if (queue_.empty() || t - oldest_ < config_.max_delay) return ok();
  }
  return flush();
}

Result<void> IovaFlushQueue::flush() {
  std::lock_guard flush_lock(flush_mu_);
  return flush_locked();
}

Result<void> IovaFlushQueue::flush_locked() {
  batch_.clear();
  {
    std::lock_guard lock(mu_);
    batch_.swap(queue_);
    pending_.store(0, std::memory_order_relaxed);
  }
  // queue_ got batch_'s old (empty) buffer; keep its capacity for the next batch.
  if (batch_.empty()) return ok();
  std::sort(batch_.begin(), batch_.end(), [](const Run& a, const Run& b) { return a.iova < b.iova; });
  ranges_.clear();
  for (const Run& run : batch_) {
    const uint64_t len = IovaAllocator::allocation_size(run.size);
    if (!ranges_.empty() && ranges_.back().start.value() + ranges_.back().len == run.iova) {
      ranges_.back().len += len;  // adjacent runs: one range for the sink
    } else {
      ranges_.push_back({Iova(run.iova), len});
    }
  }
  auto r = sink_->invalidate(ranges_);
  if (!r) {
    failed_flushes_.fetch_add(1, std::memory_order_relaxed);
    const size_t n = batch_.size();
    requeue(batch_);
    return Unexpected(std::move(r).error().with_context(
        fmt::format("IOTLB invalidation of a batch of {} IOVA runs in {} ranges failed; they stay out of the "
                    "allocator until a flush succeeds",
                    n, ranges_.size())));
  }
  flushes_.fetch_add(1, std::memory_order_relaxed);
  for (const Run& run : batch_) alloc_.free(Iova(run.iova), run.size);
  runs_freed_.fetch_add(batch_.size(), std::memory_order_relaxed);
  batch_.clear();
  return ok();
}

void IovaFlushQueue::requeue(std::vector<Run>& runs) {
  const auto t = now();
  std::lock_guard lock(mu_);
  if (queue_.empty()) oldest_ = t;
  queue_.insert(queue_.end(), runs.begin(), runs.end());
  pending_.store(queue_.size(), std::memory_order_relaxed);
  runs.clear();
}

FlushQueueStats IovaFlushQueue::stats() const {
  FlushQueueStats s;
  s.flushes = flushes_.load(std::memory_order_relaxed);
  s.runs_freed = runs_freed_.load(std::memory_order_relaxed);
  s.failed_flushes = failed_flushes_.load(std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  s.pending = queue_.size();
  return s;
}

}  // namespace vdma
