// VhostUserFrontend: a userspace "guest" that drives a vhost-user back-end
// (vdma-blk, qemu-storage-daemon, ...) through the platform DMA layer and
// acts as the back-end's vIOMMU. It is the VirtioTransport a driver runs on.
//
//   FrontendOptions o{.mode = DmaMode::kIommuStrict, .num_queues = 1,
//                     .device_features = feature_bit(kBlkFeatureFlush)};
//   auto fe = VDMA_TRY(VhostUserFrontend::connect("/tmp/blk.sock", o));
//   VirtioTransport& t = *fe;                        // hand to BlkDriver
//   std::array<std::byte, 8> cap;
//   VDMA_TRY(t.read_config(0, cap));                 // GET_CONFIG
//   FrontendStats s = fe->stats();                   // misses served, IOTLB messages sent
//
// Set-up (create/connect), in this order (vhost-user.rst "Starting and
// stopping rings", virtio 1.2 §3.1.1):
//   GET_FEATURES; the mode's needs checked against the offer.
//   GET/SET_PROTOCOL_FEATURES (when PROTOCOL_FEATURES is offered): REPLY_ACK,
//     BACKEND_REQ, CONFIG, MQ, CONFIGURE_MEM_SLOTS, STATUS, as offered.
//   SET_OWNER; GET_QUEUE_NUM (MQ); SET_BACKEND_REQ_FD (BACKEND_REQ: a socketpair).
//   Features: VERSION_1, the wanted device bits the back-end offers,
//     INDIRECT_DESC / EVENT_IDX per options, RING_PACKED for packed rings,
//     PROTOCOL_FEATURES, and the transport bits DmaPolicy accepts for the
//     mode; DmaPolicy::features_ok, SET_STATUS ACKNOWLEDGE|DRIVER,
//     SET_FEATURES, SET_STATUS FEATURES_OK (STATUS protocol feature).
//   SET_MEM_TABLE: every region (gpa), or only the shared ones on a
//     restricted platform, or every region at its bus address when the
//     DMA ops translate (offset, encryption-bit) — the guest addresses are
//     always the DMA addresses descriptors carry.
//   With ACCESS_PLATFORM on a device without an IOMMU (restricted): an
//     identity IOTLB UPDATE per memory-table region.
//   Per queue: SET_VRING_NUM, SET_VRING_BASE 0 (packed: 0 | wrap 1 << 15), SET_VRING_ADDR (IOVAs with
//     ACCESS_PLATFORM, else the front-end addresses the memory table gives
//     the ring's DMA addresses), SET_VRING_CALL (eventfd, or the no-fd flag
//     when polling), SET_VRING_KICK, SET_VRING_ENABLE 1 (PROTOCOL_FEATURES:
//     rings start disabled). Then SET_STATUS DRIVER_OK.
// Every state-changing request carries NEED_REPLY under REPLY_ACK.
//
// Notifications, barriers, DMA debugging. notify() writes the queue's kick
// eventfd; the queues run the topology's "flush_before_notify" hook once
// before each one (notify_flush()). The queues use the platform's DMA
// barriers when the back-end offered ORDER_PLATFORM, which is then always
// accepted (DriverQueue::barriers()). With FrontendOptions::dma_debug every
// mapping goes through a DebugDmaOps (dma_debug()).
//
// vIOMMU. A back-end channel thread answers IOTLB MISS with an UPDATE on
// the main socket (iova -> front-end VA, the mapping's permission), the run
// of the mapping inside one region; unmaps send INVALIDATE through the
// IommuDmaOps' InvalidationSink and return after every ack (strict), or in
// flush-queue batches (lazy; the thread also enforces the queue's age
// limit). Each new IOVA is also announced when the driver maps it
// (FrontendOptions::announce_maps; in lazy mode not a run revived from the
// flush queue): an UPDATE posted on the main socket, its ack read later, so
// the back-end rarely has to ask; a
// driver that reaps with DriverQueue::get_used_batch gets one INVALIDATE
// round trip per reap. On a restricted platform a MISS outside the shared regions is
// logged as an error and not answered.
//
// Errors of create()/connect():
//   FrontendErrc::kConnectFailed  "cannot connect to /tmp/x.sock: No such file or directory"
//   FrontendErrc::kBackendLacks   "back-end does not offer ACCESS_PLATFORM; the iommu and
//                                 restricted modes need it (offered features 0x...)", no
//                                 VERSION_1 / RING_PACKED / REPLY_ACK / BACKEND_REQ where
//                                 needed, "back-end has 1 queues; 2 requested"
//   FrontendErrc::kInvalidOption  num_queues 0 or above 256
//   VirtioErrc::kInvalidConfig    a queue size make_driver_queue refuses ("queue 0: ...")
//   FrontendErrc::kDisconnected   the back-end hung up or did not reply in time
//   VhostUserErrc::kRemoteError   the back-end refused a request (names it)
//   and those of GuestPlatform::create (topology, memory), DmaPolicy, make_driver_queue.
//
// Shutdown (destructor): GET_VRING_BASE for every queue, then the queues,
// the channel thread and the socket go. A back-end that is gone or silent
// costs at most one reply timeout, never a hang. A back-end that hangs up
// mid-session makes every later request fail with kDisconnected, notify()
// included, and the call eventfds are signalled once so waiters wake up.
//
// Thread safety: as VirtioTransport (one thread per queue; read_config,
// alloc/free_buffer, stats from any thread). Destroy it with no other call
// running.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vdma/base/unique_fd.h"
#include "vdma/dma/debug_dma_ops.h"
#include "vdma/dma/topology.h"
#include "vdma/frontend/dma_mode.h"
#include "vdma/frontend/guest_platform.h"
#include "vdma/virtio/queue.h"
#include "vdma/virtio/transport.h"

namespace vdma {

namespace frontend_detail {
class FrontendCore;
}

struct FrontendOptions {
  DmaMode mode = DmaMode::kBypass;
  // Replaces the mode's built-in topology (load_topology / parse_topology).
  std::optional<PlatformTopology> topology;
  std::string device_id = "blk0";  // the device's id in the topology
  uint32_t num_queues = 1;         // 1..256
  uint16_t queue_size = 256;
  RingFormat ring_format = RingFormat::kSplit;
  uint64_t ram_size = kDefaultRamSize;
  uint64_t coherent_size = kDefaultCoherentSize;
  uint64_t bounce_size = kDefaultBounceSize;
  // Device-specific feature bits (0..23) the driver wants; the back-end's
  // offer decides which of them are negotiated.
  uint64_t device_features = 0;
  bool event_idx = true;
  bool indirect = true;
  // No call eventfds: interrupt_fd() is -1 and the driver polls get_used().
  bool polling = false;
  // How long a reply may take before the connection is given up.
  std::chrono::milliseconds reply_timeout{10000};
  // Wrap the device's DMA ops in the DMA-API debug checker (DebugDmaOps,
  // dma/debug_dma_ops.h): dma() and the queues then map through it, and
  // dma_debug() hands it out for its reports.
  bool dma_debug = false;
  // The iommu modes: announce every new IOVA to the back-end when the driver
  // maps it (an IOTLB UPDATE whose ack is read later), so the back-end
  // rarely misses; a lazy run revived from the flush queue is not announced
  // again. false: the back-end learns translations only by MISS.
  bool announce_maps = true;
};

struct FrontendStats {
  uint64_t misses_served = 0;     // IOTLB MISS answered with an UPDATE
  uint64_t misses_refused = 0;    // MISS not answered (unmapped, or private memory)
  // Of those, for an IOVA with no mapping (any more): a MISS that crossed
  // its buffer's unmap (the announced UPDATE had answered it already), or a
  // device using an IOVA it was never given. The rest were refused because
  // the memory is not the back-end's to see.
  uint64_t misses_unmapped = 0;
  uint64_t access_failures = 0;   // ACCESS_FAIL received
  uint64_t updates_sent = 0;      // IOTLB UPDATE messages (misses and identity grants)
  uint64_t invalidates_sent = 0;  // IOTLB INVALIDATE messages
  uint64_t updates_announced = 0; // IOTLB UPDATE posted when the driver mapped a buffer (strict)
  uint64_t updates_refused = 0;   // of those, refused by the back-end (it then misses)
  uint64_t invalidation_round_trips = 0;  // INVALIDATE batches sent whose acks were waited for together
  uint64_t notifies = 0;          // notify() calls that reached the kick eventfd
};

class VhostUserFrontend final : public VirtioTransport {
 public:
  // Runs the whole set-up over a connected vhost-user socket.
  [[nodiscard]] static Result<std::unique_ptr<VhostUserFrontend>> create(UniqueFd socket, FrontendOptions options);
  // Connects to a back-end listening on `path`, then create().
  [[nodiscard]] static Result<std::unique_ptr<VhostUserFrontend>> connect(const std::filesystem::path& path,
                                                                          FrontendOptions options);
  ~VhostUserFrontend() override;
  VhostUserFrontend(const VhostUserFrontend&) = delete;
  VhostUserFrontend& operator=(const VhostUserFrontend&) = delete;

  // VirtioTransport.
  [[nodiscard]] uint64_t features() const noexcept override;
  [[nodiscard]] uint32_t num_queues() const noexcept override;
  [[nodiscard]] DriverQueue& queue(uint32_t index) noexcept override;
  // Errors: FrontendErrc::kDisconnected once the back-end hung up;
  // BaseErrc::kSystem (eventfd write).
  [[nodiscard]] Result<void> notify(uint32_t index) override;
  [[nodiscard]] int interrupt_fd(uint32_t index) const noexcept override;
  // GET_CONFIG for [offset, offset + out.size()), in pieces of up to 256 bytes.
  // Errors: FrontendErrc::kBackendLacks (no CONFIG protocol feature),
  // BaseErrc::kInvalidArgument (beyond the 256-byte config space),
  // VhostUserErrc::kRemoteError (the back-end refused), kDisconnected.
  [[nodiscard]] Result<void> read_config(uint32_t offset, std::span<std::byte> out) override;
  [[nodiscard]] DmaOps& dma() noexcept override;
  [[nodiscard]] bool premap_buffers() const noexcept override;
  [[nodiscard]] const GuestMemory& memory() const noexcept override;
  [[nodiscard]] Result<Gpa> alloc_buffer(uint64_t size, uint64_t align) override;
  [[nodiscard]] Result<void> free_buffer(Gpa gpa, uint64_t size) override;

  [[nodiscard]] DmaMode mode() const noexcept;
  [[nodiscard]] uint64_t protocol_features() const noexcept;
  [[nodiscard]] const GuestPlatform& platform() const noexcept;
  [[nodiscard]] FrontendStats stats() const noexcept;
  // The DMA-API debug checker the queues and dma() map through, or null
  // without FrontendOptions::dma_debug. It outlives the front-end if the
  // caller keeps it: destroy the driver and the front-end (which unmaps and
  // frees everything the queues hold), then check_teardown() reports what
  // the driver leaked.
  [[nodiscard]] std::shared_ptr<DebugDmaOps> dma_debug() const noexcept;
  // The device's "flush_before_notify" hook (PlatformDma::notify_flush),
  // which every queue runs once before each notification it asks for; null
  // when the topology declares none.
  [[nodiscard]] const PostedWriteFlush* notify_flush() const noexcept;
  // Whether the back-end hung up (or stopped replying).
  [[nodiscard]] bool disconnected() const noexcept;

 private:
  explicit VhostUserFrontend(std::unique_ptr<frontend_detail::FrontendCore> core);
  std::unique_ptr<frontend_detail::FrontendCore> core_;
};

}  // namespace vdma
