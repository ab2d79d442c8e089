// BlkBackendDevice: serves a blk::BlkDevice through a vhost-user
// BackendSession (vdma/vhost_user/backend_device.h).
//
//   auto blk = VDMA_TRY(blk::BlkDevice::create(std::move(storage), options));
//   BlkBackendDevice dev(*blk, {.order_platform = true});   // also offer VIRTIO_F_ORDER_PLATFORM
//   auto session = VDMA_TRY(vhost_user::BackendSession::create(std::move(conn), dev));
//   Error end = session->run();
//
// It only translates between the two interfaces: the session's workers call
// handle() per queue (BlkDevice queues are independent), config accesses go
// to BlkDevice's config space, SET_FEATURES hands the device-specific bits
// down. With BlkTransportOptions::order_platform the device also offers
// VIRTIO_F_ORDER_PLATFORM (bit 36): a driver that accepts it orders its ring
// accesses with the platform's DMA barriers, and so do this device's queues.
// The BlkDevice must outlive this adapter; the adapter must outlive
// every session that serves it. Thread safety as in BackendDevice.
#pragma once

#include "vdma/blk/blk_device.h"
#include "vdma/vhost_user/backend_device.h"

namespace vdma::apps {

// Transport feature bits the device offers beside its own.
struct BlkTransportOptions {
  bool order_platform = false;  // VIRTIO_F_ORDER_PLATFORM
};

class BlkBackendDevice final : public vhost_user::BackendDevice {
 public:
  explicit BlkBackendDevice(blk::BlkDevice& device, BlkTransportOptions transport = {})
      : device_(device), transport_(transport) {}

  [[nodiscard]] uint64_t device_features() const override;
  [[nodiscard]] uint32_t num_queues() const override;
  [[nodiscard]] Result<void> set_features(uint64_t acked) override;
  [[nodiscard]] uint32_t config_size() const override;
  [[nodiscard]] Result<void> read_config(uint32_t offset, std::span<std::byte> out) override;
  [[nodiscard]] Result<void> write_config(uint32_t offset, std::span<const std::byte> data,
                                          vhost_user::ConfigFlags flags) override;
  [[nodiscard]] Result<uint32_t> handle(uint32_t queue_index, const DescriptorChain& chain) override;
  [[nodiscard]] uint32_t max_in_flight(uint32_t queue_index) const override;
  [[nodiscard]] std::optional<Result<uint32_t>> start(uint32_t queue_index, const DescriptorChain& chain,
                                                      uint32_t tag) override;
  void submit(uint32_t queue_index) override;
  [[nodiscard]] size_t reap(uint32_t queue_index, std::span<Completion> out) override;
  [[nodiscard]] int completion_fd(uint32_t queue_index) const override;
  void reset() override;

 private:
  blk::BlkDevice& device_;
  const BlkTransportOptions transport_;
};

}  // namespace vdma::apps
