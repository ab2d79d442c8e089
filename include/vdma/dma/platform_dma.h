// PlatformDma: the DmaOps of every device, built from a PlatformTopology.
//
//   auto topo = *load_topology("platform.json");
//   auto platform = *PlatformDma::create(*mem, topo);
//   DmaOps& ops = **platform->platform_ops("blk0");   // what ACCESS_PLATFORM selects
//   DmaOps& legacy = **platform->bypass_ops("blk0");  // what a device without it gets
//
// What each device kind becomes:
//   bypass      IdentityDmaOps over the coherent pool (dma == gpa)
//   direct      DirectDmaOps: offsets, encryption bit, DMA mask; bounces
//               through the top-level swiotlb pool when the mask demands it,
//               every mapping with force_bounce
//   restricted  DirectDmaOps in BounceMode::kRestricted over the device's own pool
//   iommu       whatever PlatformDmaOptions::iommu builds: IommuPlatform
//               (iommu_platform.h) builds IommuDmaOps over one IO address
//               space and domain per "iommu_domain"; without a factory,
//               platform_ops() is DmaErrc::kUnavailable ("no IommuDmaFactory
//               was given"), while the other devices work. Under
//               restricted_memory_access the ops bounce every mapping
//               through the top-level swiotlb and the IOMMU maps the slot
//               (IommuDmaEnv::bounce), so no device kind ever has private
//               memory mapped for it.
// A non-coherent device gets PlatformDmaOptions::cache (default:
// FenceCacheMaintenance). A device with "flush_before_notify" gets a
// PostedWriteFlush (notify_flush()) that its driver queues run before every
// notification (QueueConfig::notify_flush).
//
// Errors of create() are DmaErrc::kInvalidConfig and name the topology path:
// "swiotlb: bounce pool window gpa:0x... is in private region 'ram' ...",
// "devices[2] (vsock0).restricted_pool: ...". Under restricted_memory_access
// an iommu device is refused, naming it and the reason, when there is no
// "swiotlb" to bounce through, when that pool is not all shared memory, or
// when the factory returned ops that do not bounce:
// "devices[1] (net0): kind \"iommu\" with restricted_memory_access needs the
// top-level \"swiotlb\" pool: ...".
//
// Lifetime: `mem` must outlive the PlatformDma; the DmaOps it hands out live
// as long as it does. Thread safety: the lookups are const and safe
// concurrently; each DmaOps is itself thread-safe.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "vdma/dma/bounce_pool.h"
#include "vdma/dma/cache_maintenance.h"
#include "vdma/dma/coherent_pool.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/dma/posted_write_flush.h"
#include "vdma/dma/topology.h"

namespace vdma {

// What PlatformDma gives an IommuDmaFactory besides the device: the guest
// memory, the platform's coherent pool (null without "coherent_pool"; ring
// memory the IOMMU ops map for the device), the cache-maintenance hooks,
// and on a restricted platform the shared bounce pool.
struct IommuDmaEnv {
  const GuestMemory& mem;
  std::shared_ptr<CoherentPool> coherent;
  std::shared_ptr<CacheMaintenance> cache;
  // Non-null exactly under restricted_memory_access: the platform's swiotlb
  // (shared memory). The factory MUST bounce every streaming mapping through
  // it and map only the slot through the IOMMU (IommuDmaOpsConfig::
  // bounce_pool); PlatformDma refuses ops whose kind() does not end in
  // "-bounce".
  std::shared_ptr<BouncePool> bounce;
};

// Builds the DmaOps of a device behind an IOMMU (kind "iommu"), e.g.
// IommuPlatform::factory(); the factory captures the IO address spaces and
// domains it manages.
using IommuDmaFactory =
    std::function<Result<std::unique_ptr<DmaOps>>(const DeviceTopology& device, const IommuDmaEnv& env)>;

struct PlatformDmaOptions {
  std::shared_ptr<CacheMaintenance> cache;  // null: a FenceCacheMaintenance
  IommuDmaFactory iommu;                    // empty: iommu devices are kUnavailable
};

class PlatformDma {
 public:
  [[nodiscard]] static Result<std::unique_ptr<PlatformDma>> create(const GuestMemory& mem, PlatformTopology topology,
                                                                   PlatformDmaOptions options = {});

  // The device's platform DMA ops.
  // Errors: DmaErrc::kInvalidConfig (no such device), DmaErrc::kUnavailable
  // (an iommu device without an IommuDmaFactory), or the factory's error.
  [[nodiscard]] Result<DmaOps*> platform_ops(std::string_view device_id) const;
  // The legacy bypass (dma == gpa) for the device, rings from the coherent pool.
  // Errors: DmaErrc::kInvalidConfig (no such device, or no coherent pool).
  [[nodiscard]] Result<DmaOps*> bypass_ops(std::string_view device_id) const;

  [[nodiscard]] const PlatformTopology& topology() const noexcept { return topology_; }
  [[nodiscard]] const DeviceTopology* device(std::string_view id) const noexcept { return topology_.find(id); }
  [[nodiscard]] BouncePool* swiotlb() const noexcept { return swiotlb_.get(); }
  [[nodiscard]] BouncePool* restricted_pool(std::string_view device_id) const noexcept;
  // The hook the device's driver runs before each notification; null when
  // the device declares "flush_before_notify": "none" (or is unknown).
  [[nodiscard]] PostedWriteFlush* notify_flush(std::string_view device_id) const noexcept;
  [[nodiscard]] CoherentPool* coherent_pool() const noexcept { return coherent_.get(); }
  [[nodiscard]] CacheMaintenance& cache() const noexcept { return *cache_; }

 private:
  struct Device {
    std::unique_ptr<DmaOps> platform;  // null when `unavailable` holds the reason
    std::optional<Error> unavailable;
    std::unique_ptr<DmaOps> bypass;    // null without a coherent pool
    std::shared_ptr<BouncePool> restricted;
    std::unique_ptr<PostedWriteFlush> notify_flush;  // null without "flush_before_notify"
  };

  explicit PlatformDma(PlatformTopology t) : topology_(std::move(t)) {}
  [[nodiscard]] Result<const Device*> lookup(std::string_view id) const;

  PlatformTopology topology_;
  std::shared_ptr<CoherentPool> coherent_;
  std::shared_ptr<BouncePool> swiotlb_;
  std::shared_ptr<CacheMaintenance> cache_;
  std::map<std::string, Device, std::less<>> devices_;
};

}  // namespace vdma
