// The memory table the front-end gives the back-end (SET_MEM_TABLE): which
// guest regions, at which "guest physical" addresses, and where they are in
// the front-end's address space. Private to the frontend module.
//
//   auto table = VDMA_TRY(build_memory_table(mem, {.shared_only = true}));
//   FrontVa ring = VDMA_TRY(to_user(table, ring_dma, ring_bytes));   // SET_VRING_ADDR without an IOTLB
//
// Without an IOTLB the back-end reads descriptor addresses through this
// table, so its guest addresses are the DMA addresses the driver's ops
// produce: the gpa (bypass, identity ops) or, with a BusTranslation, the bus
// address of each region (offset ranges, the encryption bit for private
// memory). A region the bus translation splits over several offset ranges
// becomes one entry per range; parts no range covers are left out (the
// device cannot address them). With an IOTLB the guest addresses are not
// used by the back-end and are the gpas.
//
// Thread safety: values; no state.
#pragma once

#include <span>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/dma/bus_translation.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/vhost_user/payload_views.h"

namespace vdma::frontend_detail {

struct TableEntry {
  vhost_user::MemoryRegion wire;  // as sent (mmap_offset: offset into region->fd())
  const GuestRegion* region = nullptr;
  [[nodiscard]] AddrRange<Gpa> cpu() const noexcept {
    return {region->base().unchecked_add(wire.mmap_offset), wire.size};
  }
};

struct TableOptions {
  bool shared_only = false;             // a confidential guest shares only shared regions
  const BusTranslation* bus = nullptr;  // null: guest address = gpa
};

// The front-end address of `offset` bytes into `region`.
[[nodiscard]] FrontVa user_address(const GuestRegion& region, uint64_t offset) noexcept;

// Errors: BaseErrc::kInvalidArgument when the table would need more than 8
// entries (SET_MEM_TABLE's limit) or has none.
[[nodiscard]] Result<std::vector<TableEntry>> build_memory_table(const GuestMemory& mem, TableOptions options);

// The front-end address of [addr, addr+len) given in the table's guest
// addresses; the range must lie inside one entry.
// Errors: MemErrc::kNotMapped naming the address.
[[nodiscard]] Result<FrontVa> to_user(std::span<const TableEntry> table, DmaAddr addr, uint64_t len);

// The entry whose cpu() holds gpa, or nullptr.
[[nodiscard]] const TableEntry* find_cpu(std::span<const TableEntry> table, Gpa gpa) noexcept;

}  // namespace vdma::frontend_detail
