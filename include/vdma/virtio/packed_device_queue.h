// PackedDeviceQueue: the device side of a packed virtqueue (virtio 1.2 §2.8).
//
//   auto q = *PackedDeviceQueue::create(dev_mem, {.size = 256, .features = f}, rings);
//   DescriptorChain chain;
//   while (true) {
//     auto got = q->pop(chain);
//     if (!got) break;                     // kNeedsReset (sticky) or a ring-area MemErrc
//     if (!*got) break;
//     ... chain.readable / chain.writable, or chain.error ...
//     VDMA_TRY(q->push_used(chain, written));   // any order: out-of-order completion is fine
//   }
//   if (q->should_notify()) signal_driver();
//
// Everything in device_queue.h holds; this header adds what is specific to the
// packed format.
//
// Ring areas: the descriptor ring (needs read and write access, 16-aligned),
// the driver event suppression area (read, 4-aligned) and the device event
// suppression area (write, 4-aligned) are translated once with
// DeviceMemory::translate_ring() and the host pointers cached. When
// mem.ring_epoch() is non-null, every operation first compares it (acquire)
// with the value seen at the last translation and translates again when it
// moved; a failed translation is returned as its MemErrc and retried on the
// next call.
//
// What moves the queue to NEEDS_RESET (the position of the next chain, or the
// id to return, is unknown):
//   - a chain whose `size` consecutive descriptors all carry NEXT;
//   - a buffer id (from the chain's last descriptor) >= size;
//   - a chain made available over descriptors the device still holds
//     (more than `size` descriptors outstanding).
// Everything else wrong with a chain is chain.error (VirtioErrc::kBadDescriptor
// naming the descriptor and the rule, or the MemErrc of a failed translation
// with fault_addr/fault_len/fault_access): INDIRECT without INDIRECT_DESC,
// INDIRECT with NEXT, an indirect table whose length is zero or not a multiple
// of 16 or has more than `size` entries, a table not 16-aligned, INDIRECT
// inside a table, a device-readable buffer after a device-writable one, an
// address + length that wraps. Such a chain has no fragments; return it with
// push_used(chain, 0).
//
// Positions: chain.position / chain.wrap give the ring index and wrap counter
// of the chain's first descriptor, chain.ring_slots the descriptors it spans.
// avail_position() is next_avail | wrap << 15 (vhost-user GET_VRING_BASE for
// packed rings); create() restores it verbatim, and the used position with it
// (every chain before it counts as returned). A fresh ring is kFreshPosition:
// descriptor 0 with wrap counter 1 (§2.8.1).
//
// make_device_queue(RingFormat::kPacked, ...) treats its default position 0
// as "fresh" (what every caller of the default means), not as descriptor 0
// with wrap counter 0; a caller restoring exactly that position must use
// PackedDeviceQueue::create(), which takes positions verbatim.
//
// Thread safety: none; one worker owns a queue.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/mem/device_memory.h"
#include "vdma/virtio/barriers.h"
#include "vdma/virtio/device_queue.h"

namespace vdma {

class PackedChainWalker;  // src/virtio/packed_chain_walker.h

// One ring descriptor as the driver wrote it (§2.8.13), in host byte order:
// a copy kept outside the ring, e.g. in a vhost-user inflight log.
struct PackedDescCopy {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t id = 0;
  uint16_t flags = 0;
};

class PackedDeviceQueue final : public DeviceQueue {
 public:
  static constexpr uint16_t kFreshPosition = 0x8000;

  // Errors: VirtioErrc::kInvalidConfig (size 0 or > 32768, misaligned ring
  // address, avail_position beyond the ring, a ring area whose host mapping
  // is misaligned), MemErrc when a ring area cannot be translated.
  [[nodiscard]] static Result<std::unique_ptr<PackedDeviceQueue>> create(const DeviceMemory& mem,
                                                                         const QueueConfig& config,
                                                                         RingAddresses rings,
                                                                         uint16_t avail_position = kFreshPosition);

  PackedDeviceQueue(const PackedDeviceQueue&) = delete;
  PackedDeviceQueue& operator=(const PackedDeviceQueue&) = delete;
  ~PackedDeviceQueue() override;

  [[nodiscard]] RingFormat format() const noexcept override { return RingFormat::kPacked; }
  [[nodiscard]] uint16_t size() const noexcept override { return size_; }

  [[nodiscard]] Result<bool> pop(DescriptorChain& chain) override;
  // Keeps chain.id / ring_slots / position / wrap from pop(); a chain whose
  // descriptors the driver changed so that they no longer match gets a
  // kBadDescriptor error instead.
  [[nodiscard]] Result<void> rewalk(DescriptorChain& chain) override;
  // Precondition: `chain` came from pop() on this queue and was not pushed yet.
  [[nodiscard]] Result<void> push_used(const DescriptorChain& chain, uint32_t written) override;
  // False when nothing was pushed since the last call; true when the driver
  // area cannot be translated (a spurious notification is harmless).
  [[nodiscard]] bool should_notify() override;
  void disable_notifications() override;
  // Also false in NEEDS_RESET or when the ring cannot be translated, so the
  // caller polls and sees the error.
  [[nodiscard]] bool enable_notifications() override;
  [[nodiscard]] DeviceQueueState state() const noexcept override {
    return reset_reason_ ? DeviceQueueState::kNeedsReset : DeviceQueueState::kRunning;
  }
  [[nodiscard]] const Error* needs_reset_reason() const noexcept override {
    return reset_reason_ ? &*reset_reason_ : nullptr;
  }
  [[nodiscard]] uint16_t avail_position() const noexcept override;

  // --- Resuming after another device (vhost-user.rst "Inflight I/O tracking") ---
  //
  // A device that dies with chains in flight leaves them between its used
  // position and its avail position; after them, used elements of chains it
  // completed out of order may already cover some of their ring slots, so a
  // chain in flight is walked again from copies of its descriptors.

  // A queue whose next used element goes to `used_position` (index | wrap
  // << 15) and whose device still holds `inflight_slots` ring descriptors:
  // popping continues at used_position + inflight_slots, and those chains are
  // returned with push_used() after walk_copy().
  // Errors: those of create(); VirtioErrc::kInvalidConfig when inflight_slots
  // exceeds the queue size.
  [[nodiscard]] static Result<std::unique_ptr<PackedDeviceQueue>> create_resumed(const DeviceMemory& mem,
                                                                                 const QueueConfig& config,
                                                                                 RingAddresses rings,
                                                                                 uint16_t used_position,
                                                                                 uint16_t inflight_slots);

  // Copies the ring descriptors of `chain` into out[0, chain.ring_slots), in
  // ring order and as the driver wrote them.
  // Preconditions: the last call on this queue was the pop() that returned
  // `chain` (so the ring mapping it used is still in place: in IOMMU mode,
  // within the same IOTLB read section), and out.size() >= chain.ring_slots.
  void copy_descriptors(const DescriptorChain& chain, std::span<PackedDescCopy> out) const;

  // Walks a chain from copies of its ring descriptors, translating its
  // buffers like pop() (problems become chain.error). Sets chain.id (the last
  // copy's id) and chain.ring_slots (copies.size()); chain.position / wrap
  // are unknown and set to 0 / false. Precondition: copies are 1..size()
  // descriptors, all but the last with NEXT, the last without, its id below
  // size() (the caller validated its log). Errors: VirtioErrc::kNeedsReset.
  [[nodiscard]] Result<void> walk_copy(std::span<const PackedDescCopy> copies, DescriptorChain& chain);

  // Whether the descriptor at `position` (index | wrap << 15) is marked
  // available for that wrap counter (§2.8.1: AVAIL = wrap, USED = !wrap), as
  // opposed to holding a used element or a later lap's descriptor.
  // Errors: VirtioErrc::kInvalidConfig (index >= size), MemErrc when the
  // descriptor ring cannot be translated, VirtioErrc::kNeedsReset.
  [[nodiscard]] Result<bool> is_available_at(uint16_t position);

 private:
  PackedDeviceQueue(const DeviceMemory& mem, const QueueConfig& config, RingAddresses rings, uint16_t next_avail,
                    bool wrap);

  // Ring translation cache (device_memory.h): whether the cached ring
  // pointers may be used. RegionTable has no epoch, so the usual cost is one
  // test; an IOTLB's epoch is loaded with acquire ordering and compared.
  [[nodiscard]] bool rings_current() const noexcept {
    return desc_ != nullptr && (epoch_ == nullptr || epoch_->load(std::memory_order_acquire) == seen_epoch_);
  }
  // Translates the ring areas again; on failure the pointers stay null so
  // the next call retries.
  [[nodiscard]] Result<void> translate_rings();
  [[nodiscard]] Error enter_needs_reset(Error e);

  const DeviceMemory& mem_;
  const uint16_t size_;
  const bool event_idx_;
  const BarrierKind barrier_;
  const RingAddresses rings_;
  const std::atomic<uint64_t>* const epoch_;  // null: translations never change
  uint64_t seen_epoch_ = 0;
  std::byte* desc_ = nullptr;  // null until translated (or after a failed re-translation)
  std::byte* driver_event_ = nullptr;
  std::byte* device_event_ = nullptr;

  uint16_t next_avail_;
  bool avail_wrap_;
  uint16_t next_used_;
  bool used_wrap_;
  uint32_t inflight_slots_ = 0;     // popped, not yet pushed
  uint32_t used_since_notify_ = 0;  // slots pushed since should_notify()
  uint16_t device_event_flags_;     // what we last wrote to the device area's flags
  std::optional<Error> reset_reason_;
  std::unique_ptr<PackedChainWalker> walker_;
  std::vector<std::byte> copy_ring_;  // walk_copy(): the copies laid out as ring descriptors
};

}  // namespace vdma
