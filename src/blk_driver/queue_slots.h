// QueueSlots: the long-lived buffers of one queue's request slots, allocated
// from the transport's guest memory at create() and freed at destruction.
//
//   auto slots = VDMA_TRY(QueueSlots::create(transport, 0, {.depth = 32, .max_io_bytes = 65536, .premap = false}));
//   std::byte* h = slots->header(3);           // 16 B request header
//   VDMA_TRY(slots->sync_header_for_device(3, /*with_segment=*/false));
//
// Layout per queue: one request array of 32 bytes per slot (the 16-byte
// header, then the 16-byte discard / write-zeroes segment), one status array
// of one byte per slot, and one data buffer of max_io_bytes per slot.
//
// Premapped mode (transport.premap_buffers()): the request array is mapped
// once TO_DEVICE, the status array FROM_DEVICE and each data buffer
// BIDIRECTIONAL, through transport.dma(); the DMA addresses are then handed
// to the queue as premapped segments. Because the queue never unmaps a
// premapped segment, the CPU/device ownership hand-over of a streaming
// mapping is done here with sync_for_device / sync_for_cpu (Linux
// DMA-API-HOWTO), and only where the DmaOps says it does something
// (need_sync: bounce buffers, non-coherent devices). The destructor unmaps
// every premapped buffer before freeing it.
//
// Thread safety: none; the queue's caller serialises (BlkDriver's contract).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/virtio/transport.h"

namespace vdma::blk {

class QueueSlots {
 public:
  static constexpr uint64_t kRequestStride = 32;  // header 16 B + segment 16 B
  static constexpr uint64_t kSegmentOffset = 16;

  struct Config {
    uint32_t depth = 0;
    uint32_t max_io_bytes = 0;
    bool premap = false;
  };

  // Errors: those of transport.alloc_buffer, GuestMemory::span and (premapped)
  // DmaOps::map, with the queue and buffer named; whatever was allocated or
  // mapped before the failure is released again.
  [[nodiscard]] static Result<std::unique_ptr<QueueSlots>> create(VirtioTransport& transport, uint32_t queue,
                                                                  const Config& config);
  ~QueueSlots();
  QueueSlots(const QueueSlots&) = delete;
  QueueSlots& operator=(const QueueSlots&) = delete;

  [[nodiscard]] bool premapped() const noexcept { return premap_; }

  [[nodiscard]] std::byte* header(uint32_t s) noexcept { return request_.host.data() + s * kRequestStride; }
  [[nodiscard]] std::byte* segment(uint32_t s) noexcept { return header(s) + kSegmentOffset; }
  [[nodiscard]] std::byte* status(uint32_t s) noexcept { return status_.host.data() + s; }
  [[nodiscard]] std::span<std::byte> data(uint32_t s) noexcept { return data_[s].host; }

  [[nodiscard]] Gpa header_gpa(uint32_t s) const noexcept { return request_.gpa.unchecked_add(s * kRequestStride); }
  [[nodiscard]] Gpa segment_gpa(uint32_t s) const noexcept { return header_gpa(s).unchecked_add(kSegmentOffset); }
  [[nodiscard]] Gpa status_gpa(uint32_t s) const noexcept { return status_.gpa.unchecked_add(s); }
  [[nodiscard]] Gpa data_gpa(uint32_t s) const noexcept { return data_[s].gpa; }
  // Premapped mode only: the DMA addresses of the same bytes.
  [[nodiscard]] DmaAddr header_dma(uint32_t s) const noexcept { return request_.dma.unchecked_add(s * kRequestStride); }
  [[nodiscard]] DmaAddr segment_dma(uint32_t s) const noexcept { return header_dma(s).unchecked_add(kSegmentOffset); }
  [[nodiscard]] DmaAddr status_dma(uint32_t s) const noexcept { return status_.dma.unchecked_add(s); }
  [[nodiscard]] DmaAddr data_dma(uint32_t s) const noexcept { return data_[s].dma; }

  // Ownership hand-over of premapped buffers; no-ops when not premapped or
  // when the DmaOps needs no sync for the buffer.
  [[nodiscard]] Result<void> sync_request_for_device(uint32_t s, bool with_segment);
  // The whole 32-byte request stride back to the CPU before it is rewritten.
  [[nodiscard]] Result<void> sync_request_for_cpu(uint32_t s);
  [[nodiscard]] Result<void> sync_status_for_device(uint32_t s);
  [[nodiscard]] Result<void> sync_status_for_cpu(uint32_t s);
  [[nodiscard]] Result<void> sync_data_for_device(uint32_t s, uint32_t len);
  [[nodiscard]] Result<void> sync_data_for_cpu(uint32_t s, uint32_t len);

 private:
  struct Buffer {
    Gpa gpa;
    uint64_t size = 0;
    std::span<std::byte> host;
    DmaDirection dir = DmaDirection::kToDevice;
    DmaAddr dma;
    bool allocated = false;
    bool mapped = false;
    bool need_sync = false;
  };

  QueueSlots(VirtioTransport& transport, uint32_t queue, const Config& config);
  [[nodiscard]] Result<void> acquire(Buffer& b, uint64_t size, uint64_t align, DmaDirection dir, const char* what,
                                     uint32_t slot);
  void release(Buffer& b) noexcept;

  VirtioTransport& transport_;
  const uint32_t queue_;
  const bool premap_;
  Buffer request_;
  Buffer status_;
  std::vector<Buffer> data_;
};

}  // namespace vdma::blk
