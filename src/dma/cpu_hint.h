// cpu_hint(): which per-CPU structure (swiotlb area, IOVA magazine shard) the
// calling thread should use; thread_number(): which per-thread one.
//
// It is the CPU the thread runs on, as Linux indexes swiotlb areas and IOVA
// rcaches, so two threads on two CPUs never share a lock. sched_getcpu()
// reads the rseq area glibc registers: a load, no system call. Where the CPU
// is unknown, threads are numbered once, process-wide. A thread that migrates
// between the lookup and the lock only shares a lock for a moment: every
// structure it picks is still locked.
#pragma once

#include <sched.h>

#include <atomic>
#include <cstdint>

namespace vdma::detail {

// The calling thread's number: threads are numbered once, process-wide, in
// the order they first ask. For structures a thread must find again after
// it migrated (the lazy flush queue's shards: a buffer is revived by the
// thread that unmapped it).
inline uint32_t thread_number() noexcept {
  static std::atomic<uint32_t> next{0};
  thread_local const uint32_t n = next.fetch_add(1, std::memory_order_relaxed);
  return n;
}

inline uint32_t cpu_hint() noexcept {
  const int cpu = sched_getcpu();
  if (cpu >= 0) return static_cast<uint32_t>(cpu);
  return thread_number();
}

}  // namespace vdma::detail
