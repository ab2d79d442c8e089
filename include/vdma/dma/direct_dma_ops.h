// DirectDmaOps: the platform DMA ops of a device without an IOMMU (Linux
// dma-direct with swiotlb): bus offsets, an encryption bit, a DMA mask,
// bounce buffering, restricted pools and non-coherent devices.
//
//   auto swiotlb = *BouncePool::create(*mem, {.window = shared_window});
//   auto ops = *DirectDmaOps::create(*mem, {
//       .bus = {.encryption_bit = 47, .dma_mask = 0xffffffff},
//       .bounce_pool = swiotlb,                      // used when the mask is too small
//       .coherent = coherent_pool});
//   DmaAddr d = *ops->map(gpa, 4096, DmaDirection::kToDevice);
//
// Modes (BounceMode):
//   kWhenNeeded  map() gives the bus address of the buffer itself. A buffer
//                the device cannot address (beyond the DMA mask, or a mix of
//                private and shared memory under an encryption bit) bounces
//                when a pool is configured and is an error otherwise
//                (kBeyondMask / kNotCovered). A buffer outside every offset
//                range is always kNotCovered.
//   kForce       every mapping bounces (swiotlb=force; the platform ops of a
//                confidential guest, whose devices reach only shared memory).
//   kRestricted  every mapping bounces through the device's own pool, which
//                also serves alloc_coherent, so rings live there too (Linux
//                restricted-dma-pool).
// A bounce address is translated like any shared memory: through the offset
// ranges, with the encryption bit clear; create() checks that every pool
// window (including a growth window) and the coherent window are covered and
// addressable, so map() never produces an address the device cannot use.
//
// Non-coherent devices (coherent_device = false): the CacheMaintenance hooks
// run on map/unmap (unless kSkipCpuSync) and on every sync, on the memory the
// device really accesses (the slot when bouncing); see cache_maintenance.h
// for the per-direction table and the order relative to the bounce copies.
//
// unmap/sync of a direct (non-bounced) address cannot be checked against a
// record (there is none, as in Linux); an address no range translates back
// is DmaErrc::kUnknownMapping. Wrap the ops in DebugDmaOps to check lifetimes.
//
// Thread safety: all methods may be called concurrently.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "vdma/dma/bounce_pool.h"
#include "vdma/dma/bus_translation.h"
#include "vdma/dma/cache_maintenance.h"
#include "vdma/dma/coherent_pool.h"
#include "vdma/dma/dma_ops.h"

namespace vdma {

enum class BounceMode : uint8_t { kWhenNeeded, kForce, kRestricted };
[[nodiscard]] std::string_view to_string(BounceMode m) noexcept;

struct DirectDmaConfig {
  BusConfig bus;
  BounceMode bounce_mode = BounceMode::kWhenNeeded;
  // Required for kForce and kRestricted; optional for kWhenNeeded.
  std::shared_ptr<BouncePool> bounce_pool;
  // Ring memory for alloc_coherent; unused in kRestricted. In kForce it must
  // be shared memory (rings of a confidential guest are shared).
  std::shared_ptr<CoherentPool> coherent;
  bool coherent_device = true;
  // Required when !coherent_device.
  std::shared_ptr<CacheMaintenance> cache;
  // Low address bits a bounce must preserve (Linux dma_get_min_align_mask).
  uint64_t min_align_mask = 0;
};

class DirectDmaOps final : public DmaOps {
 public:
  // Errors: DmaErrc::kInvalidConfig naming what is missing or unusable (a
  // bus config error, a mode without its pool, a non-coherent device without
  // cache hooks, a pool or coherent window the device cannot address, a
  // private coherent window in kForce, no coherent pool outside kRestricted).
  [[nodiscard]] static Result<std::unique_ptr<DirectDmaOps>> create(const GuestMemory& mem, DirectDmaConfig config);

  // Errors: as DmaOps::map; kTooLarge only for a mapping that must bounce.
  [[nodiscard]] Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir,
                                    DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir,
                                   DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) override;
  [[nodiscard]] Result<void> sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) override;
  [[nodiscard]] Result<CoherentBuffer> alloc_coherent(uint64_t size) override;
  [[nodiscard]] Result<void> free_coherent(const CoherentBuffer& buf) override;
  [[nodiscard]] uint64_t max_mapping_size() const override;
  [[nodiscard]] bool need_sync(DmaAddr addr) const override;
  [[nodiscard]] std::string_view kind() const noexcept override;

  [[nodiscard]] const BusTranslation& bus() const noexcept { return bus_; }
  [[nodiscard]] BounceMode bounce_mode() const noexcept { return mode_; }
  [[nodiscard]] BouncePool* bounce_pool() const noexcept { return pool_.get(); }

 private:
  DirectDmaOps(const GuestMemory& mem, BusTranslation bus, DirectDmaConfig config);
  [[nodiscard]] Result<DmaAddr> map_direct_or_bounce(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs);
  [[nodiscard]] Result<DmaAddr> bounce(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs);
  // The Gpa behind a DMA address.
  [[nodiscard]] Result<Gpa> cpu_of(DmaAddr addr, std::string_view op) const;
  // The Gpa of a bounce-slot bus address, without a BusTranslation lookup;
  // false when addr is outside every bounce window.
  [[nodiscard]] bool bounce_cpu(DmaAddr addr, Gpa& gpa) const noexcept;

  // A window bounce slots come from, and the bus offset create() proved
  // for it (shared memory: no encryption bit).
  struct BounceWindow {
    AddrRange<Gpa> cpu;
    uint64_t to_bus = 0;  // bus = gpa + to_bus (mod 2^64)
  };

  const GuestMemory& mem_;
  const BusTranslation bus_;
  const BounceMode mode_;
  const std::shared_ptr<BouncePool> pool_;
  const std::shared_ptr<CoherentPool> coherent_;
  const std::shared_ptr<CacheMaintenance> cache_;  // null for a coherent device
  const uint64_t min_align_mask_;
  uint64_t max_mapping_;
  std::vector<BounceWindow> bounce_windows_;  // immutable after construction
};

}  // namespace vdma
