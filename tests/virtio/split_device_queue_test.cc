// SplitDeviceQueue on well-formed rings: the exact fragments pop() returns,
// the used entries push_used() writes, notification decisions, position
// restore, rewalk after a translation appears, and the ring translation
// cache (ring epoch). Malformed rings are in split_hostile_ring_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>

#include "result_matchers.h"
#include "split_ring_builder.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/split_device_queue.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::HasSubstr;

constexpr Gpa kRingBase{0x1000};
constexpr uint16_t kSize = 16;

// Guest memory: rings, two adjacent data regions (a range crossing them
// yields two fragments), and a private region the device cannot reach.
class SplitDeviceQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = GuestMemory::create({{Gpa{0}, 0x10000, MemAttr::kShared, "rings"},
                                  {Gpa{0x100000}, 0x40000, MemAttr::kShared, "data"},
                                  {Gpa{0x140000}, 0x10000, MemAttr::kShared, "data2"},
                                  {Gpa{0x200000}, 0x10000, MemAttr::kPrivate, "private"}});
    ASSERT_THAT(m, IsOk());
    mem_ = std::move(m).value();
    table_ = RegionTable::bypass(*mem_, MemAttr::kShared);
    ring_ = std::make_unique<SplitRingBuilder>(*mem_, kRingBase, kSize);
  }

  std::unique_ptr<SplitDeviceQueue> make(uint64_t features = 0, uint16_t position = 0) {
    auto q = SplitDeviceQueue::create(table_, {.size = kSize, .features = features}, ring_->addresses(), position);
    EXPECT_THAT(q, IsOk());
    if (!q) return nullptr;
    return std::move(q).value();
  }
  std::byte* host(uint64_t gpa) const { return mem_->span(Gpa{gpa}, 1)->data(); }
  Fragment frag(uint64_t gpa, uint64_t len) const { return {host(gpa), len}; }

  std::unique_ptr<GuestMemory> mem_;
  RegionTable table_;
  std::unique_ptr<SplitRingBuilder> ring_;
};

MATCHER_P2(IsFragment, host, len, "") { return arg.host == host && arg.len == static_cast<uint64_t>(len); }

TEST_F(SplitDeviceQueueTest, CreateValidatesSizeAndAlignment) {
  const RingAddresses good = ring_->addresses();
  for (uint16_t bad : {uint16_t{0}, uint16_t{12}, uint16_t{65535}}) {
    EXPECT_THAT(SplitDeviceQueue::create(table_, {.size = bad}, good),
                IsErrorWith(VirtioErrc::kInvalidConfig, HasSubstr(fmt::format("split queue size {} ", bad))));
  }
  RingAddresses r = good;
  r.desc = DmaAddr{0x1008};
  EXPECT_THAT(SplitDeviceQueue::create(table_, {.size = kSize}, r),
              IsErrorWith(VirtioErrc::kInvalidConfig, "descriptor table at dma:0x1008 is not 16-byte aligned"));
  r = good;
  r.driver = DmaAddr{0x1101};
  EXPECT_THAT(SplitDeviceQueue::create(table_, {.size = kSize}, r),
              IsErrorWith(VirtioErrc::kInvalidConfig, "available ring at dma:0x1101 is not 2-byte aligned"));
  r = good;
  r.device = DmaAddr{0x1126};
  EXPECT_THAT(SplitDeviceQueue::create(table_, {.size = kSize}, r),
              IsErrorWith(VirtioErrc::kInvalidConfig, "used ring at dma:0x1126 is not 4-byte aligned"));
}

TEST_F(SplitDeviceQueueTest, CreateTranslatesEveryRingArea) {
  RingAddresses r = ring_->addresses();
  r.desc = DmaAddr{0x200000};  // private memory: not in the device's table
  EXPECT_THAT(SplitDeviceQueue::create(table_, {.size = kSize}, r),
              IsErrorWith(MemErrc::kNotMapped, HasSubstr("descriptor table: ")));
  // A used ring straddling two entries whose host memory is not adjacent:
  // bus [0, 0x1000) is host rings+0x8000, bus [0x1000, 0x9000) host rings+0.
  RegionTable scattered;
  ASSERT_THAT(scattered.add(DmaAddr{0}, mem_->regions()[0].host().subspan(0x8000, 0x1000), Access::kReadWrite), IsOk());
  ASSERT_THAT(scattered.add(DmaAddr{0x1000}, mem_->regions()[0].host().subspan(0, 0x8000), Access::kReadWrite), IsOk());
  r = ring_->addresses();
  r.device = DmaAddr{0xff8};
  EXPECT_THAT(SplitDeviceQueue::create(scattered, {.size = kSize}, r),
              IsErrorWith(MemErrc::kTooManyFragments, HasSubstr("used ring: ")));

  // Descriptor table and avail ring are only read; the used ring is written.
  RegionTable read_only;
  ASSERT_THAT(read_only.add(DmaAddr{0}, mem_->regions()[0].host(), Access::kRead), IsOk());
  EXPECT_THAT(SplitDeviceQueue::create(read_only, {.size = kSize}, ring_->addresses()),
              IsErrorWith(MemErrc::kPermissionDenied, HasSubstr("used ring: ")));
  RegionTable split_perms;
  ASSERT_THAT(split_perms.add(DmaAddr{0}, mem_->regions()[0].host().subspan(0, ring_->used_gpa().value()),
                              Access::kRead),
              IsOk());
  ASSERT_THAT(split_perms.add(DmaAddr{ring_->used_gpa().value()},
                              mem_->regions()[0].host().subspan(ring_->used_gpa().value()), Access::kReadWrite),
              IsOk());
  EXPECT_THAT(SplitDeviceQueue::create(split_perms, {.size = kSize}, ring_->addresses()), IsOk());
}

TEST_F(SplitDeviceQueueTest, PopReturnsExactFragmentsInDescriptorOrder) {
  auto q = make();
  ring_->set_desc(3, {0x100000, 100, split::kDescFNext, 7});
  ring_->set_desc(7, {0x101000, 200, split::kDescFNext, 1});
  ring_->set_desc(1, {0x102000, 300, split::kDescFWrite, 0});
  ring_->make_available(3);

  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_FALSE(chain.error.has_value());
  EXPECT_EQ(chain.id, 3);
  EXPECT_EQ(chain.position, 0);
  EXPECT_EQ(chain.ring_slots, 3);
  EXPECT_THAT(chain.readable, ::testing::ElementsAre(IsFragment(host(0x100000), 100), IsFragment(host(0x101000), 200)));
  EXPECT_THAT(chain.writable, ::testing::ElementsAre(IsFragment(host(0x102000), 300)));
  EXPECT_EQ(chain.readable_len, 300u);
  EXPECT_EQ(chain.writable_len, 300u);
  EXPECT_EQ(q->avail_position(), 1);
  EXPECT_THAT(q->pop(chain), HasValue(false));
  EXPECT_TRUE(chain.readable.empty());  // cleared by every pop
}

TEST_F(SplitDeviceQueueTest, RangeAcrossRegionsYieldsTwoFragments) {
  auto q = make();
  ring_->set_desc(0, {0x13ff00, 0x200, split::kDescFWrite, 0});
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
  EXPECT_THAT(chain.writable,
              ::testing::ElementsAre(IsFragment(host(0x13ff00), 0x100), IsFragment(host(0x140000), 0x100)));
  EXPECT_EQ(chain.writable_len, 0x200u);
}

TEST_F(SplitDeviceQueueTest, ZeroLengthDescriptorAddsNoFragment) {
  auto q = make();
  ring_->set_desc(0, {0x100000, 0, split::kDescFNext, 1});
  ring_->set_desc(1, {0x100010, 16, 0, 0});
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error.has_value());
  EXPECT_THAT(chain.readable, ::testing::ElementsAre(IsFragment(host(0x100010), 16)));
}

TEST_F(SplitDeviceQueueTest, IndirectTableAfterDirectDescriptors) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  // §2.7.5.3.2: zero or more direct descriptors, then one indirect one. The
  // WRITE flag on the indirect descriptor is ignored.
  const RawDesc table[] = {{0x104000, 64, split::kDescFNext, 2},
                           {0x0, 0, 0, 0},  // unreferenced
                           {0x105000, 128, split::kDescFWrite, 0}};
  ring_->write_table(Gpa{0x110000}, table);
  ring_->set_desc(5, {0x103000, 32, split::kDescFNext, 6});
  ring_->set_desc(6, {0x110000, 48, split::kDescFIndirect | split::kDescFWrite, 0});
  ring_->make_available(5);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
  EXPECT_EQ(chain.id, 5);
  EXPECT_EQ(chain.ring_slots, 2);
  EXPECT_THAT(chain.readable, ::testing::ElementsAre(IsFragment(host(0x103000), 32), IsFragment(host(0x104000), 64)));
  EXPECT_THAT(chain.writable, ::testing::ElementsAre(IsFragment(host(0x105000), 128)));
}

TEST_F(SplitDeviceQueueTest, IndirectTableSpanningTwoHostMappings) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const RawDesc table[] = {{0x100000, 8, split::kDescFNext, 1},
                           {0x100100, 16, split::kDescFNext, 2},
                           {0x100200, 32, split::kDescFWrite | split::kDescFNext, 3},
                           {0x100300, 64, split::kDescFWrite, 0}};
  // Entries 0-1 in "data", entries 2-3 in "data2".
  ring_->write_table(Gpa{0x13ffe0}, table);
  ring_->set_desc(0, {0x13ffe0, 64, split::kDescFIndirect, 0});
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
  EXPECT_THAT(chain.readable, ::testing::ElementsAre(IsFragment(host(0x100000), 8), IsFragment(host(0x100100), 16)));
  EXPECT_THAT(chain.writable, ::testing::ElementsAre(IsFragment(host(0x100200), 32), IsFragment(host(0x100300), 64)));
  EXPECT_EQ(chain.ring_slots, 1);
}

TEST_F(SplitDeviceQueueTest, PushUsedWritesTheElementAndClampsTheLength) {
  auto q = make();
  ring_->set_desc(2, {0x100000, 16, split::kDescFNext, 4});
  ring_->set_desc(4, {0x101000, 512, split::kDescFWrite, 0});
  ring_->set_desc(9, {0x102000, 64, 0, 0});
  ring_->make_available(2);
  ring_->make_available(9);
  DescriptorChain a, b;
  ASSERT_THAT(q->pop(a), HasValue(true));
  ASSERT_THAT(q->pop(b), HasValue(true));
  ASSERT_THAT(q->push_used(b, 64), IsOk());  // readable-only: nothing can be written
  ASSERT_THAT(q->push_used(a, 0xffffffff), IsOk());
  EXPECT_EQ(ring_->used_idx(), 2);
  EXPECT_EQ(ring_->used_entry(0), (RawUsedElem{9, 0}));
  EXPECT_EQ(ring_->used_entry(1), (RawUsedElem{2, 512}));
}

TEST_F(SplitDeviceQueueTest, ShouldNotifyFollowsAvailFlagsWithoutEventIdx) {
  auto q = make();
  ring_->set_desc(0, {0x100000, 16, split::kDescFWrite, 0});
  DescriptorChain chain;
  EXPECT_FALSE(q->should_notify());  // nothing pushed
  for (int round = 0; round < 3; ++round) {
    ring_->set_avail_flags(round == 1 ? split::kAvailFNoInterrupt : 0);
    ring_->make_available(0);
    ASSERT_THAT(q->pop(chain), HasValue(true));
    ASSERT_THAT(q->push_used(chain, 16), IsOk());
    EXPECT_EQ(q->should_notify(), round != 1) << "round " << round;
    EXPECT_FALSE(q->should_notify());
  }
}

TEST_F(SplitDeviceQueueTest, ShouldNotifyUsesUsedEventWithEventIdx) {
  auto q = make(feature_bit(kFeatureEventIdx));
  ring_->set_avail_flags(split::kAvailFNoInterrupt);  // ignored with EVENT_IDX (§2.7.7.2)
  ring_->set_desc(0, {0x100000, 16, split::kDescFWrite, 0});
  DescriptorChain chain;
  const auto complete = [&](int n) {
    for (int i = 0; i < n; ++i) {
      ring_->make_available(0);
      ASSERT_THAT(q->pop(chain), HasValue(true));
      ASSERT_THAT(q->push_used(chain, 1), IsOk());
    }
  };
  complete(1);  // used idx 0 -> 1 passes used_event 0
  EXPECT_TRUE(q->should_notify());
  complete(1);  // 1 -> 2
  EXPECT_FALSE(q->should_notify());
  ring_->set_used_event(4);
  complete(2);  // 2 -> 4: entry 4 not written yet
  EXPECT_FALSE(q->should_notify());
  complete(3);  // 4 -> 7 writes entry 4
  EXPECT_TRUE(q->should_notify());
}

TEST_F(SplitDeviceQueueTest, NotificationsWithoutEventIdxUseUsedFlags) {
  auto q = make();
  q->disable_notifications();
  EXPECT_EQ(ring_->used_flags(), split::kUsedFNoNotify);
  EXPECT_TRUE(q->enable_notifications());
  EXPECT_EQ(ring_->used_flags(), 0);
  q->disable_notifications();
  ring_->set_desc(0, {0x100000, 16, 0, 0});
  ring_->make_available(0);
  EXPECT_FALSE(q->enable_notifications());  // a chain arrived meanwhile: poll again
  EXPECT_EQ(ring_->used_flags(), 0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_TRUE(q->enable_notifications());
}

TEST_F(SplitDeviceQueueTest, NotificationsWithEventIdxUseAvailEvent) {
  auto q = make(feature_bit(kFeatureEventIdx));
  q->disable_notifications();
  EXPECT_EQ(ring_->used_flags(), 0);  // §2.7.10: flags stay 0 with EVENT_IDX
  EXPECT_EQ(ring_->avail_event(), 0xffff);
  EXPECT_TRUE(q->enable_notifications());
  EXPECT_EQ(ring_->avail_event(), 0);
  ring_->set_desc(0, {0x100000, 16, 0, 0});
  ring_->make_available(0);
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_FALSE(q->enable_notifications());
  EXPECT_EQ(ring_->avail_event(), 1);
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_TRUE(q->enable_notifications());
  EXPECT_EQ(ring_->avail_event(), 2);
  q->disable_notifications();
  EXPECT_EQ(ring_->avail_event(), 1);
}

TEST_F(SplitDeviceQueueTest, AvailPositionRestoresAQueue) {
  for (uint16_t i = 0; i < 5; ++i) {
    ring_->set_desc(i, {0x100000 + 0x100u * i, 16, split::kDescFWrite, 0});
    ring_->make_available(i);
  }
  uint16_t position = 0;
  {
    auto q = make();
    DescriptorChain chain;
    for (int i = 0; i < 3; ++i) {
      ASSERT_THAT(q->pop(chain), HasValue(true));
      ASSERT_THAT(q->push_used(chain, 4), IsOk());
    }
    position = q->avail_position();
  }
  EXPECT_EQ(position, 3);
  auto q = make(0, position);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_EQ(chain.id, 3);
  EXPECT_EQ(chain.position, 3);
  ASSERT_THAT(q->push_used(chain, 4), IsOk());
  // The used idx resumed from the ring: the element went to slot 3.
  EXPECT_EQ(ring_->used_idx(), 4);
  EXPECT_EQ(ring_->used_entry(3), (RawUsedElem{3, 4}));
}

TEST_F(SplitDeviceQueueTest, CreateRejectsAPositionTooFarAheadOfTheUsedIdx) {
  ring_->set_used_idx(100);
  EXPECT_THAT(SplitDeviceQueue::create(table_, {.size = kSize}, ring_->addresses(), 117),
              IsErrorWith(VirtioErrc::kInvalidConfig,
                          "avail position 117 is 17 entries ahead of the used idx 100 in the ring, more than the queue "
                          "size 16"));
  EXPECT_THAT(SplitDeviceQueue::create(table_, {.size = kSize}, ring_->addresses(), 116), IsOk());
}

TEST_F(SplitDeviceQueueTest, RewalkAfterTheMissingTranslationAppears) {
  // The device's table starts without "data2" (an IOTLB miss, in effect).
  RegionTable partial;
  ASSERT_THAT(partial.add(DmaAddr{0}, mem_->regions()[0].host(), Access::kReadWrite), IsOk());
  ASSERT_THAT(partial.add(DmaAddr{0x100000}, mem_->regions()[1].host(), Access::kReadWrite), IsOk());
  auto q = std::move(SplitDeviceQueue::create(partial, {.size = kSize}, ring_->addresses())).value();
  ring_->set_desc(0, {0x100000, 16, split::kDescFNext, 1});
  ring_->set_desc(1, {0x140100, 32, split::kDescFWrite, 0});
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_TRUE(chain.error.has_value());
  EXPECT_TRUE(chain.error->is(MemErrc::kNotMapped)) << chain.error->to_string();
  EXPECT_THAT(chain.error->message(), HasSubstr("descriptor 1: "));
  EXPECT_EQ(chain.fault_addr, DmaAddr{0x140100});
  EXPECT_EQ(chain.fault_len, 32u);
  EXPECT_EQ(chain.fault_access, Access::kWrite);
  EXPECT_TRUE(chain.readable.empty());
  EXPECT_TRUE(chain.writable.empty());

  ASSERT_THAT(partial.add(DmaAddr{0x140000}, mem_->regions()[2].host(), Access::kReadWrite), IsOk());
  ASSERT_THAT(q->rewalk(chain), IsOk());
  ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
  EXPECT_EQ(chain.id, 0);
  EXPECT_EQ(chain.fault_access, Access::kNone);
  EXPECT_THAT(chain.readable, ::testing::ElementsAre(IsFragment(host(0x100000), 16)));
  EXPECT_THAT(chain.writable, ::testing::ElementsAre(IsFragment(host(0x140100), 32)));
  ASSERT_THAT(q->push_used(chain, 32), IsOk());
  EXPECT_EQ(ring_->used_entry(0), (RawUsedElem{0, 32}));
}

TEST_F(SplitDeviceQueueTest, AMissingChainListsEveryDescriptorThatMisses) {
  RegionTable partial;  // without "data2" (0x140000): its buffers miss
  ASSERT_THAT(partial.add(DmaAddr{0}, mem_->regions()[0].host(), Access::kReadWrite), IsOk());
  ASSERT_THAT(partial.add(DmaAddr{0x100000}, mem_->regions()[1].host(), Access::kReadWrite), IsOk());
  auto q = std::move(SplitDeviceQueue::create(partial, {.size = kSize}, ring_->addresses())).value();
  ring_->set_desc(0, {0x140100, 16, split::kDescFNext, 1});
  ring_->set_desc(1, {0x100000, 32, split::kDescFNext, 2});
  ring_->set_desc(2, {0x140800, 64, split::kDescFWrite | split::kDescFNext, 3});
  ring_->set_desc(3, {0x100400, 1, split::kDescFWrite, 0});
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_TRUE(chain.error.has_value());
  EXPECT_TRUE(chain.error->is(MemErrc::kNotMapped)) << chain.error->to_string();
  EXPECT_THAT(chain.error->message(), HasSubstr("descriptor 0: "));
  EXPECT_EQ(chain.fault_addr, DmaAddr{0x140100});
  EXPECT_EQ(chain.fault_access, Access::kRead);
  ASSERT_EQ(chain.more_faults.size(), 1u);
  EXPECT_EQ(chain.more_faults[0].addr, DmaAddr{0x140800});
  EXPECT_EQ(chain.more_faults[0].len, 64u);
  EXPECT_EQ(chain.more_faults[0].access, Access::kWrite);
  // Nothing of a failed chain can be written through.
  EXPECT_TRUE(chain.readable.empty());
  EXPECT_TRUE(chain.writable.empty());
  EXPECT_EQ(chain.readable_len + chain.writable_len, 0u);

  ASSERT_THAT(partial.add(DmaAddr{0x140000}, mem_->regions()[2].host(), Access::kReadWrite), IsOk());
  ASSERT_THAT(q->rewalk(chain), IsOk());
  ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
  EXPECT_TRUE(chain.more_faults.empty());
  EXPECT_EQ(chain.readable_len, 48u);
  EXPECT_EQ(chain.writable_len, 65u);
}

TEST_F(SplitDeviceQueueTest, AMissBeforeABrokenChainStaysItsErrorUntilTranslated) {
  RegionTable partial;
  ASSERT_THAT(partial.add(DmaAddr{0}, mem_->regions()[0].host(), Access::kReadWrite), IsOk());
  ASSERT_THAT(partial.add(DmaAddr{0x100000}, mem_->regions()[1].host(), Access::kReadWrite), IsOk());
  auto q = std::move(SplitDeviceQueue::create(partial, {.size = kSize}, ring_->addresses())).value();
  // A miss, then a loop: the walk ends bounded, with the miss as its error.
  ring_->set_desc(0, {0x140100, 16, split::kDescFNext, 1});
  ring_->set_desc(1, {0x100000, 32, split::kDescFNext, 0});
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_TRUE(chain.error.has_value());
  EXPECT_TRUE(chain.error->is(MemErrc::kNotMapped)) << chain.error->to_string();
  EXPECT_LE(chain.more_faults.size(), DescriptorChain::kMaxMoreFaults);
  EXPECT_TRUE(chain.readable.empty());
  // Translated now: the loop is what is wrong with it.
  ASSERT_THAT(partial.add(DmaAddr{0x140000}, mem_->regions()[2].host(), Access::kReadWrite), IsOk());
  ASSERT_THAT(q->rewalk(chain), IsOk());
  ASSERT_TRUE(chain.error.has_value());
  EXPECT_TRUE(chain.error->is(VirtioErrc::kBadDescriptor)) << chain.error->to_string();
  EXPECT_TRUE(chain.readable.empty());
}

TEST_F(SplitDeviceQueueTest, WritableDescriptorInReadOnlyMemoryIsAPermissionFault) {
  RegionTable perms;
  ASSERT_THAT(perms.add(DmaAddr{0}, mem_->regions()[0].host(), Access::kReadWrite), IsOk());
  ASSERT_THAT(perms.add(DmaAddr{0x100000}, mem_->regions()[1].host(), Access::kRead), IsOk());
  auto q = std::move(SplitDeviceQueue::create(perms, {.size = kSize}, ring_->addresses())).value();
  ring_->set_desc(0, {0x100000, 16, split::kDescFNext, 1});
  ring_->set_desc(1, {0x100800, 64, split::kDescFWrite, 0});
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_TRUE(chain.error.has_value());
  EXPECT_TRUE(chain.error->is(MemErrc::kPermissionDenied)) << chain.error->to_string();
  EXPECT_EQ(chain.fault_addr, DmaAddr{0x100800});
  EXPECT_EQ(chain.fault_len, 64u);
  EXPECT_EQ(chain.fault_access, Access::kWrite);
}

// A DeviceMemory whose ring translations can change, as an IOTLB's can: it
// counts translate_ring() calls, can fail them, and can redirect the rings
// to other memory (a re-mapping), bumping its epoch when told.
class ChangingMemory final : public DeviceMemory {
 public:
  explicit ChangingMemory(const DeviceMemory& inner) : inner_(inner) {}
  Result<void> translate(DmaAddr addr, uint64_t len, Access access, std::vector<Fragment>& out) const override {
    return inner_.translate(addr, len, access, out);
  }
  using DeviceMemory::translate;
  Result<std::span<std::byte>> translate_ring(DmaAddr addr, uint64_t len, Access access) const override {
    ++ring_translations;
    if (rings_unmapped) return make_error(MemErrc::kNotMapped, "fake iotlb: {} has no translation", addr);
    return inner_.translate_ring(addr.unchecked_add(redirect), len, access);
  }
  const std::atomic<uint64_t>* ring_epoch() const noexcept override { return &epoch; }

  mutable int ring_translations = 0;
  bool rings_unmapped = false;
  uint64_t redirect = 0;
  std::atomic<uint64_t> epoch{7};

 private:
  const DeviceMemory& inner_;
};

TEST_F(SplitDeviceQueueTest, RingEpochDrivesRetranslation) {
  ChangingMemory iotlb(table_);
  auto q = std::move(SplitDeviceQueue::create(iotlb, {.size = kSize}, ring_->addresses())).value();
  EXPECT_EQ(iotlb.ring_translations, 3);
  // A second ring image 0x4000 further on, holding a different chain.
  SplitRingBuilder moved(*mem_, kRingBase.unchecked_add(0x4000), kSize);
  ring_->set_desc(0, {0x100000, 16, 0, 0});
  ring_->make_available(0);
  moved.set_desc(0, {0x108000, 32, split::kDescFWrite, 0});
  moved.make_available(0);
  moved.make_available(0);

  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  EXPECT_THAT(chain.readable, ::testing::ElementsAre(IsFragment(host(0x100000), 16)));
  EXPECT_EQ(iotlb.ring_translations, 3);  // epoch unchanged: cached pointers

  // The mapping changes without an epoch bump: still the cached view.
  iotlb.redirect = 0x4000;
  EXPECT_THAT(q->pop(chain), HasValue(false));
  EXPECT_EQ(iotlb.ring_translations, 3);

  // An invalidation that leaves the rings unmapped: the MemErrc surfaces, the
  // queue is not reset, and it recovers once the translation is back.
  iotlb.rings_unmapped = true;
  iotlb.epoch.fetch_add(1, std::memory_order_release);
  EXPECT_THAT(q->pop(chain), IsErrorWith(MemErrc::kNotMapped, HasSubstr("descriptor table: fake iotlb")));
  EXPECT_THAT(q->push_used(chain, 0), IsError(MemErrc::kNotMapped));
  EXPECT_FALSE(q->enable_notifications());
  EXPECT_EQ(q->state(), DeviceQueueState::kRunning);
  iotlb.rings_unmapped = false;
  ASSERT_THAT(q->pop(chain), HasValue(true));  // the moved ring: entry 1 of its avail ring
  EXPECT_EQ(chain.position, 1);
  EXPECT_THAT(chain.writable, ::testing::ElementsAre(IsFragment(host(0x108000), 32)));
  const int after_recovery = iotlb.ring_translations;
  ASSERT_THAT(q->push_used(chain, 32), IsOk());
  EXPECT_EQ(iotlb.ring_translations, after_recovery);
  EXPECT_EQ(moved.used_idx(), 1);
  EXPECT_EQ(moved.used_entry(0), (RawUsedElem{0, 32}));
  EXPECT_EQ(ring_->used_idx(), 0);
}

TEST_F(SplitDeviceQueueTest, OrderPlatformQueueWorks) {
  auto q = make(feature_bit(kFeatureVersion1) | feature_bit(kFeatureOrderPlatform) | feature_bit(kFeatureEventIdx));
  ring_->set_desc(0, {0x100000, 16, split::kDescFWrite, 0});
  DescriptorChain chain;
  for (int i = 0; i < 40; ++i) {
    ring_->make_available(0);
    ring_->set_used_event(static_cast<uint16_t>(i));
    ASSERT_THAT(q->pop(chain), HasValue(true));
    EXPECT_EQ(chain.position, i % kSize);  // the avail ring slot
    ASSERT_THAT(q->push_used(chain, 16), IsOk());
    EXPECT_TRUE(q->should_notify());
  }
  EXPECT_EQ(ring_->used_idx(), 40);
  EXPECT_EQ(q->avail_position(), 40);  // the free-running index
}

}  // namespace
}  // namespace vdma
