// SplitDriverQueue: the exact bytes it writes into the rings, its use of
// DmaOps (every map matched by an unmap with the same address, length and
// direction; none for premapped segments), indirect tables, notification
// decisions, and its distrust of the device (used ids and lengths).
//
// The device is played by SplitRingBuilder attached to the queue's rings.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "result_matchers.h"
#include "split_ring_builder.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/split_driver_queue.h"
#include "vdma/virtio/split_layout.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kRingWindow = 2 << 20;  // coherent memory: rings and indirect pools
constexpr uint64_t kDataBase = 16 << 20;
constexpr uint64_t kDataSize = 1 << 20;
constexpr Gpa kData{kDataBase};

Gpa data(uint64_t off) { return kData.unchecked_add(off); }

// Forwards to an inner DmaOps and records every call. Can fail the n-th
// map() and can shift DMA addresses away from GPAs (as a bus offset or an
// IOMMU would) to prove the queue never confuses the two.
class SpyDmaOps final : public DmaOps {
 public:
  struct Call {
    uint64_t gpa = 0;  // map only
    uint64_t dma = 0;
    uint64_t len = 0;
    DmaDirection dir = DmaDirection::kBidirectional;
    bool operator==(const Call&) const = default;
  };

  explicit SpyDmaOps(DmaOps& inner, uint64_t dma_offset = 0) : inner_(inner), offset_(dma_offset) {}

  Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) override {
    if (map_calls++ == fail_map_at) return make_error(DmaErrc::kPoolFull, "spy: map {} refused", gpa);
    const DmaAddr d = VDMA_TRY(inner_.map(gpa, len, dir, attrs));
    const DmaAddr shifted(d.value() + offset_);
    maps.push_back({gpa.value(), shifted.value(), len, dir});
    return shifted;
  }
  Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs) override {
    unmaps.push_back({0, addr.value(), len, dir});
    return inner_.unmap(DmaAddr(addr.value() - offset_), len, dir, attrs);
  }
  Result<void> sync_for_cpu(DmaAddr a, uint64_t l, DmaDirection d) override { return inner_.sync_for_cpu(a, l, d); }
  Result<void> sync_for_device(DmaAddr a, uint64_t l, DmaDirection d) override {
    return inner_.sync_for_device(a, l, d);
  }
  Result<CoherentBuffer> alloc_coherent(uint64_t size) override {
    ++coherent_allocs;
    return inner_.alloc_coherent(size);
  }
  Result<void> free_coherent(const CoherentBuffer& buf) override {
    ++coherent_frees;
    return inner_.free_coherent(buf);
  }
  uint64_t max_mapping_size() const override { return inner_.max_mapping_size(); }
  bool need_sync(DmaAddr a) const override { return inner_.need_sync(a); }

  // The unmap expected for a recorded map.
  static Call unmap_of(const Call& m) { return {0, m.dma, m.len, m.dir}; }

  std::vector<Call> maps;
  std::vector<Call> unmaps;
  int map_calls = 0;
  int fail_map_at = -1;
  int coherent_allocs = 0;
  int coherent_frees = 0;

 private:
  DmaOps& inner_;
  uint64_t offset_;
};

DriverSegment readable(Gpa at, uint32_t len) { return {.addr = at, .len = len, .type = BufferType::kDeviceReadable}; }
DriverSegment writable(Gpa at, uint32_t len) { return {.addr = at, .len = len, .type = BufferType::kDeviceWritable}; }

class SplitDriverQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = GuestMemory::create({{Gpa{0}, kRingWindow, MemAttr::kShared, "rings"},
                                  {kData, kDataSize, MemAttr::kPrivate, "data"}});
    ASSERT_THAT(m, IsOk());
    mem_ = std::move(m).value();
    identity_ = std::make_unique<IdentityDmaOps>(*mem_, AddrRange<Gpa>{Gpa{0}, kRingWindow});
    spy_ = std::make_unique<SpyDmaOps>(*identity_);
  }

  std::unique_ptr<SplitDriverQueue> make(QueueConfig cfg) {
    auto q = SplitDriverQueue::create(*spy_, cfg);
    EXPECT_THAT(q, IsOk());
    if (!q) return nullptr;
    return std::move(q).value();
  }
  SplitRingBuilder device_view(const SplitDriverQueue& q) const {
    return SplitRingBuilder(*mem_, q.ring_addresses(), q.size());
  }
  std::vector<std::byte> data_bytes() const {
    std::vector<std::byte> out(kDataSize);
    EXPECT_THAT(mem_->read(kData, out), IsOk());
    return out;
  }

  std::unique_ptr<GuestMemory> mem_;
  std::unique_ptr<IdentityDmaOps> identity_;
  std::unique_ptr<SpyDmaOps> spy_;
};

TEST_F(SplitDriverQueueTest, CreateRejectsSizesTheSpecForbids) {
  for (uint16_t bad : {uint16_t{0}, uint16_t{3}, uint16_t{100}, uint16_t{65535}}) {
    EXPECT_THAT(SplitDriverQueue::create(*spy_, {.size = bad}),
                IsErrorWith(VirtioErrc::kInvalidConfig, HasSubstr(fmt::format("split queue size {} ", bad))));
  }
  EXPECT_EQ(spy_->coherent_allocs, 0);
}

TEST_F(SplitDriverQueueTest, CreatePropagatesCoherentAllocationFailure) {
  // 32768 entries need 512 KiB of descriptors plus 2 MiB of indirect tables:
  // more than the 2 MiB window.
  auto q = SplitDriverQueue::create(
      *spy_, {.size = 32768, .features = feature_bit(kFeatureIndirectDesc), .max_indirect = 4});
  EXPECT_THAT(q, IsError(MemErrc::kNoSpace));
  // The ring allocated before the failing pool was given back.
  EXPECT_EQ(spy_->coherent_allocs, 2);
  EXPECT_EQ(spy_->coherent_frees, 1);
}

TEST_F(SplitDriverQueueTest, RingLayoutIsAlignedAndFreshlyZeroed) {
  auto q = make({.size = 256});
  const RingAddresses a = q->ring_addresses();
  EXPECT_TRUE(a.desc.is_aligned(16));
  EXPECT_EQ(a.driver.value(), a.desc.value() + 16 * 256);
  EXPECT_TRUE(a.device.is_aligned(64));
  EXPECT_GE(a.device.value(), a.driver.value() + split::avail_size(256));
  EXPECT_LT(a.device.value() + split::used_size(256), kRingWindow);
  SplitRingBuilder dev = device_view(*q);
  EXPECT_EQ(dev.avail_idx(), 0);
  EXPECT_EQ(dev.avail_flags(), 0);
  EXPECT_EQ(dev.used_idx(), 0);
  EXPECT_EQ(q->num_free(), 256);
  EXPECT_EQ(q->format(), RingFormat::kSplit);
}

TEST_F(SplitDriverQueueTest, AddWritesTheChainAndPublishesIt) {
  auto q = make({.size = 256});
  const DriverSegment segs[] = {readable(data(0), 100), readable(data(0x1000), 200), writable(data(0x2000), 300)};
  ASSERT_THAT(q->add(segs, 7), IsOk());

  SplitRingBuilder dev = device_view(*q);
  EXPECT_EQ(dev.desc(0), (RawDesc{kDataBase, 100, split::kDescFNext, 1}));
  EXPECT_EQ(dev.desc(1), (RawDesc{kDataBase + 0x1000, 200, split::kDescFNext, 2}));
  EXPECT_EQ(dev.desc(2), (RawDesc{kDataBase + 0x2000, 300, split::kDescFWrite, 0}));
  EXPECT_EQ(dev.avail_entry(0), 0);
  EXPECT_EQ(dev.avail_idx(), 1);
  EXPECT_EQ(q->num_free(), 253);
  EXPECT_THAT(spy_->maps,
              ElementsAre(SpyDmaOps::Call{kDataBase, kDataBase, 100, DmaDirection::kToDevice},
                          SpyDmaOps::Call{kDataBase + 0x1000, kDataBase + 0x1000, 200, DmaDirection::kToDevice},
                          SpyDmaOps::Call{kDataBase + 0x2000, kDataBase + 0x2000, 300, DmaDirection::kFromDevice}));
  EXPECT_TRUE(spy_->unmaps.empty());
}

TEST_F(SplitDriverQueueTest, DescriptorsCarryTheMappedAddressNotTheGpa) {
  SpyDmaOps offset_spy(*identity_, uint64_t{1} << 40);
  auto q = std::move(SplitDriverQueue::create(offset_spy, {.size = 16})).value();
  const DriverSegment segs[] = {readable(data(0x40), 64), writable(data(0x80), 32)};
  ASSERT_THAT(q->add(segs, 1), IsOk());
  SplitRingBuilder dev(*mem_, q->ring_addresses(), 16);
  EXPECT_EQ(dev.desc(0).addr, (uint64_t{1} << 40) + kDataBase + 0x40);
  EXPECT_EQ(dev.desc(1).addr, (uint64_t{1} << 40) + kDataBase + 0x80);
  dev.push_used(0, 32);
  ASSERT_THAT(q->get_used(), HasValue(::testing::Optional(::testing::Field(&UsedBuffer::cookie, 1u))));
  ASSERT_EQ(offset_spy.unmaps.size(), 2u);
  EXPECT_EQ(offset_spy.unmaps[0], SpyDmaOps::unmap_of(offset_spy.maps[0]));
  EXPECT_EQ(offset_spy.unmaps[1], SpyDmaOps::unmap_of(offset_spy.maps[1]));
}

TEST_F(SplitDriverQueueTest, GetUsedReturnsCookieAndUnmapsExactlyWhatWasMapped) {
  auto q = make({.size = 8});
  SplitRingBuilder dev = device_view(*q);
  EXPECT_THAT(q->get_used(), HasValue(::testing::Eq(std::nullopt)));

  const DriverSegment a[] = {readable(data(0), 10)};
  const DriverSegment b[] = {readable(data(0x100), 20), writable(data(0x200), 30)};
  const DriverSegment c[] = {writable(data(0x300), 40)};
  ASSERT_THAT(q->add(a, 100), IsOk());  // head 0
  ASSERT_THAT(q->add(b, 200), IsOk());  // head 1 (descriptors 1, 2)
  ASSERT_THAT(q->add(c, 300), IsOk());  // head 3
  EXPECT_EQ(dev.avail_entry(0), 0);
  EXPECT_EQ(dev.avail_entry(1), 1);
  EXPECT_EQ(dev.avail_entry(2), 3);
  EXPECT_EQ(q->num_free(), 4);

  // Out of order, as devices may complete.
  dev.push_used(1, 25);
  dev.push_used(3, 40);
  dev.push_used(0, 0);
  auto u = q->get_used();
  ASSERT_THAT(u, HasValue(::testing::Ne(std::nullopt)));
  EXPECT_EQ((*u)->cookie, 200u);
  EXPECT_EQ((*u)->len, 25u);
  EXPECT_THAT(spy_->unmaps, ElementsAre(SpyDmaOps::unmap_of(spy_->maps[1]), SpyDmaOps::unmap_of(spy_->maps[2])));
  u = q->get_used();
  EXPECT_EQ((*u)->cookie, 300u);
  EXPECT_EQ((*u)->len, 40u);
  u = q->get_used();
  EXPECT_EQ((*u)->cookie, 100u);
  EXPECT_EQ((*u)->len, 0u);  // readable-only chain: nothing written
  EXPECT_THAT(q->get_used(), HasValue(::testing::Eq(std::nullopt)));
  EXPECT_EQ(q->num_free(), 8);
  ASSERT_EQ(spy_->unmaps.size(), 4u);
  EXPECT_EQ(spy_->unmaps[2], SpyDmaOps::unmap_of(spy_->maps[3]));
  EXPECT_EQ(spy_->unmaps[3], SpyDmaOps::unmap_of(spy_->maps[0]));
}

TEST_F(SplitDriverQueueTest, RejectsInvalidChainsWithoutMapping) {
  auto q = make({.size = 4});
  EXPECT_THAT(q->add({}, 1), IsErrorWith(VirtioErrc::kInvalidChain, HasSubstr("no segments")));
  const DriverSegment zero[] = {readable(data(0), 8), writable(data(8), 0)};
  EXPECT_THAT(q->add(zero, 1),
              IsErrorWith(VirtioErrc::kInvalidChain, HasSubstr("segment 1 (gpa:0x1000008) has length 0")));
  const DriverSegment order[] = {writable(data(0), 8), readable(data(8), 8)};
  EXPECT_THAT(q->add(order, 1),
              IsErrorWith(VirtioErrc::kInvalidChain, HasSubstr("segment 1 (gpa:0x1000008) is device-readable after")));
  std::vector<DriverSegment> too_long(5, readable(data(0), 8));
  EXPECT_THAT(q->add(too_long, 1),
              IsErrorWith(VirtioErrc::kInvalidChain, HasSubstr("chain of 5 segments is longer than the queue size 4")));
  EXPECT_EQ(spy_->map_calls, 0);
  EXPECT_EQ(q->num_free(), 4);
  EXPECT_EQ(device_view(*q).avail_idx(), 0);
}

TEST_F(SplitDriverQueueTest, NoSpaceWhenDescriptorsRunOut) {
  auto q = make({.size = 4});
  const DriverSegment three[] = {readable(data(0), 8), readable(data(8), 8), writable(data(16), 8)};
  ASSERT_THAT(q->add(three, 1), IsOk());
  const DriverSegment two[] = {readable(data(0), 8), writable(data(16), 8)};
  EXPECT_THAT(q->add(two, 2),
              IsErrorWith(VirtioErrc::kNoSpace, HasSubstr("needs 2 free descriptors, 1 are free")));
  EXPECT_EQ(spy_->map_calls, 3);
  const DriverSegment one[] = {readable(data(0), 8)};
  EXPECT_THAT(q->add(one, 3), IsOk());
  EXPECT_EQ(q->num_free(), 0);
}

TEST_F(SplitDriverQueueTest, MapFailureUnmapsTheSegmentsAlreadyMapped) {
  for (bool indirect : {false, true}) {
    SCOPED_TRACE(indirect ? "indirect" : "direct");
    SetUp();
    auto q = make({.size = 8, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0});
    spy_->fail_map_at = 2;
    const DriverSegment segs[] = {readable(data(0), 8), readable(data(0x10), 8), writable(data(0x20), 8)};
    EXPECT_THAT(q->add(segs, 1), IsErrorWith(DmaErrc::kPoolFull, HasSubstr("spy: map gpa:0x1000020 refused")));
    ASSERT_EQ(spy_->maps.size(), 2u);
    EXPECT_THAT(spy_->unmaps, ElementsAre(SpyDmaOps::unmap_of(spy_->maps[0]), SpyDmaOps::unmap_of(spy_->maps[1])));
    EXPECT_EQ(q->num_free(), 8);
    EXPECT_EQ(device_view(*q).avail_idx(), 0);
    EXPECT_FALSE(q->is_broken());
    // The queue still works afterwards.
    spy_->fail_map_at = -1;
    ASSERT_THAT(q->add(segs, 2), IsOk());
    device_view(*q).push_used(0, 8);
    EXPECT_EQ((*q->get_used())->cookie, 2u);
  }
}

TEST_F(SplitDriverQueueTest, PremappedSegmentsAreNeverMappedOrUnmapped) {
  for (bool indirect : {false, true}) {
    SCOPED_TRACE(indirect ? "indirect" : "direct");
    SetUp();
    auto q = make({.size = 8, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0});
    const DriverSegment segs[] = {
        {.addr = data(0), .len = 64, .type = BufferType::kDeviceReadable, .premapped = true, .dma = DmaAddr{0xabc000}},
        writable(data(0x100), 128),
        {.addr = data(0x200), .len = 32, .type = BufferType::kDeviceWritable, .premapped = true,
         .dma = DmaAddr{0xdef000}},
    };
    ASSERT_THAT(q->add(segs, 9), IsOk());
    ASSERT_EQ(spy_->maps.size(), 1u);
    EXPECT_EQ(spy_->maps[0], (SpyDmaOps::Call{kDataBase + 0x100, kDataBase + 0x100, 128, DmaDirection::kFromDevice}));

    SplitRingBuilder dev = device_view(*q);
    const RawDesc head = dev.desc(0);
    const Gpa table = indirect ? Gpa{head.addr} : dev.desc_gpa();
    EXPECT_EQ(dev.table_entry(table, 0), (RawDesc{0xabc000, 64, split::kDescFNext, 1}));
    EXPECT_EQ(dev.table_entry(table, 1),
              (RawDesc{kDataBase + 0x100, 128, split::kDescFNext | split::kDescFWrite, 2}));
    EXPECT_EQ(dev.table_entry(table, 2), (RawDesc{0xdef000, 32, split::kDescFWrite, 0}));

    dev.push_used(0, 160);
    auto u = q->get_used();
    EXPECT_EQ((*u)->len, 160u);
    EXPECT_THAT(spy_->unmaps, ElementsAre(SpyDmaOps::unmap_of(spy_->maps[0])));
  }
}

TEST_F(SplitDriverQueueTest, IndirectTablesComeFromOnePreallocatedPool) {
  auto q = make({.size = 256, .features = feature_bit(kFeatureIndirectDesc)});
  EXPECT_EQ(q->max_indirect(), 64);
  EXPECT_EQ(spy_->coherent_allocs, 2);  // the rings and the pool
  EXPECT_FALSE(q->uses_indirect(1));
  EXPECT_TRUE(q->uses_indirect(2));
  EXPECT_TRUE(q->uses_indirect(64));
  EXPECT_FALSE(q->uses_indirect(65));

  SplitRingBuilder dev = device_view(*q);
  const DriverSegment segs[] = {readable(data(0), 16), writable(data(0x1000), 4096), writable(data(0x3000), 1)};
  ASSERT_THAT(q->add(segs, 1), IsOk());
  EXPECT_EQ(q->num_free(), 255);
  const RawDesc head = dev.desc(0);
  EXPECT_EQ(head.len, 48u);
  EXPECT_EQ(head.flags, split::kDescFIndirect);
  EXPECT_EQ(head.addr % 16, 0u);
  EXPECT_LT(head.addr + 256 * 64 * 16, kRingWindow + 1);
  EXPECT_EQ(dev.table_entry(Gpa{head.addr}, 0), (RawDesc{kDataBase, 16, split::kDescFNext, 1}));
  EXPECT_EQ(dev.table_entry(Gpa{head.addr}, 1),
            (RawDesc{kDataBase + 0x1000, 4096, split::kDescFNext | split::kDescFWrite, 2}));
  EXPECT_EQ(dev.table_entry(Gpa{head.addr}, 2), (RawDesc{kDataBase + 0x3000, 1, split::kDescFWrite, 0}));

  // The next head's table is the next slot of the pool.
  ASSERT_THAT(q->add(segs, 2), IsOk());
  EXPECT_EQ(dev.desc(1).addr, head.addr + 64 * 16);

  // One segment, or more than max_indirect, go direct.
  const DriverSegment one[] = {readable(data(0), 16)};
  ASSERT_THAT(q->add(one, 3), IsOk());
  EXPECT_EQ(dev.desc(2), (RawDesc{kDataBase, 16, 0, 0}));
  std::vector<DriverSegment> long_chain(65, writable(data(0), 16));
  ASSERT_THAT(q->add(long_chain, 4), IsOk());
  EXPECT_EQ(q->num_free(), 256 - 3 - 65);
  EXPECT_EQ(dev.desc(3).flags, split::kDescFNext | split::kDescFWrite);

  // Hundreds of indirect round trips: still only the two coherent allocations.
  for (int i = 0; i < 4; ++i) {
    dev.push_used(dev.avail_entry(static_cast<uint16_t>(i)), 0);
    ASSERT_THAT(q->get_used(), IsOk());
  }
  for (uint16_t i = 0; i < 500; ++i) {
    ASSERT_THAT(q->add(segs, 10 + i), IsOk());
    dev.push_used(dev.avail_entry(static_cast<uint16_t>(4 + i)), 4097);
    auto u = q->get_used();
    ASSERT_THAT(u, IsOk());
    ASSERT_EQ((*u)->cookie, 10u + i);
    ASSERT_EQ((*u)->len, 4097u);
  }
  EXPECT_EQ(spy_->coherent_allocs, 2);
  EXPECT_EQ(q->num_free(), 256);
  EXPECT_EQ(spy_->maps.size(), spy_->unmaps.size());
}

TEST_F(SplitDriverQueueTest, MaxIndirectIsBoundedByTheQueueSize) {
  auto q = make({.size = 8, .features = feature_bit(kFeatureIndirectDesc), .max_indirect = 100});
  EXPECT_EQ(q->max_indirect(), 8);
  auto tiny = make({.size = 1, .features = feature_bit(kFeatureIndirectDesc)});
  EXPECT_EQ(tiny->max_indirect(), 1);
  EXPECT_FALSE(tiny->uses_indirect(2));
}

TEST_F(SplitDriverQueueTest, KickPrepareFollowsUsedFlagsWithoutEventIdx) {
  auto q = make({.size = 8});
  SplitRingBuilder dev = device_view(*q);
  EXPECT_FALSE(q->kick_prepare());  // nothing added
  const DriverSegment one[] = {readable(data(0), 8)};
  ASSERT_THAT(q->add(one, 1), IsOk());
  EXPECT_TRUE(q->kick_prepare());
  EXPECT_FALSE(q->kick_prepare());  // nothing new since
  dev.set_used_flags(split::kUsedFNoNotify);
  ASSERT_THAT(q->add(one, 2), IsOk());
  EXPECT_FALSE(q->kick_prepare());
  dev.set_used_flags(0);
  ASSERT_THAT(q->add(one, 3), IsOk());
  EXPECT_TRUE(q->kick_prepare());
}

TEST_F(SplitDriverQueueTest, KickPrepareUsesAvailEventWithEventIdx) {
  auto q = make({.size = 8, .features = feature_bit(kFeatureEventIdx)});
  SplitRingBuilder dev = device_view(*q);
  dev.set_used_flags(split::kUsedFNoNotify);  // must be ignored with EVENT_IDX (§2.7.10)
  const DriverSegment one[] = {readable(data(0), 8)};
  ASSERT_THAT(q->add(one, 1), IsOk());  // avail idx 0 -> 1 crosses avail_event 0
  EXPECT_TRUE(q->kick_prepare());
  ASSERT_THAT(q->add(one, 2), IsOk());  // 1 -> 2: event 0 already passed
  EXPECT_FALSE(q->kick_prepare());
  dev.set_avail_event(3);
  ASSERT_THAT(q->add(one, 3), IsOk());  // 2 -> 3: not yet
  EXPECT_FALSE(q->kick_prepare());
  ASSERT_THAT(q->add(one, 4), IsOk());  // 3 -> 5 in one batch passes event 3
  ASSERT_THAT(q->add(one, 5), IsOk());
  EXPECT_TRUE(q->kick_prepare());
  dev.set_avail_event(0xffff);  // wrap-around: 5 -> 6 does not reach 0xffff
  ASSERT_THAT(q->add(one, 6), IsOk());
  EXPECT_FALSE(q->kick_prepare());
}

TEST_F(SplitDriverQueueTest, CallbacksUseAvailFlagsWithoutEventIdx) {
  auto q = make({.size = 8});
  SplitRingBuilder dev = device_view(*q);
  q->disable_callbacks();
  EXPECT_EQ(dev.avail_flags(), split::kAvailFNoInterrupt);
  EXPECT_TRUE(q->enable_callbacks());
  EXPECT_EQ(dev.avail_flags(), 0);

  // The race virtqueue_enable_cb closes: a buffer used before re-enabling.
  q->disable_callbacks();
  const DriverSegment one[] = {writable(data(0), 8)};
  ASSERT_THAT(q->add(one, 1), IsOk());
  dev.push_used(0, 8);
  EXPECT_FALSE(q->enable_callbacks());
  EXPECT_EQ(dev.avail_flags(), 0);
  ASSERT_THAT(q->get_used(), HasValue(::testing::Ne(std::nullopt)));
  EXPECT_TRUE(q->enable_callbacks());
}

TEST_F(SplitDriverQueueTest, CallbacksUseUsedEventWithEventIdx) {
  auto q = make({.size = 8, .features = feature_bit(kFeatureEventIdx)});
  SplitRingBuilder dev = device_view(*q);
  const DriverSegment one[] = {writable(data(0), 8)};

  q->disable_callbacks();
  EXPECT_EQ(dev.avail_flags(), 0);       // flags stay 0 with EVENT_IDX (§2.7.7.1)
  EXPECT_EQ(dev.used_event(), 0xffff);   // just behind the next used entry
  EXPECT_TRUE(q->enable_callbacks());
  EXPECT_EQ(dev.used_event(), 0);

  // While enabled, consuming an entry moves used_event to the next one.
  ASSERT_THAT(q->add(one, 1), IsOk());
  dev.push_used(0, 8);
  ASSERT_THAT(q->get_used(), HasValue(::testing::Ne(std::nullopt)));
  EXPECT_EQ(dev.used_event(), 1);

  // While disabled it stays put.
  q->disable_callbacks();
  EXPECT_EQ(dev.used_event(), 0);
  ASSERT_THAT(q->add(one, 2), IsOk());
  dev.push_used(0, 8);
  ASSERT_THAT(q->get_used(), HasValue(::testing::Ne(std::nullopt)));
  EXPECT_EQ(dev.used_event(), 0);

  ASSERT_THAT(q->add(one, 3), IsOk());
  dev.push_used(0, 8);
  EXPECT_FALSE(q->enable_callbacks());  // pending already
  EXPECT_EQ(dev.used_event(), 2);
}

TEST_F(SplitDriverQueueTest, DetachUnusedGivesBackEveryOutstandingChain) {
  auto q = make({.size = 8, .features = feature_bit(kFeatureIndirectDesc)});
  const DriverSegment a[] = {readable(data(0), 8)};
  const DriverSegment b[] = {readable(data(8), 8), writable(data(16), 8)};
  ASSERT_THAT(q->add(a, 11), IsOk());
  ASSERT_THAT(q->add(b, 22), IsOk());
  ASSERT_THAT(q->add(a, 33), IsOk());
  std::vector<uint64_t> cookies;
  while (auto c = q->detach_unused()) cookies.push_back(*c);
  EXPECT_THAT(cookies, ::testing::UnorderedElementsAre(11u, 22u, 33u));
  EXPECT_EQ(q->num_free(), 8);
  EXPECT_EQ(spy_->unmaps.size(), spy_->maps.size());
  for (const auto& m : spy_->maps) EXPECT_THAT(spy_->unmaps, ::testing::Contains(SpyDmaOps::unmap_of(m)));
}

TEST_F(SplitDriverQueueTest, DestructorUnmapsOutstandingChainsAndFreesRings) {
  {
    auto q = make({.size = 8, .features = feature_bit(kFeatureIndirectDesc)});
    const DriverSegment b[] = {readable(data(8), 8), writable(data(16), 8)};
    ASSERT_THAT(q->add(b, 1), IsOk());
    ASSERT_THAT(q->add(b, 2), IsOk());
  }
  EXPECT_EQ(spy_->unmaps.size(), 4u);
  EXPECT_EQ(spy_->coherent_frees, 2);
}

// ORDER_PLATFORM selects the platform's DMA barriers, one at each ordering
// point: add() a wmb before the idx, kick_prepare() an mb before reading
// avail_event, get_used() an rmb after the idx and (EVENT_IDX) an mb after
// used_event. Without it the queue executes none of them.
TEST_F(SplitDriverQueueTest, OrderPlatformExecutesThePlatformBarriers) {
  for (const bool order_platform : {false, true}) {
    SCOPED_TRACE(order_platform ? "ORDER_PLATFORM" : "no ORDER_PLATFORM");
    auto q = make({.size = 4, .features = feature_bit(kFeatureVersion1) | feature_bit(kFeatureEventIdx) |
                                          (order_platform ? feature_bit(kFeatureOrderPlatform) : 0)});
    EXPECT_EQ(q->barriers(), order_platform ? BarrierKind::kStrong : BarrierKind::kWeak);
    SplitRingBuilder dev = device_view(*q);
    const DriverSegment one[] = {writable(data(0), 8)};
    for (uint64_t i = 0; i < 10; ++i) {
      ASSERT_THAT(q->add(one, i), IsOk());
      EXPECT_EQ(q->platform_barriers(), order_platform ? 4 * i + 1 : 0);
      EXPECT_TRUE(q->kick_prepare());
      EXPECT_EQ(q->platform_barriers(), order_platform ? 4 * i + 2 : 0);
      dev.set_avail_event(dev.avail_idx());
      dev.push_used(dev.avail_entry(static_cast<uint16_t>(i)), 8);
      EXPECT_THAT(q->get_used(), HasValue(::testing::Optional(::testing::Field(&UsedBuffer::cookie, i))));
      EXPECT_EQ(q->platform_barriers(), order_platform ? 4 * i + 4 : 0);
    }
  }
}

// The platform's posted-write flush runs once for every kick_prepare() that
// asks for a notification, and never for one that does not.
TEST_F(SplitDriverQueueTest, NotifyFlushRunsOncePerNotification) {
  PostedWriteFlush flush(NotifyFlushKind::kWriteCombining);
  auto q = make({.size = 8, .features = feature_bit(kFeatureVersion1), .notify_flush = &flush});
  SplitRingBuilder dev = device_view(*q);
  const DriverSegment one[] = {readable(data(0), 8)};
  EXPECT_FALSE(q->kick_prepare());  // nothing added
  EXPECT_EQ(flush.flushes(), 0u);
  ASSERT_THAT(q->add(one, 1), IsOk());
  ASSERT_THAT(q->add(one, 2), IsOk());
  EXPECT_TRUE(q->kick_prepare());
  EXPECT_EQ(flush.flushes(), 1u);  // two chains, one notification, one flush
  EXPECT_FALSE(q->kick_prepare());
  EXPECT_EQ(flush.flushes(), 1u);
  dev.set_used_flags(split::kUsedFNoNotify);  // the device is polling
  ASSERT_THAT(q->add(one, 3), IsOk());
  EXPECT_FALSE(q->kick_prepare());
  EXPECT_EQ(flush.flushes(), 1u);
  dev.set_used_flags(0);
  ASSERT_THAT(q->add(one, 4), IsOk());
  EXPECT_TRUE(q->kick_prepare());
  EXPECT_EQ(flush.flushes(), 2u);
}

// ---- A hostile device: every violation breaks the queue with a message
// saying what the device did, unmaps nothing on the device's word, and
// touches no buffer memory.

class SplitDriverHostileDevice : public SplitDriverQueueTest {
 protected:
  void expect_broken(SplitDriverQueue& q, const std::string& what) {
    const std::vector<std::byte> before = data_bytes();
    const size_t unmaps_before = spy_->unmaps.size();
    EXPECT_THAT(q.get_used(), IsErrorWith(VirtioErrc::kBroken, what));
    EXPECT_TRUE(q.is_broken());
    ASSERT_NE(q.broken_reason(), nullptr);
    EXPECT_EQ(q.broken_reason()->message(), what);
    // Sticky, and the same error everywhere.
    EXPECT_THAT(q.get_used(), IsErrorWith(VirtioErrc::kBroken, what));
    const DriverSegment one[] = {readable(data(0), 8)};
    EXPECT_THAT(q.add(one, 99), IsErrorWith(VirtioErrc::kBroken, what));
    EXPECT_FALSE(q.kick_prepare());
    EXPECT_FALSE(q.enable_callbacks());
    EXPECT_EQ(spy_->unmaps.size(), unmaps_before);
    EXPECT_EQ(data_bytes(), before);
  }
};

TEST_F(SplitDriverHostileDevice, UsedIdOutOfRange) {
  auto q = make({.size = 256});
  const DriverSegment one[] = {writable(data(0), 64)};
  ASSERT_THAT(q->add(one, 5), IsOk());
  device_view(*q).push_used(300, 64);
  expect_broken(*q, "device returned used id 300 but the queue size is 256 (used ring entry 0)");
  // A reset device gives everything back through detach_unused.
  EXPECT_EQ(q->detach_unused(), std::optional<uint64_t>(5));
  EXPECT_EQ(q->detach_unused(), std::nullopt);
  EXPECT_EQ(spy_->unmaps.size(), 1u);
}

TEST_F(SplitDriverHostileDevice, UsedIdThatIsNotAHead) {
  auto q = make({.size = 16});
  const DriverSegment three[] = {readable(data(0), 8), readable(data(8), 8), writable(data(16), 8)};
  ASSERT_THAT(q->add(three, 1), IsOk());  // descriptors 0, 1, 2; head 0
  device_view(*q).push_used(1, 8);
  expect_broken(*q,
                "device returned used id 1, which is not the head of an outstanding chain (never made available, not "
                "a head, or already returned; used ring entry 0)");
}

TEST_F(SplitDriverHostileDevice, SameUsedIdTwice) {
  auto q = make({.size = 16});
  SplitRingBuilder dev = device_view(*q);
  const DriverSegment one[] = {writable(data(0), 8)};
  ASSERT_THAT(q->add(one, 1), IsOk());  // head 0
  ASSERT_THAT(q->add(one, 2), IsOk());  // head 1
  dev.push_used(0, 8);
  dev.push_used(0, 8);
  EXPECT_THAT(q->get_used(), HasValue(::testing::Optional(::testing::Field(&UsedBuffer::cookie, 1u))));
  expect_broken(*q,
                "device returned used id 0, which is not the head of an outstanding chain (never made available, not "
                "a head, or already returned; used ring entry 1)");
}

TEST_F(SplitDriverHostileDevice, UsedIdxBeyondOutstandingChains) {
  auto q = make({.size = 16});
  SplitRingBuilder dev = device_view(*q);
  const DriverSegment one[] = {writable(data(0), 8)};
  ASSERT_THAT(q->add(one, 1), IsOk());
  dev.set_used_entry(0, {0, 8});
  dev.set_used_idx(2);
  expect_broken(*q, "device moved used idx from 0 to 2 (2 entries) but only 1 chains are outstanding");
}

TEST_F(SplitDriverHostileDevice, UsedIdxMovingBackwardsIsCaught) {
  auto q = make({.size = 16});
  SplitRingBuilder dev = device_view(*q);
  const DriverSegment one[] = {writable(data(0), 8)};
  ASSERT_THAT(q->add(one, 1), IsOk());
  dev.set_used_idx(0xffff);  // "65535 entries"
  expect_broken(*q, "device moved used idx from 0 to 65535 (65535 entries) but only 1 chains are outstanding");
}

TEST_F(SplitDriverHostileDevice, UsedLengthBeyondTheBufferIsClamped) {
  auto q = make({.size = 16, .features = feature_bit(kFeatureIndirectDesc)});
  SplitRingBuilder dev = device_view(*q);
  const DriverSegment segs[] = {readable(data(0), 100), writable(data(0x100), 512), writable(data(0x400), 256)};
  ASSERT_THAT(q->add(segs, 1), IsOk());
  dev.push_used(0, 0xffffffff);
  EXPECT_THAT(q->get_used(), HasValue(::testing::Optional(::testing::Field(&UsedBuffer::len, 768u))));
  const DriverSegment only_readable[] = {readable(data(0), 100)};
  ASSERT_THAT(q->add(only_readable, 2), IsOk());
  dev.push_used(0, 100);
  EXPECT_THAT(q->get_used(), HasValue(::testing::Optional(::testing::Field(&UsedBuffer::len, 0u))));
  ASSERT_THAT(q->add(segs, 3), IsOk());
  dev.push_used(0, 700);
  EXPECT_THAT(q->get_used(), HasValue(::testing::Optional(::testing::Field(&UsedBuffer::len, 700u))));
  EXPECT_FALSE(q->is_broken());
}

TEST_F(SplitDriverHostileDevice, RewrittenDescriptorsDoNotChangeWhatIsUnmapped) {
  auto q = make({.size = 16});
  SplitRingBuilder dev = device_view(*q);
  const DriverSegment segs[] = {readable(data(0), 100), writable(data(0x100), 512)};
  ASSERT_THAT(q->add(segs, 1), IsOk());
  // The device scribbles over the descriptor table before completing.
  for (uint16_t i = 0; i < 16; ++i) dev.set_desc(i, {0xdead0000, 0xffff, split::kDescFNext, i});
  dev.push_used(0, 512);
  EXPECT_THAT(q->get_used(), HasValue(::testing::Optional(::testing::Field(&UsedBuffer::len, 512u))));
  EXPECT_THAT(spy_->unmaps, ElementsAre(SpyDmaOps::unmap_of(spy_->maps[0]), SpyDmaOps::unmap_of(spy_->maps[1])));
  EXPECT_EQ(q->num_free(), 16);
}

}  // namespace
}  // namespace vdma
