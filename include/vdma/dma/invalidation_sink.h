// InvalidationSink: where the IOMMU DMA ops send IOTLB invalidations after
// they unmap IOVAs from a domain's page table.
//
//   class FrontendSink final : public InvalidationSink {
//     Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
//       for (const auto& r : ranges) VDMA_TRY(send_iotlb_invalidate(r));   // vhost-user IOTLB INVALIDATE
//       return ok();
//     }
//   };
//   auto ops = *IommuDmaOps::create(*mem, domain, {.sink = std::make_shared<FrontendSink>(...)});
//
// Contract. When invalidate() returns success, no device may still use a
// translation of any byte of `ranges` (the back-end acknowledged the
// INVALIDATE: its IOTLB dropped the entries and no request still holds one).
// Only then does the IOVA allocator hand those IOVAs out again. A failure
// means the caller cannot know whether the device still translates them:
// the IOMMU DMA ops keep the IOVAs out of the allocator and retry them with
// the next flush.
//
// `ranges` are sorted by start, disjoint, and each is page aligned (4 KiB).
//
// Thread safety: invalidate() may be called concurrently from several
// threads (strict mode invalidates on the unmapping thread). It is never
// called with a lock of the IOMMU DMA ops held, so it may block (wait for
// an acknowledgement) and may call back into the DMA ops.
//
// Map announcements (IommuDomainConfig::announce_maps; Linux's
// iommu_ops::iotlb_sync_map, which a vIOMMU in caching mode uses to learn
// of new mappings). After map() (or map_sg(), alloc_coherent()) has put
// pages in the page table, and before it returns the DMA address, the IOMMU
// DMA ops call mapped() with what those pages now translate to, so a
// vIOMMU can push the translation into the device's IOTLB before the
// device first uses it. It is a hint: it returns nothing, the device must
// still be able to miss and ask (the vIOMMU answers from the page table),
// and it is never called with a lock of the IOMMU DMA ops held.
#pragma once

#include <span>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/mem/device_memory.h"

namespace vdma {

// Pages map() has just mapped: [iova, iova + len) -> [gpa, gpa + len),
// page aligned, with the permission the page table gives them.
struct MappedPages {
  Iova iova;
  uint64_t len = 0;
  Gpa gpa;
  Access perms = Access::kNone;
};

class InvalidationSink {
 public:
  virtual ~InvalidationSink() = default;
  [[nodiscard]] virtual Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) = 0;
  // See "Map announcements" above. Default: nothing.
  virtual void mapped(const MappedPages& pages) { (void)pages; }
};

// A sink for an IOMMU without an IOTLB to keep coherent (or a device that
// only ever walks the page table): every invalidation succeeds at once.
class NoopInvalidationSink final : public InvalidationSink {
 public:
  [[nodiscard]] Result<void> invalidate(std::span<const AddrRange<Iova>>) override { return ok(); }
};

}  // namespace vdma
