// NestedDomain: two-stage translation through a guest-owned stage-1 table in
// GuestMemory over a PagingDomain, faults at each stage, malformed entries,
// the nested TLB and its invalidation, and hostile tables.
#include "vdma/iommu/nested.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <random>

#include "result_matchers.h"

namespace vdma {
namespace {

using ::testing::AllOf;
using ::testing::Field;
using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr uint64_t k4K = 4096;
constexpr uint64_t k2M = uint64_t{2} << 20;
constexpr uint64_t kRam = uint64_t{16} << 20;
// Stage 2 shows guest RAM [0, 8 MiB) at this IOVA: stage-1 tables and
// outputs are addresses in that window.
constexpr uint64_t kS2Base = 0x4000'0000;
constexpr uint64_t kTablesGpa = 0x10'0000;  // stage-1 table pages come from here
constexpr uint64_t kDataGpa = 0x40'0000;

auto Translated(uint64_t gpa, uint64_t page_size, uint64_t contiguous, Access perms) {
  return AllOf(Field(&PageTranslation::gpa, Gpa{gpa}), Field(&PageTranslation::page_size, page_size),
               Field(&PageTranslation::contiguous, contiguous), Field(&PageTranslation::perms, perms));
}

class Nested : public ::testing::Test {
 protected:
  void SetUp() override {
    mem = std::move(GuestMemory::create({{Gpa{0}, kRam, MemAttr::kPrivate, "ram"}})).value();
    ioas = IoAddressSpace::create();
    s2 = std::move(PagingDomain::create(*ioas)).value();
    ASSERT_THAT(ioas->map(Gpa{0}, 8 << 20, Access::kReadWrite, Iova{kS2Base}), IsOk());
    root = alloc_table();
    nested = std::move(NestedDomain::create(*s2, *mem, Iova{root})).value();
  }
  void TearDown() override {
    nested.reset();
    s2.reset();
  }

  // A zeroed stage-1 table page; returns its stage-2 input address.
  uint64_t alloc_table() {
    const uint64_t gpa = next_table_gpa_;
    next_table_gpa_ += k4K;
    EXPECT_THAT(mem->fill(Gpa{gpa}, k4K, std::byte{0}), IsOk());
    return kS2Base + gpa;
  }
  // Entries are read and written in guest memory through the fixed stage-2 window.
  uint64_t read_entry(uint64_t table, unsigned idx) {
    std::array<std::byte, 8> raw{};
    EXPECT_THAT(mem->read(Gpa{table - kS2Base + idx * 8}, raw), IsOk());
    uint64_t e = 0;
    for (size_t i = 0; i < 8; ++i) e |= uint64_t{std::to_integer<uint8_t>(raw[i])} << (8 * i);
    return e;
  }
  void write_entry(uint64_t table, unsigned idx, uint64_t e) {
    std::array<std::byte, 8> raw{};
    for (size_t i = 0; i < 8; ++i) raw[i] = std::byte{static_cast<uint8_t>(e >> (8 * i))};
    ASSERT_THAT(mem->write(Gpa{table - kS2Base + idx * 8}, raw), IsOk());
  }
  // The table at `level` on the walk of iova, creating missing ones.
  uint64_t table_for(uint64_t iova, unsigned level) {
    uint64_t table = root;
    for (unsigned l = pte::kLevels; l > level; --l) {
      const uint64_t e = read_entry(table, pte::index(iova, l));
      if (pte::is_present(e)) {
        table = pte::address(e);
      } else {
        const uint64_t t = alloc_table();
        write_entry(table, pte::index(iova, l), pte::make_table(t));
        table = t;
      }
    }
    return table;
  }
  // One stage-1 leaf at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB).
  void s1_map(uint64_t iova, uint64_t out, unsigned level, Access perms) {
    write_entry(table_for(iova, level), pte::index(iova, level), pte::make_leaf(out, perms));
  }
  void s1_set(uint64_t iova, unsigned level, uint64_t entry) {
    write_entry(table_for(iova, level), pte::index(iova, level), entry);
  }

  std::unique_ptr<GuestMemory> mem;
  std::unique_ptr<IoAddressSpace> ioas;
  std::unique_ptr<PagingDomain> s2;
  std::unique_ptr<NestedDomain> nested;
  uint64_t root = 0;

 private:
  uint64_t next_table_gpa_ = kTablesGpa;
};

TEST_F(Nested, TranslatesThroughBothStages) {
  s1_map(0x1000, kS2Base + kDataGpa, 1, Access::kReadWrite);
  EXPECT_EQ(nested->kind(), Domain::Kind::kNested);
  // Stage 2 maps the window with 2 MiB leaves; stage 1 with a 4 KiB leaf.
  EXPECT_THAT(nested->translate(Iova{0x1234}, Access::kRead),
              HasValue(Translated(kDataGpa + 0x234, k4K, k4K - 0x234, Access::kReadWrite)));
}

TEST_F(Nested, HugeStage1LeafOverSmallStage2Pages) {
  // Stage 2 in 4 KiB pages: RAM [8 MiB, 12 MiB) at a 2 MiB-aligned IOVA but
  // from a source that is only 4 KiB aligned relative to it.
  ASSERT_THAT(ioas->map(Gpa{(8 << 20) + k4K}, 4 << 20, Access::kRead, Iova{0x8000'0000}), IsOk());
  s1_map(0x20'0000, 0x8000'0000, 2, Access::kReadWrite);
  // Stage-1 2 MiB leaf, stage-2 4 KiB leaf: the linear run is the 4 KiB page.
  EXPECT_THAT(nested->translate(Iova{0x20'3010}, Access::kRead),
              HasValue(Translated((8 << 20) + k4K + 0x3010, k4K, k4K - 0x10, Access::kRead)));
  // Permissions intersect: stage 1 grants write, stage 2 does not.
  EXPECT_THAT(nested->translate(Iova{0x20'3010}, Access::kWrite),
              IsErrorWith(IommuErrc::kPermissionFault, HasSubstr("stage 2")));
}

TEST_F(Nested, HugeLeavesAtBothStages) {
  s1_map(0x40'0000, kS2Base + k2M, 2, Access::kRead);
  EXPECT_THAT(nested->translate(Iova{0x40'0008}, Access::kRead),
              HasValue(Translated(k2M + 8, k2M, k2M - 8, Access::kRead)));
}

TEST_F(Nested, Stage1FaultsSayStage1) {
  s1_map(0x1000, kS2Base + kDataGpa, 1, Access::kRead);
  EXPECT_THAT(nested->translate(Iova{0x2000}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("stage 1: iova:0x2000 not present (level 1")));
  EXPECT_THAT(nested->translate(Iova{0x4000'0000}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("(level 3")));
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kWrite),
              IsErrorWith(IommuErrc::kPermissionFault, HasSubstr("stage 1")));
  EXPECT_THAT(nested->translate(Iova{uint64_t{1} << 48}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("stage 1")));
  // A table entry without write permission limits everything below it.
  s1_map(0x20'1000, kS2Base + kDataGpa, 1, Access::kReadWrite);
  const uint64_t l3 = table_for(0x20'1000, 3);
  const uint64_t l2_entry = read_entry(l3, pte::index(0x20'1000, 3));
  write_entry(l3, pte::index(0x20'1000, 3), l2_entry & ~pte::kWrite);
  nested->invalidate_all();
  EXPECT_THAT(nested->translate(Iova{0x20'1000}, Access::kNone),
              HasValue(Field(&PageTranslation::perms, Access::kRead)));
}

TEST_F(Nested, Stage2FaultsWhileWalkingSayWhichTable) {
  // The level-3 table pointer leads outside stage 2.
  write_entry(root, 0, pte::make_table(0x7000'0000));
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent,
                          AllOf(HasSubstr("stage 2: reading the stage-1 level 3 table at iova:0x70000000"),
                                HasSubstr("iova:0x70000000 not present (level 2"))));
  // A root outside stage 2.
  ASSERT_THAT(nested->set_stage1_root(Iova{0x9000'0000}), IsOk());
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("stage 2: reading the stage-1 level 4 table")));
  EXPECT_THAT(nested->set_stage1_root(Iova{0x9000'0800}), IsError(IommuErrc::kMisaligned));
  EXPECT_THAT(NestedDomain::create(*s2, *mem, Iova{0x10}), IsError(IommuErrc::kMisaligned));
}

TEST_F(Nested, Stage2TablePagesNeedReadPermission) {
  const uint64_t table_gpa = 0x60'0000;
  ASSERT_THAT(ioas->map(Gpa{table_gpa}, k4K, Access::kWrite, Iova{0x9000'0000}), IsOk());
  ASSERT_THAT(nested->set_stage1_root(Iova{0x9000'0000}), IsOk());
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead),
              IsErrorWith(IommuErrc::kPermissionFault, HasSubstr("stage 2: reading the stage-1 level 4 table")));
}

TEST_F(Nested, Stage2OutputFaults) {
  s1_map(0x1000, 0x7000'0000, 1, Access::kReadWrite);  // nothing at stage-2 input 0x70000000
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("stage 2: translating stage-1 output iova:0x70000000")));
  // An output beyond stage 2's 48-bit input range.
  s1_map(0x2000, uint64_t{1} << 50, 1, Access::kReadWrite);
  EXPECT_THAT(nested->translate(Iova{0x2000}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("stage 2")));
}

TEST_F(Nested, TablesOutsideGuestMemoryAreAFault) {
  // Stage 2 maps a table page to a gpa that no guest region backs.
  ASSERT_THAT(ioas->map(Gpa{uint64_t{1} << 40}, k4K, Access::kRead, Iova{0x9000'0000}), IsOk());
  ASSERT_THAT(nested->set_stage1_root(Iova{0x9000'0000}), IsOk());
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("not guest memory")));
}

TEST_F(Nested, MalformedStage1EntriesAreRejected) {
  s1_set(0x1000, 1, pte::make_leaf(kS2Base + kDataGpa, Access::kRead) | (uint64_t{1} << 62));
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead),
              IsErrorWith(IommuErrc::kMalformedEntry, HasSubstr("reserved bits set")));
  s1_set(0x1000, 1, pte::make_table(kS2Base + kDataGpa));
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead),
              IsErrorWith(IommuErrc::kMalformedEntry, HasSubstr("table entry at level 1")));
  s1_set(0x20'0000, 2, pte::make_leaf(kS2Base + kDataGpa + k4K, Access::kRead));
  EXPECT_THAT(nested->translate(Iova{0x20'0000}, Access::kRead),
              IsErrorWith(IommuErrc::kMalformedEntry, HasSubstr("huge leaf address not aligned")));
  write_entry(root, 1, pte::make_leaf(0, Access::kRead));
  EXPECT_THAT(nested->translate(Iova{uint64_t{1} << 39}, Access::kRead),
              IsErrorWith(IommuErrc::kMalformedEntry, HasSubstr("leaf at the root level")));
}

TEST_F(Nested, TlbCachesUntilTheGuestInvalidatesStage1) {
  s1_map(0x1000, kS2Base + kDataGpa, 1, Access::kRead);
  ASSERT_THAT(nested->translate(Iova{0x1000}, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{kDataGpa})));
  ASSERT_THAT(nested->translate(Iova{0x1800}, Access::kRead), IsOk());
  EXPECT_EQ(nested->tlb_stats().misses, 1u);
  EXPECT_EQ(nested->tlb_stats().hits, 1u);
  EXPECT_EQ(nested->tlb_stats().valid_entries, 1u);

  // The guest repoints its leaf; like hardware, the domain keeps the cached
  // translation until told.
  s1_map(0x1000, kS2Base + kDataGpa + 0x5000, 1, Access::kRead);
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{kDataGpa})));
  nested->invalidate_stage1(Iova{0x3000}, k4K);  // elsewhere: kept
  EXPECT_EQ(nested->tlb_stats().valid_entries, 1u);
  nested->invalidate_stage1(Iova{0x1fff}, 1);  // overlaps the last byte
  EXPECT_EQ(nested->tlb_stats().valid_entries, 0u);
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead),
              HasValue(Field(&PageTranslation::gpa, Gpa{kDataGpa + 0x5000})));
  // Faults are not cached.
  EXPECT_THAT(nested->translate(Iova{0x9000}, Access::kRead), IsError(IommuErrc::kNotPresent));
  EXPECT_EQ(nested->tlb_stats().valid_entries, 1u);
}

TEST_F(Nested, Stage2UnmapInvalidatesAutomatically) {
  // Data through its own stage-2 mapping so it can be unmapped and remapped.
  ASSERT_THAT(ioas->map(Gpa{0x80'0000}, k4K, Access::kReadWrite, Iova{0x9000'0000}), IsOk());
  s1_map(0x1000, 0x9000'0000, 1, Access::kReadWrite);
  ASSERT_THAT(nested->translate(Iova{0x1000}, Access::kWrite), HasValue(Field(&PageTranslation::gpa, Gpa{0x80'0000})));
  ASSERT_THAT(ioas->unmap(Iova{0x9000'0000}, k4K), IsOk());
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kWrite),
              IsErrorWith(IommuErrc::kNotPresent, HasSubstr("stage 2")));
  ASSERT_THAT(ioas->map(Gpa{0x90'0000}, k4K, Access::kRead, Iova{0x9000'0000}), IsOk());
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kWrite), IsError(IommuErrc::kPermissionFault));
  EXPECT_THAT(nested->translate(Iova{0x1000}, Access::kRead), HasValue(Field(&PageTranslation::gpa, Gpa{0x90'0000})));
}

TEST_F(Nested, Stage2InvalidationCoversTheTablesTheWalkRead) {
  s1_map(0x1000, kS2Base + kDataGpa, 1, Access::kRead);
  s1_map(0x20'0000, kS2Base + kDataGpa, 1, Access::kRead);  // same level-2 table, another level-1 table
  ASSERT_THAT(nested->translate(Iova{0x1000}, Access::kRead), IsOk());
  ASSERT_THAT(nested->translate(Iova{0x20'0000}, Access::kRead), IsOk());
  EXPECT_EQ(nested->tlb_stats().valid_entries, 2u);
  // The level-1 table of 0x1000 only.
  const uint64_t l1 = table_for(0x1000, 1);
  nested->invalidate_stage2(Iova{l1}, k4K);
  EXPECT_EQ(nested->tlb_stats().valid_entries, 1u);
  // The root is shared by both walks.
  ASSERT_THAT(nested->translate(Iova{0x1000}, Access::kRead), IsOk());
  nested->invalidate_stage2(Iova{root + 8}, 8);
  EXPECT_EQ(nested->tlb_stats().valid_entries, 0u);
  nested->invalidate_stage2(Iova{0}, 0);  // empty: no effect, no crash
  nested->invalidate_stage1(Iova{UINT64_MAX - 4}, 100);  // clamps at the top
}

TEST_F(Nested, DevicesReserveInTheStage2Ioas) {
  const IovaRange msi{Iova{0xfee00000}, Iova{0xfeefffff}};
  ASSERT_THAT(nested->attach_device(DeviceId{9}, {&msi, 1}), IsOk());
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0xfee00000}), IsError(IommuErrc::kReserved));
  nested.reset();
  EXPECT_THAT(ioas->map(Gpa{0}, k4K, Access::kRead, Iova{0xfee00000}), IsOk());
}

TEST_F(Nested, HostileTablesGiveErrorsNeverCrashes) {
  // Fill every stage-1 table page the guest could point at with random
  // entries, many of them "present" with random addresses and flags.
  std::mt19937_64 rng(99);
  std::array<uint64_t, 8> tables{};
  for (uint64_t& t : tables) t = alloc_table();
  for (uint64_t t : tables) {
    for (unsigned i = 0; i < pte::kEntriesPerTable; ++i) {
      uint64_t e = rng();
      switch (rng() % 8) {
        case 0:
        case 1:
        case 2:  // a table pointer to one of the tables
          e = pte::make_table(tables[rng() % tables.size()]);
          break;
        case 3:  // the same with random junk in the flag and reserved bits
          e = pte::make_table(tables[rng() % tables.size()]) | (e & (pte::kReservedMask | pte::kLeaf));
          break;
        case 4:
        case 5:  // a 4 KiB-aligned leaf into the stage-2 window, any permissions
          e = pte::make_leaf(kS2Base + (rng() % (8 << 20) & ~(k4K - 1)), static_cast<Access>(rng() % 4));
          break;
        default:  // anything at all
          break;
      }
      write_entry(t, i, e);
    }
  }
  ASSERT_THAT(nested->set_stage1_root(Iova{tables[0]}), IsOk());
  int ok = 0;
  for (int i = 0; i < 20000; ++i) {
    const uint64_t iova = rng() & ((uint64_t{1} << 49) - 1);
    const Result<PageTranslation> r = nested->translate(Iova{iova}, static_cast<Access>(rng() % 4));
    if (r) {
      ++ok;
      EXPECT_LT(r->gpa.value(), kRam);
      continue;
    }
    const Error& e = r.error();
    EXPECT_TRUE(e.is(IommuErrc::kNotPresent) || e.is(IommuErrc::kPermissionFault) || e.is(IommuErrc::kMalformedEntry))
        << e.to_string();
  }
  EXPECT_GT(ok, 0);
}

}  // namespace
}  // namespace vdma
