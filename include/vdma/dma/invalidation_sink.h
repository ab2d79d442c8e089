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
#pragma once

#include <span>

#include "vdma/base/address.h"
#include "vdma/base/result.h"

namespace vdma {

class InvalidationSink {
 public:
  virtual ~InvalidationSink() = default;
  [[nodiscard]] virtual Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) = 0;
};

// A sink for an IOMMU without an IOTLB to keep coherent (or a device that
// only ever walks the page table): every invalidation succeeds at once.
class NoopInvalidationSink final : public InvalidationSink {
 public:
  [[nodiscard]] Result<void> invalidate(std::span<const AddrRange<Iova>>) override { return ok(); }
};

}  // namespace vdma
