// CoherentPool: page-aligned, zeroed ring memory carved from one window of
// guest memory, shared by the DmaOps of several devices.
//
//   auto pool = *CoherentPool::create(*mem, {Gpa{0}, 8 << 20});
//   CoherentPool::Allocation a = *pool->allocate(5000);   // 8 KiB, page aligned, zeroed
//   ... a.gpa, a.host ...
//   (void)pool->free(a.gpa, a.host.size());
//
// Lifetime: the GuestMemory must outlive the pool; DmaOps hold the pool by
// shared_ptr so devices built from one platform share one window.
// Thread safety: every method may be called concurrently (one internal lock).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/errors.h"
#include "vdma/mem/gpa_allocator.h"
#include "vdma/mem/guest_memory.h"

namespace vdma {

class CoherentPool {
 public:
  static constexpr uint64_t kPageSize = 4096;

  struct Allocation {
    Gpa gpa;
    std::span<std::byte> host;  // size(): the rounded size, to pass to free()
  };

  // Precondition: `window` lies inside one region of `mem` (create() checks it).
  CoherentPool(const GuestMemory& mem, AddrRange<Gpa> window);

  // Errors: DmaErrc::kInvalidConfig when the window is empty, not page
  // aligned, or not inside one guest memory region.
  [[nodiscard]] static Result<std::shared_ptr<CoherentPool>> create(const GuestMemory& mem, AddrRange<Gpa> window);

  // At least `size` bytes (rounded up to a page), page aligned, zeroed.
  // Errors: BaseErrc::kInvalidArgument (size 0), MemErrc::kNoSpace.
  [[nodiscard]] Result<Allocation> allocate(uint64_t size);
  // Errors: BaseErrc::kInvalidArgument when (gpa, size) is not a live allocation.
  [[nodiscard]] Result<void> free(Gpa gpa, uint64_t size);

  [[nodiscard]] AddrRange<Gpa> window() const noexcept { return window_; }
  [[nodiscard]] uint64_t bytes_free() const;

 private:
  const GuestMemory& mem_;
  const AddrRange<Gpa> window_;
  mutable std::mutex mu_;
  GpaAllocator alloc_;  // guarded by mu_
};

}  // namespace vdma
