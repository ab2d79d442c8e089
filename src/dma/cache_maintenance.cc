#include "vdma/dma/cache_maintenance.h"

namespace vdma {

void cache_sync_for_device(CacheMaintenance& cache, Gpa gpa, uint64_t len, DmaDirection dir) {
  switch (dir) {
    case DmaDirection::kToDevice:
      cache.writeback(gpa, len);
      return;
    case DmaDirection::kFromDevice:
      cache.invalidate(gpa, len);
      return;
    case DmaDirection::kBidirectional:
      cache.writeback(gpa, len);
      cache.invalidate(gpa, len);
      return;
  }
}

void cache_sync_for_cpu(CacheMaintenance& cache, Gpa gpa, uint64_t len, DmaDirection dir) {
  if (dir == DmaDirection::kToDevice) return;  // the device did not write: CPU lines are still right
  cache.invalidate(gpa, len);
}

void FenceCacheMaintenance::writeback(Gpa, uint64_t) {
  // Orders the CPU's earlier stores to the buffer before the later store
  // that hands it to the device (descriptor or index publication).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  writebacks_.fetch_add(1, std::memory_order_relaxed);
}

void FenceCacheMaintenance::invalidate(Gpa, uint64_t) {
  // Orders the load that saw the device finish (used index) before the
  // CPU's later loads of the buffer.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  invalidates_.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace vdma
