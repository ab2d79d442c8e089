#include "vdma/dma/dma_ops.h"

namespace vdma {

std::string_view ErrcTraits<DmaErrc>::name(DmaErrc e) {
  switch (e) {
    case DmaErrc::kNotCovered: return "not_covered";
    case DmaErrc::kBeyondMask: return "beyond_mask";
    case DmaErrc::kPoolFull: return "pool_full";
    case DmaErrc::kIovaExhausted: return "iova_exhausted";
    case DmaErrc::kTooLarge: return "too_large";
    case DmaErrc::kUnknownMapping: return "unknown_mapping";
    case DmaErrc::kMisuse: return "misuse";
  }
  return "unknown";
}

std::string_view to_string(DmaDirection d) noexcept {
  switch (d) {
    case DmaDirection::kToDevice: return "to-device";
    case DmaDirection::kFromDevice: return "from-device";
    case DmaDirection::kBidirectional: return "bidirectional";
  }
  return "invalid";
}

IdentityDmaOps::IdentityDmaOps(const GuestMemory& mem, AddrRange<Gpa> coherent_window)
    : mem_(mem), coherent_(coherent_window) {}

Result<DmaAddr> IdentityDmaOps::map(Gpa gpa, uint64_t len, DmaDirection, DmaAttrs) {
  if (len == 0) return make_error(BaseErrc::kInvalidArgument, "map {} with len 0", gpa);
  // Fast path: one region lookup; a range spanning adjacent regions is still guest memory.
  const GuestRegion* r = mem_.find_region(gpa);
  if (r == nullptr || !r->range().contains(gpa, len)) {
    if (!fits(gpa, len)) return make_error(BaseErrc::kOverflow, "map {} + len {:#x} wraps", gpa, len);
    if (!mem_.contains(gpa, len)) return make_error(MemErrc::kNotMapped, "map {} + len {:#x}: not guest memory", gpa, len);
  }
  return DmaAddr(gpa.value());
}

Result<void> IdentityDmaOps::unmap(DmaAddr, uint64_t, DmaDirection, DmaAttrs) { return ok(); }

Result<CoherentBuffer> IdentityDmaOps::alloc_coherent(uint64_t size) {
  const uint64_t rounded = align_up(size, 4096);
  Gpa gpa;
  {
    std::lock_guard lock(mu_);
    gpa = VDMA_TRY(coherent_.allocate(rounded, 4096));
  }
  auto host = mem_.span(gpa, rounded);
  if (!host) {
    std::lock_guard lock(mu_);
    (void)coherent_.free(gpa, rounded);
    return Unexpected(std::move(host).error());
  }
  std::fill(host->begin(), host->end(), std::byte{0});
  return CoherentBuffer{gpa, DmaAddr(gpa.value()), *host};
}

Result<void> IdentityDmaOps::free_coherent(const CoherentBuffer& buf) {
  std::lock_guard lock(mu_);
  return coherent_.free(buf.cpu, buf.host.size());
}

}  // namespace vdma
