// BackendMemoryTable: the vhost-user back-end's map of the front-end's memory
// (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG), and its bypass DeviceMemory.
//
//   BackendMemoryTable table(/*max_regions=*/32);
//   auto req = VDMA_TRY(validate_frontend_request(msg));
//   const MemoryTable& t = req.as<MemoryTable>();
//   int fds[kMaxMemRegions];
//   for (uint32_t i = 0; i < t.count; ++i) fds[i] = msg.fd(i);
//   VDMA_TRY(table.replace(t.list(), {fds, t.count}));      // all or nothing
//   std::byte* ring = VDMA_TRY(table.user_to_host(FrontVa{uaddr}, 4096));
//   DmaAddr gpa = VDMA_TRY(table.user_to_guest(FrontVa{uaddr}, 4096));
//   auto q = make_device_queue(RingFormat::kSplit, table, cfg, rings);   // descriptors carry guest addresses
//
// Each region's fd is mapped MAP_SHARED, read/write, at its mmap_offset
// (vhost-user.rst "Memory regions": the region starts mmap_offset bytes into
// the fd). mmap needs a page-aligned offset, so the mapping starts at the page
// below and the region's host pointer is offset into it. The fd itself is not
// kept: the Message that carried it closes it, the mapping stays.
//
// A region is known in three address spaces: its guest address (DmaAddr:
// what descriptors carry when ACCESS_PLATFORM is off), its front-end user
// address (FrontVa: ring addresses in bypass mode, IOTLB uaddr), and the
// local host pointer. Regions never overlap in guest space nor in user space
// (a front-end that sends overlapping regions is rejected: the translation
// would be ambiguous). Every lookup is overflow-safe: a range is accepted
// only when [addr, addr+len) does not wrap and lies inside one region
// (user_to_host/user_to_guest) or inside adjacent regions (translate,
// for_each_user_piece).
//
// Hostile fds. Touching a shared mapping past the end of its object raises
// SIGBUS, so before mapping a region its fd's size is checked against
// mmap_offset + size: fstat for a regular file (memfd, tmpfs, hugetlbfs),
// BLKGETSIZE64 for a block device. Any other kind of fd (a character device
// such as /dev/zero, a pipe, a socket) is refused. A front-end could still
// shrink the file after the table was set. What is guaranteed:
//   - a memfd that is sealed against shrinking (QEMU's memory-backend-memfd
//     seals by default), or that allows sealing and is then sealed here with
//     F_SEAL_SHRINK, cannot be truncated: the back-end is safe;
//   - any other fd (a memfd created without MFD_ALLOW_SEALING, a tmpfs or
//     hugetlbfs file, a block device) cannot be protected: the protocol has
//     no remedy, so the region is accepted with one warning naming it, and
//     a front-end that truncates it can crash the back-end with SIGBUS.
//     Such a front-end can corrupt its own guest anyway; a deployment that
//     must survive it uses sealed memfds.
// Lifetimes: host pointers stay valid until the region is removed, the table
// replaced, or the table destroyed. The owner (BackendSession) stops every
// reader (queue workers) before it changes the table.
//
// Thread safety: const methods may run concurrently; a mutating method
// (replace, add, remove, clear) must not run concurrently with anything.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/check.h"
#include "vdma/base/result.h"
#include "vdma/mem/device_memory.h"
#include "vdma/mem/errors.h"
#include "vdma/vhost_user/payload_views.h"

namespace vdma::vhost_user {

// One mapped region. Move-only; unmaps on destruction.
class BackendRegion {
 public:
  // Maps `fd` for `spec`, after sealing it against shrinking when it is a
  // memfd that allows it (see "Hostile fds" above).
  // Errors: MemErrc::kInvalidRegion (the fd is a regular file or block
  // device shorter than mmap_offset + size, or another kind of fd),
  // BaseErrc::kSystem (fstat, BLKGETSIZE64 or mmap failed, e.g. a bad fd).
  [[nodiscard]] static Result<BackendRegion> map(const MemoryRegion& spec, int fd);

  BackendRegion(BackendRegion&& o) noexcept;
  BackendRegion& operator=(BackendRegion&& o) noexcept;
  BackendRegion(const BackendRegion&) = delete;
  BackendRegion& operator=(const BackendRegion&) = delete;
  ~BackendRegion();

  [[nodiscard]] const MemoryRegion& spec() const noexcept { return spec_; }
  // Host address of spec().guest_addr (and of spec().user_addr).
  [[nodiscard]] std::byte* host() const noexcept { return host_; }
  [[nodiscard]] uint64_t size() const noexcept { return spec_.size; }

 private:
  BackendRegion(const MemoryRegion& spec, void* map_base, size_t map_len, std::byte* host) noexcept
      : spec_(spec), map_base_(map_base), map_len_(map_len), host_(host) {}
  void unmap() noexcept;

  MemoryRegion spec_;
  void* map_base_ = nullptr;
  size_t map_len_ = 0;
  std::byte* host_ = nullptr;
};

class BackendMemoryTable final : public DeviceMemory {
 public:
  // `max_regions` bounds the table (what GET_MAX_MEM_SLOTS reports).
  // Precondition: max_regions >= 1 (VDMA_CHECK).
  explicit BackendMemoryTable(uint32_t max_regions);
  ~BackendMemoryTable() override = default;
  BackendMemoryTable(const BackendMemoryTable&) = delete;
  BackendMemoryTable& operator=(const BackendMemoryTable&) = delete;
  BackendMemoryTable(BackendMemoryTable&&) noexcept = default;
  BackendMemoryTable& operator=(BackendMemoryTable&&) noexcept = default;

  // SET_MEM_TABLE: replaces every region by `regions`, region i mapped from
  // fds[i] (borrowed; not closed). All or nothing: on error the table is
  // unchanged. Errors: BaseErrc::kInvalidArgument (fds.size() differs from
  // regions.size(), more than max_regions), MemErrc::kOverlap (two regions
  // overlap in guest or user space), errors of BackendRegion::map.
  [[nodiscard]] Result<void> replace(std::span<const MemoryRegion> regions, std::span<const int> fds);

  // ADD_MEM_REG. Errors: MemErrc::kNoSpace (table full), MemErrc::kOverlap,
  // errors of BackendRegion::map. The table is unchanged on error.
  [[nodiscard]] Result<void> add(const MemoryRegion& region, int fd);

  // REM_MEM_REG: removes the region with the same guest address, user
  // address and size (vhost-user.rst; mmap_offset is not compared).
  // Errors: MemErrc::kNotMapped (no such region).
  [[nodiscard]] Result<void> remove(const MemoryRegion& region);

  void clear() noexcept { regions_.clear(); }

  [[nodiscard]] size_t region_count() const noexcept { return regions_.size(); }
  [[nodiscard]] uint32_t max_regions() const noexcept { return max_regions_; }
  // The regions, sorted by guest address.
  [[nodiscard]] std::span<const BackendRegion> regions() const noexcept { return regions_; }

  // Host pointer of front-end address range [addr, addr+len), which must lie
  // inside one region (len 0: addr inside a region). Errors:
  // BaseErrc::kOverflow (wraps), MemErrc::kNotMapped naming the address.
  [[nodiscard]] Result<std::byte*> user_to_host(FrontVa addr, uint64_t len) const;
  // The guest address of [addr, addr+len) under the same rule.
  [[nodiscard]] Result<DmaAddr> user_to_guest(FrontVa addr, uint64_t len) const;

  // Calls fn(FrontVa piece_addr, std::byte* host, uint64_t piece_len) for
  // each region piece of [addr, addr+len), in address order, after checking
  // that every byte is covered (so fn is called for all or nothing).
  // Errors: BaseErrc::kInvalidArgument (len 0), BaseErrc::kOverflow,
  // MemErrc::kNotMapped naming the first uncovered address.
  template <class Fn>
  [[nodiscard]] Result<void> for_each_user_piece(FrontVa addr, uint64_t len, Fn&& fn) const {
    VDMA_TRY(check_user_range(addr, len));
    uint64_t done = 0;
    while (done < len) {
      const FrontVa at = addr.unchecked_add(done);
      const BackendRegion* r = find_user(at);
      VDMA_CHECK(r != nullptr, "user range checked but a piece is uncovered");
      const uint64_t off = r->spec().user_addr.distance_to(at);
      const uint64_t piece = std::min(len - done, r->size() - off);
      fn(at, r->host() + off, piece);
      done += piece;
    }
    return ok();
  }

  // DeviceMemory, bypass: `addr` is a guest address from a descriptor. Every
  // region is readable and writable. Errors: those of DeviceMemory.
  [[nodiscard]] Result<void> translate(DmaAddr addr, uint64_t len, Access access,
                                       std::vector<Fragment>& out) const override;
  using DeviceMemory::translate;

 private:
  [[nodiscard]] Result<void> check_user_range(FrontVa addr, uint64_t len) const;
  [[nodiscard]] const BackendRegion* find_user(FrontVa addr) const noexcept;
  [[nodiscard]] const BackendRegion* find_guest(DmaAddr addr) const noexcept;
  // MemErrc::kOverlap when `r` overlaps a region of `others` in either space.
  [[nodiscard]] static Result<void> check_no_overlap(const MemoryRegion& r, std::span<const BackendRegion> others);
  void sort() noexcept;

  uint32_t max_regions_;
  std::vector<BackendRegion> regions_;  // sorted by guest address
};

}  // namespace vdma::vhost_user
