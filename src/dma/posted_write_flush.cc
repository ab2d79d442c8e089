#include "vdma/dma/posted_write_flush.h"

namespace vdma {

std::string_view to_string(NotifyFlushKind k) noexcept {
  switch (k) {
    case NotifyFlushKind::kNone: return "none";
    case NotifyFlushKind::kWriteCombining: return "write_combining";
  }
  return "invalid";
}

void PostedWriteFlush::flush() noexcept {
  switch (kind_) {
    case NotifyFlushKind::kNone:
      break;
    case NotifyFlushKind::kWriteCombining:
#if defined(__x86_64__) || defined(__i386__)
      // SFENCE drains the write-combining buffers: every earlier store is
      // globally visible before any later store (the doorbell).
      asm volatile("sfence" ::: "memory");
#else
      std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
      break;
  }
  flushes_.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace vdma
