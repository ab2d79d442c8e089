// The driver side of a virtqueue (what a guest kernel's virtio_ring does).
//
//   auto q = *make_driver_queue(RingFormat::kSplit, dma_ops, {.size = 256, .features = f});
//   DriverSegment segs[] = {{hdr_gpa, 16, BufferType::kDeviceReadable},
//                           {data_gpa, 4096, BufferType::kDeviceWritable}};
//   if (auto r = q->add(segs, cookie); !r) ...;       // kNoSpace: wait for used buffers
//   if (q->kick_prepare()) notify_device();
//   while (auto u = q->get_used(); u && *u) handle((*u)->cookie, (*u)->len);
//   UsedBuffer done[32];                                 // or a batch, unmapped together:
//   size_t n = VDMA_TRY(q->get_used_batch(done));
//
// Rings come from dma.alloc_coherent(). Every segment is mapped with
// dma.map() (readable: TO_DEVICE, writable: FROM_DEVICE) and unmapped when
// its chain comes back, from the queue's own shadow copy of each descriptor:
// the queue never reads a descriptor back from shared memory, and never
// assumes a DMA address equals a guest-physical address.
//
// The device is not trusted (confidential guests): a used id that is out of
// range, not the head of an outstanding chain, or returned twice moves the
// queue to the *broken* state, where every call fails with VirtioErrc::kBroken
// and a message saying what the device did. A used length beyond the chain's
// writable bytes is clamped to them.
//
// Thread safety: none; the caller serialises all calls on one queue (as
// Linux's virtqueue API requires).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "vdma/base/result.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/virtio/barriers.h"
#include "vdma/virtio/errors.h"
#include "vdma/virtio/queue.h"

namespace vdma {

struct DriverSegment {
  Gpa addr;
  uint32_t len = 0;
  BufferType type = BufferType::kDeviceReadable;
  // Premapped buffer: the caller already mapped it and `dma` is its DMA
  // address; the queue neither maps nor unmaps it (Linux's premapped mode,
  // for long-lived buffers). Otherwise `dma` is ignored.
  bool premapped = false;
  DmaAddr dma;
};

struct UsedBuffer {
  uint64_t cookie = 0;
  uint32_t len = 0;  // bytes the device wrote, clamped to the chain's writable length
};

class DriverQueue {
 public:
  virtual ~DriverQueue() = default;

  [[nodiscard]] virtual RingFormat format() const noexcept = 0;
  [[nodiscard]] virtual uint16_t size() const noexcept = 0;
  // Ring addresses to give the device (DMA addresses from alloc_coherent).
  [[nodiscard]] virtual RingAddresses ring_addresses() const noexcept = 0;
  // Descriptors free right now.
  [[nodiscard]] virtual uint16_t num_free() const noexcept = 0;

  // Adds one chain: device-readable segments first, then device-writable.
  // Uses an indirect table when INDIRECT_DESC is negotiated and the chain has
  // more than one segment (and at most max_indirect). Publishes it to the
  // device at once; kick_prepare() then says whether to notify.
  // Errors: VirtioErrc::kInvalidChain (empty, zero-length segment, readable
  // after writable, more segments than the queue size), VirtioErrc::kNoSpace
  // (not enough free descriptors now), VirtioErrc::kBroken, and any error of
  // DmaOps::map (segments already mapped are unmapped again).
  [[nodiscard]] virtual Result<void> add(std::span<const DriverSegment> segs, uint64_t cookie) = 0;

  // Whether the device wants a notification for what was added since the
  // last call (EVENT_IDX avail_event, or the NO_NOTIFY flag / packed event flags).
  // When it returns true it has run QueueConfig::notify_flush (if any)
  // exactly once, after every ring store, and the caller must notify
  // the device next.
  [[nodiscard]] virtual bool kick_prepare() = 0;

  // The next used buffer, or nullopt when none is ready. Unmaps its segments.
  // Errors: VirtioErrc::kBroken (now or earlier).
  [[nodiscard]] virtual Result<std::optional<UsedBuffer>> get_used() = 0;

  // Up to out.size() used buffers, taken as get_used() takes them, except
  // that the segments of all of them are unmapped together, with ONE
  // DmaOps::unmap_batch() after the last is taken: behind a strict IOMMU a
  // reap then costs one invalidation round trip instead of one per chain
  // (Linux gathers the IOTLB flush of a whole completion batch the same way).
  // Every returned buffer is unmapped when the call returns. Returns how
  // many were stored, 0 when none is ready. A device fault after some
  // buffers were taken returns those (unmapped) and leaves the queue broken:
  // the next call fails.
  // Errors: VirtioErrc::kBroken (now, before any buffer was taken, or earlier).
  [[nodiscard]] virtual Result<size_t> get_used_batch(std::span<UsedBuffer> out);

  // Asks the device not to send used-buffer notifications (best effort).
  virtual void disable_callbacks() = 0;
  // Re-enables notifications. Returns false when used buffers are already
  // pending, so the caller must poll again before sleeping (race-free form
  // of virtqueue_enable_cb).
  [[nodiscard]] virtual bool enable_callbacks() = 0;

  // Which barriers order this queue's ring accesses: kStrong (the platform's
  // DMA barriers) exactly when ORDER_PLATFORM was negotiated.
  [[nodiscard]] virtual BarrierKind barriers() const noexcept = 0;
  // Platform DMA barriers (virtio_wmb/rmb/mb with kStrong) this queue has
  // executed; 0 with SMP barriers.
  [[nodiscard]] virtual uint64_t platform_barriers() const noexcept = 0;

  [[nodiscard]] virtual bool is_broken() const noexcept = 0;
  // Why the queue broke; nullptr while healthy.
  [[nodiscard]] virtual const Error* broken_reason() const noexcept = 0;

  // After a device reset: takes back one chain that was never used, unmaps it
  // and returns its cookie; nullopt when none is left.
  [[nodiscard]] virtual std::optional<uint64_t> detach_unused() = 0;
};

// Allocates rings with dma.alloc_coherent(); dma must outlive the queue.
// Errors: VirtioErrc::kInvalidConfig (size 0, > 32768, split size not a
// power of two), errors of alloc_coherent.
[[nodiscard]] Result<std::unique_ptr<DriverQueue>> make_driver_queue(RingFormat format, DmaOps& dma,
                                                                     const QueueConfig& config);

}  // namespace vdma
