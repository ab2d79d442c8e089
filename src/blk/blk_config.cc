#include "vdma/blk/blk_config.h"

#include <bit>

#include "vdma/virtio/features.h"

namespace vdma::blk {

Result<void> validate_options(const BlkOptions& o) {
  if (o.num_queues < 1 || o.num_queues > kMaxQueues) {
    return make_error(BlkErrc::kInvalidOption, "num_queues {} is outside 1..{}", o.num_queues, kMaxQueues);
  }
  if (!std::has_single_bit(o.blk_size) || o.blk_size < kSectorSize || o.blk_size > 4096) {
    return make_error(BlkErrc::kInvalidOption, "blk_size {} is not a power of two in 512..4096", o.blk_size);
  }
  if (o.seg_max < 1 || o.seg_max > 1024) {
    return make_error(BlkErrc::kInvalidOption, "seg_max {} is outside 1..1024", o.seg_max);
  }
  if (o.size_max != 0 && o.size_max < 4096) {
    return make_error(BlkErrc::kInvalidOption, "size_max {} is below one page (4096)", o.size_max);
  }
  const uint32_t block_sectors = o.blk_size / kSectorSize;
  if (o.max_discard_sectors < block_sectors || o.max_write_zeroes_sectors < block_sectors) {
    return make_error(BlkErrc::kInvalidOption,
                      "max_discard_sectors {} / max_write_zeroes_sectors {} below one block ({} sectors)",
                      o.max_discard_sectors, o.max_write_zeroes_sectors, block_sectors);
  }
  if (o.max_discard_seg < 1 || o.max_write_zeroes_seg < 1 || o.max_discard_seg > 256 ||
      o.max_write_zeroes_seg > 256) {
    return make_error(BlkErrc::kInvalidOption, "max_discard_seg {} / max_write_zeroes_seg {} outside 1..256",
                      o.max_discard_seg, o.max_write_zeroes_seg);
  }
  if (o.serial.size() > kBlkIdBytes) {
    return make_error(BlkErrc::kInvalidOption, "serial '{}' is longer than {} bytes", o.serial, kBlkIdBytes);
  }
  for (const char c : o.serial) {
    if (c < 0x20 || c > 0x7e) return make_error(BlkErrc::kInvalidOption, "serial contains a non-printable byte");
  }
  return ok();
}

uint64_t offered_blk_features(const BlkOptions& o, bool read_only) {
  uint64_t f = feature_bit(kBlkFeatureSegMax) | feature_bit(kBlkFeatureBlkSize) | feature_bit(kBlkFeatureFlush) |
               feature_bit(kBlkFeatureTopology) | feature_bit(kBlkFeatureConfigWce) | feature_bit(kBlkFeatureMq);
  if (o.size_max != 0) f |= feature_bit(kBlkFeatureSizeMax);
  if (read_only) {
    f |= feature_bit(kBlkFeatureRo);
  } else {
    f |= feature_bit(kBlkFeatureDiscard) | feature_bit(kBlkFeatureWriteZeroes);
  }
  return f;
}

VirtioBlkConfig build_config(const BlkOptions& o, uint64_t capacity_sectors, bool read_only) {
  VirtioBlkConfig c{};
  c.capacity.store(capacity_sectors);
  c.size_max.store(o.size_max);
  c.seg_max.store(o.seg_max);
  c.blk_size.store(o.blk_size);
  // One logical block per physical block, naturally aligned; the minimum
  // I/O is one block and there is no optimal-size hint.
  c.topology.physical_block_exp = 0;
  c.topology.alignment_offset = 0;
  c.topology.min_io_size.store(1);
  c.topology.opt_io_size.store(0);
  c.writeback = o.writeback ? 1 : 0;
  c.num_queues.store(static_cast<uint16_t>(o.num_queues));
  if (!read_only) {
    c.max_discard_sectors.store(o.max_discard_sectors);
    c.max_discard_seg.store(o.max_discard_seg);
    c.discard_sector_alignment.store(o.blk_size / static_cast<uint32_t>(kSectorSize));
    c.max_write_zeroes_sectors.store(o.max_write_zeroes_sectors);
    c.max_write_zeroes_seg.store(o.max_write_zeroes_seg);
    c.write_zeroes_may_unmap = 1;
  }
  return c;
}

}  // namespace vdma::blk
