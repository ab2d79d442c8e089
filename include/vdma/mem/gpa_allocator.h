// GpaAllocator: first-fit allocation of guest-physical ranges inside a window.
//
//   GpaAllocator a(AddrRange<Gpa>{Gpa{0}, 64 << 20});
//   Gpa g = *a.allocate(8192, 4096);   // 4 KiB aligned
//   a.free(g, 8192);
//
// Used for ring memory (alloc_coherent) and test buffers. Not thread-safe:
// callers serialise (a DmaOps holds its own lock around it).
#pragma once

#include <cstdint>
#include <map>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/mem/errors.h"

namespace vdma {

class GpaAllocator {
 public:
  explicit GpaAllocator(AddrRange<Gpa> window);

  // Errors: BaseErrc::kInvalidArgument (size 0, align not a power of two),
  // MemErrc::kNoSpace (no free range fits; names size, align and bytes free).
  [[nodiscard]] Result<Gpa> allocate(uint64_t size, uint64_t align);
  // Errors: BaseErrc::kInvalidArgument when [gpa, gpa+size) is not exactly a live allocation.
  [[nodiscard]] Result<void> free(Gpa gpa, uint64_t size);

  [[nodiscard]] uint64_t bytes_free() const noexcept { return bytes_free_; }
  [[nodiscard]] AddrRange<Gpa> window() const noexcept { return window_; }

 private:
  AddrRange<Gpa> window_;
  std::map<uint64_t, uint64_t> free_;  // start -> len, coalesced
  std::map<uint64_t, uint64_t> live_;  // start -> len
  uint64_t bytes_free_ = 0;
};

}  // namespace vdma
