// Private: constructors of each ring format's queues, dispatched to by
// make_driver_queue() / make_device_queue().
#pragma once

#include <memory>

#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/driver_queue.h"

namespace vdma {

[[nodiscard]] Result<std::unique_ptr<DriverQueue>> make_split_driver_queue(DmaOps& dma, const QueueConfig& config);
[[nodiscard]] Result<std::unique_ptr<DriverQueue>> make_packed_driver_queue(DmaOps& dma, const QueueConfig& config);
[[nodiscard]] Result<std::unique_ptr<DeviceQueue>> make_split_device_queue(const DeviceMemory& mem,
                                                                           const QueueConfig& config,
                                                                           RingAddresses rings, uint16_t avail_position);
[[nodiscard]] Result<std::unique_ptr<DeviceQueue>> make_packed_device_queue(const DeviceMemory& mem,
                                                                            const QueueConfig& config,
                                                                            RingAddresses rings, uint16_t avail_position);

}  // namespace vdma
