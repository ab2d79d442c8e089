// IoPageTable: map/translate/unmap at 4 KiB, argument errors, permission
// faults, the 48-bit input and 52-bit output limits, and the entry format.
#include "vdma/iommu/io_page_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "result_matchers.h"

namespace vdma {
namespace {

using ::testing::AllOf;
using ::testing::Field;
using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr uint64_t k4K = 4096;

MATCHER_P4(IsTranslation, gpa, page_size, contiguous, perms, "") {
  return arg.gpa == gpa && arg.page_size == page_size && arg.contiguous == contiguous && arg.perms == perms;
}

TEST(PageTable, MapsAndTranslatesSmallPages) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{0x10000}, Gpa{0x7000}, 3 * k4K, Access::kReadWrite), IsOk());
  EXPECT_THAT(pt.translate(Iova{0x10000}, Access::kRead), HasValue(IsTranslation(Gpa{0x7000}, k4K, k4K, Access::kReadWrite)));
  EXPECT_THAT(pt.translate(Iova{0x11abc}, Access::kWrite),
              HasValue(IsTranslation(Gpa{0x8abc}, k4K, k4K - 0xabc, Access::kReadWrite)));
  EXPECT_THAT(pt.translate(Iova{0x12fff}, Access::kNone), HasValue(IsTranslation(Gpa{0x9fff}, k4K, 1u, Access::kReadWrite)));
  EXPECT_THAT(pt.translate(Iova{0x13000}, Access::kRead), IsErrorWith(IommuErrc::kNotPresent, HasSubstr("iova:0x13000")));
  EXPECT_THAT(pt.translate(Iova{0xf000}, Access::kRead), IsError(IommuErrc::kNotPresent));
}

TEST(PageTable, PermissionFaultsAreDistinctFromNotPresent) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{0x1000}, Gpa{0x1000}, k4K, Access::kRead), IsOk());
  ASSERT_THAT(pt.map(Iova{0x2000}, Gpa{0x2000}, k4K, Access::kWrite), IsOk());
  EXPECT_THAT(pt.translate(Iova{0x1000}, Access::kRead), IsOk());
  EXPECT_THAT(pt.translate(Iova{0x1000}, Access::kWrite),
              IsErrorWith(IommuErrc::kPermissionFault, HasSubstr("iova:0x1000")));
  EXPECT_THAT(pt.translate(Iova{0x1000}, Access::kReadWrite), IsError(IommuErrc::kPermissionFault));
  EXPECT_THAT(pt.translate(Iova{0x2000}, Access::kRead), IsError(IommuErrc::kPermissionFault));
  EXPECT_THAT(pt.translate(Iova{0x2000}, Access::kWrite), IsOk());
  // kNone probes: the permissions come back without a fault.
  EXPECT_THAT(pt.translate(Iova{0x2000}, Access::kNone), HasValue(Field(&PageTranslation::perms, Access::kWrite)));
}

TEST(PageTable, RejectsBadArguments) {
  IoPageTable pt;
  EXPECT_THAT(pt.map(Iova{0x1000}, Gpa{0x1000}, 0, Access::kRead), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(pt.map(Iova{0x1000}, Gpa{0x1000}, k4K, Access::kNone), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(pt.map(Iova{0x1800}, Gpa{0x1000}, k4K, Access::kRead), IsError(IommuErrc::kMisaligned));
  EXPECT_THAT(pt.map(Iova{0x1000}, Gpa{0x1800}, k4K, Access::kRead), IsError(IommuErrc::kMisaligned));
  EXPECT_THAT(pt.map(Iova{0x1000}, Gpa{0x1000}, 0x800, Access::kRead), IsError(IommuErrc::kMisaligned));
  // 48-bit input: the last page maps, one more does not.
  const uint64_t top = (uint64_t{1} << 48) - k4K;
  EXPECT_THAT(pt.map(Iova{top}, Gpa{0}, k4K, Access::kRead), IsOk());
  EXPECT_THAT(pt.map(Iova{top}, Gpa{0}, 2 * k4K, Access::kRead),
              IsErrorWith(IommuErrc::kInvalidArgument, HasSubstr("48-bit")));
  EXPECT_THAT(pt.map(Iova{uint64_t{1} << 48}, Gpa{0}, k4K, Access::kRead), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(pt.translate(Iova{uint64_t{1} << 48}, Access::kNone), IsError(IommuErrc::kNotPresent));
  EXPECT_THAT(pt.translate(Iova{UINT64_MAX}, Access::kNone), IsError(IommuErrc::kNotPresent));
  // 52-bit output.
  const uint64_t out_top = (uint64_t{1} << 52) - k4K;
  EXPECT_THAT(pt.map(Iova{0x5000}, Gpa{out_top}, k4K, Access::kRead), IsOk());
  EXPECT_THAT(pt.translate(Iova{0x5008}, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{out_top + 8})));
  EXPECT_THAT(pt.map(Iova{0x6000}, Gpa{out_top}, 2 * k4K, Access::kRead),
              IsErrorWith(IommuErrc::kInvalidArgument, HasSubstr("52-bit")));
  EXPECT_THAT(pt.unmap(Iova{0x1000}, 0), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(pt.unmap(Iova{0x1001}, k4K), IsError(IommuErrc::kMisaligned));
  EXPECT_THAT(pt.unmap(Iova{top}, 2 * k4K), IsError(IommuErrc::kInvalidArgument));
}

TEST(PageTable, MapOverAMappedPageFailsAndChangesNothing) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{0x3000}, Gpa{0x3000}, k4K, Access::kRead), IsOk());
  EXPECT_THAT(pt.map(Iova{0x1000}, Gpa{0x10000}, 4 * k4K, Access::kWrite),
              IsErrorWith(IommuErrc::kAlreadyMapped, HasSubstr("iova:0x3000")));
  // Nothing of the failed map is left behind.
  EXPECT_THAT(pt.translate(Iova{0x1000}, Access::kNone), IsError(IommuErrc::kNotPresent));
  EXPECT_THAT(pt.translate(Iova{0x2000}, Access::kNone), IsError(IommuErrc::kNotPresent));
  EXPECT_THAT(pt.translate(Iova{0x3000}, Access::kNone), HasValue(Field(&PageTranslation::gpa, Gpa{0x3000})));
}

TEST(PageTable, UnmapSkipsHolesAndReturnsBytesCleared) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{0x1000}, Gpa{0x1000}, k4K, Access::kRead), IsOk());
  ASSERT_THAT(pt.map(Iova{0x4000}, Gpa{0x9000}, 2 * k4K, Access::kRead), IsOk());
  EXPECT_THAT(pt.unmap(Iova{0}, 0x10000), HasValue(3 * k4K));
  EXPECT_THAT(pt.unmap(Iova{0}, 0x10000), HasValue(0u));
  EXPECT_THAT(pt.translate(Iova{0x4000}, Access::kNone), IsError(IommuErrc::kNotPresent));
}

TEST(PageTable, EmptyTablesAreFreedAndStatsCountThem) {
  IoPageTable pt;
  // Two pages in different 512 GiB regions: 2 x (L3 + L2 + L1) tables.
  ASSERT_THAT(pt.map(Iova{0x1000}, Gpa{0x1000}, k4K, Access::kRead), IsOk());
  ASSERT_THAT(pt.map(Iova{uint64_t{1} << 40}, Gpa{0x2000}, k4K, Access::kRead), IsOk());
  PageTableStats s = pt.stats();
  EXPECT_EQ(s.tables[4], 1u);
  EXPECT_EQ(s.tables[3], 2u);
  EXPECT_EQ(s.tables[2], 2u);
  EXPECT_EQ(s.tables[1], 2u);
  EXPECT_EQ(s.leaves[1], 2u);
  ASSERT_THAT(pt.unmap(Iova{0x1000}, k4K), HasValue(k4K));
  s = pt.stats();
  EXPECT_EQ(s.tables[3], 1u);
  EXPECT_EQ(s.tables[2], 1u);
  EXPECT_EQ(s.tables[1], 1u);
  pt.clear();
  s = pt.stats();
  EXPECT_EQ(s.tables[3] + s.tables[2] + s.tables[1], 0u);
  EXPECT_THAT(pt.translate(Iova{uint64_t{1} << 40}, Access::kNone), IsError(IommuErrc::kNotPresent));
}

TEST(PageTable, ForEachLeafReportsLeavesInOrder) {
  IoPageTable pt;
  ASSERT_THAT(pt.map(Iova{0x200000}, Gpa{0x400000}, 0x200000, Access::kRead), IsOk());
  ASSERT_THAT(pt.map(Iova{0x1000}, Gpa{0x5000}, k4K, Access::kWrite), IsOk());
  std::vector<PageLeaf> leaves;
  pt.for_each_leaf([&](const PageLeaf& l) { leaves.push_back(l); });
  ASSERT_EQ(leaves.size(), 2u);
  EXPECT_EQ(leaves[0].iova, Iova{0x1000});
  EXPECT_EQ(leaves[0].gpa, Gpa{0x5000});
  EXPECT_EQ(leaves[0].size, k4K);
  EXPECT_EQ(leaves[0].perms, Access::kWrite);
  EXPECT_EQ(leaves[1].iova, Iova{0x200000});
  EXPECT_EQ(leaves[1].gpa, Gpa{0x400000});
  EXPECT_EQ(leaves[1].size, 0x200000u);
}

TEST(PteFormat, EncodesAndValidatesEntries) {
  const uint64_t leaf = pte::make_leaf(0x40000000, Access::kReadWrite);
  EXPECT_EQ(leaf, 0x40000000u | pte::kPresent | pte::kRead | pte::kWrite | pte::kLeaf);
  EXPECT_EQ(pte::perms(leaf), Access::kReadWrite);
  EXPECT_EQ(pte::address(leaf), 0x40000000u);
  EXPECT_EQ(pte::malformed_reason(leaf, 3), std::nullopt);
  EXPECT_EQ(pte::malformed_reason(leaf, 2), std::nullopt);
  EXPECT_EQ(pte::malformed_reason(pte::make_leaf(0x1000, Access::kRead), 2), "huge leaf address not aligned to its page size");
  EXPECT_EQ(pte::malformed_reason(leaf, 4), "leaf at the root level");
  EXPECT_EQ(pte::malformed_reason(pte::make_table(0x1000), 1), "table entry at level 1");
  EXPECT_EQ(pte::malformed_reason(leaf | (uint64_t{1} << 63), 3), "reserved bits set");
  EXPECT_EQ(pte::malformed_reason(leaf | (uint64_t{1} << 4), 3), "reserved bits set");
  EXPECT_EQ(pte::malformed_reason(0xffff'ffff'ffff'fffeull, 1), std::nullopt);  // not present: ignored
  // SW bits are ignored by walkers, so an entry carrying a count is valid.
  EXPECT_EQ(pte::malformed_reason(pte::with_sw_bits(pte::make_table(0x1000), 512), 2), std::nullopt);
  EXPECT_EQ(pte::sw_bits(pte::with_sw_bits(pte::make_table(0x1000), 512)), 512u);
  EXPECT_EQ(pte::index(0x80'4030'0000ull, 4), 1u);
  EXPECT_EQ(pte::index(0x80'4030'0000ull, 3), 1u);
  EXPECT_EQ(pte::index(0x80'4030'0000ull, 2), 1u);
  EXPECT_EQ(pte::index(0x80'4030'0000ull, 1), 0x100u);
}

}  // namespace
}  // namespace vdma
