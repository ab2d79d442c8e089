#include "vdma/virtio/split_driver_queue.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "barrier_switch.h"
#include "ring_factories.h"
#include "split_ring_access.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/split_layout.h"

namespace vdma {

namespace {

using split_ring::load_le16;
using split_ring::store_le16;

// The used ring starts on its own cache line so the driver's avail stores and
// the device's used stores do not bounce one line between CPUs.
constexpr size_t kUsedOffsetAlign = 64;
constexpr uint16_t kDefaultMaxIndirect = 64;

size_t used_offset(uint16_t size) {
  return align_up(split::desc_table_size(size) + split::avail_size(size), kUsedOffsetAlign);
}

}  // namespace

Result<std::unique_ptr<SplitDriverQueue>> SplitDriverQueue::create(DmaOps& dma, const QueueConfig& config) {
  if (config.size == 0 || config.size > split::kMaxQueueSize || !is_pow2(config.size)) {
    return make_error(VirtioErrc::kInvalidConfig, "split queue size {} is not a power of two in 1..{}", config.size,
                      split::kMaxQueueSize);
  }
  const uint16_t wanted_indirect = config.max_indirect == 0 ? kDefaultMaxIndirect : config.max_indirect;
  const uint16_t max_indirect = std::min(wanted_indirect, config.size);
  std::unique_ptr<SplitDriverQueue> q(new SplitDriverQueue(dma, config, max_indirect));

  const size_t used_off = used_offset(config.size);
  q->ring_ = VDMA_TRY(dma.alloc_coherent(used_off + split::used_size(config.size)));
  // The destructor frees ring_ from here on, also on the error paths below.
  const DmaAddr base = q->ring_.dma;
  if (!base.is_aligned(split::kDescAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "coherent ring memory at {} is not {}-byte aligned", base,
                      split::kDescAlign);
  }
  q->addrs_ = {base, base.unchecked_add(split::desc_table_size(config.size)), base.unchecked_add(used_off)};
  q->avail_ = q->ring_.host.data() + split::desc_table_size(config.size);
  q->used_ = q->ring_.host.data() + used_off;

  if (has_feature(config.features, kFeatureIndirectDesc) && max_indirect >= 2) {
    const uint64_t pool_size = uint64_t{16} * config.size * max_indirect;
    q->indirect_pool_ = VDMA_TRY(dma.alloc_coherent(pool_size));
    if (!q->indirect_pool_->dma.is_aligned(split::kDescAlign)) {
      return make_error(VirtioErrc::kInvalidConfig, "coherent indirect pool at {} is not {}-byte aligned",
                        q->indirect_pool_->dma, split::kDescAlign);
    }
    q->indirect_shadow_.resize(size_t{config.size} * max_indirect);
  }
  return q;
}

SplitDriverQueue::SplitDriverQueue(DmaOps& dma, const QueueConfig& config, uint16_t max_indirect)
    : dma_(dma),
      size_(config.size),
      mask_(static_cast<uint16_t>(config.size - 1)),
      max_indirect_(max_indirect),
      event_idx_(has_feature(config.features, kFeatureEventIdx)),
      barrier_(has_feature(config.features, kFeatureOrderPlatform) ? BarrierKind::kStrong : BarrierKind::kWeak),
      notify_flush_(config.notify_flush),
      shadow_(config.size),
      heads_(config.size),
      num_free_(config.size) {
  // Every descriptor starts on the free list, in index order.
  for (uint16_t i = 0; i < size_; ++i) shadow_[i].next = static_cast<uint16_t>(i + 1);
}

SplitDriverQueue::~SplitDriverQueue() {
  for (uint16_t h = 0; h < size_; ++h) {
    if (heads_[h].outstanding) detach(h, 0);  // nothing the device claimed
  }
  if (indirect_pool_) {
    if (auto r = dma_.free_coherent(*indirect_pool_); !r) spdlog::warn("split queue: {}", r.error());
  }
  if (!ring_.host.empty()) {
    if (auto r = dma_.free_coherent(ring_); !r) spdlog::warn("split queue: {}", r.error());
  }
}

Error SplitDriverQueue::invalid_chain_error(std::span<const DriverSegment> segs) const {
  if (segs.empty()) return Error(VirtioErrc::kInvalidChain, "chain has no segments");
  if (segs.size() > size_) {
    return Error(VirtioErrc::kInvalidChain,
                 fmt::format("chain of {} segments is longer than the queue size {}", segs.size(), size_));
  }
  bool seen_writable = false;
  for (size_t i = 0; i < segs.size(); ++i) {
    const DriverSegment& s = segs[i];
    if (s.len == 0) return Error(VirtioErrc::kInvalidChain, fmt::format("segment {} ({}) has length 0", i, s.addr));
    if (s.type == BufferType::kDeviceWritable) {
      seen_writable = true;
    } else if (seen_writable) {
      return Error(VirtioErrc::kInvalidChain,
                   fmt::format("segment {} ({}) is device-readable after a device-writable one", i, s.addr));
    }
  }
  VDMA_CHECK(false, "invalid_chain_error called for a valid chain");
  return Error(VirtioErrc::kInvalidChain, "");
}

inline void SplitDriverQueue::add_unmap(const ShadowDesc& d, uint64_t& written) {
  const bool writable = (d.flags & split::kDescFWrite) != 0;
  const uint64_t mine = writable ? std::min<uint64_t>(written, d.len) : 0;
  written -= mine;
  if ((d.flags & kShadowPremapped) != 0) return;
  unmaps_.push_back({.addr = DmaAddr(d.dma),
                     .len = d.len,
                     .dir = writable ? DmaDirection::kFromDevice : DmaDirection::kToDevice,
                     .written = mine});
}

// One unmap_batch() per chain, in chain order, built from the shadow state
// only: behind an IOMMU every page-table entry goes first and the chain
// costs one IOTLB invalidation instead of one per buffer. Inside
// get_used_batch() the entries are gathered and unmapped there, together.
inline void SplitDriverQueue::unmap_partial(uint16_t head, bool indirect, size_t count, uint64_t written) {
  if (!gather_unmaps_) unmaps_.clear();
  if (indirect) {
    const ShadowDesc* table = &indirect_shadow_[size_t{max_indirect_} * head];
    for (size_t i = 0; i < count; ++i) add_unmap(table[i], written);
  } else {
    uint16_t idx = head;
    for (size_t i = 0; i < count; ++i) {
      add_unmap(shadow_[idx], written);
      idx = shadow_[idx].next;
    }
  }
  if (gather_unmaps_ || unmaps_.empty()) return;
  // A failure here means the DmaOps disagrees with our own record of what we
  // mapped; nothing the device did can cause it, and the chain is done
  // anyway. The other buffers of the chain are unmapped all the same.
  if (auto r = dma_.unmap_batch(unmaps_); !r) [[unlikely]] {
    spdlog::warn("split queue: unmap of chain {}: {}", head, r.error());
  }
}

Result<size_t> SplitDriverQueue::get_used_batch(std::span<UsedBuffer> out) {
  unmaps_.clear();
  gather_unmaps_ = true;
  size_t n = 0;
  std::optional<Error> fault;
  while (n < out.size()) {
    auto u = get_used();
    if (!u) [[unlikely]] {
      fault = std::move(u).error();
      break;
    }
    if (!*u) break;
    out[n++] = **u;
  }
  gather_unmaps_ = false;
  // The chains taken are done whatever the device did next: unmap them.
  if (!unmaps_.empty()) {
    if (auto r = dma_.unmap_batch(unmaps_); !r) [[unlikely]] {
      spdlog::warn("split queue: unmap of {} used chains: {}", n, r.error());
    }
  }
  if (fault && n == 0) return std::move(*fault);
  return n;
}

Error SplitDriverQueue::abandon_chain(uint16_t head, bool indirect, size_t mapped, Error e) {
  unmap_partial(head, indirect, mapped, 0);  // the device never saw the chain
  return e;
}

Result<void> SplitDriverQueue::add(std::span<const DriverSegment> segs, uint64_t cookie) {
  if (broken_) [[unlikely]] return *broken_;
  const size_t n = segs.size();
  // §2.7.4.2: device-writable elements follow every device-readable one.
  // Checked without branches here; invalid_chain_error() says what is wrong.
  bool well_formed = n != 0 && n <= size_;
  bool seen_writable = false;
  for (const DriverSegment& s : segs) {
    const bool writable = s.type == BufferType::kDeviceWritable;
    well_formed &= s.len != 0 && (writable || !seen_writable);
    seen_writable |= writable;
  }
  if (!well_formed) [[unlikely]] return invalid_chain_error(segs);
  const bool indirect = uses_indirect(n);
  const uint16_t needed = indirect ? 1 : static_cast<uint16_t>(n);
  if (num_free_ < needed) [[unlikely]] {
    return make_error(VirtioErrc::kNoSpace, "chain of {} segments needs {} free descriptors, {} are free", n, needed,
                      num_free_);
  }

  const uint16_t head = free_head_;
  uint64_t writable_len = 0;
  uint16_t last = head;
  // Direct chains take descriptors off the free list, whose links become the
  // chain's (§2.7.13.1). Indirect chains live in this head's preallocated
  // table, linked by index, and the ring descriptor points at the table
  // (§2.7.5.3).
  ShadowDesc* const table = indirect ? &indirect_shadow_[size_t{max_indirect_} * head] : nullptr;
  std::byte* const ring_table = indirect ? indirect_table(head) : nullptr;
  // Every mapping first, into the shadow (private memory), then every ring
  // store. A map may take a lock, and a locked instruction waits until the
  // stores before it are visible; a ring store before it would make that
  // wait a cache miss on a line the device's core last touched (perf: the
  // lock of the IOMMU flush queue's revive(), or of a bounce area, was the
  // hottest instruction of the driver thread).
  uint16_t idx = head;
  for (size_t i = 0; i < n; ++i) {
    const DriverSegment& seg = segs[i];
    const bool more = i + 1 < n;
    const bool writable = seg.type == BufferType::kDeviceWritable;
    ShadowDesc& d = indirect ? table[i] : shadow_[idx];
    DmaAddr addr = seg.dma;
    if (!seg.premapped) {
      // A device-writable buffer gets back only what the used length claims
      // (add_unmap), so a bounce need not copy it in first.
      Result<DmaAddr> mapped = writable ? dma_.map(seg.addr, seg.len, DmaDirection::kFromDevice, DmaAttrs::kNoCopyIn)
                                        : dma_.map(seg.addr, seg.len, DmaDirection::kToDevice);
      if (!mapped) [[unlikely]] return abandon_chain(head, indirect, i, std::move(mapped).error());
      addr = *mapped;
    }
    if (indirect) d.next = more ? static_cast<uint16_t>(i + 1) : 0;
    d.dma = addr.value();
    d.len = seg.len;
    d.flags = static_cast<uint16_t>((writable ? split::kDescFWrite : 0) | (more ? split::kDescFNext : 0) |
                                    (seg.premapped ? kShadowPremapped : 0));
    if (writable) writable_len += seg.len;
    if (!indirect) {
      last = idx;
      idx = d.next;
    }
  }
  idx = head;
  for (size_t i = 0; i < n; ++i) {
    const ShadowDesc& d = indirect ? table[i] : shadow_[idx];
    const bool more = i + 1 < n;
    split_ring::write_desc(indirect ? ring_table + 16 * i : desc_at(idx), d.dma, d.len,
                           static_cast<uint16_t>(d.flags & ~kShadowPremapped), more ? d.next : 0);
    if (!indirect) idx = d.next;
  }
  if (indirect) {
    ShadowDesc& d = shadow_[head];
    d.dma = indirect_pool_->dma.value() + size_t{16} * max_indirect_ * head;
    d.len = static_cast<uint32_t>(16 * n);
    d.flags = split::kDescFIndirect | kShadowPremapped;  // the pool is coherent memory, never unmapped
    split_ring::write_desc(desc_at(head), d.dma, d.len, split::kDescFIndirect, 0);
  }

  free_head_ = shadow_[last].next;
  num_free_ = static_cast<uint16_t>(num_free_ - needed);
  heads_[head] = HeadState{.cookie = cookie,
                           .writable_len = writable_len,
                           .ring_descs = needed,
                           .segments = static_cast<uint16_t>(n),
                           .last = last,
                           .outstanding = true,
                           .indirect = indirect};
  ++outstanding_;

  // §2.7.13.2: the head goes into the next avail ring entry. Only the driver
  // writes the avail ring, so our copy of idx is authoritative.
  store_le16(avail_ + split_ring::avail_ring_off(avail_idx_ & mask_), head, std::memory_order_relaxed);
  avail_idx_ = static_cast<uint16_t>(avail_idx_ + 1);
  if (barrier_ == BarrierKind::kStrong && !barrier_switch::kDropSplitAvailPublish) {
    // §2.7.13.3.1: descriptors and the ring entry must reach a non-coherent
    // or hardware device before the idx that exposes them (dma_wmb).
    virtio_wmb(barrier_);
    ++platform_barriers_;
  }
  // §2.7.13.3.1: release orders the descriptor and ring-entry stores above
  // before the idx store; it pairs with the device's acquire load of idx.
  store_le16(avail_ + split::kAvailIdxOff, avail_idx_,
             barrier_switch::publish_order(barrier_switch::kDropSplitAvailPublish));
  ++added_since_kick_;
  return ok();
}

bool SplitDriverQueue::kick_prepare() {
  if (broken_ || added_since_kick_ == 0) return false;
  // §2.7.13.4.1: the idx store must be visible before we read the device's
  // flags / avail_event (store->load ordering), or we could miss a kick the
  // device is waiting for.
  full_barrier();
  const uint16_t new_idx = avail_idx_;
  const uint16_t old_idx = static_cast<uint16_t>(avail_idx_ - added_since_kick_);
  const uint32_t added = added_since_kick_;
  added_since_kick_ = 0;
  if (event_idx_) {
    // More than 2^16 - 1 additions cannot be told apart from a few by the
    // 16-bit event index: notify to be safe (spurious kicks are allowed, §2.7.10).
    if (added > 0xffff) return flush_for_notify(true);
    const uint16_t guest_avail_event =  // device-controlled; any value is harmless
        load_le16(used_ + split::avail_event_off(size_), std::memory_order_relaxed);
    return flush_for_notify(vring_need_event(guest_avail_event, new_idx, old_idx));
  }
  const uint16_t guest_used_flags = load_le16(used_ + split::kUsedFlagsOff, std::memory_order_relaxed);
  return flush_for_notify((guest_used_flags & split::kUsedFNoNotify) == 0);
}

bool SplitDriverQueue::flush_for_notify(bool notify) noexcept {
  // The platform's posted-write flush sits between the last ring store and
  // the notification, once per notification (posted_write_flush.h).
  if (notify && notify_flush_ != nullptr) notify_flush_->flush();
  return notify;
}

void SplitDriverQueue::full_barrier() noexcept {
  virtio_mb(barrier_);
  if (barrier_ == BarrierKind::kStrong) ++platform_barriers_;
}

Error SplitDriverQueue::mark_broken(std::string message) {
  Error e(VirtioErrc::kBroken, std::move(message));
  spdlog::error("split queue broken: {}", e);
  broken_ = e;
  return e;
}

Result<std::optional<UsedBuffer>> SplitDriverQueue::get_used() {
  if (broken_) [[unlikely]] return *broken_;
  // §2.7.14 / §2.7.8.2: acquire pairs with the device's release of used idx,
  // so the used element (and the data it describes) is read after idx.
  const uint16_t guest_used_idx = load_le16(used_ + split::kUsedIdxOff,
                                            barrier_switch::consume_order(barrier_switch::kDropSplitUsedConsume));
  if (guest_used_idx == last_used_) return std::optional<UsedBuffer>();
  if (barrier_ == BarrierKind::kStrong && !barrier_switch::kDropSplitUsedConsume) {
    // §2.7.14 with ORDER_PLATFORM (§6): the device may be hardware, so also
    // the platform's read barrier (dma_rmb) before reading the element.
    virtio_rmb(barrier_);
    ++platform_barriers_;
  }
  const uint16_t pending = static_cast<uint16_t>(guest_used_idx - last_used_);
  if (pending > outstanding_) [[unlikely]] {
    return mark_broken(
        fmt::format("device moved used idx from {} to {} ({} entries) but only {} chains are outstanding", last_used_,
                    guest_used_idx, pending, outstanding_));
  }
  const split::UsedElem elem = split_ring::read_used_elem(used_ + split_ring::used_ring_off(last_used_ & mask_));
  const uint32_t guest_id = elem.id.load();
  const uint32_t guest_len = elem.len.load();
  if (guest_id >= size_) [[unlikely]] {
    return mark_broken(fmt::format("device returned used id {} but the queue size is {} (used ring "
                                              "entry {})",
                                              guest_id, size_, last_used_));
  }
  const uint16_t id = static_cast<uint16_t>(guest_id);
  HeadState& h = heads_[id];
  if (!h.outstanding) [[unlikely]] {
    return mark_broken(fmt::format("device returned used id {}, which is not the head of an outstanding "
                                              "chain (never made available, not a head, or already returned; used "
                                              "ring entry {})",
                                              id, last_used_));
  }
  // §2.7.8.3: len is the device's claim; never trust it beyond what was mapped writable.
  const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(guest_len, h.writable_len));
  const uint64_t cookie = h.cookie;
  detach(id, len);
  last_used_ = static_cast<uint16_t>(last_used_ + 1);
  if (event_idx_ && callbacks_enabled_) {
    // §2.7.7.1: ask for a notification when the device writes the entry we
    // will read next. The full barrier orders this store before the next
    // used idx load, as Linux's virtio_store_mb does.
    store_le16(avail_ + split::used_event_off(size_), last_used_, std::memory_order_relaxed);
    full_barrier();
  }
  return std::optional<UsedBuffer>(UsedBuffer{cookie, len});
}

inline void SplitDriverQueue::detach(uint16_t head, uint64_t written) {
  HeadState& h = heads_[head];
  VDMA_CHECK(h.outstanding, "detach of a chain that is not outstanding");
  unmap_partial(head, h.indirect, h.indirect ? h.segments : h.ring_descs, written);
  shadow_[h.last].next = free_head_;
  free_head_ = head;
  num_free_ = static_cast<uint16_t>(num_free_ + h.ring_descs);
  h.outstanding = false;
  --outstanding_;
}

void SplitDriverQueue::disable_callbacks() {
  callbacks_enabled_ = false;
  if (event_idx_) {
    // §2.7.7.1: with EVENT_IDX flags stay 0; an event index just behind the
    // entries still to come is not reached until the used idx wraps.
    store_le16(avail_ + split::used_event_off(size_), static_cast<uint16_t>(last_used_ - 1),
               std::memory_order_relaxed);
  } else {
    store_le16(avail_ + split::kAvailFlagsOff, split::kAvailFNoInterrupt, std::memory_order_relaxed);
  }
}

bool SplitDriverQueue::enable_callbacks() {
  callbacks_enabled_ = true;
  if (event_idx_) {
    store_le16(avail_ + split::used_event_off(size_), last_used_, std::memory_order_relaxed);
  } else {
    store_le16(avail_ + split::kAvailFlagsOff, 0, std::memory_order_relaxed);
  }
  // §2.7.14: the re-enable store must be visible before we look at used idx
  // (store->load); otherwise a buffer used in between raises no notification
  // and is not seen here either.
  full_barrier();
  if (broken_) return false;
  return load_le16(used_ + split::kUsedIdxOff, std::memory_order_acquire) == last_used_;
}

std::optional<uint64_t> SplitDriverQueue::detach_unused() {
  // Scan from where the last call stopped so taking back all n chains is O(size).
  for (uint32_t step = 0; step < size_; ++step) {
    const uint16_t h = static_cast<uint16_t>((detach_cursor_ + step) & mask_);
    if (!heads_[h].outstanding) continue;
    const uint64_t cookie = heads_[h].cookie;
    detach(h, 0);  // never returned: nothing the device wrote is claimed
    detach_cursor_ = static_cast<uint16_t>((h + 1) & mask_);
    return cookie;
  }
  return std::nullopt;
}

Result<std::unique_ptr<DriverQueue>> make_split_driver_queue(DmaOps& dma, const QueueConfig& config) {
  return VDMA_TRY(SplitDriverQueue::create(dma, config));
}

}  // namespace vdma
