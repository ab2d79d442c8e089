// DeviceMemory: how the device side reaches the memory a descriptor names.
//
//   std::vector<Fragment> frags;          // reused across calls: no allocation once warm
//   auto r = dev_mem.translate(DmaAddr{desc_addr}, desc_len, Access::kWrite, frags);
//   if (!r) { /* r.error().is(MemErrc::kNotMapped) or kPermissionDenied */ }
//
// A translation may yield several host fragments (a range that crosses
// regions or IOTLB entries). Implementations: RegionTable (bypass and offset
// ranges, this module) and the device IOTLB (iommu module).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/mem/errors.h"

namespace vdma {

enum class Access : uint8_t { kNone = 0, kRead = 1, kWrite = 2, kReadWrite = 3 };

[[nodiscard]] constexpr Access operator|(Access a, Access b) noexcept {
  return static_cast<Access>(static_cast<uint8_t>(a) | static_cast<uint8_t>(b));
}
[[nodiscard]] constexpr Access operator&(Access a, Access b) noexcept {
  return static_cast<Access>(static_cast<uint8_t>(a) & static_cast<uint8_t>(b));
}
// Whether `granted` includes every right in `wanted`.
[[nodiscard]] constexpr bool permits(Access granted, Access wanted) noexcept { return (granted & wanted) == wanted; }
[[nodiscard]] std::string_view to_string(Access a) noexcept;

// A piece of host memory that backs part of a translated range.
struct Fragment {
  std::byte* host = nullptr;
  uint64_t len = 0;
  [[nodiscard]] std::span<std::byte> span() const noexcept { return {host, static_cast<size_t>(len)}; }
};

class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;

  // Appends to `out` the fragments that back [addr, addr+len) for `access`.
  // len 0 succeeds with no fragment when addr is mapped.
  // Errors (nothing is appended on error):
  //   MemErrc::kNotMapped        some byte has no translation; the message names it
  //   MemErrc::kPermissionDenied a translation exists but lacks `access`
  //   BaseErrc::kOverflow        addr+len wraps past 2^64
  // Thread safety: implementations allow concurrent translate() calls.
  [[nodiscard]] virtual Result<void> translate(DmaAddr addr, uint64_t len, Access access,
                                               std::vector<Fragment>& out) const = 0;

  // Convenience: a fresh vector (allocates; not for the data path).
  [[nodiscard]] Result<std::vector<Fragment>> translate(DmaAddr addr, uint64_t len, Access access) const;

  // A contiguous host view of [addr, addr+len), for rings: an error when the
  // range maps to more than one fragment (MemErrc::kTooManyFragments).
  [[nodiscard]] Result<std::span<std::byte>> translate_contiguous(DmaAddr addr, uint64_t len, Access access) const;

  // Ring translation cache support (Linux vhost's vq_meta_prefetch). A device
  // queue translates each ring area once with translate_ring() and keeps the
  // host pointer. Memory whose translations can change (the IOTLB) returns a
  // non-null epoch from ring_epoch() that changes whenever an UPDATE or
  // INVALIDATE overlaps a range given to translate_ring(); the queue loads it
  // (acquire) before each use of its cached pointers and translates again
  // when it differs from the value it saw before its last translate_ring().
  // RegionTable's translations never change: nullptr, and the check is free.
  [[nodiscard]] virtual Result<std::span<std::byte>> translate_ring(DmaAddr addr, uint64_t len, Access access) const {
    return translate_contiguous(addr, len, access);
  }
  [[nodiscard]] virtual const std::atomic<uint64_t>* ring_epoch() const noexcept { return nullptr; }
};

}  // namespace vdma
