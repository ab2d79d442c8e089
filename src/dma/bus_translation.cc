#include "vdma/dma/bus_translation.h"

#include <algorithm>

namespace vdma {

namespace {
constexpr uint64_t kRangeAlign = 4096;
}  // namespace

Result<BusTranslation> BusTranslation::create(BusConfig config) {
  if (!is_valid_dma_mask(config.dma_mask)) {
    return make_error(DmaErrc::kInvalidConfig, "dma_mask {:#x} is not of the form 2^n-1 with n >= 12", config.dma_mask);
  }
  for (size_t i = 0; i < config.ranges.size(); ++i) {
    const OffsetRange& r = config.ranges[i];
    if (r.size == 0 || !fits(r.cpu, r.size) || !fits(r.dma, r.size)) {
      return make_error(DmaErrc::kInvalidConfig, "offset range {}: cpu {} dma {} size {:#x} is empty or wraps", i,
                        r.cpu, r.dma, r.size);
    }
    if (!r.cpu.is_aligned(kRangeAlign) || !r.dma.is_aligned(kRangeAlign) || r.size % kRangeAlign != 0) {
      return make_error(DmaErrc::kInvalidConfig, "offset range {}: cpu {} dma {} size {:#x} is not 4 KiB aligned", i,
                        r.cpu, r.dma, r.size);
    }
  }
  for (size_t i = 0; i < config.ranges.size(); ++i) {
    for (size_t j = i + 1; j < config.ranges.size(); ++j) {
      const OffsetRange& a = config.ranges[i];
      const OffsetRange& b = config.ranges[j];
      if (AddrRange<Gpa>{a.cpu, a.size}.overlaps({b.cpu, b.size})) {
        return make_error(DmaErrc::kInvalidConfig, "offset ranges {} and {} overlap in CPU space ({} and {})", i, j,
                          a.cpu, b.cpu);
      }
      if (AddrRange<DmaAddr>{a.dma, a.size}.overlaps({b.dma, b.size})) {
        return make_error(DmaErrc::kInvalidConfig, "offset ranges {} and {} overlap in bus space ({} and {})", i, j,
                          a.dma, b.dma);
      }
    }
  }
  if (config.encryption_bit) {
    const unsigned bit = *config.encryption_bit;
    if (bit < 1 || bit > 63) {
      return make_error(DmaErrc::kInvalidConfig, "encryption bit {} is outside 1..63", bit);
    }
    for (size_t i = 0; i < config.ranges.size(); ++i) {
      const OffsetRange& r = config.ranges[i];
      if (AddrRange<DmaAddr>{r.dma, r.size}.last().value() >> bit != 0) {
        return make_error(DmaErrc::kInvalidConfig,
                          "offset range {}: bus addresses {} + {:#x} reach the encryption bit {}", i, r.dma, r.size,
                          bit);
      }
    }
  }
  std::sort(config.ranges.begin(), config.ranges.end(),
            [](const OffsetRange& a, const OffsetRange& b) { return a.cpu < b.cpu; });
  return BusTranslation(std::move(config));
}

Result<DmaAddr> BusTranslation::to_dma(Gpa gpa, uint64_t len, MemAttr attr) const {
  if (!fits(gpa, len)) return make_error(BaseErrc::kOverflow, "{} + len {:#x} wraps past 2^64", gpa, len);
  uint64_t bus = 0;
  if (config_.ranges.empty()) {
    bus = gpa.value();
    if (config_.encryption_bit && AddrRange<Gpa>{gpa, std::max<uint64_t>(len, 1)}.last().value() >>
                                          *config_.encryption_bit != 0) {
      return make_error(DmaErrc::kNotCovered, "{} + len {:#x} reaches the encryption bit {}", gpa, len,
                        *config_.encryption_bit);
    }
  } else {
    const OffsetRange* hit = nullptr;
    for (const OffsetRange& r : config_.ranges) {
      if (AddrRange<Gpa>{r.cpu, r.size}.contains(gpa, len)) {
        hit = &r;
        break;
      }
    }
    if (hit == nullptr) {
      return make_error(DmaErrc::kNotCovered, "{} + len {:#x} is not inside any of the device's {} bus offset range(s)",
                        gpa, len, config_.ranges.size());
    }
    bus = hit->dma.value() + hit->cpu.distance_to(gpa);
  }
  if (config_.encryption_bit && attr == MemAttr::kPrivate) bus |= uint64_t{1} << *config_.encryption_bit;
  return DmaAddr(bus);
}

Result<Gpa> BusTranslation::to_cpu(DmaAddr dma) const {
  uint64_t bus = dma.value();
  if (config_.encryption_bit) bus &= ~(uint64_t{1} << *config_.encryption_bit);
  if (config_.ranges.empty()) return Gpa(bus);
  for (const OffsetRange& r : config_.ranges) {
    if (AddrRange<DmaAddr>{r.dma, r.size}.contains(DmaAddr(bus))) {
      return r.cpu.unchecked_add(r.dma.distance_to(DmaAddr(bus)));
    }
  }
  return make_error(DmaErrc::kNotCovered, "{} is not inside any of the device's bus offset ranges", dma);
}

}  // namespace vdma
