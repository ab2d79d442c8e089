// NestedDomain: two-stage translation. Stage 1 is a guest-owned page table
// stored in guest memory; stage 2 is a PagingDomain (an IOAS the host owns).
//
//   auto s2 = *PagingDomain::create(*ioas);                  // stage 2: iova -> gpa
//   ioas->map(Gpa{0x100000}, 0x4000, Access::kReadWrite, Iova{0x40000000});   // stage-1 tables + data
//   auto nested = *NestedDomain::create(*s2, *guest_mem, Iova{0x40000000});   // stage-1 root
//   Result<PageTranslation> t = nested->translate(Iova{0x1000}, Access::kRead);
//   nested->invalidate_stage1(Iova{0x1000}, 0x1000);        // after the guest edits its table
//
// Stage 1 uses the entry format of pte_format.h. Its table addresses and its
// leaf outputs are stage-2 inputs: every table pointer is translated through
// stage 2 (which must grant read) before the entry is read from guest memory,
// and the final stage-1 output is translated through stage 2. Permissions
// intersect over both stages. A fault names its stage in the message
// ("stage 1: ..." / "stage 2: ...") and keeps the code: kNotPresent,
// kPermissionFault, or kMalformedEntry for a stage-1 entry with reserved bits,
// a root-level leaf, a level-1 table entry or a misaligned huge leaf.
//
// Stage-1 entries are guest-controlled: each is read once, validated, then
// used; the walk is bounded by the four levels, so a hostile table can make
// translate() fail but not loop or touch memory outside GuestMemory.
//
// The domain caches complete translations in a small fully associative TLB
// (kTlbEntries, round-robin replacement). Each entry covers the largest
// input range that maps linearly through both stages (the intersection of
// the stage-1 leaf and the stage-2 leaf) and remembers the stage-2 inputs it
// depended on: the four stage-1 table pages and its output range.
// - The guest must call invalidate_stage1(range) after changing stage-1
//   entries that cover `range`; entries whose input overlaps are dropped.
// - invalidate_stage2(range) drops entries whose stage-1 tables or output lie
//   in `range` (stage-2 inputs). The PagingDomain calls it on every unmap of
//   its IOAS, so host-side changes never leave stale translations.
// Faults are not cached.
//
// Lifetime: stage2 and mem must outlive the NestedDomain.
// Thread safety: none; translate() mutates the TLB.
#pragma once

#include <memory>

#include "vdma/iommu/domain.h"
#include "vdma/mem/guest_memory.h"

namespace vdma {

class NestedTlb;
struct NestedTlbEntry;

class NestedDomain final : public Domain {
 public:
  static constexpr size_t kTlbEntries = 32;

  struct TlbStats {
    uint64_t hits = 0;
    uint64_t misses = 0;
    size_t valid_entries = 0;
  };

  // stage1_root: the stage-2 input address of the stage-1 root table.
  // Errors: IommuErrc::kMisaligned (root not 4 KiB aligned).
  [[nodiscard]] static Result<std::unique_ptr<NestedDomain>> create(PagingDomain& stage2, const GuestMemory& mem,
                                                                    Iova stage1_root);
  ~NestedDomain() override;

  [[nodiscard]] Kind kind() const noexcept override { return Kind::kNested; }
  [[nodiscard]] Result<PageTranslation> translate(Iova iova, Access access) override;

  // Switches to another stage-1 table and drops the TLB.
  // Errors: IommuErrc::kMisaligned.
  [[nodiscard]] Result<void> set_stage1_root(Iova root);
  [[nodiscard]] Iova stage1_root() const noexcept { return root_; }

  // len 0: no effect; a range reaching past 2^64 stops at the top.
  void invalidate_stage1(Iova iova, uint64_t len);
  void invalidate_stage2(Iova iova, uint64_t len);
  void invalidate_all();
  [[nodiscard]] TlbStats tlb_stats() const;

 private:
  NestedDomain(PagingDomain& stage2, const GuestMemory& mem, Iova root);
  [[nodiscard]] Result<NestedTlbEntry> walk(Iova iova) const;
  [[nodiscard]] Result<void> reserve_for_device(DeviceId dev, std::span<const IovaRange> reserved) override;
  void release_device(DeviceId dev) override;

  PagingDomain& stage2_;
  const GuestMemory& mem_;
  Iova root_;
  std::unique_ptr<NestedTlb> tlb_;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
};

}  // namespace vdma
