// IommuDmaOps's bounce path: a device behind an IOMMU on a platform whose
// devices may reach shared memory only (a confidential guest). Every
// streaming mapping goes through a slot of the shared bounce pool and the
// IOMMU maps the slot, never the caller's buffer (Linux dma-iommu maps the
// swiotlb slot with __iommu_dma_map and, on unmap, ends the IOMMU mapping
// before swiotlb_tbl_unmap_single). Unlike Linux, which bounces only what
// an untrusted device would otherwise share a page with, every byte
// bounces here: private memory must never appear in the page table at all.
#include <spdlog/spdlog.h>

#include "vdma/dma/iommu_dma_ops.h"

namespace vdma {

Result<DmaAddr> IommuDmaOps::map_bounced(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  // The pool checks len, the size limit and that gpa is guest memory, and
  // copies the buffer in (for every direction but kFromDevice with kNoCopyIn).
  const Gpa slot = VDMA_TRY(bounce_->map(gpa, len, dir, min_align_mask_, attrs));
  auto dma = map_unbounced(slot, len, dir, attrs);
  if (!dma) {
    // Never reached by the device: no copy-back.
    auto freed = bounce_->unmap(slot, len, dir, DmaAttrs::kSkipCpuSync);
    VDMA_CHECK(freed.has_value(), "a slot just taken could not be freed");
    return std::move(dma).error().with_context(fmt::format("bounce slot {}", slot));
  }
  return dma;
}

Result<void> IommuDmaOps::end_bounce(Gpa slot, uint64_t len, DmaDirection dir, DmaAttrs attrs,
                                     const Result<void>& released, uint64_t written) {
  if (!released) {
    // The device may still hold a translation to the slot: reusing it could
    // let the device write into another mapping's bytes. It stays taken
    // (quarantined, as a pinned page whose unpin failed), and the buffer
    // gets no copy-back the caller could mistake for a completed transfer.
    spdlog::error("bounce slot {} + len {:#x} kept out of the pool: its IOMMU invalidation failed: {}", slot, len,
                  released.error());
    return released;
  }
  return bounce_->unmap(slot, len, dir, attrs, written);
}

Result<void> IommuDmaOps::sync_bounced_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) {
  // The page table (or the identity) gives the slot behind the DMA address.
  const Gpa slot = VDMA_TRY(cpu_of(addr, "sync_for_cpu"));
  // Drop stale slot lines before the copy-back reads the device's bytes.
  if (cache_ != nullptr) {
    VDMA_TRY(bounce_->original(slot, len));
    cache_sync_for_cpu(*cache_, slot, len, dir);
  }
  return bounce_->sync_for_cpu(slot, len, dir);
}

Result<void> IommuDmaOps::sync_bounced_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) {
  const Gpa slot = VDMA_TRY(cpu_of(addr, "sync_for_device"));
  VDMA_TRY(bounce_->sync_for_device(slot, len, dir));
  // After the copy-in, so the slot's new bytes are what gets written back.
  if (cache_ != nullptr) cache_sync_for_device(*cache_, slot, len, dir);
  return ok();
}

}  // namespace vdma
