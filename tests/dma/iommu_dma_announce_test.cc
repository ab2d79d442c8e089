// IommuDomainConfig::announce_maps: after map(), map_sg() and
// alloc_coherent() have put pages in the page table, and before they
// return, the sink's mapped() gets exactly those pages (IOVA, length, Gpa,
// permission by direction), with the domain lock released (the recording
// sink translates through the domain inside mapped()). Without the option
// nothing is announced, and unmaps are never announced. In lazy mode a run
// revived from the flush queue is not announced again (never invalidated,
// the device still has its translation); a new IOVA after a flush is.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "iommu_dma_fixture.h"
#include "result_matchers.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t k4K = 4096;

TEST(IommuDmaAnnounce, MapAnnouncesItsPagesWithThePermissionOfItsDirection) {
  IommuDmaFixture f(InvalidationMode::kStrict, {.announce_maps = true});
  struct Case {
    Gpa gpa;
    uint64_t len;
    DmaDirection dir;
    Access perms;
    uint64_t pages;
  };
  const Case cases[] = {{Gpa{0x100010}, 16, DmaDirection::kToDevice, Access::kRead, 1},
                        {Gpa{0x200000}, 4096, DmaDirection::kFromDevice, Access::kWrite, 1},
                        {Gpa{0x300ff0}, 0x20, DmaDirection::kBidirectional, Access::kReadWrite, 2},
                        {Gpa{0x400000}, 3 * k4K, DmaDirection::kToDevice, Access::kRead, 3}};
  for (const Case& c : cases) {
    const size_t before = f.sink->announced().size();
    const DmaAddr d = *f.ops->map(c.gpa, c.len, c.dir);
    const auto a = f.sink->announced();
    ASSERT_EQ(a.size(), before + 1) << c.gpa.value();
    const MappedPages& p = a.back().pages;
    EXPECT_EQ(p.iova.value(), align_down(d.value(), k4K));
    EXPECT_EQ(p.len, c.pages * k4K);
    EXPECT_EQ(p.gpa.value(), align_down(c.gpa.value(), k4K));
    EXPECT_EQ(p.perms, c.perms);
    EXPECT_TRUE(a.back().present) << "announced before the page table had it";
    ASSERT_THAT(f.ops->unmap(d, c.len, c.dir), IsOk());
    EXPECT_EQ(f.sink->announced().size(), before + 1) << "an unmap was announced";
  }
}

TEST(IommuDmaAnnounce, LazyModeAnnouncesNewIovasButNotARevivedRun) {
  IommuDmaFixture f(InvalidationMode::kLazy, {.announce_maps = true});
  const DmaAddr d = *f.ops->map(Gpa{0x200000}, k4K, DmaDirection::kFromDevice);
  ASSERT_EQ(f.sink->announced().size(), 1u);
  ASSERT_THAT(f.ops->unmap(d, k4K, DmaDirection::kFromDevice), IsOk());
  // Revived: the same IOVA, nothing announced.
  EXPECT_THAT(f.ops->map(Gpa{0x200000}, k4K, DmaDirection::kFromDevice), HasValue(d));
  EXPECT_EQ(f.fq().revived, 1u);
  EXPECT_EQ(f.sink->announced().size(), 1u);
  // The other direction is another run: a new IOVA, announced.
  const DmaAddr r = *f.ops->map(Gpa{0x200000}, k4K, DmaDirection::kToDevice);
  EXPECT_NE(r, d);
  ASSERT_EQ(f.sink->announced().size(), 2u);
  EXPECT_EQ(f.sink->announced().back().pages.perms, Access::kRead);
  ASSERT_THAT(f.ops->unmap(r, k4K, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.ops->unmap(d, k4K, DmaDirection::kFromDevice), IsOk());
  // After a flush the buffer gets an IOVA the device has no translation of: announced.
  ASSERT_THAT(f.domain->flush(), IsOk());
  ASSERT_THAT(f.ops->map(Gpa{0x200000}, k4K, DmaDirection::kFromDevice), IsOk());
  EXPECT_EQ(f.sink->announced().size(), 3u);
  EXPECT_EQ(f.fq().revived, 1u);
}

TEST(IommuDmaAnnounce, ScatterListAndCoherentMemoryAreAnnouncedToo) {
  IommuDmaFixture f(InvalidationMode::kStrict, {.announce_maps = true});
  SgEntry sg[2] = {{.gpa = Gpa{0x100000}, .len = 100}, {.gpa = Gpa{0x500000}, .len = 2 * k4K}};
  ASSERT_THAT(f.ops->map_sg(sg, DmaDirection::kFromDevice), IsOk());
  auto a = f.sink->announced();
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].pages.gpa, Gpa{0x100000});
  EXPECT_EQ(a[0].pages.len, k4K);
  EXPECT_EQ(a[1].pages.gpa, Gpa{0x500000});
  EXPECT_EQ(a[1].pages.len, 2 * k4K);
  EXPECT_EQ(a[1].pages.iova.value(), a[0].pages.iova.value() + k4K);
  for (const auto& x : a) {
    EXPECT_EQ(x.pages.perms, Access::kWrite);
    EXPECT_TRUE(x.present);
  }
  ASSERT_THAT(f.ops->unmap_sg(sg, DmaDirection::kFromDevice), IsOk());

  const CoherentBuffer ring = *f.ops->alloc_coherent(8192);
  a = f.sink->announced();
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[2].pages.iova.value(), ring.dma.value());
  EXPECT_EQ(a[2].pages.gpa, ring.cpu);
  EXPECT_EQ(a[2].pages.len, 8192u);
  EXPECT_EQ(a[2].pages.perms, Access::kReadWrite);
  ASSERT_THAT(f.ops->free_coherent(ring), IsOk());
}

TEST(IommuDmaAnnounce, NothingIsAnnouncedUnlessAskedFor) {
  IommuDmaFixture f(InvalidationMode::kStrict);
  const DmaAddr d = *f.ops->map(Gpa{0x100000}, 64, DmaDirection::kToDevice);
  const CoherentBuffer ring = *f.ops->alloc_coherent(4096);
  EXPECT_TRUE(f.sink->announced().empty());
  ASSERT_THAT(f.ops->unmap(d, 64, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(f.ops->free_coherent(ring), IsOk());
}

}  // namespace
}  // namespace vdma
