// SplitDriverQueue: the driver side of a split virtqueue (virtio 1.2 §2.7),
// what Linux's virtio_ring.c does for a guest, behind DriverQueue.
//
//   auto q = *SplitDriverQueue::create(dma, {.size = 256, .features = negotiated});
//   tell_device(q->ring_addresses());
//   DriverSegment segs[] = {{.addr = req_gpa, .len = 16, .type = BufferType::kDeviceReadable},
//                           {.addr = buf_gpa, .len = 4096, .type = BufferType::kDeviceWritable}};
//   if (auto r = q->add(segs, cookie); !r) ...;    // kNoSpace: reap used buffers first
//   if (q->kick_prepare()) notify_device();
//   while (auto u = q->get_used(); u && *u) complete((*u)->cookie, (*u)->len);
//
// Everything DriverQueue documents holds; this header adds what is specific
// to the split format.
//
// Memory: create() makes one dma.alloc_coherent() for the three ring areas
// (descriptor table at offset 0, available ring right after it, used ring on
// the next 64-byte boundary so the two sides do not share a cache line) and,
// when INDIRECT_DESC is negotiated, one more for the indirect tables: one
// table of max_indirect entries per possible head, so add() never allocates.
// The destructor unmaps every chain still outstanding and frees both; call it
// only once the device no longer accesses the rings (after a reset).
//
// Shadow state: the queue records, for every descriptor it writes (direct or
// in an indirect table), the DMA address, length, flags and next index, and
// for every head the cookie, descriptor count, writable length and whether it
// is outstanding. Completion and unmapping use only this shadow copy; ring
// memory is never read back, so a device that rewrites descriptors cannot make
// the driver unmap something else. A chain's buffers are unmapped with one
// DmaOps::unmap_batch() in chain order (one IOTLB invalidation behind a
// strict IOMMU); get_used_batch() unmaps every chain of a completion batch
// with one.
//
// The device is not trusted (a confidential guest's host): get_used() checks
// that the used idx advanced by no more than the chains outstanding, that the
// id is below the queue size and is the head of an outstanding chain (so the
// same id twice is caught), and clamps the length to the chain's writable
// bytes. A violation moves the queue to the broken state for good; the error
// says what the device did, e.g. "device returned used id 300 but the queue
// size is 256". Broken queues still give their chains back via
// detach_unused() after a reset.
//
// Barriers: VIRTIO_F_ORDER_PLATFORM selects BarrierKind::kStrong (platform
// DMA barriers, counted by platform_barriers()), otherwise kWeak (SMP
// barriers). The avail idx is published with a release store and the used
// idx read with an acquire load. kick_prepare() runs QueueConfig::notify_flush
// once when it returns true.
//
// Thread safety: none; the caller serialises all calls (DriverQueue).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <span>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/virtio/barriers.h"
#include "vdma/virtio/driver_queue.h"

namespace vdma {

class SplitDriverQueue final : public DriverQueue {
 public:
  // `dma` must outlive the queue. config.max_indirect above the queue size is
  // lowered to it (a chain may not be longer than the queue, §2.7.5.3.1).
  // Errors: VirtioErrc::kInvalidConfig (size 0, above 32768, not a power of
  // two; coherent memory whose DMA address is misaligned), errors of
  // DmaOps::alloc_coherent.
  [[nodiscard]] static Result<std::unique_ptr<SplitDriverQueue>> create(DmaOps& dma, const QueueConfig& config);

  SplitDriverQueue(const SplitDriverQueue&) = delete;
  SplitDriverQueue& operator=(const SplitDriverQueue&) = delete;
  ~SplitDriverQueue() override;

  [[nodiscard]] RingFormat format() const noexcept override { return RingFormat::kSplit; }
  [[nodiscard]] uint16_t size() const noexcept override { return size_; }
  [[nodiscard]] RingAddresses ring_addresses() const noexcept override { return addrs_; }
  [[nodiscard]] uint16_t num_free() const noexcept override { return num_free_; }

  [[nodiscard]] Result<void> add(std::span<const DriverSegment> segs, uint64_t cookie) override;
  [[nodiscard]] bool kick_prepare() override;
  [[nodiscard]] Result<std::optional<UsedBuffer>> get_used() override;
  [[nodiscard]] Result<size_t> get_used_batch(std::span<UsedBuffer> out) override;
  void disable_callbacks() override;
  [[nodiscard]] bool enable_callbacks() override;

  [[nodiscard]] BarrierKind barriers() const noexcept override { return barrier_; }
  [[nodiscard]] uint64_t platform_barriers() const noexcept override { return platform_barriers_; }
  [[nodiscard]] bool is_broken() const noexcept override { return broken_.has_value(); }
  [[nodiscard]] const Error* broken_reason() const noexcept override { return broken_ ? &*broken_ : nullptr; }

  [[nodiscard]] std::optional<uint64_t> detach_unused() override;

  // Whether add() would put a chain of `segments` segments in an indirect table.
  [[nodiscard]] bool uses_indirect(size_t segments) const noexcept {
    return indirect_pool_.has_value() && segments > 1 && segments <= max_indirect_;
  }
  [[nodiscard]] uint16_t max_indirect() const noexcept { return max_indirect_; }

 private:
  // The queue's own record of one descriptor (§2.7.5 fields plus whether the
  // queue mapped it). `next` links a chain while it is outstanding and the
  // free list while it is free, as in Linux.
  struct ShadowDesc {
    uint64_t dma = 0;
    uint32_t len = 0;
    uint16_t flags = 0;  // split::kDescF* as written to the ring, plus kShadowPremapped
    uint16_t next = 0;
  };
  static constexpr uint16_t kShadowPremapped = 0x8000;  // never written to the ring

  struct HeadState {
    uint64_t cookie = 0;
    uint64_t writable_len = 0;  // the most the device may report as written
    uint16_t ring_descs = 0;    // ring descriptors the chain occupies (1 when indirect)
    uint16_t segments = 0;      // buffers mapped for it (table entries when indirect)
    uint16_t last = 0;          // its last ring descriptor, spliced onto the free list
    bool outstanding = false;
    bool indirect = false;
  };

  SplitDriverQueue(DmaOps& dma, const QueueConfig& config, uint16_t max_indirect);

  // Why add() refuses `segs` (VirtioErrc::kInvalidChain); called only once
  // add()'s branch-free check found a problem, so the data path never
  // formats anything.
  [[gnu::cold]] [[nodiscard]] Error invalid_chain_error(std::span<const DriverSegment> segs) const;
  // Unmaps the `mapped` segments already mapped for a chain add() gives up on; returns `e`.
  [[gnu::cold]] [[nodiscard]] Error abandon_chain(uint16_t head, bool indirect, size_t mapped, Error e);
  // Appends the unmap of `d` (unless premapped) to unmaps_; a device-writable
  // buffer takes its share of `written` (the device's claim, consumed in
  // chain order, §2.7.8.2).
  void add_unmap(const ShadowDesc& d, uint64_t& written);
  // Unmaps the first `count` segments of the chain at `head` with one
  // DmaOps::unmap_batch() (failures are logged); inside get_used_batch()
  // only appends them to unmaps_. `written` as add_unmap().
  void unmap_partial(uint16_t head, bool indirect, size_t count, uint64_t written);
  // Unmaps a whole outstanding chain whose device-writable buffers hold
  // `written` bytes from the device, and returns its descriptors to the free list.
  void detach(uint16_t head, uint64_t written);

  // Runs notify_flush_ when `notify` (kick_prepare()'s answer); returns it.
  bool flush_for_notify(bool notify) noexcept;
  // virtio_mb(barrier_), counted in platform_barriers_ when strong.
  void full_barrier() noexcept;

  // Moves the queue to the broken state for good (VirtioErrc::kBroken with
  // `message`, saying what the device did); returns the error.
  [[gnu::cold]] [[nodiscard]] Error mark_broken(std::string message);

  [[nodiscard]] std::byte* desc_at(uint16_t i) const noexcept { return ring_.host.data() + size_t{16} * i; }
  [[nodiscard]] std::byte* indirect_table(uint16_t head) const noexcept {
    return indirect_pool_->host.data() + size_t{16} * max_indirect_ * head;
  }

  DmaOps& dma_;
  const uint16_t size_;
  const uint16_t mask_;
  const uint16_t max_indirect_;
  const bool event_idx_;
  const BarrierKind barrier_;
  PostedWriteFlush* const notify_flush_;  // null: none; not owned

  CoherentBuffer ring_;                          // desc table + avail + used
  std::optional<CoherentBuffer> indirect_pool_;  // size_ * max_indirect_ tables, when INDIRECT_DESC
  RingAddresses addrs_;
  std::byte* avail_ = nullptr;  // into ring_.host
  std::byte* used_ = nullptr;   // into ring_.host

  std::vector<ShadowDesc> shadow_;           // one per ring descriptor
  std::vector<ShadowDesc> indirect_shadow_;  // max_indirect_ per head, when INDIRECT_DESC
  std::vector<HeadState> heads_;             // one per ring descriptor
  std::vector<DmaUnmapRequest> unmaps_;      // scratch of unmap_partial(); grows to the longest batch, then reused
  bool gather_unmaps_ = false;               // inside get_used_batch(): unmap_partial() only gathers

  uint16_t free_head_ = 0;
  uint16_t num_free_ = 0;
  uint16_t outstanding_ = 0;       // chains the device holds
  uint16_t avail_idx_ = 0;         // our copy of avail->idx (only we write it)
  uint32_t added_since_kick_ = 0;  // chains published since the last kick_prepare()
  uint16_t last_used_ = 0;         // next used ring entry to consume
  bool callbacks_enabled_ = true;
  uint16_t detach_cursor_ = 0;     // where detach_unused() resumes its scan
  uint64_t platform_barriers_ = 0;  // strong barriers executed
  std::optional<Error> broken_;
};

}  // namespace vdma
