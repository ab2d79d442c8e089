#include "device_limits.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <span>

#include "vdma/blk/errors.h"
#include "vdma/blk/virtio_blk.h"
#include "vdma/virtio/features.h"

namespace vdma::blk {

namespace {

// The config bytes the driver reads, from offset 0 up to the end of the last
// field its features make valid (virtio 1.2 §5.2.4; QEMU sizes it the same
// way). They are fetched in one read starting at 0, as QEMU does:
// qemu-storage-daemon's vhost-user-blk export ignores GET_CONFIG's offset
// and always answers with the config space from byte 0.
uint32_t config_bytes_needed(uint64_t features) {
  uint32_t n = offsetof(VirtioBlkConfig, num_queues) + sizeof(Le16);
  if (has_feature(features, kBlkFeatureDiscard)) {
    n = std::max<uint32_t>(n, offsetof(VirtioBlkConfig, discard_sector_alignment) + sizeof(Le32));
  }
  if (has_feature(features, kBlkFeatureWriteZeroes)) {
    n = std::max<uint32_t>(n, offsetof(VirtioBlkConfig, write_zeroes_may_unmap) + 1);
  }
  return n;
}

// Field `T` at `offset` of the config bytes read.
template <class T>
T field(std::span<const std::byte> config, uint32_t offset) {
  Le<T> v{};
  std::memcpy(&v, config.data() + offset, sizeof(T));
  return v.load();
}

}  // namespace

Result<DeviceLimits> read_device_limits(VirtioTransport& transport) {
  DeviceLimits l;
  const uint64_t f = transport.features();
  l.features = f;
  // Config fields are device-controlled: read once (one copy), checked, then used.
  std::array<std::byte, sizeof(VirtioBlkConfig)> raw{};
  const std::span<std::byte> config = std::span(raw).first(config_bytes_needed(f));
  VDMA_TRY(transport.read_config(0, config));
  l.capacity_sectors = field<uint64_t>(config, offsetof(VirtioBlkConfig, capacity));
  l.read_only = has_feature(f, kBlkFeatureRo);
  l.flush = has_feature(f, kBlkFeatureFlush);
  l.discard = has_feature(f, kBlkFeatureDiscard);
  l.write_zeroes = has_feature(f, kBlkFeatureWriteZeroes);

  if (has_feature(f, kBlkFeatureBlkSize)) {
    const uint32_t guest_blk_size = field<uint32_t>(config, offsetof(VirtioBlkConfig, blk_size));
    if (guest_blk_size < kSectorSize || guest_blk_size > 65536 || !is_pow2(guest_blk_size)) {
      return make_error(BlkErrc::kInvalidOption, "device config: blk_size {} is not a power of two in 512..65536",
                        guest_blk_size);
    }
    l.blk_size = guest_blk_size;
  }
  if (has_feature(f, kBlkFeatureSegMax)) {
    const uint32_t guest_seg_max = field<uint32_t>(config, offsetof(VirtioBlkConfig, seg_max));
    // Linux treats seg_max 0 as 1; so do we.
    l.max_data_segments = guest_seg_max == 0 ? 1 : guest_seg_max;
  }
  if (has_feature(f, kBlkFeatureSizeMax)) {
    const uint32_t guest_size_max = field<uint32_t>(config, offsetof(VirtioBlkConfig, size_max));
    // qemu-storage-daemon offers SIZE_MAX with size_max 0; Linux reads 0 as
    // "no limit" (virtio_blk.c only applies a non-zero size_max), and so do we.
    if (guest_size_max != 0 && guest_size_max < kSectorSize) {
      return make_error(BlkErrc::kInvalidOption, "device config: size_max {} is below one sector (512)",
                        guest_size_max);
    }
    if (guest_size_max != 0) l.max_segment_bytes = guest_size_max;
  }
  if (has_feature(f, kBlkFeatureMq)) {
    const uint16_t guest_num_queues =
        field<uint16_t>(config, offsetof(VirtioBlkConfig, num_queues));
    if (guest_num_queues == 0) return make_error(BlkErrc::kInvalidOption, "device config: num_queues is 0");
    l.config_num_queues = guest_num_queues;
  }
  // virtio 1.2 §5.2.5: 0 in a sector limit means none is given (Linux reads
  // it as UINT_MAX). The driver sends one segment per request, so the
  // segment-count limits (at least 1 by the same rule) never bind.
  if (l.discard) {
    const uint32_t v = field<uint32_t>(config, offsetof(VirtioBlkConfig, max_discard_sectors));
    l.max_discard_sectors = v == 0 ? UINT32_MAX : v;
  }
  if (l.write_zeroes) {
    const uint32_t v =
        field<uint32_t>(config, offsetof(VirtioBlkConfig, max_write_zeroes_sectors));
    l.max_write_zeroes_sectors = v == 0 ? UINT32_MAX : v;
  }
  return l;
}

}  // namespace vdma::blk
