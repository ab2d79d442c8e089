#include "vdma/dma/iommu_dma_ops.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <optional>

#include "iova_mapping_table.h"

namespace vdma {

namespace {

constexpr uint64_t kPage = kIovaGranule;

// The device's rights on a mapping of direction d (Linux dma_info_to_prot).
constexpr Access perms_of(DmaDirection d) noexcept {
  switch (d) {
    case DmaDirection::kToDevice: return Access::kRead;
    case DmaDirection::kFromDevice: return Access::kWrite;
    case DmaDirection::kBidirectional: return Access::kReadWrite;
  }
  return Access::kNone;
}

// The IOAS refused a fixed IOVA the allocator handed out, or an unmap we
// checked: the message keeps the IOAS's code and wording.
Error with_op(Error e, std::string_view what) { return std::move(e).with_context(what); }

}  // namespace

// ---- IommuDmaDomain ----------------------------------------------------------

namespace {

// `window` (in any order) intersected with the IOAS's
// usable ranges (sorted, disjoint): the IOVAs the DMA API may take.
std::vector<IovaRange> usable_part(const std::vector<IovaRange>& window, const std::vector<IovaRange>& usable) {
  std::vector<IovaRange> out;
  for (const IovaRange& w : window) {
    for (const IovaRange& u : usable) {
      if (!w.overlaps(u)) continue;
      out.push_back({std::max(w.start, u.start), std::min(w.last, u.last)});
    }
  }
  std::sort(out.begin(), out.end(), [](const IovaRange& a, const IovaRange& b) { return a.start < b.start; });
  return out;
}

}  // namespace

IommuDmaDomain::IommuDmaDomain(IoAddressSpace* ioas, Domain& domain)
    : ioas_(ioas), domain_(domain), live_(std::make_unique<IovaMappingTable>()) {}

Result<std::shared_ptr<IommuDmaDomain>> IommuDmaDomain::create(IoAddressSpace& ioas, PagingDomain& domain,
                                                               IommuDomainConfig config) {
  if (&domain.ioas() != &ioas) {
    return make_error(DmaErrc::kInvalidConfig, "the paging domain does not translate this IO address space");
  }
  for (const IovaRange& r : config.window) {
    if (r.start > r.last || !r.start.is_aligned(kPage) || (r.last.value() + 1) % kPage != 0) {
      return make_error(DmaErrc::kInvalidConfig, "IOMMU DMA window {} is not a range of whole 4 KiB pages", r);
    }
  }
  // The usable ranges already exclude the domain's aperture (IOVAs at or
  // above 2^48) and the attached devices' reserved regions.
  std::vector<IovaRange> usable = ioas.iova_ranges().ranges;
  std::vector<IovaRange> window = config.window.empty() ? std::move(usable) : usable_part(config.window, usable);
  auto alloc = IovaAllocator::create(
      {.ranges = window, .shards = config.magazine_shards, .prefer_below_4g = config.prefer_below_4g});
  if (!alloc) return std::move(alloc).error().with_context("IOMMU DMA domain");

  static std::atomic<uint64_t> next_window_id{1};
  const ReservationOwner owner = ReservationOwner::dma_api(next_window_id.fetch_add(1, std::memory_order_relaxed));
  if (auto reserved = ioas.add_reserved(owner, window); !reserved) {
    return make_error(DmaErrc::kInvalidConfig, "IOMMU DMA domain: cannot reserve its IOVA window in the IOAS: {}",
                      reserved.error().message());
  }
  std::shared_ptr<IommuDmaDomain> d(new IommuDmaDomain(&ioas, domain));
  d->paging_ = &domain;
  d->owner_ = owner;
  d->window_ = std::move(window);
  d->alloc_ = std::move(alloc).value();
  if (config.announce_maps) d->announce_ = config.sink;
  d->fq_ = std::make_unique<IovaFlushQueue>(*d->alloc_, std::move(config.sink),
                                            FlushQueueConfig{.mode = config.mode,
                                                             .max_entries = config.flush_queue_entries,
                                                             .max_delay = config.flush_queue_delay,
                                                             .clock = std::move(config.clock),
                                                             .revive = config.revive_lazy_unmaps,
                                                             .shards = config.flush_queue_shards});
  return d;
}

std::shared_ptr<IommuDmaDomain> IommuDmaDomain::create_identity(IdentityDomain& domain) {
  return std::shared_ptr<IommuDmaDomain>(new IommuDmaDomain(nullptr, domain));
}

// Mappings still live are a caller bug (every DmaOps unmaps before it
// goes); their pages leave the page table so the window can go back to the
// IOAS without leaving entries the IOAS does not know about.
IommuDmaDomain::~IommuDmaDomain() {
  if (paging_ == nullptr) return;
  std::lock_guard lock(mu_);
  if (live_->size() != 0) {
    spdlog::warn("IOMMU DMA domain destroyed with {} live mapping(s); clearing them from the page table",
                 live_->size());
  }
  live_->for_each([&](const IovaMappingTable::Entry& e) {
    const uint64_t run = align_down(e.iova, kPage);
    const uint64_t bytes = e.sg ? e.len : align_up(e.iova - run + e.len, kPage);
    (void)paging_->unmap_pages(Iova(run), bytes);
  });
  ioas_->remove_reserved(owner_);
}

size_t IommuDmaDomain::mapping_count() const {
  std::lock_guard lock(mu_);
  return live_->size();
}

Result<PageTranslation> IommuDmaDomain::translate(Iova iova, Access access) const {
  std::lock_guard lock(mu_);
  return domain_.translate(iova, access);
}

Result<void> IommuDmaDomain::flush() { return fq_ != nullptr ? fq_->flush() : ok(); }
Result<void> IommuDmaDomain::flush_expired() { return fq_ != nullptr ? fq_->flush_expired() : ok(); }

// ---- IommuDmaOps ---------------------------------------------------------------

Result<std::unique_ptr<IommuDmaOps>> IommuDmaOps::create(const GuestMemory& mem, std::shared_ptr<IommuDmaDomain> domain,
                                                         IommuDmaOpsConfig config) {
  VDMA_CHECK(domain != nullptr, "IommuDmaOps needs a domain");
  if (config.coherent == nullptr) {
    return make_error(DmaErrc::kInvalidConfig, "IOMMU DMA ops need a coherent pool for rings");
  }
  if (!config.coherent_device && config.cache == nullptr) {
    return make_error(DmaErrc::kInvalidConfig, "a non-coherent device needs cache-maintenance hooks");
  }
  if ((config.dma_mask & (config.dma_mask + 1)) != 0 || config.dma_mask < kPage) {
    return make_error(DmaErrc::kInvalidConfig, "DMA mask {:#x} is not of the form 2^n-1 (at least one page)",
                      config.dma_mask);
  }
  if (config.bounce_pool != nullptr) {
    // Rings are not bounced: on a platform whose devices reach shared
    // memory only, they must be shared themselves.
    const AddrRange<Gpa> w = config.coherent->window();
    if (!mem.is_all(w.start, w.len, MemAttr::kShared)) {
      return make_error(DmaErrc::kInvalidConfig,
                        "coherent window {} + len {:#x} is private memory: with every mapping bounced the device "
                        "reaches only shared memory, so rings must be shared too",
                        w.start, w.len);
    }
  }
  uint64_t max_mapping = 0;
  if (domain->is_identity()) {
    max_mapping = config.dma_mask == UINT64_MAX ? UINT64_MAX : config.dma_mask + 1;
    // The rings come from the coherent pool with dma == gpa: the device
    // must reach all of it, or every alloc_coherent would fail later.
    const AddrRange<Gpa> w = config.coherent->window();
    if (w.start.value() + (w.len - 1) > config.dma_mask) {
      return make_error(DmaErrc::kInvalidConfig,
                        "coherent window {} + len {:#x} lies beyond the DMA mask {:#x} of a device in an identity "
                        "domain",
                        w.start, w.len, config.dma_mask);
    }
    std::lock_guard lock(domain->mu_);
    if (auto covered = identity_covers(domain->domain_, w.start, w.len, Access::kReadWrite); !covered) {
      return make_error(DmaErrc::kInvalidConfig, "coherent window {} + len {:#x}: {}", w.start, w.len,
                        covered.error().message());
    }
    // A bounce slot's DMA address is its Gpa: the device must reach every pool window.
    if (config.bounce_pool != nullptr) {
      for (const AddrRange<Gpa>& b : config.bounce_pool->windows()) {
        if (b.start.value() + (b.len - 1) > config.dma_mask) {
          return make_error(DmaErrc::kInvalidConfig,
                            "bounce pool window {} + len {:#x} lies beyond the DMA mask {:#x} of a device in an "
                            "identity domain",
                            b.start, b.len, config.dma_mask);
        }
        if (auto covered = identity_covers(domain->domain_, b.start, b.len, Access::kReadWrite); !covered) {
          return make_error(DmaErrc::kInvalidConfig, "bounce pool window {} + len {:#x}: {}", b.start, b.len,
                            covered.error().message());
        }
      }
    }
  } else {
    // The largest usable run at or below the mask: a longer map can never succeed.
    for (const IovaRange& r : domain->allocator()->ranges()) {
      if (r.start.value() > config.dma_mask) break;
      const uint64_t last = std::min(r.last.value(), config.dma_mask);
      max_mapping = std::max(max_mapping, last - r.start.value() + 1);
    }
    if (max_mapping == 0) {
      return make_error(DmaErrc::kInvalidConfig, "no usable IOVA at or below the DMA mask {:#x} (lowest usable {})",
                        config.dma_mask, domain->allocator()->ranges().front().start);
    }
  }
  if (config.bounce_pool != nullptr) {
    max_mapping = std::min(max_mapping, BouncePool::max_mapping_size(config.min_align_mask));
  }
  return std::unique_ptr<IommuDmaOps>(new IommuDmaOps(mem, std::move(domain), std::move(config), max_mapping));
}

IommuDmaOps::IommuDmaOps(const GuestMemory& mem, std::shared_ptr<IommuDmaDomain> dom, IommuDmaOpsConfig config,
                         uint64_t max_mapping)
    : mem_(mem),
      dom_(std::move(dom)),
      dma_mask_(config.dma_mask),
      coherent_(std::move(config.coherent)),
      cache_(config.coherent_device ? nullptr : std::move(config.cache)),
      bounce_(std::move(config.bounce_pool)),
      min_align_mask_(config.min_align_mask),
      max_mapping_(max_mapping) {}

std::string_view IommuDmaOps::kind() const noexcept {
  if (bounce_ != nullptr) return dom_->is_identity() ? "iommu-identity-bounce" : "iommu-bounce";
  return dom_->is_identity() ? "iommu-identity" : "iommu";
}

// Fast path: the region of the previous map (buffers of one device tend to
// share a region; the region table is immutable, so the pointer stays
// valid). Everything else, errors included, is check_guest_slow().
inline bool IommuDmaOps::in_last_region(Gpa gpa, uint64_t len) const noexcept {
  const GuestRegion* r = last_region_.load(std::memory_order_relaxed);
  return len != 0 && r != nullptr && r->range().contains(gpa, len);
}

Result<void> IommuDmaOps::check_guest(Gpa gpa, uint64_t len, std::string_view op) const {
  if (in_last_region(gpa, len)) return ok();
  return check_guest_slow(gpa, len, op);
}

Result<void> IommuDmaOps::check_guest_slow(Gpa gpa, uint64_t len, std::string_view op) const {
  if (len == 0) return make_error(BaseErrc::kInvalidArgument, "{} {} with len 0", op, gpa);
  // One region lookup; a range spanning adjacent regions is still guest memory.
  const GuestRegion* r = mem_.find_region(gpa);
  if (r != nullptr && r->range().contains(gpa, len)) {
    last_region_.store(r, std::memory_order_relaxed);
    return ok();
  }
  if (!fits(gpa, len)) return make_error(BaseErrc::kOverflow, "{} {} + len {:#x} wraps past 2^64", op, gpa, len);
  if (!mem_.contains(gpa, len)) {
    return make_error(MemErrc::kNotMapped, "{} {} + len {:#x}: not guest memory", op, gpa, len);
  }
  return ok();
}

Result<DmaAddr> IommuDmaOps::map(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  auto r = bounce_ != nullptr ? map_bounced(gpa, len, dir, attrs) : map_unbounced(gpa, len, dir, attrs);
  if (!r && !has(attrs, DmaAttrs::kNoWarn)) {
    spdlog::warn("dma map {} + len {:#x} ({}): {}", gpa, len, to_string(dir), r.error());
  }
  return r;
}

Result<DmaAddr> IommuDmaOps::map_unbounced(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  auto r = dom_->is_identity() ? map_identity(gpa, len, dir, attrs) : map_paging(gpa, len, perms_of(dir));
  if (r && cache_ != nullptr && !has(attrs, DmaAttrs::kSkipCpuSync)) cache_sync_for_device(*cache_, gpa, len, dir);
  return r;
}

Result<DmaAddr> IommuDmaOps::map_paging(Gpa gpa, uint64_t len, Access perms) {
  if (!in_last_region(gpa, len)) VDMA_TRY(check_guest_slow(gpa, len, "map"));
  const uint64_t offset = gpa.value() % kPage;
  if (len > max_mapping_ || max_mapping_ - len < offset) {
    return make_error(DmaErrc::kTooLarge, "map {} + len {:#x}: larger than the largest IOVA range ({:#x} bytes)", gpa,
                      len, max_mapping_);
  }
  const uint64_t size = offset + len;
  if (dom_->fq_->revives()) {
    const RevivalKey key{.gpa = gpa.value(), .len = len, .perms = perms};
    if (const std::optional<Iova> revived = dom_->fq_->revive(key, size, Iova(dma_mask_))) {
      return map_run(*revived, gpa, len, perms, /*revived=*/true);
    }
  }
  const Iova run = VDMA_TRY(dom_->alloc_->allocate(size, Iova(dma_mask_)));
  return map_run(run, gpa, len, perms, /*revived=*/false);
}

// Maps [gpa, gpa + len) at `run` (a fresh run, or one revive() took back,
// whose pages are unmapped and which nothing else holds) and records it.
Result<DmaAddr> IommuDmaOps::map_run(Iova run, Gpa gpa, uint64_t len, Access perms, bool revived) {
  const uint64_t offset = gpa.value() % kPage;
  const uint64_t size = offset + len;
  const uint64_t iova = run.value() + offset;
  Result<void> mapped = [&] {
    std::lock_guard lock(dom_->mu_);
    auto r = dom_->paging_->map_pages(run, Gpa(gpa.value() - offset), align_up(size, kPage), perms);
    if (r) dom_->live_->insert({.iova = iova, .len = len, .source = gpa.value(), .sg = false, .perms = perms});
    return r;
  }();
  if (!mapped) {
    // The allocator hands out each run of the window once, and nothing else
    // maps there: the table can only refuse an address it cannot express.
    VDMA_CHECK(!mapped.error().is(IommuErrc::kAlreadyMapped), "IOVA run handed out twice");
    if (revived) {
      // The device may still hold the run's old translation: it goes back
      // through the flush queue, no longer revivable.
      (void)dom_->fq_->release(run, size);
    } else {
      // Never mapped, so never in any IOTLB: straight back to the allocator.
      dom_->alloc_->free(run, size);
    }
    return with_op(std::move(mapped).error(), fmt::format("map {} + len {:#x} at {}", gpa, len, Iova(iova)));
  }
  // Outside the lock: the sink may block on its transport. A revived run
  // is not announced again: it was never invalidated, so the device still
  // has (or can still ask for) exactly this translation.
  if (dom_->announce_ != nullptr && !revived) {
    dom_->announce_->mapped(
        {.iova = run, .len = align_up(size, kPage), .gpa = Gpa(gpa.value() - offset), .perms = perms});
  }
  return DmaAddr(iova);
}

Result<DmaAddr> IommuDmaOps::map_identity(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs) {
  VDMA_TRY(check_guest(gpa, len, "map"));
  const uint64_t last = gpa.value() + (len - 1);
  if (last > dma_mask_) {
    return make_error(DmaErrc::kBeyondMask, "map {} + len {:#x}: beyond the DMA mask {:#x} (identity domain)", gpa, len,
                      dma_mask_);
  }
  std::lock_guard lock(dom_->mu_);
  if (auto covered = identity_covers(dom_->domain_, gpa, len, perms_of(dir)); !covered) {
    return with_op(std::move(covered).error(), fmt::format("map {} + len {:#x}", gpa, len));
  }
  return DmaAddr(gpa.value());
}

// Walks the identity domain over the range: its window and the reserved
// regions of attached devices decide what it translates. Each step covers
// up to the next reserved region or the window's end, so this loop runs
// once per such boundary. Precondition: gpa + len does not wrap.
Result<void> IommuDmaOps::identity_covers(Domain& domain, Gpa gpa, uint64_t len, Access access) {
  const uint64_t last = gpa.value() + (len - 1);
  uint64_t cur = gpa.value();
  while (true) {
    auto t = domain.translate(Iova(cur), access);
    if (!t) {
      return make_error(DmaErrc::kNotCovered, "{} is not covered by the identity domain: {}", Iova(cur),
                        t.error().message());
    }
    VDMA_CHECK(t->contiguous > 0, "identity translation of zero bytes");
    if (t->contiguous > last - cur) return ok();
    cur += t->contiguous;
  }
}

Result<Gpa> IommuDmaOps::cpu_of(DmaAddr addr, std::string_view op) const {
  if (dom_->is_identity()) {
    if (!mem_.contains(Gpa(addr.value()), 1)) {
      return make_error(DmaErrc::kUnknownMapping, "{} {}: no guest memory at this address (identity domain)", op, addr);
    }
    return Gpa(addr.value());
  }
  // The page table is the truth about what the device reaches.
  std::lock_guard lock(dom_->mu_);
  auto t = dom_->domain_.translate(Iova(addr.value()), Access::kNone);
  if (!t) {
    return make_error(DmaErrc::kUnknownMapping, "{} {}: no live IOMMU mapping of this device at this IOVA", op, addr);
  }
  return t->gpa;
}

void IommuDmaOps::sync_range_for_cpu(uint64_t iova, uint64_t len, DmaDirection dir) const {
  // Leaf by leaf; consecutive leaves backed by consecutive Gpas make one hook call.
  Gpa start;
  uint64_t run = 0;
  for (uint64_t cur = iova, left = len; left > 0;) {
    auto t = dom_->domain_.translate(Iova(cur), Access::kNone);
    VDMA_CHECK(t.has_value(), "a live scatter-list run has a hole in the page table");
    const uint64_t n = std::min(t->contiguous, left);
    if (run > 0 && start.value() + run == t->gpa.value()) {
      run += n;
    } else {
      if (run > 0) cache_sync_for_cpu(*cache_, start, run, dir);
      start = t->gpa;
      run = n;
    }
    cur += n;
    left -= n;
  }
  if (run > 0) cache_sync_for_cpu(*cache_, start, run, dir);
}

Result<void> IommuDmaOps::unmap(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  return unmap_one({.addr = addr, .len = len, .dir = dir, .attrs = attrs});
}

Result<void> IommuDmaOps::unmap_one(const DmaUnmapRequest& q) {
  std::optional<Gpa> ended;
  Result<void> released = unmap_in_place(q.addr, q.len, q.dir, q.attrs, ended);
  // The IOMMU no longer maps the slot (strict: and the device has lost it):
  // only now may the device's bytes be copied back and the slot reused.
  if (bounce_ == nullptr || !ended) return released;
  return end_bounce(*ended, q.len, q.dir, q.attrs, released, q.written);
}

Result<void> IommuDmaOps::unmap_in_place(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs,
                                         std::optional<Gpa>& ended) {
  const bool sync = cache_ != nullptr && !has(attrs, DmaAttrs::kSkipCpuSync);
  if (dom_->is_identity()) {
    if (len == 0) return make_error(DmaErrc::kUnknownMapping, "unmap {} with len 0", addr);
    if (sync) {
      const Gpa gpa = VDMA_TRY(cpu_of(addr, "unmap"));
      cache_sync_for_cpu(*cache_, gpa, len, dir);
    }
    ended = Gpa(addr.value());
    return ok();
  }
  ReleasedRun run;
  {
    std::lock_guard lock(dom_->mu_);
    run = VDMA_TRY(unmap_locked(addr, len));
  }
  ended = Gpa(run.key.gpa);
  if (sync) cache_sync_for_cpu(*cache_, Gpa(run.key.gpa), len, dir);
  return dom_->fq_->release_batch({&run, 1});
}

// Checks that (addr, len) is exactly one live mapping, clears its pages and
// drops its record; the run (with its revival key) still has to be
// released. Nothing changes on error.
Result<ReleasedRun> IommuDmaOps::unmap_locked(DmaAddr addr, uint64_t len) {
  const uint64_t iova = addr.value();
  const uint64_t offset = iova % kPage;
  const uint64_t run = iova - offset;
  IovaMappingTable::Entry* e = dom_->live_->find(iova);
  if (e == nullptr || e->iova != iova || e->len != len || e->sg) {
    if (e != nullptr && e->sg) {
      return make_error(DmaErrc::kUnknownMapping,
                        "unmap {} + len {:#x}: part of a scatter-list run at iova:{:#x}; end it with unmap_sg", addr,
                        len, e->iova);
    }
    if (e != nullptr) {
      return make_error(DmaErrc::kUnknownMapping,
                        "unmap {} + len {:#x}: not a mapping of its own; the IOVA lies in the mapping dma:{:#x} + "
                        "len {:#x}",
                        addr, len, e->iova, e->len);
    }
    if (!dom_->domain_.translate(Iova(iova), Access::kNone)) {
      return make_error(DmaErrc::kUnknownMapping, "unmap {} + len {:#x}: not mapped", addr, len);
    }
    return make_error(DmaErrc::kUnknownMapping,
                      "unmap {} + len {:#x}: not a mapping of its own; the IOVA lies inside another mapping", addr,
                      len);
  }
  const ReleasedRun out{.iova = Iova(run),
                        .size = offset + len,
                        .key = {.gpa = e->source, .len = len, .perms = e->perms}};
  const uint64_t pages = align_up(offset + len, kPage);
  auto bytes = dom_->paging_->unmap_pages(Iova(run), pages);
  VDMA_CHECK(bytes.has_value() && *bytes == pages, "page table out of sync with the live DMA mappings");
  dom_->live_->erase(e);
  return out;
}

// Every page-table unmap under one hold of the domain lock, then one
// release of all runs: strict mode makes a single sink call (Linux
// iommu_iotlb_gather + iommu_iotlb_sync). An entry that is not exactly a
// live mapping is left alone (still mapped, still live, its IOVA not
// freed); the others are unmapped and released all the same.
Result<void> IommuDmaOps::unmap_batch(std::span<const DmaUnmapRequest> reqs) {
  if (dom_->is_identity() || reqs.size() <= 1) {
    if (bounce_ == nullptr) return DmaOps::unmap_batch(reqs);
    // The default would copy a bounce slot back before the IOMMU unmap; the
    // copy-back must come after it, as in unmap().
    Result<void> first = ok();
    for (size_t i = 0; i < reqs.size(); ++i) {
      auto r = unmap_one(reqs[i]);
      if (!r && first) {
        first = std::move(r).error().with_context(fmt::format("unmap_batch entry {} of {}", i, reqs.size()));
      }
    }
    return first;
  }
  constexpr size_t kInline = 32;  // a chain's segments fit the stack
  std::array<ReleasedRun, kInline> inline_runs;
  std::vector<ReleasedRun> heap_runs;
  std::span<ReleasedRun> runs(inline_runs.data(), std::min(reqs.size(), kInline));
  // The request each run ends (for the bounce copy-back after the release).
  std::array<uint32_t, kInline> inline_index;
  std::vector<uint32_t> heap_index;
  std::span<uint32_t> index(inline_index.data(), runs.size());
  if (reqs.size() > kInline) {
    heap_runs.resize(reqs.size());
    runs = heap_runs;
    heap_index.resize(reqs.size());
    index = heap_index;
  }
  size_t n = 0;
  std::optional<Error> first;
  {
    std::lock_guard lock(dom_->mu_);
    for (size_t i = 0; i < reqs.size(); ++i) {
      const DmaUnmapRequest& q = reqs[i];
      auto r = unmap_locked(q.addr, q.len);
      if (!r) {
        if (!first) {
          first = std::move(r).error().with_context(fmt::format("unmap_batch entry {} of {}", i, reqs.size()));
        }
        continue;
      }
      index[n] = static_cast<uint32_t>(i);
      runs[n++] = *r;
      // As unmap_sg, the hooks run under the lock; the page table no longer
      // maps the buffer, so the device's last writes are all it can see.
      if (cache_ != nullptr && !has(q.attrs, DmaAttrs::kSkipCpuSync)) {
        cache_sync_for_cpu(*cache_, Gpa(r->key.gpa), q.len, q.dir);
      }
    }
  }
  auto released = dom_->fq_->release_batch(runs.first(n));
  if (bounce_ != nullptr) {
    // Every slot after the one invalidation (strict), as unmap().
    for (size_t k = 0; k < n; ++k) {
      const DmaUnmapRequest& q = reqs[index[k]];
      auto ended = end_bounce(Gpa(runs[k].key.gpa), q.len, q.dir, q.attrs, released, q.written);
      if (!ended && !first && released) {
        first = std::move(ended).error().with_context(fmt::format("unmap_batch entry {} of {}", index[k], reqs.size()));
      }
    }
  }
  if (!released) {
    if (first) {
      return with_op(std::move(released).error(), fmt::format("unmap_batch (besides: {})", first->message()));
    }
    return released;
  }
  if (first) return std::move(*first);
  return ok();
}

Result<void> IommuDmaOps::sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) {
  if (bounce_ != nullptr) return sync_bounced_for_cpu(addr, len, dir);
  if (cache_ == nullptr) return ok();  // coherent: nothing to do, as dma-iommu
  const Gpa gpa = VDMA_TRY(cpu_of(addr, "sync_for_cpu"));
  cache_sync_for_cpu(*cache_, gpa, len, dir);
  return ok();
}

Result<void> IommuDmaOps::sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) {
  if (bounce_ != nullptr) return sync_bounced_for_device(addr, len, dir);
  if (cache_ == nullptr) return ok();
  const Gpa gpa = VDMA_TRY(cpu_of(addr, "sync_for_device"));
  cache_sync_for_device(*cache_, gpa, len, dir);
  return ok();
}

Result<CoherentBuffer> IommuDmaOps::alloc_coherent(uint64_t size) {
  CoherentPool::Allocation a = VDMA_TRY(coherent_->allocate(size));
  // Rings are never bounced: the device and the CPU share them.
  auto dma = map_unbounced(a.gpa, a.host.size(), DmaDirection::kBidirectional, DmaAttrs::kSkipCpuSync);
  if (!dma) {
    (void)coherent_->free(a.gpa, a.host.size());
    return std::move(dma).error().with_context("alloc_coherent");
  }
  return CoherentBuffer{a.gpa, *dma, a.host};
}

Result<void> IommuDmaOps::free_coherent(const CoherentBuffer& buf) {
  if (!coherent_->window().contains(buf.cpu, buf.host.size())) {
    return make_error(BaseErrc::kInvalidArgument, "free_coherent {} / {}: not a buffer of this device", buf.cpu, buf.dma);
  }
  if (!dom_->is_identity()) {
    // The buffer must be what this IOVA maps, or we would free someone else's memory.
    const Gpa behind = VDMA_TRY(cpu_of(buf.dma, "free_coherent"));
    if (behind != buf.cpu) {
      return make_error(BaseErrc::kInvalidArgument, "free_coherent {} / {}: the IOVA maps {}, not this buffer",
                        buf.cpu, buf.dma, behind);
    }
  }
  std::optional<Gpa> ended;
  auto unmapped =
      unmap_in_place(buf.dma, buf.host.size(), DmaDirection::kBidirectional, DmaAttrs::kSkipCpuSync, ended);
  if (!unmapped && unmapped.error().is(DmaErrc::kUnknownMapping)) return unmapped;
  // An invalidation failure leaves the IOVA quarantined but the memory is
  // the pool's again only when the device can no longer reach it: keep it.
  if (!unmapped) return unmapped;
  return coherent_->free(buf.cpu, buf.host.size());
}

Result<size_t> IommuDmaOps::map_sg(std::span<SgEntry> sg, DmaDirection dir, DmaAttrs attrs) {
  // Bouncing: entry by entry, each its own slot and IOVA (Linux iommu_dma_map_sg_swiotlb).
  if (dom_->is_identity() || bounce_ != nullptr) return DmaOps::map_sg(sg, dir, attrs);
  if (sg.empty()) return make_error(BaseErrc::kInvalidArgument, "map_sg of an empty scatter list");
  // Every entry occupies the pages around it; the run is their concatenation.
  uint64_t total = 0;
  for (size_t i = 0; i < sg.size(); ++i) {
    auto checked = check_guest(sg[i].gpa, sg[i].len, "map_sg");
    if (!checked) return with_op(std::move(checked).error(), fmt::format("scatter entry {}", i));
    const uint64_t pages = align_up(sg[i].gpa.value() % kPage + sg[i].len, kPage);
    if (pages < sg[i].len || total + pages < total || total + pages > max_mapping_) {
      return make_error(DmaErrc::kTooLarge, "map_sg: scatter entries 0..{} need more than {:#x} bytes of IOVA", i,
                        max_mapping_);
    }
    total += pages;
  }
  const Iova run = VDMA_TRY(dom_->alloc_->allocate(total, Iova(dma_mask_)));
  const Access perms = perms_of(dir);
  std::optional<Error> failure;
  size_t failed_at = 0;
  {
    std::lock_guard lock(dom_->mu_);
    uint64_t pos = run.value();
    for (size_t i = 0; i < sg.size(); ++i) {
      const uint64_t offset = sg[i].gpa.value() % kPage;
      const uint64_t pages = align_up(offset + sg[i].len, kPage);
      auto mapped = dom_->paging_->map_pages(Iova(pos), Gpa(sg[i].gpa.value() - offset), pages, perms);
      if (!mapped) {
        VDMA_CHECK(!mapped.error().is(IommuErrc::kAlreadyMapped), "IOVA run handed out twice");
        failure = std::move(mapped).error();
        failed_at = i;
        // [run, pos) covers exactly the entries mapped so far.
        if (i > 0) {
          auto bytes = dom_->paging_->unmap_pages(run, pos - run.value());
          VDMA_CHECK(bytes.has_value() && *bytes == pos - run.value(), "unwinding map_sg");
        }
        break;
      }
      pos += pages;
    }
    if (!failure) dom_->live_->insert({.iova = run.value(), .len = total, .source = 0, .sg = true});
  }
  if (failure) {
    // Pages that were mapped may be in the device's IOTLB: they go through
    // the flush queue like any unmap. A run never mapped goes straight back.
    if (failed_at > 0) {
      (void)dom_->fq_->release(run, total);
    } else {
      dom_->alloc_->free(run, total);
    }
    return with_op(std::move(*failure), fmt::format("map_sg: scatter entry {}", failed_at));
  }
  // DMA segments: entries that meet on a page boundary merge (Linux __finalise_sg).
  size_t n = 0;
  uint64_t pos = run.value();
  for (size_t i = 0; i < sg.size(); ++i) {
    const uint64_t offset = sg[i].gpa.value() % kPage;
    const bool joins = n > 0 && offset == 0 && (sg[n - 1].dma.value() + sg[n - 1].dma_len) % kPage == 0 &&
                       sg[n - 1].dma.value() + sg[n - 1].dma_len == pos;
    if (joins) {
      sg[n - 1].dma_len += sg[i].len;
    } else {
      sg[n].dma = DmaAddr(pos + offset);
      sg[n].dma_len = sg[i].len;
      ++n;
    }
    const uint64_t pages = align_up(offset + sg[i].len, kPage);
    if (dom_->announce_ != nullptr) {
      dom_->announce_->mapped({.iova = Iova(pos), .len = pages, .gpa = Gpa(sg[i].gpa.value() - offset), .perms = perms});
    }
    pos += pages;
    if (cache_ != nullptr && !has(attrs, DmaAttrs::kSkipCpuSync)) cache_sync_for_device(*cache_, sg[i].gpa, sg[i].len, dir);
  }
  for (size_t i = n; i < sg.size(); ++i) sg[i].dma_len = 0;
  return n;
}

Result<void> IommuDmaOps::unmap_sg(std::span<const SgEntry> sg, DmaDirection dir, DmaAttrs attrs) {
  if (dom_->is_identity() || bounce_ != nullptr) return DmaOps::unmap_sg(sg, dir, attrs);
  if (sg.empty() || sg[0].dma_len == 0) return make_error(DmaErrc::kUnknownMapping, "unmap_sg of an empty list");
  size_t n = 0;
  while (n < sg.size() && sg[n].dma_len != 0) ++n;
  const uint64_t first = sg[0].dma.value();
  const uint64_t run = align_down(first, kPage);
  const uint64_t end = sg[n - 1].dma.value() + sg[n - 1].dma_len;  // one past the last byte
  const bool sync = cache_ != nullptr && !has(attrs, DmaAttrs::kSkipCpuSync);
  uint64_t total = 0;
  {
    std::lock_guard lock(dom_->mu_);
    IovaMappingTable::Entry* e = dom_->live_->find(run);
    if (e == nullptr || !e->sg || end < first || end - run > e->len) {
      return make_error(DmaErrc::kUnknownMapping, "unmap_sg {} .. dma:{:#x}: not a scatter-list run of this domain",
                        sg[0].dma, end);
    }
    total = e->len;
    if (sync) {
      for (size_t k = 0; k < n; ++k) sync_range_for_cpu(sg[k].dma.value(), sg[k].dma_len, dir);
    }
    auto bytes = dom_->paging_->unmap_pages(Iova(run), total);
    VDMA_CHECK(bytes.has_value() && *bytes == total, "page table out of sync with a scatter-list run");
    dom_->live_->erase(e);
  }
  return dom_->fq_->release(Iova(run), total);
}

}  // namespace vdma
