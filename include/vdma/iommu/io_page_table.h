// IoPageTable: a 4-level, 48-bit IO page table with a 4 KiB granule and
// 2 MiB / 1 GiB leaves, whose outputs are guest-physical addresses.
//
//   IoPageTable pt;
//   pt.map(Iova{0x200000}, Gpa{0x4000000}, 2 << 20, Access::kRead);   // one 2 MiB leaf
//   Result<PageTranslation> t = pt.translate(Iova{0x201234}, Access::kRead);
//   // t->gpa == gpa:0x4001234, t->page_size == 2 MiB, t->contiguous == 2 MiB - 0x1234
//   pt.unmap(Iova{0x200000}, 0x1000);   // demotes the 2 MiB leaf, clears one 4 KiB page
//
// The entry format is documented in vdma/iommu/pte_format.h. Tables are host
// memory owned by the IoPageTable. map() uses the largest leaf that the
// alignment of iova, output and remaining length allow, and afterwards
// promotes any table the map filled with 512 contiguous leaves of equal
// permissions into one leaf of the level above (4 KiB x 512 -> 2 MiB,
// 2 MiB x 512 -> 1 GiB), so adjacent maps merge into huge leaves. unmap()
// of part of a huge leaf demotes (splits) it into a table of smaller leaves
// first. A table left without present entries is freed.
//
// Usually a PagingDomain keeps an IoPageTable in sync with an IoAddressSpace;
// the table can also be used on its own.
//
// Thread safety: none. translate() is const and may run concurrently with
// other translate() calls, but not with map()/unmap(); the owner serialises.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/iommu/errors.h"
#include "vdma/iommu/pte_format.h"
#include "vdma/mem/device_memory.h"

namespace vdma {

// The result of translating one IOVA.
struct PageTranslation {
  Gpa gpa;                  // output address of the translated IOVA
  uint64_t page_size = 0;   // size of the leaf that maps it: 4 KiB, 2 MiB or 1 GiB
  uint64_t contiguous = 0;  // bytes from the IOVA to the end of that leaf, all mapped linearly from gpa
  Access perms = Access::kNone;  // effective permissions of the leaf
};

// One leaf, as reported by IoPageTable::for_each_leaf.
struct PageLeaf {
  Iova iova;
  Gpa gpa;
  uint64_t size = 0;
  Access perms = Access::kNone;
};

struct PageTableStats {
  std::array<size_t, pte::kLevels + 1> tables{};  // tables[level], level 1..4 (tables[4] == 1: the root)
  std::array<size_t, pte::kLevels + 1> leaves{};  // leaves[level]: 1: 4 KiB, 2: 2 MiB, 3: 1 GiB
};

class IoPageTable {
 public:
  IoPageTable();
  ~IoPageTable();
  IoPageTable(const IoPageTable&) = delete;
  IoPageTable& operator=(const IoPageTable&) = delete;

  // Maps [iova, iova+len) to [out, out+len) with `perms`. All of iova, out
  // and len are 4 KiB aligned; no page of the range may be mapped already.
  // On error nothing changed.
  // Errors: IommuErrc::kInvalidArgument (len 0, perms kNone, iova+len beyond
  // 2^48, out+len beyond 2^52), kMisaligned (iova, out or len not 4 KiB
  // aligned), kAlreadyMapped (names the first mapped page in the range).
  [[nodiscard]] Result<void> map(Iova iova, Gpa out, uint64_t len, Access perms);

  // Clears every mapped page in [iova, iova+len) (4 KiB aligned, within
  // 2^48), demoting huge leaves that straddle the range edges. Holes are
  // skipped. Returns the number of bytes that were mapped and now are not.
  // Errors: IommuErrc::kInvalidArgument (len 0, beyond 2^48), kMisaligned.
  [[nodiscard]] Result<uint64_t> unmap(Iova iova, uint64_t len);

  // Walks the table for `iova`. `access` kNone only probes.
  // Errors: IommuErrc::kNotPresent (no leaf; names the level where the walk
  // stopped), kPermissionFault (a leaf exists but lacks `access`).
  [[nodiscard]] Result<PageTranslation> translate(Iova iova, Access access) const;

  // Unmaps everything and frees every table but the root.
  void clear();

  // Calls fn for every leaf in ascending IOVA order.
  void for_each_leaf(const std::function<void(const PageLeaf&)>& fn) const;
  [[nodiscard]] PageTableStats stats() const;

 private:
  struct Table;
  struct UnmapCount {
    uint64_t bytes = 0;
    unsigned entries_cleared = 0;
  };

  [[nodiscard]] static Table* child_of(uint64_t entry) noexcept;
  [[nodiscard]] Table* alloc_table();
  void free_table(Table* t);
  [[nodiscard]] bool first_present(const Table* t, unsigned level, uint64_t iova, uint64_t len,
                                   uint64_t* found) const;
  // One 4 KiB page, iteratively (the common DMA case). false: a leaf is in the way.
  bool map_page(uint64_t iova, uint64_t out, Access perms);
  // One 4 KiB page below no huge leaf: bytes cleared (0 or 4 KiB); nullopt
  // when a huge leaf covers it and the general path must demote.
  std::optional<uint64_t> unmap_page(uint64_t iova);
  unsigned map_range(Table* t, unsigned level, uint64_t iova, uint64_t out, uint64_t len, Access perms);
  UnmapCount unmap_range(Table* t, unsigned level, uint64_t iova, uint64_t len);
  void try_promote(uint64_t& entry, unsigned level);
  void demote(uint64_t& entry, unsigned level);
  void clear_table(Table* t, unsigned level);
  void walk_leaves(const Table* t, unsigned level, uint64_t base,
                   const std::function<void(const PageLeaf&, unsigned)>& fn) const;

  Table* root_;
  // Zeroed tables kept for reuse, so a map/unmap cycle that empties and
  // refills a table neither allocates nor zeroes 4 KiB. Bounded by kMaxSpare.
  std::vector<Table*> spare_;
};

}  // namespace vdma
