// DmaMode: how the front-end's "guest" lets a device reach its memory — the
// platform DMA configurations of the mode table, each with a
// built-in platform topology (guest_platform.h).
//
//   DmaMode m = VDMA_TRY(parse_dma_mode("iommu-lazy"));
//   spdlog::info("mode {}", to_string(m));          // "iommu-lazy"
//   if (is_iommu(m)) ...                             // strict, lazy or premapped
//
//   mode              ACCESS_PLATFORM   driver DMA ops
//   bypass            not accepted      IdentityDmaOps (dma == gpa)
//   iommu-strict      required          IommuDmaOps, INVALIDATE acked per unmap
//   iommu-lazy        required          IommuDmaOps, invalidations batched by the flush queue
//   iommu-premapped   required          as iommu-strict; the driver maps its buffers once
//   restricted        required          DirectDmaOps force-bounce (confidential guest)
//   offset            not accepted      DirectDmaOps with a bus offset (quirk use_dma_api)
//   encryption-bit    not accepted      DirectDmaOps with the C-bit (quirk use_dma_api)
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string_view>

#include "vdma/base/result.h"
#include "vdma/dma/iova_flush_queue.h"

namespace vdma {

enum class DmaMode : uint8_t {
  kBypass,
  kIommuStrict,
  kIommuLazy,
  kIommuPremapped,
  kRestricted,
  kOffset,
  kEncryptionBit,
};

inline constexpr DmaMode kAllDmaModes[] = {DmaMode::kBypass,     DmaMode::kIommuStrict, DmaMode::kIommuLazy,
                                           DmaMode::kIommuPremapped, DmaMode::kRestricted, DmaMode::kOffset,
                                           DmaMode::kEncryptionBit};

// "bypass", "iommu-strict", "iommu-lazy", "iommu-premapped", "restricted",
// "offset", "encryption-bit".
[[nodiscard]] std::string_view to_string(DmaMode m) noexcept;

// The inverse of to_string().
// Errors: FrontendErrc::kInvalidOption naming the value and listing the
// valid names: "unknown DMA mode 'iommu'; valid modes: bypass, iommu-strict, ...".
[[nodiscard]] Result<DmaMode> parse_dma_mode(std::string_view name);

[[nodiscard]] constexpr bool is_iommu(DmaMode m) noexcept {
  return m == DmaMode::kIommuStrict || m == DmaMode::kIommuLazy || m == DmaMode::kIommuPremapped;
}
// Strict for every mode but iommu-lazy (premapped buffers are long-lived, so
// their rare unmaps are acknowledged at once).
[[nodiscard]] constexpr InvalidationMode invalidation_mode(DmaMode m) noexcept {
  return m == DmaMode::kIommuLazy ? InvalidationMode::kLazy : InvalidationMode::kStrict;
}

}  // namespace vdma
