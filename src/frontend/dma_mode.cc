#include "vdma/frontend/dma_mode.h"

#include <string>

#include "vdma/frontend/errors.h"

namespace vdma {

std::string_view to_string(DmaMode m) noexcept {
  switch (m) {
    case DmaMode::kBypass: return "bypass";
    case DmaMode::kIommuStrict: return "iommu-strict";
    case DmaMode::kIommuLazy: return "iommu-lazy";
    case DmaMode::kIommuPremapped: return "iommu-premapped";
    case DmaMode::kRestricted: return "restricted";
    case DmaMode::kOffset: return "offset";
    case DmaMode::kEncryptionBit: return "encryption-bit";
  }
  return "unknown";
}

Result<DmaMode> parse_dma_mode(std::string_view name) {
  std::string valid;
  for (DmaMode m : kAllDmaModes) {
    if (to_string(m) == name) return m;
    if (!valid.empty()) valid += ", ";
    valid += to_string(m);
  }
  return make_error(FrontendErrc::kInvalidOption, "unknown DMA mode '{}'; valid modes: {}", name, valid);
}

}  // namespace vdma
