// Lazy revival (iova_flush_queue.h "Revival"): map() of exactly the buffer,
// len and permission of a run still waiting in the lazy flush queue takes
// that run back with the same DMA address and no invalidation; any other
// Gpa, len or permission, a run already taken into a flush, a run beyond the
// device's DMA mask and strict mode never revive; a revived run is a normal
// live mapping and is invalidated exactly once after its last unmap.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "iommu_dma_fixture.h"
#include "result_matchers.h"
#include "vdma/dma/debug_dma_ops.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t k4K = 4096;

// How many times each IOVA page appears in the sink calls so far.
std::map<uint64_t, int> invalidations_per_page(const RecordingSink& sink) {
  std::map<uint64_t, int> out;
  for (const auto& call : sink.calls()) {
    for (const auto& r : call) {
      for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += k4K) ++out[p];
    }
  }
  return out;
}

TEST(IommuDmaRevival, TheSameBufferGetsItsQueuedRunBackWithoutAnInvalidation) {
  IommuDmaFixture f(InvalidationMode::kLazy);
  const Gpa gpa{0x10010};  // in-page offset 0x10, two pages
  const DmaAddr d = *f.ops->map(gpa, 0x1ff0, DmaDirection::kToDevice);
  ASSERT_THAT(f.ops->unmap(d, 0x1ff0, DmaDirection::kToDevice), IsOk());
  EXPECT_EQ(f.fq().pending, 1u);
  EXPECT_EQ(f.domain->mapping_count(), 0u);

  EXPECT_THAT(f.ops->map(gpa, 0x1ff0, DmaDirection::kToDevice), HasValue(d));
  EXPECT_EQ(f.fq().revived, 1u);
  EXPECT_EQ(f.fq().pending, 0u);
  EXPECT_EQ(f.domain->mapping_count(), 1u);
  // The page table maps it again, to the same bytes, read-only as before.
  for (uint64_t off : {uint64_t{0}, uint64_t{0x1fef}}) {
    auto t = f.paging->translate(Iova(d.value() + off), Access::kRead);
    ASSERT_THAT(t, IsOk());
    EXPECT_EQ(t->gpa, gpa.unchecked_add(off));
    EXPECT_EQ(t->perms, Access::kRead);
  }
  EXPECT_THAT(f.paging->translate(Iova(d.value()), Access::kWrite), IsError(IommuErrc::kPermissionFault));
  EXPECT_TRUE(f.sink->calls().empty());

  // A normal live mapping: a wrong unmap is refused, the right one works.
  EXPECT_THAT(f.ops->unmap(d, 0x1000, DmaDirection::kToDevice), IsError(DmaErrc::kUnknownMapping));
  ASSERT_THAT(f.ops->unmap(d, 0x1ff0, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.domain->flush(), IsOk());
  ASSERT_EQ(f.sink->calls().size(), 1u);
  EXPECT_THAT(f.sink->calls()[0], ElementsAre(AddrRange<Iova>{Iova(d.value() - 0x10), 2 * k4K}));
  EXPECT_TRUE(f.sink->still_mapped().empty());
}

TEST(IommuDmaRevival, AnotherGpaLenOrPermissionNeverRevives) {
  IommuDmaFixture f(InvalidationMode::kLazy);
  const Gpa gpa{0x20000};
  const DmaAddr d = *f.ops->map(gpa, 0x800, DmaDirection::kFromDevice);  // device-writable
  ASSERT_THAT(f.ops->unmap(d, 0x800, DmaDirection::kFromDevice), IsOk());

  struct Probe {
    Gpa gpa;
    uint64_t len;
    DmaDirection dir;
  };
  for (const Probe p : {Probe{Gpa{0x21000}, 0x800, DmaDirection::kFromDevice},   // another buffer
                        Probe{Gpa{0x20100}, 0x800, DmaDirection::kFromDevice},   // same page, other offset
                        Probe{gpa, 0x801, DmaDirection::kFromDevice},            // longer
                        Probe{gpa, 0x7ff, DmaDirection::kFromDevice},            // shorter
                        Probe{gpa, 0x800, DmaDirection::kToDevice},              // read-only
                        Probe{gpa, 0x800, DmaDirection::kBidirectional}}) {      // more rights
    auto m = f.ops->map(p.gpa, p.len, p.dir);
    ASSERT_THAT(m, IsOk());
    EXPECT_NE(align_down(m->value(), k4K), align_down(d.value(), k4K)) << to_string(p.dir) << " len " << p.len;
  }
  EXPECT_EQ(f.fq().revived, 0u);
  EXPECT_EQ(f.fq().pending, 1u);
  // The exact key still revives.
  EXPECT_THAT(f.ops->map(gpa, 0x800, DmaDirection::kFromDevice), HasValue(d));
  EXPECT_EQ(f.fq().revived, 1u);

  // And the other way round: a writable mapping never takes a read-only run.
  const DmaAddr r = *f.ops->map(Gpa{0x30000}, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(f.ops->unmap(r, k4K, DmaDirection::kToDevice), IsOk());
  auto w = f.ops->map(Gpa{0x30000}, k4K, DmaDirection::kFromDevice);
  ASSERT_THAT(w, IsOk());
  EXPECT_NE(*w, r);
  EXPECT_THAT(f.paging->translate(Iova(r.value()), Access::kNone), IsError(IommuErrc::kNotPresent));
  EXPECT_EQ(f.fq().revived, 1u);
}

// Blocks inside invalidate() until released, so a test can act while a
// flush holds its batch.
class BlockingSink final : public InvalidationSink {
 public:
  Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
    std::unique_lock lock(mu_);
    calls.emplace_back(ranges.begin(), ranges.end());
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return released_; });
    return ok();
  }
  void wait_entered() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return entered_; });
  }
  void release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  std::vector<std::vector<AddrRange<Iova>>> calls;  // read after the flush returned

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false, released_ = false;
};

TEST(IommuDmaRevival, ARunWhoseInvalidationIsInProgressIsNotRevived) {
  auto sink = std::make_shared<BlockingSink>();
  IommuDmaFixture f(InvalidationMode::kLazy, {.sink = sink});
  const Gpa gpa{0x40000};
  const DmaAddr d = *f.ops->map(gpa, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(f.ops->unmap(d, k4K, DmaDirection::kToDevice), IsOk());

  std::thread flusher([&] { EXPECT_THAT(f.domain->flush(), IsOk()); });
  sink->wait_entered();  // the run is in the batch being invalidated
  auto again = f.ops->map(gpa, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(again, IsOk());
  EXPECT_NE(*again, d);
  EXPECT_EQ(f.fq().revived, 0u);
  sink->release();
  flusher.join();
  ASSERT_EQ(sink->calls.size(), 1u);
  EXPECT_THAT(sink->calls[0], ElementsAre(AddrRange<Iova>{Iova(d.value()), k4K}));
  // The new mapping is untouched by that flush.
  auto t = f.paging->translate(Iova(again->value()), Access::kRead);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->gpa, gpa);
  ASSERT_THAT(f.ops->unmap(*again, k4K, DmaDirection::kToDevice), IsOk());
}

TEST(IommuDmaRevival, ARevivedRunIsInvalidatedExactlyOnceAfterItsLastUnmap) {
  IommuDmaFixture f(InvalidationMode::kLazy);
  const Gpa gpa{0x50000};
  const DmaAddr d = *f.ops->map(gpa, 16, DmaDirection::kToDevice);
  for (int i = 0; i < 5; ++i) {
    ASSERT_THAT(f.ops->unmap(d, 16, DmaDirection::kToDevice), IsOk());
    ASSERT_THAT(f.ops->map(gpa, 16, DmaDirection::kToDevice), HasValue(d));
  }
  EXPECT_EQ(f.fq().revived, 5u);
  EXPECT_TRUE(f.sink->calls().empty());
  ASSERT_THAT(f.ops->unmap(d, 16, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.domain->flush(), IsOk());
  EXPECT_THAT(invalidations_per_page(*f.sink), ElementsAre(std::pair<const uint64_t, int>{d.value(), 1}));
  EXPECT_EQ(f.fq().runs_freed, 1u);
  // Freed once (a second free would trip the allocator's check): the next
  // map of any buffer takes it from the magazine.
  EXPECT_THAT(f.ops->map(Gpa{0x60000}, 16, DmaDirection::kToDevice), HasValue(d));
}

TEST(IommuDmaRevival, ABufferMappedTwiceAtOnceNeverSharesAnIova) {
  IommuDmaFixture f(InvalidationMode::kLazy);
  const Gpa gpa{0x70000};
  const DmaAddr d1 = *f.ops->map(gpa, k4K, DmaDirection::kToDevice);
  const DmaAddr d2 = *f.ops->map(gpa, k4K, DmaDirection::kToDevice);
  ASSERT_NE(d1, d2);
  ASSERT_THAT(f.ops->unmap(d1, k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.ops->unmap(d2, k4K, DmaDirection::kToDevice), IsOk());
  // Two queued runs with one key: the newest is revived, the older waits for the flush.
  const DmaAddr a = *f.ops->map(gpa, k4K, DmaDirection::kToDevice);
  const DmaAddr b = *f.ops->map(gpa, k4K, DmaDirection::kToDevice);
  EXPECT_EQ(a, d2);
  EXPECT_NE(b, d1);
  EXPECT_NE(b, d2);
  EXPECT_EQ(f.fq().revived, 1u);
  EXPECT_EQ(f.domain->mapping_count(), 2u);
  ASSERT_THAT(f.ops->unmap(a, k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.ops->unmap(b, k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.domain->flush(), IsOk());
  const auto per_page = invalidations_per_page(*f.sink);
  EXPECT_EQ(per_page.size(), 3u);
  for (const DmaAddr x : {d1, d2, b}) EXPECT_EQ(per_page.at(x.value()), 1) << x.value();
  EXPECT_TRUE(f.sink->still_mapped().empty());
}

TEST(IommuDmaRevival, ManyQueuedRunsEachComeBackToTheirOwnBuffer) {
  IommuDmaFixture f(InvalidationMode::kLazy, {.flush_queue_entries = 256});
  constexpr int kBuffers = 200;
  std::vector<DmaAddr> first(kBuffers);
  auto gpa_of = [](int i) { return Gpa{0x100000 + static_cast<uint64_t>(i) * 0x1800}; };  // odd ones straddle pages
  for (int i = 0; i < kBuffers; ++i) first[i] = *f.ops->map(gpa_of(i), 0x900, DmaDirection::kBidirectional);
  for (int i = 0; i < kBuffers; ++i) ASSERT_THAT(f.ops->unmap(first[i], 0x900, DmaDirection::kBidirectional), IsOk());
  std::vector<int> order(kBuffers);
  for (int i = 0; i < kBuffers; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937(7));  // exercises the queue's swap-removal
  for (int i : order) {
    EXPECT_THAT(f.ops->map(gpa_of(i), 0x900, DmaDirection::kBidirectional), HasValue(first[i])) << i;
  }
  EXPECT_EQ(f.fq().revived, static_cast<uint64_t>(kBuffers));
  EXPECT_EQ(f.fq().pending, 0u);
  EXPECT_TRUE(f.sink->calls().empty());
  for (int i = 0; i < kBuffers; ++i) ASSERT_THAT(f.ops->unmap(first[i], 0x900, DmaDirection::kBidirectional), IsOk());
  ASSERT_THAT(f.domain->flush(), IsOk());
  // Every page of every run exactly once: 100 runs of one page, 100 of two.
  std::map<uint64_t, int> want;
  for (int i = 0; i < kBuffers; ++i) {
    const uint64_t run = align_down(first[i].value(), k4K);
    want[run] = 1;
    if (first[i].value() % k4K + 0x900 > k4K) want[run + k4K] = 1;
  }
  EXPECT_EQ(want.size(), 300u);
  EXPECT_EQ(invalidations_per_page(*f.sink), want);
}

TEST(IommuDmaRevival, StrictModeAndDisabledRevivalNeverRevive) {
  {
    IommuDmaFixture f(InvalidationMode::kStrict);
    const DmaAddr d = *f.ops->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice);
    // A failed strict invalidation leaves the run queued: still not revivable.
    f.sink->fail(true);
    EXPECT_THAT(f.ops->unmap(d, k4K, DmaDirection::kToDevice), IsError(DmaErrc::kUnavailable));
    EXPECT_EQ(f.fq().pending, 1u);
    EXPECT_NE(*f.ops->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice), d);
    EXPECT_EQ(f.fq().revived, 0u);
    f.sink->fail(false);
    ASSERT_THAT(f.domain->flush(), IsOk());
  }
  {
    IommuDmaFixture f(InvalidationMode::kLazy, {.revive = false});
    const DmaAddr d = *f.ops->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice);
    ASSERT_THAT(f.ops->unmap(d, k4K, DmaDirection::kToDevice), IsOk());
    EXPECT_NE(*f.ops->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice), d);
    EXPECT_EQ(f.fq().revived, 0u);
    EXPECT_EQ(f.fq().pending, 1u);
  }
}

TEST(IommuDmaRevival, ARunAboveTheDevicesMaskIsNotRevivedForIt) {
  IommuDmaFixture f(InvalidationMode::kLazy);
  // Push the allocator past 1 MiB with live mappings, then free the low ones.
  std::vector<DmaAddr> filler;
  for (uint64_t i = 0; i < 300; ++i) {
    filler.push_back(*f.ops->map(Gpa{0x200000 + i * k4K}, k4K, DmaDirection::kToDevice));
  }
  const Gpa x{0x10000};
  const DmaAddr high = *f.ops->map(x, k4K, DmaDirection::kToDevice);
  ASSERT_GT(high.value(), 0xfffffu);
  for (uint64_t i = 0; i < 10; ++i) ASSERT_THAT(f.ops->unmap(filler[i], k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.domain->flush(), IsOk());
  ASSERT_THAT(f.ops->unmap(high, k4K, DmaDirection::kToDevice), IsOk());

  // A second device of the domain that reaches only the first MiB.
  auto narrow = std::move(IommuDmaOps::create(*f.mem, f.domain, {.dma_mask = 0xfffff, .coherent = f.coherent})).value();
  auto n = narrow->map(x, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(n, IsOk());
  EXPECT_LE(n->value(), 0xfffffu);
  EXPECT_EQ(f.fq().revived, 0u);
  // The device that reaches it still revives it.
  EXPECT_THAT(f.ops->map(x, k4K, DmaDirection::kToDevice), HasValue(high));
  EXPECT_EQ(f.fq().revived, 1u);
  ASSERT_THAT(narrow->unmap(*n, k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.ops->unmap(high, k4K, DmaDirection::kToDevice), IsOk());
  for (uint64_t i = 10; i < filler.size(); ++i) {
    ASSERT_THAT(f.ops->unmap(filler[i], k4K, DmaDirection::kToDevice), IsOk());
  }
}

TEST(IommuDmaRevival, TheDebugCheckerSeesARevivedRunAsANormalMapping) {
  IommuDmaFixture f(InvalidationMode::kLazy);
  DebugDmaOps dbg(*f.ops, "dev");
  const Gpa gpa{0x80000};
  const DmaAddr d = *dbg.map(gpa, 512, DmaDirection::kFromDevice);
  ASSERT_THAT(dbg.unmap(d, 512, DmaDirection::kFromDevice), IsOk());
  EXPECT_EQ(dbg.live_mappings(), 0u);
  EXPECT_THAT(dbg.map(gpa, 512, DmaDirection::kFromDevice), HasValue(d));
  EXPECT_EQ(f.fq().revived, 1u);
  EXPECT_EQ(dbg.live_mappings(), 1u);
  EXPECT_THAT(dbg.unmap(d, 256, DmaDirection::kFromDevice), IsError(DmaErrc::kMisuse));  // size mismatch caught
  ASSERT_THAT(dbg.unmap(d, 512, DmaDirection::kFromDevice), IsOk());
  EXPECT_THAT(dbg.check_teardown(), IsOk());
  EXPECT_EQ(dbg.count(DmaMisuse::kSizeMismatch), 1u);
  EXPECT_EQ(dbg.reports().size(), 1u);
}

}  // namespace
}  // namespace vdma
