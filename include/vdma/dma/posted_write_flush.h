// PostedWriteFlush: the platform hook a driver runs right before it notifies
// a device, after publishing its ring entries — the fourth platform DMA job
// beside translation, coherency and bounce ("flushing write-combining
// buffers or similar").
//
//   // topology: {"id": "blk0", "kind": "direct", "flush_before_notify": "write_combining"}
//   PostedWriteFlush* flush = platform->notify_flush("blk0");     // null: the device declares none
//   auto q = make_driver_queue(fmt, ops, {.size = 256, .features = f, .notify_flush = flush});
//   if (q->kick_prepare()) notify_device();                       // the queue ran flush->flush() once
//
// Why: stores to memory mapped write-combining (a framebuffer-like ring in
// device memory, or a BAR the device reads) sit in the CPU's WC buffers and
// are posted, not ordered with a later uncached doorbell write by the SMP or
// DMA barriers. x86 drains them with SFENCE (Linux's wmb() before writel()
// into WC-mapped queues, as in mlx5's BlueFlame doorbells); other
// architectures use their full store barrier. The doorbell of a vhost-user
// device is an eventfd write, a system call that itself orders earlier
// stores, so on this host the hook costs one fence and is observable only by
// its counter — which is what tests check: one flush per notification, on
// every notify path.
//
// Thread safety: flush() may be called from every queue's thread at once.
// Lifetime: owned by the PlatformDma that built it; queues keep a pointer.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

namespace vdma {

// What a device declares in the topology's "flush_before_notify".
enum class NotifyFlushKind : uint8_t {
  kNone,            // nothing to flush (the default)
  kWriteCombining,  // drain write-combining buffers (SFENCE on x86)
};
[[nodiscard]] std::string_view to_string(NotifyFlushKind k) noexcept;

class PostedWriteFlush {
 public:
  explicit PostedWriteFlush(NotifyFlushKind kind) noexcept : kind_(kind) {}
  PostedWriteFlush(const PostedWriteFlush&) = delete;
  PostedWriteFlush& operator=(const PostedWriteFlush&) = delete;

  // Makes every store this thread issued so far (descriptors, ring entries,
  // the published index) reach memory before the notification that follows.
  void flush() noexcept;

  [[nodiscard]] NotifyFlushKind kind() const noexcept { return kind_; }
  // flush() calls so far.
  [[nodiscard]] uint64_t flushes() const noexcept { return flushes_.load(std::memory_order_relaxed); }

 private:
  const NotifyFlushKind kind_;
  std::atomic<uint64_t> flushes_{0};
};

}  // namespace vdma
