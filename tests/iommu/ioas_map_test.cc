// IoAddressSpace: iova_ranges, "don't care" and fixed maps with their
// errors, unmap without splitting, unmap_all, allowed and reserved ranges.
#include "vdma/iommu/io_address_space.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "result_matchers.h"
#include "vdma/iommu/domain.h"

namespace vdma {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr uint64_t k4K = 4096;
constexpr uint64_t k2M = uint64_t{2} << 20;
constexpr uint64_t k1G = uint64_t{1} << 30;
constexpr IovaRange kMsi{Iova{0xfee00000}, Iova{0xfeefffff}};

TEST(IoasMap, FreshIoasAllowsEverything) {
  auto ioas = IoAddressSpace::create();
  const IovaRanges r = ioas->iova_ranges();
  EXPECT_EQ(r.alignment, k4K);
  EXPECT_THAT(r.ranges, ElementsAre(IovaRange{Iova{0}, Iova{UINT64_MAX}}));
  EXPECT_EQ(ioas->mapping_count(), 0u);
  EXPECT_EQ(ioas->unmap_all(), 0u);
}

TEST(IoasMap, AutoMapIsFirstFitAndNeverReturnsZero) {
  auto ioas = IoAddressSpace::create();
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), HasValue(Iova{0x1000}));
  EXPECT_THAT(ioas->map(Gpa{0x5000}, k4K, Access::kRead), HasValue(Iova{0x2000}));
  // roundup_pow2(0x3000) = 0x4000 but the source is only 4 KiB aligned.
  EXPECT_THAT(ioas->map(Gpa{0x9000}, 0x3000, Access::kRead), HasValue(Iova{0x3000}));
  // A 16 KiB-aligned source of 16 KiB: iova aligned to 16 KiB.
  EXPECT_THAT(ioas->map(Gpa{0x10000}, 0x4000, Access::kRead), HasValue(Iova{0x8000}));
  // The hole at 0x6000..0x7fff is still found by a small request.
  EXPECT_THAT(ioas->map(Gpa{0x20000}, 0x2000, Access::kWrite), HasValue(Iova{0x6000}));
  ASSERT_THAT(ioas->unmap(Iova{0x1000}, k4K), HasValue(k4K));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), HasValue(Iova{0x1000}));
}

TEST(IoasMap, AutoAlignmentFollowsTheSourceUpTo1GiB) {
  auto ioas = IoAddressSpace::create();
  auto dom = std::move(PagingDomain::create(*ioas)).value();
  ASSERT_THAT(ioas->map(Gpa{0x7000}, k4K, Access::kRead), HasValue(Iova{0x1000}));
  // 2 MiB of a 1 GiB-aligned source: aligned to min(2 MiB, 1 GiB).
  EXPECT_THAT(ioas->map(Gpa{3 * k1G}, k2M, Access::kRead), HasValue(Iova{k2M}));
  // 1 GiB of a 1 GiB-aligned source: the first 1 GiB boundary above page 0.
  EXPECT_THAT(ioas->map(Gpa{4 * k1G}, k1G, Access::kReadWrite), HasValue(Iova{k1G}));
  // 4 GiB at a 4 GiB-aligned source: capped at 1 GiB alignment.
  EXPECT_THAT(ioas->map(Gpa{16 * k1G}, 4 * k1G, Access::kRead), HasValue(Iova{2 * k1G}));
  // So the domain uses huge leaves for them.
  EXPECT_THAT(dom->translate(Iova{k2M + 8}, Access::kRead), HasValue(Field(&PageTranslation::page_size, k2M)));
  EXPECT_THAT(dom->translate(Iova{k1G + 8}, Access::kWrite),
              HasValue(AllOf(Field(&PageTranslation::page_size, k1G), Field(&PageTranslation::gpa, Gpa{4 * k1G + 8}))));
  EXPECT_THAT(dom->translate(Iova{5 * k1G}, Access::kRead),
              HasValue(AllOf(Field(&PageTranslation::page_size, k1G), Field(&PageTranslation::gpa, Gpa{19 * k1G}))));
}

TEST(IoasMap, UnalignedSourceKeepsItsInPageOffset) {
  auto ioas = IoAddressSpace::create();
  auto dom = std::move(PagingDomain::create(*ioas)).value();
  EXPECT_THAT(ioas->map(Gpa{0x12345}, 0x100, Access::kRead), HasValue(Iova{0x1345}));
  // Two bytes straddling a page edge occupy two IOVA pages.
  EXPECT_THAT(ioas->map(Gpa{0x20fff}, 2, Access::kRead), HasValue(Iova{0x2fff}));
  EXPECT_THAT(ioas->map(Gpa{0x30000}, k4K, Access::kRead), HasValue(Iova{0x4000}));
  // The whole pages are mapped, as with dma-iommu.
  EXPECT_THAT(dom->translate(Iova{0x1000}, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{0x12000})));
  EXPECT_THAT(dom->translate(Iova{0x3001}, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{0x21001})));
  const auto m = ioas->find(Iova{0x1000});
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(*m, (IoasMapping{Iova{0x1345}, 0x100, Gpa{0x12345}, Access::kRead}));
  EXPECT_EQ(m->pages(), (IovaRange{Iova{0x1000}, Iova{0x1fff}}));
  EXPECT_FALSE(ioas->find(Iova{0x5000}).has_value());
  // A fixed iova must keep the offset too.
  EXPECT_THAT(ioas->map(Gpa{0x7123}, 0x10, Access::kRead, Iova{0x9123}), HasValue(Iova{0x9123}));
  EXPECT_THAT(ioas->map(Gpa{0x7123}, 0x10, Access::kRead, Iova{0xa000}),
              IsErrorWith(IommuErrc::kMisaligned, HasSubstr("iova:0xa000")));
}

TEST(IoasMap, MapErrorsComeInTheDocumentedOrder) {
  auto ioas = IoAddressSpace::create();
  ASSERT_THAT(ioas->add_reserved(ReservationOwner::device(DeviceId{1}), {&kMsi, 1}), IsOk());
  ASSERT_THAT(ioas->map(Gpa{0x1000}, k4K, Access::kRead, Iova{0x10000}), IsOk());

  EXPECT_THAT(ioas->map(Gpa{0x1000}, k4K, Access::kNone), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(ioas->map(Gpa{0x1000}, 0, Access::kRead), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(ioas->map(Gpa{UINT64_MAX - 10}, 0x100, Access::kRead), IsError(BaseErrc::kOverflow));
  EXPECT_THAT(ioas->map(Gpa{(uint64_t{1} << 52) - k4K}, 2 * k4K, Access::kRead),
              IsErrorWith(IommuErrc::kInvalidArgument, HasSubstr("52-bit")));
  EXPECT_THAT(ioas->map(Gpa{0x1000}, 2 * k4K, Access::kRead, Iova{UINT64_MAX - k4K + 1}), IsError(BaseErrc::kOverflow));
  EXPECT_THAT(ioas->map(Gpa{0x1000}, k4K, Access::kRead, Iova{0x20800}), IsError(IommuErrc::kMisaligned));
  EXPECT_THAT(ioas->map(Gpa{0x1000}, k4K, Access::kRead, Iova{0xfee00000}),
              IsErrorWith(IommuErrc::kReserved, HasSubstr("iova:0xfee00000 is reserved")));
  // A range that starts usable and runs into the window names the first reserved page.
  EXPECT_THAT(ioas->map(Gpa{0x1000}, 3 * k4K, Access::kRead, Iova{0xfedfe000}),
              IsErrorWith(IommuErrc::kReserved, HasSubstr("iova:0xfee00000 is reserved")));
  EXPECT_THAT(ioas->map(Gpa{0x1000}, 2 * k4K, Access::kRead, Iova{0xf000}),
              IsErrorWith(IommuErrc::kAlreadyMapped, HasSubstr("mapping iova:0x10000 + 0x1000 -> gpa:0x1000")));
  // A sub-page neighbour in the same IOVA page also collides.
  EXPECT_THAT(ioas->map(Gpa{0x1f00}, 0x10, Access::kRead, Iova{0x10f00}), IsError(IommuErrc::kAlreadyMapped));
  EXPECT_EQ(ioas->mapping_count(), 1u);
}

TEST(IoasMap, FixedMapAtPageZeroIsAllowed) {
  auto ioas = IoAddressSpace::create();
  EXPECT_THAT(ioas->map(Gpa{0x5000}, k4K, Access::kRead, Iova{0}), HasValue(Iova{0}));
  EXPECT_THAT(ioas->map(Gpa{0x6000}, k4K, Access::kRead), HasValue(Iova{0x1000}));
}

TEST(IoasMap, UnmapCoversWholeMappingsOnly) {
  auto ioas = IoAddressSpace::create();
  ASSERT_THAT(ioas->map(Gpa{0x100000}, k4K, Access::kRead, Iova{0x10000}), IsOk());
  ASSERT_THAT(ioas->map(Gpa{0x200000}, 2 * k4K, Access::kRead, Iova{0x11000}), IsOk());
  ASSERT_THAT(ioas->map(Gpa{0x300000}, k4K, Access::kRead, Iova{0x13000}), IsOk());

  EXPECT_THAT(ioas->unmap(Iova{0x11000}, k4K),
              IsErrorWith(IommuErrc::kWouldSplit, HasSubstr("mapping iova:0x11000 + 0x2000")));
  // Covers the first mapping fully but cuts the second: nothing is removed.
  EXPECT_THAT(ioas->unmap(Iova{0x10000}, 0x2000), IsError(IommuErrc::kWouldSplit));
  EXPECT_EQ(ioas->mapping_count(), 3u);
  EXPECT_THAT(ioas->unmap(Iova{0x20000}, k4K), IsErrorWith(IommuErrc::kNotMapped, HasSubstr("iova:0x20000")));
  EXPECT_THAT(ioas->unmap(Iova{0x10000}, 0), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(ioas->unmap(Iova{UINT64_MAX}, 2), IsError(BaseErrc::kOverflow));
  // A superset of several mappings removes them all.
  EXPECT_THAT(ioas->unmap(Iova{0xf000}, 0x10000), HasValue(4 * k4K));
  EXPECT_EQ(ioas->mapping_count(), 0u);
}

TEST(IoasMap, UnmapWorksOnTheMappedBytes) {
  auto ioas = IoAddressSpace::create();
  ASSERT_THAT(ioas->map(Gpa{0x5100}, 0x100, Access::kRead, Iova{0x30100}), IsOk());
  // Same page, but no mapped byte: nothing to unmap.
  EXPECT_THAT(ioas->unmap(Iova{0x30000}, 0x100), IsError(IommuErrc::kNotMapped));
  EXPECT_THAT(ioas->unmap(Iova{0x30100}, 0x80), IsError(IommuErrc::kWouldSplit));
  EXPECT_THAT(ioas->unmap(Iova{0x30000}, k4K), HasValue(0x100u));
}

TEST(IoasMap, UnmapAllReturnsTheBytes) {
  auto ioas = IoAddressSpace::create();
  ASSERT_THAT(ioas->map(Gpa{0x5100}, 0x100, Access::kRead), IsOk());
  ASSERT_THAT(ioas->map(Gpa{0x8000}, 3 * k4K, Access::kReadWrite), IsOk());
  EXPECT_EQ(ioas->unmap_all(), 0x100u + 3 * k4K);
  EXPECT_EQ(ioas->mapping_count(), 0u);
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), HasValue(Iova{0x1000}));
}

TEST(IoasMap, NoSpaceWhenTheAllowedWindowIsFull) {
  auto ioas = IoAddressSpace::create();
  const IovaRange window{Iova{0}, Iova{0x3fff}};
  ASSERT_THAT(ioas->allow_iovas({&window, 1}), IsOk());
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), HasValue(Iova{0x1000}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), HasValue(Iova{0x2000}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), HasValue(Iova{0x3000}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), IsErrorWith(IommuErrc::kNoSpace, HasSubstr("0x1000 bytes")));
  // Page 0 is only ever mapped on request.
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0}), HasValue(Iova{0}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0x4000}), IsError(IommuErrc::kReserved));
}

TEST(IoasMap, AllowIovasValidatesAndProtectsMappings) {
  auto ioas = IoAddressSpace::create();
  const IovaRange bad_order{Iova{0x2000}, Iova{0x1fff - 0x1000}};
  EXPECT_THAT(ioas->allow_iovas({&bad_order, 1}), IsError(IommuErrc::kInvalidArgument));
  const IovaRange misaligned{Iova{0x1000}, Iova{0x1800}};
  EXPECT_THAT(ioas->allow_iovas({&misaligned, 1}), IsError(IommuErrc::kMisaligned));
  const IovaRange overlapping[] = {{Iova{0x4000}, Iova{0x7fff}}, {Iova{0x1000}, Iova{0x4fff}}};
  EXPECT_THAT(ioas->allow_iovas(overlapping), IsError(IommuErrc::kInvalidArgument));

  ASSERT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0x100000}), IsOk());
  const IovaRange low{Iova{0}, Iova{0xfffff}};
  EXPECT_THAT(ioas->allow_iovas({&low, 1}),
              IsErrorWith(IommuErrc::kConflict, HasSubstr("mapping iova:0x100000 + 0x1000")));
  // Unsorted but disjoint ranges are fine; adjacent ones merge.
  const IovaRange two[] = {{Iova{0x101000}, Iova{0x1fffff}}, {Iova{0x100000}, Iova{0x100fff}}};
  ASSERT_THAT(ioas->allow_iovas(two), IsOk());
  EXPECT_THAT(ioas->iova_ranges().ranges, ElementsAre(IovaRange{Iova{0x100000}, Iova{0x1fffff}}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), HasValue(Iova{0x101000}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0x200000}), IsError(IommuErrc::kReserved));
  // The empty set allows everything again.
  ASSERT_THAT(ioas->allow_iovas({}), IsOk());
  EXPECT_THAT(ioas->iova_ranges().ranges, ElementsAre(IovaRange{Iova{0}, Iova{UINT64_MAX}}));
}

TEST(IoasMap, ReservedRangesAreRoundedAndNamedInConflicts) {
  auto ioas = IoAddressSpace::create();
  const IovaRange odd{Iova{0x1800}, Iova{0x2800}};
  ASSERT_THAT(ioas->add_reserved(ReservationOwner::device(DeviceId{2}), {&odd, 1}), IsOk());
  EXPECT_THAT(ioas->iova_ranges().ranges,
              ElementsAre(IovaRange{Iova{0}, Iova{0xfff}}, IovaRange{Iova{0x3000}, Iova{UINT64_MAX}}));
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead), HasValue(Iova{0x3000}));

  // A second owner may reserve overlapping ranges; each removal is its own.
  const IovaRange wide{Iova{0x1000}, Iova{0x1fff}};
  ASSERT_THAT(ioas->add_reserved(ReservationOwner::device(DeviceId{5}), {&wide, 1}), IsOk());
  ioas->remove_reserved(ReservationOwner::device(DeviceId{2}));
  EXPECT_THAT(ioas->iova_ranges().ranges,
              ElementsAre(IovaRange{Iova{0}, Iova{0xfff}}, IovaRange{Iova{0x2000}, Iova{UINT64_MAX}}));
  ioas->remove_reserved(ReservationOwner::device(DeviceId{5}));
  ioas->remove_reserved(ReservationOwner::device(DeviceId{9}));  // never reserved: no effect
  EXPECT_THAT(ioas->iova_ranges().ranges, ElementsAre(IovaRange{Iova{0}, Iova{UINT64_MAX}}));

  const IovaRange over{Iova{0x3100}, Iova{0x3100}};
  EXPECT_THAT(ioas->add_reserved(ReservationOwner::device(DeviceId{7}), {&over, 1}),
              IsErrorWith(IommuErrc::kConflict, HasSubstr("device 7 reserves [iova:0x3100, iova:0x3100], which "
                                                          "overlaps mapping iova:0x3000 + 0x1000 -> gpa:0x0")));
  // All or nothing: a valid range before the conflicting one is not kept.
  const IovaRange mixed[] = {kMsi, over};
  EXPECT_THAT(ioas->add_reserved(ReservationOwner::device(DeviceId{7}), mixed), IsError(IommuErrc::kConflict));
  EXPECT_THAT(ioas->iova_ranges().ranges, ElementsAre(IovaRange{Iova{0}, Iova{UINT64_MAX}}));
  const IovaRange backwards{Iova{0x9000}, Iova{0x8000}};
  EXPECT_THAT(ioas->add_reserved(ReservationOwner::device(DeviceId{7}), {&backwards, 1}),
              IsError(IommuErrc::kInvalidArgument));
}

TEST(IoasMap, UsableIsAllowedMinusReserved) {
  auto ioas = IoAddressSpace::create();
  const IovaRange low4g{Iova{0}, Iova{0xffffffff}};
  ASSERT_THAT(ioas->allow_iovas({&low4g, 1}), IsOk());
  ASSERT_THAT(ioas->add_reserved(ReservationOwner::device(DeviceId{1}), {&kMsi, 1}), IsOk());
  EXPECT_THAT(ioas->iova_ranges().ranges,
              ElementsAre(IovaRange{Iova{0}, Iova{0xfedfffff}}, IovaRange{Iova{0xfef00000}, Iova{0xffffffff}}));
}

}  // namespace
}  // namespace vdma
