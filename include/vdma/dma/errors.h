#pragma once

#include "vdma/base/error.h"

namespace vdma {

enum class DmaErrc {
  kNotCovered = 1,   // the buffer is outside every DMA-able range of this device
  kBeyondMask,       // the bus address exceeds the device's addressing limit
  kPoolFull,         // bounce pool has no room
  kIovaExhausted,    // IOVA space exhausted
  kTooLarge,         // larger than max_mapping_size()
  kUnknownMapping,   // unmap/sync of an address that is not mapped
  kMisuse,           // wrong size/direction, found by the debug checker
};

template <>
struct ErrcTraits<DmaErrc> {
  static constexpr std::string_view domain = "dma";
  static std::string_view name(DmaErrc e);
};

}  // namespace vdma
