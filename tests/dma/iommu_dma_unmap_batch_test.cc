// DmaOps::unmap_batch: the default loops over unmap() and reports the first
// failing entry; IommuDmaOps clears every page-table entry first and then
// releases all runs at once, so strict mode makes ONE sink call with the
// sorted, merged ranges; an entry that is not a live mapping is reported and
// left mapped (its IOVA is not freed) while the others are unmapped.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "iommu_dma_fixture.h"
#include "result_matchers.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t k4K = 4096;

std::set<uint64_t> pages_of(const std::vector<AddrRange<Iova>>& call) {
  std::set<uint64_t> out;
  for (const auto& r : call) {
    for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += k4K) out.insert(p);
  }
  return out;
}

bool sorted_disjoint_unmerged_gaps(const std::vector<AddrRange<Iova>>& call) {
  for (size_t i = 1; i < call.size(); ++i) {
    if (call[i - 1].start.value() + call[i - 1].len >= call[i].start.value()) return false;  // overlap or mergeable
  }
  return true;
}

// A virtio-blk request: header (read), data (written by the device), status.
struct Chain {
  DmaAddr hdr, data, status;
  std::vector<DmaUnmapRequest> requests() const {
    return {{hdr, 16, DmaDirection::kToDevice}, {data, k4K, DmaDirection::kFromDevice},
            {status, 1, DmaDirection::kFromDevice}};
  }
};

Chain map_chain(DmaOps& ops, uint64_t base) {
  return {*ops.map(Gpa{base}, 16, DmaDirection::kToDevice),
          *ops.map(Gpa{base + 0x10000}, k4K, DmaDirection::kFromDevice),
          *ops.map(Gpa{base + 0x20010}, 1, DmaDirection::kFromDevice)};
}

TEST(IommuDmaUnmapBatch, StrictChainUnmapIsOneSinkCallWithAllItsRanges) {
  IommuDmaFixture f(InvalidationMode::kStrict);
  // Live spacers between the chain's buffers, so its runs cannot merge.
  const DmaAddr hdr = *f.ops->map(Gpa{0x100000}, 16, DmaDirection::kToDevice);
  const DmaAddr spacer1 = *f.ops->map(Gpa{0x300000}, k4K, DmaDirection::kToDevice);
  const DmaAddr data = *f.ops->map(Gpa{0x110000}, k4K, DmaDirection::kFromDevice);
  const DmaAddr spacer2 = *f.ops->map(Gpa{0x301000}, k4K, DmaDirection::kToDevice);
  const DmaAddr status = *f.ops->map(Gpa{0x120010}, 1, DmaDirection::kFromDevice);
  const Chain c{hdr, data, status};

  ASSERT_THAT(f.ops->unmap_batch(c.requests()), IsOk());
  ASSERT_EQ(f.sink->calls().size(), 1u);
  const auto call = f.sink->calls()[0];
  EXPECT_EQ(call.size(), 3u);
  EXPECT_EQ(pages_of(call), (std::set<uint64_t>{align_down(hdr.value(), k4K), align_down(data.value(), k4K),
                                                align_down(status.value(), k4K)}));
  EXPECT_TRUE(sorted_disjoint_unmerged_gaps(call));
  EXPECT_TRUE(f.sink->still_mapped().empty());
  EXPECT_EQ(f.domain->mapping_count(), 2u);  // the spacers
  EXPECT_EQ(f.fq().runs_freed, 3u);
  EXPECT_EQ(f.fq().pending, 0u);
  // The spacers were not touched.
  EXPECT_THAT(f.paging->translate(Iova(spacer1.value()), Access::kRead), IsOk());
  EXPECT_THAT(f.paging->translate(Iova(spacer2.value()), Access::kRead), IsOk());

  // Unmapped one by one, the same chain costs three sink calls.
  const Chain c2 = map_chain(*f.ops, 0x400000);
  for (const DmaUnmapRequest& q : c2.requests()) ASSERT_THAT(f.ops->unmap(q.addr, q.len, q.dir), IsOk());
  EXPECT_EQ(f.sink->calls().size(), 4u);
}

TEST(IommuDmaUnmapBatch, AdjacentRunsAreMergedIntoOneRange) {
  IommuDmaFixture f(InvalidationMode::kStrict);
  const Chain c = map_chain(*f.ops, 0x100000);  // fresh allocator: pages 1, 2, 3
  ASSERT_THAT(f.ops->unmap_batch(c.requests()), IsOk());
  ASSERT_EQ(f.sink->calls().size(), 1u);
  EXPECT_THAT(f.sink->calls()[0], ElementsAre(AddrRange<Iova>{Iova(k4K), 3 * k4K}));
}

TEST(IommuDmaUnmapBatch, AFailingMiddleEntryIsReportedAndLeftMapped) {
  IommuDmaFixture f(InvalidationMode::kStrict);
  const Chain c = map_chain(*f.ops, 0x100000);
  std::vector<DmaUnmapRequest> reqs = c.requests();
  reqs[1].len = 0x800;  // not the mapped length
  EXPECT_THAT(f.ops->unmap_batch(reqs),
              IsErrorWith(DmaErrc::kUnknownMapping,
                          AllOf(HasSubstr("unmap_batch entry 1 of 3"), HasSubstr("not a mapping of its own"))));
  ASSERT_EQ(f.sink->calls().size(), 1u);
  EXPECT_EQ(pages_of(f.sink->calls()[0]),
            (std::set<uint64_t>{align_down(c.hdr.value(), k4K), align_down(c.status.value(), k4K)}));
  // The data buffer is still mapped, live and not freed.
  EXPECT_EQ(f.domain->mapping_count(), 1u);
  auto t = f.paging->translate(Iova(c.data.value()), Access::kWrite);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->gpa, Gpa{0x110000});
  EXPECT_EQ(f.fq().runs_freed, 2u);
  for (int i = 0; i < 4; ++i) {
    auto m = f.ops->map(Gpa{0x500000 + i * k4K}, k4K, DmaDirection::kToDevice);
    ASSERT_THAT(m, IsOk());
    EXPECT_NE(align_down(m->value(), k4K), align_down(c.data.value(), k4K));
  }
  ASSERT_THAT(f.ops->unmap(c.data, k4K, DmaDirection::kFromDevice), IsOk());

  // The same entry twice: the second is "not mapped", the first is unmapped once.
  const DmaAddr d = *f.ops->map(Gpa{0x600000}, k4K, DmaDirection::kToDevice);
  const size_t calls = f.sink->calls().size();
  const DmaUnmapRequest twice[] = {{d, k4K, DmaDirection::kToDevice}, {d, k4K, DmaDirection::kToDevice}};
  EXPECT_THAT(f.ops->unmap_batch(twice),
              IsErrorWith(DmaErrc::kUnknownMapping, AllOf(HasSubstr("entry 1 of 2"), HasSubstr("not mapped"))));
  ASSERT_EQ(f.sink->calls().size(), calls + 1);
  EXPECT_THAT(f.sink->calls().back(), ElementsAre(AddrRange<Iova>{Iova(d.value()), k4K}));
}

TEST(IommuDmaUnmapBatch, AFailedInvalidationKeepsEveryRunOutOfTheAllocator) {
  IommuDmaFixture f(InvalidationMode::kStrict);
  const Chain c = map_chain(*f.ops, 0x100000);
  f.sink->fail(true);
  EXPECT_THAT(f.ops->unmap_batch(c.requests()),
              IsErrorWith(DmaErrc::kUnavailable,
                          AllOf(HasSubstr("a batch of 3 IOVA runs in 1 ranges"),
                                HasSubstr("stay out of the allocator"))));
  EXPECT_EQ(f.fq().pending, 3u);
  EXPECT_EQ(f.fq().failed_flushes, 1u);
  EXPECT_EQ(f.domain->mapping_count(), 0u);
  const std::set<uint64_t> quarantined{c.hdr.value(), c.data.value(), align_down(c.status.value(), k4K)};
  const DmaAddr fresh = *f.ops->map(Gpa{0x500000}, k4K, DmaDirection::kToDevice);
  EXPECT_FALSE(quarantined.contains(fresh.value()));
  f.sink->fail(false);
  ASSERT_THAT(f.domain->flush(), IsOk());
  EXPECT_EQ(f.fq().pending, 0u);
  EXPECT_EQ(f.fq().runs_freed, 3u);
  ASSERT_THAT(f.ops->unmap(fresh, k4K, DmaDirection::kToDevice), IsOk());
}

TEST(IommuDmaUnmapBatch, LazyQueuesTheWholeChainAndKeepsItRevivable) {
  IommuDmaFixture f(InvalidationMode::kLazy, {.flush_queue_entries = 4});
  const Chain c = map_chain(*f.ops, 0x100000);
  ASSERT_THAT(f.ops->unmap_batch(c.requests()), IsOk());
  EXPECT_TRUE(f.sink->calls().empty());
  EXPECT_EQ(f.fq().pending, 3u);
  EXPECT_THAT(f.ops->map(Gpa{0x110000}, k4K, DmaDirection::kFromDevice), HasValue(c.data));
  EXPECT_EQ(f.fq().revived, 1u);
  ASSERT_THAT(f.ops->unmap(c.data, k4K, DmaDirection::kFromDevice), IsOk());
  EXPECT_EQ(f.fq().pending, 3u);
  // A fourth queued run reaches the size limit: one batch of all four.
  const DmaAddr d = *f.ops->map(Gpa{0x700000}, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(f.ops->unmap(d, k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_EQ(f.sink->calls().size(), 1u);
  EXPECT_EQ(pages_of(f.sink->calls()[0]).size(), 4u);
}

// The default implementation, seen through a DmaOps whose unmap fails on demand.
class FlakyDmaOps final : public DmaOps {
 public:
  Result<DmaAddr> map(Gpa gpa, uint64_t, DmaDirection, DmaAttrs) override { return DmaAddr(gpa.value()); }
  Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs) override {
    calls.push_back({addr, len, dir});
    skipped_sync.push_back(has(attrs, DmaAttrs::kSkipCpuSync));
    if (addr == fail_at) return make_error(DmaErrc::kUnknownMapping, "unmap {}: unknown", addr);
    return ok();
  }
  Result<void> sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) override {
    syncs.push_back({addr, len, dir});
    return ok();
  }
  Result<void> sync_for_device(DmaAddr, uint64_t, DmaDirection) override { return ok(); }
  Result<CoherentBuffer> alloc_coherent(uint64_t) override { return make_error(DmaErrc::kPoolFull, "none"); }
  Result<void> free_coherent(const CoherentBuffer&) override { return ok(); }
  uint64_t max_mapping_size() const override { return UINT64_MAX; }
  bool need_sync(DmaAddr) const override { return false; }

  struct Call {
    DmaAddr addr;
    uint64_t len;
    DmaDirection dir;
    bool operator==(const Call&) const = default;
  };
  std::vector<Call> calls;
  std::vector<bool> skipped_sync;  // per unmap() call: kSkipCpuSync given
  std::vector<Call> syncs;         // sync_for_cpu() calls
  DmaAddr fail_at{0x2000};
};

TEST(DmaOpsUnmapBatch, TheDefaultUnmapsEveryEntryInOrderAndReportsTheFirstFailure) {
  FlakyDmaOps ops;
  const DmaUnmapRequest reqs[] = {{DmaAddr{0x1000}, 16, DmaDirection::kToDevice},
                                  {DmaAddr{0x2000}, 4096, DmaDirection::kFromDevice},
                                  {DmaAddr{0x3000}, 1, DmaDirection::kFromDevice}};
  EXPECT_THAT(ops.unmap_batch(reqs),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("unmap_batch entry 1 of 3: unmap dma:0x2000: unknown")));
  using C = FlakyDmaOps::Call;
  EXPECT_THAT(ops.calls, ElementsAre(C{DmaAddr{0x1000}, 16, DmaDirection::kToDevice},
                                     C{DmaAddr{0x2000}, 4096, DmaDirection::kFromDevice},
                                     C{DmaAddr{0x3000}, 1, DmaDirection::kFromDevice}));
  ops.calls.clear();
  EXPECT_THAT(ops.unmap_batch({}), IsOk());
  EXPECT_TRUE(ops.calls.empty());
}

// An entry whose device wrote less than the whole buffer: sync_for_cpu() of
// exactly the written bytes (none when 0), then unmap() with kSkipCpuSync, so
// nothing past them moves. Entries the device reads, or written in full,
// unmap as before.
TEST(DmaOpsUnmapBatch, TheDefaultSyncsOnlyTheWrittenBytesThenUnmapsWithoutSync) {
  FlakyDmaOps ops;
  ops.fail_at = DmaAddr{0xdead000};
  const DmaUnmapRequest reqs[] = {
      {.addr = DmaAddr{0x1000}, .len = 16, .dir = DmaDirection::kToDevice, .written = 0},
      {.addr = DmaAddr{0x2000}, .len = 4096, .dir = DmaDirection::kFromDevice, .written = 100},
      {.addr = DmaAddr{0x3000}, .len = 1, .dir = DmaDirection::kFromDevice, .written = 0},
      {.addr = DmaAddr{0x4000}, .len = 512, .dir = DmaDirection::kBidirectional, .written = 512},
      {.addr = DmaAddr{0x5000}, .len = 512, .dir = DmaDirection::kFromDevice}};
  ASSERT_THAT(ops.unmap_batch(reqs), IsOk());
  using C = FlakyDmaOps::Call;
  EXPECT_THAT(ops.syncs, ElementsAre(C{DmaAddr{0x2000}, 100, DmaDirection::kFromDevice}));
  EXPECT_EQ(ops.calls.size(), 5u);
  EXPECT_THAT(ops.skipped_sync, ElementsAre(false, true, true, false, false));
}

}  // namespace
}  // namespace vdma
