#include "vdma/mem/gpa_allocator.h"

namespace vdma {

GpaAllocator::GpaAllocator(AddrRange<Gpa> window) : window_(window), bytes_free_(window.len) {
  if (window.len > 0) free_.emplace(window.start.value(), window.len);
}

Result<Gpa> GpaAllocator::allocate(uint64_t size, uint64_t align) {
  if (size == 0 || !is_pow2(align)) {
    return make_error(BaseErrc::kInvalidArgument, "allocate size {:#x} align {:#x}: size must be > 0, align a power of two",
                      size, align);
  }
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    const uint64_t start = it->first;
    const uint64_t len = it->second;
    const uint64_t aligned = align_up(start, align);
    if (aligned < start) continue;  // wrapped
    const uint64_t pad = aligned - start;
    if (pad > len || len - pad < size) continue;
    free_.erase(it);
    if (pad > 0) free_.emplace(start, pad);
    if (len - pad > size) free_.emplace(aligned + size, len - pad - size);
    live_.emplace(aligned, size);
    bytes_free_ -= size;
    return Gpa(aligned);
  }
  return make_error(MemErrc::kNoSpace, "no free range of {:#x} bytes aligned to {:#x} in [{}, +{:#x}) ({:#x} bytes free)",
                    size, align, window_.start, window_.len, bytes_free_);
}

Result<void> GpaAllocator::free(Gpa gpa, uint64_t size) {
  auto live = live_.find(gpa.value());
  if (live == live_.end() || live->second != size) {
    return make_error(BaseErrc::kInvalidArgument, "free {} size {:#x}: not a live allocation", gpa, size);
  }
  live_.erase(live);
  bytes_free_ += size;
  uint64_t start = gpa.value();
  uint64_t len = size;
  auto next = free_.lower_bound(start);
  if (next != free_.end() && start + len == next->first) {
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      len += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(start, len);
  return ok();
}

}  // namespace vdma
