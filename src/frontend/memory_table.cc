#include "memory_table.h"

#include <algorithm>
#include <cstdint>

#include "vdma/vhost_user/protocol.h"

namespace vdma::frontend_detail {

FrontVa user_address(const GuestRegion& region, uint64_t offset) noexcept {
  return FrontVa(reinterpret_cast<uintptr_t>(region.host().data()) + offset);
}

namespace {

Result<void> add_piece(std::vector<TableEntry>& out, const GuestRegion& r, Gpa start, uint64_t len,
                       const BusTranslation* bus) {
  const uint64_t offset = r.base().distance_to(start);
  DmaAddr guest(start.value());
  if (bus != nullptr) guest = VDMA_TRY(bus->to_dma(start, len, r.attr()));
  out.push_back(TableEntry{vhost_user::MemoryRegion{guest, len, user_address(r, offset), offset}, &r});
  return ok();
}

}  // namespace

Result<std::vector<TableEntry>> build_memory_table(const GuestMemory& mem, TableOptions options) {
  std::vector<TableEntry> out;
  for (const GuestRegion& r : mem.regions()) {
    if (options.shared_only && !r.is_shared()) continue;
    const std::vector<OffsetRange>* ranges = options.bus != nullptr ? &options.bus->config().ranges : nullptr;
    if (ranges == nullptr || ranges->empty()) {
      VDMA_TRY(add_piece(out, r, r.base(), r.size(), options.bus));
      continue;
    }
    for (const OffsetRange& o : *ranges) {
      // The part of the region this offset range covers (both bounded, no wrap).
      const uint64_t lo = std::max(r.base().value(), o.cpu.value());
      const uint64_t hi = std::min(r.base().value() + (r.size() - 1), o.cpu.value() + (o.size - 1));
      if (lo > hi) continue;
      VDMA_TRY(add_piece(out, r, Gpa{lo}, hi - lo + 1, options.bus));
    }
  }
  if (out.empty() || out.size() > vhost_user::kMaxMemRegions) {
    return make_error(BaseErrc::kInvalidArgument, "memory table of {} entries; SET_MEM_TABLE carries 1..{}",
                      out.size(), vhost_user::kMaxMemRegions);
  }
  return out;
}

Result<FrontVa> to_user(std::span<const TableEntry> table, DmaAddr addr, uint64_t len) {
  for (const TableEntry& e : table) {
    if (e.wire.guest_range().contains(addr, len)) {
      return e.wire.user_addr.unchecked_add(e.wire.guest_addr.distance_to(addr));
    }
  }
  return make_error(MemErrc::kNotMapped, "{} + len {:#x} is in no region of the memory table", addr, len);
}

const TableEntry* find_cpu(std::span<const TableEntry> table, Gpa gpa) noexcept {
  for (const TableEntry& e : table) {
    if (e.cpu().contains(gpa)) return &e;
  }
  return nullptr;
}

}  // namespace vdma::frontend_detail
