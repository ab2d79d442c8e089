// LoopbackTransport: a VirtioTransport whose device is an in-process
// virtio-blk device model (vdma::blk::BlkDevice), for driver tests.
//
//   auto t = *LoopbackTransport::create({.format = RingFormat::kPacked, .num_queues = 2,
//                                        .storage = "/tmp/disk.img"});
//   auto drv = *blk::BlkDriver::create(*t, {.queue_depth = 32});
//   ASSERT_THAT(drv->write(0, 8, bytes), IsOk());
//
// Memory: one GuestMemory with a private "ram" region (driver buffers, from
// alloc_buffer) and a shared region holding the coherent window (rings) and
// a bounce window (for a test's bounce DmaOps). The driver's queues map
// through the DmaOps from LoopbackOptions::make_dma (IdentityDmaOps by
// default, so DmaAddr == Gpa); the device reaches memory through the
// DeviceMemory from make_device_memory (RegionTable::bypass of the whole
// guest memory by default).
//
// Device: one thread per queue. notify(i) writes queue i's kick eventfd; the
// thread pops every available chain, lets BlkDevice::handle() execute it,
// pushes it used and, when the driver wants a notification, writes queue i's
// interrupt eventfd (interrupt_fd(i), or -1 with polling = true, when the
// driver must spin). With complete_out_of_order the thread handles a whole
// batch and returns it in reverse order, so completions overtake each other.
//
// Features: offered = BlkDevice::offered_features() | VERSION_1 | EVENT_IDX
// | INDIRECT_DESC | RING_PACKED | ACCESS_PLATFORM; accepted = options.features
// (RING_PACKED follows options.format), checked with negotiate_features.
//
// Lifetime: a driver built on the transport must be destroyed before it.
// The destructor stops and joins the device threads first.
// Thread safety: as VirtioTransport; device statistics are atomics.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/base/unique_fd.h"
#include "vdma/blk/blk_config.h"
#include "vdma/blk/blk_device.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/mem/device_memory.h"
#include "vdma/mem/gpa_allocator.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/transport.h"

namespace vdma::testing {

// Where things are in the loopback's guest memory.
struct LoopbackLayout {
  AddrRange<Gpa> ram;       // private; alloc_buffer carves driver buffers from it
  AddrRange<Gpa> coherent;  // shared; ring memory
  AddrRange<Gpa> bounce;    // shared; free for a test's bounce pool
};

struct LoopbackOptions {
  RingFormat format = RingFormat::kSplit;
  uint16_t queue_size = 128;
  uint32_t num_queues = 1;
  // Driver-accepted features; nullopt: every offered bit except
  // ACCESS_PLATFORM (and RING_PACKED unless format is packed).
  std::optional<uint64_t> features;
  bool polling = false;         // no interrupt eventfd: interrupt_fd() is -1
  bool premap_buffers = false;  // premap_buffers() answer
  bool complete_out_of_order = false;
  // "null:SIZE" or a file path (parse_storage_spec); read_only opens it so.
  std::string storage = "null:16M";
  bool read_only = false;
  blk::BlkOptions blk;  // num_queues is overwritten with num_queues above
  uint64_t ram_size = 64 << 20;
  uint64_t coherent_size = 4 << 20;
  uint64_t bounce_size = 8 << 20;
  // The driver's DmaOps; default IdentityDmaOps over the coherent window.
  std::function<Result<std::unique_ptr<DmaOps>>(const GuestMemory&, const LoopbackLayout&)> make_dma;
  // The device's view of memory; default RegionTable::bypass(memory).
  std::function<Result<std::unique_ptr<DeviceMemory>>(const GuestMemory&, DmaOps&)> make_device_memory;
  // The platform's notify hook for the driver queues (QueueConfig::notify_flush); must outlive the transport.
  PostedWriteFlush* notify_flush = nullptr;
};

class LoopbackTransport final : public VirtioTransport {
 public:
  // Errors: those of GuestMemory::create, the DmaOps and DeviceMemory
  // factories, storage and BlkDevice creation, negotiate_features,
  // make_driver_queue / make_device_queue; BaseErrc::kSystem (eventfd).
  [[nodiscard]] static Result<std::unique_ptr<LoopbackTransport>> create(LoopbackOptions options);
  ~LoopbackTransport() override;

  [[nodiscard]] uint64_t features() const noexcept override { return features_; }
  [[nodiscard]] uint32_t num_queues() const noexcept override { return static_cast<uint32_t>(queues_.size()); }
  [[nodiscard]] DriverQueue& queue(uint32_t index) noexcept override;
  [[nodiscard]] Result<void> notify(uint32_t index) override;
  [[nodiscard]] int interrupt_fd(uint32_t index) const noexcept override;
  [[nodiscard]] Result<void> read_config(uint32_t offset, std::span<std::byte> out) override;
  [[nodiscard]] DmaOps& dma() noexcept override { return *dma_; }
  [[nodiscard]] bool premap_buffers() const noexcept override { return premap_; }
  [[nodiscard]] const GuestMemory& memory() const noexcept override { return *mem_; }
  [[nodiscard]] Result<Gpa> alloc_buffer(uint64_t size, uint64_t align) override;
  [[nodiscard]] Result<void> free_buffer(Gpa gpa, uint64_t size) override;

  // What the device offered; the device model itself.
  [[nodiscard]] uint64_t offered_features() const noexcept { return offered_; }
  [[nodiscard]] blk::BlkDevice& device() noexcept { return *device_; }
  [[nodiscard]] const LoopbackLayout& layout() const noexcept { return layout_; }
  // Per queue: notifications received, chains completed, interrupts sent.
  [[nodiscard]] uint64_t kicks(uint32_t index) const noexcept;
  [[nodiscard]] uint64_t completed(uint32_t index) const noexcept;
  [[nodiscard]] uint64_t interrupts(uint32_t index) const noexcept;
  // The first error of queue i's device thread (a ring the device found
  // corrupt), or nullopt. Read it after the driver is done with the queue.
  [[nodiscard]] std::optional<Error> device_error(uint32_t index) const;
  // Bytes currently allocated with alloc_buffer.
  [[nodiscard]] uint64_t buffer_bytes_in_use() const;

 private:
  struct Queue;
  LoopbackTransport() = default;
  void serve(Queue& q);

  std::unique_ptr<GuestMemory> mem_;
  LoopbackLayout layout_;
  std::unique_ptr<DmaOps> dma_;
  std::unique_ptr<DeviceMemory> dev_mem_;
  std::unique_ptr<blk::BlkDevice> device_;
  uint64_t offered_ = 0;
  uint64_t features_ = 0;
  bool premap_ = false;
  bool polling_ = false;
  bool out_of_order_ = false;
  mutable std::mutex alloc_mu_;
  std::unique_ptr<GpaAllocator> ram_alloc_;  // guarded by alloc_mu_
  uint64_t ram_in_use_ = 0;                  // guarded by alloc_mu_
  std::vector<std::unique_ptr<Queue>> queues_;
};

}  // namespace vdma::testing
