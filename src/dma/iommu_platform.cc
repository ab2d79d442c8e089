#include "vdma/dma/iommu_platform.h"

#include <algorithm>

namespace vdma {

IommuPlatform::IommuPlatform() : IommuPlatform(IommuPlatformConfig{}) {}

IommuPlatform::IommuPlatform(IommuPlatformConfig config) : config_(std::move(config)) {}

// Members of DomainState are destroyed in reverse order: the DMA state,
// then the domain (which detaches its devices and its IOAS mirror), then
// the IOAS.
IommuPlatform::~IommuPlatform() {
  for (auto& entry : domains_) {
    entry.second.dma.reset();
    entry.second.domain.reset();
  }
}

IommuDmaFactory IommuPlatform::factory() {
  return [this](const DeviceTopology& device, const IommuDmaEnv& env) { return build(device, env); };
}

Result<IommuPlatform::DomainState*> IommuPlatform::domain_for(uint32_t id, DeviceId dev) {
  auto it = domains_.find(id);
  if (it != domains_.end()) {
    VDMA_TRY(it->second.domain->attach_device(dev, config_.device_reserved));
    return &it->second;
  }
  DomainState st;
  const bool identity = std::find(config_.identity_domains.begin(), config_.identity_domains.end(), id) !=
                        config_.identity_domains.end();
  if (identity) {
    auto dom = std::make_unique<IdentityDomain>();
    VDMA_TRY(dom->attach_device(dev, config_.device_reserved));
    st.dma = IommuDmaDomain::create_identity(*dom);
    st.domain = std::move(dom);
  } else {
    st.ioas = IoAddressSpace::create();
    std::unique_ptr<PagingDomain> paging = VDMA_TRY(PagingDomain::create(*st.ioas));
    // Attach first: the allocator takes the usable ranges, minus the device's reserved ones.
    VDMA_TRY(paging->attach_device(dev, config_.device_reserved));
    auto cfg = config_.per_domain.find(id);
    st.dma = VDMA_TRY(
        IommuDmaDomain::create(*st.ioas, *paging, cfg != config_.per_domain.end() ? cfg->second : config_.domain));
    st.domain = std::move(paging);
  }
  return &domains_.emplace(id, std::move(st)).first->second;
}

Result<std::unique_ptr<DmaOps>> IommuPlatform::build(const DeviceTopology& device, const IommuDmaEnv& env) {
  VDMA_CHECK(device.iommu_domain.has_value(), "an iommu device without iommu_domain passed topology parsing");
  if (env.coherent == nullptr) {
    return make_error(DmaErrc::kInvalidConfig, "IOMMU DMA ops need the top-level coherent_pool for rings");
  }
  DomainState* st = VDMA_TRY(domain_for(*device.iommu_domain, DeviceId{static_cast<uint32_t>(device.index)}));
  auto ops = IommuDmaOps::create(env.mem, st->dma,
                                 {.dma_mask = device.dma_mask, .coherent = env.coherent,
                                  .coherent_device = device.coherent, .cache = env.cache,
                                  .bounce_pool = env.bounce, .min_align_mask = device.min_align_mask});
  if (!ops) return std::move(ops).error();
  return std::unique_ptr<DmaOps>(std::move(ops).value());
}

IommuDmaDomain* IommuPlatform::dma_domain(uint32_t domain) const noexcept {
  auto it = domains_.find(domain);
  return it == domains_.end() ? nullptr : it->second.dma.get();
}

IoAddressSpace* IommuPlatform::ioas(uint32_t domain) const noexcept {
  auto it = domains_.find(domain);
  return it == domains_.end() ? nullptr : it->second.ioas.get();
}

Domain* IommuPlatform::domain(uint32_t domain) const noexcept {
  auto it = domains_.find(domain);
  return it == domains_.end() ? nullptr : it->second.domain.get();
}

}  // namespace vdma
