// IovaAllocator: size rounding and alignment, the preference for IOVAs below
// 4 GiB, the DMA-mask limit, magazines (reuse of the most recent free, the
// depot, draining on exhaustion), exhaustion errors with numbers, and no
// double allocation under a long randomized sequence checked against a
// page bitmap.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <map>
#include <random>
#include <set>

#include "result_matchers.h"
#include "vdma/dma/iova_allocator.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr uint64_t k4K = 4096;
constexpr Iova kNoLimit{UINT64_MAX};

std::unique_ptr<IovaAllocator> make(std::vector<IovaRange> ranges, bool prefer_below_4g = true) {
  auto a = IovaAllocator::create({.ranges = std::move(ranges), .shards = 1, .prefer_below_4g = prefer_below_4g});
  VDMA_CHECK(a.has_value(), "allocator");
  return std::move(a).value();
}

TEST(IovaAllocator, SmallSizesRoundUpToAPowerOfTwoOfPages) {
  EXPECT_EQ(IovaAllocator::allocation_size(1), k4K);
  EXPECT_EQ(IovaAllocator::allocation_size(4096), k4K);
  EXPECT_EQ(IovaAllocator::allocation_size(4097), 2 * k4K);
  EXPECT_EQ(IovaAllocator::allocation_size(3 * k4K), 4 * k4K);
  EXPECT_EQ(IovaAllocator::allocation_size(5 * k4K + 1), 8 * k4K);
  EXPECT_EQ(IovaAllocator::allocation_size(128 << 10), 128u << 10);
  // Above the cached sizes only whole pages.
  EXPECT_EQ(IovaAllocator::allocation_size((128 << 10) + 1), (128u << 10) + k4K);
  EXPECT_EQ(IovaAllocator::allocation_size(0), 0u);
}

TEST(IovaAllocator, RunsAreSizeAlignedAndPageZeroIsNeverUsed) {
  auto a = make({{Iova(0), Iova(0xffffff)}});
  auto p = a->allocate(100, kNoLimit);
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->value(), k4K);  // page 0 skipped
  auto q = a->allocate(3 * k4K, kNoLimit);  // 4 pages, 16 KiB aligned
  ASSERT_THAT(q, IsOk());
  EXPECT_EQ(q->value(), 4 * k4K);
  auto r = a->allocate(200 << 10, kNoLimit);  // 50 pages, aligned to 64 pages
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->value() % (256 << 10), 0u);
  auto s = a->allocate(k4K, kNoLimit);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->value(), 2 * k4K);  // the hole left by alignment
}

TEST(IovaAllocator, PrefersIovasBelow4GiB) {
  auto a = make({{Iova(0xfff00000), Iova((1ull << 40) - 1)}});
  auto p = a->allocate(k4K, kNoLimit);
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->value(), 0xfff00000u);
  // Fill what is left below 4 GiB (1 MiB - 4 KiB), then the next run goes above.
  std::vector<Iova> low;
  for (int i = 0; i < 255; ++i) low.push_back(*a->allocate(k4K, kNoLimit));
  for (Iova i : low) EXPECT_LT(i.value(), IovaAllocator::k4G);
  auto high = a->allocate(k4K, kNoLimit);
  ASSERT_THAT(high, IsOk());
  EXPECT_EQ(high->value(), IovaAllocator::k4G);
  // Without the preference the lowest fit is used anyway; with a limit
  // below 4 GiB nothing above it is handed out.
  a->free(low[7], k4K);
  a->drain_caches();
  EXPECT_THAT(a->allocate(k4K, Iova(0xffffffff)), HasValue(low[7]));
  EXPECT_THAT(a->allocate(k4K, Iova(0xffffffff)), IsError(DmaErrc::kIovaExhausted));
}

TEST(IovaAllocator, PrefersLowIovasEvenWhenFreedHighOnesAreCached) {
  auto a = make({{Iova(0xfff00000), Iova((1ull << 40) - 1)}});
  std::vector<Iova> all;
  for (int i = 0; i < 257; ++i) all.push_back(*a->allocate(k4K, kNoLimit));
  ASSERT_EQ(all.back().value(), IovaAllocator::k4G);
  a->free(all.back(), k4K);  // cached above 4 GiB
  a->free(all[3], k4K);      // cached below
  // The 32-bit pass runs first: the low IOVA, although the high one is cached too.
  EXPECT_THAT(a->allocate(k4K, kNoLimit), HasValue(all[3]));
  a->free(all[3], k4K);
  a->free(all[9], k4K);
  // Magazine holds [high, 3, 9]: 32-bit pass pops 9, then 3, then the high one.
  EXPECT_THAT(a->allocate(k4K, kNoLimit), HasValue(all[9]));
  EXPECT_THAT(a->allocate(k4K, kNoLimit), HasValue(all[3]));
  EXPECT_THAT(a->allocate(k4K, kNoLimit), HasValue(all.back()));
}

TEST(IovaAllocator, MagazinesReturnTheMostRecentFreeAndRespectTheLimit) {
  auto a = make({{Iova(0), Iova((1ull << 36) - 1)}}, /*prefer_below_4g=*/false);
  std::vector<Iova> runs;
  for (int i = 0; i < 8; ++i) runs.push_back(*a->allocate(8 * k4K, kNoLimit));
  const auto before = a->stats();
  a->free(runs[2], 8 * k4K);
  a->free(runs[5], 8 * k4K);
  EXPECT_EQ(a->stats().cached, 2u);
  EXPECT_EQ(a->stats().free_bytes, before.free_bytes);  // cached, not back in the map
  EXPECT_THAT(a->allocate(7 * k4K, kNoLimit), HasValue(runs[5]));  // same class: 8 pages
  // A limit below the top entry: the magazine yields the one that fits.
  a->free(runs[5], 8 * k4K);
  EXPECT_THAT(a->allocate(8 * k4K, Iova(runs[3].value())), HasValue(runs[2]));
  EXPECT_GE(a->stats().cache_hits, 2u);
  // Another size class does not take from this magazine.
  auto other = a->allocate(k4K, kNoLimit);
  ASSERT_THAT(other, IsOk());
  EXPECT_NE(*other, runs[5]);
}

TEST(IovaAllocator, FullMagazinesGoToTheDepotAndOverflowToTheMap) {
  auto a = make({{Iova(0), Iova((1ull << 40) - 1)}});
  const uint32_t n = IovaAllocator::kMagazineSize * (IovaAllocator::kDepotMagazines + 4);
  std::vector<Iova> runs;
  for (uint32_t i = 0; i < n; ++i) runs.push_back(*a->allocate(k4K, kNoLimit));
  for (Iova r : runs) a->free(r, k4K);
  const auto st = a->stats();
  // Loaded + previous + the depot hold at most this many; the rest is back in the map.
  EXPECT_EQ(st.cached, uint64_t{IovaAllocator::kMagazineSize} * (IovaAllocator::kDepotMagazines + 2));
  // Everything is reusable: n allocations succeed again and are distinct.
  std::set<uint64_t> seen;
  for (uint32_t i = 0; i < n; ++i) {
    auto r = a->allocate(k4K, kNoLimit);
    ASSERT_THAT(r, IsOk());
    EXPECT_TRUE(seen.insert(r->value()).second);
  }
  EXPECT_EQ(a->stats().cached, 0u);
}

TEST(IovaAllocator, ExhaustionNamesSizeAlignmentLimitAndFreeSpace) {
  auto a = make({{Iova(0), Iova(0x7fff)}});  // pages 1..7 usable
  auto big = a->allocate(0x5000, kNoLimit);  // 8 pages: never fits
  EXPECT_THAT(big, IsErrorWith(DmaErrc::kIovaExhausted,
                               AllOf(HasSubstr("IOVA space exhausted"), HasSubstr("0x8000 bytes aligned to 0x8000"),
                                     HasSubstr("iova:0xffffffffffffffff"),
                                     HasSubstr("0x7000 bytes free in 1 range, largest 0x7000"))));
  // Cached runs do not cause exhaustion: they are drained and reused.
  std::vector<Iova> pages;
  for (int i = 0; i < 7; ++i) pages.push_back(*a->allocate(k4K, kNoLimit));
  EXPECT_THAT(a->allocate(k4K, kNoLimit), IsErrorWith(DmaErrc::kIovaExhausted, HasSubstr("0x0 bytes free in 0 ranges")));
  for (Iova p : pages) a->free(p, k4K);
  EXPECT_EQ(a->stats().cached, 7u);
  EXPECT_THAT(a->allocate(4 * k4K, kNoLimit), HasValue(Iova(0x4000)));
  EXPECT_EQ(a->stats().cached, 0u);
  EXPECT_THAT(a->allocate(0, kNoLimit), IsError(BaseErrc::kInvalidArgument));
}

TEST(IovaAllocator, RangesAreRoundedInwardsAndValidated) {
  auto a = make({{Iova(0x1800), Iova(0x4fff)}, {Iova(0x10000), Iova(0x10ffe)}});  // the second has no whole page
  EXPECT_THAT(a->allocate(k4K, kNoLimit), HasValue(Iova(0x2000)));
  ASSERT_EQ(a->ranges().size(), 1u);
  EXPECT_EQ(a->ranges()[0], (IovaRange{Iova(0x2000), Iova(0x4fff)}));
  EXPECT_THAT(IovaAllocator::create({.ranges = {{Iova(0), Iova(0xfff)}}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("no usable IOVA page")));
  EXPECT_THAT(IovaAllocator::create({.ranges = {{Iova(0x1000), Iova(0x4fff)}, {Iova(0x3000), Iova(0x8fff)}}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("overlap")));
  // The top of the 64-bit space is usable.
  auto top = make({{Iova(UINT64_MAX - 0xffff), Iova(UINT64_MAX)}});
  EXPECT_THAT(top->allocate(0x10000, kNoLimit), HasValue(Iova(UINT64_MAX - 0xffff)));
}

// A long randomized sequence against a page bitmap: every run handed out is
// inside the ranges, below its limit, aligned, and overlaps no live run.
TEST(IovaAllocator, NoDoubleAllocationUnderARandomizedSequence) {
  const std::vector<IovaRange> ranges = {{Iova(0x10000), Iova(0x3fffff)},
                                         {Iova(0xff000000), Iova(0x1000fffff)}};  // crosses 4 GiB
  auto a = make(ranges);
  std::mt19937_64 rng(0x10a);
  std::map<uint64_t, uint64_t> live;  // iova -> allocation bytes
  std::vector<std::pair<Iova, uint64_t>> handles;
  auto overlaps_live = [&](uint64_t s, uint64_t n) {
    auto it = live.upper_bound(s);
    if (it != live.end() && it->first < s + n) return true;
    if (it != live.begin() && std::prev(it)->first + std::prev(it)->second > s) return true;
    return false;
  };
  int exhausted = 0;
  for (int op = 0; op < 200'000; ++op) {
    if (handles.empty() || rng() % 2 == 0) {
      const uint64_t size = rng() % 8 == 0 ? 1 + rng() % (512 << 10) : 1 + rng() % (32 << 10);
      const Iova limit = rng() % 4 == 0 ? Iova(0xffffffff) : kNoLimit;
      auto r = a->allocate(size, limit);
      if (!r) {
        ASSERT_TRUE(r.error().is(DmaErrc::kIovaExhausted)) << r.error().to_string();
        ++exhausted;
        continue;
      }
      const uint64_t bytes = IovaAllocator::allocation_size(size);
      ASSERT_LE(r->value() + bytes - 1, limit.value());
      ASSERT_EQ(r->value() % std::min<uint64_t>(std::bit_ceil(bytes / k4K) * k4K, 1 << 30), 0u);
      bool inside = false;
      for (const IovaRange& g : ranges) inside |= g.contains(IovaRange::of(*r, bytes));
      ASSERT_TRUE(inside) << r->value();
      ASSERT_FALSE(overlaps_live(r->value(), bytes)) << "run " << r->value() << " handed out twice";
      live.emplace(r->value(), bytes);
      handles.emplace_back(*r, size);
    } else {
      const size_t i = rng() % handles.size();
      auto [iova, size] = handles[i];
      a->free(iova, size);
      live.erase(iova.value());
      handles[i] = handles.back();
      handles.pop_back();
    }
    if (op % 50'000 == 0) a->drain_caches();
  }
  EXPECT_GT(exhausted, 0);  // the space is small enough to run out sometimes
  for (auto [iova, size] : handles) a->free(iova, size);
  a->drain_caches();
  const auto st = a->stats();
  EXPECT_EQ(st.free_ranges, 2u);  // everything merged back
  EXPECT_EQ(st.free_bytes, (0x3fffffu - 0x10000 + 1) + (0x1000fffffu - 0xff000000 + 1));
}

}  // namespace
}  // namespace vdma
