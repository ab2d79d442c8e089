// BusTranslation: how a device without an IOMMU addresses guest memory
// (Linux dma-direct: bus_dma_region offsets, the SME/SEV C-bit, the DMA mask).
//
//   auto bus = *BusTranslation::create({
//       .ranges = {{.cpu = Gpa{0}, .dma = DmaAddr{1ull << 40}, .size = 1ull << 30}},
//       .encryption_bit = 47,
//       .dma_mask = (1ull << 48) - 1});
//   DmaAddr d = *bus.to_dma(gpa, len, MemAttr::kPrivate);   // gpa + 2^40, bit 47 set
//   if (!bus.addressable(d, len)) ... bounce or fail ...
//   Gpa back = *bus.to_cpu(d);
//
// Offset ranges: [cpu, cpu+size) appears at [dma, dma+size). With no range,
// dma == gpa for all memory. A buffer must lie inside ONE range; one that
// starts or ends outside every range is DmaErrc::kNotCovered (Linux
// translate_phys_to_dma returns DMA_MAPPING_ERROR). Ranges are 4 KiB aligned,
// so the low 12 address bits are preserved (a bounce min_align_mask relies
// on it).
//
// Encryption bit: set in the DMA address of private memory and clear for
// shared memory (SEV's C-bit; AMD SME sets it for "encrypted" DMA). Every
// range's bus addresses must lie below the bit so stripping it is exact.
//
// DMA mask: the device reaches bus addresses <= dma_mask (2^n - 1, n >= 12),
// checked on the final address including the encryption bit, as Linux's
// dma_capable() does: a 32-bit device cannot reach C-bit memory and must
// bounce through shared memory.
//
// Thread safety: immutable after create().
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/errors.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/mem/region_table.h"

namespace vdma {

struct BusConfig {
  std::vector<OffsetRange> ranges;         // empty: identity
  std::optional<unsigned> encryption_bit;  // 1..63
  uint64_t dma_mask = UINT64_MAX;
};

// Whether m is 2^n - 1 with 12 <= n <= 64.
[[nodiscard]] constexpr bool is_valid_dma_mask(uint64_t m) noexcept {
  return (m & (m + 1)) == 0 && m >= 0xfff;
}

class BusTranslation {
 public:
  // Errors: DmaErrc::kInvalidConfig naming the range or value: an empty,
  // wrapping or unaligned range, ranges overlapping in CPU or bus space, an
  // encryption bit outside 1..63 or not above every range, a bad mask.
  [[nodiscard]] static Result<BusTranslation> create(BusConfig config);

  // The bus address of [gpa, gpa+len) for memory of attribute `attr`.
  // Errors: DmaErrc::kNotCovered (not inside one range; or, with no ranges,
  // at or above the encryption bit), BaseErrc::kOverflow.
  [[nodiscard]] Result<DmaAddr> to_dma(Gpa gpa, uint64_t len, MemAttr attr) const;
  // Whether [dma, dma+len) lies at or below the DMA mask.
  [[nodiscard]] bool addressable(DmaAddr dma, uint64_t len) const noexcept {
    return len == 0 ? dma.value() <= config_.dma_mask
                    : fits(dma, len) && dma.value() + (len - 1) <= config_.dma_mask;
  }
  // The guest-physical address behind a bus address (the encryption bit stripped).
  // Errors: DmaErrc::kNotCovered.
  [[nodiscard]] Result<Gpa> to_cpu(DmaAddr dma) const;

  [[nodiscard]] const BusConfig& config() const noexcept { return config_; }
  [[nodiscard]] uint64_t dma_mask() const noexcept { return config_.dma_mask; }

 private:
  explicit BusTranslation(BusConfig c) : config_(std::move(c)) {}
  BusConfig config_;  // ranges sorted by cpu
};

}  // namespace vdma
