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

// One bit per slot of a segment (bit i: slot i of the segment is in use).
// The 128 slots of a segment are one 128-bit word, so a search tests a whole
// segment with a few shifts instead of walking slot by slot.
using SegmentBits = unsigned __int128;
static_assert(BouncePool::kSegmentSlots == 128, "one 128-bit word per segment");

constexpr SegmentBits kAllBits = ~SegmentBits{0};

// Bits [0, n), n <= 128.
constexpr SegmentBits low_bits(uint32_t n) noexcept { return n >= 128 ? kAllBits : (SegmentBits{1} << n) - 1; }

// Bits p of `free` such that p .. p + n - 1 are all set (a run cannot pass
// bit 127: the shifts bring in zeros there). O(log n) shifts.
constexpr SegmentBits runs_of(SegmentBits free, uint32_t n) noexcept {
  SegmentBits r = free;
  for (uint32_t have = 1; have < n;) {
    const uint32_t step = std::min(have, n - have);
    r &= r >> step;
    have += step;
  }
  return r;
}

constexpr uint32_t lowest_bit(SegmentBits b) noexcept {
  const auto lo = static_cast<uint64_t>(b);
  return lo != 0 ? static_cast<uint32_t>(std::countr_zero(lo))
                 : 64 + static_cast<uint32_t>(std::countr_zero(static_cast<uint64_t>(b >> 64)));
}

constexpr uint32_t popcount(SegmentBits b) noexcept {
  return static_cast<uint32_t>(std::popcount(static_cast<uint64_t>(b)) +
                               std::popcount(static_cast<uint64_t>(b >> 64)));
}

// Rotates right by r (0 <= r < 128): bit p of the result is bit (p + r) % 128 of b.
constexpr SegmentBits rotate_right(SegmentBits b, uint32_t r) noexcept {
  return r == 0 ? b : (b >> r) | (b << (128 - r));
}

// The 128-bit word with the 64-bit pattern `w` in both halves.
constexpr SegmentBits both_halves(uint64_t w) noexcept { return (SegmentBits{w} << 64) | w; }

// kBitClear[b]: the positions j in 0..127 whose bit b is clear.
constexpr SegmentBits kBitClear[7] = {
    both_halves(0x5555555555555555ull), both_halves(0x3333333333333333ull), both_halves(0x0f0f0f0f0f0f0f0full),
    both_halves(0x00ff00ff00ff00ffull), both_halves(0x0000ffff0000ffffull), both_halves(0x00000000ffffffffull),
    SegmentBits{~uint64_t{0}}};

// The positions j of a 256 KiB-aligned window of 128 slots whose slot index
// matches `target` under `mask` ((j & mask) == target, both 7 bits): one AND
// per bit of the mask.
constexpr SegmentBits matching_positions(uint32_t mask, uint32_t target) noexcept {
  SegmentBits out = kAllBits;
  for (uint32_t b = 0; b < 7; ++b) {
    if ((mask >> b & 1) != 0) out &= (target >> b & 1) != 0 ? ~kBitClear[b] : kBitClear[b];
  }
  return out;
}
static_assert(matching_positions(1, 0) == both_halves(0x5555555555555555ull));
static_assert(matching_positions(3, 2) == both_halves(0x4444444444444444ull));
static_assert(matching_positions(0x40, 0x40) == (kAllBits << 64));

}  // namespace

// Per-slot bookkeeping. `head` is written only under the lock of the slot's
// area. The head-only fields are written under that lock when the mapping is
// made and read without it by unmap/sync of the same mapping, which the
// caller orders after map (the DMA API contract).
struct Slot {
  // The first slot of the mapping that uses this slot, or kNoMapping.
  uint32_t head = kNoMapping;
  // Head slot only:
  uint32_t len = 0;       // mapped bytes (<= 256 KiB)
  uint64_t orig = 0;      // Gpa of the original buffer's first byte
  // Host view of the original when it lies in one region (regions never
  // move), so unmap and sync copy without a region lookup; null otherwise.
  std::byte* orig_host = nullptr;
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
  // One word per segment, bit i set while slot i of the segment is in use;
  // written under the lock of the segment's area.
  std::unique_ptr<SegmentBits[]> used;
  // The area of each segment: a table instead of a division on every unmap.
  std::unique_ptr<uint32_t[]> segment_area;
  // Slot index of the first slot modulo 128 within a 256 KiB-aligned
  // window: the same for every segment (segments are 256 KiB apart).
  uint32_t phase = 0;

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
  p->used = std::make_unique<SegmentBits[]>(p->nslots / kSegmentSlots);
  p->phase = static_cast<uint32_t>((window.start.value() >> kSlotShift) & (kSegmentSlots - 1));
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
  // Where a mapping may start inside a segment. Both masks are below 256 KiB
  // (max_mapping_size) and cover the 2 KiB of a slot, so only the slot's
  // position in a 256 KiB-aligned window matters: bits 11..17 of its address.
  const auto mask = static_cast<uint32_t>(((alloc_align_mask | iotlb_align_mask) >> kSlotShift) & (kSegmentSlots - 1));
  const auto target = static_cast<uint32_t>(((orig.value() & iotlb_align_mask) >> kSlotShift) & (kSegmentSlots - 1));
  const SegmentBits starts =
      mask == 0 ? kAllBits : rotate_right(matching_positions(mask, target), p.phase);
  const uint32_t area_segments = p.area_slots / kSegmentSlots;
  for (uint32_t a = 0; a < p.nareas; ++a) {
    const uint32_t area_index = (home + a) & (p.nareas - 1);
    Area& area = p.areas[area_index];
    std::lock_guard lock(area.mu);
    const uint32_t used = area.used.load(std::memory_order_relaxed);
    if (nslots > p.area_slots - used) continue;
    // Next fit, as swiotlb: from area.next to the end of the area, then
    // from its start back to area.next. Segment by segment: the first one
    // from the start position, the last (the same segment again) below it.
    const uint32_t first_segment = area_index * area_segments;
    const uint32_t start_segment = area.next / kSegmentSlots;
    const uint32_t start_bit = segment_offset(area.next);
    for (uint32_t k = 0; k <= area_segments; ++k) {
      const uint32_t seg = first_segment + (start_segment + k) % area_segments;
      SegmentBits fits = runs_of(~p.used[seg], nslots) & starts;
      if (k == 0) {
        fits &= ~low_bits(start_bit);
      } else if (k == area_segments) {
        fits &= low_bits(start_bit);
      }
      if (fits == 0) continue;
      const uint32_t bit = lowest_bit(fits);
      const uint32_t slot = seg * kSegmentSlots + bit;
      p.used[seg] |= low_bits(nslots) << bit;
      for (uint32_t i = slot; i < slot + nslots; ++i) p.slots[i].head = slot;
      Slot& head = p.slots[slot];
      head.orig = orig.value();
      head.orig_host = orig_host;
      head.len = static_cast<uint32_t>(len);
      head.offset = static_cast<uint16_t>(offset);
      head.nslots = static_cast<uint8_t>(nslots);
      head.coherent = coherent ? 1 : 0;
      const uint32_t after = slot + nslots - area_index * p.area_slots;
      area.next = after >= p.area_slots ? 0 : after;
      area.used.store(used + nslots, std::memory_order_relaxed);
      if (used + nslots > area.peak) {
        area.peak = used + nslots;
        sample_high_water();
      }
      out = slot;
      return true;
    }
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
    p.used[head / kSegmentSlots] &= ~(low_bits(nslots) << segment_offset(head));
    const uint32_t end = head + nslots;
    for (uint32_t i = head; i < end; ++i) p.slots[i].head = kNoMapping;
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
    const uint32_t area_segments = p.area_slots / kSegmentSlots;
    for (uint32_t a = 0; a < p.nareas; ++a) {
      std::lock_guard lock(p.areas[a].mu);
      for (uint32_t seg = a * area_segments; seg < (a + 1) * area_segments; ++seg) {
        // The longest run of clear bits: grow it while one still exists.
        while (best < kSegmentSlots && runs_of(~p.used[seg], best + 1) != 0) ++best;
      }
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
      for (uint32_t s = first; s < last; ++s) {
        const Slot& sl = p.slots[s];
        const bool bit = ((p.used[s / kSegmentSlots] >> segment_offset(s)) & 1) != 0;
        if (bit != (sl.head != kNoMapping)) {
          return make_error(DmaErrc::kInvalidConfig, "pool {} slot {}: in-use bit {} but owner {}", i, s, bit ? 1 : 0,
                            sl.head == kNoMapping ? std::string("none") : std::to_string(sl.head));
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
      uint32_t bits = 0;
      for (uint32_t seg = first / kSegmentSlots; seg < last / kSegmentSlots; ++seg) bits += popcount(p.used[seg]);
      if (used != counted || bits != counted) {
        return make_error(DmaErrc::kInvalidConfig, "pool {} area {}: {} slots used, {} bits set, but the area counts {}",
                          i, a, used, bits, counted);
      }
    }
  }
  return ok();
}

}  // namespace vdma
