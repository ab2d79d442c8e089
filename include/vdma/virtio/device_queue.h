// The device side of a virtqueue (what a back-end does).
//
//   auto q = *make_device_queue(RingFormat::kSplit, dev_mem, config, ring_addresses);
//   DescriptorChain chain;                        // reuse: no allocation once warm
//   while (true) {
//     auto got = q->pop(chain);
//     if (!got) { /* VirtioErrc::kNeedsReset: ring is corrupt, queue stopped */ break; }
//     if (!*got) break;                           // no more work
//     if (chain.error) { q->push_used(chain, 0); continue; }   // bad chain: return it
//     ... read chain.readable, write chain.writable ...
//     q->push_used(chain, bytes_written);
//   }
//   if (q->should_notify()) signal_driver();
//
// The driver is not trusted. Every guest-controlled field (indices, ids,
// addresses, lengths, flags) is read once into a local and validated; every
// address goes through DeviceMemory::translate, so a bad one is an error for
// its chain, never an out-of-bounds access. Chain walks are bounded by the
// queue size. A ring whose indices are impossible (avail idx moving by more
// than the queue size, a head id out of range, a packed chain that never
// ends) moves the queue to NEEDS_RESET: every later pop/push fails at once
// with the same VirtioErrc::kNeedsReset error; it never spins.
//
// Thread safety: none; one worker owns a queue.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/mem/device_memory.h"
#include "vdma/virtio/errors.h"
#include "vdma/virtio/queue.h"

namespace vdma {

// One popped chain: host fragments, readable ones then writable ones, in
// descriptor order.
struct DescriptorChain {
  uint16_t id = 0;             // split: head index; packed: buffer id
  uint16_t ring_slots = 0;     // ring descriptors the chain occupies (packed push needs it)
  uint16_t position = 0;       // split: avail slot; packed: ring index of the first descriptor
  bool wrap = false;           // packed: the wrap counter at `position`
  std::vector<Fragment> readable;
  std::vector<Fragment> writable;
  uint64_t readable_len = 0;
  uint64_t writable_len = 0;
  // Set for a chain the device must return unprocessed (bad descriptor,
  // translation failure). MemErrc::kNotMapped / kPermissionDenied come from
  // DeviceMemory; VirtioErrc::kBadDescriptor names the descriptor and rule.
  std::optional<Error> error;
  // The descriptor (address, length, access) whose translation failed, when
  // error is a MemErrc: lets an IOTLB back-end ask for exactly that range.
  DmaAddr fault_addr;
  uint64_t fault_len = 0;
  Access fault_access = Access::kNone;
  // When that first failure is a miss (MemErrc::kNotMapped) the walk goes
  // on to the chain's end, and the descriptors after it whose translation
  // missed too are listed here (at most kMaxMoreFaults), so an IOTLB
  // back-end asks for all of them at once instead of one round trip each.
  // A later failure that is not a miss ends the walk; `error` stays the first.
  struct FaultRange {
    DmaAddr addr;
    uint64_t len = 0;
    Access access = Access::kNone;
  };
  static constexpr size_t kMaxMoreFaults = 16;
  std::vector<FaultRange> more_faults;

  void clear() noexcept {
    readable.clear();
    writable.clear();
    readable_len = writable_len = 0;
    error.reset();
    fault_len = 0;
    fault_access = Access::kNone;
    more_faults.clear();
  }
  // Records a miss after the first (walkers).
  void add_more_fault(DmaAddr addr, uint64_t len, Access access) {
    if (more_faults.size() < kMaxMoreFaults) more_faults.push_back({addr, len, access});
  }
};

enum class DeviceQueueState : uint8_t { kRunning, kNeedsReset };

class DeviceQueue {
 public:
  virtual ~DeviceQueue() = default;

  [[nodiscard]] virtual RingFormat format() const noexcept = 0;
  [[nodiscard]] virtual uint16_t size() const noexcept = 0;

  // Takes the next available chain into `chain` (cleared first).
  // true: a chain was taken (check chain.error); false: nothing available.
  // Errors: VirtioErrc::kNeedsReset (ring corrupt; sticky); MemErrc when a
  // ring area itself cannot be translated (the queue stays usable once the
  // mapping exists again).
  [[nodiscard]] virtual Result<bool> pop(DescriptorChain& chain) = 0;

  // Walks a chain again that pop() returned with a MemErrc error, after the
  // missing translation was supplied. Same result shape as pop().
  [[nodiscard]] virtual Result<void> rewalk(DescriptorChain& chain) = 0;

  // Returns a chain to the driver with `written` bytes written (clamped to
  // chain.writable_len). Errors: VirtioErrc::kNeedsReset.
  [[nodiscard]] virtual Result<void> push_used(const DescriptorChain& chain, uint32_t written) = 0;

  // Whether the driver wants a used-buffer notification for what was pushed
  // since the last call (EVENT_IDX used_event, or NO_INTERRUPT / event flags).
  [[nodiscard]] virtual bool should_notify() = 0;

  // Driver notifications (kicks): disable while polling; enable() returns
  // false when chains are already available (poll again before sleeping).
  virtual void disable_notifications() = 0;
  [[nodiscard]] virtual bool enable_notifications() = 0;

  [[nodiscard]] virtual DeviceQueueState state() const noexcept = 0;
  [[nodiscard]] virtual const Error* needs_reset_reason() const noexcept = 0;

  // The next avail index (split) or ring position with wrap counter in bit
  // 15 (packed), as vhost-user GET_VRING_BASE reports it.
  [[nodiscard]] virtual uint16_t avail_position() const noexcept = 0;
};

// Translates the ring areas through `mem` (which must outlive the queue).
// Errors: VirtioErrc::kInvalidConfig (size, misaligned ring), MemErrc when a
// ring area is not mapped, writable where needed, or not contiguous.
// `avail_position` restores a position reported by avail_position().
[[nodiscard]] Result<std::unique_ptr<DeviceQueue>> make_device_queue(RingFormat format, const DeviceMemory& mem,
                                                                     const QueueConfig& config, RingAddresses rings,
                                                                     uint16_t avail_position = 0);

}  // namespace vdma
