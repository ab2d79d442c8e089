// PackedDriverQueue: the driver side of a packed virtqueue (virtio 1.2 §2.8),
// with the semantics of Linux's virtio_ring.c packed path.
//
//   auto q = *PackedDriverQueue::create(dma, {.size = 256, .features = f});
//   DriverSegment segs[] = {{hdr_gpa, 16, BufferType::kDeviceReadable},
//                           {data_gpa, 4096, BufferType::kDeviceWritable}};
//   VDMA_TRY(q->add(segs, cookie));              // kNoSpace: collect used buffers first
//   if (q->kick_prepare()) notify_device();
//   while (auto u = q->get_used(); u && *u) complete((*u)->cookie, (*u)->len);
//
// Everything in driver_queue.h holds; this header adds what is specific to
// the packed format.
//
// Memory: create() makes one alloc_coherent() for the descriptor ring
// (16 bytes per slot, 16-aligned) followed by the driver and the device event
// suppression areas (4 bytes each), and, when INDIRECT_DESC is negotiated, one
// more for a pool of indirect tables: one table of max_indirect descriptors
// per buffer id (size * max_indirect * 16 bytes, 64 KiB for 256 x 16). add()
// and get_used() allocate nothing.
//
// Buffer ids: a direct chain of n segments takes n ring slots and n ids from
// the free-id list (as Linux does), the first id naming the chain; an
// indirect chain takes one slot and one id. num_free() therefore counts both.
//
// Shadow state: per id the queue keeps the cookie, the slot count, each
// segment's DMA address, length and direction, and the writable length.
// get_used() unmaps from it, all of a chain's buffers with one
// DmaOps::unmap_batch() (one IOTLB invalidation behind a strict IOMMU), and
// get_used_batch() all the buffers of a completion batch with one; a
// descriptor is never read back from the ring (the device may have changed it).
//
// Barriers: BarrierKind::kStrong when ORDER_PLATFORM is negotiated (counted
// by platform_barriers()), else kWeak. kick_prepare() runs
// QueueConfig::notify_flush once when it returns true.
//
// Lifetime: `dma` must outlive the queue. Every chain must have come back
// (get_used) or been taken back (detach_unused after a device reset) before the
// queue is destroyed; the destructor frees the ring memory but does not unmap
// buffers still owned by the device.
//
// Thread safety: none; the caller serialises all calls.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/virtio/barriers.h"
#include "vdma/virtio/driver_queue.h"

namespace vdma {

class PackedDriverQueue final : public DriverQueue {
 public:
  // config.size: 1..32768 (any value, not only powers of two).
  // config.max_indirect: 0 selects min(size, 64); larger than size is
  // clamped to size (a chain never has more segments than the queue size).
  // Errors: VirtioErrc::kInvalidConfig (size 0 or > 32768), errors of
  // dma.alloc_coherent().
  [[nodiscard]] static Result<std::unique_ptr<PackedDriverQueue>> create(DmaOps& dma, const QueueConfig& config);

  PackedDriverQueue(const PackedDriverQueue&) = delete;
  PackedDriverQueue& operator=(const PackedDriverQueue&) = delete;
  ~PackedDriverQueue() override;

  [[nodiscard]] RingFormat format() const noexcept override { return RingFormat::kPacked; }
  [[nodiscard]] uint16_t size() const noexcept override { return size_; }
  [[nodiscard]] RingAddresses ring_addresses() const noexcept override;
  [[nodiscard]] uint16_t num_free() const noexcept override { return num_free_; }

  [[nodiscard]] Result<void> add(std::span<const DriverSegment> segs, uint64_t cookie) override;
  // False when nothing was added since the last call.
  [[nodiscard]] bool kick_prepare() override;
  [[nodiscard]] Result<std::optional<UsedBuffer>> get_used() override;
  [[nodiscard]] Result<size_t> get_used_batch(std::span<UsedBuffer> out) override;
  void disable_callbacks() override;
  // Also false when the queue is broken, so the caller polls and sees the error.
  [[nodiscard]] bool enable_callbacks() override;
  [[nodiscard]] BarrierKind barriers() const noexcept override { return barrier_; }
  [[nodiscard]] uint64_t platform_barriers() const noexcept override { return platform_barriers_; }
  [[nodiscard]] bool is_broken() const noexcept override { return broken_.has_value(); }
  [[nodiscard]] const Error* broken_reason() const noexcept override { return broken_ ? &*broken_ : nullptr; }
  // Works in the broken state too (that is when it is needed).
  [[nodiscard]] std::optional<uint64_t> detach_unused() override;

 private:
  // One mapped segment. For direct chains the records are indexed by buffer
  // id and `next` links the free-id list and the ids of one chain.
  struct SegmentRecord {
    DmaAddr addr;
    uint32_t len = 0;
    bool writable = false;
    bool premapped = false;
    uint16_t next = 0;
  };
  // Per buffer id; meaningful for the head id of an outstanding chain.
  struct BufferState {
    uint64_t cookie = 0;
    uint64_t writable_len = 0;
    uint16_t ring_slots = 0;    // how far the device's used position moves for it
    uint16_t num_segments = 0;
    uint16_t last_id = 0;       // last id of a direct chain; the head itself when indirect
    bool indirect = false;
    bool outstanding = false;   // head of a chain the device owns
    bool returned = false;      // came back since it was last handed out (to tell "twice")
  };

  PackedDriverQueue(DmaOps& dma, const QueueConfig& config, uint16_t max_indirect, CoherentBuffer ring,
                    std::optional<CoherentBuffer> indirect_pool);

  // Maps every segment into the records of `head` (segments already mapped
  // are unmapped again on failure); returns the chain's writable length.
  [[nodiscard]] Result<uint64_t> map_segments(std::span<const DriverSegment> segs, bool indirect, uint16_t head);
  // Unmaps the first `count` segments of `head` with one DmaOps::unmap_batch()
  // in chain order (failures are logged); inside get_used_batch() only
  // appends them to unmaps_. The device-writable ones share `written` (the
  // device's claim) in that order, §2.8.4.
  void unmap_segments(bool indirect, uint16_t head, uint16_t count, uint64_t written);
  void publish_direct(uint16_t head, uint16_t n);
  void publish_indirect(uint16_t head, uint16_t n);
  // The write barrier, then the release store of `flags` that makes a chain available.
  void publish_flags(std::byte* desc, uint16_t flags) noexcept;
  // virtio_mb(barrier_), counted in platform_barriers_ when strong.
  void full_barrier() noexcept;
  // kick_prepare() without the notify flush.
  [[nodiscard]] bool needs_notification();
  // Unmaps the chain named by `head` (its device-writable buffers hold
  // `written` bytes from the device) and returns its ids to the free list.
  void release(uint16_t head, uint64_t written);
  [[nodiscard]] Error mark_broken(Error e);

  DmaOps& dma_;
  const uint16_t size_;
  const uint16_t max_indirect_;  // 0: indirect tables are not used
  const bool event_idx_;
  const BarrierKind barrier_;
  PostedWriteFlush* const notify_flush_;  // null: none; not owned
  const CoherentBuffer ring_;
  const std::optional<CoherentBuffer> indirect_pool_;
  std::byte* const desc_;          // descriptor ring, shared with the device
  std::byte* const driver_event_;  // written by us, read by the device
  std::byte* const device_event_;  // written by the device, read by us

  uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;  // §2.8.1: both wrap counters start at 1
  uint16_t last_used_ = 0;
  bool used_wrap_ = true;
  uint16_t num_free_;
  uint16_t free_head_ = 0;
  uint32_t num_added_ = 0;           // ring slots published since kick_prepare()
  uint16_t driver_event_flags_;      // what we last wrote to the driver area's flags
  uint16_t detach_cursor_ = 0;
  uint64_t platform_barriers_ = 0;  // strong barriers executed

  std::vector<SegmentRecord> records_;           // size_ entries
  std::vector<SegmentRecord> indirect_records_;  // size_ * max_indirect_ entries
  std::vector<BufferState> buffers_;             // size_ entries
  std::vector<DmaUnmapRequest> unmaps_;          // scratch of unmap_segments(); grows to the longest batch, then reused
  bool gather_unmaps_ = false;                   // inside get_used_batch(): unmap_segments() only gathers
  std::optional<Error> broken_;
};

}  // namespace vdma
