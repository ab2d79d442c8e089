// IotlbQueueView: the per-queue ring translation cache. translate_ring()
// records ranges; overlapping UPDATEs and INVALIDATEs bump the epoch,
// non-overlapping ones (including adjacent ones) do not; invalidate_all bumps
// every view; forget_rings, range merging, registration, and a queue-like
// loop that re-translates after a bump.
#include "vdma/iommu/ring_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "result_matchers.h"
#include "split_ring_builder.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/virtio/split_device_queue.h"

namespace vdma {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr Access kR = Access::kRead;
constexpr Access kRW = Access::kReadWrite;
constexpr uint64_t kRing = 0x10000;      // a ring area: [0x10000, 0x10400)
constexpr uint64_t kRingLen = 0x400;

using RingRange = IotlbQueueView::RingRange;

class RingCacheTest : public ::testing::Test {
 protected:
  std::byte* h(uint64_t off) { return mem.data() + off; }
  void insert_ok(uint64_t iova, uint64_t size, uint64_t host_off, Access perms = kRW) {
    ASSERT_THAT(iotlb.insert(Iova(iova), size, FrontVa(0x7f000000 + iova), h(host_off), perms), IsOk());
  }
  // Maps the ring page and translates the ring through the view.
  void map_and_translate_ring() {
    insert_ok(kRing, 0x1000, 0x0);
    auto span = view.translate_ring(DmaAddr(kRing), kRingLen, kR);
    ASSERT_THAT(span, IsOk());
    ASSERT_EQ(span->data(), h(0));
    ASSERT_EQ(span->size(), kRingLen);
  }

  std::vector<std::byte> mem = std::vector<std::byte>(0x20000);
  DeviceIotlb iotlb{{.max_entries = 16, .max_readers = 2}};
  IotlbQueueView view{iotlb};  // destroyed before iotlb
};

TEST_F(RingCacheTest, TranslateRingRecordsTheRangeAndDoesNotBump) {
  const uint64_t e0 = view.epoch();
  map_and_translate_ring();
  EXPECT_THAT(view.ring_ranges(), ElementsAre(RingRange{Iova(kRing), Iova(kRing + kRingLen - 1)}));
  EXPECT_EQ(view.epoch(), e0);
  EXPECT_EQ(view.ring_epoch(), &*view.ring_epoch());
  EXPECT_NE(view.ring_epoch(), nullptr);
}

// Request tracking (per-request IOTLB policy): translate() records the
// ranges it was asked for, translated or not; ring translations are not
// recorded; forgetting the tracked ranges leaves the ring cached and unbumped.
TEST_F(RingCacheTest, TrackingRecordsBufferRangesButNotRings) {
  map_and_translate_ring();
  insert_ok(0x4000, 0x1000, 0x4000, kR);
  std::vector<Fragment> frags;
  ASSERT_THAT(view.translate(DmaAddr(0x4010), 0x20, kR, frags), IsOk());
  EXPECT_TRUE(view.tracked().empty());  // off by default

  view.set_tracking(true);
  ASSERT_THAT(view.translate(DmaAddr(0x4010), 0x20, kR, frags), IsOk());
  EXPECT_THAT(view.translate(DmaAddr(0x6000), 0x10, kR, frags), IsError(MemErrc::kNotMapped));
  ASSERT_THAT(view.translate_ring(DmaAddr(kRing), kRingLen, kR), IsOk());
  ASSERT_THAT(view.translate(DmaAddr(0x4000), 0, kR, frags), IsOk());  // empty: nothing to record
  EXPECT_THAT(view.tracked(), ElementsAre(AddrRange<Iova>{Iova(0x4010), 0x20}, AddrRange<Iova>{Iova(0x6000), 0x10}));

  const uint64_t e0 = view.epoch();
  EXPECT_EQ(iotlb.forget(view.tracked()), 1u);
  view.clear_tracked();
  EXPECT_TRUE(view.tracked().empty());
  EXPECT_EQ(view.epoch(), e0);
  EXPECT_EQ(iotlb.size(), 1u);  // the ring page
}

TEST_F(RingCacheTest, OverlappingUpdateBumpsTheEpoch) {
  map_and_translate_ring();
  const uint64_t e0 = view.epoch();
  insert_ok(kRing + kRingLen - 1, 1, 0x5000);  // the ring's last byte only
  EXPECT_EQ(view.epoch(), e0 + 1);
  insert_ok(kRing - 0x10, 0x11, 0x6000);       // reaches the ring's first byte
  EXPECT_EQ(view.epoch(), e0 + 2);
}

TEST_F(RingCacheTest, UpdatesBesideTheRingDoNotBump) {
  map_and_translate_ring();
  const uint64_t e0 = view.epoch();
  insert_ok(kRing + kRingLen, 0x100, 0x5000);  // starts right after the ring
  insert_ok(kRing - 0x100, 0x100, 0x6000);     // ends right before it
  insert_ok(0x80000, 0x1000, 0x7000);          // far away
  EXPECT_EQ(view.epoch(), e0);
}

TEST_F(RingCacheTest, OverlappingInvalidateBumpsAndOthersDoNot) {
  map_and_translate_ring();
  const uint64_t e0 = view.epoch();
  ASSERT_THAT(iotlb.invalidate(Iova(kRing + kRingLen), 0x100), IsOk());  // adjacent above
  ASSERT_THAT(iotlb.invalidate(Iova(kRing - 0x100), 0x100), IsOk());     // adjacent below
  EXPECT_EQ(view.epoch(), e0);
  ASSERT_THAT(iotlb.invalidate(Iova(kRing + 0x10), 1), IsOk());
  EXPECT_EQ(view.epoch(), e0 + 1);
  // An invalidate of a range with no entry still bumps: the queue may hold a
  // pointer from an entry that was evicted since.
  ASSERT_THAT(iotlb.invalidate(Iova(kRing + 0x10), 1), IsOk());
  EXPECT_EQ(view.epoch(), e0 + 2);
}

TEST_F(RingCacheTest, InvalidateAllBumpsEveryView) {
  IotlbQueueView idle(iotlb);  // no ring recorded
  map_and_translate_ring();
  const uint64_t e0 = view.epoch();
  const uint64_t i0 = idle.epoch();
  iotlb.invalidate_all();
  EXPECT_EQ(view.epoch(), e0 + 1);
  EXPECT_EQ(idle.epoch(), i0 + 1);
}

TEST_F(RingCacheTest, OnlyTheViewWhoseRingOverlapsIsBumped) {
  IotlbQueueView other(iotlb);
  map_and_translate_ring();
  insert_ok(0x40000, 0x1000, 0x8000);
  ASSERT_THAT(other.translate_ring(DmaAddr(0x40000), 0x100, kRW), IsOk());
  const uint64_t e0 = view.epoch();
  const uint64_t o0 = other.epoch();
  ASSERT_THAT(iotlb.invalidate(Iova(0x40080), 0x10), IsOk());
  EXPECT_EQ(view.epoch(), e0);
  EXPECT_EQ(other.epoch(), o0 + 1);
}

TEST_F(RingCacheTest, AFailedRingTranslationStaysRecorded) {
  EXPECT_THAT(view.translate_ring(DmaAddr(kRing), kRingLen, kR),
              IsErrorWith(MemErrc::kNotMapped, HasSubstr("iova:0x10000 is not mapped")));
  ASSERT_EQ(view.ring_ranges().size(), 1u);
  const uint64_t e0 = view.epoch();
  insert_ok(kRing, 0x1000, 0x0);  // the UPDATE answering the MISS
  EXPECT_EQ(view.epoch(), e0 + 1);
  EXPECT_THAT(view.translate_ring(DmaAddr(kRing), kRingLen, kR), IsOk());
}

TEST_F(RingCacheTest, ARingSplitInHostMemoryIsAnError) {
  insert_ok(kRing, 0x200, 0x0);
  insert_ok(kRing + 0x200, 0x200, 0x4000);
  EXPECT_THAT(view.translate_ring(DmaAddr(kRing), kRingLen, kR), IsError(MemErrc::kTooManyFragments));
  // Contiguous in host memory across two entries: fine.
  insert_ok(kRing + 0x200, 0x200, 0x200);
  auto span = view.translate_ring(DmaAddr(kRing), kRingLen, kR);
  ASSERT_THAT(span, IsOk());
  EXPECT_EQ(span->data(), h(0));
}

TEST_F(RingCacheTest, WrappingRingIsRejectedAndNotRecorded) {
  EXPECT_THAT(view.translate_ring(DmaAddr(~0ull - 1), 4, kR), IsError(BaseErrc::kOverflow));
  EXPECT_TRUE(view.ring_ranges().empty());
}

TEST_F(RingCacheTest, RangesAreDeduplicatedAndMergedBeyondCapacity) {
  insert_ok(0x0, 0x20000, 0x0);
  ASSERT_THAT(view.translate_ring(DmaAddr(0x1000), 0x10, kR), IsOk());
  ASSERT_THAT(view.translate_ring(DmaAddr(0x1000), 0x10, kR), IsOk());
  EXPECT_EQ(view.ring_ranges().size(), 1u);
  for (uint64_t i = 1; i < IotlbQueueView::kMaxRanges; ++i) {
    ASSERT_THAT(view.translate_ring(DmaAddr(0x1000 * (i + 1)), 0x10, kR), IsOk());
  }
  EXPECT_EQ(view.ring_ranges().size(), IotlbQueueView::kMaxRanges);
  ASSERT_THAT(view.translate_ring(DmaAddr(0x100), 0x10, kR), IsOk());  // one more: merged
  EXPECT_THAT(view.ring_ranges(), ElementsAre(RingRange{Iova(0x100), Iova(0x800f)}));
  const uint64_t e0 = view.epoch();
  ASSERT_THAT(iotlb.invalidate(Iova(0x1005), 1), IsOk());  // inside an old range
  EXPECT_EQ(view.epoch(), e0 + 1);
  ASSERT_THAT(iotlb.invalidate(Iova(0x8010), 1), IsOk());  // just past the merged range
  EXPECT_EQ(view.epoch(), e0 + 1);
}

TEST_F(RingCacheTest, ForgetRingsDropsRangesAndBumps) {
  map_and_translate_ring();
  const uint64_t e0 = view.epoch();
  view.forget_rings();
  EXPECT_EQ(view.epoch(), e0 + 1);
  EXPECT_TRUE(view.ring_ranges().empty());
  ASSERT_THAT(iotlb.invalidate(Iova(kRing), kRingLen), IsOk());  // no longer this queue's ring
  EXPECT_EQ(view.epoch(), e0 + 1);
}

TEST_F(RingCacheTest, ViewsRegisterAndUnregister) {
  EXPECT_EQ(iotlb.view_count(), 1u);
  {
    IotlbQueueView second(iotlb);
    EXPECT_EQ(iotlb.view_count(), 2u);
    EXPECT_EQ(&second.iotlb(), &iotlb);
  }
  EXPECT_EQ(iotlb.view_count(), 1u);
}

TEST_F(RingCacheTest, EvictionDoesNotBumpAndTheCachedPointerStaysValid) {
  DeviceIotlb small({.max_entries = 2, .max_readers = 1});
  IotlbQueueView v(small);
  ASSERT_THAT(small.insert(Iova(kRing), 0x1000, FrontVa(0), h(0x3000), kRW), IsOk());
  auto span = v.translate_ring(DmaAddr(kRing), kRingLen, kR);
  ASSERT_THAT(span, IsOk());
  const uint64_t e0 = v.epoch();
  ASSERT_THAT(small.insert(Iova(0x1000), 0x10, FrontVa(0), h(0), kR), IsOk());
  ASSERT_THAT(small.insert(Iova(0x2000), 0x10, FrontVa(0), h(0), kR), IsOk());  // evicts the ring entry
  EXPECT_EQ(small.stats().evictions, 1u);
  EXPECT_EQ(v.epoch(), e0);
  EXPECT_EQ(span->data(), h(0x3000));
  EXPECT_THAT(v.translate(DmaAddr(kRing), 1, kR), IsError(MemErrc::kNotMapped));
}

TEST_F(RingCacheTest, ViewTranslateForwardsToTheIotlb) {
  insert_ok(0x1000, 0x1000, 0x100);
  const DeviceMemory& dm = view;
  auto frags = dm.translate(DmaAddr(0x1010), 0x20, kR);
  ASSERT_THAT(frags, IsOk());
  ASSERT_EQ(frags->size(), 1u);
  EXPECT_EQ(frags->at(0).host, h(0x110));
  EXPECT_EQ(frags->at(0).len, 0x20u);
  EXPECT_THAT(dm.translate(DmaAddr(0x2000), 1, kR), IsErrorWith(MemErrc::kNotMapped, HasSubstr("iova:0x2000")));
  insert_ok(0x3000, 0x1000, 0x100, kR);
  EXPECT_THAT(dm.translate(DmaAddr(0x3000), 1, Access::kWrite), IsError(MemErrc::kPermissionDenied));
}

// What a device queue does (device_memory.h): cache the ring pointer, check
// the epoch before each use, translate again when it moved.
TEST_F(RingCacheTest, AQueueLikeUserFollowsARemappedRing) {
  ReaderHandle reader = *iotlb.register_reader();
  insert_ok(kRing, 0x1000, 0x0);
  mem[0] = std::byte{0x11};
  mem[0x9000] = std::byte{0x22};

  uint64_t seen = 0;
  std::byte* ring = nullptr;
  int translations = 0;
  auto use_ring = [&]() -> std::byte {
    ReadSection section(reader);
    const uint64_t now = view.ring_epoch()->load(std::memory_order_acquire);
    if (ring == nullptr || now != seen) {
      seen = now;  // loaded before translate_ring, per the contract
      auto span = view.translate_ring(DmaAddr(kRing), kRingLen, kR);
      ring = span ? span->data() : nullptr;
      ++translations;
    }
    return ring == nullptr ? std::byte{0} : ring[0];
  };

  EXPECT_EQ(use_ring(), std::byte{0x11});
  EXPECT_EQ(use_ring(), std::byte{0x11});
  EXPECT_EQ(translations, 1);  // cached: one atomic load per use
  insert_ok(kRing, 0x1000, 0x9000);  // the front-end moved the ring
  EXPECT_EQ(use_ring(), std::byte{0x22});
  EXPECT_EQ(translations, 2);
  ASSERT_THAT(iotlb.invalidate(Iova(kRing), 0x1000), IsOk());
  EXPECT_EQ(use_ring(), std::byte{0});  // re-translation fails: no stale pointer
  EXPECT_EQ(translations, 3);
}

// The device-side split queue (unchanged) on an IotlbQueueView: descriptors
// and ring addresses are IOVAs, a missing translation is a per-chain fault
// the back-end can answer, and an invalidated ring is noticed at the next pop.
TEST(IotlbDeviceQueueTest, TheSplitDeviceQueueRunsOnTheIotlb) {
  constexpr uint64_t kOff = 0x80000000;  // iova = gpa + kOff
  auto m = GuestMemory::create({{Gpa{0}, 0x10000, MemAttr::kShared, "rings"},
                                {Gpa{0x100000}, 0x10000, MemAttr::kShared, "data"}});
  ASSERT_THAT(m, IsOk());
  const GuestMemory& mem = **m;
  auto host = [&](uint64_t gpa) { return mem.span(Gpa{gpa}, 1)->data(); };
  DeviceIotlb iotlb;
  auto map = [&](uint64_t gpa, uint64_t len, Access perms) {
    ASSERT_THAT(iotlb.insert(Iova(gpa + kOff), len, FrontVa(0x7f0000000000 + gpa), host(gpa), perms), IsOk());
  };
  IotlbQueueView view(iotlb);
  ReaderHandle reader = *iotlb.register_reader();

  SplitRingBuilder ring(mem, Gpa{0x1000}, 8);
  const RingAddresses rings{DmaAddr(ring.desc_gpa().value() + kOff), DmaAddr(ring.avail_gpa().value() + kOff),
                            DmaAddr(ring.used_gpa().value() + kOff)};
  map(0x0, 0x10000, kRW);
  map(0x100000, 0x1000, kR);
  map(0x101000, 0x1000, kRW);
  ring.set_desc(0, {.addr = 0x100000 + kOff, .len = 0x200, .flags = split::kDescFNext, .next = 1});
  ring.set_desc(1, {.addr = 0x101000 + kOff, .len = 0x100, .flags = split::kDescFWrite});
  ring.make_available(0);

  auto q = SplitDeviceQueue::create(view, {.size = 8}, rings);
  ASSERT_THAT(q, IsOk());
  DescriptorChain chain;
  {
    ReadSection section(reader);
    ASSERT_THAT((*q)->pop(chain), HasValue(true));
    ASSERT_FALSE(chain.error.has_value());
    ASSERT_EQ(chain.readable.size(), 1u);
    EXPECT_EQ(chain.readable[0].host, host(0x100000));
    EXPECT_EQ(chain.readable[0].len, 0x200u);
    ASSERT_EQ(chain.writable.size(), 1u);
    EXPECT_EQ(chain.writable[0].host, host(0x101000));
    ASSERT_THAT((*q)->push_used(chain, 0x80), IsOk());
  }
  EXPECT_EQ(ring.used_idx(), 1u);
  EXPECT_EQ(ring.used_entry(0), (RawUsedElem{0, 0x80}));

  // A buffer the IOTLB has no entry for: the chain carries the fault, the
  // back-end asks for exactly that range, and walks the chain again.
  ring.set_desc(2, {.addr = 0x102000 + kOff, .len = 0x40, .flags = split::kDescFWrite});
  ring.make_available(2);
  {
    ReadSection section(reader);
    ASSERT_THAT((*q)->pop(chain), HasValue(true));
    ASSERT_TRUE(chain.error.has_value());
    EXPECT_TRUE(chain.error->is(MemErrc::kNotMapped));
    EXPECT_EQ(chain.fault_addr, DmaAddr(0x102000 + kOff));
    EXPECT_EQ(chain.fault_len, 0x40u);
  }
  map(0x102000, 0x1000, kRW);  // the UPDATE answering the MISS, outside the section
  {
    ReadSection section(reader);
    ASSERT_THAT((*q)->rewalk(chain), IsOk());
    ASSERT_FALSE(chain.error.has_value());
    EXPECT_EQ(chain.writable[0].host, host(0x102000));
    ASSERT_THAT((*q)->push_used(chain, 0x40), IsOk());
  }

  // INVALIDATE of the rings: the next pop re-translates and reports it.
  ASSERT_THAT(iotlb.invalidate(Iova(kOff), 0x10000), IsOk());
  {
    ReadSection section(reader);
    EXPECT_THAT((*q)->pop(chain), IsErrorWith(MemErrc::kNotMapped, HasSubstr("descriptor table")));
  }
  map(0x0, 0x10000, kRW);
  {
    ReadSection section(reader);
    EXPECT_THAT((*q)->pop(chain), HasValue(false));  // nothing new, and no stale pointer used
  }
  EXPECT_EQ(ring.used_idx(), 2u);
}

}  // namespace
}  // namespace vdma
