#include "vdma/dma/coherent_pool.h"

#include <algorithm>

namespace vdma {

CoherentPool::CoherentPool(const GuestMemory& mem, AddrRange<Gpa> window) : mem_(mem), window_(window), alloc_(window) {}

Result<std::shared_ptr<CoherentPool>> CoherentPool::create(const GuestMemory& mem, AddrRange<Gpa> window) {
  if (window.empty() || !window.start.is_aligned(kPageSize) || window.len % kPageSize != 0 ||
      !fits(window.start, window.len)) {
    return make_error(DmaErrc::kInvalidConfig, "coherent window {} + len {:#x} must be non-empty and page aligned",
                      window.start, window.len);
  }
  const GuestRegion* r = mem.find_region(window.start);
  if (r == nullptr || !r->range().contains(window.start, window.len)) {
    return make_error(DmaErrc::kInvalidConfig, "coherent window {} + len {:#x} is not inside one guest memory region",
                      window.start, window.len);
  }
  return std::make_shared<CoherentPool>(mem, window);
}

Result<CoherentPool::Allocation> CoherentPool::allocate(uint64_t size) {
  if (size == 0 || size > window_.len) {
    return make_error(BaseErrc::kInvalidArgument, "coherent allocation of {:#x} bytes: must be 1..{:#x}", size,
                      window_.len);
  }
  const uint64_t rounded = align_up(size, kPageSize);
  Gpa gpa;
  {
    std::lock_guard lock(mu_);
    gpa = VDMA_TRY(alloc_.allocate(rounded, kPageSize));
  }
  // The window lies inside one region (constructor precondition), so the span exists.
  auto host = mem_.span(gpa, rounded);
  VDMA_CHECK(host.has_value(), "coherent window outside guest memory");
  std::fill(host->begin(), host->end(), std::byte{0});
  return Allocation{gpa, *host};
}

Result<void> CoherentPool::free(Gpa gpa, uint64_t size) {
  std::lock_guard lock(mu_);
  return alloc_.free(gpa, size);
}

uint64_t CoherentPool::bytes_free() const {
  std::lock_guard lock(mu_);
  return alloc_.bytes_free();
}

}  // namespace vdma
