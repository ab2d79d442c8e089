// IommuPlatform: the IOMMU side of a PlatformDma. It owns one IO address
// space and domain per "iommu_domain" number of the topology, attaches the
// devices that name it, and builds their IommuDmaOps.
//
//   IommuPlatform iommu({.domain = {.mode = InvalidationMode::kLazy, .sink = sink}});
//   auto platform = *PlatformDma::create(*mem, topo, {.iommu = iommu.factory()});
//   DmaOps& gpu = **platform->platform_ops("gpu0");          // an IommuDmaOps, dma = IOVA
//   IoAddressSpace* ioas = iommu.ioas(1);                    // what the vIOMMU walks
//
// Domains. A domain number listed in identity_domains is a passthrough
// IdentityDomain (dma == gpa); any other is an IoAddressSpace with a
// PagingDomain and an IommuDmaDomain (IOVA allocator and flush queue) built
// from per_domain[number] or else `domain`. Devices of one domain share its IOVA space, allocator and
// flush queue. Each device is attached with DeviceId = its index in the
// topology's "devices" and the `device_reserved` ranges (default: the x86
// MSI window 0xfee00000-0xfeefffff), before the domain's IOVA allocator
// reads the usable ranges; later devices of the domain are given the same
// ranges, so the allocator's view stays exact.
//
// Per device: dma_mask from the topology, "coherent" (a non-coherent
// device gets the platform's cache-maintenance hooks), rings from the
// platform's coherent pool (the topology must have "coherent_pool"). On a
// restricted platform (IommuDmaEnv::bounce) every mapping bounces through
// the swiotlb and the domain maps the slot, with the device's
// "min_align_mask"; kind() is then "iommu-bounce".
//
// Errors (from PlatformDma::create, with the device path): kInvalidConfig
// when the topology has no coherent_pool, or the attach or allocator fails.
//
// Lifetime: the IommuPlatform must outlive every PlatformDma built with its
// factory (the ops refer to its domains). Thread safety: factory() calls are
// serialised by PlatformDma::create; the accessors are safe once it returned.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "vdma/dma/iommu_dma_ops.h"
#include "vdma/dma/platform_dma.h"

namespace vdma {

inline constexpr IovaRange kMsiWindow{Iova(0xfee00000), Iova(0xfeefffff)};

struct IommuPlatformConfig {
  IommuDomainConfig domain;                          // every paging domain not in per_domain
  std::map<uint32_t, IommuDomainConfig> per_domain;  // by domain number (mode, sink, limits)
  std::vector<uint32_t> identity_domains;            // passthrough domain numbers
  std::vector<IovaRange> device_reserved{kMsiWindow};
};

class IommuPlatform {
 public:
  // IommuPlatformConfig{}. Out of line: g++ 12 at -O3 warned of a "maybe
  // uninitialized" std::function where the default argument was inlined.
  explicit IommuPlatform();
  explicit IommuPlatform(IommuPlatformConfig config);
  ~IommuPlatform();
  IommuPlatform(const IommuPlatform&) = delete;
  IommuPlatform& operator=(const IommuPlatform&) = delete;

  [[nodiscard]] IommuDmaFactory factory();

  // Null until a device of that domain was built.
  [[nodiscard]] IommuDmaDomain* dma_domain(uint32_t domain) const noexcept;
  [[nodiscard]] IoAddressSpace* ioas(uint32_t domain) const noexcept;
  [[nodiscard]] Domain* domain(uint32_t domain) const noexcept;

 private:
  struct DomainState {
    std::unique_ptr<IoAddressSpace> ioas;     // paging only
    std::unique_ptr<Domain> domain;           // destroyed before ioas (declared after it)
    std::shared_ptr<IommuDmaDomain> dma;
  };
  [[nodiscard]] Result<std::unique_ptr<DmaOps>> build(const DeviceTopology& device, const IommuDmaEnv& env);
  [[nodiscard]] Result<DomainState*> domain_for(uint32_t id, DeviceId dev);

  const IommuPlatformConfig config_;
  std::map<uint32_t, DomainState> domains_;
};

}  // namespace vdma
