// DeviceIotlb, single-threaded: insert/lookup/invalidate semantics (exact
// fragments, misses, permission failures, boundaries, overlap replacement,
// wrap of iova+len), eviction, statistics, the DeviceMemory interface and
// the allocation-free hit path. Concurrency is in
// device_iotlb_concurrency_test.cc.
#include "vdma/iommu/device_iotlb.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <new>

#include "result_matchers.h"

// Counts allocations of this thread, to show the hit path makes none.
namespace {
thread_local size_t tls_allocations = 0;
}  // namespace

void* operator new(size_t n) {
  ++tls_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
// g++ 12 at -O2 inlines these into gtest code whose pointer came from a
// new-expression and reports free() on it (-Wmismatched-new-delete): it does
// not see that operator new above is malloc. A false positive.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace vdma {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr Access kR = Access::kRead;
constexpr Access kW = Access::kWrite;
constexpr Access kRW = Access::kReadWrite;

AddrRange<Iova> iova_range(uint64_t start, uint64_t len) { return {Iova(start), len}; }

class DeviceIotlbTest : public ::testing::Test {
 protected:
  void SetUp() override { reader = *iotlb.register_reader(); }

  std::byte* h(uint64_t off) { return mem.data() + off; }
  IotlbFragment frag(uint64_t iova, uint64_t len, uint64_t uaddr, uint64_t host_off, Access perms) {
    return IotlbFragment{Iova(iova), len, FrontVa(uaddr), h(host_off), perms};
  }
  Result<bool> lookup(uint64_t iova, uint64_t len, Access access) {
    ReadSection section(reader);
    return iotlb.lookup(section, Iova(iova), len, access, found);
  }
  void insert_ok(uint64_t iova, uint64_t size, uint64_t uaddr, uint64_t host_off, Access perms) {
    ASSERT_THAT(iotlb.insert(Iova(iova), size, FrontVa(uaddr), h(host_off), perms), IsOk());
  }

  std::vector<std::byte> mem = std::vector<std::byte>(0x20000);
  DeviceIotlb iotlb{{.max_entries = 16, .max_readers = 4}};
  ReaderHandle reader;  // destroyed before iotlb
  IotlbLookup found;
  std::vector<Fragment> frags;
};

TEST_F(DeviceIotlbTest, LookupInsideOneEntryGivesOneExactFragment) {
  insert_ok(0x10000, 0x3000, 0x7f0000, 0x1000, kRW);
  EXPECT_THAT(lookup(0x10800, 0x100, kR), HasValue(true));
  EXPECT_THAT(found.fragments, ElementsAre(frag(0x10800, 0x100, 0x7f0800, 0x1800, kRW)));
  EXPECT_TRUE(found.misses.empty());
  EXPECT_TRUE(found.permission_failures.empty());
  EXPECT_TRUE(found.complete());
}

// removed_since(): whether an entry inserted after a noted number lost
// translations since (an answer to a MISS that came and went), by each way
// entries go: invalidate, forget, eviction, invalidate_all. Removing older
// entries, and an insert that replaces a newer one, do not count.
TEST_F(DeviceIotlbTest, RemovedSinceTellsWhetherAnEntryInsertedAfterTheNoteLostTranslations) {
  insert_ok(0x1000, 0x1000, 0x7f1000, 0x1000, kR);  // before the note
  const uint64_t noted = iotlb.next_insert_seq();
  EXPECT_FALSE(iotlb.removed_since(noted));
  ASSERT_THAT(iotlb.invalidate(Iova(0x1000), 0x1000), IsOk());  // an older entry
  EXPECT_FALSE(iotlb.removed_since(noted));
  insert_ok(0x2000, 0x1000, 0x7f2000, 0x2000, kR);   // the answer
  insert_ok(0x2000, 0x1000, 0x7f2000, 0x2000, kRW);  // replaced, still translated
  EXPECT_FALSE(iotlb.removed_since(noted));
  ASSERT_THAT(iotlb.invalidate(Iova(0x2800), 0x100), IsOk());  // part of it
  EXPECT_TRUE(iotlb.removed_since(noted));

  const uint64_t noted2 = iotlb.next_insert_seq();
  insert_ok(0x3000, 0x1000, 0x7f3000, 0x3000, kR);
  EXPECT_FALSE(iotlb.removed_since(noted2));
  const AddrRange<Iova> r = iova_range(0x3000, 1);
  EXPECT_EQ(iotlb.forget(std::span(&r, 1)), 1u);
  EXPECT_TRUE(iotlb.removed_since(noted2));

  const uint64_t noted3 = iotlb.next_insert_seq();
  for (uint64_t i = 0; i < 16; ++i) insert_ok(0x10000 + i * 0x1000, 0x1000, 0x7f0000, 0, kR);  // fills it
  EXPECT_FALSE(iotlb.removed_since(noted3));  // evicted only older entries so far
  insert_ok(0x40000, 0x1000, 0x7f0000, 0, kR);  // evicts the oldest, inserted after noted3
  EXPECT_TRUE(iotlb.removed_since(noted3));

  const uint64_t noted4 = iotlb.next_insert_seq();
  EXPECT_FALSE(iotlb.removed_since(noted4));
  insert_ok(0x50000, 0x1000, 0x7f0000, 0, kR);
  iotlb.invalidate_all();
  EXPECT_TRUE(iotlb.removed_since(noted4));
}

TEST_F(DeviceIotlbTest, LookupAcrossEntriesReportsFragmentsMissesAndPermissionFailuresSeparately) {
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kRW);
  insert_ok(0x2000, 0x1000, 0xb000, 0x4000, kR);  // adjacent, read-only
  insert_ok(0x5000, 0x1000, 0xc000, 0x8000, kRW);

  EXPECT_THAT(lookup(0x1800, 0x4000, kW), HasValue(false));
  EXPECT_THAT(found.fragments,
              ElementsAre(frag(0x1800, 0x800, 0xa800, 0x800, kRW), frag(0x5000, 0x800, 0xc000, 0x8000, kRW)));
  EXPECT_THAT(found.permission_failures, ElementsAre(iova_range(0x2000, 0x1000)));
  EXPECT_THAT(found.misses, ElementsAre(iova_range(0x3000, 0x2000)));

  EXPECT_THAT(lookup(0x1800, 0x4000, kR), HasValue(false));
  EXPECT_THAT(found.fragments,
              ElementsAre(frag(0x1800, 0x800, 0xa800, 0x800, kRW), frag(0x2000, 0x1000, 0xb000, 0x4000, kR),
                          frag(0x5000, 0x800, 0xc000, 0x8000, kRW)));
  EXPECT_TRUE(found.permission_failures.empty());
  EXPECT_THAT(found.misses, ElementsAre(iova_range(0x3000, 0x2000)));
}

TEST_F(DeviceIotlbTest, EveryPermissionFailingEntryIsListedClipped) {
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kR);
  insert_ok(0x2000, 0x1000, 0xb000, 0x1000, kR);
  EXPECT_THAT(lookup(0x1f00, 0x200, kW), HasValue(false));
  EXPECT_TRUE(found.fragments.empty());
  EXPECT_TRUE(found.misses.empty());
  EXPECT_THAT(found.permission_failures, ElementsAre(iova_range(0x1f00, 0x100), iova_range(0x2000, 0x100)));
  EXPECT_FALSE(found.complete());
}

TEST_F(DeviceIotlbTest, MissesAreExactAndClippedToTheRange) {
  EXPECT_THAT(lookup(0x1234, 0x10, kR), HasValue(false));
  EXPECT_THAT(found.misses, ElementsAre(iova_range(0x1234, 0x10)));

  insert_ok(0x2000, 0x1000, 0xb000, 0x0, kRW);
  EXPECT_THAT(lookup(0x1fff, 0x2, kR), HasValue(false));  // one byte before the entry
  EXPECT_THAT(found.misses, ElementsAre(iova_range(0x1fff, 1)));
  EXPECT_THAT(found.fragments, ElementsAre(frag(0x2000, 1, 0xb000, 0x0, kRW)));

  EXPECT_THAT(lookup(0x2fff, 0x2, kR), HasValue(false));  // one byte past the end
  EXPECT_THAT(found.fragments, ElementsAre(frag(0x2fff, 1, 0xbfff, 0xfff, kRW)));
  EXPECT_THAT(found.misses, ElementsAre(iova_range(0x3000, 1)));

  EXPECT_THAT(lookup(0x1000, 0x3000, kR), HasValue(false));  // gaps on both sides
  EXPECT_THAT(found.misses, ElementsAre(iova_range(0x1000, 0x1000), iova_range(0x3000, 0x1000)));
}

TEST_F(DeviceIotlbTest, EntryBoundariesAreExact) {
  insert_ok(0x2000, 0x1000, 0xb000, 0x0, kRW);
  EXPECT_THAT(lookup(0x2000, 0x1000, kRW), HasValue(true));
  EXPECT_THAT(found.fragments, ElementsAre(frag(0x2000, 0x1000, 0xb000, 0x0, kRW)));
  EXPECT_THAT(lookup(0x2fff, 1, kRW), HasValue(true));
  EXPECT_THAT(lookup(0x3000, 1, kRW), HasValue(false));
  EXPECT_THAT(lookup(0x1fff, 1, kRW), HasValue(false));
}

// 1200 entries: a search tree of three levels. Every entry's first and last
// byte, and the gap byte after it, are found exactly; so is the last byte of
// the address space (the tree's padding keys equal it).
TEST_F(DeviceIotlbTest, ManyEntriesAreFoundAtEveryLevelOfTheSearchTree) {
  constexpr uint64_t kCount = 1200;
  DeviceIotlb big({.max_entries = 2 * kCount, .max_readers = 1});
  ReaderHandle r = *big.register_reader();
  const uint64_t top = ~0ull - 0xf;
  for (uint64_t i = 0; i < kCount; ++i) {
    ASSERT_THAT(big.insert(Iova(0x10000 + i * 0x30), 0x20, FrontVa(i << 12), h(i * 8), kR), IsOk());
  }
  ASSERT_THAT(big.insert(Iova(top), 0x10, FrontVa(0), h(0x10000), kR), IsOk());
  IotlbLookup out;
  ReadSection section(r);
  for (uint64_t i = 0; i < kCount; ++i) {
    const uint64_t first = 0x10000 + i * 0x30;
    ASSERT_THAT(big.lookup(section, Iova(first), 1, kR, out), HasValue(true)) << i;
    ASSERT_EQ(out.fragments[0].uaddr, FrontVa(i << 12));
    ASSERT_THAT(big.lookup(section, Iova(first + 0x1f), 1, kR, out), HasValue(true)) << i;
    ASSERT_EQ(out.fragments[0].host, h(i * 8 + 0x1f));
    ASSERT_THAT(big.lookup(section, Iova(first + 0x20), 0x10, kR, out), HasValue(false)) << i;
    ASSERT_THAT(out.misses, ElementsAre(iova_range(first + 0x20, 0x10)));
  }
  EXPECT_THAT(big.lookup(section, Iova(0xffff), 1, kR, out), HasValue(false));
  EXPECT_THAT(big.lookup(section, Iova(~0ull), 1, kR, out), HasValue(true));
  EXPECT_EQ(out.fragments[0].host, h(0x1000f));
  EXPECT_THAT(big.lookup(section, Iova(top - 1), 1, kR, out), HasValue(false));
}

// The page index (entries of at most 16 pages, by page) only proposes an
// entry: a page shared by the tail of a 17-page entry (not indexed) and
// sub-page entries, and an entry reached from a page where another starts,
// still resolve to the entry that holds the address.
TEST_F(DeviceIotlbTest, PagesSharedByLargeAndSmallEntriesResolveExactly) {
  DeviceIotlb t({.max_entries = 16, .max_readers = 1});
  // A: 17 pages 0x100..0x110, ending inside page 0x110.
  ASSERT_THAT(t.insert(Iova(0x100000), 0x10800, FrontVa(0xa00000), h(0x0), kRW), IsOk());
  // B and C: sub-page entries in page 0x110; D: from page 0x110 through 0x112.
  ASSERT_THAT(t.insert(Iova(0x110800), 0x100, FrontVa(0xb00000), h(0x11000), kR), IsOk());
  ASSERT_THAT(t.insert(Iova(0x110900), 0x100, FrontVa(0xc00000), h(0x12000), kR), IsOk());
  ASSERT_THAT(t.insert(Iova(0x110a00), 0x2600, FrontVa(0xd00000), h(0x13000), kRW), IsOk());
  // E: exactly 16 pages (indexed).
  ASSERT_THAT(t.insert(Iova(0x200000), 0x10000, FrontVa(0xe00000), h(0x0), kW), IsOk());
  IotlbLookup out;
  auto one = [&](uint64_t iova, uint64_t len, Access access) {
    // A fresh reader each time, so no hint from the previous lookup helps.
    ReaderHandle fresh = *t.register_reader();
    ReadSection section(fresh);
    EXPECT_THAT(t.lookup(section, Iova(iova), len, access, out), HasValue(true)) << std::hex << iova;
    return out.fragments.size() == 1 ? out.fragments[0] : IotlbFragment{};
  };
  EXPECT_EQ(one(0x110400, 0x100, kW), frag(0x110400, 0x100, 0xa10400, 0x10400, kRW));  // A's tail in page 0x110
  EXPECT_EQ(one(0x1107ff, 1, kR), frag(0x1107ff, 1, 0xa107ff, 0x107ff, kRW));
  EXPECT_EQ(one(0x100000, 8, kR), frag(0x100000, 8, 0xa00000, 0x0, kRW));
  EXPECT_EQ(one(0x108123, 8, kR), frag(0x108123, 8, 0xa08123, 0x8123, kRW));
  EXPECT_EQ(one(0x110800, 0x100, kR), frag(0x110800, 0x100, 0xb00000, 0x11000, kR));
  EXPECT_EQ(one(0x1109ff, 1, kR), frag(0x1109ff, 1, 0xc000ff, 0x120ff, kR));
  EXPECT_EQ(one(0x110a10, 0x10, kR), frag(0x110a10, 0x10, 0xd00010, 0x13010, kRW));  // D from B's page
  EXPECT_EQ(one(0x112fff, 1, kW), frag(0x112fff, 1, 0xd025ff, 0x155ff, kRW));       // D's last page
  EXPECT_EQ(one(0x20f123, 8, kW), frag(0x20f123, 8, 0xe0f123, 0xf123, kW));         // E's last page
  // Beyond every entry, and in the gap after D: misses.
  ReaderHandle fresh = *t.register_reader();
  ReadSection section(fresh);
  EXPECT_THAT(t.lookup(section, Iova(0x113000), 1, kR, out), HasValue(false));
  EXPECT_THAT(out.misses, ElementsAre(iova_range(0x113000, 1)));
  EXPECT_THAT(t.lookup(section, Iova(0x210000), 1, kR, out), HasValue(false));
  EXPECT_THAT(out.misses, ElementsAre(iova_range(0x210000, 1)));
}

TEST_F(DeviceIotlbTest, ZeroLengthLookupIsCompleteAndEmpty) {
  EXPECT_THAT(lookup(0x5000, 0, kR), HasValue(true));
  EXPECT_TRUE(found.fragments.empty());
  EXPECT_TRUE(found.misses.empty());
}

TEST_F(DeviceIotlbTest, TopOfTheAddressSpaceWorksAndWrapsAreRejected) {
  const uint64_t top = ~0ull - 0xfff;  // [top, 2^64)
  insert_ok(top, 0x1000, 0x10000, 0x2000, kRW);
  EXPECT_THAT(lookup(~0ull, 1, kR), HasValue(true));
  EXPECT_THAT(found.fragments, ElementsAre(frag(~0ull, 1, 0x10fff, 0x2fff, kRW)));
  EXPECT_THAT(lookup(top, 0x1000, kR), HasValue(true));
  EXPECT_THAT(lookup(~0ull, 0, kR), HasValue(true));

  EXPECT_THAT(lookup(~0ull, 2, kR), IsErrorWith(BaseErrc::kOverflow, HasSubstr("iova:0xffffffffffffffff + len 0x2")));
  EXPECT_TRUE(found.fragments.empty());
  EXPECT_THAT(iotlb.insert(Iova(top), 0x1001, FrontVa(0), h(0), kR), IsError(BaseErrc::kOverflow));
  EXPECT_THAT(iotlb.insert(Iova(0), 0x10, FrontVa(~0ull - 4), h(0), kR), IsError(BaseErrc::kOverflow));
  EXPECT_THAT(iotlb.invalidate(Iova(~0ull), 2), IsError(BaseErrc::kOverflow));
  EXPECT_THAT(iotlb.translate(DmaAddr(~0ull), 2, kR, frags), IsError(BaseErrc::kOverflow));
  EXPECT_EQ(iotlb.size(), 1u);

  ASSERT_THAT(iotlb.invalidate(Iova(~0ull), 1), IsOk());  // cuts the last byte off
  EXPECT_THAT(iotlb.entries(), ElementsAre(frag(top, 0xfff, 0x10000, 0x2000, kRW)));
}

TEST_F(DeviceIotlbTest, BadUpdatesAreRejectedAndChangeNothing) {
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kRW);
  EXPECT_THAT(iotlb.insert(Iova(0x1000), 0, FrontVa(0), h(0), kR),
              IsErrorWith(IommuErrc::kInvalidArgument, HasSubstr("iova:0x1000 + size 0")));
  EXPECT_THAT(iotlb.insert(Iova(0x1000), 0x10, FrontVa(0), h(0), Access::kNone),
              IsErrorWith(IommuErrc::kInvalidArgument, HasSubstr("no access permitted")));
  EXPECT_THAT(iotlb.insert(Iova(0x1000), 0x10, FrontVa(0x5000), nullptr, kR),
              IsErrorWith(IommuErrc::kInvalidArgument, HasSubstr("fva:0x5000")));
  EXPECT_THAT(iotlb.invalidate(Iova(0x1000), 0), IsError(IommuErrc::kInvalidArgument));
  EXPECT_THAT(iotlb.entries(), ElementsAre(frag(0x1000, 0x1000, 0xa000, 0x0, kRW)));
}

TEST_F(DeviceIotlbTest, OverlappingInsertReplacesOnlyTheOverlappedPart) {
  insert_ok(0x1000, 0x4000, 0xa000, 0x0, kRW);
  insert_ok(0x2000, 0x1000, 0xf000, 0x8000, kR);
  EXPECT_THAT(iotlb.entries(), ElementsAre(frag(0x1000, 0x1000, 0xa000, 0x0, kRW),  // kept below
                                           frag(0x2000, 0x1000, 0xf000, 0x8000, kR),  // the new one
                                           frag(0x3000, 0x2000, 0xc000, 0x2000, kRW)));  // kept above
  EXPECT_THAT(lookup(0x2800, 0x10, kR), HasValue(true));
  EXPECT_THAT(found.fragments, ElementsAre(frag(0x2800, 0x10, 0xf800, 0x8800, kR)));
}

TEST_F(DeviceIotlbTest, InsertSpanningSeveralEntriesReplacesAllOfThem) {
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kRW);
  insert_ok(0x2000, 0x1000, 0xb000, 0x1000, kRW);
  insert_ok(0x4000, 0x1000, 0xc000, 0x2000, kRW);
  insert_ok(0x1800, 0x3000, 0x50000, 0x10000, kR);  // [0x1800, 0x4800)
  EXPECT_THAT(iotlb.entries(),
              ElementsAre(frag(0x1000, 0x800, 0xa000, 0x0, kRW), frag(0x1800, 0x3000, 0x50000, 0x10000, kR),
                          frag(0x4800, 0x800, 0xc800, 0x2800, kRW)));
  // An exact re-insert replaces the entry with itself.
  insert_ok(0x1800, 0x3000, 0x50000, 0x10000, kR);
  EXPECT_EQ(iotlb.size(), 3u);
}

TEST_F(DeviceIotlbTest, InvalidateRemovesExactlyItsRange) {
  insert_ok(0x1000, 0x4000, 0xa000, 0x0, kRW);
  ASSERT_THAT(iotlb.invalidate(Iova(0x2000), 0x1000), IsOk());
  EXPECT_THAT(iotlb.entries(),
              ElementsAre(frag(0x1000, 0x1000, 0xa000, 0x0, kRW), frag(0x3000, 0x2000, 0xc000, 0x2000, kRW)));
  EXPECT_THAT(lookup(0x1000, 0x4000, kR), HasValue(false));
  EXPECT_THAT(found.misses, ElementsAre(iova_range(0x2000, 0x1000)));

  ASSERT_THAT(iotlb.invalidate(Iova(0x8000), 0x1000), IsOk());  // a gap: nothing changes
  EXPECT_EQ(iotlb.size(), 2u);

  ASSERT_THAT(iotlb.invalidate(Iova(0x1fff), 0x1002), IsOk());  // the last byte of one, the first of the next
  EXPECT_THAT(iotlb.entries(),
              ElementsAre(frag(0x1000, 0xfff, 0xa000, 0x0, kRW), frag(0x3001, 0x1fff, 0xc001, 0x2001, kRW)));
}

TEST_F(DeviceIotlbTest, InvalidateAllEmptiesTheTable) {
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kRW);
  insert_ok(0x9000, 0x1000, 0xb000, 0x0, kRW);
  iotlb.invalidate_all();
  EXPECT_EQ(iotlb.size(), 0u);
  EXPECT_THAT(lookup(0x1000, 1, kR), HasValue(false));
}

TEST_F(DeviceIotlbTest, EvictsTheLeastRecentlyInsertedEntry) {
  DeviceIotlb small({.max_entries = 3, .max_readers = 1});
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_THAT(small.insert(Iova(0x1000 * (i + 1)), 0x100, FrontVa(0), h(0), kR), IsOk());
  }
  ASSERT_THAT(small.insert(Iova(0x4000), 0x100, FrontVa(0), h(0), kR), IsOk());
  EXPECT_EQ(small.size(), 3u);
  EXPECT_EQ(small.stats().evictions, 1u);
  EXPECT_EQ(small.entries().front().iova, Iova(0x2000));  // 0x1000, inserted first, is gone

  // Inserting 0x2000 again makes it the newest; 0x3000 goes next.
  ASSERT_THAT(small.insert(Iova(0x2000), 0x100, FrontVa(0), h(0), kR), IsOk());
  ASSERT_THAT(small.insert(Iova(0x5000), 0x100, FrontVa(0), h(0), kR), IsOk());
  std::vector<Iova> left;
  for (const IotlbFragment& f : small.entries()) left.push_back(f.iova);
  EXPECT_THAT(left, ElementsAre(Iova(0x2000), Iova(0x4000), Iova(0x5000)));
  EXPECT_EQ(small.stats().evictions, 2u);
}

TEST_F(DeviceIotlbTest, InvalidateThatSplitsAtTheLimitEvictsTheOldestPiece) {
  DeviceIotlb small({.max_entries = 3, .max_readers = 1});
  ASSERT_THAT(small.insert(Iova(0x1000), 0x3000, FrontVa(0xa000), h(0), kR), IsOk());
  ASSERT_THAT(small.insert(Iova(0x8000), 0x100, FrontVa(0), h(0), kR), IsOk());
  ASSERT_THAT(small.insert(Iova(0x9000), 0x100, FrontVa(0), h(0), kR), IsOk());
  ASSERT_THAT(small.invalidate(Iova(0x2000), 0x1000), IsOk());
  // Both pieces of the first entry are the oldest; the lower one goes.
  std::vector<Iova> left;
  for (const IotlbFragment& f : small.entries()) left.push_back(f.iova);
  EXPECT_THAT(left, ElementsAre(Iova(0x3000), Iova(0x8000), Iova(0x9000)));
  EXPECT_EQ(small.stats().evictions, 1u);
}

TEST_F(DeviceIotlbTest, AnInsertNeverEvictsItself) {
  DeviceIotlb one({.max_entries = 1, .max_readers = 1});
  ASSERT_THAT(one.insert(Iova(0x1000), 0x3000, FrontVa(0), h(0), kR), IsOk());
  ASSERT_THAT(one.insert(Iova(0x2000), 0x100, FrontVa(0x7000), h(0x100), kRW), IsOk());
  EXPECT_THAT(one.entries(), ElementsAre(IotlbFragment{Iova(0x2000), 0x100, FrontVa(0x7000), h(0x100), kRW}));
  EXPECT_EQ(one.stats().evictions, 2u);  // the pieces below and above
}

TEST_F(DeviceIotlbTest, StatisticsCountEachLookupOnce) {
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kR);
  EXPECT_THAT(lookup(0x1000, 0x10, kR), HasValue(true));
  EXPECT_THAT(iotlb.translate(DmaAddr(0x1000), 0x10, kR, frags), IsOk());
  EXPECT_THAT(lookup(0x1800, 0x1000, kW), HasValue(false));  // both a denial and a miss: counted as a miss
  EXPECT_THAT(iotlb.translate(DmaAddr(0x1000), 0x10, kW, frags), IsError(MemErrc::kPermissionDenied));
  const IotlbStats s = iotlb.stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.permission_failures, 1u);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.evictions, 0u);
}

TEST_F(DeviceIotlbTest, TranslateMergesHostContiguousPieces) {
  const DeviceMemory& dm = iotlb;
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kRW);
  insert_ok(0x2000, 0x1000, 0xb000, 0x1000, kRW);   // continues the host range
  insert_ok(0x3000, 0x1000, 0xc000, 0x9000, kRW);   // does not
  ASSERT_THAT(dm.translate(DmaAddr(0x1800), 0x2000, kW, frags), IsOk());
  ASSERT_EQ(frags.size(), 2u);
  EXPECT_EQ(frags[0].host, h(0x800));
  EXPECT_EQ(frags[0].len, 0x1800u);
  EXPECT_EQ(frags[1].host, h(0x9000));
  EXPECT_EQ(frags[1].len, 0x800u);
}

TEST_F(DeviceIotlbTest, TranslateNamesTheFirstFailingIovaAndAppendsNothing) {
  const DeviceMemory& dm = iotlb;
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kRW);
  insert_ok(0x2000, 0x1000, 0xb000, 0x1000, kR);
  frags.push_back(Fragment{h(0x42), 1});  // the caller's earlier content is kept
  EXPECT_THAT(dm.translate(DmaAddr(0x1800), 0x2000, kR, frags),
              IsErrorWith(MemErrc::kNotMapped, HasSubstr("iova:0x3000 is not mapped")));
  EXPECT_THAT(dm.translate(DmaAddr(0x1800), 0x2000, kW, frags),  // the denial comes first
              IsErrorWith(MemErrc::kPermissionDenied, HasSubstr("iova:0x2000 allows read, not write")));
  EXPECT_THAT(dm.translate(DmaAddr(0x800), 0x1000, kR, frags),
              IsErrorWith(MemErrc::kNotMapped, HasSubstr("iova:0x800 is not mapped")));
  ASSERT_EQ(frags.size(), 1u);
  EXPECT_EQ(frags[0].host, h(0x42));

  // len 0: succeeds without a fragment where mapped, fails where not.
  EXPECT_THAT(dm.translate(DmaAddr(0x1000), 0, kR, frags), IsOk());
  EXPECT_EQ(frags.size(), 1u);
  EXPECT_THAT(dm.translate(DmaAddr(0x5000), 0, kR, frags), IsError(MemErrc::kNotMapped));
}

TEST_F(DeviceIotlbTest, TranslateWorksInsideAndOutsideSections) {
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kRW);
  auto outside = iotlb.translate(DmaAddr(0x1010), 0x10, kR);
  ASSERT_THAT(outside, IsOk());
  ReadSection outer(reader);
  ReadSection inner(reader);  // sections of one reader nest
  auto inside = iotlb.translate(DmaAddr(0x1010), 0x10, kR);
  ASSERT_THAT(inside, IsOk());
  EXPECT_EQ(inside->at(0).host, outside->at(0).host);
  EXPECT_EQ(inside->at(0).host, h(0x10));
}

TEST_F(DeviceIotlbTest, ReaderRegistrationIsLimited) {
  DeviceIotlb two({.max_entries = 4, .max_readers = 2});
  auto a = two.register_reader();
  auto b = two.register_reader();
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_THAT(two.register_reader(), IsErrorWith(IommuErrc::kLimitExceeded, HasSubstr("all 2 reader slots")));
  *a = ReaderHandle();  // releases its slot
  auto c = two.register_reader();
  EXPECT_THAT(c, IsOk());
}

TEST_F(DeviceIotlbTest, TheHitPathDoesNotAllocateOnceWarm) {
  insert_ok(0x1000, 0x1000, 0xa000, 0x0, kRW);
  insert_ok(0x2000, 0x1000, 0xb000, 0x2000, kRW);
  {
    ReadSection section(reader);
    ASSERT_THAT(iotlb.lookup(section, Iova(0x1800), 0x1000, kR, found), HasValue(true));  // warms `found`
    ASSERT_THAT(iotlb.translate(DmaAddr(0x1800), 0x1000, kR, frags), IsOk());              // warms `frags`
  }
  const size_t before = tls_allocations;
  for (int i = 0; i < 100; ++i) {
    ReadSection section(reader);
    ASSERT_TRUE(iotlb.lookup(section, Iova(0x1800), 0x1000, kR, found).value());
    frags.clear();
    ASSERT_TRUE(iotlb.translate(DmaAddr(0x1800), 0x1000, kR, frags).has_value());
  }
  for (int i = 0; i < 100; ++i) {  // outside a section: the transient slot path
    frags.clear();
    ASSERT_TRUE(iotlb.translate(DmaAddr(0x1800), 0x1000, kR, frags).has_value());
  }
  EXPECT_EQ(tls_allocations - before, 0u);
  EXPECT_EQ(found.fragments.size(), 2u);
}

// forget() (the per-request policy): whole entries that a range touches go,
// cut pieces do not stay behind, untouched entries stay, and nothing waits.
TEST_F(DeviceIotlbTest, ForgetDropsWholeTouchedEntriesWithoutAGracePeriod) {
  insert_ok(0x1000, 0x1000, 0x7000'0000, 0x1000, kR);   // touched in its middle
  insert_ok(0x2000, 0x2000, 0x7000'1000, 0x2000, kRW);  // touched at its last byte
  insert_ok(0x8000, 0x1000, 0x7000'8000, 0x8000, kW);   // untouched (the ring, say)
  insert_ok(0x9000, 0x1000, 0x7000'9000, 0x9000, kR);   // touched by the second range
  const uint64_t grace_before = iotlb.stats().grace_periods;
  const AddrRange<Iova> ranges[] = {iova_range(0x1800, 0x10), iova_range(0x3fff, 1), iova_range(0x9000, 0),
                                    iova_range(0x9ff0, 0x100)};
  EXPECT_EQ(iotlb.forget(ranges), 3u);
  EXPECT_EQ(iotlb.stats().grace_periods, grace_before);
  EXPECT_EQ(iotlb.stats().forgotten, 3u);
  ASSERT_EQ(iotlb.size(), 1u);
  EXPECT_THAT(iotlb.entries(), ElementsAre(frag(0x8000, 0x1000, 0x7000'8000, 0x8000, kW)));
  // The whole first entry went, not just the 16 bytes asked for.
  ASSERT_THAT(lookup(0x1000, 0x1000, kR), HasValue(false));
  EXPECT_THAT(found.misses, ElementsAre(iova_range(0x1000, 0x1000)));
  // Nothing left to drop: no new snapshot, same answer.
  EXPECT_EQ(iotlb.forget(ranges), 0u);
}

// A forgotten translation may still be in use by a reader (another queue's
// request in the same page), so an UPDATE that maps its range differently
// waits for a grace period, as after an eviction.
TEST_F(DeviceIotlbTest, AnInsertOverAForgottenRangeWaitsForReaders) {
  insert_ok(0x1000, 0x1000, 0x7000'0000, 0x1000, kR);
  const AddrRange<Iova> range[] = {iova_range(0x1000, 8)};
  EXPECT_EQ(iotlb.forget(range), 1u);
  const uint64_t grace_before = iotlb.stats().grace_periods;
  insert_ok(0x1000, 0x1000, 0x7000'5000, 0x5000, kR);
  EXPECT_EQ(iotlb.stats().grace_periods, grace_before + 1);
}

TEST_F(DeviceIotlbTest, AWriterInsideASectionIsABug) {
  EXPECT_DEATH(
      {
        ReadSection section(reader);
        (void)iotlb.invalidate(Iova(0x1000), 0x1000);
      },
      "writer called inside a ReadSection");
}

}  // namespace
}  // namespace vdma
