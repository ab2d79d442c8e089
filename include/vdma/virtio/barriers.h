// Memory barriers for virtqueues (Linux's virtio_mb/rmb/wmb).
//
// Without VIRTIO_F_ORDER_PLATFORM both sides are CPUs in one coherence
// domain, so SMP barriers suffice ("weak"). With it, the device may be real
// hardware that only honours the platform's DMA barriers (virtio 1.2 §6:
// ORDER_PLATFORM), so the strong forms are used.
#pragma once

#include <atomic>

namespace vdma {

enum class BarrierKind : uint8_t { kWeak, kStrong };

// Orders earlier loads before later loads and stores.
inline void virtio_rmb(BarrierKind k) noexcept {
  if (k == BarrierKind::kStrong) {
#if defined(__x86_64__)
    asm volatile("lfence" ::: "memory");
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  } else {
    std::atomic_thread_fence(std::memory_order_acquire);
  }
}

// Orders earlier stores before later stores.
inline void virtio_wmb(BarrierKind k) noexcept {
  if (k == BarrierKind::kStrong) {
#if defined(__x86_64__)
    asm volatile("sfence" ::: "memory");
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  } else {
    std::atomic_thread_fence(std::memory_order_release);
  }
}

// Full barrier: orders earlier stores before later loads (needed before
// reading the other side's event index after publishing our own index).
inline void virtio_mb(BarrierKind k) noexcept {
  if (k == BarrierKind::kStrong) {
#if defined(__x86_64__)
    asm volatile("mfence" ::: "memory");
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

// virtio 1.2 §2.7.10: notification is needed iff new_idx passed event_idx+1.
[[nodiscard]] constexpr bool vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) noexcept {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace vdma
