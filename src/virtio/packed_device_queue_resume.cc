// PackedDeviceQueue: resuming a ring another device left with chains in
// flight (the vhost-user inflight log's side of the queue; see the header).
#include <cstring>

#include "packed_chain_walker.h"
#include "packed_ring_access.h"
#include "vdma/virtio/packed_device_queue.h"
#include "vdma/virtio/packed_layout.h"

namespace vdma {

Result<std::unique_ptr<PackedDeviceQueue>> PackedDeviceQueue::create_resumed(const DeviceMemory& mem,
                                                                             const QueueConfig& config,
                                                                             RingAddresses rings,
                                                                             uint16_t used_position,
                                                                             uint16_t inflight_slots) {
  if (inflight_slots > config.size) {
    return make_error(VirtioErrc::kInvalidConfig, "{} descriptors in flight in a packed queue of {}", inflight_slots,
                      config.size);
  }
  auto q = VDMA_TRY(create(mem, config, rings, used_position));
  // §2.8.6: every chain in flight occupies its descriptors from the used
  // position on, so the first descriptor not yet popped lies that many slots
  // further (wrapping flips the counter, §2.8.1).
  const uint32_t next = uint32_t{q->next_used_} + inflight_slots;
  if (next >= q->size_) {
    q->next_avail_ = static_cast<uint16_t>(next - q->size_);
    q->avail_wrap_ = !q->used_wrap_;
  } else {
    q->next_avail_ = static_cast<uint16_t>(next);
  }
  q->inflight_slots_ = inflight_slots;
  return q;
}

void PackedDeviceQueue::copy_descriptors(const DescriptorChain& chain, std::span<PackedDescCopy> out) const {
  VDMA_CHECK(desc_ != nullptr && chain.position < size_ && chain.ring_slots >= 1 && chain.ring_slots <= size_ &&
                 out.size() >= chain.ring_slots,
             "copy_descriptors of a chain pop() did not just return");
  uint16_t slot = chain.position;
  for (uint16_t k = 0; k < chain.ring_slots; ++k) {
    // The chain's descriptors belong to the device until it is pushed, so
    // the driver does not change them; the head's flags were read with
    // acquire ordering by pop(), which also orders these loads.
    const packed::DescValue d = packed::read_desc(packed::desc_at(desc_, slot));  // guest-controlled
    out[k] = PackedDescCopy{d.addr, d.len, d.id, d.flags};
    slot = static_cast<uint16_t>(slot + 1 == size_ ? 0 : slot + 1);
  }
}

Result<void> PackedDeviceQueue::walk_copy(std::span<const PackedDescCopy> copies, DescriptorChain& chain) {
  if (reset_reason_) return *reset_reason_;
  VDMA_CHECK(!copies.empty() && copies.size() <= size_ && copies.back().id < size_ &&
                 (copies.back().flags & packed::kDescFNext) == 0,
             "walk_copy of descriptors that are not one chain");
  // The walker reads ring descriptors; lay the copies out as a ring whose
  // chain starts at slot 0. It ends at the last copy (the only one without
  // NEXT), so it never reads past them.
  copy_ring_.resize(copies.size() * sizeof(packed::Desc));
  for (size_t k = 0; k < copies.size(); ++k) {
    std::byte* d = packed::desc_at(copy_ring_.data(), static_cast<uint16_t>(k));
    packed::write_desc_body(d, copies[k].addr, copies[k].len, copies[k].id);
    packed::store_flags_relaxed(d, copies[k].flags);
  }
  chain.clear();
  const ChainWalk r = walker_->walk(copy_ring_.data(), 0, copies.front().flags, chain);
  VDMA_CHECK(r == ChainWalk::kComplete && chain.ring_slots == copies.size(), "walk_copy did not walk its copies");
  chain.position = 0;
  chain.wrap = false;
  return ok();
}

Result<bool> PackedDeviceQueue::is_available_at(uint16_t position) {
  if (reset_reason_) return *reset_reason_;
  const uint16_t index = position & packed::kOffsetMask;
  if (index >= size_) {
    return make_error(VirtioErrc::kInvalidConfig, "position {:#x} names descriptor {}, beyond queue size {}", position,
                      index, size_);
  }
  if (!rings_current()) VDMA_TRY(translate_rings());
  // Acquire: pairs with the release store of whoever wrote these flags last.
  const uint16_t guest_flags = packed::load_flags_acquire(packed::desc_at(desc_, index));
  return packed::is_available(guest_flags, (position & packed::kWrapBit) != 0);
}

}  // namespace vdma
