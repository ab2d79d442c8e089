// IommuDmaOps: the DMA address is an IOVA that the domain's page table
// translates to the buffer with the direction's permission; unmap clears
// it; strict mode invalidates before the IOVA is reused; lazy mode batches
// by size and by age and never reuses an IOVA before the flush that covers
// it; identity domains; scatter lists; coherent memory; cache hooks of a
// non-coherent device; errors; and the IommuPlatform behind PlatformDma.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <random>
#include <set>

#include "result_matchers.h"
#include "vdma/dma/iommu_dma_ops.h"
#include "vdma/dma/iommu_platform.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t k4K = 4096;
constexpr uint64_t kShared = 16 << 20;

// Records every invalidation and checks, at the time of the call, that the
// page table no longer maps any page of it (unmap clears first).
class RecordingSink final : public InvalidationSink {
 public:
  Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
    std::lock_guard lock(mu_);
    if (fail_) return make_error(DmaErrc::kUnavailable, "back-end did not acknowledge");
    calls.emplace_back(ranges.begin(), ranges.end());
    if (domain != nullptr) {
      for (const auto& r : ranges) {
        for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += k4K) {
          if (domain->translate(Iova(p), Access::kNone)) still_mapped.push_back(p);
        }
      }
    }
    return ok();
  }
  void fail(bool f) {
    std::lock_guard lock(mu_);
    fail_ = f;
  }
  std::vector<std::vector<AddrRange<Iova>>> calls;
  std::vector<uint64_t> still_mapped;
  IommuDmaDomain* domain = nullptr;

 private:
  std::mutex mu_;
  bool fail_ = false;
};

class IommuDmaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mem_ = *GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"},
                                 {Gpa{kShared}, 4 << 20, MemAttr::kShared, "shared"}});
    coherent_ = *CoherentPool::create(*mem_, {Gpa{kShared}, 1 << 20});
  }
  // revive: lazy revival (iommu_dma_revival_test.cc); the tests of the
  // plain flush queue turn it off, since they remap the same buffer.
  void build(InvalidationMode mode, size_t entries = 256, std::vector<IovaRange> allow = {}, bool revive = true) {
    ioas_ = IoAddressSpace::create();
    if (!allow.empty()) {
      ASSERT_THAT(ioas_->allow_iovas(allow), IsOk());
    }
    paging_ = std::move(PagingDomain::create(*ioas_)).value();
    ASSERT_THAT(paging_->attach_device(DeviceId{1}, std::vector<IovaRange>{kMsiWindow}), IsOk());
    auto d = IommuDmaDomain::create(*ioas_, *paging_,
                                    {.mode = mode, .sink = sink_, .flush_queue_entries = entries,
                                     .flush_queue_delay = std::chrono::milliseconds(10),
                                     .clock = [this] { return now_; }, .revive_lazy_unmaps = revive,
                                     .magazine_shards = 1});
    ASSERT_THAT(d, IsOk());
    dom_ = *d;
    sink_->domain = dom_.get();
    auto o = IommuDmaOps::create(*mem_, dom_, {.coherent = coherent_});
    ASSERT_THAT(o, IsOk());
    ops_ = std::move(o).value();
  }
  void TearDown() override {
    ops_.reset();
    dom_.reset();
    paging_.reset();
  }

  std::unique_ptr<GuestMemory> mem_;
  std::shared_ptr<CoherentPool> coherent_;
  std::shared_ptr<RecordingSink> sink_ = std::make_shared<RecordingSink>();
  std::unique_ptr<IoAddressSpace> ioas_;
  std::unique_ptr<PagingDomain> paging_;
  std::shared_ptr<IommuDmaDomain> dom_;
  std::unique_ptr<IommuDmaOps> ops_;
  std::chrono::steady_clock::time_point now_{};
};

TEST_F(IommuDmaOpsTest, MapGivesAnIovaTheTableTranslatesWithTheDirectionsPermission) {
  build(InvalidationMode::kStrict);
  EXPECT_EQ(ops_->kind(), "iommu");
  struct Case {
    DmaDirection dir;
    Access allowed;
    Access denied;
  };
  for (const Case c : {Case{DmaDirection::kToDevice, Access::kRead, Access::kWrite},
                       Case{DmaDirection::kFromDevice, Access::kWrite, Access::kRead},
                       Case{DmaDirection::kBidirectional, Access::kReadWrite, Access::kNone}}) {
    const Gpa gpa{0x123456};
    auto d = ops_->map(gpa, 0x2000, c.dir);
    ASSERT_THAT(d, IsOk());
    EXPECT_NE(d->value(), gpa.value());
    EXPECT_EQ(d->value() % k4K, 0x456u);  // in-page offset kept
    EXPECT_LT(d->value(), IovaAllocator::k4G);
    for (uint64_t off : {uint64_t{0}, uint64_t{0x1fff}}) {
      auto t = paging_->translate(Iova(d->value() + off), c.allowed);
      ASSERT_THAT(t, IsOk());
      EXPECT_EQ(t->gpa, gpa.unchecked_add(off));
      EXPECT_EQ(t->perms, c.allowed);
      if (c.denied != Access::kNone) {
        EXPECT_THAT(paging_->translate(Iova(d->value() + off), c.denied), IsError(IommuErrc::kPermissionFault));
      }
    }
    ASSERT_THAT(ops_->unmap(*d, 0x2000, c.dir), IsOk());
    EXPECT_THAT(paging_->translate(Iova(d->value()), Access::kNone), IsError(IommuErrc::kNotPresent));
    EXPECT_EQ(dom_->mapping_count(), 0u);
  }
}

TEST_F(IommuDmaOpsTest, UnmapOfAnythingButALiveMappingIsRefused) {
  build(InvalidationMode::kStrict);
  auto d = ops_->map(Gpa{0x10000}, 0x3000, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(ops_->unmap(*d, 0x2000, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("not a mapping of its own")));
  EXPECT_THAT(ops_->unmap(DmaAddr{d->value() + 0x1000}, 0x1000, DmaDirection::kToDevice),
              IsError(DmaErrc::kUnknownMapping));
  EXPECT_THAT(ops_->unmap(DmaAddr{0x7000000}, 0x1000, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("dma:0x7000000 + len 0x1000: not mapped")));
  EXPECT_EQ(dom_->mapping_count(), 1u);  // the failed unmaps changed nothing
  EXPECT_TRUE(sink_->calls.empty());
  ASSERT_THAT(ops_->unmap(*d, 0x3000, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(ops_->unmap(*d, 0x3000, DmaDirection::kToDevice), IsError(DmaErrc::kUnknownMapping));
}

TEST_F(IommuDmaOpsTest, StrictInvalidatesBeforeTheIovaIsReused) {
  build(InvalidationMode::kStrict);
  auto d = ops_->map(Gpa{0x10000}, 100, DmaDirection::kFromDevice);
  ASSERT_THAT(d, IsOk());
  ASSERT_THAT(ops_->unmap(*d, 100, DmaDirection::kFromDevice), IsOk());
  ASSERT_EQ(sink_->calls.size(), 1u);
  EXPECT_THAT(sink_->calls[0], ElementsAre(AddrRange<Iova>{Iova(d->value()), k4K}));
  EXPECT_TRUE(sink_->still_mapped.empty());
  EXPECT_EQ(dom_->allocator()->stats().cached, 1u);  // freed after the sink returned
  EXPECT_THAT(ops_->map(Gpa{0x20000}, 100, DmaDirection::kToDevice), HasValue(*d));  // magazine reuse

  // A failed invalidation keeps the IOVA out of the allocator and reports it.
  sink_->fail(true);
  ASSERT_THAT(ops_->unmap(*d, 100, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kUnavailable, AllOf(HasSubstr("stay out of the allocator"),
                                                       HasSubstr("back-end did not acknowledge"))));
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 1u);
  auto other = ops_->map(Gpa{0x20000}, 100, DmaDirection::kToDevice);
  ASSERT_THAT(other, IsOk());
  EXPECT_NE(*other, *d);
  sink_->fail(false);
  // The next successful invalidation retries the pending one too.
  ASSERT_THAT(ops_->unmap(*other, 100, DmaDirection::kToDevice), IsOk());
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 0u);
  EXPECT_EQ(dom_->allocator()->stats().cached, 2u);
}

TEST_F(IommuDmaOpsTest, LazyBatchesBySizeAndNeverReusesBeforeTheFlush) {
  build(InvalidationMode::kLazy, /*entries=*/4, {}, /*revive=*/false);
  // IOVAs unmapped but not yet covered by a sink call: none may be handed
  // out again. A sink call releases exactly the runs it names.
  std::set<uint64_t> quarantined;
  size_t calls_seen = 0;
  auto settle = [&] {
    for (; calls_seen < sink_->calls.size(); ++calls_seen) {
      for (const auto& r : sink_->calls[calls_seen]) {
        for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += k4K) quarantined.erase(p);
      }
    }
  };
  auto map_one = [&](Gpa gpa) {
    auto d = ops_->map(gpa, k4K, DmaDirection::kToDevice);
    EXPECT_THAT(d, IsOk());
    EXPECT_FALSE(quarantined.contains(d->value())) << "IOVA " << d->value() << " reused before its flush";
    return *d;
  };
  auto unmap_one = [&](DmaAddr d) {
    ASSERT_THAT(ops_->unmap(d, k4K, DmaDirection::kToDevice), IsOk());
    // Cleared from the page table at once, invalidated or not.
    EXPECT_THAT(paging_->translate(Iova(d.value()), Access::kNone), IsError(IommuErrc::kNotPresent));
    quarantined.insert(d.value());
    settle();
  };

  std::vector<DmaAddr> first;
  for (uint64_t i = 0; i < 3; ++i) first.push_back(map_one(Gpa{0x10000 + i * k4K}));
  for (DmaAddr d : first) unmap_one(d);
  EXPECT_TRUE(sink_->calls.empty());  // three runs queued, below the batch size
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 3u);
  // The fourth run, on a fresh IOVA, fills the queue: one batch of all four,
  // sorted and merged (first fit from the bottom: pages 1..4).
  const DmaAddr fourth = map_one(Gpa{0x20000});
  for (DmaAddr f : first) EXPECT_NE(fourth, f);
  unmap_one(fourth);
  ASSERT_EQ(sink_->calls.size(), 1u);
  EXPECT_THAT(sink_->calls[0], ElementsAre(AddrRange<Iova>{Iova(k4K), 4 * k4K}));
  EXPECT_TRUE(sink_->still_mapped.empty());
  EXPECT_TRUE(quarantined.empty());
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 0u);
  EXPECT_EQ(dom_->allocator()->stats().cached, 4u);  // freed only now

  // After the flush the batch's IOVAs are reused; newly unmapped ones are
  // quarantined again until the next batch.
  std::set<uint64_t> reused;
  for (int i = 0; i < 6; ++i) {
    const DmaAddr d = map_one(Gpa{0x30000});
    reused.insert(d.value());
    unmap_one(d);
  }
  EXPECT_TRUE(reused.contains(first[0].value()) || reused.contains(first[1].value()) ||
              reused.contains(first[2].value()) || reused.contains(fourth.value()));
  EXPECT_EQ(sink_->calls.size(), 2u);  // 6 more runs: one more batch of 4, 2 pending
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 2u);
  ASSERT_THAT(dom_->flush(), IsOk());
  settle();
  EXPECT_TRUE(quarantined.empty());
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 0u);
}

TEST_F(IommuDmaOpsTest, LazyFlushesByAge) {
  build(InvalidationMode::kLazy, /*entries=*/256, {}, /*revive=*/false);
  auto d = ops_->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  ASSERT_THAT(ops_->unmap(*d, k4K, DmaDirection::kToDevice), IsOk());
  now_ += std::chrono::milliseconds(9);
  ASSERT_THAT(dom_->flush_expired(), IsOk());
  EXPECT_TRUE(sink_->calls.empty());
  EXPECT_NE(*ops_->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice), *d);  // still quarantined
  now_ += std::chrono::milliseconds(1);
  ASSERT_THAT(dom_->flush_expired(), IsOk());
  ASSERT_EQ(sink_->calls.size(), 1u);
  EXPECT_THAT(sink_->calls[0], ElementsAre(AddrRange<Iova>{Iova(d->value()), k4K}));
  EXPECT_THAT(ops_->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice), HasValue(*d));
  // An unmap that finds the oldest queued run expired flushes by itself:
  // the expired run, not the one it just queued.
  auto e = ops_->map(Gpa{0x40000}, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(ops_->unmap(*e, k4K, DmaDirection::kToDevice), IsOk());
  now_ += std::chrono::milliseconds(11);
  ASSERT_THAT(ops_->unmap(*d, k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_EQ(sink_->calls.size(), 2u);
  EXPECT_THAT(sink_->calls[1], ElementsAre(AddrRange<Iova>{Iova(e->value()), k4K}));
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 1u);
}

// An expiry flush takes the runs queued for half of max_delay or longer and
// leaves the younger ones queued and revivable: a mixed read/write workload
// keeps the buffers it maps again (before, each expiry flushed the whole
// queue, and every buffer then missed in the device's IOTLB).
TEST_F(IommuDmaOpsTest, AnExpiryFlushTakesOnlyTheOldRunsAndTheYoungStayRevivable) {
  build(InvalidationMode::kLazy, /*entries=*/256, {}, /*revive=*/true);
  const DmaAddr old_run = *ops_->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(ops_->unmap(old_run, k4K, DmaDirection::kToDevice), IsOk());
  now_ += std::chrono::milliseconds(4);
  const DmaAddr half = *ops_->map(Gpa{0x20000}, k4K, DmaDirection::kFromDevice);
  ASSERT_THAT(ops_->unmap(half, k4K, DmaDirection::kFromDevice), IsOk());
  now_ += std::chrono::milliseconds(3);
  const DmaAddr young = *ops_->map(Gpa{0x30000}, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(ops_->unmap(young, k4K, DmaDirection::kToDevice), IsOk());
  now_ += std::chrono::milliseconds(3);  // old_run 10 ms, half 6 ms, young 3 ms
  ASSERT_THAT(dom_->flush_expired(), IsOk());
  ASSERT_EQ(sink_->calls.size(), 1u);
  std::set<uint64_t> pages;  // the sink gets adjacent runs merged
  for (const AddrRange<Iova>& r : sink_->calls[0]) {
    for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += k4K) pages.insert(p);
  }
  EXPECT_THAT(pages, ElementsAre(std::min(old_run.value(), half.value()), std::max(old_run.value(), half.value())));
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 1u);
  // Nothing else is old enough: no second flush before the young run expires.
  now_ += std::chrono::milliseconds(6);  // young 9 ms
  ASSERT_THAT(dom_->flush_expired(), IsOk());
  EXPECT_EQ(sink_->calls.size(), 1u);
  // The young run comes back as it was, without an invalidation.
  EXPECT_THAT(ops_->map(Gpa{0x30000}, k4K, DmaDirection::kToDevice), HasValue(young));
  EXPECT_EQ(dom_->flush_queue()->stats().revived, 1u);
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 0u);
  ASSERT_THAT(ops_->unmap(young, k4K, DmaDirection::kToDevice), IsOk());
  // Requeued with a fresh age: a flush 10 ms later takes it.
  now_ += std::chrono::milliseconds(10);
  ASSERT_THAT(dom_->flush_expired(), IsOk());
  ASSERT_EQ(sink_->calls.size(), 2u);
  EXPECT_THAT(sink_->calls[1], ElementsAre(AddrRange<Iova>{Iova(young.value()), k4K}));
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 0u);
}

TEST_F(IommuDmaOpsTest, LazyFlushFailureKeepsTheBatch) {
  build(InvalidationMode::kLazy, /*entries=*/2);
  auto a = *ops_->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice);
  auto b = *ops_->map(Gpa{0x20000}, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(ops_->unmap(a, k4K, DmaDirection::kToDevice), IsOk());
  sink_->fail(true);
  EXPECT_THAT(ops_->unmap(b, k4K, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kUnavailable, HasSubstr("batch of 2 IOVA runs")));
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 2u);
  auto c = *ops_->map(Gpa{0x30000}, k4K, DmaDirection::kToDevice);
  EXPECT_NE(c, a);
  EXPECT_NE(c, b);
  sink_->fail(false);
  ASSERT_THAT(dom_->flush(), IsOk());
  EXPECT_EQ(dom_->flush_queue()->stats().pending, 0u);
  ASSERT_THAT(ops_->unmap(c, k4K, DmaDirection::kToDevice), IsOk());
}

TEST_F(IommuDmaOpsTest, ScatterListsMergeIntoOneRun) {
  build(InvalidationMode::kStrict);
  SgEntry sg[] = {{.gpa = Gpa{0x10000}, .len = k4K},      // page aligned
                  {.gpa = Gpa{0x50000}, .len = 2 * k4K},  // joins the first: one DMA segment
                  {.gpa = Gpa{0x60800}, .len = 0x100}};   // offset 0x800: a segment of its own
  auto n = ops_->map_sg(sg, DmaDirection::kFromDevice);
  ASSERT_THAT(n, HasValue(2u));
  EXPECT_EQ(sg[0].dma_len, 3 * k4K);
  EXPECT_EQ(sg[1].dma.value(), sg[0].dma.value() + 3 * k4K + 0x800);
  EXPECT_EQ(sg[1].dma_len, 0x100u);
  EXPECT_EQ(sg[2].dma_len, 0u);
  EXPECT_THAT(paging_->translate(Iova(sg[0].dma.value() + k4K), Access::kWrite),
              HasValue(::testing::Field(&PageTranslation::gpa, Gpa{0x50000})));
  EXPECT_THAT(paging_->translate(Iova(sg[1].dma.value()), Access::kWrite),
              HasValue(::testing::Field(&PageTranslation::gpa, Gpa{0x60800})));
  EXPECT_THAT(ops_->unmap(sg[0].dma, k4K, DmaDirection::kFromDevice),
              IsErrorWith(DmaErrc::kUnknownMapping, HasSubstr("unmap_sg")));
  ASSERT_THAT(ops_->unmap_sg(sg, DmaDirection::kFromDevice), IsOk());
  EXPECT_EQ(dom_->mapping_count(), 0u);
  ASSERT_EQ(sink_->calls.size(), 1u);
  EXPECT_THAT(sink_->calls[0], ElementsAre(AddrRange<Iova>{Iova(sg[0].dma.value()), 4 * k4K}));
  EXPECT_THAT(ops_->unmap_sg(sg, DmaDirection::kFromDevice), IsError(DmaErrc::kUnknownMapping));
  // A bad entry maps nothing.
  SgEntry bad[] = {{.gpa = Gpa{0x10000}, .len = k4K}, {.gpa = Gpa{0x7fff0000}, .len = 8}};
  EXPECT_THAT(ops_->map_sg(bad, DmaDirection::kToDevice), IsErrorWith(MemErrc::kNotMapped, HasSubstr("scatter entry 1")));
  EXPECT_EQ(dom_->mapping_count(), 0u);
}

TEST_F(IommuDmaOpsTest, CoherentMemoryIsMappedThroughTheIommu) {
  build(InvalidationMode::kStrict);
  auto buf = ops_->alloc_coherent(5000);
  ASSERT_THAT(buf, IsOk());
  EXPECT_TRUE(coherent_->window().contains(buf->cpu));
  EXPECT_NE(buf->dma.value(), buf->cpu.value());
  auto t = paging_->translate(Iova(buf->dma.value() + 0x1800), Access::kReadWrite);
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ(t->gpa, buf->cpu.unchecked_add(0x1800));
  ASSERT_THAT(ops_->free_coherent(*buf), IsOk());
  EXPECT_EQ(dom_->mapping_count(), 0u);
  EXPECT_EQ(sink_->calls.size(), 1u);
}

TEST_F(IommuDmaOpsTest, ErrorsNameTheProblem) {
  // 4 pages of IOVA space (page 0 is never used).
  build(InvalidationMode::kStrict, 256, {{Iova(0), Iova(0x4fff)}});
  EXPECT_EQ(ops_->max_mapping_size(), 0x4000u);
  EXPECT_THAT(ops_->map(Gpa{0x1000}, 0, DmaDirection::kToDevice), IsError(BaseErrc::kInvalidArgument));
  EXPECT_THAT(ops_->map(Gpa{0x7f000000}, 16, DmaDirection::kToDevice, DmaAttrs::kNoWarn),
              IsErrorWith(MemErrc::kNotMapped, HasSubstr("not guest memory")));
  EXPECT_THAT(ops_->map(Gpa{UINT64_MAX - 4}, 16, DmaDirection::kToDevice, DmaAttrs::kNoWarn),
              IsError(BaseErrc::kOverflow));
  EXPECT_THAT(ops_->map(Gpa{0x10800}, 0x4000, DmaDirection::kToDevice, DmaAttrs::kNoWarn),
              IsErrorWith(DmaErrc::kTooLarge, HasSubstr("0x4000 bytes")));
  auto a = ops_->map(Gpa{0x10000}, 0x2000, DmaDirection::kToDevice);
  ASSERT_THAT(a, IsOk());
  EXPECT_THAT(ops_->map(Gpa{0x20000}, 0x3000, DmaDirection::kToDevice, DmaAttrs::kNoWarn),
              IsErrorWith(DmaErrc::kIovaExhausted,
                          AllOf(HasSubstr("no free run of 0x4000 bytes aligned to 0x4000"),
                                HasSubstr("0x2000 bytes free in 2 ranges, largest 0x1000"))));
  ASSERT_THAT(ops_->unmap(*a, 0x2000, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(IommuDmaOps::create(*mem_, dom_, {.dma_mask = 0x1234, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("0x1234 is not of the form")));
  EXPECT_THAT(IommuDmaOps::create(*mem_, dom_, {.coherent = nullptr}), IsError(DmaErrc::kInvalidConfig));
  EXPECT_THAT(IommuDmaOps::create(*mem_, dom_, {.coherent = coherent_, .coherent_device = false}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("cache-maintenance")));
}

TEST_F(IommuDmaOpsTest, DmaMaskLimitsIovas) {
  build(InvalidationMode::kStrict, 256, {{Iova(0), Iova(0xffffff)}, {Iova(0x100000000), Iova(0x1ffffffff)}});
  auto small = IommuDmaOps::create(*mem_, dom_, {.dma_mask = 0xfffff, .coherent = coherent_});
  ASSERT_THAT(small, IsOk());
  EXPECT_EQ((*small)->max_mapping_size(), 0xff000u);
  std::vector<DmaAddr> got;
  for (int i = 0; i < 255; ++i) {
    auto d = (*small)->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice);
    ASSERT_THAT(d, IsOk());
    EXPECT_LE(d->value(), 0xfffffu);
    got.push_back(*d);
  }
  EXPECT_THAT((*small)->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice, DmaAttrs::kNoWarn),
              IsErrorWith(DmaErrc::kIovaExhausted, HasSubstr("at or below iova:0xfffff")));
  for (DmaAddr d : got) ASSERT_THAT((*small)->unmap(d, k4K, DmaDirection::kToDevice), IsOk());
}

class Recorder final : public CacheMaintenance {
 public:
  void writeback(Gpa gpa, uint64_t len) override { ops.push_back(fmt::format("W {} {:#x}", gpa, len)); }
  void invalidate(Gpa gpa, uint64_t len) override { ops.push_back(fmt::format("I {} {:#x}", gpa, len)); }
  std::vector<std::string> ops;
};

TEST_F(IommuDmaOpsTest, TheDmaWindowIsReservedInTheIoas) {
  // The DMA API takes [1 MiB, 2 MiB); the rest of the IOAS stays for other users.
  ioas_ = IoAddressSpace::create();
  paging_ = std::move(PagingDomain::create(*ioas_)).value();
  ASSERT_THAT(ioas_->map(Gpa{0x40000}, k4K, Access::kRead, Iova(0x300000)), IsOk());
  // A window over an existing IOAS mapping is refused, naming it.
  EXPECT_THAT(IommuDmaDomain::create(*ioas_, *paging_, {.window = {{Iova(0x200000), Iova(0x3fffff)}}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("mapping iova:0x300000")));
  EXPECT_THAT(IommuDmaDomain::create(*ioas_, *paging_, {.window = {{Iova(0x100800), Iova(0x1fffff)}}}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("whole 4 KiB pages")));
  auto d = IommuDmaDomain::create(*ioas_, *paging_, {.sink = sink_, .window = {{Iova(0x100000), Iova(0x1fffff)}}});
  ASSERT_THAT(d, IsOk());
  dom_ = std::move(d).value();
  EXPECT_THAT(dom_->window(), ElementsAre(IovaRange{Iova(0x100000), Iova(0x1fffff)}));
  ops_ = std::move(IommuDmaOps::create(*mem_, dom_, {.coherent = coherent_})).value();
  EXPECT_EQ(ops_->max_mapping_size(), 0x100000u);
  auto m = ops_->map(Gpa{0x10000}, 0x1800, DmaDirection::kBidirectional);
  ASSERT_THAT(m, IsOk());
  EXPECT_GE(m->value(), 0x100000u);
  EXPECT_LT(m->value(), 0x200000u);
  // The page table maps it; the IOAS does not list it and cannot map over it.
  EXPECT_THAT(paging_->translate(Iova(m->value() + 0x1000), Access::kWrite),
              HasValue(::testing::Field(&PageTranslation::gpa, Gpa{0x11000})));
  EXPECT_EQ(ioas_->mapping_count(), 1u);
  EXPECT_EQ(dom_->mapping_count(), 1u);
  EXPECT_THAT(ioas_->map(Gpa{0x50000}, k4K, Access::kRead, Iova(m->value())), IsError(IommuErrc::kReserved));
  auto elsewhere = ioas_->map(Gpa{0x50000}, k4K, Access::kRead);  // "don't care" avoids the window
  ASSERT_THAT(elsewhere, IsOk());
  EXPECT_FALSE(dom_->window().front().contains(*elsewhere));
  EXPECT_THAT(paging_->translate(*elsewhere, Access::kRead), HasValue(::testing::Field(&PageTranslation::gpa, Gpa{0x50000})));
  ASSERT_THAT(ops_->unmap(*m, 0x1800, DmaDirection::kBidirectional), IsOk());
  EXPECT_THAT(paging_->translate(Iova(m->value()), Access::kNone), IsError(IommuErrc::kNotPresent));
  EXPECT_EQ(ioas_->mapping_count(), 2u);  // the IOAS's own mappings are untouched
  // Destroying the DMA domain gives the window back.
  ops_.reset();
  dom_.reset();
  EXPECT_THAT(ioas_->map(Gpa{0x50000}, k4K, Access::kRead, Iova(0x150000)), IsOk());
}

TEST_F(IommuDmaOpsTest, ManyLiveMappingsSurviveChurn) {
  // Thousands of live mappings (the live table grows several times) unmapped
  // and remapped in random order; each unmap must find exactly its own.
  build(InvalidationMode::kLazy, 64);
  std::mt19937_64 rng(7);
  struct Live {
    DmaAddr dma;
    Gpa gpa;
    uint64_t len;
  };
  std::vector<Live> live;
  for (int round = 0; round < 3; ++round) {
    while (live.size() < 3000) {
      const Gpa gpa{(rng() % 0xf00000) & ~uint64_t{7}};
      const uint64_t len = 1 + rng() % 0x3000;
      auto d = ops_->map(gpa, len, DmaDirection::kToDevice);
      ASSERT_THAT(d, IsOk());
      live.push_back({*d, gpa, len});
    }
    EXPECT_EQ(dom_->mapping_count(), live.size());
    std::shuffle(live.begin(), live.end(), rng);
    for (size_t i = 0; i < 2000; ++i) {
      const Live m = live.back();
      live.pop_back();
      auto t = dom_->translate(Iova(m.dma.value()), Access::kRead);
      ASSERT_THAT(t, IsOk());
      ASSERT_EQ(t->gpa, m.gpa);
      if (m.len > 1) {
        ASSERT_THAT(ops_->unmap(m.dma, m.len - 1, DmaDirection::kToDevice), IsError(DmaErrc::kUnknownMapping));
      }
      ASSERT_THAT(ops_->unmap(m.dma, m.len, DmaDirection::kToDevice), IsOk());
      ASSERT_THAT(dom_->translate(Iova(m.dma.value()), Access::kNone), IsError(IommuErrc::kNotPresent));
    }
    // The survivors are still found after all that deletion.
    for (const Live& m : live) {
      ASSERT_THAT(dom_->translate(Iova(m.dma.value()), Access::kRead),
                  HasValue(::testing::Field(&PageTranslation::gpa, m.gpa)));
    }
  }
  for (const Live& m : live) ASSERT_THAT(ops_->unmap(m.dma, m.len, DmaDirection::kToDevice), IsOk());
  EXPECT_EQ(dom_->mapping_count(), 0u);
  ASSERT_THAT(dom_->flush(), IsOk());
  EXPECT_TRUE(sink_->still_mapped.empty());
}

TEST_F(IommuDmaOpsTest, NonCoherentDeviceGetsTheHooksOnTheGpaBehindTheIova) {
  build(InvalidationMode::kStrict);
  auto rec = std::make_shared<Recorder>();
  auto o = IommuDmaOps::create(*mem_, dom_, {.coherent = coherent_, .coherent_device = false, .cache = rec});
  ASSERT_THAT(o, IsOk());
  IommuDmaOps& ops = **o;
  EXPECT_TRUE(ops.need_sync(DmaAddr{0}));
  EXPECT_FALSE(ops_->need_sync(DmaAddr{0}));
  auto d = ops.map(Gpa{0x10100}, 0x200, DmaDirection::kBidirectional);
  ASSERT_THAT(d, IsOk());
  ASSERT_THAT(ops.sync_for_cpu(DmaAddr{d->value() + 0x10}, 0x20, DmaDirection::kFromDevice), IsOk());
  ASSERT_THAT(ops.sync_for_device(*d, 0x200, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(ops.unmap(*d, 0x200, DmaDirection::kBidirectional), IsOk());
  EXPECT_THAT(rec->ops, ElementsAre("W gpa:0x10100 0x200", "I gpa:0x10100 0x200", "I gpa:0x10110 0x20",
                                    "W gpa:0x10100 0x200", "I gpa:0x10100 0x200"));
  EXPECT_THAT(ops.sync_for_cpu(*d, 0x200, DmaDirection::kFromDevice), IsError(DmaErrc::kUnknownMapping));
  // A coherent device: syncs are no-ops.
  EXPECT_THAT(ops_->sync_for_cpu(DmaAddr{0x12345000}, 16, DmaDirection::kFromDevice), IsOk());
}

TEST_F(IommuDmaOpsTest, IdentityDomainPassesGpasThrough) {
  IdentityDomain identity;
  ASSERT_THAT(identity.attach_device(DeviceId{1}, std::vector<IovaRange>{{Iova(0x800000), Iova(0x8fffff)}}), IsOk());
  auto dom = IommuDmaDomain::create_identity(identity);
  // The coherent pool ([16 MiB, 17 MiB)) is where rings come from, with
  // dma == gpa: a device that cannot reach all of it is refused up front.
  EXPECT_THAT(IommuDmaOps::create(*mem_, dom, {.dma_mask = 0xffffff, .coherent = coherent_}),
              IsErrorWith(DmaErrc::kInvalidConfig,
                          HasSubstr("coherent window gpa:0x1000000 + len 0x100000 lies beyond the DMA mask 0xffffff")));
  auto over_reserved = *CoherentPool::create(*mem_, {Gpa{0x8ff000}, 0x2000});
  EXPECT_THAT(IommuDmaOps::create(*mem_, dom, {.coherent = over_reserved}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("iova:0x8ff000 is not covered by the identity domain")));
  auto o = IommuDmaOps::create(*mem_, dom, {.dma_mask = 0x1ffffff, .coherent = coherent_});
  ASSERT_THAT(o, IsOk());
  IommuDmaOps& ops = **o;
  EXPECT_EQ(ops.kind(), "iommu-identity");
  EXPECT_THAT(ops.map(Gpa{0x12345}, 0x3000, DmaDirection::kToDevice), HasValue(DmaAddr{0x12345}));
  EXPECT_THAT(ops.unmap(DmaAddr{0x12345}, 0x3000, DmaDirection::kToDevice), IsOk());
  // The device's reserved region is not translated.
  EXPECT_THAT(ops.map(Gpa{0x7ff000}, 0x2000, DmaDirection::kToDevice, DmaAttrs::kNoWarn),
              IsErrorWith(DmaErrc::kNotCovered, HasSubstr("iova:0x800000 is not covered by the identity domain")));
  auto low_pool = *CoherentPool::create(*mem_, {Gpa{0x80000}, 0x10000});
  auto beyond = IommuDmaOps::create(*mem_, dom, {.dma_mask = 0xfffff, .coherent = low_pool});
  ASSERT_THAT(beyond, IsOk());
  EXPECT_THAT((*beyond)->map(Gpa{0xff000}, 0x2000, DmaDirection::kToDevice, DmaAttrs::kNoWarn),
              IsError(DmaErrc::kBeyondMask));
  auto buf = ops.alloc_coherent(k4K);
  ASSERT_THAT(buf, IsOk());
  EXPECT_EQ(buf->dma.value(), buf->cpu.value());
  EXPECT_TRUE(coherent_->window().contains(buf->cpu));
  ASSERT_THAT(ops.free_coherent(*buf), IsOk());
  SgEntry sg[] = {{.gpa = Gpa{0x10000}, .len = 8}, {.gpa = Gpa{0x20000}, .len = 8}};
  EXPECT_THAT(ops.map_sg(sg, DmaDirection::kToDevice), HasValue(2u));
  EXPECT_EQ(sg[1].dma, DmaAddr{0x20000});
  ASSERT_THAT(ops.unmap_sg(sg, DmaDirection::kToDevice), IsOk());
}

TEST(IommuPlatform, BuildsIommuOpsForTheTopologysDomains) {
  auto mem = *GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"},
                                   {Gpa{kShared}, 4 << 20, MemAttr::kShared, "shared"}});
  auto topo = parse_topology(R"({
      "coherent_pool": {"base": "0x1000000", "size": "0x100000"},
      "devices": [
        {"id": "gpu0", "kind": "iommu", "iommu_domain": 1, "dma_mask": "0xffffffff"},
        {"id": "net0", "kind": "iommu", "iommu_domain": 1},
        {"id": "nic1", "kind": "iommu", "iommu_domain": 2}]})");
  ASSERT_THAT(topo, IsOk());
  auto sink = std::make_shared<RecordingSink>();
  IommuPlatform iommu({.domain = {.mode = InvalidationMode::kStrict, .sink = sink}, .identity_domains = {2}});
  auto platform = PlatformDma::create(*mem, *topo, {.iommu = iommu.factory()});
  ASSERT_THAT(platform, IsOk());
  DmaOps* gpu = *(*platform)->platform_ops("gpu0");
  DmaOps* net = *(*platform)->platform_ops("net0");
  DmaOps* nic = *(*platform)->platform_ops("nic1");
  EXPECT_EQ(gpu->kind(), "iommu");
  EXPECT_EQ(nic->kind(), "iommu-identity");
  // gpu0 and net0 share domain 1: one IOVA space, distinct IOVAs.
  auto a = gpu->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice);
  auto b = net->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(iommu.dma_domain(1)->mapping_count(), 2u);
  EXPECT_THAT(iommu.domain(1)->translate(Iova(a->value()), Access::kRead),
              HasValue(::testing::Field(&PageTranslation::gpa, Gpa{0x10000})));
  EXPECT_EQ(iommu.domain(1)->devices().size(), 2u);
  // The MSI window is reserved in the IOAS.
  EXPECT_THAT(iommu.ioas(1)->map(Gpa{0x10000}, k4K, Access::kRead, Iova(0xfee00000)), IsError(IommuErrc::kReserved));
  EXPECT_THAT(nic->map(Gpa{0x10000}, k4K, DmaDirection::kToDevice), HasValue(DmaAddr{0x10000}));
  ASSERT_THAT(gpu->unmap(*a, k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(net->unmap(*b, k4K, DmaDirection::kToDevice), IsOk());
  EXPECT_EQ(sink->calls.size(), 2u);
  // Rings come from the platform's coherent pool, mapped in domain 1.
  auto ring = gpu->alloc_coherent(8192);
  ASSERT_THAT(ring, IsOk());
  EXPECT_TRUE((*platform)->coherent_pool()->window().contains(ring->cpu));
  ASSERT_THAT(gpu->free_coherent(*ring), IsOk());
}

TEST(IommuPlatform, NeedsACoherentPool) {
  auto mem = *GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"}});
  auto topo = parse_topology(R"({"devices": [{"id": "gpu0", "kind": "iommu", "iommu_domain": 1}]})");
  ASSERT_THAT(topo, IsOk());
  IommuPlatform iommu;
  EXPECT_THAT(PlatformDma::create(*mem, *topo, {.iommu = iommu.factory()}),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("devices[0] (gpu0): IOMMU DMA ops need the top-level "
                                                             "coherent_pool")));
}

}  // namespace
}  // namespace vdma
