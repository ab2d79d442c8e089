// BlkDevice: the virtio-blk device model (virtio 1.2 §5.2) over a storage
// backend. It turns descriptor chains into storage operations and completes
// each request in-band with its status byte.
//
//   auto storage = VDMA_TRY(open_storage(VDMA_TRY(parse_storage_spec("disk.img")), {}));
//   auto dev = VDMA_TRY(BlkDevice::create(std::move(storage), BlkOptions{.num_queues = 2}));
//   VDMA_TRY(dev->set_features(acked));            // what the driver accepted
//   auto used = dev->handle(queue, chain);         // on that queue's worker thread
//   if (!used) { /* a driver error: the queue needs a reset */ }
//   VDMA_TRY(queue->push_used(chain, *used));
//
// Request layout (virtio 1.2 §5.2.6): the first 16 readable bytes are the
// header (type, reserved, sector); for OUT, DISCARD and WRITE_ZEROES the rest
// of the readable bytes are the data; the last writable byte is the status;
// for IN and GET_ID the writable bytes before it are the data. The chain's
// fragments carry no descriptor boundaries, so every rule is about bytes: a
// header may span fragments, and zero-length fragments are skipped.
//
// The driver is not trusted. Completion:
//   - a chain that carries no request (walked with an error, or no writable
//     byte for the status): nothing can be reported in-band, and a used
//     length of 0 would read as success to a driver that does not check it
//     (Linux's virtio-blk reads the stale status byte). handle() returns
//     BlkErrc::kBadChain; the caller puts the queue in NEEDS_RESET, as for
//     any other ring corruption (virtio 1.2 §2.1.2).
//   - otherwise the status byte is written and handle() returns the number
//     of writable bytes (data + status, as QEMU reports it), clamped to 2^32-1.
//   - status OK: done. IOERR: a malformed request (short header, data on the
//     wrong side, a length not a multiple of 512, a range past the capacity or
//     whose sector * 512 overflows, a range not aligned to blk_size, a write
//     or discard on a read-only disk, a discard segment array whose size is
//     not a multiple of 16 bytes or empty, a segment over its sector limit)
//     or a storage failure. UNSUPP: an unknown type, DISCARD / WRITE_ZEROES
//     not negotiated, more segments than max_*_seg, reserved segment flags,
//     UNMAP on a DISCARD.
// Nothing is written to storage unless the whole request was valid.
//
// Cache mode: writeback unless the driver did not accept FLUSH, or accepted
// CONFIG_WCE and wrote 0 to the writeback byte; in writethrough mode each
// write is followed by a flush before it completes.
//
// Threads: handle(q, ...) for different q may run concurrently (each queue has
// its own storage queue and io_uring); calls for one q are serial. The
// fragments are used only during the call. set_features() and reset() must
// not run concurrently with handle(); read_config()/write_config() may (the
// writeback byte is atomic). No allocation per request.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/blk/blk_config.h"
#include "vdma/blk/errors.h"
#include "vdma/blk/storage.h"
#include "vdma/blk/virtio_blk.h"
#include "vdma/virtio/device_queue.h"

namespace vdma::blk {

class BlkQueue;

// A request start() deferred, finished: its tag and used length.
struct BlkDeviceCompletion {
  uint32_t tag = 0;
  uint32_t used = 0;
};

class BlkDevice {
 public:
  // Errors: BlkErrc::kInvalidOption (validate_options), BlkErrc::kIo (a
  // queue's io_uring could not be set up).
  [[nodiscard]] static Result<std::unique_ptr<BlkDevice>> create(std::unique_ptr<StorageBackend> storage,
                                                                 const BlkOptions& options);
  ~BlkDevice();
  BlkDevice(const BlkDevice&) = delete;
  BlkDevice& operator=(const BlkDevice&) = delete;

  [[nodiscard]] uint64_t offered_features() const noexcept { return offered_; }
  // The device-specific bits (0-23) the driver accepted; other bits are
  // ignored. Until called, every offered bit counts as accepted.
  // Errors: BlkErrc::kInvalidOption when a bit was not offered.
  [[nodiscard]] Result<void> set_features(uint64_t acked);
  [[nodiscard]] uint64_t acked_features() const noexcept { return acked_.load(std::memory_order_relaxed); }

  [[nodiscard]] uint32_t num_queues() const noexcept { return options_.num_queues; }
  [[nodiscard]] uint64_t capacity_sectors() const noexcept { return capacity_sectors_; }
  [[nodiscard]] bool read_only() const noexcept { return read_only_; }
  [[nodiscard]] const StorageBackend& storage() const noexcept { return *storage_; }

  [[nodiscard]] static constexpr uint32_t config_size() noexcept { return sizeof(VirtioBlkConfig); }
  // The config bytes at [offset, offset + out.size()).
  // Errors: BlkErrc::kInvalidOption when the range leaves the config space.
  [[nodiscard]] Result<void> read_config(uint32_t offset, std::span<std::byte> out) const;
  // Only the writeback byte is writable, only with CONFIG_WCE accepted, and
  // only with 0 or 1. Errors: BlkErrc::kInvalidOption naming what was wrong.
  [[nodiscard]] Result<void> write_config(uint32_t offset, std::span<const std::byte> data);
  // Whether writes currently complete without being made durable.
  [[nodiscard]] bool writeback_enabled() const noexcept;

  // Processes one request of queue `queue_index` (see the header comment);
  // returns the used length. Errors: BlkErrc::kBadChain (see above),
  // BlkErrc::kInvalidOption (a queue index out of range).
  [[nodiscard]] Result<uint32_t> handle(uint32_t queue_index, const DescriptorChain& chain);
  [[nodiscard]] Result<uint32_t> handle(const DescriptorChain& chain) { return handle(0, chain); }

  // Asynchronous requests: up to max_in_flight(q) at once per queue (0: the
  // storage completes everything at once, start() is handle()). start()
  // begins the request under `tag` (unused, < max_in_flight(q)) and returns
  // nullopt while its I/O runs; reap() reports it later with its used
  // length, the status byte written. Or it returns handle()'s answer when
  // the request finished at once (a null disk, GET_ID, DISCARD, an invalid
  // request, one with more segments than an operation takes). The memory
  // the chain's fragments point at must stay valid, and the driver must not
  // get the chain back, until reap() reported the tag. submit() sends the
  // I/O started since its last call in one system call; completion_fd(q)
  // is readable while completions wait (-1: none ever does). A FLUSH covers
  // every write completed before it started (virtio 1.2 §5.2.6.1: the
  // driver waits for the writes it wants covered); writethrough writes
  // complete after their flush. Same threading as handle().
  [[nodiscard]] std::optional<Result<uint32_t>> start(uint32_t queue_index, const DescriptorChain& chain,
                                                      uint32_t tag);
  void submit(uint32_t queue_index);
  [[nodiscard]] size_t reap(uint32_t queue_index, std::span<BlkDeviceCompletion> out);
  [[nodiscard]] int completion_fd(uint32_t queue_index) const;
  [[nodiscard]] uint32_t max_in_flight(uint32_t queue_index) const;
  // Requests of queue q completed with a status other than OK (IOERR,
  // UNSUPP) so far. Any thread.
  [[nodiscard]] uint64_t queue_errors(uint32_t queue_index) const;

  // Back to the state after create(): every offered feature counts as
  // accepted, the writeback byte has its initial value.
  void reset();

 private:
  friend class BlkQueue;
  BlkDevice(std::unique_ptr<StorageBackend> storage, const BlkOptions& options);

  std::unique_ptr<StorageBackend> storage_;
  const BlkOptions options_;
  const bool read_only_;
  const uint64_t capacity_sectors_;
  const uint64_t offered_;
  const VirtioBlkConfig config_;  // immutable except writeback, kept in writeback_
  std::atomic<uint64_t> acked_;
  std::atomic<uint8_t> writeback_;
  std::vector<std::unique_ptr<BlkQueue>> queues_;
};

}  // namespace vdma::blk
