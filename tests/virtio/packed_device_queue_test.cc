// PackedDeviceQueue against a ring written byte by byte by PackedRingBuilder
// (playing the driver): chain walking, exact used-descriptor bytes, wrap
// counters, out-of-order completion, indirect tables, event suppression,
// position restore, rewalk and the ring-translation cache.
// Hostile rings are in packed_device_hostile_test.cc.
#include "vdma/virtio/packed_device_queue.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
constexpr uint16_t kUsedFlagsWrap1 = kAvail | kUsed;

class PackedDevice : public ::testing::Test {
 protected:
  static constexpr uint16_t kSize = 8;

  std::unique_ptr<PackedDeviceQueue> make(uint64_t features = 0,
                                          uint16_t position = PackedDeviceQueue::kFreshPosition,
                                          uint16_t size = kSize) {
    auto q = PackedDeviceQueue::create(w.table, {.size = size, .features = features}, ring.addresses(), position);
    EXPECT_THAT(q, IsOk());
    return q ? std::move(q).value() : nullptr;
  }
  std::byte* host(Gpa g) { return w.mem->span(g, 1)->data(); }

  PackedTestWorld w = PackedTestWorld::make();
  PackedRingBuilder ring{*w.mem, kSize, Gpa{0x1000}, Gpa{0x2000}, Gpa{0x2004}};
  DescriptorChain chain;
};

TEST_F(PackedDevice, CreateValidatesSizeAlignmentPositionAndMapping) {
  const RingAddresses good = ring.addresses();
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 0}, good),
              IsErrorWith(VirtioErrc::kInvalidConfig, HasSubstr("size 0 is not in 1..32768")));
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 32769}, good),
              IsErrorWith(VirtioErrc::kInvalidConfig, HasSubstr("size 32769")));
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 8}, {DmaAddr{0x1008}, good.driver, good.device}),
              IsErrorWith(VirtioErrc::kInvalidConfig, HasSubstr("dma:0x1008 is not 16-byte aligned")));
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 8}, {good.desc, DmaAddr{0x2002}, good.device}),
              IsErrorWith(VirtioErrc::kInvalidConfig, HasSubstr("driver event suppression area dma:0x2002")));
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 8}, {good.desc, good.driver, DmaAddr{0x2006}}),
              IsErrorWith(VirtioErrc::kInvalidConfig, HasSubstr("device event suppression area dma:0x2006")));
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 8}, good, 8),
              IsErrorWith(VirtioErrc::kInvalidConfig, HasSubstr("names descriptor 8, beyond queue size 8")));
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 8}, {DmaAddr{PackedTestWorld::kHole.value()}, good.driver,
                                                              good.device}),
              IsErrorWith(MemErrc::kNotMapped, HasSubstr("packed descriptor ring")));
  // The ring's last descriptor would hang over the end of the rings region.
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 16}, {DmaAddr{PackedTestWorld::kRingsSize - 128},
                                                               good.driver, good.device}),
              IsError(MemErrc::kNotMapped));
  EXPECT_THAT(PackedDeviceQueue::create(w.table, {.size = 8}, good, 7), IsOk());
}

TEST_F(PackedDevice, CreateSetsDeviceEventAreaToEnable) {
  ring.set_device_event({0x1234, packed::kEventFlagsDisable});
  auto q = make();
  EXPECT_EQ(ring.device_event(), (EventArea{0x1234, packed::kEventFlagsEnable}));
}

TEST_F(PackedDevice, PopsDirectChainIntoExactFragments) {
  auto q = make();
  ASSERT_THAT(q->pop(chain), HasValue(false));
  ring.add_chain({{PackedTestWorld::data(0x100).value(), 0x40, 0},
                  {PackedTestWorld::data(0x200).value(), 0x10, 0},
                  {PackedTestWorld::data(0x1000).value(), 0x800, kWrite}},
                 5);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_FALSE(chain.error.has_value());
  EXPECT_EQ(chain.id, 5);
  EXPECT_EQ(chain.ring_slots, 3);
  EXPECT_EQ(chain.position, 0);
  EXPECT_TRUE(chain.wrap);
  ASSERT_EQ(chain.readable.size(), 2u);
  EXPECT_EQ(chain.readable[0].host, host(PackedTestWorld::data(0x100)));
  EXPECT_EQ(chain.readable[0].len, 0x40u);
  EXPECT_EQ(chain.readable[1].host, host(PackedTestWorld::data(0x200)));
  EXPECT_EQ(chain.readable[1].len, 0x10u);
  ASSERT_EQ(chain.writable.size(), 1u);
  EXPECT_EQ(chain.writable[0].host, host(PackedTestWorld::data(0x1000)));
  EXPECT_EQ(chain.writable[0].len, 0x800u);
  EXPECT_EQ(chain.readable_len, 0x50u);
  EXPECT_EQ(chain.writable_len, 0x800u);
  EXPECT_EQ(q->avail_position(), 3 | 0x8000);
  EXPECT_THAT(q->pop(chain), HasValue(false));
}

TEST_F(PackedDevice, PushUsedWritesIdLenAndFlagsAtTheUsedPosition) {
  auto q = make();
  ring.add_chain({{PackedTestWorld::data(0).value(), 0x10, 0}, {PackedTestWorld::data(0x100).value(), 0x200, kWrite}},
                 6);
  ring.add_chain({{PackedTestWorld::data(0x400).value(), 0x80, kWrite}}, 2);
  DescriptorChain second;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_THAT(q->pop(second), HasValue(true));
  EXPECT_EQ(second.position, 2);

  // Device wrote more than the buffer holds: clamped to writable_len.
  ASSERT_THAT(q->push_used(chain, 0x1000), IsOk());
  EXPECT_EQ(ring.read(0), (RawDesc{PackedTestWorld::data(0).value(), 0x200, 6, kUsedFlagsWrap1}));
  // The descriptor the chain's second slot holds is not touched.
  EXPECT_EQ(ring.read(1), (RawDesc{PackedTestWorld::data(0x100).value(), 0x200, 6, kAvail | kWrite}));
  ASSERT_THAT(q->push_used(second, 0x33), IsOk());
  EXPECT_EQ(ring.read(2), (RawDesc{PackedTestWorld::data(0x400).value(), 0x33, 2, kUsedFlagsWrap1}));
}

TEST_F(PackedDevice, CompletesOutOfOrderAdvancingBySlotsOfTheReturnedChain) {
  auto q = make();
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 0);                  // slot 0
  ring.add_chain({{PackedTestWorld::data(0x10).value(), 8, 0},
                  {PackedTestWorld::data(0x20).value(), 8, kWrite}}, 1);               // slots 1-2
  ring.add_chain({{PackedTestWorld::data(0x30).value(), 8, kWrite}}, 2);               // slot 3
  DescriptorChain c[3];
  for (auto& x : c) ASSERT_THAT(q->pop(x), HasValue(true));
  ASSERT_THAT(q->push_used(c[2], 1), IsOk());  // written at slot 0
  ASSERT_THAT(q->push_used(c[0], 2), IsOk());  // slot 1
  ASSERT_THAT(q->push_used(c[1], 3), IsOk());  // slot 2, then the position skips to 4
  EXPECT_EQ(ring.read(0).id, 2);
  EXPECT_EQ(ring.read(0).len, 1u);
  EXPECT_EQ(ring.read(1).id, 0);
  EXPECT_EQ(ring.read(1).len, 2u);
  EXPECT_EQ(ring.read(2).id, 1);
  EXPECT_EQ(ring.read(2).len, 3u);
  EXPECT_EQ(ring.read(2).flags, kUsedFlagsWrap1);
  // Slot 3 still shows what the driver published: the device did not write it.
  EXPECT_EQ(ring.read(3).flags, kAvail | kWrite);
  // The next chain is used at slot 4.
  ring.add_chain({{PackedTestWorld::data(0x40).value(), 8, kWrite}}, 3);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_EQ(chain.position, 4);
  ASSERT_THAT(q->push_used(chain, 4), IsOk());
  EXPECT_EQ(ring.read(4), (RawDesc{PackedTestWorld::data(0x40).value(), 4, 3, kUsedFlagsWrap1}));
}

// Many laps over a ring whose size is not a power of two, chains of 1-3
// descriptors crossing the end, checking wrap counters in both directions.
TEST_F(PackedDevice, WrapsAroundForManyRounds) {
  constexpr uint16_t kOdd = 5;
  PackedRingBuilder r5(*w.mem, kOdd, Gpa{0x3000}, Gpa{0x4000}, Gpa{0x4004});
  auto qr = PackedDeviceQueue::create(w.table, {.size = kOdd}, r5.addresses());
  ASSERT_THAT(qr, IsOk());
  auto q = std::move(qr).value();
  bool saw_wrap0_used = false;
  for (int round = 0; round < 1000; ++round) {
    const uint16_t n = static_cast<uint16_t>(1 + round % 3);
    std::vector<BufferDesc> descs;
    for (uint16_t k = 0; k < n; ++k) {
      descs.push_back({PackedTestWorld::data(0x100u * k).value(), 0x10, k + 1 == n ? kWrite : uint16_t{0}});
    }
    const uint16_t id = static_cast<uint16_t>(round % kOdd);
    const bool wrap_before = r5.avail_wrap();
    const uint16_t head = r5.add_chain(descs, id);
    ASSERT_THAT(q->pop(chain), HasValue(true)) << "round " << round;
    ASSERT_FALSE(chain.error) << chain.error->to_string();
    EXPECT_EQ(chain.position, head);
    EXPECT_EQ(chain.wrap, wrap_before);
    EXPECT_EQ(chain.ring_slots, n);
    EXPECT_EQ(chain.id, id);
    EXPECT_EQ(chain.readable.size(), n - 1u);
    DescriptorChain none;
    ASSERT_THAT(q->pop(none), HasValue(false));
    ASSERT_THAT(q->push_used(chain, 0x10), IsOk());
    const RawDesc used = r5.read(head);
    EXPECT_EQ(used.id, id);
    EXPECT_EQ(used.len, 0x10u);
    EXPECT_EQ(used.flags, wrap_before ? kUsedFlagsWrap1 : 0) << "round " << round;
    saw_wrap0_used |= !wrap_before;
    EXPECT_EQ(q->avail_position(), r5.next_avail() | (r5.avail_wrap() ? 0x8000 : 0));
  }
  EXPECT_TRUE(saw_wrap0_used);
}

TEST_F(PackedDevice, IndirectTableBecomesFragmentsAndUsesOneSlot) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const Gpa table = PackedTestWorld::data(0x8000);
  const RawDesc entries[] = {{PackedTestWorld::data(0).value(), 0x20, 0, 0},
                             {PackedTestWorld::data(0x100).value(), 0x30, 0, kNext},  // NEXT is ignored in a table
                             {PackedTestWorld::data(0x200).value(), 0x400, 0, kWrite}};
  ring.write_table(table, entries);
  ring.add_chain({{table.value(), 48, kIndirect}}, 4);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error) << chain.error->to_string();
  EXPECT_EQ(chain.id, 4);
  EXPECT_EQ(chain.ring_slots, 1);
  ASSERT_EQ(chain.readable.size(), 2u);
  EXPECT_EQ(chain.readable[0].host, host(PackedTestWorld::data(0)));
  EXPECT_EQ(chain.readable[1].host, host(PackedTestWorld::data(0x100)));
  EXPECT_EQ(chain.readable[1].len, 0x30u);
  ASSERT_EQ(chain.writable.size(), 1u);
  EXPECT_EQ(chain.writable[0].len, 0x400u);
  EXPECT_EQ(chain.readable_len, 0x50u);
  EXPECT_EQ(chain.writable_len, 0x400u);
  EXPECT_EQ(q->avail_position(), 1 | 0x8000);
}

// An indirect table that DeviceMemory returns in two host fragments split in
// the middle of a descriptor, far apart in host memory.
TEST_F(PackedDevice, IndirectTableSplitAcrossFragmentsMidDescriptor) {
  RegionTable split;
  std::span<std::byte> data = *w.mem->span(PackedTestWorld::data(0), PackedTestWorld::kDataSize);
  std::span<std::byte> rings = *w.mem->span(Gpa{0}, PackedTestWorld::kRingsSize);
  ASSERT_THAT(split.add(DmaAddr{0}, rings, Access::kReadWrite), IsOk());
  // Device address 0x40000000..+8 -> data+0x100; 0x40000008.. -> data+0x900.
  ASSERT_THAT(split.add(DmaAddr{0x40000000}, data.subspan(0x100, 8), Access::kRead), IsOk());
  ASSERT_THAT(split.add(DmaAddr{0x40000008}, data.subspan(0x900, 0x100), Access::kRead), IsOk());
  ASSERT_THAT(split.add(DmaAddr{0x50000000}, data.subspan(0x10000, 0x10000), Access::kReadWrite), IsOk());

  const RawDesc entries[] = {{0x50000000, 0x10, 0, 0}, {0x50000100, 0x20, 0, kWrite}};
  std::byte bytes[32];
  {
    // Encode through a scratch area so the split copy below is exact.
    ring.write_table(PackedTestWorld::data(0x2000), entries);
    ASSERT_THAT(w.mem->read(PackedTestWorld::data(0x2000), bytes), IsOk());
  }
  ASSERT_THAT(w.mem->write(PackedTestWorld::data(0x100), std::span(bytes, 8)), IsOk());
  ASSERT_THAT(w.mem->write(PackedTestWorld::data(0x900), std::span(bytes + 8, 24)), IsOk());

  auto qr = PackedDeviceQueue::create(split, {.size = kSize, .features = feature_bit(kFeatureIndirectDesc)},
                                      ring.addresses());
  ASSERT_THAT(qr, IsOk());
  auto q = std::move(qr).value();
  ring.add_chain({{0x40000000, 32, kIndirect}}, 1);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error) << chain.error->to_string();
  ASSERT_EQ(chain.readable.size(), 1u);
  EXPECT_EQ(chain.readable[0].host, data.data() + 0x10000);
  EXPECT_EQ(chain.readable[0].len, 0x10u);
  ASSERT_EQ(chain.writable.size(), 1u);
  EXPECT_EQ(chain.writable[0].host, data.data() + 0x10100);
  EXPECT_EQ(chain.writable[0].len, 0x20u);
}

TEST_F(PackedDevice, ShouldNotifyFollowsDriverEventSuppression) {
  auto q = make(feature_bit(kFeatureEventIdx));
  auto pop_push = [&] {
    ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 0);
    ASSERT_THAT(q->pop(chain), HasValue(true));
    ASSERT_THAT(q->push_used(chain, 1), IsOk());
  };
  EXPECT_FALSE(q->should_notify()) << "nothing pushed yet";
  pop_push();  // used at 0
  EXPECT_TRUE(q->should_notify()) << "ENABLE";
  EXPECT_FALSE(q->should_notify()) << "nothing new since the last call";
  ring.set_driver_event({0, packed::kEventFlagsDisable});
  pop_push();  // used at 1
  EXPECT_FALSE(q->should_notify()) << "DISABLE";
  // DESC: notify when descriptor 2 (wrap 1) is used.
  ring.set_driver_event({2 | 0x8000, packed::kEventFlagsDesc});
  pop_push();  // used at 2
  EXPECT_TRUE(q->should_notify());
  ring.set_driver_event({4 | 0x8000, packed::kEventFlagsDesc});
  pop_push();  // used at 3
  EXPECT_FALSE(q->should_notify()) << "event at 4 not reached";
  pop_push();  // 4
  pop_push();  // 5
  EXPECT_TRUE(q->should_notify()) << "4 lies in [4, 6)";
  // Across the wrap: pushes at 6 and 7 wrap the used counter to 0; an event
  // at 7 of the previous lap (wrap 1) counts.
  ring.set_driver_event({7 | 0x8000, packed::kEventFlagsDesc});
  pop_push();  // 6
  pop_push();  // 7 -> position 0, wrap 0
  EXPECT_TRUE(q->should_notify());
  // Event at 1 of the new lap (wrap 0): reached only by the second push.
  ring.set_driver_event({1, packed::kEventFlagsDesc});
  pop_push();  // 0 (wrap 0)
  EXPECT_FALSE(q->should_notify());
  pop_push();  // 1 (wrap 0)
  EXPECT_TRUE(q->should_notify());
  // Event at 2 but naming the old lap (wrap 1): long passed, no notification.
  ring.set_driver_event({2 | 0x8000, packed::kEventFlagsDesc});
  pop_push();  // 2 (wrap 0)
  EXPECT_FALSE(q->should_notify());
  // A reserved flags value: notify rather than risk a hang.
  ring.set_driver_event({0, 3});
  pop_push();
  EXPECT_TRUE(q->should_notify());
}

TEST_F(PackedDevice, DescModeWithoutEventIdxMeansNotify) {
  auto q = make();
  ring.set_driver_event({5 | 0x8000, packed::kEventFlagsDesc});
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 0);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_THAT(q->push_used(chain, 1), IsOk());
  EXPECT_TRUE(q->should_notify());
}

TEST_F(PackedDevice, EnableDisableNotificationsWriteDeviceArea) {
  auto q = make();
  q->disable_notifications();
  EXPECT_EQ(ring.device_event(), (EventArea{0, packed::kEventFlagsDisable}));
  EXPECT_TRUE(q->enable_notifications()) << "ring empty";
  EXPECT_EQ(ring.device_event(), (EventArea{0, packed::kEventFlagsEnable}));
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 0);
  q->disable_notifications();
  EXPECT_FALSE(q->enable_notifications()) << "a chain is already available";
}

TEST_F(PackedDevice, EventIdxEnableNamesNextAvailAndPopMovesIt) {
  auto q = make(feature_bit(kFeatureEventIdx));
  EXPECT_TRUE(q->enable_notifications());
  EXPECT_EQ(ring.device_event(), (EventArea{0 | 0x8000, packed::kEventFlagsDesc}));
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, 0}, {PackedTestWorld::data(8).value(), 8, kWrite}}, 0);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_EQ(ring.device_event(), (EventArea{2 | 0x8000, packed::kEventFlagsDesc}));
  q->disable_notifications();
  EXPECT_EQ(ring.device_event().flags, packed::kEventFlagsDisable);
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 1);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_EQ(ring.device_event(), (EventArea{2 | 0x8000, packed::kEventFlagsDisable})) << "DISABLE: offset left alone";
}

TEST_F(PackedDevice, RestoresPositionWithWrapCounter) {
  // Position 6 in lap 0 (wrap counter 0): available means AVAIL=0, USED=1.
  ring.set_avail_position(6, false);
  auto q = make(0, 6);
  EXPECT_EQ(q->avail_position(), 6);
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, 0},
                  {PackedTestWorld::data(8).value(), 8, 0},
                  {PackedTestWorld::data(16).value(), 8, kWrite}},
                 3);  // slots 6, 7, 0 (the last in lap 1)
  EXPECT_EQ(ring.read(6).flags, kUsed | kNext);
  EXPECT_EQ(ring.read(0).flags, kAvail | kWrite);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_EQ(chain.position, 6);
  EXPECT_FALSE(chain.wrap);
  EXPECT_EQ(chain.ring_slots, 3);
  EXPECT_EQ(q->avail_position(), 1 | 0x8000);
  ASSERT_THAT(q->push_used(chain, 8), IsOk());
  EXPECT_EQ(ring.read(6), (RawDesc{PackedTestWorld::data(0).value(), 8, 3, 0})) << "used with wrap 0: both bits clear";

  // A chain left at the restored position with the wrong wrap is not available.
  ring.set_avail_position(6, true);
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 0);
  auto q2 = make(0, 6);
  EXPECT_THAT(q2->pop(chain), HasValue(false));
}

TEST_F(PackedDevice, PositionZeroIsVerbatimInCreateAndFreshInTheFactory) {
  // Descriptor 0, wrap counter 0: the driver's second lap starts here.
  ring.set_avail_position(0, false);
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 1);
  auto q = make(0, 0);
  EXPECT_EQ(q->avail_position(), 0);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_FALSE(chain.wrap);
  // Through make_device_queue the default 0 is a fresh ring (wrap counter 1),
  // which does not see a chain published with wrap counter 0.
  auto fresh = make_device_queue(RingFormat::kPacked, w.table, {.size = kSize}, ring.addresses());
  ASSERT_THAT(fresh, IsOk());
  EXPECT_EQ((*fresh)->avail_position(), 0x8000);
  EXPECT_THAT((*fresh)->pop(chain), HasValue(false));
}

TEST_F(PackedDevice, RewalkAfterTheMissingTranslationArrives) {
  RegionTable partial = RegionTable::bypass(*w.mem, MemAttr::kShared);  // rings only
  auto qr = PackedDeviceQueue::create(partial, {.size = kSize}, ring.addresses());
  ASSERT_THAT(qr, IsOk());
  auto q = std::move(qr).value();
  ring.add_chain({{PackedTestWorld::data(0x10).value(), 0x20, 0}, {PackedTestWorld::data(0x800).value(), 0x40, kWrite}},
                 2);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_TRUE(chain.error.has_value());
  EXPECT_TRUE(chain.error->is(MemErrc::kNotMapped)) << chain.error->to_string();
  EXPECT_THAT(chain.error->message(), HasSubstr("descriptor 0: "));
  EXPECT_EQ(chain.fault_addr, DmaAddr{PackedTestWorld::data(0x10).value()});
  EXPECT_EQ(chain.fault_len, 0x20u);
  EXPECT_EQ(chain.fault_access, Access::kRead);
  EXPECT_EQ(chain.id, 2);
  EXPECT_EQ(chain.ring_slots, 2);
  // The walk went on past the miss and listed the chain's other one.
  ASSERT_EQ(chain.more_faults.size(), 1u);
  EXPECT_EQ(chain.more_faults[0].addr, DmaAddr{PackedTestWorld::data(0x800).value()});
  EXPECT_EQ(chain.more_faults[0].len, 0x40u);
  EXPECT_EQ(chain.more_faults[0].access, Access::kWrite);
  EXPECT_TRUE(chain.readable.empty());
  EXPECT_TRUE(chain.writable.empty());

  std::span<std::byte> data = *w.mem->span(PackedTestWorld::data(0), PackedTestWorld::kDataSize);
  ASSERT_THAT(partial.add(DmaAddr{PackedTestWorld::kDataBase}, data, Access::kReadWrite), IsOk());
  ASSERT_THAT(q->rewalk(chain), IsOk());
  ASSERT_FALSE(chain.error) << chain.error->to_string();
  EXPECT_EQ(chain.fault_len, 0u);
  EXPECT_EQ(chain.id, 2);
  EXPECT_EQ(chain.ring_slots, 2);
  EXPECT_EQ(chain.position, 0);
  ASSERT_EQ(chain.readable.size(), 1u);
  EXPECT_EQ(chain.readable[0].host, data.data() + 0x10);
  ASSERT_EQ(chain.writable.size(), 1u);
  EXPECT_EQ(chain.writable[0].host, data.data() + 0x800);
  ASSERT_THAT(q->push_used(chain, 0x40), IsOk());
  EXPECT_EQ(ring.read(0).len, 0x40u);
}

TEST_F(PackedDevice, RewalkOfAChainTheDriverChangedIsABadDescriptor) {
  auto q = make();
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, 0}, {PackedTestWorld::data(8).value(), 8, kWrite}}, 2);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  // The driver (illegally) shortens the chain it no longer owns.
  RawDesc d = ring.read(0);
  d.flags = static_cast<uint16_t>(d.flags & ~kNext);
  ring.write(0, d);
  ASSERT_THAT(q->rewalk(chain), IsOk());
  ASSERT_TRUE(chain.error.has_value());
  EXPECT_TRUE(chain.error->is(VirtioErrc::kBadDescriptor));
  EXPECT_THAT(chain.error->message(), HasSubstr("driver changed the chain"));
  EXPECT_EQ(chain.ring_slots, 2) << "the popped shape is kept so push_used stays consistent";
  EXPECT_TRUE(chain.writable.empty());
  ASSERT_THAT(q->push_used(chain, 100), IsOk());
  EXPECT_EQ(ring.read(0).len, 0u);
}

// A DeviceMemory whose ring translations can change (as the IOTLB's).
class EpochMemory final : public DeviceMemory {
 public:
  explicit EpochMemory(const RegionTable& t) : t_(t) {}
  Result<void> translate(DmaAddr a, uint64_t len, Access acc, std::vector<Fragment>& out) const override {
    return t_.translate(a, len, acc, out);
  }
  using DeviceMemory::translate;
  Result<std::span<std::byte>> translate_ring(DmaAddr a, uint64_t len, Access acc) const override {
    ++ring_translations;
    if (fail_rings) return make_error(MemErrc::kNotMapped, "{} not in the IOTLB", a);
    return t_.translate_contiguous(a, len, acc);
  }
  const std::atomic<uint64_t>* ring_epoch() const noexcept override { return &epoch; }

  std::atomic<uint64_t> epoch{7};
  mutable int ring_translations = 0;
  bool fail_rings = false;

 private:
  const RegionTable& t_;
};

TEST_F(PackedDevice, RetranslatesRingsWhenTheEpochMoves) {
  EpochMemory em(w.table);
  auto qr = PackedDeviceQueue::create(em, {.size = kSize}, ring.addresses());
  ASSERT_THAT(qr, IsOk());
  auto q = std::move(qr).value();
  EXPECT_EQ(em.ring_translations, 3);
  ASSERT_THAT(q->pop(chain), HasValue(false));
  EXPECT_EQ(em.ring_translations, 3) << "epoch unchanged: cached pointers";

  em.epoch.store(8);
  em.fail_rings = true;
  EXPECT_THAT(q->pop(chain), IsErrorWith(MemErrc::kNotMapped, HasSubstr("packed descriptor ring")));
  EXPECT_EQ(q->state(), DeviceQueueState::kRunning) << "a ring-area miss is not a corrupt ring";
  EXPECT_FALSE(q->should_notify()) << "nothing pushed";
  EXPECT_FALSE(q->enable_notifications()) << "cannot look at the ring: poll and see the error";

  em.fail_rings = false;
  const int before = em.ring_translations;
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 1);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_EQ(em.ring_translations, before + 3);
  ASSERT_THAT(q->push_used(chain, 8), IsOk());
  EXPECT_EQ(em.ring_translations, before + 3) << "translated once for the new epoch";
  EXPECT_EQ(ring.read(0).len, 8u);
}

TEST_F(PackedDevice, OrderPlatformUsesTheSameProtocol) {
  auto q = make(feature_bit(kFeatureOrderPlatform) | feature_bit(kFeatureVersion1));
  ring.add_chain({{PackedTestWorld::data(0).value(), 8, kWrite}}, 3);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_THAT(q->push_used(chain, 5), IsOk());
  EXPECT_EQ(ring.read(0), (RawDesc{PackedTestWorld::data(0).value(), 5, 3, kUsedFlagsWrap1}));
}

TEST_F(PackedDevice, SingleSlotQueue) {
  PackedRingBuilder r1(*w.mem, 1, Gpa{0x5000}, Gpa{0x5010}, Gpa{0x5014});
  auto qr = PackedDeviceQueue::create(w.table, {.size = 1}, r1.addresses());
  ASSERT_THAT(qr, IsOk());
  auto q = std::move(qr).value();
  for (int lap = 0; lap < 6; ++lap) {
    r1.add_chain({{PackedTestWorld::data(0).value(), 4, kWrite}}, 0);
    ASSERT_THAT(q->pop(chain), HasValue(true));
    EXPECT_EQ(chain.wrap, lap % 2 == 0);
    DescriptorChain none;
    ASSERT_THAT(q->pop(none), HasValue(false));
    ASSERT_THAT(q->push_used(chain, 0), IsOk());
    EXPECT_EQ(r1.read(0).flags, lap % 2 == 0 ? kUsedFlagsWrap1 : 0);
  }
}

}  // namespace
}  // namespace vdma
