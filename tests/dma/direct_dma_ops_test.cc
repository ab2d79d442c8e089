// DirectDmaOps: bus offsets, the encryption bit, the DMA mask with and
// without a bounce pool, forced and restricted bouncing, configuration errors,
// attributes and scatter lists. Also IdentityDmaOps.
#include "vdma/dma/direct_dma_ops.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "result_matchers.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::HasSubstr;

constexpr uint64_t kRamLow = 0;               // private, below 4 GiB
constexpr uint64_t kRamLowSize = 16 << 20;
constexpr uint64_t kSharedLow = 16 << 20;     // shared, adjacent to kRamLow
constexpr uint64_t kSharedLowSize = 8 << 20;
constexpr uint64_t kRamHigh = 1ull << 32;     // private, beyond a 32-bit mask
constexpr uint64_t kRamHighSize = 8 << 20;
constexpr uint64_t kCBit = 47;
constexpr uint64_t kBusOffset = 1ull << 40;
constexpr uint64_t kMask32 = 0xffffffff;

// In kSharedLow: the coherent window and two bounce pool windows.
constexpr AddrRange<Gpa> kCoherentWin{Gpa{kSharedLow}, 1 << 20};
constexpr AddrRange<Gpa> kPoolWin{Gpa{kSharedLow + (2 << 20)}, 2 << 20};
constexpr AddrRange<Gpa> kRestrictedWin{Gpa{kSharedLow + (4 << 20)}, 1 << 20};

std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(seed + i * 13));
  return v;
}

class DirectDmaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = GuestMemory::create({{Gpa{kRamLow}, kRamLowSize, MemAttr::kPrivate, "ram-low"},
                                  {Gpa{kSharedLow}, kSharedLowSize, MemAttr::kShared, "shared-low"},
                                  {Gpa{kRamHigh}, kRamHighSize, MemAttr::kPrivate, "ram-high"}});
    ASSERT_THAT(m, IsOk());
    mem_ = std::move(m).value();
    coherent_ = *CoherentPool::create(*mem_, kCoherentWin);
    pool_ = *BouncePool::create(*mem_, {.window = kPoolWin, .min_areas = 2});
  }
  std::unique_ptr<DirectDmaOps> make(DirectDmaConfig c) {
    if (c.coherent == nullptr && c.bounce_mode != BounceMode::kRestricted) c.coherent = coherent_;
    auto ops = DirectDmaOps::create(*mem_, std::move(c));
    VDMA_CHECK(ops.has_value(), "DirectDmaOps::create");
    return std::move(ops).value();
  }
  std::vector<std::byte> read(Gpa g, size_t n) {
    std::vector<std::byte> v(n);
    VDMA_CHECK(mem_->read(g, v).has_value(), "read");
    return v;
  }

  std::unique_ptr<GuestMemory> mem_;
  std::shared_ptr<CoherentPool> coherent_;
  std::shared_ptr<BouncePool> pool_;
};

TEST_F(DirectDmaOpsTest, WithoutRangesTheBusAddressIsTheGuestAddress) {
  auto ops = make({});
  EXPECT_EQ(ops->kind(), "direct");
  EXPECT_THAT(ops->map(Gpa{0x1234}, 100, DmaDirection::kToDevice), HasValue(DmaAddr{0x1234}));
  EXPECT_THAT(ops->map(Gpa{kRamHigh + 8}, 100, DmaDirection::kFromDevice), HasValue(DmaAddr{kRamHigh + 8}));
  EXPECT_THAT(ops->unmap(DmaAddr{0x1234}, 100, DmaDirection::kToDevice), IsOk());
  EXPECT_FALSE(ops->need_sync(DmaAddr{0x1234}));
  EXPECT_EQ(ops->max_mapping_size(), UINT64_MAX);
  EXPECT_THAT(ops->map(Gpa{kRamHigh + kRamHighSize - 4}, 8, DmaDirection::kToDevice), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(ops->map(Gpa{0}, 0, DmaDirection::kToDevice), IsError(BaseErrc::kInvalidArgument));
  auto ring = ops->alloc_coherent(100);
  ASSERT_THAT(ring, IsOk());
  EXPECT_EQ(ring->dma, DmaAddr{ring->cpu.value()});
  EXPECT_TRUE(kCoherentWin.contains(ring->cpu, 4096));
  EXPECT_THAT(ops->free_coherent(*ring), IsOk());
}

TEST_F(DirectDmaOpsTest, OffsetRangesTranslateAndABufferOutsideEveryRangeIsAnError) {
  auto ops = make({.bus = {.ranges = {{Gpa{kRamLow}, DmaAddr{kBusOffset}, kRamLowSize},
                                      {Gpa{kSharedLow}, DmaAddr{2 * kBusOffset}, kSharedLowSize}}},
                   .bounce_pool = pool_});
  EXPECT_THAT(ops->map(Gpa{0x5000}, 64, DmaDirection::kToDevice), HasValue(DmaAddr{kBusOffset + 0x5000}));
  EXPECT_THAT(ops->map(Gpa{kSharedLow + 0x10}, 64, DmaDirection::kToDevice),
              HasValue(DmaAddr{2 * kBusOffset + 0x10}));
  // ram-high is in no range: an error even though a bounce pool exists.
  EXPECT_THAT(ops->map(Gpa{kRamHigh}, 64, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kNotCovered, HasSubstr("gpa:0x100000000 + len 0x40 is not inside any")));
  // A buffer straddling two ranges with unrelated bus addresses is not covered either.
  EXPECT_THAT(ops->map(Gpa{kSharedLow - 8}, 16, DmaDirection::kToDevice), IsError(DmaErrc::kNotCovered));
  EXPECT_EQ(pool_->stats().used_slots, 0u);
  // Unmap translates back; an address no range reaches is unknown.
  EXPECT_THAT(ops->unmap(DmaAddr{kBusOffset + 0x5000}, 64, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(ops->unmap(DmaAddr{0x5000}, 64, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("dma:0x5000")));
  auto ring = ops->alloc_coherent(4096);
  ASSERT_THAT(ring, IsOk());
  EXPECT_EQ(ring->dma, DmaAddr{2 * kBusOffset + (ring->cpu.value() - kSharedLow)});
  EXPECT_THAT(ops->free_coherent(*ring), IsOk());
  EXPECT_THAT(ops->bus().to_cpu(DmaAddr{2 * kBusOffset + 0x10}), HasValue(Gpa{kSharedLow + 0x10}));
}

TEST_F(DirectDmaOpsTest, EncryptionBitIsSetForPrivateAndClearForSharedMemory) {
  auto ops = make({.bus = {.encryption_bit = kCBit}});
  const uint64_t c = 1ull << kCBit;
  EXPECT_THAT(ops->map(Gpa{0x3000}, 64, DmaDirection::kToDevice), HasValue(DmaAddr{c | 0x3000}));
  EXPECT_THAT(ops->map(Gpa{kSharedLow + 0x40}, 64, DmaDirection::kToDevice), HasValue(DmaAddr{kSharedLow + 0x40}));
  EXPECT_THAT(ops->map(Gpa{kRamHigh}, 64, DmaDirection::kToDevice), HasValue(DmaAddr{c | kRamHigh}));
  EXPECT_THAT(ops->bus().to_cpu(DmaAddr{c | 0x3000}), HasValue(Gpa{0x3000}));
  EXPECT_THAT(ops->unmap(DmaAddr{c | 0x3000}, 64, DmaDirection::kToDevice), IsOk());
  // Half private, half shared: no single address describes it.
  EXPECT_THAT(ops->map(Gpa{kSharedLow - 32}, 64, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kNotCovered, HasSubstr("spans private and shared memory")));
  // The coherent window is shared: rings carry no C-bit.
  auto ring = ops->alloc_coherent(4096);
  ASSERT_THAT(ring, IsOk());
  EXPECT_EQ(ring->dma.value(), ring->cpu.value());
  EXPECT_THAT(ops->free_coherent(*ring), IsOk());

  // With a bounce pool the mixed buffer bounces into shared memory.
  auto bouncing = make({.bus = {.encryption_bit = kCBit}, .bounce_pool = pool_});
  const auto data = pattern(64, 1);
  ASSERT_THAT(mem_->write(Gpa{kSharedLow - 32}, data), IsOk());
  auto d = bouncing->map(Gpa{kSharedLow - 32}, 64, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_TRUE(kPoolWin.contains(Gpa{d->value()}, 64)) << fmt::format("{}", *d);
  EXPECT_EQ(read(Gpa{d->value()}, 64), data);
  EXPECT_TRUE(bouncing->need_sync(*d));
  EXPECT_THAT(bouncing->unmap(*d, 64, DmaDirection::kToDevice), IsOk());
}

TEST_F(DirectDmaOpsTest, BeyondTheMaskIsAnErrorWithoutAPoolAndBouncesWithOne) {
  auto strict = make({.bus = {.dma_mask = kMask32}});
  EXPECT_EQ(strict->max_mapping_size(), UINT64_MAX);
  EXPECT_THAT(strict->map(Gpa{kRamHigh + 0x100}, 64, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kBeyondMask, HasSubstr("beyond the DMA mask 0xffffffff")));
  EXPECT_THAT(strict->map(Gpa{kMask32 - 3}, 8, DmaDirection::kToDevice), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(strict->map(Gpa{0x100}, 64, DmaDirection::kToDevice), HasValue(DmaAddr{0x100}));

  auto ops = make({.bus = {.dma_mask = kMask32}, .bounce_pool = pool_});
  EXPECT_EQ(ops->max_mapping_size(), 256u << 10);
  EXPECT_THAT(ops->map(Gpa{0x100}, 64, DmaDirection::kToDevice), HasValue(DmaAddr{0x100}));  // reachable: direct
  const Gpa high{kRamHigh + 0x1000};
  const auto original = pattern(6000, 9);
  ASSERT_THAT(mem_->write(high, original), IsOk());
  auto d = ops->map(high, 6000, DmaDirection::kBidirectional);
  ASSERT_THAT(d, IsOk());
  EXPECT_LE(d->value() + 6000 - 1, kMask32);
  EXPECT_TRUE(kPoolWin.contains(Gpa{d->value()}, 6000));
  EXPECT_EQ(read(Gpa{d->value()}, 6000), original);
  const auto dev = pattern(6000, 200);
  ASSERT_THAT(mem_->write(Gpa{d->value()}, dev), IsOk());
  ASSERT_THAT(ops->sync_for_cpu(*d, 6000, DmaDirection::kBidirectional), IsOk());
  EXPECT_EQ(read(high, 6000), dev);
  ASSERT_THAT(ops->unmap(*d, 6000, DmaDirection::kBidirectional), IsOk());
  EXPECT_EQ(pool_->stats().used_slots, 0u);
  EXPECT_THAT(ops->map(high, (256 << 10) + 1, DmaDirection::kToDevice), IsError(DmaErrc::kTooLarge));

  // The C-bit counts against the mask: a 32-bit device bounces all private memory.
  auto sev = make({.bus = {.encryption_bit = kCBit, .dma_mask = kMask32}, .bounce_pool = pool_});
  auto p = sev->map(Gpa{0x2000}, 64, DmaDirection::kToDevice);
  ASSERT_THAT(p, IsOk());
  EXPECT_TRUE(kPoolWin.contains(Gpa{p->value()}));
  EXPECT_THAT(sev->map(Gpa{kSharedLow + 0x2000}, 64, DmaDirection::kToDevice),
              HasValue(DmaAddr{kSharedLow + 0x2000}));
  EXPECT_THAT(sev->unmap(*p, 64, DmaDirection::kToDevice), IsOk());
  // A 48-bit device reaches the C-bit directly.
  auto wide = make({.bus = {.encryption_bit = kCBit, .dma_mask = (1ull << 48) - 1}, .bounce_pool = pool_});
  EXPECT_THAT(wide->map(Gpa{0x2000}, 64, DmaDirection::kToDevice), HasValue(DmaAddr{(1ull << kCBit) | 0x2000}));
}

TEST_F(DirectDmaOpsTest, ForceBouncesEveryMapping) {
  auto ops = make({.bounce_mode = BounceMode::kForce, .bounce_pool = pool_});
  EXPECT_EQ(ops->kind(), "bounce");
  EXPECT_EQ(ops->max_mapping_size(), 256u << 10);
  const auto data = pattern(100, 4);
  ASSERT_THAT(mem_->write(Gpa{kSharedLow + (1 << 20) + 64}, data), IsOk());  // even shared, reachable memory
  auto d = ops->map(Gpa{kSharedLow + (1 << 20) + 64}, 100, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_TRUE(kPoolWin.contains(Gpa{d->value()}, 100));
  EXPECT_EQ(read(Gpa{d->value()}, 100), data);
  EXPECT_TRUE(ops->need_sync(*d));
  EXPECT_THAT(ops->unmap(DmaAddr{0x1000}, 100, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("every mapping of this device bounces")));
  EXPECT_THAT(ops->sync_for_cpu(DmaAddr{0x1000}, 100, DmaDirection::kFromDevice), IsError(DmaErrc::kUnknownMapping));
  EXPECT_THAT(ops->sync_for_device(DmaAddr{0x1000}, 100, DmaDirection::kToDevice), IsError(DmaErrc::kUnknownMapping));
  EXPECT_THAT(ops->unmap(*d, 100, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(ops->unmap(*d, 100, DmaDirection::kToDevice), IsError(DmaErrc::kUnknownMapping));
  auto ring = ops->alloc_coherent(8192);
  ASSERT_THAT(ring, IsOk());
  EXPECT_TRUE(kCoherentWin.contains(ring->cpu, 8192));
  EXPECT_THAT(ops->free_coherent(*ring), IsOk());
}

TEST_F(DirectDmaOpsTest, RestrictedBouncesThroughItsOwnPoolWhichAlsoHoldsTheRings) {
  auto own = *BouncePool::create(*mem_, {.window = kRestrictedWin, .min_areas = 1});
  auto ops = make({.bounce_mode = BounceMode::kRestricted, .bounce_pool = own});
  EXPECT_EQ(ops->kind(), "restricted");
  auto ring = ops->alloc_coherent(6000);
  ASSERT_THAT(ring, IsOk());
  EXPECT_TRUE(kRestrictedWin.contains(ring->cpu, 8192));
  EXPECT_EQ(ring->host.size(), 8192u);
  EXPECT_EQ(own->stats().used_slots, 4u);
  auto d = ops->map(Gpa{0x9000}, 3000, DmaDirection::kFromDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_TRUE(kRestrictedWin.contains(Gpa{d->value()}, 3000));
  EXPECT_EQ(pool_->stats().used_slots, 0u);  // the platform pool is not involved
  EXPECT_THAT(ops->unmap(*d, 3000, DmaDirection::kFromDevice), IsOk());
  CoherentBuffer forged = *ring;
  forged.dma = DmaAddr{forged.dma.value() + 4096};
  EXPECT_THAT(ops->free_coherent(forged), IsError(BaseErrc::kInvalidArgument));
  EXPECT_THAT(ops->free_coherent(*ring), IsOk());
  EXPECT_EQ(own->stats().used_slots, 0u);
}

TEST_F(DirectDmaOpsTest, CreateNamesWhatIsWrong) {
  auto err = [&](DirectDmaConfig c) { return DirectDmaOps::create(*mem_, std::move(c)); };
  EXPECT_THAT(err({.bounce_mode = BounceMode::kForce, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("needs a bounce pool")));
  EXPECT_THAT(err({.coherent = coherent_, .coherent_device = false}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("cache-maintenance")));
  EXPECT_THAT(err({}), IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("coherent pool")));
  EXPECT_THAT(err({.bus = {.ranges = {{Gpa{kRamLow}, DmaAddr{kBusOffset}, kRamLowSize}}}, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("coherent window gpa:0x1000000")));
  EXPECT_THAT(err({.bus = {.ranges = {{Gpa{kRamLow}, DmaAddr{0}, kRamLowSize + (1 << 20)}}},
                   .bounce_pool = pool_, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("bounce pool window")));
  EXPECT_THAT(err({.bus = {.dma_mask = 0xffffff}, .bounce_pool = pool_, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("beyond the DMA mask 0xffffff")));
  EXPECT_THAT(err({.bus = {.dma_mask = 0x1234}, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("dma_mask 0x1234")));
  EXPECT_THAT(err({.bus = {.ranges = {{Gpa{0}, DmaAddr{0}, 1 << 20}, {Gpa{1 << 20}, DmaAddr{4096}, 1 << 20}}},
                   .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("overlap in bus space")));
  EXPECT_THAT(err({.bus = {.ranges = {{Gpa{0x800}, DmaAddr{0}, 1 << 20}}}, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("not 4 KiB aligned")));
  EXPECT_THAT(err({.bus = {.encryption_bit = 64}, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("outside 1..63")));
  EXPECT_THAT(err({.bus = {.ranges = {{Gpa{0}, DmaAddr{1ull << 47}, 1 << 20}}, .encryption_bit = 47},
                   .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("reach the encryption bit 47")));
  auto private_coherent = *CoherentPool::create(*mem_, {Gpa{0x100000}, 1 << 20});
  EXPECT_THAT(err({.bounce_mode = BounceMode::kForce, .bounce_pool = pool_, .coherent = private_coherent}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("private memory")));
}

TEST_F(DirectDmaOpsTest, SkipCpuSyncNeverSkipsTheCopyInButSkipsTheCopyBack) {
  auto ops = make({.bounce_mode = BounceMode::kForce, .bounce_pool = pool_});
  const Gpa buf{0x7000};
  const auto original = pattern(512, 3);
  ASSERT_THAT(mem_->write(buf, original), IsOk());
  auto d = ops->map(buf, 512, DmaDirection::kFromDevice, DmaAttrs::kSkipCpuSync);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(read(Gpa{d->value()}, 512), original);
  ASSERT_THAT(mem_->write(Gpa{d->value()}, pattern(512, 99)), IsOk());
  ASSERT_THAT(ops->unmap(*d, 512, DmaDirection::kFromDevice, DmaAttrs::kSkipCpuSync), IsOk());
  EXPECT_EQ(read(buf, 512), original);
}

TEST_F(DirectDmaOpsTest, FailuresAreLoggedUnlessNoWarn) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(16);
  auto logger = std::make_shared<spdlog::logger>("capture", sink);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::warn);
  auto ops = make({.bus = {.dma_mask = kMask32}});
  EXPECT_THAT(ops->map(Gpa{kRamHigh}, 64, DmaDirection::kToDevice, DmaAttrs::kNoWarn), IsError(DmaErrc::kBeyondMask));
  EXPECT_TRUE(sink->last_formatted().empty());
  EXPECT_THAT(ops->map(Gpa{kRamHigh}, 64, DmaDirection::kToDevice), IsError(DmaErrc::kBeyondMask));
  const auto lines = sink->last_raw();
  spdlog::set_default_logger(previous);
  spdlog::set_level(spdlog::level::critical);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(std::string(lines[0].payload.data(), lines[0].payload.size()), HasSubstr("dma.beyond_mask"));
}

TEST_F(DirectDmaOpsTest, ScatterListsMapEveryEntryAndUnwindOnFailure) {
  auto ops = make({.bounce_mode = BounceMode::kForce, .bounce_pool = pool_});
  SgEntry sg[3] = {{.gpa = Gpa{0x1000}, .len = 100}, {.gpa = Gpa{0x8000}, .len = 5000}, {.gpa = Gpa{kRamHigh}, .len = 7}};
  auto n = ops->map_sg(sg, DmaDirection::kToDevice);
  ASSERT_THAT(n, HasValue(3u));
  for (const SgEntry& e : sg) {
    EXPECT_EQ(e.dma_len, e.len);
    EXPECT_TRUE(kPoolWin.contains(Gpa{e.dma.value()}, e.len));
  }
  EXPECT_EQ(pool_->stats().used_slots, 1u + 3 + 1);
  ASSERT_THAT(ops->sync_sg_for_device(sg, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(ops->unmap_sg(sg, DmaDirection::kToDevice), IsOk());
  EXPECT_EQ(pool_->stats().used_slots, 0u);

  SgEntry bad[3] = {{.gpa = Gpa{0x1000}, .len = 100}, {.gpa = Gpa{0x2000}, .len = 100},
                    {.gpa = Gpa{kRamHigh + kRamHighSize}, .len = 8}};
  EXPECT_THAT(ops->map_sg(bad, DmaDirection::kFromDevice),
              IsErrorWith(MemErrc::kNotMapped, HasSubstr("scatter entry 2")));
  EXPECT_EQ(pool_->stats().used_slots, 0u);
  EXPECT_THAT(ops->map_sg(std::span<SgEntry>{}, DmaDirection::kToDevice), IsError(BaseErrc::kInvalidArgument));
}

TEST(IdentityDmaOps, SharesOneCoherentPoolBetweenDevices) {
  auto mem = *GuestMemory::create({{Gpa{0}, 4 << 20, MemAttr::kShared, "ram"}});
  auto pool = *CoherentPool::create(*mem, {Gpa{0}, 1 << 20});
  IdentityDmaOps a(*mem, pool);
  IdentityDmaOps b(*mem, pool);
  EXPECT_EQ(a.kind(), "bypass");
  auto ra = a.alloc_coherent(4096);
  auto rb = b.alloc_coherent(4096);
  ASSERT_THAT(ra, IsOk());
  ASSERT_THAT(rb, IsOk());
  EXPECT_NE(ra->cpu, rb->cpu);
  EXPECT_EQ(pool->bytes_free(), (1u << 20) - 8192);
  DmaOps& ops = a;
  EXPECT_THAT(ops.map(Gpa{0x200000}, 64, DmaDirection::kToDevice), HasValue(DmaAddr{0x200000}));
  EXPECT_THAT(a.free_coherent(*ra), IsOk());
  EXPECT_THAT(b.free_coherent(*rb), IsOk());
  EXPECT_THAT(CoherentPool::create(*mem, {Gpa{0x800}, 4096}), IsError(DmaErrc::kInvalidConfig));
  EXPECT_THAT(CoherentPool::create(*mem, {Gpa{3 << 20}, 2 << 20}), IsError(DmaErrc::kInvalidConfig));
}

}  // namespace
}  // namespace vdma
