// Errors of the dma module (DmaOps implementations, the bounce pool, the debug
// checker, the platform topology).
//
//   if (auto d = ops.map(gpa, len, DmaDirection::kToDevice); !d && d.error().is(DmaErrc::kPoolFull)) ...
#pragma once

#include "vdma/base/error.h"

namespace vdma {

enum class DmaErrc {
  kNotCovered = 1,   // the buffer is outside every DMA-able range of this device
  kBeyondMask,       // the bus address exceeds the device's addressing limit
  kPoolFull,         // bounce pool has no room (the message carries slot statistics)
  kIovaExhausted,    // IOVA space exhausted
  kTooLarge,         // larger than max_mapping_size()
  kUnknownMapping,   // unmap/sync of an address that is not mapped
  kMisuse,           // wrong size/direction, CPU access without sync, leaks: found by the debug checker
  kInvalidConfig,    // a DMA configuration or topology description is invalid; names the field
  kUnavailable,      // the requested kind of DMA ops is not available in this build yet
  kPlatformRefused,  // the platform refuses the device (restricted memory access, barriers)
};

template <>
struct ErrcTraits<DmaErrc> {
  static constexpr std::string_view domain = "dma";
  static std::string_view name(DmaErrc e);
};

}  // namespace vdma
