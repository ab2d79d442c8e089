#include "blk_backend_device.h"

#include <algorithm>
#include <array>

#include "vdma/virtio/features.h"
#include "vdma/vhost_user/errors.h"

namespace vdma::apps {
namespace {

// The session's error replies speak VhostUserErrc; keep the device's message.
Result<void> as_session_error(Result<void> r) {
  if (r) return r;
  return make_error(VhostUserErrc::kBadState, "virtio-blk: {}", r.error().message());
}

}  // namespace

uint64_t BlkBackendDevice::device_features() const {
  return device_.offered_features() | (transport_.order_platform ? feature_bit(kFeatureOrderPlatform) : 0);
}

uint32_t BlkBackendDevice::num_queues() const { return device_.num_queues(); }

Result<void> BlkBackendDevice::set_features(uint64_t acked) { return as_session_error(device_.set_features(acked)); }

uint32_t BlkBackendDevice::config_size() const { return blk::BlkDevice::config_size(); }

Result<void> BlkBackendDevice::read_config(uint32_t offset, std::span<std::byte> out) {
  return as_session_error(device_.read_config(offset, out));
}

Result<void> BlkBackendDevice::write_config(uint32_t offset, std::span<const std::byte> data,
                                            vhost_user::ConfigFlags /*flags*/) {
  return as_session_error(device_.write_config(offset, data));
}

Result<uint32_t> BlkBackendDevice::handle(uint32_t queue_index, const DescriptorChain& chain) {
  return device_.handle(queue_index, chain);
}

uint32_t BlkBackendDevice::max_in_flight(uint32_t queue_index) const { return device_.max_in_flight(queue_index); }

std::optional<Result<uint32_t>> BlkBackendDevice::start(uint32_t queue_index, const DescriptorChain& chain,
                                                        uint32_t tag) {
  return device_.start(queue_index, chain, tag);
}

void BlkBackendDevice::submit(uint32_t queue_index) { device_.submit(queue_index); }

size_t BlkBackendDevice::reap(uint32_t queue_index, std::span<Completion> out) {
  // Same layout (tag, used): reaped into the device's type, then copied.
  std::array<blk::BlkDeviceCompletion, 64> buf{};
  const size_t n = device_.reap(queue_index, std::span(buf.data(), std::min(buf.size(), out.size())));
  for (size_t i = 0; i < n; ++i) out[i] = Completion{buf[i].tag, buf[i].used};
  return n;
}

int BlkBackendDevice::completion_fd(uint32_t queue_index) const { return device_.completion_fd(queue_index); }

void BlkBackendDevice::reset() { device_.reset(); }

}  // namespace vdma::apps
