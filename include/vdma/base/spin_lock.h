// SpinLock: a test-and-test-and-set lock for the very short critical
// sections of the DMA fast paths (an IOVA magazine pop or push, a
// page-table edit of a few entries, a bounce-pool slot search).
//
//   SpinLock mu;
//   { std::lock_guard lock(mu); ... }   // Lockable: lock_guard, unique_lock, scoped_lock
//
// Why not std::mutex: an uncontended pthread mutex costs two calls and
// about 50 instructions per lock/unlock pair; a map+unmap takes four such
// locks, which alone is a large share of the 100 ns budget. Here lock() is
// one atomic exchange and unlock() one release store.
//
// Contention: a waiter spins on a plain load (no cache-line ping-pong) with
// a pause hint for kSpinsBeforeYield rounds, then yields its CPU on every
// further round, so a holder that was preempted gets to run. Do not hold
// it across anything that blocks or takes long (a sink call, I/O, a
// wait); use std::mutex there. Not recursive, no fairness guarantee.
//
// Thread safety: that is its job. Acquire on lock, release on unlock.
#pragma once

#include <atomic>
#include <thread>

namespace vdma {

class SpinLock {
 public:
  static constexpr unsigned kSpinsBeforeYield = 128;

  void lock() noexcept {
    unsigned spins = 0;
    while (locked_.exchange(true, std::memory_order_acquire)) {
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins < kSpinsBeforeYield) {
          relax();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
  [[nodiscard]] bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  static void relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  std::atomic<bool> locked_{false};
};

}  // namespace vdma
