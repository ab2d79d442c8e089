// Private: byte-level access to a chain's fragments. The fragments carry no
// descriptor boundaries; every helper skips zero-length fragments and is
// bounded by the fragment count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "vdma/mem/device_memory.h"

namespace vdma::blk {

// Sum of the fragment lengths.
[[nodiscard]] uint64_t total_bytes(std::span<const Fragment> frags) noexcept;

// Copies out.size() bytes starting `offset` bytes into the fragments.
// False (nothing meaningful copied) when the fragments are too short.
[[nodiscard]] bool gather(std::span<const Fragment> frags, uint64_t offset, std::span<std::byte> out) noexcept;

// Copies `in` to `offset` bytes into the fragments; false when too short.
[[nodiscard]] bool scatter(std::span<const Fragment> frags, uint64_t offset, std::span<const std::byte> in) noexcept;

// Zeroes the first `len` bytes of the fragments (fewer when they are shorter).
void zero_prefix(std::span<const Fragment> frags, uint64_t len) noexcept;

// The last byte of the last non-empty fragment, or nullptr.
[[nodiscard]] std::byte* last_byte(std::span<const Fragment> frags) noexcept;

}  // namespace vdma::blk
