// Feature bits (virtio 1.2 §6 reserved bits) and negotiation.
//
//   auto f = negotiate_features(device_offered, driver_wanted);
//   if (!f) log(f.error());    // "RING_PACKED (34) requires VERSION_1 (32)"
//   if (has_feature(*f, kFeatureEventIdx)) ...
#pragma once

#include <cstdint>
#include <string>

#include "vdma/base/result.h"
#include "vdma/virtio/errors.h"

namespace vdma {

inline constexpr unsigned kFeatureIndirectDesc = 28;
inline constexpr unsigned kFeatureEventIdx = 29;
inline constexpr unsigned kFeatureVersion1 = 32;
inline constexpr unsigned kFeatureAccessPlatform = 33;
inline constexpr unsigned kFeatureRingPacked = 34;
inline constexpr unsigned kFeatureInOrder = 35;
inline constexpr unsigned kFeatureOrderPlatform = 36;
inline constexpr unsigned kFeatureNotificationData = 38;

[[nodiscard]] constexpr uint64_t feature_bit(unsigned bit) noexcept { return uint64_t{1} << bit; }
[[nodiscard]] constexpr bool has_feature(uint64_t features, unsigned bit) noexcept {
  return (features & feature_bit(bit)) != 0;
}

// "VERSION_1" for known bits, "bit 40" otherwise.
[[nodiscard]] std::string feature_name(unsigned bit);
// "VERSION_1|EVENT_IDX|bit 40"
[[nodiscard]] std::string describe_features(uint64_t features);

// Checks a feature set against the spec's dependencies:
//   - every bit >= 32 (including RING_PACKED, ACCESS_PLATFORM, IN_ORDER,
//     ORDER_PLATFORM, NOTIFICATION_DATA) needs VERSION_1, since a legacy
//     interface cannot carry them (virtio 1.2 §6, §7);
// Errors: VirtioErrc::kFeatureDependency naming both bits.
[[nodiscard]] Result<void> validate_features(uint64_t features);

// The features both sides agree on: driver_wanted must be a subset of
// device_offered (VirtioErrc::kFeatureNotOffered names the extra bits), and
// the result must pass validate_features().
[[nodiscard]] Result<uint64_t> negotiate_features(uint64_t device_offered, uint64_t driver_wanted);

}  // namespace vdma
