// DmaPolicy: which DMA path a virtio device gets, decided from the
// negotiated features (Linux vring_use_dma_api and virtio_features_ok).
//
//   DmaPolicy policy = DmaPolicy::from_topology(platform->topology());
//   uint64_t accept = wanted | policy.transport_features("blk0", offered);
//   uint64_t f = *negotiate_features(offered, accept);
//   if (auto ok = policy.features_ok("blk0", f); !ok) fail_device(ok.error());   // before FEATURES_OK
//   DmaDecision d = *policy.decide("blk0", f);
//   DmaOps& ops = **select_dma_ops(*platform, "blk0", d);
//   auto q = make_driver_queue(fmt, ops, {.size = 256, .features = f});   // barriers follow ORDER_PLATFORM
//
// The table (virtio 1.2 §6, VIRTIO_F_ACCESS_PLATFORM):
//   restricted platform, VERSION_1 and ACCESS_PLATFORM negotiated -> platform DmaOps
//   restricted platform, either bit missing -> refused before FEATURES_OK,
//       naming the bit ("device must provide VIRTIO_F_VERSION_1"); no quirk
//       overrides this, because the device would be handed private memory
//   otherwise, quirk use_dma_api -> platform DmaOps even without ACCESS_PLATFORM
//   otherwise, quirk decline_access_platform -> the driver does not accept
//       ACCESS_PLATFORM (transport_features leaves it out): bypass
//   otherwise, ACCESS_PLATFORM negotiated -> platform DmaOps
//   otherwise -> bypass (the legacy behaviour: dma == gpa, any IOMMU ignored)
// and, for every device the topology marks non-coherent: the platform path
// needs ORDER_PLATFORM (such a device is hardware, which SMP barriers do not
// order), or it is refused naming ORDER_PLATFORM.
//
// Barriers: DmaDecision::barriers is kStrong exactly when ORDER_PLATFORM is
// negotiated, which is also what the queues pick from QueueConfig::features.
//
// Thread safety: const after construction.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "vdma/base/result.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/dma/platform_dma.h"
#include "vdma/dma/topology.h"
#include "vdma/virtio/barriers.h"

namespace vdma {

enum class DmaPath : uint8_t { kBypass, kPlatform };
[[nodiscard]] std::string_view to_string(DmaPath p) noexcept;

struct DmaDecision {
  DmaPath path = DmaPath::kBypass;
  BarrierKind barriers = BarrierKind::kWeak;
  // Why, for logs: "ACCESS_PLATFORM negotiated", "quirk use_dma_api", ...; a
  // string literal, so the decision is a plain value.
  std::string_view reason;
};

struct DmaPolicyConfig {
  bool restricted_memory_access = false;
  std::map<std::string, DmaQuirk, std::less<>> quirks;  // by device id
  std::set<std::string, std::less<>> non_coherent;      // device ids
};

class DmaPolicy {
 public:
  explicit DmaPolicy(DmaPolicyConfig config) : config_(std::move(config)) {}
  // Restricted flag, quirks and coherency from the topology.
  [[nodiscard]] static DmaPolicy from_topology(const PlatformTopology& t);

  // The transport feature bits the driver accepts out of `offered`:
  // ACCESS_PLATFORM (unless the device's quirk declines it) and ORDER_PLATFORM.
  [[nodiscard]] uint64_t transport_features(std::string_view device, uint64_t offered) const;

  // virtio_features_ok: checks the negotiated set before FEATURES_OK.
  // Errors: DmaErrc::kPlatformRefused naming the missing bit and the device;
  // BaseErrc::kInvalidArgument when the device's quirk declines
  // ACCESS_PLATFORM but it was negotiated anyway.
  [[nodiscard]] Result<void> features_ok(std::string_view device, uint64_t negotiated) const;

  // vring_use_dma_api: the path and barriers (applies every rule of
  // features_ok() again, so it never selects a refused device).
  // Errors: those of features_ok().
  [[nodiscard]] Result<DmaDecision> decide(std::string_view device, uint64_t negotiated) const;

  [[nodiscard]] DmaQuirk quirk(std::string_view device) const;
  [[nodiscard]] const DmaPolicyConfig& config() const noexcept { return config_; }

 private:
  [[nodiscard]] Result<DmaDecision> evaluate(std::string_view device, uint64_t negotiated) const;

  DmaPolicyConfig config_;
};

// The DmaOps the decision selects: the platform ops or the bypass.
// Errors: those of PlatformDma::platform_ops / bypass_ops.
[[nodiscard]] Result<DmaOps*> select_dma_ops(const PlatformDma& platform, std::string_view device,
                                             const DmaDecision& decision);

}  // namespace vdma
