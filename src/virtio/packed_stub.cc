// TEMPORARY stub so the tree links while the packed ring is written; deleted by its implementation.
#include "ring_factories.h"

namespace vdma {
Result<std::unique_ptr<DriverQueue>> make_packed_driver_queue(DmaOps&, const QueueConfig&) {
  return make_error(VirtioErrc::kInvalidConfig, "packed ring not built yet");
}
Result<std::unique_ptr<DeviceQueue>> make_packed_device_queue(const DeviceMemory&, const QueueConfig&, RingAddresses,
                                                              uint16_t) {
  return make_error(VirtioErrc::kInvalidConfig, "packed ring not built yet");
}
}  // namespace vdma
