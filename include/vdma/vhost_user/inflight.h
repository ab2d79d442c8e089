// Inflight I/O tracking (vhost-user.rst "Inflight I/O tracking",
// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): the shared area in which a back-end
// records which requests it popped and has not completed, so that a back-end
// restarted after a crash resubmits exactly those.
//
//   // GET_INFLIGHT_FD: the back-end allocates the area.
//   InflightMemory m = VDMA_TRY(InflightMemory::allocate(RingFormat::kSplit, num_queues, queue_size));
//   reply(m.description(), VDMA_TRY(UniqueFd::duplicate(m.fd())));
//   // SET_INFLIGHT_FD: the front-end hands it (back) over.
//   InflightMemory m = VDMA_TRY(InflightMemory::map(fd, area, RingFormat::kSplit));
//   std::byte* q0 = m.queue_region(0);       // QueueRegionSplit of queue 0
//
// Layout. The area is num_queues queue regions of inflight_queue_region_size()
// bytes each, back to back. A region is the spec's QueueRegionSplit (16-byte
// header, then desc_num DescStateSplit of 16 bytes) or QueueRegionPacked
// (32-byte header, then DescStatePacked of 32 bytes), padded to 64 bytes, as
// DPDK lays it out (the spec leaves the padding to the back-end, which is the
// only party that interprets the area). All fields little-endian; the offsets
// below are the C structs' offsets on every ABI vhost-user runs on.
//
// Lifetimes: an InflightMemory owns its fd and mapping (MAP_SHARED, so the
// front-end's copy of the fd sees every store); move-only.
// Thread safety: the object is not synchronised; the per-queue regions are
// written by one queue worker each.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vdma/base/result.h"
#include "vdma/vhost_user/payload_views.h"
#include "vdma/base/unique_fd.h"
#include "vdma/virtio/queue.h"

namespace vdma::vhost_user {

namespace inflight {

inline constexpr uint16_t kVersion = 1;        // QueueRegion*.version; 0 = never initialised
inline constexpr uint64_t kRegionAlign = 64;   // per-queue region alignment

// QueueRegionSplit.
inline constexpr size_t kSplitHeaderSize = 16;
inline constexpr size_t kSplitFeaturesOff = 0;       // u64
inline constexpr size_t kSplitVersionOff = 8;        // u16
inline constexpr size_t kSplitDescNumOff = 10;       // u16
inline constexpr size_t kSplitLastBatchHeadOff = 12; // u16
inline constexpr size_t kSplitUsedIdxOff = 14;       // u16
// DescStateSplit.
inline constexpr size_t kSplitDescSize = 16;
inline constexpr size_t kSplitDescInflightOff = 0;   // u8
inline constexpr size_t kSplitDescNextOff = 6;       // u16
inline constexpr size_t kSplitDescCounterOff = 8;    // u64

// QueueRegionPacked.
inline constexpr size_t kPackedHeaderSize = 32;
inline constexpr size_t kPackedFeaturesOff = 0;            // u64
inline constexpr size_t kPackedVersionOff = 8;             // u16
inline constexpr size_t kPackedDescNumOff = 10;            // u16
inline constexpr size_t kPackedFreeHeadOff = 12;           // u16
inline constexpr size_t kPackedOldFreeHeadOff = 14;        // u16
inline constexpr size_t kPackedUsedIdxOff = 16;            // u16
inline constexpr size_t kPackedOldUsedIdxOff = 18;         // u16
inline constexpr size_t kPackedUsedWrapOff = 20;           // u8
inline constexpr size_t kPackedOldUsedWrapOff = 21;        // u8
// DescStatePacked.
inline constexpr size_t kPackedDescSize = 32;
inline constexpr size_t kPackedDescInflightOff = 0;  // u8
inline constexpr size_t kPackedDescNextOff = 2;      // u16
inline constexpr size_t kPackedDescLastOff = 4;      // u16
inline constexpr size_t kPackedDescChainNumOff = 6;  // u16 (the spec's "num")
inline constexpr size_t kPackedDescCounterOff = 8;   // u64
inline constexpr size_t kPackedDescIdOff = 16;       // u16
inline constexpr size_t kPackedDescFlagsOff = 18;    // u16
inline constexpr size_t kPackedDescLenOff = 20;      // u32
inline constexpr size_t kPackedDescAddrOff = 24;     // u64

}  // namespace inflight

// Bytes of one queue's region: header + queue_size descriptor states,
// rounded up to inflight::kRegionAlign.
[[nodiscard]] constexpr uint64_t inflight_queue_region_size(RingFormat format, uint16_t queue_size) noexcept {
  const uint64_t raw = format == RingFormat::kSplit
                           ? inflight::kSplitHeaderSize + uint64_t{queue_size} * inflight::kSplitDescSize
                           : inflight::kPackedHeaderSize + uint64_t{queue_size} * inflight::kPackedDescSize;
  return (raw + inflight::kRegionAlign - 1) & ~(inflight::kRegionAlign - 1);
}

class InflightMemory {
 public:
  // A new zeroed memfd area for `num_queues` queues of `queue_size` (the
  // GET_INFLIGHT_FD request's fields; the codec bounded them to 1..256 and
  // 1..32768, the session to the device's queues). A packed area gets its
  // free lists initialised (desc[i].next = i + 1, wrap counters 1), as the
  // spec's packed algorithm needs them. The memfd is sealed (F_SEAL_SHRINK,
  // F_SEAL_GROW, F_SEAL_SEAL): the front-end that receives it cannot
  // truncate it under a back-end's mapping.
  // Errors: BaseErrc::kSystem (memfd_create, ftruncate, sealing, mmap).
  [[nodiscard]] static Result<InflightMemory> allocate(RingFormat format, uint16_t num_queues, uint16_t queue_size);

  // Maps the SET_INFLIGHT_FD area (the fd is duplicated, not taken). The fd
  // must be a memfd sealed against shrinking (as allocate() makes them), or
  // one that can be sealed now (it is, with F_SEAL_SHRINK): otherwise the
  // front-end could truncate it under the mapping (SIGBUS).
  // Errors: VhostUserErrc::kBadField when mmap_size is smaller than
  // num_queues regions of queue_size, mmap_offset is not page-aligned (the
  // area's atomics need their alignment), the fd is not a memfd or cannot be
  // sealed against shrinking, or it is shorter than mmap_offset + mmap_size
  // (it would SIGBUS); BaseErrc::kSystem (fstat, mmap, dup).
  [[nodiscard]] static Result<InflightMemory> map(int fd, const InflightArea& area, RingFormat format);

  InflightMemory(InflightMemory&& o) noexcept;
  InflightMemory& operator=(InflightMemory&& o) noexcept;
  InflightMemory(const InflightMemory&) = delete;
  InflightMemory& operator=(const InflightMemory&) = delete;
  ~InflightMemory();

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] RingFormat format() const noexcept { return format_; }
  [[nodiscard]] uint16_t num_queues() const noexcept { return area_.num_queues; }
  [[nodiscard]] uint16_t queue_size() const noexcept { return area_.queue_size; }
  // mmap_size, mmap_offset, num_queues, queue_size: the GET_INFLIGHT_FD reply.
  [[nodiscard]] const InflightArea& description() const noexcept { return area_; }
  // The region of queue `index`; precondition index < num_queues() (VDMA_CHECK).
  [[nodiscard]] std::byte* queue_region(uint32_t index) const;
  // Whether `fd` refers to the same file as this area's fd.
  [[nodiscard]] bool same_file(int fd) const noexcept;
  // Gives the area's pages back to the system (the area reads as zeroes
  // afterwards; its size stays). For an area offered by GET_INFLIGHT_FD and
  // replaced by a later one: the front-end may keep the old fd, but not the
  // memory behind it.
  void discard_contents() noexcept;

 private:
  InflightMemory(UniqueFd fd, const InflightArea& area, RingFormat format, void* map_base, size_t map_len,
                 std::byte* base) noexcept;

  UniqueFd fd_;
  InflightArea area_;
  RingFormat format_ = RingFormat::kSplit;
  void* map_base_ = nullptr;  // page-aligned mapping start
  size_t map_len_ = 0;
  std::byte* base_ = nullptr;  // map_base_ + (mmap_offset % page)
};

}  // namespace vdma::vhost_user
