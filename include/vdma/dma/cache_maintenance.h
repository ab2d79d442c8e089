// Cache maintenance for devices that do not snoop CPU caches (non-coherent DMA).
//
//   class Recorder : public CacheMaintenance { ... };   // tests observe the calls
//   auto ops = DirectDmaOps::create(mem, {.coherent_device = false, .cache = recorder, ...});
//
// A DmaOps for a non-coherent device calls these hooks around DMA exactly as
// Linux's dma-direct calls arch_sync_dma_for_device / arch_sync_dma_for_cpu,
// on the guest-physical range the device really accesses (the bounce slot
// when a mapping bounces):
//
//   direction       map / sync_for_device        unmap / sync_for_cpu
//   kToDevice       writeback                    nothing
//   kFromDevice     invalidate                   invalidate
//   kBidirectional  writeback, then invalidate   invalidate
//
// writeback: CPU-dirty lines reach memory before the device reads it.
// invalidate before the device writes: no dirty line can later be evicted on
// top of the device's data. invalidate after: the CPU does not read lines it
// fetched (speculatively) while the device owned the buffer.
// kSkipCpuSync on map/unmap skips the hooks.
//
// Thread safety: implementations must allow concurrent calls.
#pragma once

#include <atomic>
#include <cstdint>

#include "vdma/base/address.h"
#include "vdma/dma/dma_ops.h"

namespace vdma {

class CacheMaintenance {
 public:
  virtual ~CacheMaintenance() = default;
  // Writes dirty CPU cache lines covering [gpa, gpa+len) back to memory.
  virtual void writeback(Gpa gpa, uint64_t len) = 0;
  // Discards CPU cache lines covering [gpa, gpa+len).
  virtual void invalidate(Gpa gpa, uint64_t len) = 0;
};

// The table above (arch_sync_dma_for_device / arch_sync_dma_for_cpu).
void cache_sync_for_device(CacheMaintenance& cache, Gpa gpa, uint64_t len, DmaDirection dir);
void cache_sync_for_cpu(CacheMaintenance& cache, Gpa gpa, uint64_t len, DmaDirection dir);

// For this process's memory, which the "device" (another thread or process)
// reads through a coherent host cache: what is left of a writeback or an
// invalidate is the ordering, so each hook is a full fence. It counts its
// calls for statistics.
class FenceCacheMaintenance final : public CacheMaintenance {
 public:
  void writeback(Gpa gpa, uint64_t len) override;
  void invalidate(Gpa gpa, uint64_t len) override;

  [[nodiscard]] uint64_t writebacks() const noexcept { return writebacks_.load(std::memory_order_relaxed); }
  [[nodiscard]] uint64_t invalidates() const noexcept { return invalidates_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> writebacks_{0};
  std::atomic<uint64_t> invalidates_{0};
};

}  // namespace vdma
