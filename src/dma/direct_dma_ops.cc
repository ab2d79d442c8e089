#include "vdma/dma/direct_dma_ops.h"

#include <spdlog/spdlog.h>

namespace vdma {

std::string_view to_string(BounceMode m) noexcept {
  switch (m) {
    case BounceMode::kWhenNeeded: return "when-needed";
    case BounceMode::kForce: return "force";
    case BounceMode::kRestricted: return "restricted";
  }
  return "invalid";
}

namespace {

// The attribute shared by every byte of a window that lies in one region.
MemAttr window_attr(const GuestMemory& mem, AddrRange<Gpa> w) {
  const GuestRegion* r = mem.find_region(w.start);
  return r != nullptr && r->is_shared() ? MemAttr::kShared : MemAttr::kPrivate;
}

Result<void> check_reachable(const BusTranslation& bus, AddrRange<Gpa> w, MemAttr attr, std::string_view what) {
  auto dma = bus.to_dma(w.start, w.len, attr);
  if (!dma) {
    return make_error(DmaErrc::kInvalidConfig, "{} {} + len {:#x} is not reachable by the device: {}", what, w.start,
                      w.len, dma.error().message());
  }
  if (!bus.addressable(*dma, w.len)) {
    return make_error(DmaErrc::kInvalidConfig, "{} {} + len {:#x} sits at bus {} beyond the DMA mask {:#x}", what,
                      w.start, w.len, *dma, bus.dma_mask());
  }
  return ok();
}

}  // namespace

Result<std::unique_ptr<DirectDmaOps>> DirectDmaOps::create(const GuestMemory& mem, DirectDmaConfig config) {
  auto bus = BusTranslation::create(config.bus);
  if (!bus) return std::move(bus).error();
  if (config.bounce_mode != BounceMode::kWhenNeeded && config.bounce_pool == nullptr) {
    return make_error(DmaErrc::kInvalidConfig, "bounce mode {} needs a bounce pool", to_string(config.bounce_mode));
  }
  if (!config.coherent_device && config.cache == nullptr) {
    return make_error(DmaErrc::kInvalidConfig, "a non-coherent device needs cache-maintenance hooks");
  }
  if (config.bounce_mode != BounceMode::kRestricted && config.coherent == nullptr) {
    return make_error(DmaErrc::kInvalidConfig, "bounce mode {} needs a coherent pool for rings",
                      to_string(config.bounce_mode));
  }
  if (config.bounce_pool != nullptr) {
    for (const AddrRange<Gpa>& w : config.bounce_pool->windows()) {
      VDMA_TRY(check_reachable(*bus, w, MemAttr::kShared, "bounce pool window"));
    }
  }
  if (config.bounce_mode != BounceMode::kRestricted) {
    const AddrRange<Gpa> w = config.coherent->window();
    const MemAttr attr = window_attr(mem, w);
    if (config.bounce_mode == BounceMode::kForce && attr != MemAttr::kShared) {
      return make_error(DmaErrc::kInvalidConfig,
                        "coherent window {} + len {:#x} is private memory: with every mapping bounced the device "
                        "reaches only shared memory, so rings must be shared too",
                        w.start, w.len);
    }
    VDMA_TRY(check_reachable(*bus, w, attr, "coherent window"));
  }
  return std::unique_ptr<DirectDmaOps>(new DirectDmaOps(mem, std::move(bus).value(), std::move(config)));
}

DirectDmaOps::DirectDmaOps(const GuestMemory& mem, BusTranslation bus, DirectDmaConfig config)
    : mem_(mem),
      bus_(std::move(bus)),
      mode_(config.bounce_mode),
      pool_(std::move(config.bounce_pool)),
      coherent_(std::move(config.coherent)),
      cache_(config.coherent_device ? nullptr : std::move(config.cache)),
      min_align_mask_(config.min_align_mask),
      max_mapping_(UINT64_MAX) {
  // Linux dma_direct_max_mapping_size: the bounce limit applies when every
  // mapping bounces, or when some guest memory lies beyond the device's reach.
  if (pool_ != nullptr) {
    for (const AddrRange<Gpa>& w : pool_->windows()) {
      // create() proved each window inside one offset range, so one offset holds for all of it.
      auto dma = bus_.to_dma(w.start, w.len, MemAttr::kShared);
      VDMA_CHECK(dma.has_value(), "bounce window unreachable");
      bounce_windows_.push_back({w, dma->value() - w.start.value()});
    }
    bool limited = mode_ != BounceMode::kWhenNeeded;
    for (const GuestRegion& r : mem_.regions()) {
      auto dma = bus_.to_dma(r.base(), r.size(), r.attr());
      if (dma && !bus_.addressable(*dma, r.size())) limited = true;
    }
    if (limited) max_mapping_ = BouncePool::max_mapping_size(min_align_mask_);
  }
}

std::string_view DirectDmaOps::kind() const noexcept {
  switch (mode_) {
    case BounceMode::kWhenNeeded: return "direct";
    case BounceMode::kForce: return "bounce";
    case BounceMode::kRestricted: return "restricted";
  }
  return "direct";
}

uint64_t DirectDmaOps::max_mapping_size() const { return max_mapping_; }

Result<DmaAddr> DirectDmaOps::map(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  if (len == 0) return make_error(BaseErrc::kInvalidArgument, "map {} with len 0", gpa);
  auto r = mode_ == BounceMode::kWhenNeeded ? map_direct_or_bounce(gpa, len, dir, attrs) : bounce(gpa, len, dir, attrs);
  if (!r && !has(attrs, DmaAttrs::kNoWarn)) spdlog::warn("dma map {} + len {:#x} ({}): {}", gpa, len, to_string(dir), r.error());
  return r;
}

Result<DmaAddr> DirectDmaOps::map_direct_or_bounce(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  MemAttr attr = MemAttr::kPrivate;
  bool mixed = false;
  const GuestRegion* region = mem_.find_region(gpa);
  if (region != nullptr && region->range().contains(gpa, len)) {
    attr = region->attr();
  } else {
    if (!fits(gpa, len)) return make_error(BaseErrc::kOverflow, "map {} + len {:#x} wraps past 2^64", gpa, len);
    if (!mem_.contains(gpa, len)) return make_error(MemErrc::kNotMapped, "map {} + len {:#x}: not guest memory", gpa, len);
    if (mem_.is_all(gpa, len, MemAttr::kShared)) {
      attr = MemAttr::kShared;
    } else if (!mem_.is_all(gpa, len, MemAttr::kPrivate)) {
      mixed = true;
    }
  }
  if (mixed && bus_.config().encryption_bit) {
    if (pool_ != nullptr) return bounce(gpa, len, dir, attrs);
    return make_error(DmaErrc::kNotCovered,
                      "map {} + len {:#x} spans private and shared memory: no single encryption bit describes it and "
                      "there is no bounce pool",
                      gpa, len);
  }
  const DmaAddr dma = VDMA_TRY(bus_.to_dma(gpa, len, attr));
  if (!bus_.addressable(dma, len)) {
    if (pool_ != nullptr) return bounce(gpa, len, dir, attrs);
    return make_error(DmaErrc::kBeyondMask,
                      "map {} + len {:#x}: bus address {} + len {:#x} is beyond the DMA mask {:#x} and there is no "
                      "bounce pool",
                      gpa, len, dma, len, bus_.dma_mask());
  }
  if (cache_ != nullptr && !has(attrs, DmaAttrs::kSkipCpuSync)) cache_sync_for_device(*cache_, gpa, len, dir);
  return dma;
}

Result<DmaAddr> DirectDmaOps::bounce(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  const Gpa tlb = VDMA_TRY(pool_->map(gpa, len, dir, min_align_mask_, attrs));
  // create() proved every pool window covered and addressable as shared
  // memory; the window's offset gives the bus address.
  const BounceWindow* w = nullptr;
  for (const BounceWindow& b : bounce_windows_) {
    if (b.cpu.contains(tlb, len)) w = &b;
  }
  VDMA_CHECK(w != nullptr, "bounce slot outside the pool windows");
  // The copy-in is a CPU write to the slot: it must reach memory first.
  if (cache_ != nullptr && !has(attrs, DmaAttrs::kSkipCpuSync)) cache_sync_for_device(*cache_, tlb, len, dir);
  return DmaAddr(tlb.value() + w->to_bus);
}

bool DirectDmaOps::bounce_cpu(DmaAddr addr, Gpa& gpa) const noexcept {
  for (const BounceWindow& b : bounce_windows_) {
    const Gpa g(addr.value() - b.to_bus);
    if (b.cpu.contains(g)) {
      gpa = g;
      return true;
    }
  }
  return false;
}

Result<Gpa> DirectDmaOps::cpu_of(DmaAddr addr, std::string_view op) const {
  auto gpa = bus_.to_cpu(addr);
  if (!gpa) {
    return make_error(DmaErrc::kUnknownMapping, "{} {}: no guest memory behind this bus address ({})", op, addr,
                      gpa.error().message());
  }
  return *gpa;
}

Result<void> DirectDmaOps::unmap(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  const bool sync = cache_ != nullptr && !has(attrs, DmaAttrs::kSkipCpuSync);
  Gpa gpa;
  if (bounce_cpu(addr, gpa)) {
    if (sync) {
      VDMA_TRY(pool_->original(gpa, 1));
      // Drop stale slot lines before the copy-back reads the device's data.
      cache_sync_for_cpu(*cache_, gpa, len, dir);
    }
    return pool_->unmap(gpa, len, dir, attrs);
  }
  gpa = VDMA_TRY(cpu_of(addr, "unmap"));
  if (mode_ != BounceMode::kWhenNeeded) {
    return make_error(DmaErrc::kUnknownMapping, "unmap {} ({}): not a bounce slot, and every mapping of this device bounces",
                      addr, gpa);
  }
  if (sync) cache_sync_for_cpu(*cache_, gpa, len, dir);
  return ok();
}

Result<void> DirectDmaOps::sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) {
  Gpa gpa;
  if (bounce_cpu(addr, gpa)) {
    if (cache_ != nullptr) {
      VDMA_TRY(pool_->original(gpa, len));
      cache_sync_for_cpu(*cache_, gpa, len, dir);
    }
    return pool_->sync_for_cpu(gpa, len, dir);
  }
  gpa = VDMA_TRY(cpu_of(addr, "sync_for_cpu"));
  if (mode_ != BounceMode::kWhenNeeded) {
    return make_error(DmaErrc::kUnknownMapping,
                      "sync_for_cpu {} ({}): not a bounce slot, and every mapping of this device bounces", addr, gpa);
  }
  if (cache_ != nullptr) cache_sync_for_cpu(*cache_, gpa, len, dir);
  return ok();
}

Result<void> DirectDmaOps::sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) {
  Gpa gpa;
  if (bounce_cpu(addr, gpa)) {
    VDMA_TRY(pool_->sync_for_device(gpa, len, dir));
  } else {
    gpa = VDMA_TRY(cpu_of(addr, "sync_for_device"));
    if (mode_ != BounceMode::kWhenNeeded) {
      return make_error(DmaErrc::kUnknownMapping,
                        "sync_for_device {} ({}): not a bounce slot, and every mapping of this device bounces", addr,
                        gpa);
    }
  }
  // After the copy-in, so the slot's new bytes are what gets written back.
  if (cache_ != nullptr) cache_sync_for_device(*cache_, gpa, len, dir);
  return ok();
}

bool DirectDmaOps::need_sync(DmaAddr addr) const {
  if (cache_ != nullptr) return true;
  Gpa gpa;
  return bounce_cpu(addr, gpa) && pool_->contains(gpa);
}

Result<CoherentBuffer> DirectDmaOps::alloc_coherent(uint64_t size) {
  CoherentPool::Allocation a;
  MemAttr attr = MemAttr::kShared;
  if (mode_ == BounceMode::kRestricted) {
    a = VDMA_TRY(pool_->alloc(size));
  } else {
    a = VDMA_TRY(coherent_->allocate(size));
    attr = window_attr(mem_, coherent_->window());
  }
  // create() proved the window (or pool) covered and addressable.
  auto dma = bus_.to_dma(a.gpa, a.host.size(), attr);
  VDMA_CHECK(dma.has_value() && bus_.addressable(*dma, a.host.size()), "coherent memory outside the device's reach");
  return CoherentBuffer{a.gpa, *dma, a.host};
}

Result<void> DirectDmaOps::free_coherent(const CoherentBuffer& buf) {
  const MemAttr attr = mode_ == BounceMode::kRestricted ? MemAttr::kShared : window_attr(mem_, coherent_->window());
  auto dma = bus_.to_dma(buf.cpu, buf.host.size(), attr);
  if (!dma || *dma != buf.dma) {
    return make_error(BaseErrc::kInvalidArgument, "free_coherent {} / {}: not a buffer of this device", buf.cpu, buf.dma);
  }
  if (mode_ == BounceMode::kRestricted) return pool_->free(buf.cpu, buf.host.size());
  return coherent_->free(buf.cpu, buf.host.size());
}

}  // namespace vdma
