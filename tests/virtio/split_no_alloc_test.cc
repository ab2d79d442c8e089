// Once warm, the split queues' data path allocates nothing: add, kick_prepare,
// pop, push_used, should_notify and get_used, direct and indirect, and an
// indirect table spread over two host mappings. This test binary replaces the
// global scalar operator new/delete to count allocations in a window.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>

#include "result_matchers.h"
#include "split_ring_builder.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/split_device_queue.h"
#include "vdma/virtio/split_driver_queue.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};

void* counted_alloc(std::size_t n) noexcept {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
}  // namespace

// Scalar forms only: array and aligned forms keep the runtime's own pairs.
void* operator new(std::size_t n) {
  if (void* p = counted_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
// g++ 12 at -O2 inlines these into gtest code whose pointer came from a
// new-expression and reports free() on it (-Wmismatched-new-delete): it does
// not see that operator new above is malloc. A false positive.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace vdma {
namespace {

using namespace vdma::testing;

class AllocationWindow {
 public:
  AllocationWindow() {
    g_allocations.store(0);
    g_counting.store(true);
  }
  ~AllocationWindow() { g_counting.store(false); }
  long count() const { return g_allocations.load(); }
};

TEST(SplitNoAlloc, CountingWorks) {
  long n = 0;
  {
    AllocationWindow w;
    // A direct call: unlike a new-expression it cannot be elided.
    void* p = ::operator new(16);
    n = w.count();
    ::operator delete(p);
  }
  EXPECT_EQ(n, 1);
}

class SplitNoAllocRoundTrip : public ::testing::TestWithParam<bool> {};

TEST_P(SplitNoAllocRoundTrip, WarmRoundTripsDoNotAllocate) {
  const bool indirect = GetParam();
  auto mem = std::move(GuestMemory::create({{Gpa{0}, 4 << 20, MemAttr::kShared, "rings"},
                                            {Gpa{16 << 20}, 1 << 20, MemAttr::kShared, "data"},
                                            {Gpa{17 << 20}, 1 << 20, MemAttr::kShared, "data2"}}))
                 .value();
  IdentityDmaOps dma(*mem, {Gpa{0}, 4 << 20});
  RegionTable table = RegionTable::bypass(*mem);
  const uint64_t features =
      feature_bit(kFeatureEventIdx) | (indirect ? feature_bit(kFeatureIndirectDesc) : uint64_t{0});
  auto drv = std::move(SplitDriverQueue::create(dma, {.size = 64, .features = features})).value();
  auto dev =
      std::move(SplitDeviceQueue::create(table, {.size = 64, .features = features}, drv->ring_addresses())).value();

  // The writable segment crosses from "data" into "data2": two fragments.
  const DriverSegment segs[] = {
      {.addr = Gpa{16 << 20}, .len = 64, .type = BufferType::kDeviceReadable},
      {.addr = Gpa{(17 << 20) - 512}, .len = 4096, .type = BufferType::kDeviceWritable},
  };
  DescriptorChain chain;
  bool all_ok = true;
  auto round = [&](uint64_t cookie) {
    all_ok &= drv->add(segs, cookie).has_value();
    (void)drv->kick_prepare();
    auto got = dev->pop(chain);
    all_ok &= got.has_value() && *got && !chain.error && chain.writable.size() == 2;
    all_ok &= dev->push_used(chain, 100).has_value();
    (void)dev->should_notify();
    auto u = drv->get_used();
    all_ok &= u.has_value() && u->has_value() && (*u)->cookie == cookie && (*u)->len == 100;
  };
  for (uint64_t i = 0; i < 200; ++i) round(i);  // warm: vectors reach their size
  long allocations = 0;
  {
    AllocationWindow w;
    for (uint64_t i = 0; i < 10'000; ++i) round(1000 + i);
    allocations = w.count();
  }
  EXPECT_TRUE(all_ok);
  EXPECT_EQ(allocations, 0);
}

INSTANTIATE_TEST_SUITE_P(DirectAndIndirect, SplitNoAllocRoundTrip, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Indirect" : "Direct"; });

TEST(SplitNoAlloc, IndirectTableAcrossHostMappings) {
  auto mem = std::move(GuestMemory::create({{Gpa{0}, 0x10000, MemAttr::kShared, "rings"},
                                            {Gpa{0x100000}, 0x40000, MemAttr::kShared, "data"},
                                            {Gpa{0x140000}, 0x10000, MemAttr::kShared, "data2"}}))
                 .value();
  RegionTable table = RegionTable::bypass(*mem);
  SplitRingBuilder ring(*mem, Gpa{0x1000}, 16);
  const RawDesc entries[] = {{0x100000, 8, split::kDescFNext, 1},
                             {0x100100, 16, split::kDescFNext, 2},
                             {0x100200, 32, split::kDescFWrite | split::kDescFNext, 3},
                             {0x100300, 64, split::kDescFWrite, 0}};
  ring.write_table(Gpa{0x13ffe0}, entries);
  ring.set_desc(0, {0x13ffe0, 64, split::kDescFIndirect, 0});
  auto dev = std::move(SplitDeviceQueue::create(table, {.size = 16, .features = feature_bit(kFeatureIndirectDesc)},
                                                ring.addresses()))
                 .value();
  DescriptorChain chain;
  bool all_ok = true;
  auto round = [&] {
    ring.make_available(0);
    auto got = dev->pop(chain);
    all_ok &= got.has_value() && *got && !chain.error && chain.readable.size() == 2 && chain.writable.size() == 2;
    all_ok &= dev->push_used(chain, 96).has_value();
  };
  for (int i = 0; i < 10; ++i) round();
  long allocations = 0;
  {
    AllocationWindow w;
    for (int i = 0; i < 5'000; ++i) round();
    allocations = w.count();
  }
  EXPECT_TRUE(all_ok);
  EXPECT_EQ(allocations, 0);
}

}  // namespace
}  // namespace vdma
