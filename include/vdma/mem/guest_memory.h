// GuestMemory: the driver side's "physical" memory.
//
//   auto mem = GuestMemory::create({
//       {.base = Gpa{0}, .size = 64 << 20, .attr = MemAttr::kPrivate, .name = "ram"},
//       {.base = Gpa{1ull << 32}, .size = 4 << 20, .attr = MemAttr::kShared, .name = "swiotlb"},
//   });
//   mem->write(Gpa{0x1000}, bytes);                 // may span adjacent regions
//   std::span<std::byte> s = *mem->span(Gpa{0x1000}, 4096);   // only within one region
//
// Each region is backed by its own memfd (MFD_CLOEXEC) mapped MAP_SHARED, so a
// vhost-user back-end in another process can map it from the fd. Regions are
// fixed at creation and never move, so spans stay valid for the lifetime of
// the GuestMemory. All reads and writes are bounds-checked with overflow-safe
// arithmetic; they never touch bytes outside a region.
//
// Thread safety: the region table is immutable after create(); concurrent
// reads/writes of distinct bytes are safe, as with real RAM.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/mem/errors.h"

namespace vdma {

// Private memory is reachable by the guest only (a confidential guest's
// encrypted RAM); shared memory may be handed to the host/back-end.
enum class MemAttr : uint8_t { kPrivate, kShared };

struct RegionSpec {
  Gpa base;
  uint64_t size = 0;  // bytes, a multiple of 4 KiB
  MemAttr attr = MemAttr::kPrivate;
  std::string name;
};

// One memfd-backed region. Move-only; closes its fd and unmaps on destruction.
class GuestRegion {
 public:
  GuestRegion(GuestRegion&&) noexcept;
  GuestRegion& operator=(GuestRegion&&) noexcept;
  GuestRegion(const GuestRegion&) = delete;
  GuestRegion& operator=(const GuestRegion&) = delete;
  ~GuestRegion();

  [[nodiscard]] Gpa base() const noexcept { return base_; }
  [[nodiscard]] uint64_t size() const noexcept { return size_; }
  [[nodiscard]] AddrRange<Gpa> range() const noexcept { return {base_, size_}; }
  [[nodiscard]] MemAttr attr() const noexcept { return attr_; }
  [[nodiscard]] bool is_shared() const noexcept { return attr_ == MemAttr::kShared; }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  // The memfd; offset 0 of the fd is base(). Owned by the region.
  [[nodiscard]] int fd() const noexcept { return fd_; }
  [[nodiscard]] std::span<std::byte> host() const noexcept { return {host_, size_}; }

 private:
  friend class GuestMemory;
  GuestRegion(Gpa base, uint64_t size, MemAttr attr, std::string name, int fd, std::byte* host);

  Gpa base_;
  uint64_t size_ = 0;
  MemAttr attr_ = MemAttr::kPrivate;
  std::string name_;
  int fd_ = -1;
  std::byte* host_ = nullptr;
};

class GuestMemory {
 public:
  // Errors: MemErrc::kInvalidRegion (size 0, not 4 KiB-multiple, base
  // unaligned, base+size wraps), MemErrc::kOverlap (two specs overlap),
  // BaseErrc::kSystem (memfd_create/ftruncate/mmap failed).
  [[nodiscard]] static Result<std::unique_ptr<GuestMemory>> create(std::vector<RegionSpec> specs);

  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  // Sorted by base address.
  [[nodiscard]] std::span<const GuestRegion> regions() const noexcept { return regions_; }
  // The region containing gpa, or nullptr.
  [[nodiscard]] const GuestRegion* find_region(Gpa gpa) const noexcept;

  // A host view of [gpa, gpa+len) when it lies inside one region.
  // Errors: MemErrc::kNotMapped (outside every region, or crossing a region
  // edge), BaseErrc::kOverflow (gpa+len wraps).
  [[nodiscard]] Result<std::span<std::byte>> span(Gpa gpa, uint64_t len) const;

  // Copy out/in; the range may cross adjacent regions but not a hole.
  // Errors: MemErrc::kNotMapped naming the first unmapped byte, BaseErrc::kOverflow.
  // On error nothing has been written.
  [[nodiscard]] Result<void> read(Gpa gpa, std::span<std::byte> out) const;
  [[nodiscard]] Result<void> write(Gpa gpa, std::span<const std::byte> in) const;
  [[nodiscard]] Result<void> fill(Gpa gpa, uint64_t len, std::byte value) const;

  // Whether every byte of [gpa, gpa+len) is in some region (len 0: gpa is).
  [[nodiscard]] bool contains(Gpa gpa, uint64_t len) const noexcept;
  // Whether every byte of [gpa, gpa+len) is mapped and has attribute attr.
  [[nodiscard]] bool is_all(Gpa gpa, uint64_t len, MemAttr attr) const noexcept;

 private:
  explicit GuestMemory(std::vector<GuestRegion> regions) : regions_(std::move(regions)) {}

  // Calls fn(region, offset_in_region, chunk_len) for each piece; validates first.
  template <class Fn>
  Result<void> for_each_piece(Gpa gpa, uint64_t len, Fn&& fn) const;

  std::vector<GuestRegion> regions_;
};

}  // namespace vdma
