#include "vdma/workload/verify_pattern.h"

#include <cstring>

#include <fmt/format.h>

#include "vdma/base/check.h"

namespace vdma::workload {
namespace {

constexpr size_t kPayload = kVerifySector - sizeof(VerifyHeader);
static_assert(kPayload % 8 == 0);

// splitmix64: a cheap, well-mixed stream; the pattern only has to make every
// (LBA, generation) pair's bytes different, not be unpredictable.
uint64_t mix(uint64_t& state) noexcept {
  uint64_t z = (state += 0x9e3779b97f4a7c15);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
  z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
  return z ^ (z >> 31);
}

uint64_t seed_of(uint64_t lba, uint64_t generation) noexcept {
  return lba * 0x9e3779b97f4a7c15 ^ (generation + 0x632be59bd9b4e019);
}

// FNV-1a over 64-bit words of the header fields and the payload.
uint64_t checksum_of(uint64_t lba, uint64_t generation, const std::byte* payload) noexcept {
  uint64_t h = 0xcbf29ce484222325;
  auto step = [&h](uint64_t w) { h = (h ^ w) * 0x100000001b3; };
  step(kVerifyMagic);
  step(lba);
  step(generation);
  for (size_t off = 0; off < kPayload; off += 8) {
    uint64_t w;
    std::memcpy(&w, payload + off, 8);
    step(w);
  }
  return h;
}

void fill_sector(std::byte* sector, uint64_t lba, uint64_t generation) noexcept {
  std::byte* payload = sector + sizeof(VerifyHeader);
  uint64_t state = seed_of(lba, generation);
  for (size_t off = 0; off < kPayload; off += 8) {
    const uint64_t w = mix(state);
    std::memcpy(payload + off, &w, 8);
  }
  const VerifyHeader h{kVerifyMagic, lba, generation, checksum_of(lba, generation, payload)};
  std::memcpy(sector, &h, sizeof h);
}

std::string_view field_name(VerifyMismatch::Field f) {
  switch (f) {
    case VerifyMismatch::Field::kMagic: return "magic";
    case VerifyMismatch::Field::kLba: return "lba field";
    case VerifyMismatch::Field::kGeneration: return "generation";
    case VerifyMismatch::Field::kChecksum: return "checksum";
  }
  return "field";
}

std::string_view meaning(VerifyMismatch::Field f, uint64_t expected, uint64_t actual) {
  switch (f) {
    case VerifyMismatch::Field::kMagic: return "no vdma-bench header: the write never landed";
    case VerifyMismatch::Field::kLba: return "another sector's data: misdirected I/O";
    case VerifyMismatch::Field::kGeneration:
      return actual < expected ? "stale data: a lost write" : "data from the future: a reordered write";
    case VerifyMismatch::Field::kChecksum: return "bytes changed: torn or corrupted data";
  }
  return "";
}

}  // namespace

std::string describe(const VerifyMismatch& m) {
  return fmt::format("lba {}: {} expected {:#x}, found {:#x} ({})", m.lba, field_name(m.field), m.expected, m.actual,
                     meaning(m.field, m.expected, m.actual));
}

void fill_block(std::span<std::byte> block, uint64_t first_lba, uint64_t generation) noexcept {
  VDMA_CHECK(block.size() % kVerifySector == 0, "verify block not a multiple of 512 bytes");
  for (size_t i = 0; i < block.size() / kVerifySector; ++i) {
    fill_sector(block.data() + i * kVerifySector, first_lba + i, generation);
  }
}

std::optional<VerifyMismatch> check_block(std::span<const std::byte> block, uint64_t first_lba,
                                          uint64_t generation) noexcept {
  VDMA_CHECK(block.size() % kVerifySector == 0, "verify block not a multiple of 512 bytes");
  for (size_t i = 0; i < block.size() / kVerifySector; ++i) {
    const std::byte* sector = block.data() + i * kVerifySector;
    const uint64_t lba = first_lba + i;
    VerifyHeader h;
    std::memcpy(&h, sector, sizeof h);
    using F = VerifyMismatch::Field;
    if (h.magic != kVerifyMagic) return VerifyMismatch{lba, F::kMagic, kVerifyMagic, h.magic};
    if (h.lba != lba) return VerifyMismatch{lba, F::kLba, lba, h.lba};
    if (h.generation != generation) return VerifyMismatch{lba, F::kGeneration, generation, h.generation};
    // The header is right; the payload must be the stream of (lba,
    // generation), and the stored checksum the one fill_block computed. The
    // actual value reported is the checksum of the bytes found (or the
    // stored one, when only the checksum field changed).
    std::byte expected[kVerifySector];
    fill_sector(expected, lba, generation);
    VerifyHeader want;
    std::memcpy(&want, expected, sizeof want);
    const std::byte* payload = sector + sizeof(VerifyHeader);
    if (std::memcmp(expected + sizeof(VerifyHeader), payload, kPayload) != 0) {
      return VerifyMismatch{lba, F::kChecksum, want.checksum, checksum_of(lba, generation, payload)};
    }
    if (h.checksum != want.checksum) return VerifyMismatch{lba, F::kChecksum, want.checksum, h.checksum};
  }
  return std::nullopt;
}

}  // namespace vdma::workload
