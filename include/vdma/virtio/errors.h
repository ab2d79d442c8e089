#pragma once

#include "vdma/base/error.h"

namespace vdma {

enum class VirtioErrc {
  kFeatureDependency = 1,  // a feature set that the spec forbids (names the bits)
  kFeatureNotOffered,      // the driver accepted a bit the device did not offer
  kInvalidConfig,          // bad queue size, misaligned ring address, ...
  kNoSpace,                // not enough free descriptors for a chain
  kInvalidChain,           // a chain the caller built wrongly (driver side)
  kBadDescriptor,          // a guest-built descriptor chain is malformed (device side, per chain)
  kNeedsReset,             // the ring is corrupt; the device queue stopped (device side)
  kBroken,                 // the device misbehaved; the driver queue stopped (driver side)
};

template <>
struct ErrcTraits<VirtioErrc> {
  static constexpr std::string_view domain = "virtio";
  static std::string_view name(VirtioErrc e);
};

}  // namespace vdma
