#include "vdma/frontend/guest_platform.h"

#include <algorithm>
#include <vector>

#include "vdma/frontend/errors.h"
#include "vdma/virtio/features.h"

namespace vdma {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kRegionAlign = uint64_t{2} << 20;

Result<void> check_size(std::string_view what, uint64_t size) {
  if (size == 0 || size % kPage != 0) {
    return make_error(FrontendErrc::kInvalidOption, "{} {:#x} must be a non-zero multiple of 4 KiB", what, size);
  }
  return ok();
}

// Each pool window of the topology becomes one shared region, then "ram".
Result<std::vector<RegionSpec>> regions_for(const PlatformTopology& t, uint64_t ram_size) {
  std::vector<RegionSpec> specs;
  auto add_shared = [&](AddrRange<Gpa> w, std::string name) {
    if (w.len != 0) specs.push_back(RegionSpec{w.start, w.len, MemAttr::kShared, std::move(name)});
  };
  if (t.coherent_pool) add_shared(*t.coherent_pool, "coherent");
  if (t.swiotlb) {
    add_shared(t.swiotlb->window, "swiotlb");
    add_shared(t.swiotlb->growth_window, "swiotlb-growth");
  }
  for (const DeviceTopology& d : t.devices) {
    if (d.restricted_pool) add_shared(d.restricted_pool->window, "restricted-" + d.id);
  }
  uint64_t ram_base = 0;
  const AddrRange<Gpa> at_zero{Gpa{0}, ram_size};
  const bool zero_free = std::none_of(specs.begin(), specs.end(), [&](const RegionSpec& s) {
    return AddrRange<Gpa>{s.base, s.size}.overlaps(at_zero);
  });
  if (!zero_free) {
    for (const RegionSpec& s : specs) {
      const uint64_t end = VDMA_TRY(checked_add(s.base, s.size)).value();
      ram_base = std::max(ram_base, align_up(end, kRegionAlign));
    }
  }
  specs.push_back(RegionSpec{Gpa{ram_base}, ram_size, MemAttr::kPrivate, "ram"});
  return specs;
}

}  // namespace

GuestLayout default_layout(uint64_t ram_size, uint64_t coherent_size, uint64_t bounce_size) {
  GuestLayout l;
  l.ram = {Gpa{0}, ram_size};
  l.coherent = {Gpa{align_up(ram_size, kRegionAlign)}, coherent_size};
  l.bounce = {Gpa{align_up(l.coherent.start.value() + coherent_size, kRegionAlign)}, bounce_size};
  return l;
}

PlatformTopology builtin_topology(DmaMode mode, const GuestLayout& layout, std::string_view device_id) {
  PlatformTopology t;
  t.coherent_pool = layout.coherent;
  DeviceTopology d;
  d.id = std::string(device_id);
  switch (mode) {
    case DmaMode::kBypass:
      d.kind = DeviceDmaKind::kBypass;
      d.quirk = DmaQuirk::kDeclineAccessPlatform;
      break;
    case DmaMode::kIommuStrict:
    case DmaMode::kIommuLazy:
    case DmaMode::kIommuPremapped:
      d.kind = DeviceDmaKind::kIommu;
      d.iommu_domain = 1;
      break;
    case DmaMode::kRestricted:
      // A confidential guest (Linux SEV/TDX): every mapping bounces through
      // the shared swiotlb, rings live in shared coherent memory.
      t.restricted_memory_access = true;
      t.swiotlb = PoolSpec{.window = layout.bounce};
      d.kind = DeviceDmaKind::kDirect;
      d.force_bounce = true;
      break;
    case DmaMode::kOffset: {
      const uint64_t end = std::max({layout.ram.start.value() + layout.ram.len,
                                     layout.coherent.start.value() + layout.coherent.len,
                                     layout.bounce.start.value() + layout.bounce.len});
      d.kind = DeviceDmaKind::kDirect;
      d.offset_ranges = {OffsetRange{.cpu = Gpa{0}, .dma = DmaAddr{kBuiltinBusOffset}, .size = align_up(end, kPage)}};
      d.quirk = DmaQuirk::kUseDmaApi;
      break;
    }
    case DmaMode::kEncryptionBit:
      d.kind = DeviceDmaKind::kDirect;
      d.encryption_bit = kBuiltinEncryptionBit;
      d.quirk = DmaQuirk::kUseDmaApi;
      break;
  }
  t.devices.push_back(std::move(d));
  return t;
}

GuestPlatform::GuestPlatform(DmaMode mode, bool builtin, DmaPolicy policy)
    : mode_(mode), builtin_(builtin), policy_(std::move(policy)) {}

GuestPlatform::~GuestPlatform() = default;

Result<std::unique_ptr<GuestPlatform>> GuestPlatform::create(GuestPlatformConfig config) {
  VDMA_TRY(check_size("ram_size", config.ram_size));
  VDMA_TRY(check_size("coherent_size", config.coherent_size));
  VDMA_TRY(check_size("bounce_size", config.bounce_size));
  const bool builtin = !config.topology.has_value();
  PlatformTopology topo =
      builtin ? builtin_topology(config.mode,
                                 default_layout(config.ram_size, config.coherent_size, config.bounce_size),
                                 config.device_id)
              : std::move(*config.topology);
  // The restricted mode is a confidential guest: a topology that lets
  // devices reach private memory would put "ram" in the memory table.
  if (config.mode == DmaMode::kRestricted && !topo.restricted_memory_access) {
    return make_error(FrontendErrc::kInvalidOption,
                      "mode restricted (a confidential guest) needs a topology with \"restricted_memory_access\": "
                      "true; this one lets devices reach private memory");
  }
  if (topo.find(config.device_id) == nullptr) {
    return make_error(FrontendErrc::kInvalidOption, "device \"{}\" is not in the platform topology ({} devices)",
                      config.device_id, topo.devices.size());
  }

  std::unique_ptr<GuestPlatform> gp(new GuestPlatform(config.mode, builtin, DmaPolicy::from_topology(topo)));
  std::vector<RegionSpec> regions = VDMA_TRY(regions_for(topo, config.ram_size));
  gp->mem_ = VDMA_TRY(GuestMemory::create(std::move(regions)));
  for (const GuestRegion& r : gp->mem_->regions()) {
    if (r.name() == "ram") gp->ram_ = &r;
  }
  VDMA_CHECK(gp->ram_ != nullptr, "regions_for() always adds \"ram\"");

  IommuPlatformConfig iommu_config;
  iommu_config.domain.mode = invalidation_mode(config.mode);
  iommu_config.domain.sink = config.sink;
  iommu_config.domain.announce_maps = config.announce_maps;
  gp->iommu_ = std::make_unique<IommuPlatform>(std::move(iommu_config));
  gp->platform_ =
      VDMA_TRY(PlatformDma::create(*gp->mem_, std::move(topo), PlatformDmaOptions{.iommu = gp->iommu_->factory()}));
  gp->device_ = gp->platform_->device(config.device_id);
  gp->buffers_.emplace(gp->ram_->range());
  return gp;
}

IommuDmaDomain* GuestPlatform::iommu_domain() const noexcept {
  if (device_->kind != DeviceDmaKind::kIommu || !device_->iommu_domain) return nullptr;
  return iommu_->dma_domain(*device_->iommu_domain);
}

bool GuestPlatform::needs_access_platform() const noexcept {
  return device_->kind == DeviceDmaKind::kIommu || platform_->topology().restricted_memory_access;
}

uint64_t GuestPlatform::transport_features(uint64_t offered) const {
  uint64_t accept = policy_.transport_features(device_->id, offered);
  if (builtin_ && (mode_ == DmaMode::kOffset || mode_ == DmaMode::kEncryptionBit)) {
    accept &= ~feature_bit(kFeatureAccessPlatform);
  }
  return accept;
}

Result<Gpa> GuestPlatform::alloc_buffer(uint64_t size, uint64_t align) {
  Gpa gpa;
  {
    std::lock_guard lock(buffers_mu_);
    gpa = VDMA_TRY(buffers_->allocate(size, align));
  }
  // Freed buffers keep their old bytes; alloc_buffer promises zeroes.
  VDMA_TRY(mem_->fill(gpa, size, std::byte{0}));
  return gpa;
}

Result<void> GuestPlatform::free_buffer(Gpa gpa, uint64_t size) {
  std::lock_guard lock(buffers_mu_);
  return buffers_->free(gpa, size);
}

}  // namespace vdma
