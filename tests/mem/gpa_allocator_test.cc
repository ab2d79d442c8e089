#include "vdma/mem/gpa_allocator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "result_matchers.h"

namespace vdma {
namespace {

using ::testing::HasSubstr;
using namespace vdma::testing;

TEST(GpaAllocator, AlignedFirstFitAndCoalescing) {
  GpaAllocator a({Gpa{0x1000}, 0x10000});
  EXPECT_THAT(a.allocate(0x100, 1), HasValue(Gpa{0x1000}));
  EXPECT_THAT(a.allocate(0x1000, 0x1000), HasValue(Gpa{0x2000}));
  EXPECT_THAT(a.allocate(0x10, 0x10), HasValue(Gpa{0x1100}));
  EXPECT_EQ(a.bytes_free(), 0x10000u - 0x1110u);
  ASSERT_THAT(a.free(Gpa{0x1000}, 0x100), IsOk());
  ASSERT_THAT(a.free(Gpa{0x1100}, 0x10), IsOk());
  ASSERT_THAT(a.free(Gpa{0x2000}, 0x1000), IsOk());
  EXPECT_EQ(a.bytes_free(), 0x10000u);
  EXPECT_THAT(a.allocate(0x10000, 0x1000), HasValue(Gpa{0x1000}));  // coalesced back into one range
}

TEST(GpaAllocator, ErrorsNameTheRequest) {
  GpaAllocator a({Gpa{0}, 0x4000});
  EXPECT_THAT(a.allocate(0, 8), IsError(BaseErrc::kInvalidArgument));
  EXPECT_THAT(a.allocate(8, 3), IsError(BaseErrc::kInvalidArgument));
  EXPECT_THAT(a.allocate(0x5000, 8), IsErrorWith(MemErrc::kNoSpace, HasSubstr("0x5000 bytes")));
  ASSERT_THAT(a.allocate(0x1000, 0x1000), IsOk());
  EXPECT_THAT(a.free(Gpa{0}, 0x800), IsError(BaseErrc::kInvalidArgument));  // wrong size
  EXPECT_THAT(a.free(Gpa{0x1000}, 0x1000), IsError(BaseErrc::kInvalidArgument));  // never allocated
  ASSERT_THAT(a.free(Gpa{0}, 0x1000), IsOk());
  EXPECT_THAT(a.free(Gpa{0}, 0x1000), IsError(BaseErrc::kInvalidArgument));  // double free
}

TEST(GpaAllocator, RandomisedAgainstByteMap) {
  constexpr uint64_t kWindow = 1 << 16;
  GpaAllocator a({Gpa{0}, kWindow});
  std::vector<uint8_t> used(kWindow, 0);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    if (live.empty() || rng() % 2 == 0) {
      uint64_t size = 1 + rng() % 2048;
      uint64_t align = uint64_t{1} << (rng() % 10);
      auto g = a.allocate(size, align);
      if (!g) {
        ASSERT_TRUE(g.error().is(MemErrc::kNoSpace));
        continue;
      }
      ASSERT_EQ(g->value() % align, 0u);
      ASSERT_LE(g->value() + size, kWindow);
      for (uint64_t b = 0; b < size; ++b) ASSERT_EQ(used[g->value() + b]++, 0) << "double allocation";
      live.emplace_back(g->value(), size);
    } else {
      size_t k = rng() % live.size();
      auto [s, n] = live[k];
      ASSERT_THAT(a.free(Gpa{s}, n), IsOk());
      for (uint64_t b = 0; b < n; ++b) used[s + b] = 0;
      live.erase(live.begin() + static_cast<long>(k));
    }
    if (i % 256 == 0) {
      uint64_t free_bytes = 0;
      for (uint8_t u : used) free_bytes += (u == 0);
      ASSERT_EQ(a.bytes_free(), free_bytes);
    }
  }
}

}  // namespace
}  // namespace vdma
