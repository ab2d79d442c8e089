// BlkDriver: the virtio-blk driver (virtio 1.2 §5.2) over any VirtioTransport.
//
//   auto drv = VDMA_TRY(BlkDriver::create(transport, {.queue_depth = 32, .max_io_bytes = 128 << 10}));
//   std::span<std::byte> buf = drv->buffer(0, slot);          // fill for a write
//   VDMA_TRY(drv->submit(0, slot, BlkOp::kWrite, sector, 4096));
//   VDMA_TRY(drv->kick(0));                                     // one notification per batch
//   BlkCompletion done[32];
//   size_t n = VDMA_TRY(drv->wait(0, done, std::chrono::seconds(5)));
//   // done[i].slot is free again; done[i].status is kBlkStatusOk / IoErr / Unsupp
//
//   // Synchronous helpers (the queue must have nothing in flight):
//   VDMA_TRY(drv->write(0, sector, bytes));
//   VDMA_TRY(drv->read(0, sector, out));
//
// Slots. Each queue has queue_depth slots; slot s owns a data buffer of
// max_io_bytes (buffer(q, s)), a request header, a discard/write-zeroes
// segment and a status byte, all allocated once from the transport's
// memory at create(). The caller keeps track of which slots are in flight:
// a slot is free until submit() and again once reap()/wait() returned its
// completion. Requests of one queue complete in any order.
//
// DMA. Every request's header, data and status go through the transport's
// DmaOps: mapped per request by the queue, or, when the transport says
// premap_buffers(), mapped once at create() and handed over as premapped
// segments (then only the first device access of each buffer can miss).
// The driver never assumes a DMA address equals a guest-physical address.
//
// Features accepted: SEG_MAX, SIZE_MAX, BLK_SIZE, FLUSH, TOPOLOGY, RO, MQ,
// DISCARD, WRITE_ZEROES (whatever the transport negotiated); the driver reads
// capacity and limits from config space at create().
//
// Errors:
//   BlkErrc::kInvalidOption  create(): queue_depth 0 or above what the queue
//                            can hold, max_io_bytes 0, not a multiple of 512,
//                            or above the device's size_max * seg_max limits;
//                            submit(): slot out of range or in flight, a
//                            length not a multiple of 512 or above
//                            max_io_bytes, a range past the capacity, an op
//                            the device did not negotiate, a write to a
//                            read-only device.
//   BlkErrc::kIo             the synchronous helpers, when the device
//                            answers IOERR/UNSUPP (names op, sector, status).
//   VirtioErrc::kBroken etc. errors of the queue and the transport, as is.
//   BaseErrc::kTimeout       wait() or a synchronous helper ran out of time.
//
// Thread safety: calls for different queues may run concurrently; calls for
// one queue must be serialised by the caller.
#pragma once

#include <chrono>
#include <initializer_list>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/blk/errors.h"
#include "vdma/blk/virtio_blk.h"
#include "vdma/virtio/transport.h"

namespace vdma::blk {

enum class BlkOp : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes, kGetId };
[[nodiscard]] std::string_view to_string(BlkOp op) noexcept;

// The device feature bits (0..23) this driver understands: what a transport
// should offer to accept on its behalf (FrontendOptions::device_features).
[[nodiscard]] constexpr uint64_t driver_features() noexcept {
  uint64_t f = 0;
  for (unsigned b : {kBlkFeatureSizeMax, kBlkFeatureSegMax, kBlkFeatureRo, kBlkFeatureBlkSize, kBlkFeatureFlush,
                     kBlkFeatureTopology, kBlkFeatureMq, kBlkFeatureDiscard, kBlkFeatureWriteZeroes}) {
    f |= uint64_t{1} << b;
  }
  return f;
}

struct BlkDriverOptions {
  uint32_t queue_depth = 32;
  uint32_t max_io_bytes = 128 << 10;
};

struct BlkCompletion {
  uint32_t slot = 0;
  uint8_t status = kBlkStatusIoErr;  // the status byte the device wrote
  uint32_t used_len = 0;             // the device's used length (data + status)
};

class BlkDriver {
 public:
  [[nodiscard]] static Result<std::unique_ptr<BlkDriver>> create(VirtioTransport& transport,
                                                                 const BlkDriverOptions& options);
  // Unmaps (premapped mode) and frees every slot buffer. Precondition:
  // nothing in flight, or the device reset (it must not write into freed
  // buffers); the transport outlives the driver.
  ~BlkDriver();
  BlkDriver(const BlkDriver&) = delete;
  BlkDriver& operator=(const BlkDriver&) = delete;

  [[nodiscard]] uint64_t capacity_sectors() const noexcept;
  [[nodiscard]] uint32_t block_size() const noexcept;  // blk_size, 512 when not offered
  [[nodiscard]] bool read_only() const noexcept;
  [[nodiscard]] bool supports(BlkOp op) const noexcept;  // flush / discard / write-zeroes negotiated
  [[nodiscard]] uint32_t num_queues() const noexcept;
  [[nodiscard]] uint32_t queue_depth() const noexcept;
  [[nodiscard]] uint32_t max_io_bytes() const noexcept;

  // The data buffer of slot `slot` of queue `queue` (max_io_bytes long): a
  // write sends its first `bytes`, a read lands in it. Valid for the
  // driver's lifetime; touch it only while the slot is not in flight.
  [[nodiscard]] std::span<std::byte> buffer(uint32_t queue, uint32_t slot) noexcept;

  // Queues one request on a free slot; it is not visible to the device
  // until kick(). `bytes` is the data length for kRead/kWrite, the range
  // length for kDiscard/kWriteZeroes (sent as one segment), ignored for
  // kFlush, and at most 20 (the ID string) for kGetId.
  [[nodiscard]] Result<void> submit(uint32_t queue, uint32_t slot, BlkOp op, uint64_t sector, uint32_t bytes);
  // Notifies the device of everything submitted since the last kick, unless
  // the device suppressed notifications.
  [[nodiscard]] Result<void> kick(uint32_t queue);
  // Completions ready now, without blocking (0 when none).
  [[nodiscard]] Result<size_t> reap(uint32_t queue, std::span<BlkCompletion> out);
  // At least one completion, waiting up to `timeout` on the queue's
  // interrupt eventfd (or spinning on the ring when the transport has none).
  // With nothing in flight on the queue it fails at once with
  // BaseErrc::kTimeout (nothing could complete); a timeout's message names
  // the slots still in flight.
  [[nodiscard]] Result<size_t> wait(uint32_t queue, std::span<BlkCompletion> out, std::chrono::nanoseconds timeout);
  [[nodiscard]] uint32_t in_flight(uint32_t queue) const noexcept;

  // Synchronous helpers. Precondition: nothing in flight on `queue`.
  [[nodiscard]] Result<void> read(uint32_t queue, uint64_t sector, std::span<std::byte> out);
  [[nodiscard]] Result<void> write(uint32_t queue, uint64_t sector, std::span<const std::byte> data);
  [[nodiscard]] Result<void> flush(uint32_t queue);
  [[nodiscard]] Result<void> discard(uint32_t queue, uint64_t sector, uint32_t bytes);
  [[nodiscard]] Result<void> write_zeroes(uint32_t queue, uint64_t sector, uint32_t bytes);
  [[nodiscard]] Result<std::string> get_id(uint32_t queue);

 private:
  struct Impl;
  explicit BlkDriver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vdma::blk
