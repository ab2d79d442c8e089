// The IOVA magazines and the IOMMU DMA ops under threads (run under
// ThreadSanitizer by the `concurrency` label): no IOVA run is ever live
// twice, an IOVA is never handed out while its invalidation is pending, and
// every mapping translates to its own buffer while live.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "result_matchers.h"
#include "vdma/dma/iommu_dma_ops.h"
#include "param_printers.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t k4K = 4096;
constexpr int kThreads = 4;

// Runs that are live (handed out and not yet released), shared by threads.
class LiveRuns {
 public:
  // false when [start, start+len) overlaps a live run.
  bool add(uint64_t start, uint64_t len) {
    std::lock_guard lock(mu_);
    auto it = live_.upper_bound(start);
    if (it != live_.end() && it->first < start + len) return false;
    if (it != live_.begin() && std::prev(it)->first + std::prev(it)->second > start) return false;
    live_.emplace(start, len);
    return true;
  }
  void remove(uint64_t start) {
    std::lock_guard lock(mu_);
    live_.erase(start);
  }
  bool overlaps(uint64_t start, uint64_t len) {
    std::lock_guard lock(mu_);
    auto it = live_.upper_bound(start);
    if (it != live_.end() && it->first < start + len) return true;
    return it != live_.begin() && std::prev(it)->first + std::prev(it)->second > start;
  }

 private:
  std::mutex mu_;
  std::map<uint64_t, uint64_t> live_;
};

TEST(IovaAllocatorConcurrency, ThreadsNeverShareARun) {
  auto a = *IovaAllocator::create({.ranges = {{Iova(0), Iova(0x3ffffff)}}, .shards = 2});
  LiveRuns live;
  std::atomic<int> overlaps{0}, failures{0};
  auto worker = [&](int id) {
    std::mt19937_64 rng(static_cast<uint64_t>(id) * 977);
    std::vector<std::pair<Iova, uint64_t>> mine;
    for (int op = 0; op < 20'000; ++op) {
      if (mine.size() < 200 && (mine.empty() || rng() % 2 == 0)) {
        const uint64_t size = 1 + rng() % (rng() % 16 == 0 ? (256 << 10) : (64 << 10));
        auto r = a->allocate(size, Iova(UINT64_MAX));
        if (!r) {
          failures.fetch_add(1);
          continue;
        }
        if (!live.add(r->value(), IovaAllocator::allocation_size(size))) overlaps.fetch_add(1);
        mine.emplace_back(*r, size);
      } else {
        const size_t i = rng() % mine.size();
        live.remove(mine[i].first.value());
        a->free(mine[i].first, mine[i].second);
        mine[i] = mine.back();
        mine.pop_back();
      }
    }
    for (auto [iova, size] : mine) {
      live.remove(iova.value());
      a->free(iova, size);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(failures.load(), 0);
  const auto st = a->stats();
  EXPECT_GT(st.cache_hits, 10'000u);  // the magazines served most allocations
  a->drain_caches();
  EXPECT_EQ(a->stats().free_ranges, 1u);
  EXPECT_EQ(a->stats().free_bytes, 0x4000000u - k4K);
}

// A sink that checks no invalidated IOVA is live, i.e. reused before its invalidation returned.
class CheckingSink final : public InvalidationSink {
 public:
  explicit CheckingSink(LiveRuns& live) : live_(live) {}
  Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
    for (const auto& r : ranges) {
      if (live_.overlaps(r.start.value(), r.len)) bad.fetch_add(1);
    }
    calls.fetch_add(1);
    return ok();
  }
  std::atomic<int> bad{0}, calls{0};

 private:
  LiveRuns& live_;
};

class IommuDmaConcurrency : public ::testing::TestWithParam<InvalidationMode> {};

TEST_P(IommuDmaConcurrency, MapUnmapFromManyThreads) {
  auto mem = *GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"},
                                   {Gpa{16 << 20}, 1 << 20, MemAttr::kShared, "shared"}});
  auto coherent = *CoherentPool::create(*mem, {Gpa{16 << 20}, 1 << 20});
  auto ioas = IoAddressSpace::create();
  auto paging = std::move(PagingDomain::create(*ioas)).value();
  LiveRuns live;
  auto sink = std::make_shared<CheckingSink>(live);
  auto dom = std::move(IommuDmaDomain::create(*ioas, *paging,
                                              {.mode = GetParam(), .sink = sink, .flush_queue_entries = 32,
                                               .magazine_shards = 2}))
                 .value();
  auto ops = std::move(IommuDmaOps::create(*mem, dom, {.coherent = coherent})).value();
  std::atomic<int> errors{0}, overlaps{0}, wrong{0};
  auto worker = [&](int id) {
    std::mt19937_64 rng(static_cast<uint64_t>(id) + 5);
    struct M {
      DmaAddr d;
      Gpa gpa;
      uint64_t len;
    };
    std::vector<M> mine;
    for (int op = 0; op < 5'000; ++op) {
      if (mine.size() < 16 && (mine.empty() || rng() % 2 == 0)) {
        const Gpa gpa{(static_cast<uint64_t>(id) << 22) + (rng() % 1024) * 64};
        const uint64_t len = 1 + rng() % (3 * k4K);
        auto d = ops->map(gpa, len, DmaDirection::kBidirectional);
        if (!d) {
          errors.fetch_add(1);
          continue;
        }
        const uint64_t run = align_down(d->value(), k4K);
        if (!live.add(run, IovaAllocator::allocation_size(d->value() - run + len))) overlaps.fetch_add(1);
        auto t = dom->translate(Iova(d->value()), Access::kReadWrite);
        if (!t || t->gpa != gpa) wrong.fetch_add(1);
        mine.push_back({*d, gpa, len});
      } else {
        const size_t i = rng() % mine.size();
        live.remove(align_down(mine[i].d.value(), k4K));
        if (!ops->unmap(mine[i].d, mine[i].len, DmaDirection::kBidirectional)) errors.fetch_add(1);
        mine[i] = mine.back();
        mine.pop_back();
      }
    }
    for (const M& m : mine) {
      live.remove(align_down(m.d.value(), k4K));
      if (!ops->unmap(m.d, m.len, DmaDirection::kBidirectional)) errors.fetch_add(1);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  ASSERT_THAT(dom->flush(), IsOk());
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(sink->bad.load(), 0);
  EXPECT_GT(sink->calls.load(), 0);
  EXPECT_EQ(dom->mapping_count(), 0u);
  EXPECT_EQ(dom->flush_queue()->stats().pending, 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, IommuDmaConcurrency,
                         ::testing::Values(InvalidationMode::kStrict, InvalidationMode::kLazy),
                         [](const auto& i) { return std::string(to_string(i.param)); });

}  // namespace
}  // namespace vdma
