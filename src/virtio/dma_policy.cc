#include "vdma/virtio/dma_policy.h"

#include "vdma/virtio/features.h"

namespace vdma {

std::string_view to_string(DmaPath p) noexcept {
  switch (p) {
    case DmaPath::kBypass: return "bypass";
    case DmaPath::kPlatform: return "platform";
  }
  return "invalid";
}

DmaPolicy DmaPolicy::from_topology(const PlatformTopology& t) {
  DmaPolicyConfig c;
  c.restricted_memory_access = t.restricted_memory_access;
  for (const DeviceTopology& d : t.devices) {
    if (d.quirk != DmaQuirk::kNone) c.quirks.emplace(d.id, d.quirk);
    if (!d.coherent) c.non_coherent.insert(d.id);
  }
  return DmaPolicy(std::move(c));
}

DmaQuirk DmaPolicy::quirk(std::string_view device) const {
  auto it = config_.quirks.find(device);
  return it == config_.quirks.end() ? DmaQuirk::kNone : it->second;
}

uint64_t DmaPolicy::transport_features(std::string_view device, uint64_t offered) const {
  uint64_t accept = offered & feature_bit(kFeatureOrderPlatform);
  // virtio 1.2 §6: a driver SHOULD accept ACCESS_PLATFORM when offered.
  if (quirk(device) != DmaQuirk::kDeclineAccessPlatform) accept |= offered & feature_bit(kFeatureAccessPlatform);
  return accept;
}

Result<void> DmaPolicy::features_ok(std::string_view device, uint64_t negotiated) const {
  VDMA_TRY(evaluate(device, negotiated));
  return ok();
}

Result<DmaDecision> DmaPolicy::decide(std::string_view device, uint64_t negotiated) const {
  return evaluate(device, negotiated);
}

Result<DmaDecision> DmaPolicy::evaluate(std::string_view device, uint64_t negotiated) const {
  const DmaQuirk q = quirk(device);
  if (config_.restricted_memory_access) {
    // Linux virtio_features_ok: without both bits the device would read guest
    // memory directly, and on this platform it can reach shared memory only.
    for (unsigned bit : {kFeatureVersion1, kFeatureAccessPlatform}) {
      if (!has_feature(negotiated, bit)) {
        return make_error(DmaErrc::kPlatformRefused,
                          "device {}: device must provide VIRTIO_F_{} (bit {}): the platform restricts memory access "
                          "(negotiated {}){}",
                          device, feature_name(bit), bit, describe_features(negotiated),
                          q == DmaQuirk::kNone ? "" : fmt::format("; quirk {} cannot lift this", to_string(q)));
      }
    }
  }
  DmaDecision d;
  d.barriers = has_feature(negotiated, kFeatureOrderPlatform) ? BarrierKind::kStrong : BarrierKind::kWeak;
  const bool access_platform = has_feature(negotiated, kFeatureAccessPlatform);
  if (config_.restricted_memory_access) {
    d.path = DmaPath::kPlatform;
    d.reason = "restricted memory access: ACCESS_PLATFORM negotiated";
  } else if (q == DmaQuirk::kDeclineAccessPlatform) {
    if (access_platform) {
      return make_error(BaseErrc::kInvalidArgument,
                        "device {}: quirk decline_access_platform, yet ACCESS_PLATFORM was negotiated (accept only "
                        "transport_features())",
                        device);
    }
    d.path = DmaPath::kBypass;
    d.reason = "quirk decline_access_platform";
  } else if (q == DmaQuirk::kUseDmaApi) {
    d.path = DmaPath::kPlatform;
    d.reason = "quirk use_dma_api";
  } else if (access_platform) {
    d.path = DmaPath::kPlatform;
    d.reason = "ACCESS_PLATFORM negotiated";
  } else {
    d.path = DmaPath::kBypass;
    d.reason = "ACCESS_PLATFORM not negotiated (legacy bypass)";
  }
  if (d.path == DmaPath::kPlatform && config_.non_coherent.contains(device) &&
      !has_feature(negotiated, kFeatureOrderPlatform)) {
    return make_error(DmaErrc::kPlatformRefused,
                      "device {}: non-coherent device needs VIRTIO_F_{} (bit {}) so that platform barriers order its "
                      "accesses (negotiated {})",
                      device, feature_name(kFeatureOrderPlatform), kFeatureOrderPlatform,
                      describe_features(negotiated));
  }
  return d;
}

Result<DmaOps*> select_dma_ops(const PlatformDma& platform, std::string_view device, const DmaDecision& decision) {
  return decision.path == DmaPath::kPlatform ? platform.platform_ops(device) : platform.bypass_ops(device);
}

}  // namespace vdma
