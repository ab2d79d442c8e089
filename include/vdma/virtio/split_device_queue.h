// SplitDeviceQueue: the device side of a split virtqueue (virtio 1.2 §2.7),
// what a back-end does, behind DeviceQueue.
//
//   auto q = *SplitDeviceQueue::create(dev_mem, {.size = 256, .features = f}, rings);
//   DescriptorChain chain;                    // reused: no allocation once warm
//   q->disable_notifications();
//   do {
//     while (true) {
//       auto got = q->pop(chain);
//       if (!got) return stop_queue(got.error());   // kNeedsReset, or a ring area unmapped
//       if (!*got) break;
//       if (chain.error) { (void)q->push_used(chain, 0); continue; }
//       (void)q->push_used(chain, serve(chain));
//     }
//   } while (!q->enable_notifications());
//   if (q->should_notify()) signal_driver();
//
// Everything DeviceQueue documents holds; this header adds what is specific
// to the split format.
//
// Ring areas: create() checks their alignment (§2.7: 16, 2 and 4 bytes) and
// translates each once with DeviceMemory::translate_ring(): the descriptor
// table and the avail ring for reading, the used ring for reading and writing
// (its idx is read once at create(), to resume where a previous owner of the
// queue stopped, as vhost does). When the memory has a ring epoch (an IOTLB),
// every pop/push/notification call compares it with the value seen at the
// last translation and translates again when it moved; with a RegionTable
// there is no epoch and no cost. A failed re-translation is returned as its
// MemErrc and the queue works again once the mapping is back.
//
// Chains: pop() reads the avail idx once, then the head once, then each
// descriptor once into locals, and validates before use:
//   - queue-level (NEEDS_RESET, sticky): avail idx more than the queue size
//     ahead of the last popped entry; a head index >= the queue size;
//   - per chain (chain.error = VirtioErrc::kBadDescriptor, chain.id = head):
//     more descriptors than the table holds (a loop), next >= the table size,
//     INDIRECT without INDIRECT_DESC, INDIRECT together with NEXT, an indirect
//     table whose length is 0, not a multiple of 16 or above the queue size,
//     or whose address is not 16-byte aligned, INDIRECT inside an indirect
//     table, a device-readable descriptor after a device-writable one, and
//     addr + len wrapping past 2^64;
//   - per chain, from DeviceMemory::translate: MemErrc (kNotMapped,
//     kPermissionDenied), with chain.fault_addr/len/access naming the range.
// A chain with an error has no fragments; return it with push_used(chain, 0)
// or, after a MemErrc was resolved, walk it again with rewalk().
// Readable descriptors are translated with Access::kRead, writable ones with
// Access::kWrite; no memory is touched except through what translate() gave.
//
// DescriptorChain fields for split: id = head index, position = the avail
// ring slot the head was taken from (avail index % size), ring_slots = ring
// descriptors walked (1 for a lone indirect descriptor).
//
// Thread safety: none; one worker owns a queue (DeviceQueue).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/mem/device_memory.h"
#include "vdma/virtio/barriers.h"
#include "vdma/virtio/device_queue.h"

namespace vdma {

class SplitDeviceQueue final : public DeviceQueue {
 public:
  // `mem` must outlive the queue. `avail_position` is the next avail index to
  // pop (0 for a new queue, or what avail_position() reported before).
  // Errors: VirtioErrc::kInvalidConfig (size 0, above 32768 or not a power of
  // two; a misaligned ring address; a ring area whose host mapping is
  // misaligned; a used idx more than the queue size behind avail_position),
  // MemErrc from translate_ring() (kNotMapped, kPermissionDenied,
  // kTooManyFragments for a ring that is not contiguous in host memory).
  [[nodiscard]] static Result<std::unique_ptr<SplitDeviceQueue>> create(const DeviceMemory& mem,
                                                                        const QueueConfig& config, RingAddresses rings,
                                                                        uint16_t avail_position = 0);

  SplitDeviceQueue(const SplitDeviceQueue&) = delete;
  SplitDeviceQueue& operator=(const SplitDeviceQueue&) = delete;
  ~SplitDeviceQueue() override = default;

  [[nodiscard]] RingFormat format() const noexcept override { return RingFormat::kSplit; }
  [[nodiscard]] uint16_t size() const noexcept override { return size_; }

  [[nodiscard]] Result<bool> pop(DescriptorChain& chain) override;
  [[nodiscard]] Result<void> rewalk(DescriptorChain& chain) override;
  [[nodiscard]] Result<void> push_used(const DescriptorChain& chain, uint32_t written) override;
  [[nodiscard]] bool should_notify() override;
  void disable_notifications() override;
  [[nodiscard]] bool enable_notifications() override;

  [[nodiscard]] DeviceQueueState state() const noexcept override {
    return needs_reset_ ? DeviceQueueState::kNeedsReset : DeviceQueueState::kRunning;
  }
  [[nodiscard]] const Error* needs_reset_reason() const noexcept override {
    return needs_reset_ ? &*needs_reset_ : nullptr;
  }
  [[nodiscard]] uint16_t avail_position() const noexcept override { return last_avail_; }
  // The used ring's idx as this queue knows it (read once at create(), then
  // advanced by push_used()): vhost-user inflight recovery needs it to
  // rebuild the avail position (used idx + requests still in flight).
  [[nodiscard]] uint16_t used_index() const noexcept { return used_idx_; }

 private:
  SplitDeviceQueue(const DeviceMemory& mem, const QueueConfig& config, RingAddresses rings, uint16_t avail_position);

  // Whether the cached ring pointers may be used as they are (ring
  // translation cache contract of DeviceMemory::ring_epoch()).
  [[nodiscard]] bool rings_current() const noexcept {
    if (epoch_ == nullptr) return true;
    // Acquire pairs with the release that publishes an IOTLB change, so a
    // moved epoch is seen before the old pointers are used again.
    return rings_valid_ && epoch_->load(std::memory_order_acquire) == seen_epoch_;
  }
  // Translates the three ring areas again (and the first time, in create()).
  [[nodiscard]] Result<void> retranslate();

  // Walks the chain at chain.id into `chain`; per-chain problems go to chain.error.
  void walk(DescriptorChain& chain);
  // Stops the queue for good (VirtioErrc::kNeedsReset with `message`); returns the error.
  [[gnu::cold]] [[nodiscard]] Error enter_needs_reset(std::string message);

  const DeviceMemory& mem_;
  const uint16_t size_;
  const uint16_t mask_;
  const bool indirect_;
  const bool event_idx_;
  const BarrierKind barrier_;
  const RingAddresses rings_;
  const std::atomic<uint64_t>* const epoch_;

  // Host views of the ring areas; valid while rings_valid_.
  const std::byte* desc_ = nullptr;
  const std::byte* avail_ = nullptr;
  std::byte* used_ = nullptr;
  uint64_t seen_epoch_ = 0;
  bool rings_valid_ = false;

  uint16_t last_avail_ = 0;      // next avail entry to pop
  uint16_t used_idx_ = 0;        // our copy of used->idx (only we write it)
  uint16_t signalled_used_ = 0;  // used idx at the last should_notify()
  uint32_t pushed_since_signal_ = 0;
  std::optional<Error> needs_reset_;

  // Scratch for indirect tables: the table's fragments, and a private copy
  // when it spans several of them. Reused, so warm pops do not allocate.
  std::vector<Fragment> table_frags_;
  std::vector<std::byte> table_copy_;
};

}  // namespace vdma
