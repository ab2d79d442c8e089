// virtio-blk wire definitions (virtio 1.2 §5.2): feature bits, request types,
// status values, the request header, the discard / write-zeroes segment and
// the device configuration layout.
//
//   VirtioBlkOutHeader h;                       // first 16 readable bytes of a request
//   std::memcpy(&h, bytes, sizeof(h));
//   const uint32_t guest_type = h.type.load();  // guest-controlled
//   if (guest_type == kBlkTypeIn) ...
//
// Every multi-byte field is little-endian (virtio 1.2 §1.4) and read through
// Le<T>. Layouts are checked with static_assert against the spec offsets.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vdma/virtio/le.h"

namespace vdma::blk {

// virtio 1.2 §5.2.3 feature bits.
inline constexpr unsigned kBlkFeatureSizeMax = 1;     // size_max is valid
inline constexpr unsigned kBlkFeatureSegMax = 2;      // seg_max is valid
inline constexpr unsigned kBlkFeatureGeometry = 4;    // geometry is valid
inline constexpr unsigned kBlkFeatureRo = 5;          // the device is read-only
inline constexpr unsigned kBlkFeatureBlkSize = 6;     // blk_size is valid
inline constexpr unsigned kBlkFeatureFlush = 9;       // FLUSH requests
inline constexpr unsigned kBlkFeatureTopology = 10;   // topology is valid
inline constexpr unsigned kBlkFeatureConfigWce = 11;  // writeback is writable
inline constexpr unsigned kBlkFeatureMq = 12;         // num_queues is valid
inline constexpr unsigned kBlkFeatureDiscard = 13;    // DISCARD requests
inline constexpr unsigned kBlkFeatureWriteZeroes = 14;  // WRITE_ZEROES requests

// virtio 1.2 §5.2.6 request types.
inline constexpr uint32_t kBlkTypeIn = 0;
inline constexpr uint32_t kBlkTypeOut = 1;
inline constexpr uint32_t kBlkTypeFlush = 4;
inline constexpr uint32_t kBlkTypeGetId = 8;
inline constexpr uint32_t kBlkTypeGetLifetime = 10;
inline constexpr uint32_t kBlkTypeDiscard = 11;
inline constexpr uint32_t kBlkTypeWriteZeroes = 13;
inline constexpr uint32_t kBlkTypeSecureErase = 14;

// virtio 1.2 §5.2.6 status byte values.
inline constexpr uint8_t kBlkStatusOk = 0;
inline constexpr uint8_t kBlkStatusIoErr = 1;
inline constexpr uint8_t kBlkStatusUnsupp = 2;

// Sectors are always 512 bytes, whatever blk_size says (virtio 1.2 §5.2.6).
inline constexpr uint64_t kSectorSize = 512;
inline constexpr unsigned kSectorShift = 9;
// GET_ID: a NUL-padded ASCII string of up to 20 bytes.
inline constexpr size_t kBlkIdBytes = 20;

// The device-readable header every request starts with.
struct VirtioBlkOutHeader {
  Le32 type;
  Le32 reserved;
  Le64 sector;
};
static_assert(sizeof(VirtioBlkOutHeader) == 16);

// DISCARD / WRITE_ZEROES data: an array of these segments.
inline constexpr uint32_t kBlkDiscardFlagUnmap = 1u << 0;
struct VirtioBlkDiscardWriteZeroes {
  Le64 sector;
  Le32 num_sectors;
  Le32 flags;  // bit 0: UNMAP (WRITE_ZEROES only); bits 1-31 reserved
};
static_assert(sizeof(VirtioBlkDiscardWriteZeroes) == 16);

struct VirtioBlkGeometry {
  Le16 cylinders;
  uint8_t heads;
  uint8_t sectors;
};

struct VirtioBlkTopology {
  uint8_t physical_block_exp;  // logical blocks per physical block, log2
  uint8_t alignment_offset;    // offset of the first aligned logical block
  Le16 min_io_size;            // suggested minimum I/O size in blocks
  Le32 opt_io_size;            // optimal (suggested maximum) I/O size in blocks
};

// virtio 1.2 §5.2.4. The secure-erase fields are present (zero) because the
// 1.2 layout has them; the feature is not offered.
struct VirtioBlkConfig {
  Le64 capacity;  // in 512-byte sectors
  Le32 size_max;
  Le32 seg_max;
  VirtioBlkGeometry geometry;
  Le32 blk_size;
  VirtioBlkTopology topology;
  uint8_t writeback;
  uint8_t unused0;
  Le16 num_queues;
  Le32 max_discard_sectors;
  Le32 max_discard_seg;
  Le32 discard_sector_alignment;
  Le32 max_write_zeroes_sectors;
  Le32 max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
  Le32 max_secure_erase_sectors;
  Le32 max_secure_erase_seg;
  Le32 secure_erase_sector_alignment;
};
static_assert(sizeof(VirtioBlkConfig) == 72);
static_assert(offsetof(VirtioBlkConfig, geometry) == 16);
static_assert(offsetof(VirtioBlkConfig, blk_size) == 20);
static_assert(offsetof(VirtioBlkConfig, topology) == 24);
static_assert(offsetof(VirtioBlkConfig, writeback) == 32);
static_assert(offsetof(VirtioBlkConfig, num_queues) == 34);
static_assert(offsetof(VirtioBlkConfig, max_discard_sectors) == 36);
static_assert(offsetof(VirtioBlkConfig, max_write_zeroes_sectors) == 48);
static_assert(offsetof(VirtioBlkConfig, write_zeroes_may_unmap) == 56);
static_assert(offsetof(VirtioBlkConfig, max_secure_erase_sectors) == 60);

inline constexpr uint32_t kBlkConfigWritebackOffset = offsetof(VirtioBlkConfig, writeback);

}  // namespace vdma::blk
