// Device status field (virtio 1.2 §2.1).
#pragma once

#include <cstdint>

namespace vdma {

inline constexpr uint8_t kStatusAcknowledge = 1;
inline constexpr uint8_t kStatusDriver = 2;
inline constexpr uint8_t kStatusDriverOk = 4;
inline constexpr uint8_t kStatusFeaturesOk = 8;
inline constexpr uint8_t kStatusDeviceNeedsReset = 64;
inline constexpr uint8_t kStatusFailed = 128;

}  // namespace vdma
