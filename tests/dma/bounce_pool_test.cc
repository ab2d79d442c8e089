// BouncePool: swiotlb semantics — slots, segments, areas, alignment, data
// movement per direction, exhaustion and recovery, growth, statistics.
#include "vdma/dma/bounce_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <pthread.h>
#include <sched.h>

#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "result_matchers.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr uint64_t kRam = 0;                  // private
constexpr uint64_t kRamSize = 16 << 20;
constexpr uint64_t kShared = 1ull << 32;      // shared
constexpr uint64_t kSharedSize = 8 << 20;
constexpr uint64_t kSlot = BouncePool::kSlotSize;

std::unique_ptr<GuestMemory> make_memory() {
  auto m = GuestMemory::create({{Gpa{kRam}, kRamSize, MemAttr::kPrivate, "ram"},
                                {Gpa{kShared}, kSharedSize, MemAttr::kShared, "shared"}});
  VDMA_CHECK(m.has_value(), "guest memory");
  return std::move(m).value();
}

std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
  return v;
}

std::vector<std::byte> read(const GuestMemory& m, Gpa g, size_t n) {
  std::vector<std::byte> v(n);
  VDMA_CHECK(m.read(g, v).has_value(), "read");
  return v;
}

class BouncePoolTest : public ::testing::Test {
 protected:
  void SetUp() override { mem_ = make_memory(); }
  std::shared_ptr<BouncePool> pool(uint64_t size, uint32_t areas = 1, BouncePool::Config extra = {}) {
    extra.window = {Gpa{kShared}, size};
    extra.min_areas = areas;
    auto p = BouncePool::create(*mem_, extra);
    VDMA_CHECK(p.has_value(), "pool");
    return *p;
  }
  uint64_t slot_of(Gpa tlb) const { return (tlb.value() - kShared) / kSlot; }
  std::unique_ptr<GuestMemory> mem_;
};

TEST_F(BouncePoolTest, CreateRejectsBadWindows) {
  EXPECT_THAT(BouncePool::create(*mem_, {.window = {Gpa{kRam}, 1 << 20}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("private region 'ram'")));
  EXPECT_THAT(BouncePool::create(*mem_, {.window = {Gpa{kShared + 2048}, 1 << 20}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("not page aligned")));
  EXPECT_THAT(BouncePool::create(*mem_, {.window = {Gpa{kShared}, 300 << 10}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("not a multiple of 0x40000")));
  EXPECT_THAT(BouncePool::create(*mem_, {.window = {Gpa{kShared + kSharedSize - (256 << 10)}, 512 << 10}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("not inside one guest memory region")));
  EXPECT_THAT(BouncePool::create(*mem_, {.window = {Gpa{kShared}, 0}}), IsError(DmaErrc::kInvalidConfig));
  EXPECT_THAT(BouncePool::create(*mem_, {.window = {Gpa{kShared}, 1 << 20},
                                         .growth_window = {Gpa{kShared + (2 << 20)}, 1 << 20}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("growth pool size 0x0")));
  EXPECT_THAT(BouncePool::create(*mem_, {.window = {Gpa{kShared}, 1 << 20},
                                         .growth_window = {Gpa{kShared}, 1 << 20},
                                         .growth_pool_size = 256 << 10}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("overlaps")));
}

TEST_F(BouncePoolTest, AreaCountIsAPowerOfTwoOfWholeSegments) {
  EXPECT_EQ(pool(1 << 20, 3)->stats().areas, 4u);     // 4 segments, 3 threads -> 4
  EXPECT_EQ(pool(1 << 20, 4)->stats().areas, 4u);
  EXPECT_EQ(pool(1 << 20, 8)->stats().areas, 4u);     // only 4 segments: 4 areas of 128 slots
  EXPECT_EQ(pool(2 << 20, 5)->stats().areas, 8u);
  EXPECT_EQ(pool(3 * (256 << 10), 2)->stats().areas, 1u);  // 3 segments: no power of two > 1 divides them
  auto p = pool(1 << 20, 2);
  EXPECT_EQ(p->stats().total_slots, 512u);
  EXPECT_EQ(p->stats().pools, 1u);
}

TEST_F(BouncePoolTest, ToDeviceCopiesInAndNeverBack) {
  auto p = pool(1 << 20);
  const Gpa buf{0x10000};
  const auto data = pattern(3000, 1);
  ASSERT_THAT(mem_->write(buf, data), IsOk());
  auto tlb = p->map(buf, data.size(), DmaDirection::kToDevice);
  ASSERT_THAT(tlb, IsOk());
  EXPECT_TRUE(p->contains(*tlb));
  EXPECT_EQ(read(*mem_, *tlb, data.size()), data);
  // A (misbehaving) device write to a to-device buffer never reaches the original.
  ASSERT_THAT(mem_->fill(*tlb, 100, std::byte{0xee}), IsOk());
  ASSERT_THAT(p->unmap(*tlb, data.size(), DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  EXPECT_EQ(read(*mem_, buf, data.size()), data);
  EXPECT_EQ(p->stats().used_slots, 0u);
}

TEST_F(BouncePoolTest, FromDeviceCopiesInSoAPartialWriteLeaksNoStaleBytes) {
  auto p = pool(256 << 10);  // one segment, one area: the next mapping reuses the same slots
  // Leave a "secret" in the pool from an earlier mapping.
  const Gpa secret_buf{0x20000};
  ASSERT_THAT(mem_->write(secret_buf, pattern(4096, 0x40)), IsOk());
  auto first = p->map(secret_buf, 4096, DmaDirection::kToDevice);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(p->unmap(*first, 4096, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());

  const Gpa buf{0x30000};
  const auto original = pattern(4096, 0x90);
  ASSERT_THAT(mem_->write(buf, original), IsOk());
  auto tlb = p->map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_THAT(tlb, IsOk());
  EXPECT_EQ(*tlb, *first);  // freeing the latest mapping rewound next fit: same slots as the secret
  EXPECT_EQ(read(*mem_, *tlb, 4096), original) << "map must copy in even for from-device";
  // The device writes only the first 100 bytes.
  const auto dev = pattern(100, 0x11);
  ASSERT_THAT(mem_->write(*tlb, dev), IsOk());
  ASSERT_THAT(p->unmap(*tlb, 4096, DmaDirection::kFromDevice, DmaAttrs::kNone), IsOk());
  auto got = read(*mem_, buf, 4096);
  EXPECT_TRUE(std::equal(dev.begin(), dev.end(), got.begin()));
  EXPECT_TRUE(std::equal(original.begin() + 100, original.end(), got.begin() + 100));
}

// kNoCopyIn: the slots keep their stale bytes (the device of a from-device
// mapping may see them), and unmap copies back only the `written` bytes, so
// those stale bytes never reach the original buffer.
TEST_F(BouncePoolTest, NoCopyInSkipsTheCopyInAndUnmapCopiesBackOnlyTheWrittenBytes) {
  auto p = pool(256 << 10);  // one segment, one area: the next mapping reuses the same slots
  const Gpa secret_buf{0x20000};
  const auto secret = pattern(4096, 0x40);
  ASSERT_THAT(mem_->write(secret_buf, secret), IsOk());
  auto first = p->map(secret_buf, 4096, DmaDirection::kToDevice);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(p->unmap(*first, 4096, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());

  const Gpa buf{0x30000};
  const auto original = pattern(4096, 0x90);
  ASSERT_THAT(mem_->write(buf, original), IsOk());
  auto tlb = p->map(buf, 4096, DmaDirection::kFromDevice, 0, DmaAttrs::kNoCopyIn);
  ASSERT_THAT(tlb, IsOk());
  ASSERT_EQ(*tlb, *first);
  EXPECT_EQ(read(*mem_, *tlb, 4096), secret) << "no copy-in: the slots still hold the earlier mapping's bytes";
  const auto dev = pattern(100, 0x11);
  ASSERT_THAT(mem_->write(*tlb, dev), IsOk());
  ASSERT_THAT(p->unmap(*tlb, 4096, DmaDirection::kFromDevice, DmaAttrs::kNone, 100), IsOk());
  auto got = read(*mem_, buf, 4096);
  EXPECT_TRUE(std::equal(dev.begin(), dev.end(), got.begin()));
  EXPECT_TRUE(std::equal(original.begin() + 100, original.end(), got.begin() + 100))
      << "a byte past the written ones came back from the slot";

  // written 0 copies nothing; a written past the mapping is clamped to it.
  ASSERT_THAT(mem_->write(buf, original), IsOk());
  tlb = p->map(buf, 4096, DmaDirection::kFromDevice, 0, DmaAttrs::kNoCopyIn);
  ASSERT_THAT(tlb, IsOk());
  ASSERT_THAT(p->unmap(*tlb, 4096, DmaDirection::kFromDevice, DmaAttrs::kNone, 0), IsOk());
  EXPECT_EQ(read(*mem_, buf, 4096), original);
  tlb = p->map(buf, 3000, DmaDirection::kFromDevice, 0, DmaAttrs::kNoCopyIn);
  ASSERT_THAT(tlb, IsOk());
  const auto full = pattern(3000, 0x33);
  ASSERT_THAT(mem_->write(*tlb, full), IsOk());
  ASSERT_THAT(p->unmap(*tlb, 3000, DmaDirection::kFromDevice, DmaAttrs::kNone, 1 << 20), IsOk());
  got = read(*mem_, buf, 4096);
  EXPECT_TRUE(std::equal(full.begin(), full.end(), got.begin()));
  EXPECT_TRUE(std::equal(original.begin() + 3000, original.end(), got.begin() + 3000));

  // A direction the device reads still copies in: kNoCopyIn is ignored there.
  for (DmaDirection d : {DmaDirection::kToDevice, DmaDirection::kBidirectional}) {
    tlb = p->map(buf, 4096, d, 0, DmaAttrs::kNoCopyIn);
    ASSERT_THAT(tlb, IsOk());
    EXPECT_EQ(read(*mem_, *tlb, 4096), read(*mem_, buf, 4096)) << to_string(d);
    ASSERT_THAT(p->unmap(*tlb, 4096, d, DmaAttrs::kNone), IsOk());
  }
  EXPECT_EQ(p->stats().used_slots, 0u);
}

TEST_F(BouncePoolTest, BidirectionalCopiesBothWaysAndSkipCpuSyncSkipsTheCopyBack) {
  auto p = pool(1 << 20);
  const Gpa buf{0x50000};
  const auto original = pattern(5000, 3);
  ASSERT_THAT(mem_->write(buf, original), IsOk());
  auto tlb = p->map(buf, 5000, DmaDirection::kBidirectional);
  ASSERT_THAT(tlb, IsOk());
  EXPECT_EQ(read(*mem_, *tlb, 5000), original);
  const auto dev = pattern(5000, 77);
  ASSERT_THAT(mem_->write(*tlb, dev), IsOk());
  ASSERT_THAT(p->unmap(*tlb, 5000, DmaDirection::kBidirectional, DmaAttrs::kNone), IsOk());
  EXPECT_EQ(read(*mem_, buf, 5000), dev);

  ASSERT_THAT(mem_->write(buf, original), IsOk());
  tlb = p->map(buf, 5000, DmaDirection::kFromDevice);
  ASSERT_THAT(tlb, IsOk());
  ASSERT_THAT(mem_->write(*tlb, dev), IsOk());
  ASSERT_THAT(p->unmap(*tlb, 5000, DmaDirection::kFromDevice, DmaAttrs::kSkipCpuSync), IsOk());
  EXPECT_EQ(read(*mem_, buf, 5000), original);
}

TEST_F(BouncePoolTest, SyncCopiesOnlyTheRequestedPartAndDirection) {
  auto p = pool(1 << 20);
  const Gpa buf{0x60000};
  const auto original = pattern(8192, 5);
  ASSERT_THAT(mem_->write(buf, original), IsOk());
  auto tlb = p->map(buf, 8192, DmaDirection::kBidirectional);
  ASSERT_THAT(tlb, IsOk());
  const auto dev = pattern(8192, 200);
  ASSERT_THAT(mem_->write(*tlb, dev), IsOk());
  // sync_for_cpu of [1000, 1500) only.
  ASSERT_THAT(p->sync_for_cpu(tlb->unchecked_add(1000), 500, DmaDirection::kBidirectional), IsOk());
  auto got = read(*mem_, buf, 8192);
  for (size_t i = 0; i < 8192; ++i) {
    ASSERT_EQ(got[i], (i >= 1000 && i < 1500) ? dev[i] : original[i]) << i;
  }
  // A to-device sync_for_cpu moves nothing; a from-device sync_for_device neither.
  ASSERT_THAT(p->sync_for_cpu(*tlb, 8192, DmaDirection::kToDevice), IsOk());
  EXPECT_EQ(read(*mem_, buf, 8192), got);
  const auto cpu = pattern(8192, 99);
  ASSERT_THAT(mem_->write(buf, cpu), IsOk());
  ASSERT_THAT(p->sync_for_device(*tlb, 8192, DmaDirection::kFromDevice), IsOk());
  EXPECT_EQ(read(*mem_, *tlb, 8192), dev);
  // sync_for_device of [4096, 4196) copies that part in.
  ASSERT_THAT(p->sync_for_device(tlb->unchecked_add(4096), 100, DmaDirection::kToDevice), IsOk());
  auto slot = read(*mem_, *tlb, 8192);
  for (size_t i = 0; i < 8192; ++i) {
    ASSERT_EQ(slot[i], (i >= 4096 && i < 4196) ? cpu[i] : dev[i]) << i;
  }
  // Ranges that leave the mapping are refused.
  EXPECT_THAT(p->sync_for_cpu(tlb->unchecked_add(8000), 500, DmaDirection::kFromDevice),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("outside the bounce mapping")));
  EXPECT_THAT(p->original(tlb->unchecked_add(10), 10), HasValue(Gpa{0x6000a}));
  ASSERT_THAT(p->unmap(*tlb, 8192, DmaDirection::kBidirectional, DmaAttrs::kSkipCpuSync), IsOk());
}

TEST_F(BouncePoolTest, SlotsAreTwoKiBAndPagesArePageAligned) {
  auto p = pool(1 << 20);
  auto a = p->map(Gpa{0x1001}, 1, DmaDirection::kToDevice);
  auto b = p->map(Gpa{0x2003}, 2049, DmaDirection::kToDevice);  // two slots
  auto c = p->map(Gpa{0x3005}, 10, DmaDirection::kToDevice);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(*a, Gpa{kShared});
  EXPECT_EQ(*b, Gpa{kShared + kSlot});
  EXPECT_EQ(*c, Gpa{kShared + 3 * kSlot});
  auto d = p->map(Gpa{0x4000}, 1, DmaDirection::kToDevice);  // slot 4
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(*d, Gpa{kShared + 4 * kSlot});
  auto e = p->map(Gpa{0x5001}, 4096, DmaDirection::kToDevice);  // slot 5 is odd: goes to slot 6
  ASSERT_THAT(e, IsOk());
  EXPECT_EQ(*e, Gpa{kShared + 6 * kSlot});
  EXPECT_TRUE(e->is_aligned(4096));
  auto f = p->map(Gpa{0x6000}, 100, DmaDirection::kToDevice);  // below a page: next fit from slot 8
  ASSERT_THAT(f, IsOk());
  EXPECT_EQ(*f, Gpa{kShared + 8 * kSlot});
  EXPECT_EQ(p->stats().used_slots, 1u + 2 + 1 + 1 + 2 + 1);
  EXPECT_THAT(p->validate(), IsOk());
}

TEST_F(BouncePoolTest, NextFitMovesOnAndRewindsWhenTheLatestMappingIsFreed) {
  auto p = pool(1 << 20);
  auto a = p->map(Gpa{0x1000}, 100, DmaDirection::kToDevice);  // slot 0
  auto b = p->map(Gpa{0x1000}, 100, DmaDirection::kToDevice);  // slot 1
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  ASSERT_EQ(slot_of(*b), 1u);
  // Freeing a (not the latest) leaves next fit after b.
  ASSERT_THAT(p->unmap(*a, 100, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  auto c = p->map(Gpa{0x1000}, 100, DmaDirection::kToDevice);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(slot_of(*c), 2u);
  // Freeing c (the latest) rewinds: the next mapping reuses slot 2.
  ASSERT_THAT(p->unmap(*c, 100, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  auto d = p->map(Gpa{0x1000}, 100, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(slot_of(*d), 2u);
  ASSERT_THAT(p->unmap(*b, 100, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  ASSERT_THAT(p->unmap(*d, 100, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  EXPECT_THAT(p->validate(), IsOk());
}

TEST_F(BouncePoolTest, MinAlignMaskPreservesTheLowAddressBits) {
  auto p = pool(1 << 20);
  const uint64_t mask = 0xfff;  // NVMe-style: the device needs the 4 KiB page offset kept
  for (uint64_t orig : {0x10000ull, 0x10234ull, 0x10834ull, 0x10fffull, 0x11800ull}) {
    auto t = p->map(Gpa{orig}, 3000, DmaDirection::kToDevice, mask);
    ASSERT_THAT(t, IsOk());
    EXPECT_EQ(t->value() & mask, orig & mask) << std::hex << orig;
  }
  // Mappings with a mask are not also forced onto page starts, and the
  // largest mapping shrinks by the rounded mask.
  EXPECT_EQ(BouncePool::max_mapping_size(0), 256u << 10);
  EXPECT_EQ(BouncePool::max_mapping_size(0xfff), (256u << 10) - 4096);
  EXPECT_EQ(BouncePool::max_mapping_size(0x7ff), (256u << 10) - 2048);
  EXPECT_THAT(p->map(Gpa{0x20000}, (256 << 10) - 4095, DmaDirection::kToDevice, mask), IsError(DmaErrc::kTooLarge));
  EXPECT_THAT(p->validate(), IsOk());
}

// A window that starts on a page but not on 256 KiB: the slots' positions
// in a 256 KiB-aligned window are shifted against the segments, and every
// alignment rule still holds, for masks up to 64 KiB, until the pool is full.
TEST_F(BouncePoolTest, AlignmentHoldsInAWindowNotAlignedTo256KiB) {
  for (uint64_t shift : {uint64_t{4096}, uint64_t{3 * 4096}, uint64_t{60 * 4096}}) {
    BouncePool::Config c;
    c.window = {Gpa{kShared + shift}, 1 << 20};
    c.min_areas = 2;
    auto created = BouncePool::create(*mem_, c);
    ASSERT_THAT(created, IsOk());
    BouncePool& p = **created;
    std::mt19937_64 rng(shift);
    std::vector<std::pair<Gpa, uint64_t>> live;
    for (int i = 0; i < 2000; ++i) {
      const uint64_t masks[] = {0, 0, 0xfff, 0x3fff, 0xffff};
      const uint64_t mask = masks[rng() % 5];
      const Gpa orig{0x10000 + (rng() % 0x100000)};
      const uint64_t max = BouncePool::max_mapping_size(mask);
      const uint64_t len = 1 + rng() % std::min<uint64_t>(max, 20000);
      auto t = p.map(orig, len, DmaDirection::kToDevice, mask);
      if (!t) {
        ASSERT_TRUE(t.error().is(DmaErrc::kPoolFull)) << t.error().to_string();
        ASSERT_FALSE(live.empty());
        const size_t k = rng() % live.size();
        ASSERT_THAT(p.unmap(live[k].first, live[k].second, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
        continue;
      }
      SCOPED_TRACE(::testing::Message() << std::hex << "orig " << orig.value() << " len " << len << " mask " << mask
                                        << " slot " << t->value());
      EXPECT_EQ(t->value() & mask, orig.value() & mask);
      if (mask == 0 && len >= 4096) {
        EXPECT_EQ(t->value() % 4096, 0u);
      }
      // Never across a segment (segments start every 256 KiB from the window start).
      const uint64_t first = t->value() - (t->value() & mask & (kSlot - 1)) - c.window.start.value();
      EXPECT_EQ(first / (256 << 10), (t->value() + len - 1 - c.window.start.value()) / (256 << 10));
      EXPECT_EQ(read(*mem_, *t, len), read(*mem_, orig, len));
      live.emplace_back(*t, len);
      if (rng() % 3 == 0) {
        const size_t k = rng() % live.size();
        ASSERT_THAT(p.unmap(live[k].first, live[k].second, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
      }
    }
    ASSERT_THAT(p.validate(), IsOk());
    for (const auto& [t, len] : live) ASSERT_THAT(p.unmap(t, len, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
    EXPECT_EQ(p.stats().used_slots, 0u);
  }
}

TEST_F(BouncePoolTest, AMappingNeverCrossesASegment) {
  auto p = pool(512 << 10);  // two segments of 128 slots, one area
  const uint64_t la = 100 * kSlot - 1000, lb = 40 * kSlot, lc = 88 * kSlot, ld = 28 * kSlot;
  auto a = p->map(Gpa{0x10000}, la, DmaDirection::kToDevice);  // 100 slots
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(*a, Gpa{kShared});
  // 40 slots do not fit in the 28 left in segment 0: they start at segment 1.
  auto b = p->map(Gpa{0x10000}, lb, DmaDirection::kToDevice);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(*b, Gpa{kShared + 128 * kSlot});
  // Next fit continues after b and fills segment 1.
  auto c = p->map(Gpa{0x10000}, lc, DmaDirection::kToDevice);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(*c, Gpa{kShared + 168 * kSlot});
  // The search wraps and finds the 28 slots at the end of segment 0.
  auto d = p->map(Gpa{0x10000}, ld, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(*d, Gpa{kShared + 100 * kSlot});
  EXPECT_THAT(p->map(Gpa{0x10000}, 1, DmaDirection::kToDevice), IsError(DmaErrc::kPoolFull));
  // The largest mapping takes a whole empty segment, one byte more is refused.
  EXPECT_THAT(p->map(Gpa{0x10000}, (256 << 10) + 1, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kTooLarge, HasSubstr("0x40000")));
  ASSERT_THAT(p->unmap(*a, la, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  ASSERT_THAT(p->unmap(*b, lb, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  ASSERT_THAT(p->unmap(*c, lc, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  ASSERT_THAT(p->unmap(*d, ld, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  auto whole = p->map(Gpa{0x10000}, 256 << 10, DmaDirection::kToDevice);
  ASSERT_THAT(whole, IsOk());
  EXPECT_EQ(whole->value() % (256 << 10), 0u);
  EXPECT_THAT(p->validate(), IsOk());
}

TEST_F(BouncePoolTest, ExhaustionReportsSlotStatisticsAndRecovers) {
  auto p = pool(1 << 20, 2);
  std::vector<Gpa> live;
  for (int i = 0; i < 4; ++i) {
    auto t = p->map(Gpa{0x100000}, 256 << 10, DmaDirection::kToDevice);
    ASSERT_THAT(t, IsOk()) << i;
    live.push_back(*t);
  }
  EXPECT_EQ(p->stats().used_slots, 512u);
  EXPECT_THAT(p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kPoolFull, AllOf(HasSubstr("512 of 512 slots used"), HasSubstr("high-water 512"),
                                                    HasSubstr("largest free run 0"))));
  ASSERT_THAT(p->unmap(live.back(), 256 << 10, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  live.pop_back();
  auto again = p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(p->stats().used_slots, 385u);
  EXPECT_EQ(p->stats().high_water, 512u);
  ASSERT_THAT(p->unmap(*again, 1, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  for (Gpa g : live) ASSERT_THAT(p->unmap(g, 256 << 10, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  EXPECT_EQ(p->stats().used_slots, 0u);
  EXPECT_EQ(p->stats().high_water, 512u);
  EXPECT_THAT(p->validate(), IsOk());
}

TEST_F(BouncePoolTest, FreedNeighboursMergeIntoLongerRuns) {
  auto p = pool(256 << 10);  // one segment
  std::vector<Gpa> one;
  for (int i = 0; i < 128; ++i) {
    auto t = p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice);
    ASSERT_THAT(t, IsOk());
    one.push_back(*t);
  }
  for (int i = 0; i < 128; i += 2) ASSERT_THAT(p->unmap(one[i], 1, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  ASSERT_THAT(p->validate(), IsOk());
  // Only single-slot holes: two slots do not fit.
  EXPECT_THAT(p->map(Gpa{0x1000}, kSlot + 1, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kPoolFull, HasSubstr("largest free run 1 slot")));
  // Freeing slot 41 joins the holes 40 and 42 into a run of three.
  ASSERT_THAT(p->unmap(one[41], 1, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  ASSERT_THAT(p->validate(), IsOk());
  auto t = p->map(Gpa{0x1000}, 3 * kSlot, DmaDirection::kToDevice);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(*t, Gpa{kShared + 40 * kSlot});
  EXPECT_THAT(p->validate(), IsOk());
}

TEST_F(BouncePoolTest, UnknownDoubleAndMismatchedUnmapsAreRefused) {
  auto p = pool(1 << 20);
  auto t = p->map(Gpa{0x1000}, 3000, DmaDirection::kToDevice);
  ASSERT_THAT(t, IsOk());
  EXPECT_THAT(p->unmap(Gpa{0x1000}, 3000, DmaDirection::kToDevice, DmaAttrs::kNone),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("not a bounce buffer")));
  EXPECT_THAT(p->unmap(Gpa{kShared + 64 * kSlot}, 10, DmaDirection::kToDevice, DmaAttrs::kNone),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("no live bounce mapping")));
  EXPECT_THAT(p->unmap(*t, 2999, DmaDirection::kToDevice, DmaAttrs::kNone),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("the mapping is gpa:0x100000000 + len 0xbb8")));
  EXPECT_THAT(p->unmap(t->unchecked_add(8), 100, DmaDirection::kToDevice, DmaAttrs::kNone), IsError(DmaErrc::kMisuse));
  EXPECT_EQ(p->stats().used_slots, 2u);  // refused unmaps freed nothing
  ASSERT_THAT(p->unmap(*t, 3000, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  EXPECT_THAT(p->unmap(*t, 3000, DmaDirection::kToDevice, DmaAttrs::kNone), IsError(DmaErrc::kUnknownMapping));
  EXPECT_THAT(p->map(Gpa{kRamSize - 10}, 100, DmaDirection::kToDevice), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(p->map(Gpa{0x1000}, 0, DmaDirection::kToDevice), IsError(BaseErrc::kInvalidArgument));
  EXPECT_EQ(p->stats().used_slots, 0u);
}

TEST_F(BouncePoolTest, CoherentAllocationsArePageAlignedZeroedAndSeparate) {
  auto p = pool(1 << 20);
  auto odd = p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice);  // slot 0
  ASSERT_THAT(odd, IsOk());
  auto a = p->alloc(5000);
  ASSERT_THAT(a, IsOk());
  EXPECT_TRUE(a->gpa.is_aligned(4096));
  EXPECT_EQ(a->host.size(), 8192u);
  for (std::byte b : a->host) ASSERT_EQ(b, std::byte{0});
  std::fill(a->host.begin(), a->host.end(), std::byte{0x5a});
  EXPECT_THAT(p->unmap(a->gpa, 8192, DmaDirection::kToDevice, DmaAttrs::kNone),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("coherent")));
  EXPECT_THAT(p->free(*odd, 1), IsError(DmaErrc::kUnknownMapping));
  EXPECT_THAT(p->free(a->gpa, 4096), IsError(DmaErrc::kUnknownMapping));
  ASSERT_THAT(p->free(a->gpa, 8192), IsOk());
  // Stale bytes everywhere in the pool: a new allocation still reads zero.
  ASSERT_THAT(mem_->fill(Gpa{kShared + 4096}, (1 << 20) - 4096, std::byte{0xa5}), IsOk());
  auto b = p->alloc(8192);
  ASSERT_THAT(b, IsOk());
  for (std::byte x : b->host) ASSERT_EQ(x, std::byte{0});
  EXPECT_THAT(p->alloc((256 << 10) + 1), IsError(DmaErrc::kTooLarge));
  EXPECT_THAT(p->alloc(0), IsError(BaseErrc::kInvalidArgument));
  ASSERT_THAT(p->free(b->gpa, 8192), IsOk());
  ASSERT_THAT(p->unmap(*odd, 1, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  EXPECT_THAT(p->validate(), IsOk());
}

TEST_F(BouncePoolTest, GrowthAddsPoolsFromTheGrowthWindowUntilItIsUsedUp) {
  const Gpa growth{kShared + (4 << 20)};
  auto p = pool(256 << 10, 1, {.growth_window = {growth, 1 << 20}, .growth_pool_size = 256 << 10});
  std::vector<Gpa> live;
  for (int i = 0; i < 5; ++i) {
    auto t = p->map(Gpa{0x1000}, 256 << 10, DmaDirection::kToDevice);
    ASSERT_THAT(t, IsOk()) << i;
    live.push_back(*t);
    EXPECT_TRUE(p->contains(*t));
  }
  EXPECT_EQ(live[0], Gpa{kShared});
  for (int i = 1; i < 5; ++i) EXPECT_EQ(live[i], growth.unchecked_add((i - 1) * (256ull << 10)));
  EXPECT_EQ(p->stats().pools, 5u);
  EXPECT_EQ(p->stats().total_slots, 5u * 128);
  EXPECT_THAT(p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kPoolFull, HasSubstr("in 5 pool(s)")));
  for (Gpa g : live) ASSERT_THAT(p->unmap(g, 256 << 10, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  EXPECT_EQ(p->stats().used_slots, 0u);
  EXPECT_EQ(p->stats().pools, 5u);  // pools stay
  EXPECT_THAT(p->validate(), IsOk());
  const auto w = p->windows();
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[1].start, growth);
}

// Two CPUs this process may run on whose areas differ in a 2-area pool
// (the area search starts at cpu & 1), or nothing.
std::optional<std::pair<int, int>> two_cpus_of_different_areas() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return std::nullopt;
  int even = -1, odd = -1;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    if (c % 2 == 0 && even < 0) even = c;
    if (c % 2 == 1 && odd < 0) odd = c;
  }
  if (even < 0 || odd < 0) return std::nullopt;
  return std::pair<int, int>(even, odd);
}

// Pins the calling thread to `cpu`; false if that is not possible.
bool pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

// A thread's search starts in its own area, then walks the others.
TEST_F(BouncePoolTest, EachThreadStartsInItsOwnAreaThenWalksTheOthers) {
  const auto cpus = two_cpus_of_different_areas();
  if (!cpus) GTEST_SKIP() << "needs two usable CPUs, one even and one odd";
  auto p = pool(512 << 10, 2);  // two areas of one segment each
  ASSERT_EQ(p->stats().areas, 2u);
  uint64_t area_a = 0, area_b = 0;
  Gpa ta, tb;
  // A thread's search starts at the area of the CPU it runs on, as in Linux.
  bool pinned_a = false, pinned_b = false;
  std::thread([&] {
    pinned_a = pin_to(cpus->first);
    if (pinned_a) ta = *p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice);
    area_a = slot_of(ta) / 128;
  }).join();
  std::thread([&] {
    pinned_b = pin_to(cpus->second);
    if (pinned_b) tb = *p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice);
    area_b = slot_of(tb) / 128;
  }).join();
  ASSERT_TRUE(pinned_a && pinned_b) << "could not pin to CPUs " << cpus->first << " and " << cpus->second;
  EXPECT_EQ(area_a, 0u);
  EXPECT_EQ(area_b, 1u);
  // This thread, pinned to the first CPU for the rest of the test, fills its
  // area completely: the next mapping lands in the other one.
  cpu_set_t saved;
  ASSERT_EQ(sched_getaffinity(0, sizeof(saved), &saved), 0);
  ASSERT_TRUE(pin_to(cpus->first));
  struct Restore {
    cpu_set_t set;
    ~Restore() { pthread_setaffinity_np(pthread_self(), sizeof(set), &set); }
  } restore{saved};
  // Fill this thread's area completely: the next mapping lands in the other one.
  std::vector<Gpa> mine;
  auto first = p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice);
  ASSERT_THAT(first, IsOk());
  const uint64_t home = slot_of(*first) / 128;
  EXPECT_EQ(home, 0u);
  mine.push_back(*first);
  while (true) {
    auto t = p->map(Gpa{0x1000}, 1, DmaDirection::kToDevice);
    ASSERT_THAT(t, IsOk());
    mine.push_back(*t);
    if (slot_of(*t) / 128 != home) break;
  }
  // The home area had 127 free slots (one holds ta or tb); the 128th mapping moved on.
  EXPECT_EQ(mine.size(), 128u);
  for (Gpa g : mine) ASSERT_THAT(p->unmap(g, 1, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  ASSERT_THAT(p->unmap(ta, 1, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  ASSERT_THAT(p->unmap(tb, 1, DmaDirection::kToDevice, DmaAttrs::kNone), IsOk());
  EXPECT_THAT(p->validate(), IsOk());
}

}  // namespace
}  // namespace vdma
