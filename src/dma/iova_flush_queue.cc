#include "vdma/dma/iova_flush_queue.h"

#include <time.h>

#include <algorithm>
#include <array>
#include <bit>
#include <thread>

#include "cpu_hint.h"
#include "iova_revival_index.h"

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
      config_(std::move(config)),
      revive_(config_.mode == InvalidationMode::kLazy && config_.revive) {
  VDMA_CHECK(config_.max_entries >= 1, "a flush queue needs room for one run");
  // Strict mode queues only runs whose invalidation failed: one shard.
  if (config_.mode == InvalidationMode::kLazy) {
    nshards_ = config_.shards != 0 ? config_.shards : std::max(1u, std::thread::hardware_concurrency());
    // A power of two: the calling thread's shard is a mask away (a division
    // on every map and unmap cost more than 10 ns).
    nshards_ = std::bit_ceil(std::min<uint32_t>(nshards_, 64));
  }
  shards_ = std::make_unique<Shard[]>(nshards_);
  for (uint32_t i = 0; i < nshards_; ++i) {
    shards_[i].queue.reserve(config_.max_entries);
    if (revive_) shards_[i].index = std::make_unique<IovaRevivalIndex>(config_.max_entries);
  }
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

IovaFlushQueue::Shard& IovaFlushQueue::mine() noexcept {
  // By thread, not CPU: a thread keeps its shard, so a buffer it unmapped
  // is found again when it maps it again.
  return shards_[detail::thread_number() & (nshards_ - 1)];
}

size_t IovaFlushQueue::pending() const noexcept {
  size_t n = 0;
  for (uint32_t i = 0; i < nshards_; ++i) n += shards_[i].pending.load(std::memory_order_relaxed);
  return n;
}

Result<void> IovaFlushQueue::release(Iova iova, uint64_t size, const RevivalKey& key) {
  const ReleasedRun run{iova, size, key};
  return release_batch({&run, 1});
}

Result<void> IovaFlushQueue::release_batch(std::span<const ReleasedRun> runs) {
  if (runs.empty()) return ok();
  if (config_.mode == InvalidationMode::kStrict) return release_strict(runs);
  bool full = false, expired = false;
  Shard& s = mine();
  {
    const auto t = now();
    std::lock_guard lock(s.mu);
    if (s.queue.empty()) s.oldest = t;
    for (const ReleasedRun& r : runs) push_locked(s, {r.iova.value(), r.size, r.key, false, t});
    s.pending.store(s.queue.size(), std::memory_order_relaxed);
    full = s.queue.size() >= config_.max_entries;
    expired = t - s.oldest >= config_.max_delay;
  }
  if (!full && !expired) return ok();
  std::lock_guard flush_lock(flush_mu_);
  return full ? flush_locked(Take::kAll, &s) : flush_locked(Take::kExpired, nullptr);
}

// One sink call for every run (Linux: the gathered range, one iotlb_sync).
Result<void> IovaFlushQueue::release_strict(std::span<const ReleasedRun> runs) {
  // A chain's few runs fit the stack; a longer batch takes one allocation.
  constexpr size_t kInline = 16;
  std::array<AddrRange<Iova>, kInline> inline_ranges;
  std::vector<AddrRange<Iova>> heap_ranges;
  std::span<AddrRange<Iova>> ranges(inline_ranges.data(), std::min(runs.size(), kInline));
  if (runs.size() > kInline) {
    heap_ranges.resize(runs.size());
    ranges = heap_ranges;
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    ranges[i] = {runs[i].iova, IovaAllocator::allocation_size(runs[i].size)};
  }
  // The sink contract: sorted by start, disjoint, adjacent runs merged.
  std::sort(ranges.begin(), ranges.end(),
            [](const AddrRange<Iova>& a, const AddrRange<Iova>& b) { return a.start < b.start; });
  size_t n = 0;
  for (const AddrRange<Iova>& r : ranges) {
    if (n > 0 && ranges[n - 1].start.value() + ranges[n - 1].len == r.start.value()) {
      ranges[n - 1].len += r.len;
    } else {
      ranges[n++] = r;
    }
  }
  auto r = sink_->invalidate(ranges.first(n));
  if (!r) {
    failed_flushes_.fetch_add(1, std::memory_order_relaxed);
    const auto t = now();
    {
      Shard& s = mine();
      std::lock_guard lock(s.mu);
      if (s.queue.empty()) s.oldest = t;
      // Strict mode never revives: the runs are queued without their keys.
      for (const ReleasedRun& run : runs) s.queue.push_back({run.iova.value(), run.size, {}, false, t});
      s.pending.store(s.queue.size(), std::memory_order_relaxed);
    }
    const std::string what = runs.size() == 1
                                 ? fmt::format("{} + {:#x}", runs[0].iova, ranges[0].len)
                                 : fmt::format("a batch of {} IOVA runs in {} ranges", runs.size(), n);
    return std::move(r).error().with_context(fmt::format(
        "IOTLB invalidation of {} failed; the IOVAs stay out of the allocator until a flush succeeds", what));
  }
  flushes_.fetch_add(1, std::memory_order_relaxed);
  for (const ReleasedRun& run : runs) alloc_.free(run.iova, run.size);
  runs_freed_.fetch_add(runs.size(), std::memory_order_relaxed);
  // Runs whose invalidation failed earlier get another chance.
  if (pending() != 0) return flush();
  return ok();
}

void IovaFlushQueue::push_locked(Shard& s, Run run) {
  run.indexed = false;
  if (revive_ && run.key.len != 0) {
    const auto pos = static_cast<uint32_t>(s.queue.size());
    if (IovaRevivalIndex::Slot* slot = s.index->find(run.key)) {
      // The same buffer was mapped twice at once: the newest run is the
      // revivable one, the older is flushed like any other.
      s.queue[slot->pos].indexed = false;
      slot->pos = pos;
      run.indexed = true;
    } else {
      run.indexed = s.index->insert(run.key, pos);
    }
  }
  s.queue.push_back(run);
}

std::optional<Iova> IovaFlushQueue::revive(const RevivalKey& key, uint64_t size, Iova limit) {
  if (!revive_ || key.len == 0) return std::nullopt;
  Shard& sh = mine();
  std::lock_guard lock(sh.mu);
  IovaRevivalIndex::Slot* s = sh.index->find(key);
  if (s == nullptr) return std::nullopt;
  const uint32_t pos = s->pos;
  const Run run = sh.queue[pos];
  VDMA_CHECK(run.indexed && run.key == key, "flush queue revival index out of sync");
  VDMA_CHECK(run.size == size, "a revived run is asked for with another size");
  if (run.iova + (IovaAllocator::allocation_size(run.size) - 1) > limit.value()) return std::nullopt;
  sh.index->erase(s);
  // Swap-remove (the queue has no order); the moved run's index entry follows it.
  if (pos + 1 != sh.queue.size()) {
    sh.queue[pos] = sh.queue.back();
    if (sh.queue[pos].indexed) {
      IovaRevivalIndex::Slot* moved = sh.index->find(sh.queue[pos].key);
      VDMA_CHECK(moved != nullptr, "flush queue revival index lost a run");
      moved->pos = pos;
    }
  }
  sh.queue.pop_back();
  // oldest may now be older than the oldest run left: the next flush comes
  // a little early, never late.
  sh.pending.store(sh.queue.size(), std::memory_order_relaxed);
  // Every writer holds mu: a plain increment, not a locked read-modify-write
  // (which would cost as much as the lock itself on this path).
  sh.revived.store(sh.revived.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return Iova(run.iova);
}

Result<void> IovaFlushQueue::flush_expired() {
  const auto t = now();
  bool expired = false;
  for (uint32_t i = 0; i < nshards_ && !expired; ++i) {
    Shard& s = shards_[i];
    std::lock_guard lock(s.mu);
    expired = !s.queue.empty() && t - s.oldest >= config_.max_delay;
  }
  if (!expired) return ok();
  std::lock_guard flush_lock(flush_mu_);
  return flush_locked(Take::kExpired, nullptr);
}

Result<void> IovaFlushQueue::flush() {
  std::lock_guard flush_lock(flush_mu_);
  return flush_locked(Take::kAll, nullptr);
}

Result<void> IovaFlushQueue::flush_locked(Take take, Shard* only) {
  batch_.clear();
  const auto limit = now() - config_.max_delay / 2;
  for (uint32_t i = 0; i < nshards_; ++i) {
    Shard& s = shards_[i];
    if (only != nullptr && only != &s) continue;
    std::lock_guard lock(s.mu);
    // From here on no run of the batch can be revived: its invalidation is
    // in progress, and then it goes to the allocator.
    if (take == Take::kAll) {
      batch_.insert(batch_.end(), s.queue.begin(), s.queue.end());
      s.queue.clear();
      if (s.index != nullptr) s.index->clear();
    } else {
      // The old runs go; the young ones stay, compacted, with their index
      // entries pointing at their new positions.
      const size_t before = batch_.size();
      size_t kept = 0;
      auto oldest = std::chrono::steady_clock::time_point::max();
      for (const Run& run : s.queue) {
        if (run.queued <= limit) {
          batch_.push_back(run);
        } else {
          oldest = std::min(oldest, run.queued);
          s.queue[kept++] = run;
        }
      }
      s.queue.resize(kept);
      if (kept != 0) s.oldest = oldest;
      if (s.index != nullptr && batch_.size() != before) {
        s.index->clear();
        for (size_t k = 0; k < kept; ++k) {
          // At most one run per key is indexed (push_locked), so no key is
          // inserted twice.
          if (s.queue[k].indexed) s.queue[k].indexed = s.index->insert(s.queue[k].key, static_cast<uint32_t>(k));
        }
      }
    }
    s.pending.store(s.queue.size(), std::memory_order_relaxed);
  }
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
    return std::move(r).error().with_context(
        fmt::format("IOTLB invalidation of a batch of {} IOVA runs in {} ranges failed; they stay out of the "
                    "allocator until a flush succeeds",
                    n, ranges_.size()));
  }
  flushes_.fetch_add(1, std::memory_order_relaxed);
  for (const Run& run : batch_) alloc_.free(Iova(run.iova), run.size);
  runs_freed_.fetch_add(batch_.size(), std::memory_order_relaxed);
  batch_.clear();
  return ok();
}

void IovaFlushQueue::requeue(std::vector<Run>& runs) {
  const auto t = now();
  // Into the caller's shard. Still revivable: the failed sink call left the
  // device's view unknown, and a revival maps exactly what any such stale
  // translation says.
  Shard& s = mine();
  std::lock_guard lock(s.mu);
  if (s.queue.empty()) s.oldest = t;
  for (Run run : runs) {
    run.queued = t;
    push_locked(s, run);
  }
  s.pending.store(s.queue.size(), std::memory_order_relaxed);
  runs.clear();
}

FlushQueueStats IovaFlushQueue::stats() const {
  FlushQueueStats s;
  s.flushes = flushes_.load(std::memory_order_relaxed);
  s.runs_freed = runs_freed_.load(std::memory_order_relaxed);
  s.failed_flushes = failed_flushes_.load(std::memory_order_relaxed);
  for (uint32_t i = 0; i < nshards_; ++i) {
    const Shard& sh = shards_[i];
    s.revived += sh.revived.load(std::memory_order_relaxed);
    std::lock_guard lock(sh.mu);
    s.pending += sh.queue.size();
  }
  return s;
}

}  // namespace vdma
