// BlkDriver's private state, shared by blk_driver.cc (create and the
// asynchronous path) and blk_driver_sync.cc (the synchronous helpers).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "device_limits.h"
#include "queue_slots.h"
#include "vdma/blk_driver/blk_driver.h"
#include "vdma/dma/debug_dma_ops.h"
#include "vdma/virtio/driver_queue.h"

namespace vdma::blk {

// What a slot's request was, kept for the completion (which data bytes to
// hand back to the CPU) and for error messages.
struct SlotState {
  bool in_flight = false;
  BlkOp op = BlkOp::kRead;
  uint32_t data_bytes = 0;  // bytes of the data buffer the request used
};

struct QueueState {
  uint32_t index = 0;
  DriverQueue* vq = nullptr;
  std::unique_ptr<QueueSlots> slots;
  std::vector<SlotState> slot_state;
  uint32_t in_flight = 0;
  // Scratch for one chain (header + data segments + status), sized at
  // create() so submit() never allocates.
  std::vector<DriverSegment> segs;
  // Scratch for reap(): one used buffer per slot, so a whole completion
  // batch is taken (and unmapped) at once.
  std::vector<UsedBuffer> used;
};

struct BlkDriver::Impl {
  VirtioTransport& transport;
  DeviceLimits limits;
  uint32_t depth = 0;
  uint32_t max_io_bytes = 0;
  // The largest data segment submit() puts in one descriptor: size_max, and,
  // for buffers the queue maps per request, the DmaOps' largest mapping.
  uint64_t segment_bytes = 0;
  std::vector<QueueState> queues;
  // The transport's DMA ops when they are the DMA-API debug checker: the
  // driver then declares every CPU access to its buffers (cpu_access), so an
  // access to bytes the device owns is reported and fails the request.
  DebugDmaOps* dma_debug = nullptr;

  explicit Impl(VirtioTransport& t) : transport(t), dma_debug(dynamic_cast<DebugDmaOps*>(&t.dma())) {}

  [[nodiscard]] Result<void> cpu_access(Gpa gpa, uint64_t len, CpuAccess access) const {
    if (dma_debug == nullptr) return ok();
    return dma_debug->cpu_access(gpa, len, access);
  }
};

}  // namespace vdma::blk
