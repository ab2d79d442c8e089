#include "vdma/virtio/packed_driver_queue.h"

#include <algorithm>
#include <cstring>

#include "barrier_switch.h"
#include "packed_ring_access.h"
#include "ring_factories.h"
#include "vdma/base/log.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/packed_layout.h"

namespace vdma {

using packed::DescValue;
using packed::EventValue;

namespace {

constexpr uint16_t kDefaultMaxIndirect = 64;

[[nodiscard]] DmaDirection direction(bool writable) noexcept {
  return writable ? DmaDirection::kFromDevice : DmaDirection::kToDevice;
}

}  // namespace

Result<std::unique_ptr<PackedDriverQueue>> PackedDriverQueue::create(DmaOps& dma, const QueueConfig& config) {
  if (config.size == 0 || config.size > packed::kMaxQueueSize) {
    return make_error(VirtioErrc::kInvalidConfig, "packed queue size {} is not in 1..{}", config.size,
                      packed::kMaxQueueSize);
  }
  const uint16_t size = config.size;
  uint16_t max_indirect = 0;
  if (has_feature(config.features, kFeatureIndirectDesc)) {
    max_indirect = config.max_indirect == 0 ? std::min<uint16_t>(size, kDefaultMaxIndirect)
                                            : std::min(config.max_indirect, size);
    // A table of one entry would only cost a slot's worth of extra memory.
    if (max_indirect < 2) max_indirect = 0;
  }

  // §2.8.10.1: the descriptor ring is 16-aligned and the event areas
  // 4-aligned; alloc_coherent memory is page-aligned, the ring a multiple of
  // 16 bytes long, so both areas can follow it in the same allocation.
  const CoherentBuffer ring = VDMA_TRY(dma.alloc_coherent(packed::desc_ring_size(size) + 2 * packed::kEventSize));
  VDMA_CHECK(ring.dma.is_aligned(packed::kDescAlign), "alloc_coherent returned memory that is not page-aligned");
  std::optional<CoherentBuffer> pool;
  if (max_indirect != 0) {
    auto p = dma.alloc_coherent(uint64_t{size} * max_indirect * sizeof(packed::Desc));
    if (!p) {
      if (auto f = dma.free_coherent(ring); !f) spdlog::error("packed driver queue: free ring: {}", f.error());
      return std::move(p).error().with_context("indirect table pool");
    }
    pool = *p;
  }
  return std::unique_ptr<PackedDriverQueue>(new PackedDriverQueue(dma, config, max_indirect, ring, pool));
}

PackedDriverQueue::PackedDriverQueue(DmaOps& dma, const QueueConfig& config, uint16_t max_indirect,
                                     CoherentBuffer ring, std::optional<CoherentBuffer> indirect_pool)
    : dma_(dma),
      size_(config.size),
      max_indirect_(max_indirect),
      event_idx_(has_feature(config.features, kFeatureEventIdx)),
      barrier_(has_feature(config.features, kFeatureOrderPlatform) ? BarrierKind::kStrong : BarrierKind::kWeak),
      notify_flush_(config.notify_flush),
      ring_(ring),
      indirect_pool_(indirect_pool),
      desc_(ring.host.data()),
      driver_event_(ring.host.data() + packed::desc_ring_size(config.size)),
      device_event_(driver_event_ + packed::kEventSize),
      num_free_(config.size),
      driver_event_flags_(packed::kEventFlagsEnable),  // the zeroed area reads ENABLE
      records_(config.size),
      indirect_records_(size_t{config.size} * max_indirect),
      buffers_(config.size) {
  for (uint16_t i = 0; i < size_; ++i) records_[i].next = static_cast<uint16_t>(i + 1);
}

PackedDriverQueue::~PackedDriverQueue() {
  if (auto r = dma_.free_coherent(ring_); !r) spdlog::error("packed driver queue: free ring: {}", r.error());
  if (indirect_pool_) {
    if (auto r = dma_.free_coherent(*indirect_pool_); !r) {
      spdlog::error("packed driver queue: free indirect pool: {}", r.error());
    }
  }
}

RingAddresses PackedDriverQueue::ring_addresses() const noexcept {
  const DmaAddr driver = ring_.dma.unchecked_add(packed::desc_ring_size(size_));
  return {ring_.dma, driver, driver.unchecked_add(packed::kEventSize)};
}

Error PackedDriverQueue::mark_broken(Error e) {
  spdlog::error("packed driver queue broken: {}", e);
  broken_ = e;
  return e;
}

Result<void> PackedDriverQueue::add(std::span<const DriverSegment> segs, uint64_t cookie) {
  if (broken_) return *broken_;
  if (segs.empty()) return make_error(VirtioErrc::kInvalidChain, "empty chain");
  if (segs.size() > size_) {
    return make_error(VirtioErrc::kInvalidChain, "chain of {} segments exceeds the queue size {}", segs.size(), size_);
  }
  bool seen_writable = false;
  for (size_t k = 0; k < segs.size(); ++k) {
    if (segs[k].len == 0) {
      return make_error(VirtioErrc::kInvalidChain, "segment {} ({}) has length 0", k, segs[k].addr);
    }
    const bool writable = segs[k].type == BufferType::kDeviceWritable;
    if (!writable && seen_writable) {
      return make_error(VirtioErrc::kInvalidChain, "segment {} ({}) is device-readable after a device-writable one",
                        k, segs[k].addr);
    }
    seen_writable |= writable;
  }
  const auto n = static_cast<uint16_t>(segs.size());
  const bool indirect = n > 1 && n <= max_indirect_;
  const uint16_t slots = indirect ? 1 : n;
  if (slots > num_free_) {
    return make_error(VirtioErrc::kNoSpace, "chain needs {} descriptors, {} free", slots, num_free_);
  }

  const uint16_t head = free_head_;
  const uint64_t writable_len = VDMA_TRY(map_segments(segs, indirect, head));

  // The chain's last id; its other ids stop counting as "returned", so a
  // device naming one of them is told it named something that is not a head.
  uint16_t last = head;
  if (indirect) {
    publish_indirect(head, n);
  } else {
    for (uint16_t k = 1; k < n; ++k) {
      last = records_[last].next;
      buffers_[last].returned = false;
    }
    publish_direct(head, n);
  }
  free_head_ = records_[last].next;
  num_free_ = static_cast<uint16_t>(num_free_ - slots);
  // Saturates: from a whole ring on, kick_prepare() notifies regardless.
  num_added_ = std::min<uint32_t>(num_added_ + slots, size_);
  buffers_[head] = BufferState{.cookie = cookie,
                               .writable_len = writable_len,
                               .ring_slots = slots,
                               .num_segments = n,
                               .last_id = last,
                               .indirect = indirect,
                               .outstanding = true,
                               .returned = false};
  return ok();
}

Result<uint64_t> PackedDriverQueue::map_segments(std::span<const DriverSegment> segs, bool indirect, uint16_t head) {
  uint64_t writable_len = 0;
  uint16_t id = head;  // walks the free list for direct chains
  for (size_t k = 0; k < segs.size(); ++k) {
    const DriverSegment& s = segs[k];
    SegmentRecord& r = indirect ? indirect_records_[size_t{head} * max_indirect_ + k] : records_[id];
    r.len = s.len;
    r.writable = s.type == BufferType::kDeviceWritable;
    r.premapped = s.premapped;
    if (s.premapped) {
      r.addr = s.dma;
    } else {
      // A device-writable buffer gets back only what the used length claims
      // (unmap_segments), so a bounce need not copy it in first.
      auto m = dma_.map(s.addr, s.len, direction(r.writable), r.writable ? DmaAttrs::kNoCopyIn : DmaAttrs::kNone);
      if (!m) {
        unmap_segments(indirect, head, static_cast<uint16_t>(k), 0);  // the device never saw the chain
        return std::move(m).error().with_context(fmt::format("segment {} ({} + len {:#x})", k, s.addr, s.len));
      }
      r.addr = *m;
    }
    if (r.writable) writable_len += s.len;
    if (!indirect) id = r.next;
  }
  return writable_len;
}

// One unmap_batch() per chain, in chain order, built from the records only
// (never from the ring): behind an IOMMU every page-table entry goes first
// and the chain costs one IOTLB invalidation instead of one per buffer.
void PackedDriverQueue::unmap_segments(bool indirect, uint16_t head, uint16_t count, uint64_t written) {
  if (!gather_unmaps_) unmaps_.clear();
  uint16_t id = head;
  for (uint16_t k = 0; k < count; ++k) {
    const SegmentRecord& r = indirect ? indirect_records_[size_t{head} * max_indirect_ + k] : records_[id];
    const uint64_t mine = r.writable ? std::min<uint64_t>(written, r.len) : 0;
    written -= mine;
    if (!r.premapped) {
      unmaps_.push_back({.addr = r.addr, .len = r.len, .dir = direction(r.writable), .written = mine});
    }
    if (!indirect) id = r.next;
  }
  // Inside get_used_batch() they are unmapped there, with the whole batch.
  if (gather_unmaps_ || unmaps_.empty()) return;
  // The mappings were made by us with exactly these values; a failure is a
  // DmaOps bookkeeping fault that the queue can only report. The chain's
  // other buffers are unmapped all the same.
  if (auto u = dma_.unmap_batch(unmaps_); !u) {
    spdlog::error("packed driver queue: unmap of buffer {} ({} segments): {}", head, count, u.error());
  }
}

Result<size_t> PackedDriverQueue::get_used_batch(std::span<UsedBuffer> out) {
  unmaps_.clear();
  gather_unmaps_ = true;
  size_t n = 0;
  std::optional<Error> fault;
  while (n < out.size()) {
    auto u = get_used();
    if (!u) {
      fault = std::move(u).error();
      break;
    }
    if (!*u) break;
    out[n++] = **u;
  }
  gather_unmaps_ = false;
  // The buffers taken are done whatever the device did next: unmap them.
  if (!unmaps_.empty()) {
    if (auto u = dma_.unmap_batch(unmaps_); !u) {
      spdlog::error("packed driver queue: unmap of {} used buffers: {}", n, u.error());
    }
  }
  if (fault && n == 0) return std::move(*fault);
  return n;
}

// §2.8.21.1: write every descriptor of the chain, each with the AVAIL/USED
// bits of the wrap counter at its own slot, and the head's flags last.
void PackedDriverQueue::publish_direct(uint16_t head, uint16_t n) {
  uint16_t slot = next_avail_;
  bool wrap = avail_wrap_;
  uint16_t head_flags = 0;
  uint16_t id = head;
  for (uint16_t k = 0; k < n; ++k) {
    const SegmentRecord& r = records_[id];
    const uint16_t flags = static_cast<uint16_t>(packed::avail_flag_bits(wrap) |
                                                 (r.writable ? packed::kDescFWrite : 0) |
                                                 (k + 1 < n ? packed::kDescFNext : 0));
    std::byte* d = packed::desc_at(desc_, slot);
    // §2.8.6: the buffer id matters only in the last descriptor; writing it
    // in every one costs nothing and keeps the ring readable in a dump.
    packed::write_desc_body(d, r.addr.value(), r.len, head);
    if (k == 0) {
      head_flags = flags;
    } else {
      packed::store_flags_relaxed(d, flags);
    }
    if (++slot == size_) {
      slot = 0;
      wrap = !wrap;
    }
    id = r.next;
  }
  // virtio 1.2 §2.8.21.1.1: the device may see the head flags only after every
  // other field of the chain; the write barrier orders those stores before
  // the head's flags (release store, plus sfence under ORDER_PLATFORM).
  publish_flags(packed::desc_at(desc_, next_avail_), head_flags);
  next_avail_ = slot;
  avail_wrap_ = wrap;
}

// §2.8.7: one ring descriptor with INDIRECT pointing at the id's table.
void PackedDriverQueue::publish_indirect(uint16_t head, uint16_t n) {
  const size_t first = size_t{head} * max_indirect_;
  std::byte* table = indirect_pool_->host.data() + first * sizeof(packed::Desc);
  for (uint16_t k = 0; k < n; ++k) {
    const SegmentRecord& r = indirect_records_[first + k];
    // §2.8.19: WRITE is the only valid flag in an indirect table; the id is unused.
    std::byte* entry = table + size_t{k} * sizeof(packed::Desc);
    packed::write_desc_body(entry, r.addr.value(), r.len, 0);
    packed::store_le_field(entry + offsetof(packed::Desc, flags), r.writable ? packed::kDescFWrite : uint16_t{0});
  }
  std::byte* slot = packed::desc_at(desc_, next_avail_);
  packed::write_desc_body(slot, indirect_pool_->dma.value() + first * sizeof(packed::Desc),
                          static_cast<uint32_t>(n * sizeof(packed::Desc)), head);
  // §2.8.21.1.1: the table and the descriptor body must be visible before the
  // flags that make the descriptor available.
  publish_flags(slot, static_cast<uint16_t>(packed::avail_flag_bits(avail_wrap_) | packed::kDescFIndirect));
  if (++next_avail_ == size_) {
    next_avail_ = 0;
    avail_wrap_ = !avail_wrap_;
  }
}

void PackedDriverQueue::publish_flags(std::byte* desc, uint16_t flags) noexcept {
  if constexpr (barrier_switch::kDropPackedAvailPublish) {
    packed::store_flags_relaxed(desc, flags);  // test build: the barrier is gone (barrier_switch.h)
  } else {
    virtio_wmb(barrier_);
    if (barrier_ == BarrierKind::kStrong) ++platform_barriers_;
    packed::store_flags_release(desc, flags);
  }
}

void PackedDriverQueue::full_barrier() noexcept {
  virtio_mb(barrier_);
  if (barrier_ == BarrierKind::kStrong) ++platform_barriers_;
}

bool PackedDriverQueue::kick_prepare() {
  const bool notify = needs_notification();
  // The platform's posted-write flush sits between the last ring store and
  // the notification, once per notification (posted_write_flush.h).
  if (notify && notify_flush_ != nullptr) notify_flush_->flush();
  return notify;
}

bool PackedDriverQueue::needs_notification() {
  const uint32_t added = num_added_;
  num_added_ = 0;
  if (added == 0 || broken_) return false;
  // §2.8.21.2: our descriptor stores must be visible before we read the
  // device's event suppression; otherwise the device could decide to sleep
  // on a ring it saw empty while we read a stale DISABLE and never notify.
  full_barrier();
  const EventValue ev = packed::load_event(device_event_);  // device-controlled
  if (ev.flags == packed::kEventFlagsDisable) return false;
  // ENABLE, a reserved value, or DESC without EVENT_IDX: notify (harmless).
  if (ev.flags != packed::kEventFlagsDesc || !event_idx_) return true;
  // A lap or more since the last kick: the event index is ambiguous.
  if (added >= size_) return true;
  return packed::need_event(ev.off_wrap, avail_wrap_, size_, next_avail_, static_cast<uint16_t>(added));
}

Result<std::optional<UsedBuffer>> PackedDriverQueue::get_used() {
  if (broken_) return *broken_;
  std::byte* d = packed::desc_at(desc_, last_used_);
  uint16_t guest_flags = 0;  // device-controlled
  if constexpr (barrier_switch::kDropPackedUsedConsume) {
    // Test build: the barrier is gone (barrier_switch.h).
    guest_flags = from_le(std::atomic_ref<uint16_t>(*packed::flags_ptr(d)).load(std::memory_order_relaxed));
  } else {
    guest_flags = packed::load_flags_acquire(d);
  }
  if (!packed::is_used(guest_flags, used_wrap_)) return std::optional<UsedBuffer>();
  // §2.8.22: id and len are read only after the flags said "used" (the
  // acquire load above); ORDER_PLATFORM adds the platform read barrier.
  if (barrier_ == BarrierKind::kStrong && !barrier_switch::kDropPackedUsedConsume) {
    virtio_rmb(barrier_);
    ++platform_barriers_;
  }
  const DescValue used = packed::read_desc(d);  // device-controlled
  const uint16_t guest_id = used.id;
  const uint32_t guest_len = used.len;
  if (guest_id >= size_) {
    return mark_broken(Error(VirtioErrc::kBroken,
                             fmt::format("device returned used id {} at descriptor {}, beyond the queue size {}",
                                         guest_id, last_used_, size_)));
  }
  BufferState& st = buffers_[guest_id];
  if (!st.outstanding) {
    if (st.returned) {
      return mark_broken(Error(VirtioErrc::kBroken,
                               fmt::format("device returned used id {} at descriptor {} twice", guest_id, last_used_)));
    }
    return mark_broken(Error(VirtioErrc::kBroken,
                             fmt::format("device returned used id {} at descriptor {}, which is not the head of an "
                                         "outstanding buffer",
                                         guest_id, last_used_)));
  }
  const uint32_t next = uint32_t{last_used_} + st.ring_slots;
  if (next >= size_) {
    last_used_ = static_cast<uint16_t>(next - size_);
    used_wrap_ = !used_wrap_;
  } else {
    last_used_ = static_cast<uint16_t>(next);
  }
  const UsedBuffer out{st.cookie, static_cast<uint32_t>(std::min<uint64_t>(guest_len, st.writable_len))};
  release(guest_id, out.len);
  if (driver_event_flags_ == packed::kEventFlagsDesc) {
    // §2.8.10: move the event to the next used position; the full barrier makes
    // it visible before the caller polls again, as Linux's virtio_store_mb.
    packed::store_event_off_wrap(driver_event_, packed::encode_position(last_used_, used_wrap_));
    full_barrier();
  }
  return std::optional<UsedBuffer>(out);
}

void PackedDriverQueue::release(uint16_t head, uint64_t written) {
  BufferState& st = buffers_[head];
  unmap_segments(st.indirect, head, st.num_segments, written);
  records_[st.last_id].next = free_head_;
  free_head_ = head;
  num_free_ = static_cast<uint16_t>(num_free_ + st.ring_slots);
  st.outstanding = false;
  st.returned = true;
}

void PackedDriverQueue::disable_callbacks() {
  if (driver_event_flags_ == packed::kEventFlagsDisable) return;
  driver_event_flags_ = packed::kEventFlagsDisable;
  packed::store_event_flags(driver_event_, driver_event_flags_);
}

bool PackedDriverQueue::enable_callbacks() {
  if (event_idx_) {
    packed::store_event_off_wrap(driver_event_, packed::encode_position(last_used_, used_wrap_));
    // §2.8.10: the event offset must be visible before the flags that make
    // the device look at it.
    virtio_wmb(barrier_);
    if (barrier_ == BarrierKind::kStrong) ++platform_barriers_;
  }
  const uint16_t want = event_idx_ ? packed::kEventFlagsDesc : packed::kEventFlagsEnable;
  if (driver_event_flags_ != want) {
    driver_event_flags_ = want;
    packed::store_event_flags(driver_event_, want);
  }
  // §2.8.22: the enable must be visible before we look for used buffers;
  // otherwise a buffer used in between is neither seen nor notified.
  full_barrier();
  if (broken_) return false;
  return !packed::is_used(packed::load_flags_acquire(packed::desc_at(desc_, last_used_)), used_wrap_);
}

std::optional<uint64_t> PackedDriverQueue::detach_unused() {
  for (uint32_t scanned = 0; scanned < size_; ++scanned) {
    const uint16_t id = detach_cursor_;
    detach_cursor_ = static_cast<uint16_t>(detach_cursor_ + 1 == size_ ? 0 : detach_cursor_ + 1);
    if (!buffers_[id].outstanding) continue;
    const uint64_t cookie = buffers_[id].cookie;
    release(id, 0);  // never returned: nothing the device wrote is claimed
    return cookie;
  }
  return std::nullopt;
}

Result<std::unique_ptr<DriverQueue>> make_packed_driver_queue(DmaOps& dma, const QueueConfig& config) {
  return VDMA_TRY(PackedDriverQueue::create(dma, config));
}

}  // namespace vdma
