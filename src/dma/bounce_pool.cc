#include "vdma/dma/bounce_pool.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "cpu_hint.h"
#include "vdma/base/check.h"
#include "vdma/base/spin_lock.h"

namespace vdma {

namespace {

constexpr uint32_t kNoMapping = UINT32_MAX;

// Position of a slot inside its segment.
constexpr uint32_t segment_offset(uint32_t slot) noexcept { return slot & (BouncePool::kSegmentSlots - 1); }

// Slots needed to cover `bytes`.
constexpr uint32_t slots_for(uint64_t bytes) noexcept {
  return static_cast<uint32_t>((bytes + BouncePool::kSlotSize - 1) >> BouncePool::kSlotShift);
}

}  // namespace

// Per-slot bookkeeping. `list` and `head` are written only under the lock of
// the slot's area. The head-only fields are written under that lock when the
// mapping is made and read without it by unmap/sync of the same mapping,
// which the caller orders after map (the DMA API contract).
struct Slot {
  // Free slots from here up to the first used slot or the end of the
  // segment; 0 while the slot is in use (swiotlb's io_tlb_slot.list).
  uint32_t list = 0;
  // The first slot of the mapping that uses this slot, or kNoMapping.
  uint32_t head = kNoMapping;
  // Head slot only:
  uint64_t orig = 0;      // Gpa of the original buffer's first byte
  // Host view of the original when it lies in one region (regions never
  // move), so unmap and sync copy without a region lookup; null otherwise.
  std::byte* orig_host = nullptr;
  uint32_t len = 0;       // mapped bytes (<= 256 KiB)
  uint16_t offset = 0;    // byte offset of the mapping inside the head slot (< 2 KiB)
  uint8_t nslots = 0;     // slots taken (<= 128)
  uint8_t coherent = 0;   // 1 for alloc(): never bounced, freed by free()
};

struct alignas(64) Area {
  SpinLock mu;  // as swiotlb's area->lock: held for a slot search and a few stores
  // Slots in use in this area: written under mu, read without it (relaxed)
  // by stats(), so each area's count lives on the area's own cache line and
  // threads on different areas share nothing.
  std::atomic<uint32_t> used{0};
  uint32_t next = 0;  // guarded by mu: where the next search starts (area-relative)
  uint32_t peak = 0;  // guarded by mu: the most slots this area ever had in use
};

struct BouncePool::SlotPool {
  AddrRange<Gpa> range;
  std::byte* host = nullptr;
  uint32_t nslots = 0;
  uint32_t nareas = 0;
  uint32_t area_slots = 0;
  std::unique_ptr<Area[]> areas;
  std::unique_ptr<Slot[]> slots;
  // The area of each segment: a table instead of a division on every unmap.
  std::unique_ptr<uint32_t[]> segment_area;

  [[nodiscard]] Gpa slot_gpa(uint32_t slot) const noexcept { return range.start.unchecked_add(uint64_t{slot} << kSlotShift); }
  [[nodiscard]] uint32_t area_index(uint32_t slot) const noexcept { return segment_area[slot / kSegmentSlots]; }
};

BouncePool::BouncePool(const GuestMemory& mem, Config config, uint32_t areas)
    : mem_(mem), config_(config), areas_(areas) {
  if (!config_.growth_window.empty()) growth_ = std::make_unique<GpaAllocator>(config_.growth_window);
}

BouncePool::~BouncePool() = default;

namespace {

Result<void> check_window(const GuestMemory& mem, AddrRange<Gpa> w, std::string_view what) {
  if (w.empty() || !fits(w.start, w.len)) {
    return make_error(DmaErrc::kInvalidConfig, "{} {} + len {:#x} is empty or wraps", what, w.start, w.len);
  }
  if (!w.start.is_aligned(BouncePool::kPageSize)) {
    return make_error(DmaErrc::kInvalidConfig, "{} {} is not page aligned", what, w.start);
  }
  const GuestRegion* r = mem.find_region(w.start);
  if (r == nullptr || !r->range().contains(w.start, w.len)) {
    return make_error(DmaErrc::kInvalidConfig, "{} {} + len {:#x} is not inside one guest memory region", what,
                      w.start, w.len);
  }
  if (!r->is_shared()) {
    return make_error(DmaErrc::kInvalidConfig,
                      "{} {} + len {:#x} is in private region '{}': a bounce pool must be shared memory", what,
                      w.start, w.len, r->name());
  }
  return ok();
}

}  // namespace

Result<std::shared_ptr<BouncePool>> BouncePool::create(const GuestMemory& mem, Config config) {
  VDMA_TRY(check_window(mem, config.window, "bounce pool window"));
  if (config.window.len % kSegmentSize != 0) {
    return make_error(DmaErrc::kInvalidConfig, "bounce pool window length {:#x} is not a multiple of {:#x} (128 slots)",
                      config.window.len, kSegmentSize);
  }
  if (!config.growth_window.empty()) {
    VDMA_TRY(check_window(mem, config.growth_window, "bounce growth window"));
    if (config.growth_pool_size == 0 || config.growth_pool_size % kSegmentSize != 0 ||
        config.growth_pool_size > config.growth_window.len) {
      return make_error(DmaErrc::kInvalidConfig,
                        "bounce growth pool size {:#x} must be a non-zero multiple of {:#x} within the growth window",
                        config.growth_pool_size, kSegmentSize);
    }
    if (config.growth_window.overlaps(config.window)) {
      return make_error(DmaErrc::kInvalidConfig, "bounce growth window {} overlaps the pool window {}",
                        config.growth_window.start, config.window.start);
    }
  }
  uint32_t wanted = config.min_areas != 0 ? config.min_areas : std::max(1u, std::thread::hardware_concurrency());
  wanted = std::min<uint32_t>(wanted, 1u << 16);
  // Areas hold whole segments: the count is a power of two that divides the
  // segment count of the smallest pool.
  uint64_t segments = config.window.len / kSegmentSize;
  if (!config.growth_window.empty()) segments = std::min(segments, config.growth_pool_size / kSegmentSize);
  const uint64_t divides = segments & (~segments + 1);  // largest power of two dividing `segments`
  const uint32_t areas = static_cast<uint32_t>(std::min<uint64_t>(std::bit_ceil(wanted), divides));

  std::shared_ptr<BouncePool> pool(new BouncePool(mem, config, areas));
  VDMA_TRY(pool->add_pool(config.window));
  return pool;
}

Result<void> BouncePool::add_pool(AddrRange<Gpa> window) {
  const uint32_t count = pool_count_.load(std::memory_order_relaxed);
  if (count == kMaxPools) {
    return make_error(DmaErrc::kPoolFull, "bounce pool cannot grow past {} pools", kMaxPools);
  }
  auto host = mem_.span(window.start, window.len);
  VDMA_CHECK(host.has_value(), "bounce window checked at create()");
  auto p = std::make_unique<SlotPool>();
  p->range = window;
  p->host = host->data();
  p->nslots = static_cast<uint32_t>(window.len >> kSlotShift);
  p->nareas = areas_;
  p->area_slots = p->nslots / areas_;
  p->areas = std::make_unique<Area[]>(areas_);
  p->slots = std::make_unique<Slot[]>(p->nslots);
  p->segment_area = std::make_unique<uint32_t[]>(p->nslots / kSegmentSlots);
  for (uint32_t seg = 0; seg < p->nslots / kSegmentSlots; ++seg) {
    p->segment_area[seg] = seg * kSegmentSlots / p->area_slots;
  }
  for (uint32_t i = 0; i < p->nslots; ++i) p->slots[i].list = kSegmentSlots - segment_offset(i);
  total_slots_.fetch_add(p->nslots, std::memory_order_relaxed);
  pools_[count] = std::move(p);
  // Publishes the fully built pool to lock-free readers of pools_.
  pool_count_.store(count + 1, std::memory_order_release);
  return ok();
}

uint64_t BouncePool::max_mapping_size(uint64_t min_align_mask) noexcept {
  // A min_align_mask can cost up to roundup(mask, 2 KiB) bytes of the
  // segment: the slots skipped to match the preserved address bits.
  const uint64_t slack = min_align_mask == 0 ? 0 : align_up(min_align_mask, kSlotSize);
  return slack >= kSegmentSize ? 0 : kSegmentSize - slack;
}

bool BouncePool::search_pool(SlotPool& p, uint32_t home, Gpa orig, std::byte* orig_host, uint64_t len,
                             uint32_t offset, uint32_t nslots, uint64_t alloc_align_mask, uint64_t iotlb_align_mask,
                             bool coherent, uint32_t& out) {
  // Once on an aligned slot, step by the alignment instead of by one: the
  // slots in between cannot match (swiotlb's get_max_slots).
  const auto stride = static_cast<uint32_t>((std::max(alloc_align_mask, iotlb_align_mask) >> kSlotShift) + 1);
  for (uint32_t a = 0; a < p.nareas; ++a) {
    const uint32_t area_index = (home + a) & (p.nareas - 1);
    Area& area = p.areas[area_index];
    std::lock_guard lock(area.mu);
    const uint32_t used = area.used.load(std::memory_order_relaxed);
    if (nslots > p.area_slots - used) continue;
    const uint32_t base = area_index * p.area_slots;
    uint32_t index = area.next;
    uint32_t slot = 0;
    bool found = false;
    for (uint32_t checked = 0; checked < p.area_slots;) {
      slot = base + index;
      const uint64_t addr = p.slot_gpa(slot).value();
      if ((addr & alloc_align_mask) != 0 || (addr & iotlb_align_mask) != (orig.value() & iotlb_align_mask)) {
        index = index + 1 >= p.area_slots ? 0 : index + 1;
        ++checked;
        continue;
      }
      // list counts free slots up to the segment end, so this also keeps
      // the mapping inside one segment.
      if (p.slots[slot].list >= nslots) {
        found = true;
        break;
      }
      // Wrap keeping the phase (it is kept whenever area_slots is a multiple
      // of the stride), as swiotlb's wrap_area_index does: wrapping to 0
      // would step off the aligned slots and spend the budget of `checked`
      // on unaligned ones, so an aligned free run near the start of the
      // search could go unvisited ("pool full" with a fitting run free).
      index = (index + stride) % p.area_slots;
      checked += stride;
    }
    if (!found) continue;
    for (uint32_t i = slot; i < slot + nslots; ++i) {
      p.slots[i].list = 0;
      p.slots[i].head = slot;
    }
    // Free slots just before the run (same segment) now end at it.
    uint32_t count = 0;
    for (int64_t i = int64_t{slot} - 1; i >= int64_t{base} && segment_offset(static_cast<uint32_t>(i)) != kSegmentSlots - 1 &&
                                        p.slots[i].list != 0;
         --i) {
      p.slots[i].list = ++count;
    }
    Slot& head = p.slots[slot];
    head.orig = orig.value();
    head.orig_host = orig_host;
    head.len = static_cast<uint32_t>(len);
    head.offset = static_cast<uint16_t>(offset);
    head.nslots = static_cast<uint8_t>(nslots);
    head.coherent = coherent ? 1 : 0;
    const uint32_t after = index + nslots;
    area.next = after >= p.area_slots ? 0 : after;
    area.used.store(used + nslots, std::memory_order_relaxed);
    if (used + nslots > area.peak) {
      area.peak = used + nslots;
      sample_high_water();
    }
    out = slot;
    return true;
  }
  return false;
}

bool BouncePool::find_slots(Gpa orig, std::byte* orig_host, uint64_t len, uint32_t offset, uint32_t nslots,
                            uint64_t alloc_align_mask, uint64_t iotlb_align_mask, bool coherent, Found& out) {
  const uint32_t home = detail::cpu_hint();  // the area to search first, as Linux uses the CPU
  uint32_t seen = pool_count_.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < seen; ++i) {
    if (search_pool(*pools_[i], home, orig, orig_host, len, offset, nslots, alloc_align_mask, iotlb_align_mask,
                    coherent, out.slot)) {
      out.pool = pools_[i].get();
      return true;
    }
  }
  if (growth_ == nullptr) return false;
  std::lock_guard lock(grow_mu_);
  for (;;) {
    // Another thread may have grown the pool while we searched.
    const uint32_t now = pool_count_.load(std::memory_order_acquire);
    for (uint32_t i = seen; i < now; ++i) {
      if (search_pool(*pools_[i], home, orig, orig_host, len, offset, nslots, alloc_align_mask, iotlb_align_mask,
                      coherent, out.slot)) {
        out.pool = pools_[i].get();
        return true;
      }
    }
    seen = now;
    if (now == kMaxPools) return false;
    auto w = growth_->allocate(config_.growth_pool_size, kPageSize);
    if (!w || !add_pool({*w, config_.growth_pool_size})) return false;
  }
}

Error BouncePool::pool_full(Gpa orig, uint64_t len, uint32_t nslots) const {
  const Stats s = stats();
  return make_error(DmaErrc::kPoolFull,
                    "bounce pool full: no run of {} free slot(s) for {} + len {:#x}; {} of {} slots used in {} pool(s), "
                    "high-water {}, largest free run {} slot(s)",
                    nslots, orig, len, s.used_slots, s.total_slots, s.pools, s.high_water, largest_free_run());
}

uint64_t BouncePool::used_slots() const noexcept {
  uint64_t used = 0;
  const uint32_t n = pool_count_.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t a = 0; a < pools_[i]->nareas; ++a) used += pools_[i]->areas[a].used.load(std::memory_order_relaxed);
  }
  return used;
}

void BouncePool::sample_high_water() noexcept {
  const uint64_t now = used_slots();
  uint64_t hw = high_water_.load(std::memory_order_relaxed);
  while (now > hw && !high_water_.compare_exchange_weak(hw, now, std::memory_order_relaxed)) {
  }
}

void BouncePool::release(SlotPool& p, uint32_t head, uint32_t nslots) {
  const uint32_t area_index = p.area_index(head);
  Area& area = p.areas[area_index];
  {
    std::lock_guard lock(area.mu);
    const uint32_t end = head + nslots;
    // The freed run joins the free run that follows it in the same segment.
    uint32_t count = segment_offset(end) != 0 && end < p.nslots ? p.slots[end].list : 0;
    for (int64_t i = int64_t{end} - 1; i >= int64_t{head}; --i) {
      p.slots[i].list = ++count;
      p.slots[i].head = kNoMapping;
    }
    // ...and the free slots before it now run through it.
    for (int64_t i = int64_t{head} - 1;
         i >= 0 && segment_offset(static_cast<uint32_t>(i)) != kSegmentSlots - 1 && p.slots[i].list != 0; --i) {
      p.slots[i].list = ++count;
    }
    // Freeing the area's most recent mapping rewinds the next-fit index to
    // it: a steady map/unmap then keeps reusing the same, cache-warm slots
    // instead of sweeping the whole pool (and its cache misses).
    const uint32_t base = area_index * p.area_slots;
    const uint32_t end_rel = end - base;
    if (area.next == (end_rel >= p.area_slots ? 0 : end_rel)) area.next = head - base;
    area.used.store(area.used.load(std::memory_order_relaxed) - nslots, std::memory_order_relaxed);
  }
}

BouncePool::SlotPool* BouncePool::pool_of(Gpa gpa) const noexcept {
  const uint32_t n = pool_count_.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n; ++i) {
    if (pools_[i]->range.contains(gpa)) return pools_[i].get();
  }
  return nullptr;
}

bool BouncePool::contains(Gpa gpa) const noexcept { return pool_of(gpa) != nullptr; }

bool BouncePool::lookup(Gpa tlb, uint64_t len, Found& out) const noexcept {
  SlotPool* p = pool_of(tlb);
  if (p == nullptr) return false;
  const uint32_t head = p->slots[p->range.start.distance_to(tlb) >> kSlotShift].head;
  if (head == kNoMapping) return false;
  const Slot& h = p->slots[head];
  if (!AddrRange<Gpa>{p->slot_gpa(head).unchecked_add(h.offset), h.len}.contains(tlb, len)) return false;
  out = {p, head};
  return true;
}

Error BouncePool::lookup_error(Gpa tlb, uint64_t len, std::string_view op) const {
  SlotPool* p = pool_of(tlb);
  if (p == nullptr) return make_error(DmaErrc::kUnknownMapping, "{} {}: not a bounce buffer address", op, tlb);
  const uint32_t head = p->slots[p->range.start.distance_to(tlb) >> kSlotShift].head;
  if (head == kNoMapping) {
    return make_error(DmaErrc::kUnknownMapping, "{} {} + len {:#x}: no live bounce mapping there", op, tlb, len);
  }
  const Slot& h = p->slots[head];
  return make_error(DmaErrc::kUnknownMapping, "{} {} + len {:#x}: outside the bounce mapping {} + len {:#x}", op, tlb,
                    len, p->slot_gpa(head).unchecked_add(h.offset), h.len);
}

std::byte* BouncePool::host_of(const SlotPool& p, Gpa tlb) const noexcept {
  return p.host + p.range.start.distance_to(tlb);
}

void BouncePool::copy_to_slots(const Found& f, uint64_t delta, std::byte* slots, uint64_t len) const {
  const Slot& h = f.pool->slots[f.slot];
  if (h.orig_host != nullptr) {
    std::memcpy(slots, h.orig_host + delta, len);
    return;
  }
  // An original spanning regions: map() proved it guest memory, which never changes.
  VDMA_CHECK(mem_.read(Gpa(h.orig).unchecked_add(delta), {slots, static_cast<size_t>(len)}).has_value(),
             "bounce original vanished");
}

void BouncePool::copy_from_slots(const Found& f, uint64_t delta, const std::byte* slots, uint64_t len) const {
  const Slot& h = f.pool->slots[f.slot];
  if (h.orig_host != nullptr) {
    std::memcpy(h.orig_host + delta, slots, len);
    return;
  }
  VDMA_CHECK(mem_.write(Gpa(h.orig).unchecked_add(delta), {slots, static_cast<size_t>(len)}).has_value(),
             "bounce original vanished");
}

Result<Gpa> BouncePool::map(Gpa orig, uint64_t len, DmaDirection dir, uint64_t min_align_mask, DmaAttrs attrs) {
  if (len == 0) return make_error(BaseErrc::kInvalidArgument, "bounce map of {} with len 0", orig);
  const uint64_t max = max_mapping_size(min_align_mask);
  if (len > max) {
    return make_error(DmaErrc::kTooLarge,
                      "bounce map of {} + len {:#x}: larger than the largest bounce mapping {:#x} "
                      "(128 slots of 2 KiB, min_align_mask {:#x})",
                      orig, len, max, min_align_mask);
  }
  std::byte* orig_host = nullptr;
  const GuestRegion* r = mem_.find_region(orig);
  if (r != nullptr && r->range().contains(orig, len)) {
    orig_host = r->host().data() + r->base().distance_to(orig);
  } else if (!mem_.contains(orig, len)) {
    return make_error(MemErrc::kNotMapped, "bounce map of {} + len {:#x}: not guest memory", orig, len);
  }
  const auto offset = static_cast<uint32_t>(orig.value() & min_align_mask & (kSlotSize - 1));
  const uint32_t nslots = slots_for(offset + len);
  // Mappings of a page or more start on a page unless a min_align_mask
  // dictates the placement instead; every mapping starts on a slot.
  uint64_t alloc_align_mask = (min_align_mask == 0 && len >= kPageSize) ? kPageSize - 1 : 0;
  alloc_align_mask |= kSlotSize - 1;
  const uint64_t iotlb_align_mask = min_align_mask & ~alloc_align_mask;
  Found f;
  if (!find_slots(orig, orig_host, len, offset, nslots, alloc_align_mask, iotlb_align_mask, false, f)) {
    return pool_full(orig, len, nslots);
  }
  const Gpa tlb = f.pool->slot_gpa(f.slot).unchecked_add(offset);
  // Copy in for every direction but an announced device-only write: see the header.
  if (dir != DmaDirection::kFromDevice || !has(attrs, DmaAttrs::kNoCopyIn)) {
    copy_to_slots(f, 0, host_of(*f.pool, tlb), len);
  }
  return tlb;
}

Result<void> BouncePool::unmap(Gpa tlb, uint64_t len, DmaDirection dir, DmaAttrs attrs, uint64_t written) {
  Found f;
  if (!lookup(tlb, 1, f)) return lookup_error(tlb, 1, "bounce unmap");
  const Slot& h = f.pool->slots[f.slot];
  if (h.coherent != 0) {
    return make_error(DmaErrc::kUnknownMapping, "bounce unmap {}: that is a coherent allocation (use free)", tlb);
  }
  const Gpa start = f.pool->slot_gpa(f.slot).unchecked_add(h.offset);
  if (tlb != start || len != h.len) {
    return make_error(DmaErrc::kMisuse, "bounce unmap {} + len {:#x}: the mapping is {} + len {:#x}", tlb, len, start,
                      h.len);
  }
  if (device_writes(dir) && !has(attrs, DmaAttrs::kSkipCpuSync) && written != 0) {
    copy_from_slots(f, 0, host_of(*f.pool, tlb), std::min(written, len));
  }
  release(*f.pool, f.slot, h.nslots);
  return ok();
}

Result<void> BouncePool::sync_for_cpu(Gpa tlb, uint64_t len, DmaDirection dir) {
  Found f;
  if (!lookup(tlb, len, f)) return lookup_error(tlb, len, "bounce sync_for_cpu");
  if (device_writes(dir)) {
    const Slot& h = f.pool->slots[f.slot];
    const uint64_t delta = f.pool->slot_gpa(f.slot).unchecked_add(h.offset).distance_to(tlb);
    copy_from_slots(f, delta, host_of(*f.pool, tlb), len);
  }
  return ok();
}

Result<void> BouncePool::sync_for_device(Gpa tlb, uint64_t len, DmaDirection dir) {
  Found f;
  if (!lookup(tlb, len, f)) return lookup_error(tlb, len, "bounce sync_for_device");
  if (device_reads(dir)) {
    const Slot& h = f.pool->slots[f.slot];
    const uint64_t delta = f.pool->slot_gpa(f.slot).unchecked_add(h.offset).distance_to(tlb);
    copy_to_slots(f, delta, host_of(*f.pool, tlb), len);
  }
  return ok();
}

Result<Gpa> BouncePool::original(Gpa tlb, uint64_t len) const {
  Found f;
  if (!lookup(tlb, len, f)) return lookup_error(tlb, len, "bounce lookup");
  const Slot& h = f.pool->slots[f.slot];
  if (h.coherent != 0) return make_error(DmaErrc::kUnknownMapping, "bounce lookup {}: a coherent allocation", tlb);
  return Gpa(h.orig).unchecked_add(f.pool->slot_gpa(f.slot).unchecked_add(h.offset).distance_to(tlb));
}

Result<CoherentPool::Allocation> BouncePool::alloc(uint64_t size) {
  if (size == 0) return make_error(BaseErrc::kInvalidArgument, "bounce pool coherent allocation of 0 bytes");
  const uint64_t rounded = align_up(size, kPageSize);
  if (size > kSegmentSize) {
    return make_error(DmaErrc::kTooLarge, "coherent allocation of {:#x} bytes from a bounce pool: at most {:#x}", size,
                      kSegmentSize);
  }
  const uint32_t nslots = slots_for(rounded);
  Found f;
  if (!find_slots(Gpa{0}, nullptr, rounded, 0, nslots, kPageSize - 1, 0, true, f)) {
    return pool_full(Gpa{0}, rounded, nslots);
  }
  std::byte* host = f.pool->host + (uint64_t{f.slot} << kSlotShift);
  std::memset(host, 0, rounded);
  return CoherentPool::Allocation{f.pool->slot_gpa(f.slot), {host, static_cast<size_t>(rounded)}};
}

Result<void> BouncePool::free(Gpa gpa, uint64_t size) {
  Found f;
  if (!lookup(gpa, 1, f)) return lookup_error(gpa, 1, "bounce pool free");
  const Slot& h = f.pool->slots[f.slot];
  if (h.coherent == 0 || gpa != f.pool->slot_gpa(f.slot) || size != h.len) {
    return make_error(DmaErrc::kUnknownMapping, "bounce pool free {} size {:#x}: not a live coherent allocation", gpa,
                      size);
  }
  release(*f.pool, f.slot, h.nslots);
  return ok();
}

BouncePool::Stats BouncePool::stats() const noexcept {
  Stats s;
  s.total_slots = total_slots_.load(std::memory_order_relaxed);
  s.used_slots = used_slots();
  s.high_water = std::max(high_water_.load(std::memory_order_relaxed), s.used_slots);
  s.pools = pool_count_.load(std::memory_order_acquire);
  s.areas = areas_;
  return s;
}

std::vector<AddrRange<Gpa>> BouncePool::windows() const {
  std::vector<AddrRange<Gpa>> out{config_.window};
  if (!config_.growth_window.empty()) out.push_back(config_.growth_window);
  return out;
}

uint64_t BouncePool::largest_free_run() const {
  uint32_t best = 0;
  const uint32_t n = pool_count_.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n; ++i) {
    SlotPool& p = *pools_[i];
    for (uint32_t a = 0; a < p.nareas; ++a) {
      std::lock_guard lock(p.areas[a].mu);
      for (uint32_t s = a * p.area_slots; s < (a + 1) * p.area_slots; ++s) best = std::max(best, p.slots[s].list);
    }
  }
  return best;
}

Result<void> BouncePool::validate() const {
  const uint32_t n = pool_count_.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n; ++i) {
    SlotPool& p = *pools_[i];
    for (uint32_t a = 0; a < p.nareas; ++a) {
      std::lock_guard lock(p.areas[a].mu);
      uint32_t used = 0;
      const uint32_t first = a * p.area_slots;
      const uint32_t last = first + p.area_slots;
      for (uint32_t s = last; s-- > first;) {
        const Slot& sl = p.slots[s];
        const bool next_free = segment_offset(s + 1) != 0 && s + 1 < p.nslots && p.slots[s + 1].head == kNoMapping;
        const uint32_t want = sl.head != kNoMapping ? 0 : 1 + (next_free ? p.slots[s + 1].list : 0);
        if (sl.list != want) {
          return make_error(DmaErrc::kInvalidConfig, "pool {} slot {}: free-run count {} but {} expected", i, s,
                            sl.list, want);
        }
        if (sl.head == kNoMapping) continue;
        ++used;
        const Slot& h = p.slots[sl.head];
        if (sl.head > s || s >= sl.head + h.nslots || segment_offset(sl.head) + h.nslots > kSegmentSlots ||
            p.slots[sl.head].head != sl.head) {
          return make_error(DmaErrc::kInvalidConfig, "pool {} slot {}: bad owner {} ({} slots)", i, s, sl.head,
                            h.nslots);
        }
      }
      const uint32_t counted = p.areas[a].used.load(std::memory_order_relaxed);
      if (used != counted) {
        return make_error(DmaErrc::kInvalidConfig, "pool {} area {}: {} slots used but the area counts {}", i, a, used,
                          counted);
      }
    }
  }
  return ok();
}

}  // namespace vdma
