// Options of a virtio-blk device and what they turn into: the offered
// feature bits and the configuration space (virtio 1.2 §5.2.3, §5.2.4).
//
//   BlkOptions opt{.num_queues = 4, .blk_size = 4096};
//   VDMA_TRY(validate_options(opt));
//   uint64_t features = offered_blk_features(opt, /*read_only=*/false);
//   VirtioBlkConfig cfg = build_config(opt, capacity_sectors, /*read_only=*/false);
//
// Offered always: SEG_MAX, BLK_SIZE, FLUSH, TOPOLOGY, CONFIG_WCE, MQ;
// SIZE_MAX when size_max != 0; RO on a read-only disk, otherwise DISCARD and
// WRITE_ZEROES. GEOMETRY is never offered (the field is zero).
#pragma once

#include <cstdint>
#include <string>

#include "vdma/base/result.h"
#include "vdma/blk/errors.h"
#include "vdma/blk/virtio_blk.h"

namespace vdma::blk {

struct BlkOptions {
  uint32_t num_queues = 1;  // 1..kMaxQueues
  // Logical block size: a power of two, 512..4096 (Linux accepts no more than
  // a page). Requests must be aligned to it.
  uint32_t blk_size = 512;
  // Largest number of data segments per request: 1..1024. Also sizes each
  // queue's preallocated iovec array.
  uint32_t seg_max = 126;
  // Largest segment in bytes; 0: SIZE_MAX is not offered.
  uint32_t size_max = 0;
  // DISCARD / WRITE_ZEROES limits: sectors per segment, segments per request
  // (1..256; each queue preallocates that many segment copies).
  uint32_t max_discard_sectors = 1u << 22;
  uint32_t max_discard_seg = 16;
  uint32_t max_write_zeroes_sectors = 1u << 22;
  uint32_t max_write_zeroes_seg = 16;
  // Initial cache mode: true = writeback (FLUSH makes writes durable), false =
  // writethrough (each write is made durable before it completes). With
  // CONFIG_WCE the driver may change it through the writeback byte.
  bool writeback = true;
  // GET_ID string: at most 20 bytes of printable ASCII.
  std::string serial = "vdma-blk";
};

inline constexpr uint32_t kMaxQueues = 64;

// Errors: BlkErrc::kInvalidOption naming the field and its value.
[[nodiscard]] Result<void> validate_options(const BlkOptions& options);

[[nodiscard]] uint64_t offered_blk_features(const BlkOptions& options, bool read_only);

// The config space for a disk of `capacity_sectors` 512-byte sectors.
// Precondition: validate_options(options) succeeded.
[[nodiscard]] VirtioBlkConfig build_config(const BlkOptions& options, uint64_t capacity_sectors, bool read_only);

}  // namespace vdma::blk
