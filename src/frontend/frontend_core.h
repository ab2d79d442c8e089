// FrontendCore: the state behind VhostUserFrontend (vhost_user_frontend.h
// documents the behaviour). Private to the frontend module.
//
//   set-up:   frontend_setup.cc  (negotiation, memory table, vrings)
//   runtime:  frontend_core.cc   (transport calls, vIOMMU handler, shutdown)
//
// Threads: the driver's queue threads (notify, DMA ops -> the invalidation
// sink), the back-end channel server thread (this object as its handler)
// and callers of read_config. Shared state: channel_ (its own mutex),
// counters_ (atomics); everything else is written during set-up, before the
// server thread starts or before the object is handed out, and only read
// afterwards.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <vector>

#include "backend_channel_server.h"
#include "iotlb_translator.h"
#include "main_channel.h"
#include "memory_table.h"
#include "vdma/dma/debug_dma_ops.h"
#include "vdma/dma/invalidation_sink.h"
#include "vdma/frontend/vhost_user_frontend.h"
#include "vdma/virtio/driver_queue.h"

namespace vdma::frontend_detail {

struct Counters {
  std::atomic<uint64_t> misses_served{0};
  std::atomic<uint64_t> misses_refused{0};
  std::atomic<uint64_t> misses_unmapped{0};
  std::atomic<uint64_t> access_failures{0};
  std::atomic<uint64_t> updates_sent{0};
  std::atomic<uint64_t> invalidates_sent{0};
  std::atomic<uint64_t> updates_announced{0};
  std::atomic<uint64_t> invalidation_round_trips{0};
  std::atomic<uint64_t> notifies{0};
};

// The IOMMU DMA ops' InvalidationSink: IOTLB_MSG INVALIDATE per range with
// NEED_REPLY, all sent, then every ack read, under the main-socket mutex
// (dma/invalidation_sink.h: returns only when the back-end dropped them).
// Strict mode announces maps (IommuDomainConfig::announce_maps): mapped()
// posts an IOTLB UPDATE of the new pages (MainChannel::post_iotlb: NEED_REPLY,
// the ack read later), before the driver can put the address in a
// descriptor, so the back-end has the translation before it needs it
// unless it reads the ring before the socket (then it misses and asks).
class IotlbInvalidationSink final : public InvalidationSink {
 public:
  IotlbInvalidationSink(std::shared_ptr<MainChannel> channel, std::shared_ptr<Counters> counters)
      : channel_(std::move(channel)), counters_(std::move(counters)) {}
  [[nodiscard]] Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override;
  // Pages inside one entry of the announced table only: other memory was
  // not given to the back-end (a MISS for it is refused), and pages that
  // straddle entries are left to the MISS path.
  void mapped(const MappedPages& pages) override;
  // From now on mapped() announces pages of `table` (which must outlive the
  // sink's use, or be withdrawn with nullptr first); nullptr: no more.
  void announce_into(const std::vector<TableEntry>* table) noexcept { table_.store(table, std::memory_order_release); }

 private:
  const std::shared_ptr<MainChannel> channel_;
  const std::shared_ptr<Counters> counters_;
  std::atomic<const std::vector<TableEntry>*> table_{nullptr};
};

class FrontendCore final : public BackendRequestHandler {
 public:
  [[nodiscard]] static Result<std::unique_ptr<FrontendCore>> create(UniqueFd socket, FrontendOptions options);
  ~FrontendCore() override;
  FrontendCore(const FrontendCore&) = delete;
  FrontendCore& operator=(const FrontendCore&) = delete;

  // BackendRequestHandler (server thread).
  [[nodiscard]] Result<void> on_iotlb_miss(Iova iova, vhost_user::IotlbPerm perm) override;
  void on_access_fail(Iova iova, vhost_user::IotlbPerm perm) override;
  void on_tick() override;
  void on_main_hangup() override;

  struct Queue {
    std::unique_ptr<DriverQueue> ring;
    UniqueFd kick;
    UniqueFd call;  // invalid when polling
  };

  const FrontendOptions options_;
  const std::shared_ptr<Counters> counters_ = std::make_shared<Counters>();
  std::shared_ptr<MainChannel> channel_;
  std::unique_ptr<GuestPlatform> platform_;
  uint64_t offered_features_ = 0;
  uint64_t features_ = 0;
  uint64_t protocol_features_ = 0;
  DmaOps* ops_ = nullptr;  // the platform's, or dma_debug_ wrapping them
  // With FrontendOptions::dma_debug; shared with the caller, who may read
  // its reports after this core is gone (it never calls the wrapped ops then).
  std::shared_ptr<DebugDmaOps> dma_debug_;
  std::vector<TableEntry> table_;
  std::optional<BusTranslation> identity_bus_;   // the bus of a device without offsets
  std::optional<IotlbTranslator> translator_;   // with ACCESS_PLATFORM
  std::vector<Queue> queues_;
  uint32_t rings_started_ = 0;  // vrings 0..rings_started_-1 were started (stopped at shutdown)
  UniqueFd backend_channel_;  // our end, until the server takes it
  std::unique_ptr<BackendChannelServer> server_;
  std::shared_ptr<IotlbInvalidationSink> sink_;  // the iommu domain's

 private:
  explicit FrontendCore(FrontendOptions options) : options_(std::move(options)) {}

  // frontend_setup.cc
  [[nodiscard]] Result<void> negotiate();
  [[nodiscard]] Result<void> share_memory();
  [[nodiscard]] Result<void> create_queues();
  [[nodiscard]] Result<void> grant_identity();
  [[nodiscard]] Result<void> start_vring(uint32_t index);
  [[nodiscard]] Result<void> set_status(uint8_t status);
  [[nodiscard]] bool has_protocol(unsigned bit) const noexcept;
  [[nodiscard]] bool iotlb_mode() const noexcept;

  void shutdown();
};

}  // namespace vdma::frontend_detail
