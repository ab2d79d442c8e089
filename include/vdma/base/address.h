// Strong address types: one per address space (docs/ARCHITECTURE.md).
//
//   Gpa gpa{0x1000};
//   DmaAddr dma{gpa.value()};          // explicit, visible conversion only
//   Result<Gpa> end = checked_add(gpa, len);   // error on wrap past 2^64
//   AddrRange<Gpa> r{gpa, len};  r.contains(other);
//
// No implicit conversion exists between Gpa, DmaAddr, Iova and FrontVa, nor
// from or to integers: crossing address spaces is always a named operation.
#pragma once

#include <compare>
#include <cstdint>
#include <string_view>

#include <fmt/format.h>

#include "vdma/base/result.h"

namespace vdma {

template <class Tag>
class Address {
 public:
  constexpr Address() noexcept = default;
  constexpr explicit Address(uint64_t v) noexcept : v_(v) {}

  [[nodiscard]] constexpr uint64_t value() const noexcept { return v_; }
  constexpr auto operator<=>(const Address&) const noexcept = default;

  // Unchecked offset: for callers that have already proven `value() + off`
  // does not wrap (for example inside a range validated by checked_add).
  [[nodiscard]] constexpr Address unchecked_add(uint64_t off) const noexcept { return Address(v_ + off); }
  // Distance to a higher address in the same space; precondition: other >= *this.
  [[nodiscard]] constexpr uint64_t distance_to(Address other) const noexcept { return other.v_ - v_; }
  [[nodiscard]] constexpr bool is_aligned(uint64_t align) const noexcept { return (v_ & (align - 1)) == 0; }

  static constexpr std::string_view prefix() noexcept { return Tag::kPrefix; }

 private:
  uint64_t v_ = 0;
};

struct GpaTag { static constexpr std::string_view kPrefix = "gpa"; };
struct DmaAddrTag { static constexpr std::string_view kPrefix = "dma"; };
struct IovaTag { static constexpr std::string_view kPrefix = "iova"; };
struct FrontVaTag { static constexpr std::string_view kPrefix = "fva"; };

using Gpa = Address<GpaTag>;          // guest physical
using DmaAddr = Address<DmaAddrTag>;  // what a device sees in a descriptor
using Iova = Address<IovaTag>;        // IO virtual, inside an IO address space
using FrontVa = Address<FrontVaTag>;  // vhost-user front-end virtual ("uaddr")

// addr + len, or BaseErrc::kOverflow when it wraps past 2^64.
template <class Tag>
[[nodiscard]] inline Result<Address<Tag>> checked_add(Address<Tag> addr, uint64_t len) {
  uint64_t out = 0;
  if (__builtin_add_overflow(addr.value(), len, &out)) {
    return make_error(BaseErrc::kOverflow, "{}:{:#x} + len {:#x} wraps past 2^64", Tag::kPrefix, addr.value(), len);
  }
  return Address<Tag>(out);
}

// True when [addr, addr+len) does not wrap. len 0 never wraps.
template <class Tag>
[[nodiscard]] constexpr bool fits(Address<Tag> addr, uint64_t len) noexcept {
  return len == 0 || addr.value() + (len - 1) >= addr.value();
}

// A half-open range [start, start+len) whose end may be exactly 2^64 (the last
// byte is start+len-1). Build it with make_range(), which rejects wraps.
template <class A>
struct AddrRange {
  A start{};
  uint64_t len = 0;

  // The last byte, valid when len > 0.
  [[nodiscard]] constexpr A last() const noexcept { return A(start.value() + len - 1); }
  [[nodiscard]] constexpr bool empty() const noexcept { return len == 0; }
  [[nodiscard]] constexpr bool contains(A a) const noexcept {
    return len != 0 && a >= start && a.value() - start.value() < len;
  }
  // Whether [a, a+n) lies inside; overflow-safe, n == 0 is contained iff a is.
  [[nodiscard]] constexpr bool contains(A a, uint64_t n) const noexcept {
    if (!contains(a)) return false;
    return n <= len - (a.value() - start.value());
  }
  [[nodiscard]] constexpr bool overlaps(const AddrRange& o) const noexcept {
    if (len == 0 || o.len == 0) return false;
    return start <= o.last() && o.start <= last();
  }
  constexpr bool operator==(const AddrRange&) const noexcept = default;
};

template <class Tag>
[[nodiscard]] inline Result<AddrRange<Address<Tag>>> make_range(Address<Tag> start, uint64_t len) {
  if (!fits(start, len)) {
    return make_error(BaseErrc::kOverflow, "{}:{:#x} + len {:#x} wraps past 2^64", Tag::kPrefix, start.value(), len);
  }
  return AddrRange<Address<Tag>>{start, len};
}

[[nodiscard]] constexpr uint64_t align_up(uint64_t v, uint64_t align) noexcept { return (v + align - 1) & ~(align - 1); }
[[nodiscard]] constexpr uint64_t align_down(uint64_t v, uint64_t align) noexcept { return v & ~(align - 1); }
[[nodiscard]] constexpr bool is_pow2(uint64_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace vdma

template <class Tag>
struct fmt::formatter<vdma::Address<Tag>> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(vdma::Address<Tag> a, Ctx& ctx) const {
    return fmt::format_to(ctx.out(), "{}:{:#x}", Tag::kPrefix, a.value());
  }
};
