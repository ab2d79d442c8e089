// RegionTable: the bypass DeviceMemory (DmaAddr == Gpa) and its offset form.
//
//   RegionTable t = RegionTable::bypass(*guest);          // every region, dma == gpa
//   RegionTable s = RegionTable::bypass(*guest, MemAttr::kShared);  // shared regions only
//   RegionTable o = *RegionTable::with_offsets(*guest, {{.cpu = Gpa{0}, .dma = DmaAddr{1ull << 40}, .size = 1 << 30}});
//   t.add(DmaAddr{...}, host_span, Access::kRead);        // any host memory (vhost-user regions)
//
// Entries never overlap; lookups are a binary search over a sorted, immutable
// vector (tables are built before a queue starts and not changed under it).
#pragma once

#include <span>
#include <vector>

#include "vdma/mem/device_memory.h"
#include "vdma/mem/guest_memory.h"

namespace vdma {

// A bus-offset window: CPU physical [cpu, cpu+size) appears to the device at
// [dma, dma+size) (Linux's struct bus_dma_region).
struct OffsetRange {
  Gpa cpu;
  DmaAddr dma;
  uint64_t size = 0;
};

class RegionTable final : public DeviceMemory {
 public:
  RegionTable() = default;

  // Every region of `mem` (or only those with attribute `only`), dma == gpa.
  [[nodiscard]] static RegionTable bypass(const GuestMemory& mem);
  [[nodiscard]] static RegionTable bypass(const GuestMemory& mem, MemAttr only);
  // The parts of `mem` covered by `ranges`, at their bus addresses.
  // Errors: MemErrc::kInvalidRegion (size 0, wrap), MemErrc::kOverlap (two
  // ranges overlap in bus space), MemErrc::kNotMapped (a range covers no guest memory).
  [[nodiscard]] static Result<RegionTable> with_offsets(const GuestMemory& mem, std::span<const OffsetRange> ranges);

  // Errors: MemErrc::kInvalidRegion (empty, wraps), MemErrc::kOverlap.
  [[nodiscard]] Result<void> add(DmaAddr dma, std::span<std::byte> host, Access perms);

  [[nodiscard]] Result<void> translate(DmaAddr addr, uint64_t len, Access access,
                                       std::vector<Fragment>& out) const override;
  using DeviceMemory::translate;

  [[nodiscard]] size_t size() const noexcept { return entries_.size(); }

 private:
  struct Entry {
    DmaAddr dma;
    uint64_t len;
    std::byte* host;
    Access perms;
  };
  std::vector<Entry> entries_;  // sorted by dma, non-overlapping
};

}  // namespace vdma
