#include "vdma/dma/iova_allocator.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <thread>

#include "cpu_hint.h"
#include "vdma/base/spin_lock.h"

namespace vdma {

namespace {

uint64_t round_up_pow2(uint64_t v) noexcept { return v <= 1 ? 1 : std::bit_ceil(v); }

}  // namespace

struct IovaAllocator::Magazine {
  uint32_t count = 0;
  uint64_t iovas[kMagazineSize];

  [[nodiscard]] bool full() const noexcept { return count == kMagazineSize; }
  [[nodiscard]] bool empty() const noexcept { return count == 0; }
  // The most recently pushed IOVA at or below `limit` (Linux
  // iova_magazine_pop): the top one unless the device's limit excludes it.
  bool pop(uint64_t limit, uint64_t& out) noexcept {
    for (uint32_t i = count; i-- > 0;) {
      if (iovas[i] <= limit) {
        out = iovas[i];
        iovas[i] = iovas[--count];
        return true;
      }
    }
    return false;
  }
};

// One cache line group per shard so shards do not false-share.
struct alignas(64) IovaAllocator::Shard {
  SpinLock mu;  // held for a magazine pop or push only
  // Guarded by mu. Created on first use of the size class.
  std::unique_ptr<Magazine> loaded[kCachedOrders];
  std::unique_ptr<Magazine> prev[kCachedOrders];
  uint64_t hits = 0;
};

struct IovaAllocator::Depot {
  std::mutex mu;
  std::vector<std::unique_ptr<Magazine>> full[kCachedOrders];  // guarded by mu; each at most kDepotMagazines
};

Result<std::unique_ptr<IovaAllocator>> IovaAllocator::create(IovaAllocatorConfig config) {
  std::vector<IovaRange> pages;
  for (const IovaRange& r : config.ranges) {
    if (r.start > r.last) {
      return make_error(DmaErrc::kInvalidConfig, "IOVA range [{}, {}] has start > last", r.start, r.last);
    }
    // Page 0 is never handed out; the rest is rounded inwards to pages.
    const uint64_t first = std::max(align_up(r.start.value(), kGranule), kGranule);
    if (first < r.start.value()) continue;  // rounding up wrapped: the range lies in the top page
    uint64_t last = r.last.value();
    if (last != UINT64_MAX && (last + 1) % kGranule != 0) {
      const uint64_t end = align_down(last + 1, kGranule);
      if (end == 0) continue;
      last = end - 1;
    }
    if (last < first) continue;
    pages.push_back({Iova(first), Iova(last)});
  }
  std::sort(pages.begin(), pages.end(), [](const IovaRange& a, const IovaRange& b) { return a.start < b.start; });
  for (size_t i = 1; i < pages.size(); ++i) {
    if (pages[i].start <= pages[i - 1].last) {
      return make_error(DmaErrc::kInvalidConfig, "IOVA ranges {} and {} overlap", pages[i - 1], pages[i]);
    }
  }
  if (pages.empty()) {
    return make_error(DmaErrc::kInvalidConfig, "no usable IOVA page in the {} range(s) given (page 0 is never used)",
                      config.ranges.size());
  }
  uint32_t shards = config.shards != 0 ? config.shards : std::max(1u, std::thread::hardware_concurrency());
  shards = static_cast<uint32_t>(round_up_pow2(std::min<uint32_t>(shards, 1024)));
  return std::unique_ptr<IovaAllocator>(new IovaAllocator(std::move(pages), shards, config.prefer_below_4g));
}

IovaAllocator::IovaAllocator(std::vector<IovaRange> ranges, uint32_t shards, bool prefer_below_4g)
    : ranges_(std::move(ranges)),
      prefer_below_4g_(prefer_below_4g),
      shard_mask_(shards - 1),
      shards_(std::make_unique<Shard[]>(shards)),
      depot_(std::make_unique<Depot>()) {
  for (const IovaRange& r : ranges_) free_.emplace(r.start.value(), r.last.value());
}

IovaAllocator::~IovaAllocator() = default;

IovaAllocator::Shard& IovaAllocator::my_shard() noexcept { return shards_[detail::cpu_hint() & shard_mask_]; }

Result<Iova> IovaAllocator::allocate(uint64_t size, Iova limit) {
  const uint64_t bytes = allocation_size(size);
  if (bytes == 0) return make_error(BaseErrc::kInvalidArgument, "IOVA allocation of {:#x} bytes", size);
  const uint64_t pages = bytes / kGranule;
  const uint64_t align = std::min<uint64_t>(round_up_pow2(pages) * kGranule, kMaxAutoIovaAlignment);
  const bool cached = bytes <= kMaxCachedSize;
  const auto order = static_cast<unsigned>(std::countr_zero(pages));
  // The 32-bit pass first (when the device reaches beyond it), then the real limit.
  uint64_t limits[2] = {limit.value(), limit.value()};
  int passes = 1;
  if (prefer_below_4g_ && limit.value() >= k4G) {
    limits[0] = k4G - 1;
    passes = 2;
  }
  uint64_t out = 0;
  for (int p = 0; p < passes; ++p) {
    if (cached && cache_get(order, limits[p], out)) return Iova(out);
    if (map_allocate(bytes, align, limits[p], out)) return Iova(out);
  }
  // Cached runs may be what blocks a fit (Linux free_cpu_cached_iovas on a
  // failed allocation): return them to the map and search once more.
  drain_caches();
  for (int p = 0; p < passes; ++p) {
    if (map_allocate(bytes, align, limits[p], out)) return Iova(out);
  }
  const IovaAllocatorStats s = stats();
  return make_error(DmaErrc::kIovaExhausted,
                    "IOVA space exhausted: no free run of {:#x} bytes aligned to {:#x} at or below {} ({:#x} bytes "
                    "free in {} range{}, largest {:#x})",
                    bytes, align, limit, s.free_bytes, s.free_ranges, s.free_ranges == 1 ? "" : "s", s.largest_free);
}

void IovaAllocator::free(Iova iova, uint64_t size) {
  const uint64_t bytes = allocation_size(size);
  VDMA_CHECK(bytes != 0 && iova.is_aligned(kGranule), "IovaAllocator::free of a run allocate() cannot have made");
  if (bytes <= kMaxCachedSize) {
    cache_put(static_cast<unsigned>(std::countr_zero(bytes / kGranule)), iova.value());
    return;
  }
  map_free(iova.value(), bytes);
}

bool IovaAllocator::cache_get(unsigned order, uint64_t limit, uint64_t& out) {
  Shard& s = my_shard();
  std::unique_ptr<Magazine> from_depot;
  {
    std::lock_guard lock(s.mu);
    Magazine* loaded = s.loaded[order].get();
    if (loaded != nullptr && loaded->pop(limit, out)) {
      ++s.hits;
      return true;
    }
    Magazine* prev = s.prev[order].get();
    if (prev != nullptr && prev->pop(limit, out)) {
      std::swap(s.loaded[order], s.prev[order]);
      ++s.hits;
      return true;
    }
  }
  // Both magazines are empty (or hold only IOVAs beyond the limit): take a
  // full one from the depot.
  {
    std::lock_guard lock(depot_->mu);
    auto& full = depot_->full[order];
    for (size_t i = full.size(); i-- > 0;) {
      // Only a magazine that can serve this limit; IOVAs are rarely above it.
      Magazine& m = *full[i];
      bool usable = false;
      for (uint32_t k = 0; k < m.count && !usable; ++k) usable = m.iovas[k] <= limit;
      if (usable) {
        from_depot = std::move(full[i]);
        full.erase(full.begin() + static_cast<ptrdiff_t>(i));
        break;
      }
    }
  }
  if (from_depot == nullptr) return false;
  const bool got = from_depot->pop(limit, out);
  VDMA_CHECK(got, "depot magazine lost its usable IOVA");
  std::unique_ptr<Magazine> displaced;
  {
    std::lock_guard lock(s.mu);
    ++s.hits;
    // The depot magazine becomes the loaded one; an old loaded magazine that
    // still holds IOVAs (beyond this limit) moves to prev, and whatever prev
    // held goes back to the map.
    if (s.loaded[order] != nullptr && !s.loaded[order]->empty()) {
      displaced = std::move(s.prev[order]);
      s.prev[order] = std::move(s.loaded[order]);
    }
    s.loaded[order] = std::move(from_depot);
  }
  if (displaced != nullptr) return_magazine(order, *displaced);
  return true;
}

void IovaAllocator::cache_put(unsigned order, uint64_t iova) {
  Shard& s = my_shard();
  std::unique_ptr<Magazine> full;
  {
    std::lock_guard lock(s.mu);
    auto& loaded = s.loaded[order];
    auto& prev = s.prev[order];
    if (loaded == nullptr) loaded = std::make_unique<Magazine>();
    if (!loaded->full()) {
      loaded->iovas[loaded->count++] = iova;
      return;
    }
    if (prev == nullptr || !prev->full()) {
      // prev has room: it becomes the loaded magazine (Linux swaps when prev is empty).
      if (prev == nullptr) prev = std::make_unique<Magazine>();
      std::swap(loaded, prev);
      loaded->iovas[loaded->count++] = iova;
      return;
    }
    // Both full: the loaded magazine leaves for the depot, a fresh one takes its place.
    full = std::move(loaded);
    loaded = std::make_unique<Magazine>();
    loaded->iovas[loaded->count++] = iova;
  }
  {
    std::lock_guard lock(depot_->mu);
    auto& depot = depot_->full[order];
    if (depot.size() < kDepotMagazines) {
      depot.push_back(std::move(full));
      return;
    }
  }
  return_magazine(order, *full);
}

void IovaAllocator::return_magazine(unsigned order, Magazine& m) {
  const uint64_t bytes = kGranule << order;
  std::lock_guard lock(map_mu_);
  for (uint32_t i = 0; i < m.count; ++i) map_free_locked(m.iovas[i], bytes);
  m.count = 0;
}

void IovaAllocator::drain_caches() {
  for (uint32_t i = 0; i <= shard_mask_; ++i) {
    Shard& s = shards_[i];
    std::lock_guard lock(s.mu);
    for (unsigned o = 0; o < kCachedOrders; ++o) {
      if (s.loaded[o] != nullptr) return_magazine(o, *s.loaded[o]);
      if (s.prev[o] != nullptr) return_magazine(o, *s.prev[o]);
    }
  }
  std::lock_guard lock(depot_->mu);
  for (unsigned o = 0; o < kCachedOrders; ++o) {
    for (auto& m : depot_->full[o]) return_magazine(o, *m);
    depot_->full[o].clear();
  }
}

bool IovaAllocator::map_allocate(uint64_t bytes, uint64_t align, uint64_t limit, uint64_t& out) {
  std::lock_guard lock(map_mu_);
  // First fit from the bottom: the lowest aligned run that fits below the limit.
  for (auto it = free_.begin(); it != free_.end() && it->first <= limit; ++it) {
    const uint64_t start = align_up(it->first, align);
    if (start < it->first) break;  // aligning wrapped past 2^64: nothing higher fits either
    const uint64_t last_ok = std::min(it->second, limit);
    if (start > last_ok || last_ok - start < bytes - 1) continue;
    const uint64_t first = it->first, last = it->second;
    free_.erase(it);
    if (first < start) free_.emplace(first, start - 1);
    if (start + (bytes - 1) < last) free_.emplace(start + bytes, last);
    out = start;
    ++map_allocations_;
    return true;
  }
  return false;
}

void IovaAllocator::map_free(uint64_t iova, uint64_t bytes) {
  std::lock_guard lock(map_mu_);
  map_free_locked(iova, bytes);
}

void IovaAllocator::map_free_locked(uint64_t iova, uint64_t bytes) {
  uint64_t first = iova, last = iova + (bytes - 1);
  VDMA_CHECK(last >= first, "IOVA run wraps");
  auto next = free_.upper_bound(first);
  // A double free or a foreign run would overlap a free range: a caller bug.
  VDMA_CHECK(next == free_.end() || next->first > last, "IovaAllocator::free of a run that is already free");
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    VDMA_CHECK(prev->second < first, "IovaAllocator::free of a run that is already free");
    if (prev->second + 1 == first) {
      first = prev->first;
      free_.erase(prev);
    }
  }
  if (next != free_.end() && last + 1 == next->first) {
    last = next->second;
    free_.erase(next);
  }
  free_.emplace(first, last);
}

IovaAllocatorStats IovaAllocator::stats() const {
  IovaAllocatorStats st;
  for (uint32_t i = 0; i <= shard_mask_; ++i) {
    Shard& s = shards_[i];
    std::lock_guard lock(s.mu);
    st.cache_hits += s.hits;
    for (unsigned o = 0; o < kCachedOrders; ++o) {
      if (s.loaded[o] != nullptr) st.cached += s.loaded[o]->count;
      if (s.prev[o] != nullptr) st.cached += s.prev[o]->count;
    }
  }
  {
    std::lock_guard lock(depot_->mu);
    for (unsigned o = 0; o < kCachedOrders; ++o) {
      for (const auto& m : depot_->full[o]) st.cached += m->count;
    }
  }
  std::lock_guard lock(map_mu_);
  st.map_allocations = map_allocations_;
  for (const auto& [first, last] : free_) {
    const uint64_t len = last - first + 1;  // a range never spans all 2^64 (page 0 is excluded)
    st.free_bytes += len;
    st.largest_free = std::max(st.largest_free, len);
  }
  st.free_ranges = free_.size();
  return st;
}

}  // namespace vdma
