// NestedTlb: the small translation cache of a NestedDomain (see nested.h for
// what it caches and when entries are dropped).
//
//   NestedTlb tlb;
//   tlb.insert(entry);
//   if (const NestedTlbEntry* e = tlb.lookup(iova)) use(*e);
//   tlb.invalidate_stage2(start, len);
//
// Fully associative, NestedDomain::kTlbEntries entries, round-robin
// replacement; lookups scan linearly, which for 32 entries is a few
// nanoseconds and keeps invalidation exact.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "vdma/iommu/nested.h"

namespace vdma {

struct NestedTlbEntry {
  uint64_t in_start = 0;     // stage-1 input of the first byte covered
  uint64_t in_len = 0;       // bytes covered, all mapping linearly
  uint64_t out_gpa = 0;      // final output of in_start
  uint64_t s2_in = 0;        // stage-1 output (stage-2 input) of in_start
  uint64_t page_size = 0;    // the smaller of the two leaves' sizes
  Access s1_perms = Access::kNone;
  Access s2_perms = Access::kNone;
  std::array<uint64_t, pte::kLevels> table_pages{};  // stage-2 inputs of the stage-1 tables read
};

class NestedTlb {
 public:
  [[nodiscard]] const NestedTlbEntry* lookup(uint64_t iova) const noexcept;
  void insert(const NestedTlbEntry& e) noexcept;
  // Drops entries whose input range overlaps [start, start+len).
  void invalidate_input(uint64_t start, uint64_t len) noexcept;
  // Drops entries whose output range or any stage-1 table page overlaps
  // [start, start+len) in stage-2 input space.
  void invalidate_stage2(uint64_t start, uint64_t len) noexcept;
  void clear() noexcept;
  [[nodiscard]] size_t valid_entries() const noexcept;

 private:
  std::array<NestedTlbEntry, NestedDomain::kTlbEntries> entries_{};
  std::array<bool, NestedDomain::kTlbEntries> valid_{};
  size_t next_ = 0;
};

}  // namespace vdma
