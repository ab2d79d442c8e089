#include "vdma/base/address.h"

#include <gtest/gtest.h>

#include <type_traits>

#include "result_matchers.h"

namespace vdma {
namespace {

using namespace vdma::testing;

// No implicit conversions between address spaces or from integers.
static_assert(!std::is_convertible_v<Gpa, DmaAddr>);
static_assert(!std::is_convertible_v<DmaAddr, Gpa>);
static_assert(!std::is_convertible_v<Iova, DmaAddr>);
static_assert(!std::is_convertible_v<FrontVa, Iova>);
static_assert(!std::is_convertible_v<uint64_t, Gpa>);
static_assert(!std::is_convertible_v<Gpa, uint64_t>);
static_assert(std::is_constructible_v<Gpa, uint64_t>);
static_assert(sizeof(Gpa) == 8 && std::is_trivially_copyable_v<Gpa>);

TEST(Address, CheckedAddDetectsWrap) {
  EXPECT_THAT(checked_add(Gpa{0x1000}, 0x2000), HasValue(Gpa{0x3000}));
  EXPECT_THAT(checked_add(Gpa{~0ull}, 0), HasValue(Gpa{~0ull}));
  EXPECT_THAT(checked_add(Gpa{~0ull}, 1), IsErrorWith(BaseErrc::kOverflow, "gpa:0xffffffffffffffff + len 0x1 wraps past 2^64"));
  EXPECT_THAT(checked_add(Iova{1ull << 63}, 1ull << 63), IsError(BaseErrc::kOverflow));
}

TEST(Address, FitsAllowsRangeEndingAtTop) {
  EXPECT_TRUE(fits(Gpa{~0ull}, 1));        // last byte is 2^64-1
  EXPECT_FALSE(fits(Gpa{~0ull}, 2));
  EXPECT_TRUE(fits(Gpa{0}, ~0ull));
  EXPECT_TRUE(fits(Gpa{5}, 0));
}

TEST(AddrRange, ContainsIsOverflowSafe) {
  AddrRange<Gpa> r{Gpa{0x1000}, 0x1000};
  EXPECT_TRUE(r.contains(Gpa{0x1000}));
  EXPECT_TRUE(r.contains(Gpa{0x1fff}));
  EXPECT_FALSE(r.contains(Gpa{0x2000}));
  EXPECT_FALSE(r.contains(Gpa{0xfff}));
  EXPECT_TRUE(r.contains(Gpa{0x1800}, 0x800));
  EXPECT_FALSE(r.contains(Gpa{0x1800}, 0x801));
  EXPECT_FALSE(r.contains(Gpa{0x1800}, ~0ull));  // would wrap if computed naively
  AddrRange<Gpa> top{Gpa{~0ull - 0xfff}, 0x1000};
  EXPECT_TRUE(top.contains(Gpa{~0ull}));
  EXPECT_EQ(top.last(), Gpa{~0ull});
  EXPECT_TRUE(top.contains(Gpa{~0ull}, 1));
  EXPECT_FALSE(top.contains(Gpa{~0ull}, 2));
}

TEST(AddrRange, Overlaps) {
  AddrRange<DmaAddr> a{DmaAddr{0x1000}, 0x1000};
  EXPECT_TRUE(a.overlaps({DmaAddr{0x1fff}, 1}));
  EXPECT_FALSE(a.overlaps({DmaAddr{0x2000}, 0x1000}));
  EXPECT_FALSE(a.overlaps({DmaAddr{0x0}, 0x1000}));
  EXPECT_FALSE(a.overlaps({DmaAddr{0x1500}, 0}));
}

TEST(AddrRange, MakeRangeRejectsWrap) {
  EXPECT_THAT(make_range(Gpa{~0ull}, 2), IsError(BaseErrc::kOverflow));
  auto r = make_range(Gpa{0x10}, 0x10);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->last(), Gpa{0x1f});
}

TEST(Address, FormatsWithSpacePrefix) {
  EXPECT_EQ(fmt::format("{}", Gpa{0x1000}), "gpa:0x1000");
  EXPECT_EQ(fmt::format("{}", DmaAddr{0x2a}), "dma:0x2a");
  EXPECT_EQ(fmt::format("{}", Iova{0}), "iova:0x0");
  EXPECT_EQ(fmt::format("{}", FrontVa{0x7f00}), "fva:0x7f00");
}

TEST(Align, Helpers) {
  EXPECT_EQ(align_up(0x1001, 0x1000), 0x2000u);
  EXPECT_EQ(align_down(0x1fff, 0x1000), 0x1000u);
  EXPECT_TRUE(is_pow2(4096));
  EXPECT_FALSE(is_pow2(0));
  EXPECT_FALSE(is_pow2(3));
}

}  // namespace
}  // namespace vdma
