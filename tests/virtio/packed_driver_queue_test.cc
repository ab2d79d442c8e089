// PackedDriverQueue against PackedRingBuilder playing the device: exact
// descriptor bytes, ids and wrap counters, validation, indirect tables,
// premapped segments, map failures, event suppression, and a hostile device.
// DMA goes through a spy that offsets every mapping, so a descriptor carrying
// a guest-physical address instead of the DMA address fails the tests.
#include "vdma/virtio/packed_driver_queue.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "packed_ring_builder.h"
#include "result_matchers.h"
#include "vdma/virtio/features.h"

namespace vdma {
namespace {

using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr uint16_t kAvail = packed::kDescFAvail;
constexpr uint16_t kUsed = packed::kDescFUsed;
constexpr uint16_t kWrite = packed::kDescFWrite;
constexpr uint16_t kNext = packed::kDescFNext;
constexpr uint16_t kIndirect = packed::kDescFIndirect;
constexpr uint64_t kBusOffset = 0x100000000;  // what the spy adds to every streaming mapping

// Records every map/unmap; maps to gpa + kBusOffset; can refuse one map call.
// Coherent memory passes through (identity), so the builder reads the rings.
class SpyDmaOps final : public DmaOps {
 public:
  struct Call {
    DmaAddr addr;
    uint64_t len;
    DmaDirection dir;
    bool operator==(const Call&) const = default;
  };

  explicit SpyDmaOps(DmaOps& inner) : inner_(inner) {}

  Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs) override {
    if (map_attempts++ == fail_map_at) return make_error(DmaErrc::kPoolFull, "spy refuses {} + len {:#x}", gpa, len);
    const DmaAddr a(gpa.value() + kBusOffset);
    maps.push_back({a, len, dir});
    return a;
  }
  Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs) override {
    unmaps.push_back({addr, len, dir});
    return ok();
  }
  Result<void> sync_for_cpu(DmaAddr, uint64_t, DmaDirection) override { return ok(); }
  Result<void> sync_for_device(DmaAddr, uint64_t, DmaDirection) override { return ok(); }
  Result<CoherentBuffer> alloc_coherent(uint64_t size) override {
    if (coherent_attempts++ == fail_coherent_at) return make_error(DmaErrc::kPoolFull, "spy refuses {:#x} bytes", size);
    auto b = inner_.alloc_coherent(size);
    if (b) coherent_allocs.push_back(b->cpu);
    return b;
  }
  Result<void> free_coherent(const CoherentBuffer& b) override {
    coherent_frees.push_back(b.cpu);
    return inner_.free_coherent(b);
  }
  uint64_t max_mapping_size() const override { return UINT64_MAX; }
  bool need_sync(DmaAddr) const override { return false; }

  std::vector<Call> maps, unmaps;
  int map_attempts = 0;
  int fail_map_at = -1;
  std::vector<Gpa> coherent_allocs, coherent_frees;
  int coherent_attempts = 0;
  int fail_coherent_at = -1;

 private:
  DmaOps& inner_;
};

uint64_t bus(uint64_t data_off) { return PackedTestWorld::data(data_off).value() + kBusOffset; }
DriverSegment rd(uint64_t off, uint32_t len) { return {PackedTestWorld::data(off), len, BufferType::kDeviceReadable}; }
DriverSegment wr(uint64_t off, uint32_t len) { return {PackedTestWorld::data(off), len, BufferType::kDeviceWritable}; }

class PackedDriver : public ::testing::Test {
 protected:
  PackedDriverQueue& make(uint64_t features = 0, uint16_t size = 8, uint16_t max_indirect = 0) {
    auto q = PackedDriverQueue::create(spy, {.size = size, .features = features, .max_indirect = max_indirect});
    EXPECT_THAT(q, IsOk());
    queue = std::move(q).value();
    ring = std::make_unique<PackedRingBuilder>(*w.mem, size, queue->ring_addresses());
    return *queue;
  }
  // Plays an honest device: returns the chain published at the builder's
  // used position with `len`, skipping its slots.
  void device_completes(uint16_t len) {
    ASSERT_TRUE(ring->has_available());
    uint16_t slots = 1;
    for (uint16_t s = ring->next_used(); (ring->read(s).flags & kNext) != 0; s = (s + 1) % ring->size()) ++slots;
    const uint16_t last = static_cast<uint16_t>((ring->next_used() + slots - 1) % ring->size());
    ring->push_used(ring->read(last).id, len, slots);
  }
  uint64_t expect_used(uint32_t len) {
    auto u = queue->get_used();
    EXPECT_THAT(u, IsOk());
    if (!u || !*u) {
      ADD_FAILURE() << "no used buffer";
      return 0;
    }
    EXPECT_EQ((*u)->len, len);
    return (*u)->cookie;
  }

  PackedTestWorld w = PackedTestWorld::make();
  SpyDmaOps spy{*w.dma};
  std::unique_ptr<PackedDriverQueue> queue;
  std::unique_ptr<PackedRingBuilder> ring;
};

TEST_F(PackedDriver, CreateValidatesAndLaysOutRings) {
  EXPECT_THAT(PackedDriverQueue::create(spy, {.size = 0}),
              IsErrorWith(VirtioErrc::kInvalidConfig, "packed queue size 0 is not in 1..32768"));
  EXPECT_THAT(PackedDriverQueue::create(spy, {.size = 32769}), IsError(VirtioErrc::kInvalidConfig));
  PackedDriverQueue& q = make(0, 10);
  const RingAddresses r = q.ring_addresses();
  EXPECT_TRUE(r.desc.is_aligned(16));
  EXPECT_EQ(r.driver, r.desc.unchecked_add(160));
  EXPECT_EQ(r.device, r.driver.unchecked_add(4));
  EXPECT_EQ(q.size(), 10);
  EXPECT_EQ(q.num_free(), 10);
  EXPECT_EQ(q.format(), RingFormat::kPacked);
  EXPECT_FALSE(q.is_broken());
  EXPECT_EQ(q.broken_reason(), nullptr);
}

TEST_F(PackedDriver, FailedPoolAllocationFreesTheRing) {
  spy.fail_coherent_at = 1;  // the ring succeeds, the indirect pool does not
  EXPECT_THAT(PackedDriverQueue::create(spy, {.size = 64, .features = feature_bit(kFeatureIndirectDesc)}),
              IsErrorWith(DmaErrc::kPoolFull, "indirect table pool: spy refuses 0x10000 bytes"));
  ASSERT_EQ(spy.coherent_allocs.size(), 1u);
  EXPECT_EQ(spy.coherent_frees, spy.coherent_allocs);
}

TEST_F(PackedDriver, DestructorFreesRingAndPool) {
  make(feature_bit(kFeatureIndirectDesc));
  EXPECT_EQ(spy.coherent_allocs.size(), 2u);
  queue.reset();
  EXPECT_EQ(spy.coherent_frees, spy.coherent_allocs);
}

TEST_F(PackedDriver, AddWritesEveryDescriptorWithDmaAddressesAndIds) {
  PackedDriverQueue& q = make();
  const DriverSegment segs[] = {rd(0x100, 0x40), rd(0x200, 0x10), wr(0x1000, 0x800)};
  ASSERT_THAT(q.add(segs, 77), IsOk());
  EXPECT_EQ(ring->read(0), (RawDesc{bus(0x100), 0x40, 0, kAvail | kNext}));
  EXPECT_EQ(ring->read(1), (RawDesc{bus(0x200), 0x10, 0, kAvail | kNext}));
  EXPECT_EQ(ring->read(2), (RawDesc{bus(0x1000), 0x800, 0, kAvail | kWrite}));
  EXPECT_EQ(ring->read(3), RawDesc{}) << "nothing past the chain";
  EXPECT_EQ(q.num_free(), 5);
  EXPECT_EQ(spy.maps, (std::vector<SpyDmaOps::Call>{{DmaAddr{bus(0x100)}, 0x40, DmaDirection::kToDevice},
                                                    {DmaAddr{bus(0x200)}, 0x10, DmaDirection::kToDevice},
                                                    {DmaAddr{bus(0x1000)}, 0x800, DmaDirection::kFromDevice}}));
  // A direct chain of n segments takes n ids: the next chain is id 3.
  const DriverSegment one[] = {wr(0x2000, 8)};
  ASSERT_THAT(q.add(one, 78), IsOk());
  EXPECT_EQ(ring->read(3), (RawDesc{bus(0x2000), 8, 3, kAvail | kWrite}));
  EXPECT_EQ(q.num_free(), 4);
}

TEST_F(PackedDriver, RejectsMalformedChainsWithoutTouchingAnything) {
  PackedDriverQueue& q = make();
  EXPECT_THAT(q.add({}, 1), IsErrorWith(VirtioErrc::kInvalidChain, "empty chain"));
  const DriverSegment zero[] = {rd(0, 8), rd(0x100, 0)};
  EXPECT_THAT(q.add(zero, 1), IsErrorWith(VirtioErrc::kInvalidChain, "segment 1 (gpa:0x1000100) has length 0"));
  const DriverSegment order[] = {wr(0, 8), rd(0x100, 8)};
  EXPECT_THAT(q.add(order, 1),
              IsErrorWith(VirtioErrc::kInvalidChain,
                          "segment 1 (gpa:0x1000100) is device-readable after a device-writable one"));
  std::vector<DriverSegment> nine(9, rd(0, 8));
  EXPECT_THAT(q.add(nine, 1), IsErrorWith(VirtioErrc::kInvalidChain, "chain of 9 segments exceeds the queue size 8"));
  EXPECT_TRUE(spy.maps.empty());
  EXPECT_EQ(ring->read(0), RawDesc{});
  EXPECT_EQ(q.num_free(), 8);
  EXPECT_FALSE(q.kick_prepare()) << "nothing was added";
}

TEST_F(PackedDriver, NoSpaceUntilUsedBuffersComeBack) {
  PackedDriverQueue& q = make(0, 4);
  const DriverSegment three[] = {rd(0, 8), rd(8, 8), wr(16, 8)};
  const DriverSegment two[] = {rd(0, 8), wr(16, 8)};
  const DriverSegment one[] = {wr(16, 8)};
  ASSERT_THAT(q.add(three, 1), IsOk());
  EXPECT_THAT(q.add(two, 2), IsErrorWith(VirtioErrc::kNoSpace, "chain needs 2 descriptors, 1 free"));
  EXPECT_EQ(spy.maps.size(), 3u) << "no mapping for a chain without room";
  ASSERT_THAT(q.add(one, 3), IsOk());
  EXPECT_EQ(q.num_free(), 0);
  EXPECT_THAT(q.add(one, 4), IsError(VirtioErrc::kNoSpace));
  device_completes(8);
  EXPECT_EQ(expect_used(8), 1u);
  EXPECT_EQ(q.num_free(), 3);
  ASSERT_THAT(q.add(two, 2), IsOk());
  // Slot 0 is reused in the second lap: wrap counter 0 -> USED bit set, AVAIL clear.
  EXPECT_EQ(ring->read(0).flags, kUsed | kNext);
  EXPECT_EQ(ring->read(1).flags, kUsed | kWrite);
}

TEST_F(PackedDriver, GetUsedReturnsCookieClampsLengthAndUnmapsFromShadow) {
  PackedDriverQueue& q = make();
  EXPECT_THAT(q.get_used(), HasValue(::testing::Eq(std::nullopt)));
  const DriverSegment segs[] = {rd(0, 16), wr(0x100, 0x100), wr(0x400, 0x200)};
  ASSERT_THAT(q.add(segs, 0xc0ffee), IsOk());
  // The device scribbles over the addresses it was given: unmapping must use
  // the shadow copy, not these.
  for (uint16_t s = 0; s < 3; ++s) {
    RawDesc d = ring->read(s);
    d.addr = 0xdead0000;
    ring->write(s, d);
  }
  ring->push_used(0, 0x250, 3);
  EXPECT_EQ(expect_used(0x250), 0xc0ffeeu);
  EXPECT_EQ(spy.unmaps, (std::vector<SpyDmaOps::Call>{{DmaAddr{bus(0)}, 16, DmaDirection::kToDevice},
                                                      {DmaAddr{bus(0x100)}, 0x100, DmaDirection::kFromDevice},
                                                      {DmaAddr{bus(0x400)}, 0x200, DmaDirection::kFromDevice}}));
  EXPECT_EQ(q.num_free(), 8);
  EXPECT_THAT(q.get_used(), HasValue(::testing::Eq(std::nullopt)));

  ASSERT_THAT(q.add(segs, 2), IsOk());
  ring->push_used(ring->read(5).id, 0xffffffff, 3);
  EXPECT_EQ(expect_used(0x300), 2u) << "clamped to the 0x300 writable bytes";
  ASSERT_THAT(q.add(std::span(segs, 1), 3), IsOk());
  ring->push_used(ring->read(6).id, 0x10, 1);
  EXPECT_EQ(expect_used(0), 3u) << "a chain without writable segments reports 0";
}

TEST_F(PackedDriver, DeviceReturningAnIdOutOfRangeBreaksTheQueue) {
  PackedDriverQueue& q = make();
  const DriverSegment segs[] = {rd(0, 8), wr(8, 8)};
  ASSERT_THAT(q.add(segs, 5), IsOk());
  ring->push_used(8, 8, 2);
  const std::string msg = "device returned used id 8 at descriptor 0, beyond the queue size 8";
  EXPECT_THAT(q.get_used(), IsErrorWith(VirtioErrc::kBroken, msg));
  EXPECT_TRUE(q.is_broken());
  ASSERT_NE(q.broken_reason(), nullptr);
  EXPECT_EQ(q.broken_reason()->message(), msg);
  // Sticky, for every call.
  EXPECT_THAT(q.get_used(), IsErrorWith(VirtioErrc::kBroken, msg));
  EXPECT_THAT(q.add(segs, 6), IsErrorWith(VirtioErrc::kBroken, msg));
  EXPECT_FALSE(q.enable_callbacks());
  EXPECT_TRUE(spy.unmaps.empty());
  // After the reset the chain is taken back and unmapped.
  EXPECT_EQ(q.detach_unused(), std::optional<uint64_t>(5));
  EXPECT_EQ(spy.unmaps.size(), 2u);
  EXPECT_EQ(q.detach_unused(), std::nullopt);
}

TEST_F(PackedDriver, DeviceReturningANonHeadIdBreaksTheQueue) {
  PackedDriverQueue& q = make();
  const DriverSegment segs[] = {rd(0, 8), wr(8, 8)};  // ids 0 (head) and 1
  ASSERT_THAT(q.add(segs, 5), IsOk());
  ring->push_used(1, 8, 2);
  EXPECT_THAT(q.get_used(), IsErrorWith(VirtioErrc::kBroken,
                                        "device returned used id 1 at descriptor 0, which is not the head of an "
                                        "outstanding buffer"));
  EXPECT_TRUE(spy.unmaps.empty());
}

TEST_F(PackedDriver, DeviceReturningAnIdNeverAddedBreaksTheQueue) {
  PackedDriverQueue& q = make();
  ring->push_used(3, 8, 1);  // nothing outstanding at all
  EXPECT_THAT(q.get_used(), IsErrorWith(VirtioErrc::kBroken, HasSubstr("used id 3 at descriptor 0, which is not the "
                                                                       "head of an outstanding buffer")));
}

TEST_F(PackedDriver, DeviceReturningTheSameIdTwiceBreaksTheQueue) {
  PackedDriverQueue& q = make();
  const DriverSegment one[] = {wr(0, 8)};
  ASSERT_THAT(q.add(one, 10), IsOk());  // id 0, slot 0
  ASSERT_THAT(q.add(one, 11), IsOk());  // id 1, slot 1
  ring->push_used(0, 8, 1);
  EXPECT_EQ(expect_used(8), 10u);
  ring->push_used(0, 8, 1);
  EXPECT_THAT(q.get_used(), IsErrorWith(VirtioErrc::kBroken, "device returned used id 0 at descriptor 1 twice"));
  EXPECT_EQ(spy.unmaps.size(), 1u) << "only the first return unmapped";
  EXPECT_EQ(q.detach_unused(), std::optional<uint64_t>(11));
}

TEST_F(PackedDriver, IndirectChainUsesOneSlotAndAPreallocatedTable) {
  PackedDriverQueue& q = make(feature_bit(kFeatureIndirectDesc));
  const DriverSegment segs[] = {rd(0, 0x20), rd(0x100, 0x30), wr(0x200, 0x400)};
  ASSERT_THAT(q.add(segs, 1), IsOk());
  EXPECT_EQ(q.num_free(), 7);
  const RawDesc head = ring->read(0);
  EXPECT_EQ(head.len, 48u);
  EXPECT_EQ(head.id, 0);
  EXPECT_EQ(head.flags, kAvail | kIndirect);
  EXPECT_EQ(head.addr % 16, 0u);
  std::byte table[48];
  ASSERT_THAT(w.mem->read(Gpa{head.addr}, table), IsOk());
  EXPECT_EQ(PackedRingBuilder::decode(std::span<const std::byte, 16>(table, 16)), (RawDesc{bus(0), 0x20, 0, 0}));
  EXPECT_EQ(PackedRingBuilder::decode(std::span<const std::byte, 16>(table + 16, 16)),
            (RawDesc{bus(0x100), 0x30, 0, 0}));
  EXPECT_EQ(PackedRingBuilder::decode(std::span<const std::byte, 16>(table + 32, 16)),
            (RawDesc{bus(0x200), 0x400, 0, kWrite}));

  // One segment: direct, even with INDIRECT_DESC.
  ASSERT_THAT(q.add(std::span(segs, 1), 2), IsOk());
  EXPECT_EQ(ring->read(1), (RawDesc{bus(0), 0x20, 1, kAvail}));

  // Each id has its own table: the next indirect chain (id 2) does not reuse id 0's.
  ASSERT_THAT(q.add(segs, 3), IsOk());
  EXPECT_EQ(ring->read(2).addr, head.addr + 2 * 8 * 16);

  ring->push_used(0, 0x10, 1);
  EXPECT_EQ(expect_used(0x10), 1u);
  EXPECT_EQ(spy.unmaps.size(), 3u);
}

TEST_F(PackedDriver, ChainsLongerThanMaxIndirectGoDirect) {
  PackedDriverQueue& q = make(feature_bit(kFeatureIndirectDesc), 8, 2);
  const DriverSegment segs[] = {rd(0, 8), rd(8, 8), wr(16, 8)};
  ASSERT_THAT(q.add(segs, 1), IsOk());
  EXPECT_EQ(q.num_free(), 5);
  EXPECT_EQ(ring->read(0).flags, kAvail | kNext);
  ASSERT_THAT(q.add(std::span(segs, 2), 2), IsOk());
  EXPECT_EQ(ring->read(3).flags, kAvail | kIndirect);
  EXPECT_EQ(ring->read(3).len, 32u);
}

TEST_F(PackedDriver, PremappedSegmentsAreNeitherMappedNorUnmapped) {
  PackedDriverQueue& q = make(feature_bit(kFeatureIndirectDesc));
  DriverSegment pre = rd(0, 0x100);
  pre.premapped = true;
  pre.dma = DmaAddr{0xabc000};
  const DriverSegment direct[] = {pre};
  const DriverSegment mixed[] = {pre, wr(0x800, 0x40)};
  ASSERT_THAT(q.add(direct, 1), IsOk());
  EXPECT_EQ(ring->read(0), (RawDesc{0xabc000, 0x100, 0, kAvail}));
  ASSERT_THAT(q.add(mixed, 2), IsOk());  // indirect
  std::byte entry[16];
  ASSERT_THAT(w.mem->read(Gpa{ring->read(1).addr}, entry), IsOk());
  EXPECT_EQ(PackedRingBuilder::decode(entry), (RawDesc{0xabc000, 0x100, 0, 0}));
  EXPECT_EQ(spy.maps, (std::vector<SpyDmaOps::Call>{{DmaAddr{bus(0x800)}, 0x40, DmaDirection::kFromDevice}}));
  ring->push_used(0, 0, 1);
  ring->push_used(1, 0x40, 1);
  EXPECT_EQ(expect_used(0), 1u);
  EXPECT_EQ(expect_used(0x40), 2u);
  EXPECT_EQ(spy.unmaps, (std::vector<SpyDmaOps::Call>{{DmaAddr{bus(0x800)}, 0x40, DmaDirection::kFromDevice}}));
}

TEST_F(PackedDriver, MapFailureUnmapsWhatWasMappedAndPublishesNothing) {
  PackedDriverQueue& q = make();
  DriverSegment pre = rd(0x100, 0x10);
  pre.premapped = true;
  pre.dma = DmaAddr{0x5000};
  const DriverSegment segs[] = {rd(0, 8), pre, rd(0x200, 8), wr(0x300, 8), wr(0x400, 8)};
  spy.fail_map_at = 2;  // the third map call: segment 3
  EXPECT_THAT(q.add(segs, 1),
              IsErrorWith(DmaErrc::kPoolFull,
                          "segment 3 (gpa:0x1000300 + len 0x8): spy refuses gpa:0x1000300 + len 0x8"));
  EXPECT_EQ(spy.unmaps, (std::vector<SpyDmaOps::Call>{{DmaAddr{bus(0)}, 8, DmaDirection::kToDevice},
                                                      {DmaAddr{bus(0x200)}, 8, DmaDirection::kToDevice}}));
  EXPECT_EQ(q.num_free(), 8);
  EXPECT_EQ(ring->read(0), RawDesc{});
  EXPECT_FALSE(q.kick_prepare());
  spy.fail_map_at = -1;
  ASSERT_THAT(q.add(segs, 2), IsOk());
  EXPECT_EQ(ring->read(4).id, 0) << "the same ids were used again";
  EXPECT_EQ(ring->read(1), (RawDesc{0x5000, 0x10, 0, kAvail | kNext}));
}

TEST_F(PackedDriver, KickPrepareFollowsDeviceEventSuppression) {
  PackedDriverQueue& q = make(feature_bit(kFeatureEventIdx));
  const DriverSegment one[] = {wr(0, 8)};
  // Adds one single-slot chain and lets the device complete it at once, so
  // the ring never fills.
  auto add = [&] {
    ASSERT_THAT(q.add(one, 1), IsOk());
    device_completes(0);
    EXPECT_EQ(expect_used(0), 1u);
  };
  EXPECT_FALSE(q.kick_prepare()) << "nothing added";
  add();  // slot 0
  EXPECT_TRUE(q.kick_prepare()) << "ENABLE";
  ring->set_device_event({0, packed::kEventFlagsDisable});
  add();  // 1
  EXPECT_FALSE(q.kick_prepare()) << "DISABLE";
  ring->set_device_event({2 | 0x8000, packed::kEventFlagsDesc});
  add();  // 2
  EXPECT_TRUE(q.kick_prepare());
  ring->set_device_event({4 | 0x8000, packed::kEventFlagsDesc});
  add();  // 3
  EXPECT_FALSE(q.kick_prepare());
  add();  // 4
  add();  // 5
  EXPECT_TRUE(q.kick_prepare()) << "4 in [4, 6)";
  ring->set_device_event({7 | 0x8000, packed::kEventFlagsDesc});
  add();  // 6
  add();  // 7, then position 0 with wrap 0
  EXPECT_TRUE(q.kick_prepare()) << "event 7 of the previous lap was passed";
  ring->set_device_event({1, packed::kEventFlagsDesc});
  add();  // 0 (wrap 0)
  EXPECT_FALSE(q.kick_prepare());
  add();  // 1
  EXPECT_TRUE(q.kick_prepare());
  ring->set_device_event({2 | 0x8000, packed::kEventFlagsDesc});  // lap long gone
  add();  // 2
  EXPECT_FALSE(q.kick_prepare());
  // A whole ring's worth since the last kick: the offset is ambiguous, kick.
  for (int i = 0; i < 8; ++i) add();
  EXPECT_TRUE(q.kick_prepare());
  ring->set_device_event({0, 3});  // reserved flags value
  add();
  EXPECT_TRUE(q.kick_prepare());
}

TEST_F(PackedDriver, DescModeWithoutEventIdxMeansKick) {
  PackedDriverQueue& q = make();
  ring->set_device_event({5 | 0x8000, packed::kEventFlagsDesc});
  const DriverSegment one[] = {wr(0, 8)};
  ASSERT_THAT(q.add(one, 1), IsOk());
  EXPECT_TRUE(q.kick_prepare());
}

TEST_F(PackedDriver, CallbacksWriteTheDriverEventArea) {
  PackedDriverQueue& q = make();
  q.disable_callbacks();
  EXPECT_EQ(ring->driver_event(), (EventArea{0, packed::kEventFlagsDisable}));
  EXPECT_TRUE(q.enable_callbacks());
  EXPECT_EQ(ring->driver_event(), (EventArea{0, packed::kEventFlagsEnable}));
  const DriverSegment one[] = {wr(0, 8)};
  ASSERT_THAT(q.add(one, 1), IsOk());
  q.disable_callbacks();
  device_completes(8);
  EXPECT_FALSE(q.enable_callbacks()) << "a used buffer is pending";
  EXPECT_EQ(expect_used(8), 1u);
  EXPECT_TRUE(q.enable_callbacks());
}

TEST_F(PackedDriver, EventIdxCallbacksNameTheNextUsedPosition) {
  PackedDriverQueue& q = make(feature_bit(kFeatureEventIdx), 4);
  EXPECT_TRUE(q.enable_callbacks());
  EXPECT_EQ(ring->driver_event(), (EventArea{0 | 0x8000, packed::kEventFlagsDesc}));
  const DriverSegment two[] = {rd(0, 8), wr(8, 8)};
  const DriverSegment one[] = {wr(8, 8)};
  ASSERT_THAT(q.add(two, 1), IsOk());
  ASSERT_THAT(q.add(one, 2), IsOk());
  device_completes(8);
  device_completes(8);
  EXPECT_EQ(expect_used(8), 1u);
  EXPECT_EQ(ring->driver_event(), (EventArea{2 | 0x8000, packed::kEventFlagsDesc})) << "moved past the chain";
  EXPECT_EQ(expect_used(8), 2u);
  EXPECT_EQ(ring->driver_event(), (EventArea{3 | 0x8000, packed::kEventFlagsDesc}));
  ASSERT_THAT(q.add(two, 3), IsOk());  // slots 3, 0
  device_completes(8);
  EXPECT_EQ(expect_used(8), 3u);
  EXPECT_EQ(ring->driver_event(), (EventArea{1, packed::kEventFlagsDesc})) << "wrap counter 0 after the lap";
  q.disable_callbacks();
  EXPECT_EQ(ring->driver_event().flags, packed::kEventFlagsDisable);
}

TEST_F(PackedDriver, WrapsAroundManyRoundsWithOutOfOrderCompletion) {
  PackedDriverQueue& q = make(0, 5);
  uint64_t cookie = 0;
  for (int round = 0; round < 500; ++round) {
    // Two chains of 1-2 segments, completed in reverse order.
    const uint16_t na = static_cast<uint16_t>(1 + round % 2);
    const uint16_t nb = static_cast<uint16_t>(1 + (round / 2) % 2);
    std::vector<DriverSegment> a(na, wr(0x10, 8)), b(nb, wr(0x20, 8));
    const uint16_t pos_a = ring->next_avail();
    const bool wrap_a = ring->avail_wrap();
    ASSERT_THAT(q.add(a, ++cookie), IsOk());
    ASSERT_THAT(q.add(b, ++cookie), IsOk());
    // The head's AVAIL/USED bits follow the driver's wrap counter.
    EXPECT_EQ(ring->read(pos_a).flags & (kAvail | kUsed), wrap_a ? kAvail : kUsed) << "round " << round;
    const uint16_t pos_b = static_cast<uint16_t>((pos_a + na) % 5);
    const uint16_t id_a = ring->read(static_cast<uint16_t>((pos_a + na - 1) % 5)).id;
    const uint16_t id_b = ring->read(static_cast<uint16_t>((pos_b + nb - 1) % 5)).id;
    ring->push_used(id_b, 4, nb);
    ring->push_used(id_a, 8, na);
    EXPECT_EQ(expect_used(4), cookie);
    EXPECT_EQ(expect_used(8), cookie - 1);
    ASSERT_THAT(q.get_used(), HasValue(::testing::Eq(std::nullopt)));
    // Keep the builder's avail position (read as pos_a) in step with the driver's.
    ring->set_avail_position(ring->next_used(), ring->used_wrap());
  }
  EXPECT_EQ(q.num_free(), 5);
  EXPECT_EQ(spy.maps.size(), spy.unmaps.size());
}

TEST_F(PackedDriver, DetachUnusedTakesBackEveryOutstandingChain) {
  PackedDriverQueue& q = make(feature_bit(kFeatureIndirectDesc));
  const DriverSegment two[] = {rd(0, 8), wr(8, 8)};
  const DriverSegment one[] = {wr(8, 8)};
  ASSERT_THAT(q.add(two, 100), IsOk());
  ASSERT_THAT(q.add(one, 101), IsOk());
  ASSERT_THAT(q.add(two, 102), IsOk());
  std::set<uint64_t> got;
  while (auto c = q.detach_unused()) got.insert(*c);
  EXPECT_EQ(got, (std::set<uint64_t>{100, 101, 102}));
  EXPECT_EQ(q.num_free(), 8);
  EXPECT_EQ(spy.unmaps.size(), 5u);
  EXPECT_EQ(q.detach_unused(), std::nullopt);
}

// ORDER_PLATFORM selects the platform's DMA barriers, one at each ordering
// point: the wmb before the head's flags, the mb in kick_prepare() and the
// rmb after a used descriptor's flags. Without it the queue executes none.
TEST_F(PackedDriver, OrderPlatformExecutesThePlatformBarriers) {
  for (const bool order_platform : {false, true}) {
    SCOPED_TRACE(order_platform ? "ORDER_PLATFORM" : "no ORDER_PLATFORM");
    PackedDriverQueue& q =
        make(feature_bit(kFeatureVersion1) | (order_platform ? feature_bit(kFeatureOrderPlatform) : 0));
    EXPECT_EQ(q.barriers(), order_platform ? BarrierKind::kStrong : BarrierKind::kWeak);
    const DriverSegment segs[] = {rd(0, 8), wr(8, 8)};
    ASSERT_THAT(q.add(segs, 9), IsOk());
    EXPECT_EQ(ring->read(0), (RawDesc{bus(0), 8, 0, kAvail | kNext}));
    EXPECT_EQ(q.platform_barriers(), order_platform ? 1u : 0u);
    EXPECT_TRUE(q.kick_prepare());
    EXPECT_EQ(q.platform_barriers(), order_platform ? 2u : 0u);
    ring->push_used(0, 8, 2);
    EXPECT_EQ(expect_used(8), 9u);
    EXPECT_EQ(q.platform_barriers(), order_platform ? 3u : 0u);
  }
}

// The platform's posted-write flush runs once for every kick_prepare() that
// asks for a notification, and never for one that does not.
TEST_F(PackedDriver, NotifyFlushRunsOncePerNotification) {
  PostedWriteFlush flush(NotifyFlushKind::kWriteCombining);
  auto made = PackedDriverQueue::create(spy, {.size = 8, .features = feature_bit(kFeatureVersion1),
                                              .notify_flush = &flush});
  ASSERT_THAT(made, IsOk());
  PackedDriverQueue& q = **made;
  PackedRingBuilder dev(*w.mem, 8, q.ring_addresses());
  const DriverSegment one[] = {rd(0, 8)};
  EXPECT_FALSE(q.kick_prepare());  // nothing added
  EXPECT_EQ(flush.flushes(), 0u);
  ASSERT_THAT(q.add(one, 1), IsOk());
  ASSERT_THAT(q.add(one, 2), IsOk());
  EXPECT_TRUE(q.kick_prepare());
  EXPECT_EQ(flush.flushes(), 1u);  // two chains, one notification, one flush
  EXPECT_FALSE(q.kick_prepare());
  EXPECT_EQ(flush.flushes(), 1u);
  dev.set_device_event({.off_wrap = 0, .flags = packed::kEventFlagsDisable});  // the device is polling
  ASSERT_THAT(q.add(one, 3), IsOk());
  EXPECT_FALSE(q.kick_prepare());
  EXPECT_EQ(flush.flushes(), 1u);
  dev.set_device_event({.off_wrap = 0, .flags = packed::kEventFlagsEnable});
  ASSERT_THAT(q.add(one, 4), IsOk());
  EXPECT_TRUE(q.kick_prepare());
  EXPECT_EQ(flush.flushes(), 2u);
}

}  // namespace
}  // namespace vdma
