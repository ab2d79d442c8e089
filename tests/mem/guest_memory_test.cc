#include "vdma/mem/guest_memory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <numeric>
#include <vector>

#include "result_matchers.h"

namespace vdma {
namespace {

using ::testing::HasSubstr;
using namespace vdma::testing;

std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
  return v;
}

// Two adjacent regions and one after a hole:
//   [0x0, 0x10000) private, [0x10000, 0x14000) shared, hole, [0x100000, 0x101000) shared
std::unique_ptr<GuestMemory> make_mem() {
  auto m = GuestMemory::create({{Gpa{0x10000}, 0x4000, MemAttr::kShared, "b"},
                                {Gpa{0}, 0x10000, MemAttr::kPrivate, "a"},
                                {Gpa{0x100000}, 0x1000, MemAttr::kShared, "c"}});
  EXPECT_THAT(m, IsOk());
  return std::move(m).value();
}

TEST(GuestMemory, RegionsSortedWithFdsAndAttributes) {
  auto mem = make_mem();
  ASSERT_EQ(mem->regions().size(), 3u);
  EXPECT_EQ(mem->regions()[0].name(), "a");
  EXPECT_EQ(mem->regions()[1].base(), Gpa{0x10000});
  EXPECT_TRUE(mem->regions()[1].is_shared());
  EXPECT_FALSE(mem->regions()[0].is_shared());
  for (const auto& r : mem->regions()) EXPECT_GE(r.fd(), 0);
}

TEST(GuestMemory, AnotherMappingOfTheFdSeesTheSameBytes) {
  auto mem = make_mem();
  const GuestRegion& r = mem->regions()[1];
  auto data = pattern(64, 3);
  ASSERT_THAT(mem->write(Gpa{0x10010}, data), IsOk());
  void* p = ::mmap(nullptr, r.size(), PROT_READ, MAP_SHARED, r.fd(), 0);
  ASSERT_NE(p, MAP_FAILED);
  EXPECT_EQ(std::memcmp(static_cast<std::byte*>(p) + 0x10, data.data(), data.size()), 0);
  ::munmap(p, r.size());
}

TEST(GuestMemory, ReadWriteSpanAdjacentRegions) {
  auto mem = make_mem();
  auto data = pattern(0x3000, 11);
  ASSERT_THAT(mem->write(Gpa{0xf000}, data), IsOk());  // 0x1000 in a, 0x2000 in b
  std::vector<std::byte> back(data.size());
  ASSERT_THAT(mem->read(Gpa{0xf000}, back), IsOk());
  EXPECT_EQ(back, data);
  // The bytes landed in the right regions.
  EXPECT_EQ(mem->regions()[0].host()[0xf000], data[0]);
  EXPECT_EQ(mem->regions()[1].host()[0], data[0x1000]);
}

TEST(GuestMemory, HoleIsAnErrorAndNothingIsWritten) {
  auto mem = make_mem();
  auto data = pattern(0x2000, 1);
  EXPECT_THAT(mem->write(Gpa{0x13000}, data), IsErrorWith(MemErrc::kNotMapped, HasSubstr("gpa:0x14000")));
  // The mapped first half must be untouched.
  for (auto b : mem->regions()[1].host().subspan(0x3000)) ASSERT_EQ(b, std::byte{0});
  std::vector<std::byte> out(0x10);
  EXPECT_THAT(mem->read(Gpa{0x200000}, out), IsError(MemErrc::kNotMapped));
}

TEST(GuestMemory, OverflowingRangesAreRejected) {
  auto mem = make_mem();
  std::vector<std::byte> out(0x10);
  EXPECT_THAT(mem->read(Gpa{~0ull - 4}, out), IsError(BaseErrc::kOverflow));
  EXPECT_THAT(mem->span(Gpa{0x1000}, ~0ull), IsError(BaseErrc::kOverflow));
  EXPECT_THAT(mem->fill(Gpa{~0ull}, 2, std::byte{1}), IsError(BaseErrc::kOverflow));
}

TEST(GuestMemory, SpanOnlyWithinOneRegion) {
  auto mem = make_mem();
  auto s = mem->span(Gpa{0x10000}, 0x4000);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->size(), 0x4000u);
  EXPECT_EQ(s->data(), mem->regions()[1].host().data());
  EXPECT_THAT(mem->span(Gpa{0xff00}, 0x200), IsError(MemErrc::kNotMapped));  // crosses an edge
  EXPECT_THAT(mem->span(Gpa{0x14000}, 1), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(mem->span(Gpa{0x13fff}, 1), IsOk());
}

TEST(GuestMemory, FindRegionAndAttributes) {
  auto mem = make_mem();
  EXPECT_EQ(mem->find_region(Gpa{0x14000}), nullptr);
  EXPECT_EQ(mem->find_region(Gpa{0xffff})->name(), "a");
  EXPECT_EQ(mem->find_region(Gpa{0x100fff})->name(), "c");
  EXPECT_EQ(mem->find_region(Gpa{0x101000}), nullptr);
  EXPECT_TRUE(mem->is_all(Gpa{0x10000}, 0x4000, MemAttr::kShared));
  EXPECT_FALSE(mem->is_all(Gpa{0xf000}, 0x2000, MemAttr::kShared));
  EXPECT_TRUE(mem->contains(Gpa{0xf000}, 0x5000));
  EXPECT_FALSE(mem->contains(Gpa{0xf000}, 0x5001));
}

TEST(GuestMemory, RejectsBadSpecs) {
  EXPECT_THAT(GuestMemory::create({{Gpa{0}, 0, MemAttr::kPrivate, "z"}}), IsError(MemErrc::kInvalidRegion));
  EXPECT_THAT(GuestMemory::create({{Gpa{0}, 0x1001, MemAttr::kPrivate, "odd"}}),
              IsErrorWith(MemErrc::kInvalidRegion, HasSubstr("'odd'")));
  EXPECT_THAT(GuestMemory::create({{Gpa{0x800}, 0x1000, MemAttr::kPrivate, "u"}}), IsError(MemErrc::kInvalidRegion));
  EXPECT_THAT(GuestMemory::create({{Gpa{~0ull - 0xfff}, 0x2000, MemAttr::kPrivate, "w"}}),
              IsError(MemErrc::kInvalidRegion));
  EXPECT_THAT(GuestMemory::create({{Gpa{0}, 0x2000, MemAttr::kPrivate, "x"}, {Gpa{0x1000}, 0x1000, MemAttr::kShared, "y"}}),
              IsErrorWith(MemErrc::kOverlap, HasSubstr("'y'")));
}

TEST(GuestMemory, FillWritesExactRange) {
  auto mem = make_mem();
  ASSERT_THAT(mem->fill(Gpa{0xfffe}, 4, std::byte{0xab}), IsOk());
  EXPECT_EQ(mem->regions()[0].host()[0xfffd], std::byte{0});
  EXPECT_EQ(mem->regions()[0].host()[0xfffe], std::byte{0xab});
  EXPECT_EQ(mem->regions()[1].host()[1], std::byte{0xab});
  EXPECT_EQ(mem->regions()[1].host()[2], std::byte{0});
}

}  // namespace
}  // namespace vdma
