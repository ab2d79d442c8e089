// The IO page-table entry format shared by host-owned tables (IoPageTable)
// and guest-owned stage-1 tables (NestedDomain), which live in GuestMemory.
//
//   uint64_t e = pte::make_leaf(0x40000000, Access::kReadWrite);   // e.g. a 1 GiB leaf at level 3
//   if (pte::is_present(e) && pte::is_leaf(e)) use(pte::address(e));
//   if (auto why = pte::malformed_reason(guest_entry, level)) reject(*why);
//
// A table is one 4 KiB page of 512 little-endian 64-bit entries. Four levels
// translate a 48-bit input address with a 4 KiB granule:
//
//   level 4 (root)  index = input bits 47..39   entry: table only
//   level 3         index = input bits 38..30   entry: table, or 1 GiB leaf
//   level 2         index = input bits 29..21   entry: table, or 2 MiB leaf
//   level 1         index = input bits 20..12   entry: 4 KiB leaf only
//
// Entry bits:
//
//   bit  0      P     present; every other bit is ignored when clear
//   bit  1      R     reads allowed
//   bit  2      W     writes allowed
//   bit  7      L     leaf: the entry maps a page of its level's size. Must be
//                     set at level 1 and clear at level 4.
//   bits 12-51  ADDR  leaf: output address; table: address of the next table.
//                     4 KiB aligned; a 2 MiB / 1 GiB leaf's address must be
//                     aligned to its page size (bits below it zero).
//   bits 52-61  SW    ignored by walkers. Host tables keep the number of
//                     present entries of the next table here (0..512) in
//                     table entries, which is how empty tables are freed
//                     and full ones promoted without scanning.
//   bits 3-6, 8-11, 62-63   reserved: must be zero.
//
// Permissions intersect down the walk: the effective R/W of a translation is
// the AND of R/W over every entry visited (as in VT-d second-level and x86
// paging). Host tables set R and W in every table entry so the leaf decides.
//
// Addresses: in an IoPageTable the output of a leaf is a Gpa and a table
// entry holds the host address of the next table (4 KiB aligned, below 2^52
// on every supported platform). In a stage-1 table both are stage-2 input
// addresses (Iovas of the stage-2 IOAS).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "vdma/mem/device_memory.h"

namespace vdma::pte {

inline constexpr unsigned kLevels = 4;
inline constexpr unsigned kEntriesPerTable = 512;
inline constexpr uint64_t kPageSize = 4096;
inline constexpr unsigned kInputBits = 48;
inline constexpr unsigned kOutputBits = 52;
inline constexpr uint64_t kInputLimit = uint64_t{1} << kInputBits;    // first input address not translatable
inline constexpr uint64_t kOutputLimit = uint64_t{1} << kOutputBits;  // first output address not encodable

inline constexpr uint64_t kPresent = uint64_t{1} << 0;
inline constexpr uint64_t kRead = uint64_t{1} << 1;
inline constexpr uint64_t kWrite = uint64_t{1} << 2;
inline constexpr uint64_t kLeaf = uint64_t{1} << 7;
inline constexpr uint64_t kAddrMask = (kOutputLimit - 1) & ~(kPageSize - 1);
inline constexpr unsigned kSwShift = 52;
inline constexpr uint64_t kSwMask = uint64_t{0x3ff} << kSwShift;
inline constexpr uint64_t kReservedMask = ~(kPresent | kRead | kWrite | kLeaf | kAddrMask | kSwMask);

// Bit position of the first input bit a level's index covers.
[[nodiscard]] constexpr unsigned shift(unsigned level) noexcept { return 12 + 9 * (level - 1); }
// Bytes one entry of `level` spans: 4 KiB, 2 MiB, 1 GiB, 512 GiB.
[[nodiscard]] constexpr uint64_t entry_span(unsigned level) noexcept { return uint64_t{1} << shift(level); }
[[nodiscard]] constexpr unsigned index(uint64_t input, unsigned level) noexcept {
  return static_cast<unsigned>((input >> shift(level)) & (kEntriesPerTable - 1));
}
// Whether `level` may hold a leaf (1, 2 and 3; never the root).
[[nodiscard]] constexpr bool leaf_allowed(unsigned level) noexcept { return level >= 1 && level <= 3; }

[[nodiscard]] constexpr uint64_t perm_bits(Access a) noexcept { return uint64_t{static_cast<uint8_t>(a)} << 1; }
[[nodiscard]] constexpr Access perms(uint64_t e) noexcept { return static_cast<Access>((e >> 1) & 3); }

[[nodiscard]] constexpr bool is_present(uint64_t e) noexcept { return (e & kPresent) != 0; }
[[nodiscard]] constexpr bool is_leaf(uint64_t e) noexcept { return (e & kLeaf) != 0; }
[[nodiscard]] constexpr uint64_t address(uint64_t e) noexcept { return e & kAddrMask; }
[[nodiscard]] constexpr unsigned sw_bits(uint64_t e) noexcept { return static_cast<unsigned>((e & kSwMask) >> kSwShift); }
[[nodiscard]] constexpr uint64_t with_sw_bits(uint64_t e, unsigned v) noexcept {
  return (e & ~kSwMask) | ((uint64_t{v} << kSwShift) & kSwMask);
}

// Precondition: addr is aligned to the leaf's page size and below kOutputLimit.
[[nodiscard]] constexpr uint64_t make_leaf(uint64_t addr, Access a) noexcept {
  return kPresent | kLeaf | perm_bits(a) | (addr & kAddrMask);
}
// A table entry granting `a` to everything below it.
[[nodiscard]] constexpr uint64_t make_table(uint64_t table_addr, Access a = Access::kReadWrite) noexcept {
  return kPresent | perm_bits(a) | (table_addr & kAddrMask);
}

// Why a present entry read from an untrusted table at `level` is unusable, or
// nullopt when it is well formed. Not-present entries are never malformed.
[[nodiscard]] constexpr std::optional<std::string_view> malformed_reason(uint64_t e, unsigned level) noexcept {
  if (!is_present(e)) return std::nullopt;
  if ((e & kReservedMask) != 0) return "reserved bits set";
  if (is_leaf(e)) {
    if (!leaf_allowed(level)) return "leaf at the root level";
    if ((address(e) & (entry_span(level) - 1)) != 0) return "huge leaf address not aligned to its page size";
  } else if (level == 1) {
    return "table entry at level 1";
  }
  return std::nullopt;
}

}  // namespace vdma::pte
