// Verify pattern: what vdma-bench --verify writes, so that a read-back can
// tell a correct block from a lost, stale, misdirected or corrupted write.
//
//   fill_block(buf.first(4096), /*first_lba=*/800, /*generation=*/3);
//   ... write it at sector 800, later read it back ...
//   if (auto bad = check_block(buf.first(4096), 800, 3)) report(describe(*bad));
//
// Every 512-byte sector starts with a 32-byte header: magic "VDMABNCH", the
// sector's own LBA, the generation (how many times the workload wrote that
// block), and a checksum over those fields and the 480 bytes that follow,
// which are a pseudo-random stream seeded by (LBA, generation). A read-back
// that finds
//   - no magic:               the write never landed (or landed elsewhere);
//   - another LBA:            the data of a different sector (misdirected I/O);
//   - an older generation:    a stale copy (a lost or reordered write);
//   - a bad checksum:         bytes changed in flight (torn or corrupted).
// The expected and actual values of the first failing field are reported.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace vdma::workload {

inline constexpr uint64_t kVerifyMagic = 0x48434e42414d4456;  // "VDMABNCH" little-endian
inline constexpr size_t kVerifySector = 512;

struct VerifyHeader {
  uint64_t magic = 0;
  uint64_t lba = 0;
  uint64_t generation = 0;
  uint64_t checksum = 0;
};
static_assert(sizeof(VerifyHeader) == 32);

struct VerifyMismatch {
  enum class Field : uint8_t { kMagic, kLba, kGeneration, kChecksum };
  uint64_t lba = 0;  // the sector that failed
  Field field = Field::kMagic;
  uint64_t expected = 0;
  uint64_t actual = 0;
};

// "lba 812: generation expected 3, found 2 (stale data)".
[[nodiscard]] std::string describe(const VerifyMismatch& m);

// Fills `block` (a multiple of 512 bytes) as sectors first_lba, first_lba+1, ...
// of `generation`. Precondition: block.size() % 512 == 0 (VDMA_CHECK).
void fill_block(std::span<std::byte> block, uint64_t first_lba, uint64_t generation) noexcept;

// The first sector of `block` that is not exactly what fill_block(block,
// first_lba, generation) wrote, or nullopt when every sector is.
[[nodiscard]] std::optional<VerifyMismatch> check_block(std::span<const std::byte> block, uint64_t first_lba,
                                                        uint64_t generation) noexcept;

}  // namespace vdma::workload
