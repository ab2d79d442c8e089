#include "vdma/dma/platform_dma.h"

#include "vdma/dma/direct_dma_ops.h"

namespace vdma {

namespace {

Error at(std::string_view path, const Error& e) {
  return Error(DmaErrc::kInvalidConfig, fmt::format("{}: {}", path, e.message()));
}

BouncePool::Config pool_config(const PoolSpec& s) {
  return {.window = s.window, .min_areas = s.areas, .growth_window = s.growth_window,
          .growth_pool_size = s.growth_pool_size};
}

// A device behind an IOMMU on a restricted platform reaches shared memory
// only: its mappings must bounce through the top-level swiotlb, all of
// which (growth window included) must be shared. Checked before the pool is
// built so the refusal names the device that needs it.
Result<void> check_restricted_iommu(const GuestMemory& mem, const PlatformTopology& t, const DeviceTopology& d) {
  if (!t.swiotlb) {
    return make_error(DmaErrc::kInvalidConfig,
                      "{}: kind \"iommu\" with restricted_memory_access needs the top-level \"swiotlb\" pool: the "
                      "device may reach only shared memory, so every mapping must bounce through shared slots that "
                      "the IOMMU then maps, and without the pool it would be handed private memory",
                      d.path());
  }
  for (const AddrRange<Gpa>& w : {t.swiotlb->window, t.swiotlb->growth_window}) {
    if (w.len == 0) continue;
    if (!mem.is_all(w.start, w.len, MemAttr::kShared)) {
      return make_error(DmaErrc::kInvalidConfig,
                        "{}: kind \"iommu\" with restricted_memory_access bounces through the swiotlb, but its "
                        "window {} + len {:#x} is not all shared memory, so the device could not reach the slots "
                        "and the host could not be kept from private memory",
                        d.path(), w.start, w.len);
    }
  }
  return ok();
}

}  // namespace

Result<std::unique_ptr<PlatformDma>> PlatformDma::create(const GuestMemory& mem, PlatformTopology topology,
                                                         PlatformDmaOptions options) {
  std::unique_ptr<PlatformDma> p(new PlatformDma(std::move(topology)));
  const PlatformTopology& t = p->topology_;
  p->cache_ = options.cache != nullptr ? std::move(options.cache) : std::make_shared<FenceCacheMaintenance>();
  if (t.coherent_pool) {
    auto c = CoherentPool::create(mem, *t.coherent_pool);
    if (!c) return at("coherent_pool", c.error());
    p->coherent_ = *c;
    if (t.restricted_memory_access && !mem.is_all(t.coherent_pool->start, t.coherent_pool->len, MemAttr::kShared)) {
      return make_error(DmaErrc::kInvalidConfig,
                        "coherent_pool: {} + len {:#x} must be shared memory with restricted_memory_access (rings "
                        "are read by the host)",
                        t.coherent_pool->start, t.coherent_pool->len);
    }
  }
  if (t.restricted_memory_access) {
    for (const DeviceTopology& d : t.devices) {
      if (d.kind == DeviceDmaKind::kIommu) VDMA_TRY(check_restricted_iommu(mem, t, d));
    }
  }
  if (t.swiotlb) {
    auto s = BouncePool::create(mem, pool_config(*t.swiotlb));
    if (!s) return at("swiotlb", s.error());
    p->swiotlb_ = *s;
  }
  for (const DeviceTopology& d : t.devices) {
    Device dev;
    if (p->coherent_ != nullptr) dev.bypass = std::make_unique<IdentityDmaOps>(mem, p->coherent_);
    switch (d.kind) {
      case DeviceDmaKind::kBypass:
        if (p->coherent_ == nullptr) {
          return make_error(DmaErrc::kInvalidConfig, "{}: kind \"bypass\" needs the top-level coherent_pool", d.path());
        }
        dev.platform = std::make_unique<IdentityDmaOps>(mem, p->coherent_);
        break;
      case DeviceDmaKind::kDirect:
      case DeviceDmaKind::kRestricted: {
        DirectDmaConfig cfg;
        cfg.bus = {d.offset_ranges, d.encryption_bit, d.dma_mask};
        cfg.coherent = p->coherent_;
        cfg.coherent_device = d.coherent;
        cfg.cache = p->cache_;
        cfg.min_align_mask = d.min_align_mask;
        if (d.kind == DeviceDmaKind::kRestricted) {
          auto pool = BouncePool::create(mem, pool_config(*d.restricted_pool));
          if (!pool) return at(d.path() + ".restricted_pool", pool.error());
          dev.restricted = *pool;
          cfg.bounce_mode = BounceMode::kRestricted;
          cfg.bounce_pool = dev.restricted;
        } else {
          cfg.bounce_mode = d.force_bounce ? BounceMode::kForce : BounceMode::kWhenNeeded;
          cfg.bounce_pool = p->swiotlb_;
        }
        auto ops = DirectDmaOps::create(mem, std::move(cfg));
        if (!ops) return at(d.path(), ops.error());
        dev.platform = std::move(ops).value();
        break;
      }
      case DeviceDmaKind::kIommu:
        if (options.iommu) {
          auto ops = options.iommu(
              d, IommuDmaEnv{mem, p->coherent_, p->cache_, t.restricted_memory_access ? p->swiotlb_ : nullptr});
          if (!ops) return at(d.path(), ops.error());
          // The factory is outside this module: a restricted platform checks
          // that it honoured IommuDmaEnv::bounce instead of trusting it.
          if (t.restricted_memory_access && !(*ops)->kind().ends_with("-bounce")) {
            return make_error(DmaErrc::kInvalidConfig,
                              "{}: the IommuDmaFactory built \"{}\" DMA ops, which do not bounce; with "
                              "restricted_memory_access the device may reach only shared memory, so its mappings "
                              "must bounce through IommuDmaEnv::bounce",
                              d.path(), (*ops)->kind());
          }
          dev.platform = std::move(ops).value();
        } else {
          dev.unavailable = Error(DmaErrc::kUnavailable,
                                  fmt::format("{}: no IommuDmaFactory was given, so the device behind IOMMU "
                                              "domain {} has no platform DMA ops",
                                              d.path(), *d.iommu_domain));
        }
        break;
    }
    if (d.notify_flush != NotifyFlushKind::kNone) dev.notify_flush = std::make_unique<PostedWriteFlush>(d.notify_flush);
    p->devices_.emplace(d.id, std::move(dev));
  }
  return p;
}

Result<const PlatformDma::Device*> PlatformDma::lookup(std::string_view id) const {
  auto it = devices_.find(id);
  if (it == devices_.end()) {
    return make_error(DmaErrc::kInvalidConfig, "device \"{}\" is not in the platform topology", id);
  }
  return &it->second;
}

Result<DmaOps*> PlatformDma::platform_ops(std::string_view device_id) const {
  const Device* d = VDMA_TRY(lookup(device_id));
  if (d->platform == nullptr) return *d->unavailable;
  return d->platform.get();
}

Result<DmaOps*> PlatformDma::bypass_ops(std::string_view device_id) const {
  const Device* d = VDMA_TRY(lookup(device_id));
  if (d->bypass == nullptr) {
    return make_error(DmaErrc::kInvalidConfig, "device \"{}\": no bypass DMA ops: the topology has no coherent_pool",
                      device_id);
  }
  return d->bypass.get();
}

PostedWriteFlush* PlatformDma::notify_flush(std::string_view device_id) const noexcept {
  auto it = devices_.find(device_id);
  return it == devices_.end() ? nullptr : it->second.notify_flush.get();
}

BouncePool* PlatformDma::restricted_pool(std::string_view device_id) const noexcept {
  auto it = devices_.find(device_id);
  return it == devices_.end() ? nullptr : it->second.restricted.get();
}

}  // namespace vdma
