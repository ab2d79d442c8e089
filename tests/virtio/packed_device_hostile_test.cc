// PackedDeviceQueue against hostile packed rings. Every test asserts the
// exact error and, with a guard pattern over all guest memory, that the device
// changed nothing but the used descriptor it wrote (or nothing at all for a
// ring that needs a reset).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "packed_ring_builder.h"
#include "result_matchers.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/packed_device_queue.h"

namespace vdma {
namespace {

using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr uint16_t kAvail = packed::kDescFAvail;
constexpr uint16_t kUsed = packed::kDescFUsed;
constexpr uint16_t kWrite = packed::kDescFWrite;
constexpr uint16_t kNext = packed::kDescFNext;
constexpr uint16_t kIndirect = packed::kDescFIndirect;
constexpr std::byte kGuard{0xa5};
constexpr uint64_t kRingGpa = 0x1000;

class PackedDeviceHostile : public ::testing::Test {
 protected:
  static constexpr uint16_t kSize = 8;

  void SetUp() override {
    ASSERT_THAT(w.mem->fill(PackedTestWorld::data(0), PackedTestWorld::kDataSize, kGuard), IsOk());
    // Everything in the rings region outside the ring areas is guard too.
    ASSERT_THAT(w.mem->fill(Gpa{0x3000}, PackedTestWorld::kRingsSize - 0x3000, kGuard), IsOk());
  }

  std::unique_ptr<PackedDeviceQueue> make(uint64_t features = 0, const DeviceMemory* mem = nullptr) {
    auto q = PackedDeviceQueue::create(mem != nullptr ? *mem : w.table, {.size = kSize, .features = features},
                                       ring.addresses());
    EXPECT_THAT(q, IsOk());
    return q ? std::move(q).value() : nullptr;
  }

  // Pops one chain that must carry error `code` with `msg` in its message and
  // no fragments, returns it with push_used(chain, 0x100), and checks that
  // the only bytes of guest memory that changed are the len/id/flags of the
  // used descriptor at `slot` (len 0, the chain's id, used flags).
  template <class Code>
  void expect_rejected_and_contained(PackedDeviceQueue& q, Code code, const std::string& msg, uint16_t slot,
                                     uint16_t id, uint16_t ring_slots) {
    const std::vector<std::byte> before = w.snapshot();
    ASSERT_THAT(q.pop(chain), HasValue(true));
    ASSERT_TRUE(chain.error.has_value()) << "chain accepted";
    EXPECT_TRUE(chain.error->is(code)) << chain.error->to_string();
    EXPECT_THAT(chain.error->message(), HasSubstr(msg));
    EXPECT_TRUE(chain.readable.empty());
    EXPECT_TRUE(chain.writable.empty());
    EXPECT_EQ(chain.readable_len, 0u);
    EXPECT_EQ(chain.writable_len, 0u);
    EXPECT_EQ(chain.id, id);
    EXPECT_EQ(chain.ring_slots, ring_slots);
    EXPECT_EQ(chain.position, slot);
    EXPECT_EQ(q.state(), DeviceQueueState::kRunning);
    ASSERT_THAT(q.push_used(chain, 0x100), IsOk());
    const RawDesc used = ring.read(slot);
    EXPECT_EQ(used.len, 0u) << "written length clamped to the (empty) writable part";
    EXPECT_EQ(used.id, id);
    EXPECT_EQ(used.flags, kAvail | kUsed);
    expect_only_changed(before, kRingGpa + slot * 16u + 8, 8);
  }

  // Compares all guest memory with `before`, except [gpa, gpa+len) in the rings region.
  void expect_only_changed(std::vector<std::byte> before, uint64_t gpa, size_t len) {
    const std::vector<std::byte> after = w.snapshot();
    ASSERT_EQ(after.size(), before.size());
    if (len != 0) std::memcpy(before.data() + gpa, after.data() + gpa, len);
    const auto diff = std::mismatch(before.begin(), before.end(), after.begin());
    EXPECT_TRUE(diff.first == before.end()) << "guest memory changed at snapshot offset "
                                            << (diff.first - before.begin());
  }

  PackedTestWorld w = PackedTestWorld::make();
  PackedRingBuilder ring{*w.mem, kSize, Gpa{kRingGpa}, Gpa{0x2000}, Gpa{0x2004}};
  DescriptorChain chain;
};

uint64_t data(uint64_t off) { return PackedTestWorld::data(off).value(); }

// The packed analogue of a descriptor loop: every descriptor has NEXT, so the
// chain never ends and the next chain's position is unknown.
TEST_F(PackedDeviceHostile, ChainThatNeverEndsNeedsResetStickily) {
  auto q = make();
  ring.add_chain({{data(0), 8, kWrite}}, 0);
  DescriptorChain held;
  ASSERT_THAT(q->pop(held), HasValue(true));
  std::vector<BufferDesc> forever(kSize, BufferDesc{data(0x100), 8, kNext});
  ring.add_chain(forever, 1, Chaining::kAsGiven);  // slots 1..7 and 0, all NEXT
  const std::vector<std::byte> before = w.snapshot();

  const std::string msg = "packed ring: chain at descriptor 1 (wrap 1) does not end within 8 descriptors";
  EXPECT_THAT(q->pop(chain), IsErrorWith(VirtioErrc::kNeedsReset, msg));
  EXPECT_EQ(q->state(), DeviceQueueState::kNeedsReset);
  ASSERT_NE(q->needs_reset_reason(), nullptr);
  EXPECT_EQ(q->needs_reset_reason()->message(), msg);
  expect_only_changed(before, 0, 0);
  // Sticky: the same error at once, even after the driver repairs the ring,
  // and for every other operation.
  ring.write(1, RawDesc{data(0), 8, 1, kAvail | kWrite});
  const std::vector<std::byte> repaired = w.snapshot();
  for (int i = 0; i < 1000; ++i) ASSERT_THAT(q->pop(chain), IsErrorWith(VirtioErrc::kNeedsReset, msg));
  EXPECT_THAT(q->rewalk(held), IsErrorWith(VirtioErrc::kNeedsReset, msg));
  EXPECT_THAT(q->push_used(held, 8), IsErrorWith(VirtioErrc::kNeedsReset, msg));
  EXPECT_FALSE(q->should_notify());
  EXPECT_FALSE(q->enable_notifications()) << "poll and see the error rather than sleep";
  EXPECT_EQ(q->avail_position(), 1 | 0x8000) << "position of the bad chain";
  expect_only_changed(repaired, 0, 0);
}

TEST_F(PackedDeviceHostile, ChainOfExactlyQueueSizeDescriptorsIsAccepted) {
  auto q = make();
  std::vector<BufferDesc> full(kSize, BufferDesc{data(0), 8, 0});
  full.back().flags = kWrite;
  ring.add_chain(full, 3);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error) << chain.error->to_string();
  EXPECT_EQ(chain.ring_slots, kSize);
  EXPECT_EQ(chain.id, 3);
  EXPECT_EQ(q->avail_position(), 0) << "a whole lap: wrap counter flipped to 0";
}

TEST_F(PackedDeviceHostile, BufferIdOutOfRangeNeedsReset) {
  auto q = make();
  ring.add_chain({{data(0), 8, 0}, {data(8), 8, kWrite}}, kSize);
  const std::vector<std::byte> before = w.snapshot();
  EXPECT_THAT(q->pop(chain), IsErrorWith(VirtioErrc::kNeedsReset,
                                         "packed ring: chain at descriptor 0 has buffer id 8, beyond queue size 8"));
  EXPECT_EQ(q->state(), DeviceQueueState::kNeedsReset);
  expect_only_changed(before, 0, 0);
}

TEST_F(PackedDeviceHostile, IdIsTakenFromTheLastDescriptor) {
  auto q = make();
  ring.add_chain({{data(0), 8, 0}, {data(8), 8, kWrite}}, 2);
  RawDesc first = ring.read(0);
  first.id = 0x7fff;  // ignored: only the last descriptor's id counts
  ring.write(0, first);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_EQ(chain.id, 2);
}

TEST_F(PackedDeviceHostile, DriverReusingHeldDescriptorsNeedsReset) {
  auto q = make();
  ring.add_chain({{data(0), 8, 0}, {data(8), 8, 0}, {data(16), 8, 0}, {data(24), 8, kWrite}}, 0);
  ring.add_chain({{data(0), 8, 0}, {data(8), 8, 0}, {data(16), 8, 0}, {data(24), 8, kWrite}}, 1);
  DescriptorChain a, b;
  ASSERT_THAT(q->pop(a), HasValue(true));
  ASSERT_THAT(q->pop(b), HasValue(true));
  // All 8 descriptors are the device's; the driver publishes over slot 0 anyway.
  ring.add_chain({{data(0), 8, kWrite}}, 2);
  EXPECT_THAT(q->pop(chain),
              IsErrorWith(VirtioErrc::kNeedsReset, HasSubstr("at descriptor 0 while the device still holds 8 of 8")));
}

TEST_F(PackedDeviceHostile, AddressInAHoleIsNotMappedWithFault) {
  auto q = make();
  ring.add_chain({{data(0), 8, 0}, {PackedTestWorld::kHole.value() + 0x40, 0x200, kWrite}}, 4);
  expect_rejected_and_contained(*q, MemErrc::kNotMapped, "descriptor 1: ", 0, 4, 2);
  EXPECT_EQ(chain.fault_addr, DmaAddr{PackedTestWorld::kHole.value() + 0x40});
  EXPECT_EQ(chain.fault_len, 0x200u);
  EXPECT_EQ(chain.fault_access, Access::kWrite);
}

TEST_F(PackedDeviceHostile, BufferHangingOverTheEndOfMemory) {
  auto q = make();
  ring.add_chain({{data(PackedTestWorld::kDataSize - 0x10), 0x20, kWrite}}, 1);
  expect_rejected_and_contained(*q, MemErrc::kNotMapped,
                                fmt::format("dma:{:#x} is not mapped", data(PackedTestWorld::kDataSize)), 0, 1, 1);
}

TEST_F(PackedDeviceHostile, AddressPlusLengthWrapping) {
  auto q = make();
  ring.add_chain({{0xfffffffffffff000, 0x2000, 0}}, 3);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 0: address dma:0xfffffffffffff000 + len 0x2000 wraps past 2^64", 0, 3, 1);
}

TEST_F(PackedDeviceHostile, WritableThenReadable) {
  auto q = make();
  ring.add_chain({{data(0), 8, kWrite}, {data(8), 8, 0}, {data(16), 8, kWrite}}, 5);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 1: device-readable after a device-writable buffer", 0, 5, 3);
}

TEST_F(PackedDeviceHostile, WritableThenReadableInsideATable) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const RawDesc entries[] = {{data(0), 8, 0, kWrite}, {data(8), 8, 0, 0}};
  ring.write_table(PackedTestWorld::data(0x4000), entries);
  ring.add_chain({{data(0x4000), 32, kIndirect}}, 6);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 0 indirect entry 1: device-readable after a device-writable buffer", 0,
                                6, 1);
}

TEST_F(PackedDeviceHostile, PermissionDeniedNamesTheAccess) {
  RegionTable ro;
  ASSERT_THAT(ro.add(DmaAddr{0}, *w.mem->span(Gpa{0}, PackedTestWorld::kRingsSize), Access::kReadWrite), IsOk());
  ASSERT_THAT(ro.add(DmaAddr{PackedTestWorld::kDataBase},
                     *w.mem->span(PackedTestWorld::data(0), PackedTestWorld::kDataSize), Access::kRead),
              IsOk());
  auto q = make(0, &ro);
  ring.add_chain({{data(0), 8, 0}, {data(0x100), 0x80, kWrite}}, 7);
  expect_rejected_and_contained(*q, MemErrc::kPermissionDenied, "descriptor 1: ", 0, 7, 2);
  EXPECT_EQ(chain.fault_addr, DmaAddr{data(0x100)});
  EXPECT_EQ(chain.fault_len, 0x80u);
  EXPECT_EQ(chain.fault_access, Access::kWrite);
}

TEST_F(PackedDeviceHostile, IndirectInsideIndirect) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const RawDesc inner[] = {{data(0), 8, 0, kWrite}};
  ring.write_table(PackedTestWorld::data(0x5000), inner);
  const RawDesc outer[] = {{data(0x10), 8, 0, 0}, {data(0x5000), 16, 0, kIndirect}};
  ring.write_table(PackedTestWorld::data(0x4000), outer);
  ring.add_chain({{data(0x4000), 32, kIndirect}}, 1);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 0 indirect entry 1: INDIRECT inside an indirect table", 0, 1, 1);
}

TEST_F(PackedDeviceHostile, IndirectTableOfBadLength) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  ring.add_chain({{data(0x4000), 24, kIndirect}}, 1);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 0: indirect table length 0x18 is not a non-zero multiple of 16", 0, 1, 1);
  ring.add_chain({{data(0x4000), 0, kIndirect}}, 2);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 1: indirect table length 0x0 is not a non-zero multiple of 16", 1, 2, 1);
  ring.add_chain({{data(0x4000), 16 * (kSize + 1), kIndirect}}, 3);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 2: indirect table of 9 entries exceeds the queue size 8", 2, 3, 1);
}

TEST_F(PackedDeviceHostile, IndirectTableMisalignedOrUnmapped) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  ring.add_chain({{data(0x4008), 16, kIndirect}}, 1);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                fmt::format("descriptor 0: indirect table address dma:{:#x} is not 16-byte aligned",
                                            data(0x4008)),
                                0, 1, 1);
  ring.add_chain({{PackedTestWorld::kHole.value(), 32, kIndirect}}, 2);
  expect_rejected_and_contained(*q, MemErrc::kNotMapped, "descriptor 1 indirect table: ", 1, 2, 1);
  EXPECT_EQ(chain.fault_addr, DmaAddr{PackedTestWorld::kHole.value()});
  EXPECT_EQ(chain.fault_len, 32u);
  EXPECT_EQ(chain.fault_access, Access::kRead);
  ring.add_chain({{0xfffffffffffffff0, 32, kIndirect}}, 3);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 2: indirect table dma:0xfffffffffffffff0 + len 0x20 wraps past 2^64", 2, 3,
                                1);
}

TEST_F(PackedDeviceHostile, IndirectWithNextStillFindsTheChainEnd) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const RawDesc entries[] = {{data(0), 8, 0, kWrite}};
  ring.write_table(PackedTestWorld::data(0x4000), entries);
  ring.add_chain({{data(0x4000), 16, kIndirect}, {data(0x100), 8, kWrite}}, 4);  // NEXT added on the first
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor, "descriptor 0: INDIRECT together with NEXT", 0, 4, 2);
}

TEST_F(PackedDeviceHostile, IndirectWithoutTheFeature) {
  auto q = make();
  const RawDesc entries[] = {{data(0), 8, 0, kWrite}};
  ring.write_table(PackedTestWorld::data(0x4000), entries);
  ring.add_chain({{data(0x4000), 16, kIndirect}}, 4);
  expect_rejected_and_contained(*q, VirtioErrc::kBadDescriptor,
                                "descriptor 0: INDIRECT set but VIRTIO_F_INDIRECT_DESC was not negotiated", 0, 4, 1);
}

TEST_F(PackedDeviceHostile, IndirectAfterDirectDescriptorsIsWalked) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const RawDesc entries[] = {{data(0x10), 8, 0, 0}, {data(0x20), 8, 0, kWrite}};
  ring.write_table(PackedTestWorld::data(0x4000), entries);
  ring.add_chain({{data(0), 8, 0}, {data(0x4000), 32, kIndirect}}, 4);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error) << chain.error->to_string();
  EXPECT_EQ(chain.readable.size(), 2u);
  EXPECT_EQ(chain.writable.size(), 1u);
  EXPECT_EQ(chain.ring_slots, 2);
}

TEST_F(PackedDeviceHostile, BadChainDoesNotStopTheNextOne) {
  auto q = make();
  ring.add_chain({{PackedTestWorld::kHole.value(), 8, kWrite}}, 0);
  ring.add_chain({{data(0), 8, 0}, {data(8), 8, kWrite}}, 1);
  expect_rejected_and_contained(*q, MemErrc::kNotMapped, "descriptor 0: ", 0, 0, 1);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error) << chain.error->to_string();
  EXPECT_EQ(chain.id, 1);
  EXPECT_EQ(chain.position, 1);
}

TEST_F(PackedDeviceHostile, DescriptorNotYetAvailableIsNotWork) {
  auto q = make();
  // Flags with AVAIL == USED (a used descriptor, or garbage in both bits) are
  // not available for either wrap counter value.
  ring.write(0, RawDesc{data(0), 8, 0, kAvail | kUsed | kWrite});
  EXPECT_THAT(q->pop(chain), HasValue(false));
  ring.write(0, RawDesc{data(0), 8, 0, kWrite});
  EXPECT_THAT(q->pop(chain), HasValue(false));
  EXPECT_EQ(q->state(), DeviceQueueState::kRunning);
}

}  // namespace
}  // namespace vdma
