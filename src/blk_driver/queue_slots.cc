#include "queue_slots.h"

#include "vdma/base/log.h"

namespace vdma::blk {

namespace {

constexpr uint64_t kRequestAlign = 64;  // one cache line per two slots, never shared with another array
constexpr uint64_t kDataAlign = 4096;

}  // namespace

QueueSlots::QueueSlots(VirtioTransport& transport, uint32_t queue, const Config& config)
    : transport_(transport), queue_(queue), premap_(config.premap), data_(config.depth) {}

Result<std::unique_ptr<QueueSlots>> QueueSlots::create(VirtioTransport& transport, uint32_t queue,
                                                       const Config& config) {
  VDMA_CHECK(config.depth > 0 && config.max_io_bytes > 0, "QueueSlots needs a depth and a buffer size");
  std::unique_ptr<QueueSlots> q(new QueueSlots(transport, queue, config));
  // From here on the destructor releases whatever a failing step left behind.
  VDMA_TRY(q->acquire(q->request_, uint64_t{config.depth} * kRequestStride, kRequestAlign, DmaDirection::kToDevice,
                      "request array", 0));
  VDMA_TRY(q->acquire(q->status_, config.depth, kRequestAlign, DmaDirection::kFromDevice, "status array", 0));
  for (uint32_t s = 0; s < config.depth; ++s) {
    VDMA_TRY(q->acquire(q->data_[s], config.max_io_bytes, kDataAlign, DmaDirection::kBidirectional, "data buffer", s));
  }
  return q;
}

Result<void> QueueSlots::acquire(Buffer& b, uint64_t size, uint64_t align, DmaDirection dir, const char* what,
                                 uint32_t slot) {
  auto context = [&] { return fmt::format("queue {} slot {} {} ({} bytes)", queue_, slot, what, size); };
  auto gpa = transport_.alloc_buffer(size, align);
  if (!gpa) return std::move(gpa).error().with_context(context());
  b.gpa = *gpa;
  b.size = size;
  b.dir = dir;
  b.allocated = true;
  auto host = transport_.memory().span(b.gpa, size);
  if (!host) return std::move(host).error().with_context(context());
  b.host = *host;
  if (premap_) {
    auto dma = transport_.dma().map(b.gpa, size, dir);
    if (!dma) return std::move(dma).error().with_context(context());
    b.dma = *dma;
    b.mapped = true;
    b.need_sync = transport_.dma().need_sync(b.dma);
    // map() gave the buffer to the device; the CPU fills it first (the
    // DMA-API ownership rule the debug checker enforces).
    if (b.need_sync) {
      if (auto r = transport_.dma().sync_for_cpu(b.dma, size, dir); !r) {
        return std::move(r).error().with_context(context());
      }
    }
  }
  return ok();
}

void QueueSlots::release(Buffer& b) noexcept {
  if (b.mapped) {
    if (auto r = transport_.dma().unmap(b.dma, b.size, b.dir); !r) {
      spdlog::error("blk driver: queue {}: unmap {} + {:#x}: {}", queue_, b.dma, b.size, r.error());
    }
    b.mapped = false;
  }
  if (b.allocated) {
    if (auto r = transport_.free_buffer(b.gpa, b.size); !r) {
      spdlog::error("blk driver: queue {}: free {} + {:#x}: {}", queue_, b.gpa, b.size, r.error());
    }
    b.allocated = false;
  }
}

QueueSlots::~QueueSlots() {
  for (Buffer& b : data_) release(b);
  release(status_);
  release(request_);
}

Result<void> QueueSlots::sync_request_for_device(uint32_t s, bool with_segment) {
  if (!request_.need_sync) return ok();
  return transport_.dma().sync_for_device(header_dma(s), with_segment ? kRequestStride : kSegmentOffset,
                                          DmaDirection::kToDevice);
}

Result<void> QueueSlots::sync_request_for_cpu(uint32_t s) {
  if (!request_.need_sync) return ok();
  return transport_.dma().sync_for_cpu(header_dma(s), kRequestStride, DmaDirection::kToDevice);
}

Result<void> QueueSlots::sync_status_for_device(uint32_t s) {
  if (!status_.need_sync) return ok();
  return transport_.dma().sync_for_device(status_dma(s), 1, DmaDirection::kFromDevice);
}

Result<void> QueueSlots::sync_status_for_cpu(uint32_t s) {
  if (!status_.need_sync) return ok();
  return transport_.dma().sync_for_cpu(status_dma(s), 1, DmaDirection::kFromDevice);
}

Result<void> QueueSlots::sync_data_for_device(uint32_t s, uint32_t len) {
  if (!data_[s].need_sync) return ok();
  return transport_.dma().sync_for_device(data_[s].dma, len, DmaDirection::kBidirectional);
}

Result<void> QueueSlots::sync_data_for_cpu(uint32_t s, uint32_t len) {
  if (!data_[s].need_sync) return ok();
  return transport_.dma().sync_for_cpu(data_[s].dma, len, DmaDirection::kBidirectional);
}

}  // namespace vdma::blk
