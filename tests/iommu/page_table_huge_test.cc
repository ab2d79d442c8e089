// IoPageTable huge leaves: chosen on map when alignment allows, promotion of
// tables filled by adjacent maps, demotion when an unmap cuts a huge leaf,
// and re-promotion when the hole is filled again.
#include "vdma/iommu/io_page_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "result_matchers.h"

namespace vdma {
namespace {

using ::testing::AllOf;
using ::testing::Field;
using namespace vdma::testing;

constexpr uint64_t k4K = 4096;
constexpr uint64_t k2M = uint64_t{2} << 20;
constexpr uint64_t k1G = uint64_t{1} << 30;

size_t small_tables(const IoPageTable& pt) {
  const PageTableStats s = pt.stats();
  return s.tables[1] + s.tables[2] + s.tables[3];
}

auto Leaf(Gpa gpa, uint64_t size, uint64_t contiguous) {
  return AllOf(Field(&PageTranslation::gpa, gpa), Field(&PageTranslation::page_size, size),
               Field(&PageTranslation::contiguous, contiguous));
}

TEST(PageTableHuge, AlignedMapsUseHugeLeaves) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{k1G}, Gpa{3 * k1G}, k1G, Access::kRead), IsOk());
  ASSERT_THAT(pt.map(Iova{4 * k2M}, Gpa{10 * k2M}, k2M + 2 * k4K, Access::kReadWrite), IsOk());
  const PageTableStats s = pt.stats();
  EXPECT_EQ(s.leaves[3], 1u);
  EXPECT_EQ(s.leaves[2], 1u);
  EXPECT_EQ(s.leaves[1], 2u);
  EXPECT_THAT(pt.translate(Iova{k1G + 0x12345}, Access::kRead), HasValue(Leaf(Gpa{3 * k1G + 0x12345}, k1G, k1G - 0x12345)));
  EXPECT_THAT(pt.translate(Iova{4 * k2M + 0x1000}, Access::kWrite), HasValue(Leaf(Gpa{10 * k2M + 0x1000}, k2M, k2M - 0x1000)));
  EXPECT_THAT(pt.translate(Iova{5 * k2M + 0x1800}, Access::kWrite), HasValue(Leaf(Gpa{11 * k2M + 0x1800}, k4K, 0x800u)));
  EXPECT_THAT(pt.translate(Iova{k1G - 1}, Access::kNone), IsError(IommuErrc::kNotPresent));
  EXPECT_THAT(pt.translate(Iova{2 * k1G}, Access::kNone), IsError(IommuErrc::kNotPresent));
}

TEST(PageTableHuge, MisalignedOutputKeepsSmallLeaves) {
  IoPageTable pt;
  // The iova is 2 MiB aligned, the output only 4 KiB aligned: no 2 MiB leaf
  // can express this, and the full table stays unpromoted.
  ASSERT_THAT(pt.map(Iova{k2M}, Gpa{k2M + k4K}, k2M, Access::kRead), IsOk());
  const PageTableStats s = pt.stats();
  EXPECT_EQ(s.leaves[1], 512u);
  EXPECT_EQ(s.leaves[2], 0u);
  EXPECT_THAT(pt.translate(Iova{2 * k2M - 1}, Access::kRead), HasValue(Leaf(Gpa{2 * k2M + k4K - 1}, k4K, 1u)));
}

TEST(PageTableHuge, AdjacentMapsArePromotedTo2MiB) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{k2M}, Gpa{8 * k2M}, k2M / 2, Access::kRead), IsOk());
  EXPECT_EQ(pt.stats().leaves[1], 256u);
  ASSERT_THAT(pt.map(Iova{k2M + k2M / 2}, Gpa{8 * k2M + k2M / 2}, k2M / 2, Access::kRead), IsOk());
  const PageTableStats s = pt.stats();
  EXPECT_EQ(s.leaves[1], 0u);
  EXPECT_EQ(s.leaves[2], 1u);
  EXPECT_EQ(s.tables[1], 0u);  // the level-1 table went back to the spare pool
  EXPECT_THAT(pt.translate(Iova{k2M + 0x10}, Access::kRead), HasValue(Leaf(Gpa{8 * k2M + 0x10}, k2M, k2M - 0x10)));
}

TEST(PageTableHuge, NoPromotionAcrossPermissionOrContiguityBreaks) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{k2M}, Gpa{8 * k2M}, k2M / 2, Access::kRead), IsOk());
  ASSERT_THAT(pt.map(Iova{k2M + k2M / 2}, Gpa{8 * k2M + k2M / 2}, k2M / 2, Access::kReadWrite), IsOk());
  EXPECT_EQ(pt.stats().leaves[1], 512u);

  ASSERT_THAT(pt.map(Iova{4 * k2M}, Gpa{16 * k2M}, k2M / 2, Access::kRead), IsOk());
  ASSERT_THAT(pt.map(Iova{4 * k2M + k2M / 2}, Gpa{20 * k2M}, k2M / 2, Access::kRead), IsOk());
  EXPECT_EQ(pt.stats().leaves[1], 1024u);
  EXPECT_EQ(pt.stats().leaves[2], 0u);
}

TEST(PageTableHuge, FiveHundredTwelve2MiBMapsBecomeOne1GiBLeaf) {
  IoPageTable pt;
  for (uint64_t i = 0; i < 512; ++i) {
    ASSERT_THAT(pt.map(Iova{k1G + i * k2M}, Gpa{5 * k1G + i * k2M}, k2M, Access::kReadWrite), IsOk());
  }
  const PageTableStats s = pt.stats();
  EXPECT_EQ(s.leaves[3], 1u);
  EXPECT_EQ(s.leaves[2], 0u);
  EXPECT_EQ(s.tables[2], 0u);
  EXPECT_THAT(pt.translate(Iova{2 * k1G - 8}, Access::kWrite), HasValue(Leaf(Gpa{6 * k1G - 8}, k1G, 8u)));
}

TEST(PageTableHuge, PartialUnmapDemotesAndRefillPromotesAgain) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{k1G}, Gpa{7 * k1G}, k1G, Access::kRead), IsOk());
  const uint64_t hole = k1G + 300 * k2M + 17 * k4K;
  ASSERT_THAT(pt.unmap(Iova{hole}, k4K), HasValue(k4K));
  PageTableStats s = pt.stats();
  EXPECT_EQ(s.leaves[3], 0u);
  EXPECT_EQ(s.leaves[2], 511u);
  EXPECT_EQ(s.leaves[1], 511u);
  EXPECT_EQ(s.tables[2], 1u);
  EXPECT_EQ(s.tables[1], 1u);
  EXPECT_THAT(pt.translate(Iova{hole}, Access::kRead), IsError(IommuErrc::kNotPresent));
  // Neighbours of the hole keep their output, now through smaller leaves.
  EXPECT_THAT(pt.translate(Iova{hole - 1}, Access::kRead), HasValue(Leaf(Gpa{7 * k1G + (hole - k1G) - 1}, k4K, 1u)));
  EXPECT_THAT(pt.translate(Iova{hole + k4K}, Access::kRead), HasValue(Leaf(Gpa{7 * k1G + (hole - k1G) + k4K}, k4K, k4K)));
  EXPECT_THAT(pt.translate(Iova{k1G + 5}, Access::kRead), HasValue(Leaf(Gpa{7 * k1G + 5}, k2M, k2M - 5)));
  EXPECT_THAT(pt.translate(Iova{2 * k1G - 1}, Access::kRead), HasValue(Leaf(Gpa{8 * k1G - 1}, k2M, 1u)));

  // Filling the hole with the same output and permissions restores the 1 GiB leaf.
  ASSERT_THAT(pt.map(Iova{hole}, Gpa{7 * k1G + (hole - k1G)}, k4K, Access::kRead), IsOk());
  s = pt.stats();
  EXPECT_EQ(s.leaves[3], 1u);
  EXPECT_EQ(s.leaves[2] + s.leaves[1], 0u);
  EXPECT_EQ(small_tables(pt), 1u);  // only the level-3 table that holds the 1 GiB leaf
}

TEST(PageTableHuge, UnmapAcrossHugeLeafEdges) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{0}, Gpa{0}, 4 * k2M, Access::kReadWrite), IsOk());
  EXPECT_EQ(pt.stats().leaves[2], 4u);
  // Cut the last 4 KiB of the first leaf and the first 8 KiB of the third,
  // whole second leaf in between.
  ASSERT_THAT(pt.unmap(Iova{k2M - k4K}, k4K + k2M + 2 * k4K), HasValue(k4K + k2M + 2 * k4K));
  const PageTableStats s = pt.stats();
  EXPECT_EQ(s.leaves[2], 1u);    // the fourth
  EXPECT_EQ(s.leaves[1], 1021u);  // 511 + 510
  EXPECT_THAT(pt.translate(Iova{k2M - k4K - 1}, Access::kRead), HasValue(Leaf(Gpa{k2M - k4K - 1}, k4K, 1u)));
  EXPECT_THAT(pt.translate(Iova{k2M - k4K}, Access::kRead), IsError(IommuErrc::kNotPresent));
  EXPECT_THAT(pt.translate(Iova{2 * k2M + k4K}, Access::kRead), IsError(IommuErrc::kNotPresent));
  EXPECT_THAT(pt.translate(Iova{2 * k2M + 2 * k4K}, Access::kRead), HasValue(Leaf(Gpa{2 * k2M + 2 * k4K}, k4K, k4K)));
  EXPECT_THAT(pt.translate(Iova{3 * k2M}, Access::kRead), HasValue(Leaf(Gpa{3 * k2M}, k2M, k2M)));
  // Unmapping the rest empties and frees every table below the root.
  ASSERT_THAT(pt.unmap(Iova{0}, 4 * k2M), HasValue(4 * k2M - (k4K + k2M + 2 * k4K)));
  EXPECT_EQ(small_tables(pt), 0u);
}

}  // namespace
}  // namespace vdma
