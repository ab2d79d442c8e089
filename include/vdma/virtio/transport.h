// VirtioTransport: what a virtio driver needs from the transport it runs
// over — the vhost-user front-end (frontend/vhost_user_frontend.h), or an
// in-process loopback in tests. It plays the part of Linux's virtio_device
// plus its config ops: negotiated features, the virtqueues, notifications,
// config space, the DMA ops and the memory driver buffers come from.
//
//   VirtioTransport& t = *frontend;
//   DriverQueue& q = t.queue(0);
//   VDMA_TRY(q.add(segs, cookie));
//   if (q.kick_prepare()) VDMA_TRY(t.notify(0));
//   // wait: poll(t.interrupt_fd(0)) then read 8 bytes from it, or spin on get_used()
//
// The transport has already negotiated features and set up every queue when
// a driver gets it; the driver only adds buffers and reaps used ones.
//
// Thread safety: calls for different queues may run concurrently (one
// thread per queue, as the DriverQueue itself is not thread-safe).
// dma(), memory() and features() are safe from any thread. alloc_buffer()
// and free_buffer() are thread-safe.
#pragma once

#include <cstdint>
#include <span>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/virtio/driver_queue.h"

namespace vdma {

class VirtioTransport {
 public:
  virtual ~VirtioTransport() = default;

  // The features both sides accepted (device-independent and device bits).
  [[nodiscard]] virtual uint64_t features() const noexcept = 0;
  [[nodiscard]] virtual uint32_t num_queues() const noexcept = 0;
  // Precondition: index < num_queues() (VDMA_CHECK).
  [[nodiscard]] virtual DriverQueue& queue(uint32_t index) noexcept = 0;
  // Tells the device that queue `index` has new buffers. Call it when
  // DriverQueue::kick_prepare() returned true.
  [[nodiscard]] virtual Result<void> notify(uint32_t index) = 0;
  // An eventfd the device signals after it used buffers of queue `index`
  // (read 8 bytes to clear it), or -1 when the transport has none and the
  // driver must poll get_used().
  [[nodiscard]] virtual int interrupt_fd(uint32_t index) const noexcept = 0;
  // Reads device config space bytes [offset, offset + out.size()).
  [[nodiscard]] virtual Result<void> read_config(uint32_t offset, std::span<std::byte> out) = 0;

  // The DMA ops the queues map buffers with. A driver maps its long-lived
  // buffers itself through them when premap_buffers() is true.
  [[nodiscard]] virtual DmaOps& dma() noexcept = 0;
  // Whether the driver should map its long-lived buffers once and hand the
  // queues premapped segments (DriverSegment::premapped), instead of a
  // map/unmap per request (the iommu-premapped mode).
  [[nodiscard]] virtual bool premap_buffers() const noexcept = 0;

  // The guest memory driver buffers live in, and an allocator of
  // driver-private buffers in it (guest RAM: private memory on a
  // confidential platform, so DMA to it bounces). alloc_buffer's result is
  // `align`-aligned and zero-filled.
  // Errors: MemErrc::kNoSpace, BaseErrc::kInvalidArgument (size 0, bad align).
  [[nodiscard]] virtual const GuestMemory& memory() const noexcept = 0;
  [[nodiscard]] virtual Result<Gpa> alloc_buffer(uint64_t size, uint64_t align) = 0;
  // Errors: BaseErrc::kInvalidArgument when (gpa, size) is not a live buffer.
  [[nodiscard]] virtual Result<void> free_buffer(Gpa gpa, uint64_t size) = 0;
};

}  // namespace vdma
