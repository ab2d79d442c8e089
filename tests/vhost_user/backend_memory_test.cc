// BackendMemoryTable: mapping at mmap_offset, overlap rules, user/guest
// translation with overflow-safe bounds, add/remove, short fds.
#include "vdma/vhost_user/backend_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include <gtest/gtest.h>

#include "result_matchers.h"
#include "vdma/base/unique_fd.h"

namespace vdma::vhost_user {
namespace {

using ::vdma::testing::IsError;
using ::vdma::testing::IsOk;

UniqueFd memfd_with_pattern(size_t size) {
  UniqueFd fd(::memfd_create("backend-memory-test", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<uint8_t>(i / 4096 + i * 3);
  EXPECT_EQ(::pwrite(fd.get(), bytes.data(), size, 0), static_cast<ssize_t>(size));
  return fd;
}

uint8_t pattern_at(size_t offset) { return static_cast<uint8_t>(offset / 4096 + offset * 3); }

MemoryRegion region(uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t off) {
  return MemoryRegion{DmaAddr(gpa), size, FrontVa(uaddr), off};
}

TEST(BackendMemoryTable, MapsAtUnalignedMmapOffset) {
  UniqueFd fd = memfd_with_pattern(0x10000);
  BackendMemoryTable t(8);
  const MemoryRegion r = region(0x100000, 0x2000, 0x7000'0000'0000, 0x3010);
  const int fds[1] = {fd.get()};
  ASSERT_THAT(t.replace({&r, 1}, fds), IsOk());
  auto host = t.user_to_host(FrontVa(0x7000'0000'0000), 16);
  ASSERT_TRUE(host.has_value());
  EXPECT_EQ(static_cast<uint8_t>((*host)[0]), pattern_at(0x3010));
  auto guest = t.user_to_guest(FrontVa(0x7000'0000'0100), 0x100);
  ASSERT_TRUE(guest.has_value());
  EXPECT_EQ(*guest, DmaAddr(0x100100));
  // Writes through the mapping reach the fd (MAP_SHARED).
  (*host)[1] = std::byte{0x5a};
  uint8_t b = 0;
  ASSERT_EQ(::pread(fd.get(), &b, 1, 0x3011), 1);
  EXPECT_EQ(b, 0x5a);
}

TEST(BackendMemoryTable, TranslateByGuestAddressCrossesAdjacentRegions) {
  UniqueFd fd = memfd_with_pattern(0x4000);
  BackendMemoryTable t(8);
  const MemoryRegion rs[2] = {region(0x1000, 0x1000, 0x50000, 0), region(0x2000, 0x1000, 0x90000, 0x2000)};
  const int fds[2] = {fd.get(), fd.get()};
  ASSERT_THAT(t.replace(rs, fds), IsOk());
  std::vector<Fragment> frags;
  ASSERT_THAT(t.translate(DmaAddr(0x1ff0), 0x20, Access::kRead, frags), IsOk());
  ASSERT_EQ(frags.size(), 2u);
  EXPECT_EQ(frags[0].len, 0x10u);
  EXPECT_EQ(frags[1].len, 0x10u);
  EXPECT_EQ(static_cast<uint8_t>(frags[0].host[0]), pattern_at(0xff0));
  EXPECT_EQ(static_cast<uint8_t>(frags[1].host[0]), pattern_at(0x2000));
  // A hole, and wrap past 2^64: errors, nothing appended.
  frags.clear();
  EXPECT_THAT(t.translate(DmaAddr(0x2ff0), 0x20, Access::kRead, frags), IsError(MemErrc::kNotMapped));
  EXPECT_TRUE(frags.empty());
  EXPECT_THAT(t.translate(DmaAddr(0x1000), UINT64_MAX, Access::kRead, frags), IsError(BaseErrc::kOverflow));
  EXPECT_TRUE(frags.empty());
}

TEST(BackendMemoryTable, RejectsOverlapInEitherSpaceAndKeepsTheOldTable) {
  UniqueFd fd = memfd_with_pattern(0x4000);
  BackendMemoryTable t(8);
  const MemoryRegion good = region(0, 0x1000, 0x10000, 0);
  const int one[1] = {fd.get()};
  ASSERT_THAT(t.replace({&good, 1}, one), IsOk());
  const int two[2] = {fd.get(), fd.get()};
  const MemoryRegion guest_overlap[2] = {region(0x1000, 0x2000, 0x20000, 0), region(0x2000, 0x1000, 0x40000, 0)};
  EXPECT_THAT(t.replace(guest_overlap, two), IsError(MemErrc::kOverlap));
  const MemoryRegion user_overlap[2] = {region(0x1000, 0x1000, 0x20000, 0), region(0x3000, 0x1000, 0x20fff, 0)};
  EXPECT_THAT(t.replace(user_overlap, two), IsError(MemErrc::kOverlap));
  ASSERT_EQ(t.region_count(), 1u);
  EXPECT_EQ(t.regions()[0].spec(), good);
  EXPECT_THAT(t.add(region(0x800, 0x1000, 0x90000, 0), fd.get()), IsError(MemErrc::kOverlap));
}

TEST(BackendMemoryTable, RejectsAFdShorterThanTheRegion) {
  UniqueFd fd = memfd_with_pattern(0x2000);
  BackendMemoryTable t(8);
  EXPECT_THAT(t.add(region(0, 0x2000, 0x10000, 0x1000), fd.get()), IsError(MemErrc::kInvalidRegion));
  EXPECT_THAT(t.add(region(0, 0x1000, 0x10000, 0), -1), IsError(BaseErrc::kSystem));
  EXPECT_EQ(t.region_count(), 0u);
}

TEST(BackendMemoryTable, UserRangesMustLieInsideTheTable) {
  UniqueFd fd = memfd_with_pattern(0x2000);
  BackendMemoryTable t(8);
  ASSERT_THAT(t.add(region(0, 0x2000, 0x10000, 0), fd.get()), IsOk());
  EXPECT_THAT(t.user_to_host(FrontVa(0x11fff), 2), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(t.user_to_host(FrontVa(0xffff), 1), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(t.user_to_host(FrontVa(0x10000), UINT64_MAX), IsError(BaseErrc::kOverflow));
  EXPECT_THAT(t.user_to_host(FrontVa(0x11fff), 1), IsOk());
  int calls = 0;
  EXPECT_THAT(t.for_each_user_piece(FrontVa(0x11000), 0x2000, [&](FrontVa, std::byte*, uint64_t) { ++calls; }),
              IsError(MemErrc::kNotMapped));
  EXPECT_EQ(calls, 0);
  EXPECT_THAT(t.for_each_user_piece(FrontVa(~uint64_t{0}), 2, [&](FrontVa, std::byte*, uint64_t) { ++calls; }),
              IsError(BaseErrc::kOverflow));
  EXPECT_EQ(calls, 0);
}

TEST(BackendMemoryTable, ForEachUserPieceSplitsAtRegionBounds) {
  UniqueFd fd = memfd_with_pattern(0x4000);
  BackendMemoryTable t(8);
  ASSERT_THAT(t.add(region(0x0, 0x1000, 0x10000, 0), fd.get()), IsOk());
  ASSERT_THAT(t.add(region(0x8000, 0x1000, 0x11000, 0x3000), fd.get()), IsOk());
  std::vector<std::pair<uint64_t, uint64_t>> pieces;
  ASSERT_THAT(t.for_each_user_piece(FrontVa(0x10800), 0x1000,
                                    [&](FrontVa a, std::byte* host, uint64_t len) {
                                      pieces.emplace_back(a.value(), len);
                                      EXPECT_NE(host, nullptr);
                                    }),
              IsOk());
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0], std::make_pair(uint64_t{0x10800}, uint64_t{0x800}));
  EXPECT_EQ(pieces[1], std::make_pair(uint64_t{0x11000}, uint64_t{0x800}));
}

TEST(BackendMemoryTable, AddRemoveAndSlotLimit) {
  UniqueFd fd = memfd_with_pattern(0x4000);
  BackendMemoryTable t(2);
  const MemoryRegion a = region(0x0, 0x1000, 0x10000, 0);
  const MemoryRegion b = region(0x1000, 0x1000, 0x20000, 0x1000);
  ASSERT_THAT(t.add(a, fd.get()), IsOk());
  ASSERT_THAT(t.add(b, fd.get()), IsOk());
  EXPECT_THAT(t.add(region(0x9000, 0x1000, 0x90000, 0), fd.get()), IsError(MemErrc::kNoSpace));
  // REM_MEM_REG matches guest address, user address and size; not mmap_offset.
  EXPECT_THAT(t.remove(region(0x1000, 0x1000, 0x20000, 0x3000)), IsOk());
  EXPECT_THAT(t.remove(b), IsError(MemErrc::kNotMapped));
  EXPECT_THAT(t.remove(region(0x0, 0x800, 0x10000, 0)), IsError(MemErrc::kNotMapped));
  EXPECT_EQ(t.region_count(), 1u);
  EXPECT_THAT(t.user_to_host(FrontVa(0x20000), 1), IsError(MemErrc::kNotMapped));
}

}  // namespace
}  // namespace vdma::vhost_user
