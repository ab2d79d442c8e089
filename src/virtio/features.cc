#include "vdma/virtio/features.h"

#include <fmt/format.h>

namespace vdma {

std::string_view ErrcTraits<VirtioErrc>::name(VirtioErrc e) {
  switch (e) {
    case VirtioErrc::kFeatureDependency: return "feature_dependency";
    case VirtioErrc::kFeatureNotOffered: return "feature_not_offered";
    case VirtioErrc::kInvalidConfig: return "invalid_config";
    case VirtioErrc::kNoSpace: return "no_space";
    case VirtioErrc::kInvalidChain: return "invalid_chain";
    case VirtioErrc::kBadDescriptor: return "bad_descriptor";
    case VirtioErrc::kNeedsReset: return "needs_reset";
    case VirtioErrc::kBroken: return "broken";
  }
  return "unknown";
}

std::string feature_name(unsigned bit) {
  switch (bit) {
    case kFeatureIndirectDesc: return "INDIRECT_DESC";
    case kFeatureEventIdx: return "EVENT_IDX";
    case kFeatureVersion1: return "VERSION_1";
    case kFeatureAccessPlatform: return "ACCESS_PLATFORM";
    case kFeatureRingPacked: return "RING_PACKED";
    case kFeatureInOrder: return "IN_ORDER";
    case kFeatureOrderPlatform: return "ORDER_PLATFORM";
    case kFeatureNotificationData: return "NOTIFICATION_DATA";
    default: return fmt::format("bit {}", bit);
  }
}

std::string describe_features(uint64_t features) {
  std::string out;
  for (unsigned bit = 0; bit < 64; ++bit) {
    if (!has_feature(features, bit)) continue;
    if (!out.empty()) out += '|';
    out += feature_name(bit);
  }
  return out.empty() ? "none" : out;
}

Result<void> validate_features(uint64_t features) {
  if (!has_feature(features, kFeatureVersion1)) {
    for (unsigned bit = 32; bit < 64; ++bit) {
      if (has_feature(features, bit)) {
        return make_error(VirtioErrc::kFeatureDependency, "{} ({}) requires VERSION_1 ({})", feature_name(bit), bit,
                          kFeatureVersion1);
      }
    }
  }
  return ok();
}

Result<uint64_t> negotiate_features(uint64_t device_offered, uint64_t driver_wanted) {
  const uint64_t extra = driver_wanted & ~device_offered;
  if (extra != 0) {
    return make_error(VirtioErrc::kFeatureNotOffered, "driver accepted {} which the device did not offer (offered {})",
                      describe_features(extra), describe_features(device_offered));
  }
  VDMA_TRY(validate_features(driver_wanted));
  return driver_wanted;
}

}  // namespace vdma
