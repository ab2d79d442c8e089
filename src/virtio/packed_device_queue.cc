#include "vdma/virtio/packed_device_queue.h"

#include <algorithm>

#include "packed_chain_walker.h"
#include "packed_ring_access.h"
#include "ring_factories.h"
#include "vdma/base/log.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/packed_layout.h"

namespace vdma {

namespace {

// The host view must allow the atomic accesses made through it.
[[nodiscard]] bool host_aligned(const std::byte* p, size_t align) noexcept {
  return reinterpret_cast<uintptr_t>(p) % align == 0;
}

}  // namespace

Result<std::unique_ptr<PackedDeviceQueue>> PackedDeviceQueue::create(const DeviceMemory& mem,
                                                                     const QueueConfig& config, RingAddresses rings,
                                                                     uint16_t avail_position) {
  if (config.size == 0 || config.size > packed::kMaxQueueSize) {
    return make_error(VirtioErrc::kInvalidConfig, "packed queue size {} is not in 1..{}", config.size,
                      packed::kMaxQueueSize);
  }
  // §2.8.10.1: descriptor ring 16-aligned, event suppression areas 4-aligned.
  if (!rings.desc.is_aligned(packed::kDescAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "packed descriptor ring {} is not 16-byte aligned", rings.desc);
  }
  if (!rings.driver.is_aligned(packed::kEventAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "driver event suppression area {} is not 4-byte aligned",
                      rings.driver);
  }
  if (!rings.device.is_aligned(packed::kEventAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "device event suppression area {} is not 4-byte aligned",
                      rings.device);
  }
  const uint16_t index = avail_position & packed::kOffsetMask;
  if (index >= config.size) {
    return make_error(VirtioErrc::kInvalidConfig, "avail position {:#x} names descriptor {}, beyond queue size {}",
                      avail_position, index, config.size);
  }
  std::unique_ptr<PackedDeviceQueue> q(
      new PackedDeviceQueue(mem, config, rings, index, (avail_position & packed::kWrapBit) != 0));
  VDMA_TRY(q->translate_rings());
  // Start from ENABLE whatever an earlier device left in the area, so the
  // shadow matches memory.
  packed::store_event_flags(q->device_event_, packed::kEventFlagsEnable);
  return q;
}

PackedDeviceQueue::PackedDeviceQueue(const DeviceMemory& mem, const QueueConfig& config, RingAddresses rings,
                                     uint16_t next_avail, bool wrap)
    : mem_(mem),
      size_(config.size),
      event_idx_(has_feature(config.features, kFeatureEventIdx)),
      barrier_(has_feature(config.features, kFeatureOrderPlatform) ? BarrierKind::kStrong : BarrierKind::kWeak),
      rings_(rings),
      epoch_(mem.ring_epoch()),
      next_avail_(next_avail),
      avail_wrap_(wrap),
      next_used_(next_avail),
      used_wrap_(wrap),
      device_event_flags_(packed::kEventFlagsEnable),
      walker_(std::make_unique<PackedChainWalker>(mem, config.size,
                                                  has_feature(config.features, kFeatureIndirectDesc))) {}

PackedDeviceQueue::~PackedDeviceQueue() = default;

Result<void> PackedDeviceQueue::translate_rings() {
  desc_ = driver_event_ = device_event_ = nullptr;
  // Read the epoch before translating: an invalidation racing with the
  // translation then moves it past the value we keep, forcing a retry.
  const uint64_t epoch = epoch_ != nullptr ? epoch_->load(std::memory_order_acquire) : 0;
  auto desc = mem_.translate_ring(rings_.desc, packed::desc_ring_size(size_), Access::kReadWrite);
  if (!desc) return std::move(desc).error().with_context("packed descriptor ring");
  auto driver = mem_.translate_ring(rings_.driver, packed::kEventSize, Access::kRead);
  if (!driver) return std::move(driver).error().with_context("driver event suppression area");
  auto device = mem_.translate_ring(rings_.device, packed::kEventSize, Access::kWrite);
  if (!device) return std::move(device).error().with_context("device event suppression area");
  if (!host_aligned(desc->data(), packed::kDescAlign) || !host_aligned(driver->data(), packed::kEventAlign) ||
      !host_aligned(device->data(), packed::kEventAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "ring areas {} / {} / {} map to misaligned host memory", rings_.desc,
                      rings_.driver, rings_.device);
  }
  desc_ = desc->data();
  driver_event_ = driver->data();
  device_event_ = device->data();
  seen_epoch_ = epoch;
  return ok();
}

Error PackedDeviceQueue::enter_needs_reset(Error e) {
  spdlog::error("packed device queue needs reset: {}", e);
  reset_reason_ = e;
  return e;
}

Result<bool> PackedDeviceQueue::pop(DescriptorChain& chain) {
  if (reset_reason_) return *reset_reason_;
  if (!rings_current()) VDMA_TRY(translate_rings());
  chain.clear();
  std::byte* head = packed::desc_at(desc_, next_avail_);
  // §2.8.21.1: the driver publishes a chain by writing its first descriptor's
  // flags last with release semantics; this acquire load pairs with it so the
  // rest of the chain is visible once the flags say "available".
  const uint16_t guest_flags = packed::load_flags_acquire(head);
  if (!packed::is_available(guest_flags, avail_wrap_)) return false;
  // ORDER_PLATFORM: the platform read barrier between flags and descriptor body.
  if (barrier_ == BarrierKind::kStrong) virtio_rmb(barrier_);

  switch (walker_->walk(desc_, next_avail_, guest_flags, chain)) {
    case ChainWalk::kNoEnd:
      return enter_needs_reset(Error(VirtioErrc::kNeedsReset,
                                     fmt::format("packed ring: chain at descriptor {} (wrap {}) does not end within "
                                                 "{} descriptors",
                                                 next_avail_, int{avail_wrap_}, size_)));
    case ChainWalk::kIdOutOfRange:
      return enter_needs_reset(Error(VirtioErrc::kNeedsReset,
                                     fmt::format("packed ring: chain at descriptor {} has buffer id {}, beyond queue "
                                                 "size {}",
                                                 next_avail_, chain.id, size_)));
    case ChainWalk::kComplete:
      break;
  }
  if (inflight_slots_ + chain.ring_slots > size_) {
    return enter_needs_reset(Error(VirtioErrc::kNeedsReset,
                                   fmt::format("packed ring: chain of {} descriptors made available at descriptor {} "
                                               "while the device still holds {} of {}",
                                               chain.ring_slots, next_avail_, inflight_slots_, size_)));
  }
  chain.position = next_avail_;
  chain.wrap = avail_wrap_;
  inflight_slots_ += chain.ring_slots;
  const uint32_t next = uint32_t{next_avail_} + chain.ring_slots;
  if (next >= size_) {
    next_avail_ = static_cast<uint16_t>(next - size_);
    avail_wrap_ = !avail_wrap_;
  } else {
    next_avail_ = static_cast<uint16_t>(next);
  }
  // §2.8.10 with EVENT_IDX: keep asking for a kick at the next unread
  // descriptor (no ordering needed: a stale value only costs a spurious or a
  // missed-while-polling kick, and enable_notifications() re-checks the ring).
  if (device_event_flags_ == packed::kEventFlagsDesc) {
    packed::store_event_off_wrap(device_event_, packed::encode_position(next_avail_, avail_wrap_));
  }
  return true;
}

Result<void> PackedDeviceQueue::rewalk(DescriptorChain& chain) {
  if (reset_reason_) return *reset_reason_;
  VDMA_CHECK(chain.position < size_ && chain.ring_slots >= 1 && chain.ring_slots <= size_,
             "rewalk of a chain that pop() did not return");
  if (!rings_current()) VDMA_TRY(translate_rings());
  const uint16_t id = chain.id;
  const uint16_t slots = chain.ring_slots;
  const uint16_t position = chain.position;
  const bool wrap = chain.wrap;
  chain.clear();
  // The descriptors still belong to the device (not used yet), so the driver
  // must not have changed them; the acquire load is for symmetry with pop().
  const uint16_t guest_flags = packed::load_flags_acquire(packed::desc_at(desc_, position));
  const bool same = walker_->walk(desc_, position, guest_flags, chain) == ChainWalk::kComplete && chain.id == id &&
                    chain.ring_slots == slots;
  chain.id = id;
  chain.ring_slots = slots;
  chain.position = position;
  chain.wrap = wrap;
  if (!same) {
    chain.readable.clear();
    chain.writable.clear();
    chain.readable_len = chain.writable_len = 0;
    chain.error = Error(VirtioErrc::kBadDescriptor,
                        fmt::format("descriptor {}: driver changed the chain while the device held it (id {} over {} "
                                    "descriptors when popped)",
                                    position, id, slots));
  }
  return ok();
}

Result<void> PackedDeviceQueue::push_used(const DescriptorChain& chain, uint32_t written) {
  if (reset_reason_) return *reset_reason_;
  VDMA_CHECK(chain.id < size_ && chain.ring_slots >= 1 && chain.ring_slots <= inflight_slots_,
             "push_used of a chain that pop() did not return");
  if (!rings_current()) VDMA_TRY(translate_rings());
  const auto len = static_cast<uint32_t>(std::min<uint64_t>(written, chain.writable_len));
  std::byte* d = packed::desc_at(desc_, next_used_);
  packed::write_used_body(d, chain.id, len);
  // virtio 1.2 §2.8.22: id and len must be visible before the flags that mark
  // the descriptor used (release store; sfence under ORDER_PLATFORM).
  virtio_wmb(barrier_);
  packed::store_flags_release(d, packed::used_flag_bits(used_wrap_));
  // §2.8.6: the used position skips every descriptor of the chain.
  const uint32_t next = uint32_t{next_used_} + chain.ring_slots;
  if (next >= size_) {
    next_used_ = static_cast<uint16_t>(next - size_);
    used_wrap_ = !used_wrap_;
  } else {
    next_used_ = static_cast<uint16_t>(next);
  }
  inflight_slots_ -= chain.ring_slots;
  // Saturates: from a whole ring on, should_notify() notifies regardless.
  used_since_notify_ = std::min<uint32_t>(used_since_notify_ + chain.ring_slots, size_);
  return ok();
}

bool PackedDeviceQueue::should_notify() {
  const uint32_t added = used_since_notify_;
  used_since_notify_ = 0;
  if (added == 0 || reset_reason_) return false;
  if (!rings_current() && !translate_rings()) return true;
  // §2.8.10: our used flags must be visible before we read the driver's event
  // suppression; otherwise the driver could re-enable after reading a stale
  // ring while we read its old DISABLE, and the used buffer goes unnoticed.
  virtio_mb(barrier_);
  const packed::EventValue ev = packed::load_event(driver_event_);  // guest-controlled
  if (ev.flags == packed::kEventFlagsDisable) return false;
  // ENABLE, a reserved value, or DESC without EVENT_IDX: notify.
  if (ev.flags != packed::kEventFlagsDesc || !event_idx_) return true;
  if (added >= size_) return true;
  return packed::need_event(ev.off_wrap, used_wrap_, size_, next_used_, static_cast<uint16_t>(added));
}

void PackedDeviceQueue::disable_notifications() {
  if (device_event_flags_ == packed::kEventFlagsDisable) return;
  if (!rings_current() && !translate_rings()) return;
  device_event_flags_ = packed::kEventFlagsDisable;
  packed::store_event_flags(device_event_, device_event_flags_);
}

bool PackedDeviceQueue::enable_notifications() {
  if (reset_reason_) return false;
  if (!rings_current() && !translate_rings()) return false;
  if (event_idx_) {
    packed::store_event_off_wrap(device_event_, packed::encode_position(next_avail_, avail_wrap_));
    // §2.8.10: the offset must be visible before the flags that select it.
    virtio_wmb(barrier_);
  }
  const uint16_t want = event_idx_ ? packed::kEventFlagsDesc : packed::kEventFlagsEnable;
  if (device_event_flags_ != want) {
    device_event_flags_ = want;
    packed::store_event_flags(device_event_, want);
  }
  // §2.8.21.2: the enable must be visible before we look at the ring again, or
  // a chain published in between is neither popped nor kicked.
  virtio_mb(barrier_);
  return !packed::is_available(packed::load_flags_acquire(packed::desc_at(desc_, next_avail_)), avail_wrap_);
}

uint16_t PackedDeviceQueue::avail_position() const noexcept {
  return packed::encode_position(next_avail_, avail_wrap_);
}

Result<std::unique_ptr<DeviceQueue>> make_packed_device_queue(const DeviceMemory& mem, const QueueConfig& config,
                                                              RingAddresses rings, uint16_t avail_position) {
  // make_device_queue()'s default 0 means a ring no driver has used yet; for
  // the packed format that is descriptor 0 with wrap counter 1 (see the header).
  const uint16_t position = avail_position == 0 ? PackedDeviceQueue::kFreshPosition : avail_position;
  return VDMA_TRY(PackedDeviceQueue::create(mem, config, rings, position));
}

}  // namespace vdma
