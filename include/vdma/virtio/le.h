// Little-endian fields of virtio structures (virtio 1.2 §1.4: "le16/le32/le64").
//
// A Le<T> is stored in guest-shared memory; load()/store() convert. Ring
// indices that the other side changes concurrently are not read through
// these but through std::atomic_ref (see the ring implementations).
#pragma once

#include <bit>
#include <cstdint>
#include <type_traits>

namespace vdma {

template <class T>
[[nodiscard]] constexpr T to_le(T v) noexcept {
  static_assert(std::is_unsigned_v<T>);
  if constexpr (std::endian::native == std::endian::little || sizeof(T) == 1) {
    return v;
  } else if constexpr (sizeof(T) == 2) {
    return __builtin_bswap16(v);
  } else if constexpr (sizeof(T) == 4) {
    return __builtin_bswap32(v);
  } else {
    return __builtin_bswap64(v);
  }
}
template <class T>
[[nodiscard]] constexpr T from_le(T v) noexcept { return to_le(v); }

template <class T>
struct Le {
  T raw;
  [[nodiscard]] constexpr T load() const noexcept { return from_le(raw); }
  constexpr void store(T v) noexcept { raw = to_le(v); }
};
using Le16 = Le<uint16_t>;
using Le32 = Le<uint32_t>;
using Le64 = Le<uint64_t>;
static_assert(sizeof(Le16) == 2 && sizeof(Le32) == 4 && sizeof(Le64) == 8);

}  // namespace vdma
