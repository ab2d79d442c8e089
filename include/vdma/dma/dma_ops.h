// DmaOps: the driver side's platform DMA API, one instance per device, with
// Linux's dma_map_* semantics.
//
//   DmaAddr d = *ops.map(gpa, len, DmaDirection::kToDevice);
//   desc.addr = d;                     // never assume d == gpa
//   ... device runs ...
//   ops.unmap(d, len, DmaDirection::kToDevice);   // same len and direction as map
//   CoherentBuffer ring = *ops.alloc_coherent(8192);   // rings live here
//
// Mapping lifetime: a mapping is *explicitly unmapped* with the same (addr,
// len, direction) it was mapped with, as in Linux. There is no RAII handle
// because a virtqueue keeps its mappings in its own shadow state and unmaps
// from there; the debug checker (dma module) wraps any DmaOps and reports an
// unmap of an unknown address, a size or direction mismatch, and mappings
// still live at teardown. Every mapping must be unmapped before the device is
// reset or the DmaOps is destroyed.
//
// Thread safety: every method may be called concurrently from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/errors.h"
#include "vdma/mem/gpa_allocator.h"
#include "vdma/mem/guest_memory.h"

namespace vdma {

enum class DmaDirection : uint8_t { kToDevice, kFromDevice, kBidirectional };

[[nodiscard]] std::string_view to_string(DmaDirection d) noexcept;

// Bit flags, as Linux's DMA_ATTR_*.
enum class DmaAttrs : uint32_t {
  kNone = 0,
  kSkipCpuSync = 1u << 0,  // map/unmap do no cache maintenance or bounce copy
  kNoWarn = 1u << 1,       // failures are expected by the caller: do not log them
};
[[nodiscard]] constexpr DmaAttrs operator|(DmaAttrs a, DmaAttrs b) noexcept {
  return static_cast<DmaAttrs>(static_cast<uint32_t>(a) | static_cast<uint32_t>(b));
}
[[nodiscard]] constexpr bool has(DmaAttrs set, DmaAttrs bit) noexcept {
  return (static_cast<uint32_t>(set) & static_cast<uint32_t>(bit)) != 0;
}

// Memory both the CPU and the device access without syncs (rings).
struct CoherentBuffer {
  Gpa cpu;                      // guest-physical address
  DmaAddr dma;                  // what the device is told
  std::span<std::byte> host;    // CPU view
};

class DmaOps {
 public:
  virtual ~DmaOps() = default;

  // Maps [gpa, gpa+len) for the device. len > 0.
  // Errors: DmaErrc::kNotCovered, kBeyondMask, kPoolFull, kIovaExhausted,
  // kTooLarge; MemErrc::kNotMapped when the range is not guest memory.
  [[nodiscard]] virtual Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir,
                                            DmaAttrs attrs = DmaAttrs::kNone) = 0;
  // Ends a mapping made by map() with the same len and direction.
  // Errors: DmaErrc::kUnknownMapping (where the implementation can tell).
  [[nodiscard]] virtual Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir,
                                           DmaAttrs attrs = DmaAttrs::kNone) = 0;
  // Make device writes visible to the CPU / CPU writes visible to the device
  // for part of a live mapping.
  [[nodiscard]] virtual Result<void> sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) = 0;
  [[nodiscard]] virtual Result<void> sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) = 0;

  // Page-aligned coherent memory of at least `size` bytes, zeroed.
  [[nodiscard]] virtual Result<CoherentBuffer> alloc_coherent(uint64_t size) = 0;
  [[nodiscard]] virtual Result<void> free_coherent(const CoherentBuffer& buf) = 0;

  // The largest len map() accepts.
  [[nodiscard]] virtual uint64_t max_mapping_size() const = 0;
  // Whether sync_for_* does anything for this address (bounce, non-coherent).
  [[nodiscard]] virtual bool need_sync(DmaAddr addr) const = 0;
};

// The bypass: DmaAddr == Gpa, no syncs. Coherent memory comes from a window
// of guest memory given at construction. This is what a virtio device without
// VIRTIO_F_ACCESS_PLATFORM gets.
class IdentityDmaOps final : public DmaOps {
 public:
  // `coherent_window` must lie inside `mem`; alloc_coherent carves from it.
  IdentityDmaOps(const GuestMemory& mem, AddrRange<Gpa> coherent_window);

  [[nodiscard]] Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) override;
  [[nodiscard]] Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs) override;
  [[nodiscard]] Result<void> sync_for_cpu(DmaAddr, uint64_t, DmaDirection) override { return ok(); }
  [[nodiscard]] Result<void> sync_for_device(DmaAddr, uint64_t, DmaDirection) override { return ok(); }
  [[nodiscard]] Result<CoherentBuffer> alloc_coherent(uint64_t size) override;
  [[nodiscard]] Result<void> free_coherent(const CoherentBuffer& buf) override;
  [[nodiscard]] uint64_t max_mapping_size() const override { return UINT64_MAX; }
  [[nodiscard]] bool need_sync(DmaAddr) const override { return false; }

 private:
  const GuestMemory& mem_;
  std::mutex mu_;
  GpaAllocator coherent_;  // guarded by mu_
};

}  // namespace vdma
