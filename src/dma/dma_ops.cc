#include "vdma/dma/dma_ops.h"

#include <algorithm>

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
    case DmaErrc::kInvalidConfig: return "invalid_config";
    case DmaErrc::kUnavailable: return "unavailable";
    case DmaErrc::kPlatformRefused: return "platform_refused";
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

// The default scatter-list operations map entry by entry: correct for every
// implementation, and what the bounce and direct ops want anyway (each entry
// gets its own slot run or bus address). An IOMMU implementation overrides
// them to merge entries into one IOVA range.
Result<size_t> DmaOps::map_sg(std::span<SgEntry> sg, DmaDirection dir, DmaAttrs attrs) {
  if (sg.empty()) return make_error(BaseErrc::kInvalidArgument, "map_sg of an empty scatter list");
  for (size_t i = 0; i < sg.size(); ++i) {
    auto d = map(sg[i].gpa, sg[i].len, dir, attrs);
    if (!d) {
      // Unwind what is mapped so a failed map_sg leaves nothing behind; the
      // unmap of a mapping we just made cannot legitimately fail.
      for (size_t j = 0; j < i; ++j) {
        (void)unmap(sg[j].dma, sg[j].dma_len, dir, attrs | DmaAttrs::kSkipCpuSync);
        sg[j].dma_len = 0;
      }
      return std::move(d).error().with_context(fmt::format("scatter entry {}", i));
    }
    sg[i].dma = *d;
    sg[i].dma_len = sg[i].len;
  }
  return sg.size();
}

Result<void> DmaOps::unmap_sg(std::span<const SgEntry> sg, DmaDirection dir, DmaAttrs attrs) {
  Result<void> first = ok();
  for (const SgEntry& e : sg) {
    if (e.dma_len == 0) break;
    auto r = unmap(e.dma, e.dma_len, dir, attrs);
    if (!r && first) first = std::move(r);
  }
  return first;
}

Result<void> DmaOps::unmap_batch(std::span<const DmaUnmapRequest> reqs) {
  Result<void> first = ok();
  for (size_t i = 0; i < reqs.size(); ++i) {
    const DmaUnmapRequest& q = reqs[i];
    Result<void> r = ok();
    if (q.written < q.len && device_writes(q.dir) && !has(q.attrs, DmaAttrs::kSkipCpuSync)) {
      // Only the device's bytes come back; the unmap then moves nothing.
      if (q.written != 0) r = sync_for_cpu(q.addr, q.written, q.dir);
      auto u = unmap(q.addr, q.len, q.dir, q.attrs | DmaAttrs::kSkipCpuSync);
      if (r) r = std::move(u);
    } else {
      r = unmap(q.addr, q.len, q.dir, q.attrs);
    }
    if (!r && first) {
      first = std::move(r).error().with_context(fmt::format("unmap_batch entry {} of {}", i, reqs.size()));
    }
  }
  return first;
}

Result<void> DmaOps::sync_sg_for_cpu(std::span<const SgEntry> sg, DmaDirection dir) {
  for (const SgEntry& e : sg) {
    if (e.dma_len == 0) break;
    VDMA_TRY(sync_for_cpu(e.dma, e.dma_len, dir));
  }
  return ok();
}

Result<void> DmaOps::sync_sg_for_device(std::span<const SgEntry> sg, DmaDirection dir) {
  for (const SgEntry& e : sg) {
    if (e.dma_len == 0) break;
    VDMA_TRY(sync_for_device(e.dma, e.dma_len, dir));
  }
  return ok();
}

IdentityDmaOps::IdentityDmaOps(const GuestMemory& mem, AddrRange<Gpa> coherent_window)
    : mem_(mem), coherent_(std::make_shared<CoherentPool>(mem, coherent_window)) {}

IdentityDmaOps::IdentityDmaOps(const GuestMemory& mem, std::shared_ptr<CoherentPool> coherent)
    : mem_(mem), coherent_(std::move(coherent)) {
  VDMA_CHECK(coherent_ != nullptr, "IdentityDmaOps needs a coherent pool");
}

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
  CoherentPool::Allocation a = VDMA_TRY(coherent_->allocate(size));
  return CoherentBuffer{a.gpa, DmaAddr(a.gpa.value()), a.host};
}

Result<void> IdentityDmaOps::free_coherent(const CoherentBuffer& buf) {
  return coherent_->free(buf.cpu, buf.host.size());
}

}  // namespace vdma
