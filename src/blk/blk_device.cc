// BlkDevice: options, features, config space and dispatch to the queues.
#include "vdma/blk/blk_device.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "blk_queue.h"
#include "vdma/base/log.h"
#include "vdma/virtio/features.h"

namespace vdma::blk {
namespace {

// Device-specific feature bits (virtio 1.2 §6: bits 0-23).
constexpr uint64_t kDeviceFeatureMask = (uint64_t{1} << 24) - 1;

}  // namespace

BlkDevice::BlkDevice(std::unique_ptr<StorageBackend> storage, const BlkOptions& options)
    : storage_(std::move(storage)),
      options_(options),
      read_only_(storage_->read_only()),
      capacity_sectors_(storage_->size_bytes() >> kSectorShift),
      offered_(offered_blk_features(options, read_only_)),
      config_(build_config(options, capacity_sectors_, read_only_)),
      acked_(offered_),
      writeback_(config_.writeback) {}

BlkDevice::~BlkDevice() = default;

Result<std::unique_ptr<BlkDevice>> BlkDevice::create(std::unique_ptr<StorageBackend> storage,
                                                     const BlkOptions& options) {
  VDMA_CHECK(storage != nullptr, "BlkDevice::create without storage");
  VDMA_TRY(validate_options(options));
  std::unique_ptr<BlkDevice> dev(new BlkDevice(std::move(storage), options));
  // A request has at most seg_max data segments plus header and status; a
  // translation may split them further, which BlkQueue handles in batches.
  const uint32_t iovecs = std::clamp<uint32_t>(options.seg_max + 2, 16, IOV_MAX);
  for (uint32_t q = 0; q < options.num_queues; ++q) {
    auto sq = dev->storage_->make_queue(iovecs);
    if (!sq) return std::move(sq).error().with_context(fmt::format("queue {}", q));
    dev->queues_.push_back(std::make_unique<BlkQueue>(*dev, std::move(*sq), iovecs));
  }
  return dev;
}

Result<void> BlkDevice::set_features(uint64_t acked) {
  const uint64_t device_bits = acked & kDeviceFeatureMask;
  if ((device_bits & ~offered_) != 0) {
    return make_error(BlkErrc::kInvalidOption, "features {:#x} were not offered (offered {:#x})",
                      device_bits & ~offered_, offered_);
  }
  acked_.store(device_bits, std::memory_order_relaxed);
  return ok();
}

bool BlkDevice::writeback_enabled() const noexcept {
  // virtio 1.2 §5.2.5: without FLUSH the driver cannot make writes durable,
  // so the device writes through.
  if (!has_feature(acked_features(), kBlkFeatureFlush)) return false;
  return writeback_.load(std::memory_order_relaxed) != 0;
}

Result<void> BlkDevice::read_config(uint32_t offset, std::span<std::byte> out) const {
  if (offset > config_size() || out.size() > config_size() - offset) {
    return make_error(BlkErrc::kInvalidOption, "config read of {} bytes at {} leaves the {}-byte config space",
                      out.size(), offset, config_size());
  }
  VirtioBlkConfig snapshot = config_;
  // With FLUSH not accepted the device writes through, and says so.
  snapshot.writeback = writeback_enabled() ? 1 : 0;
  std::memcpy(out.data(), reinterpret_cast<const std::byte*>(&snapshot) + offset, out.size());
  return ok();
}

Result<void> BlkDevice::write_config(uint32_t offset, std::span<const std::byte> data) {
  if (!has_feature(acked_features(), kBlkFeatureConfigWce)) {
    return make_error(BlkErrc::kInvalidOption, "config write at {} without CONFIG_WCE", offset);
  }
  if (offset != kBlkConfigWritebackOffset || data.size() != 1) {
    return make_error(BlkErrc::kInvalidOption,
                      "config write of {} bytes at {}: only the writeback byte (offset {}) is writable", data.size(),
                      offset, kBlkConfigWritebackOffset);
  }
  const auto guest_value = std::to_integer<uint8_t>(data[0]);  // guest-controlled
  if (guest_value > 1) return make_error(BlkErrc::kInvalidOption, "writeback value {} is not 0 or 1", guest_value);
  writeback_.store(guest_value, std::memory_order_relaxed);
  spdlog::info("virtio-blk: cache mode {}", guest_value != 0 ? "writeback" : "writethrough");
  return ok();
}

Result<uint32_t> BlkDevice::handle(uint32_t queue_index, const DescriptorChain& chain) {
  if (queue_index >= queues_.size()) {
    return make_error(BlkErrc::kInvalidOption, "virtio-blk: request on queue {} of {}", queue_index, queues_.size());
  }
  return queues_[queue_index]->handle(chain);
}

std::optional<Result<uint32_t>> BlkDevice::start(uint32_t queue_index, const DescriptorChain& chain, uint32_t tag) {
  if (queue_index >= queues_.size()) return handle(queue_index, chain);
  return queues_[queue_index]->start(chain, tag);
}

void BlkDevice::submit(uint32_t queue_index) {
  if (queue_index < queues_.size()) queues_[queue_index]->submit();
}

size_t BlkDevice::reap(uint32_t queue_index, std::span<BlkDeviceCompletion> out) {
  if (queue_index >= queues_.size()) return 0;
  return queues_[queue_index]->reap(out);
}

int BlkDevice::completion_fd(uint32_t queue_index) const {
  if (queue_index >= queues_.size()) return -1;
  return queues_[queue_index]->completion_fd();
}

uint32_t BlkDevice::max_in_flight(uint32_t queue_index) const {
  if (queue_index >= queues_.size()) return 0;
  return queues_[queue_index]->max_in_flight();
}

uint64_t BlkDevice::queue_errors(uint32_t queue_index) const {
  if (queue_index >= queues_.size()) return 0;
  return queues_[queue_index]->errors();
}

void BlkDevice::reset() {
  acked_.store(offered_, std::memory_order_relaxed);
  writeback_.store(config_.writeback, std::memory_order_relaxed);
}

}  // namespace vdma::blk
