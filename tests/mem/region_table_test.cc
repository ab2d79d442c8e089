#include "vdma/mem/region_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "result_matchers.h"

namespace vdma {
namespace {

using ::testing::HasSubstr;
using namespace vdma::testing;

class RegionTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = GuestMemory::create({{Gpa{0}, 0x10000, MemAttr::kPrivate, "ram"},
                                  {Gpa{0x10000}, 0x4000, MemAttr::kShared, "shared"},
                                  {Gpa{0x40000}, 0x1000, MemAttr::kShared, "far"}});
    ASSERT_THAT(m, IsOk());
    mem = std::move(m).value();
  }
  std::unique_ptr<GuestMemory> mem;
  std::vector<Fragment> frags;
};

TEST_F(RegionTableTest, BypassTranslatesGpaAcrossRegions) {
  RegionTable t = RegionTable::bypass(*mem);
  ASSERT_THAT(t.translate(DmaAddr{0xff00}, 0x200, Access::kRead, frags), IsOk());
  ASSERT_EQ(frags.size(), 2u);
  EXPECT_EQ(frags[0].host, mem->regions()[0].host().data() + 0xff00);
  EXPECT_EQ(frags[0].len, 0x100u);
  EXPECT_EQ(frags[1].host, mem->regions()[1].host().data());
  EXPECT_EQ(frags[1].len, 0x100u);
}

TEST_F(RegionTableTest, UnmappedBytesAreNamedAndNothingAppended) {
  RegionTable t = RegionTable::bypass(*mem);
  frags.push_back({nullptr, 1});  // earlier content is kept
  EXPECT_THAT(t.translate(DmaAddr{0x13f00}, 0x200, Access::kWrite, frags),
              IsErrorWith(MemErrc::kNotMapped, HasSubstr("dma:0x14000 is not mapped")));
  EXPECT_EQ(frags.size(), 1u);
  EXPECT_THAT(t.translate(DmaAddr{0x80000}, 1, Access::kRead, frags), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(t.translate(DmaAddr{~0ull}, 2, Access::kRead, frags), IsError(BaseErrc::kOverflow));
}

TEST_F(RegionTableTest, SharedOnlyViewHidesPrivateMemory) {
  RegionTable t = RegionTable::bypass(*mem, MemAttr::kShared);
  EXPECT_EQ(t.size(), 2u);
  EXPECT_THAT(t.translate(DmaAddr{0x1000}, 8, Access::kRead, frags), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(t.translate(DmaAddr{0x10000}, 8, Access::kRead, frags), IsOk());
}

TEST_F(RegionTableTest, PermissionDeniedIsDistinct) {
  RegionTable t;
  ASSERT_THAT(t.add(DmaAddr{0x1000}, mem->regions()[0].host().subspan(0, 0x1000), Access::kRead), IsOk());
  EXPECT_THAT(t.translate(DmaAddr{0x1000}, 0x10, Access::kRead, frags), IsOk());
  EXPECT_THAT(t.translate(DmaAddr{0x1000}, 0x10, Access::kWrite, frags),
              IsErrorWith(MemErrc::kPermissionDenied, HasSubstr("allows read, not write")));
}

TEST_F(RegionTableTest, OffsetRangesMapBusAddresses) {
  const OffsetRange ranges[] = {{Gpa{0}, DmaAddr{1ull << 40}, 0x14000}};
  auto t = RegionTable::with_offsets(*mem, ranges);
  ASSERT_THAT(t, IsOk());
  EXPECT_THAT(t->translate(DmaAddr{0x1000}, 8, Access::kRead, frags), IsError(MemErrc::kNotMapped));
  ASSERT_THAT(t->translate(DmaAddr{(1ull << 40) + 0x10000}, 8, Access::kRead, frags), IsOk());
  EXPECT_EQ(frags.back().host, mem->regions()[1].host().data());
  // "far" is outside every window: not reachable at all.
  EXPECT_THAT(t->translate(DmaAddr{(1ull << 40) + 0x40000}, 8, Access::kRead, frags), IsError(MemErrc::kNotMapped));
}

TEST_F(RegionTableTest, BadOffsetRanges) {
  const OffsetRange empty[] = {{Gpa{0}, DmaAddr{0}, 0}};
  EXPECT_THAT(RegionTable::with_offsets(*mem, empty), IsError(MemErrc::kInvalidRegion));
  const OffsetRange nowhere[] = {{Gpa{0x80000}, DmaAddr{0}, 0x1000}};
  EXPECT_THAT(RegionTable::with_offsets(*mem, nowhere), IsError(MemErrc::kNotMapped));
  const OffsetRange overlap[] = {{Gpa{0}, DmaAddr{0}, 0x2000}, {Gpa{0x10000}, DmaAddr{0x1000}, 0x1000}};
  EXPECT_THAT(RegionTable::with_offsets(*mem, overlap), IsError(MemErrc::kOverlap));
  const OffsetRange wrap[] = {{Gpa{0}, DmaAddr{~0ull}, 0x1000}};
  EXPECT_THAT(RegionTable::with_offsets(*mem, wrap), IsError(MemErrc::kInvalidRegion));
}

TEST_F(RegionTableTest, ZeroLengthAndContiguous) {
  RegionTable t = RegionTable::bypass(*mem);
  ASSERT_THAT(t.translate(DmaAddr{0x10}, 0, Access::kRead, frags), IsOk());
  EXPECT_TRUE(frags.empty());
  EXPECT_THAT(t.translate(DmaAddr{0x20000}, 0, Access::kRead, frags), IsError(MemErrc::kNotMapped));
  // 0xff00..0x10100 crosses two memfd mappings: not one host span.
  EXPECT_THAT(t.translate_contiguous(DmaAddr{0xff00}, 0x200, Access::kRead), IsError(MemErrc::kTooManyFragments));
  auto s = t.translate_contiguous(DmaAddr{0x100}, 0x200, Access::kRead);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->data(), mem->regions()[0].host().data() + 0x100);
  EXPECT_EQ(t.ring_epoch(), nullptr);
}

}  // namespace
}  // namespace vdma
