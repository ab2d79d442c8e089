// What the driver learns about a virtio-blk device at create(): the
// negotiated features and the config-space fields they make valid
// (virtio 1.2 §5.2.3, §5.2.4), plus the limits derived from them.
#pragma once

#include <cstdint>

#include "vdma/base/result.h"
#include "vdma/virtio/transport.h"

namespace vdma::blk {

struct DeviceLimits {
  uint64_t features = 0;
  uint64_t capacity_sectors = 0;
  uint32_t blk_size = 512;         // 512 without BLK_SIZE
  bool read_only = false;          // RO negotiated
  bool flush = false;              // FLUSH negotiated
  bool discard = false;            // DISCARD negotiated
  bool write_zeroes = false;       // WRITE_ZEROES negotiated
  uint32_t max_data_segments = 1;  // seg_max; 1 without SEG_MAX (as Linux)
  uint32_t max_segment_bytes = UINT32_MAX;  // size_max; no limit without SIZE_MAX
  uint32_t max_discard_sectors = UINT32_MAX;
  uint32_t max_write_zeroes_sectors = UINT32_MAX;
  uint32_t config_num_queues = 1;  // num_queues with MQ, 1 without
};

// Reads the config fields the negotiated features make valid, each with
// its own read_config() call (a device may have a shorter config space than
// the 1.2 layout when it does not offer the later features).
// Errors: those of read_config; BlkErrc::kInvalidOption for a field the
// spec does not allow (blk_size not a power of two in 512..65536, size_max
// below 512, num_queues 0), naming it.
[[nodiscard]] Result<DeviceLimits> read_device_limits(VirtioTransport& transport);

}  // namespace vdma::blk
