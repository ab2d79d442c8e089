// DmaOps: the driver side's platform DMA API, one instance per device, with
// Linux's dma_map_* semantics.
//
//   DmaAddr d = *ops.map(gpa, len, DmaDirection::kToDevice);
//   desc.addr = d;                     // never assume d == gpa
//   ... device runs ...
//   ops.unmap(d, len, DmaDirection::kToDevice);   // same len and direction as map
//   CoherentBuffer ring = *ops.alloc_coherent(8192);   // rings live here
//
//   SgEntry sg[] = {{.gpa = a, .len = 512}, {.gpa = b, .len = 4096}};
//   size_t n = *ops.map_sg(sg, DmaDirection::kFromDevice);   // sg[i].dma / dma_len for i < n
//   ops.unmap_sg(sg, DmaDirection::kFromDevice);
//
//   DmaUnmapRequest chain[] = {{hdr, 16, DmaDirection::kToDevice}, {data, 4096, DmaDirection::kFromDevice}};
//   ops.unmap_batch(chain);            // one IOTLB invalidation for the whole chain behind an IOMMU
//
// Mapping lifetime: a mapping is *explicitly unmapped* with the same (addr,
// len, direction) it was mapped with, as in Linux. There is no RAII handle
// because a virtqueue keeps its mappings in its own shadow state and unmaps
// from there; the debug checker (DebugDmaOps, debug_dma_ops.h) wraps any
// DmaOps and reports an unmap of an unknown address, a size or direction
// mismatch, CPU access without a sync, and mappings still live at teardown.
// Every mapping must be unmapped before the device is reset or the DmaOps is
// destroyed.
//
// Ownership of a streaming mapping (Linux DMA-API-HOWTO): after map() the
// device owns the buffer; sync_for_cpu() hands (part of) it to the CPU and
// sync_for_device() hands it back; unmap() ends the mapping and the CPU owns
// the buffer again. With a bounce buffer or a non-coherent device, bytes
// move only at these points.
//
// Implementations: IdentityDmaOps (bypass, below), DirectDmaOps (bus offsets,
// encryption bit, DMA mask, swiotlb bouncing, restricted pools, non-coherent
// devices; direct_dma_ops.h), DebugDmaOps (checker), and the IOMMU ops, which
// implement this same interface over an IO address space.
//
// Thread safety: every method may be called concurrently from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/coherent_pool.h"
#include "vdma/dma/errors.h"
#include "vdma/mem/gpa_allocator.h"
#include "vdma/mem/guest_memory.h"

namespace vdma {

enum class DmaDirection : uint8_t { kToDevice, kFromDevice, kBidirectional };

[[nodiscard]] std::string_view to_string(DmaDirection d) noexcept;

// Whether the device may read / write a mapping of direction d.
[[nodiscard]] constexpr bool device_reads(DmaDirection d) noexcept { return d != DmaDirection::kFromDevice; }
[[nodiscard]] constexpr bool device_writes(DmaDirection d) noexcept { return d != DmaDirection::kToDevice; }

// Bit flags, as Linux's DMA_ATTR_*.
enum class DmaAttrs : uint32_t {
  kNone = 0,
  // map: no cache maintenance. unmap: no cache maintenance and no bounce
  // copy-back (the caller synced what it needs). The bounce copy-in at map
  // time is not skipped by this (see kNoCopyIn): it is what keeps stale pool
  // bytes (another mapping's data) from reaching the device or, after a
  // partial device write, the driver's buffer.
  kSkipCpuSync = 1u << 0,
  kNoWarn = 1u << 1,  // failures are expected by the caller: do not log them
  // map, kFromDevice only (ignored for a direction the device reads): no
  // bounce copy-in. The caller promises to say at unmap how many bytes the
  // device wrote (DmaUnmapRequest::written, from the device's own claim such
  // as a virtqueue's used length), and only those are copied back; the rest
  // of the buffer keeps its own bytes. A bounce slot's stale bytes (another
  // mapping's data) then reach the buffer only where the device claims to
  // have written and did not: a device that breaks virtio's "MUST write at
  // least len bytes" (§2.7.8.2). Behind a restricted platform that device is
  // the untrusted host, which reads the whole shared pool anyway. Unmapped
  // with written = kAllWritten (or by unmap()), the whole mapping is copied
  // back, stale bytes and all: Linux's proposed DMA_ATTR_OVERWRITE contract.
  kNoCopyIn = 1u << 2,
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

// One entry of a scatter list. map_sg() fills dma/dma_len.
struct SgEntry {
  Gpa gpa;
  uint64_t len = 0;
  DmaAddr dma;           // out: the DMA address of DMA segment i (i < the count map_sg returned)
  uint64_t dma_len = 0;  // out: its length; 0 past the last DMA segment
};

// One entry of DmaOps::unmap_batch(): the arguments of one unmap(), and
// how many bytes the device wrote.
struct DmaUnmapRequest {
  static constexpr uint64_t kAllWritten = UINT64_MAX;
  DmaAddr addr;
  uint64_t len = 0;
  DmaDirection dir = DmaDirection::kToDevice;
  DmaAttrs attrs = DmaAttrs::kNone;
  // For a direction the device writes: the bytes it wrote from the start of
  // the buffer (its claim, at most len). A bounce copies back only those (a
  // non-coherent device's cache lines likewise). kAllWritten: the whole
  // mapping, as unmap().
  uint64_t written = kAllWritten;
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
  // Ends several mappings at once, as unmap() of each in order (e.g. the
  // buffers of one completed virtqueue chain). An implementation may gather
  // the work: the IOMMU ops clear every page-table entry first and then
  // invalidate all of them with one IOTLB flush. The default calls unmap()
  // for each entry (an entry with written < len: sync_for_cpu() of the
  // written bytes, then unmap() with kSkipCpuSync). An entry that fails is
  // reported and the remaining ones are still unmapped. Errors: the first
  // error of an entry, with its index ("unmap_batch entry 1 of 3: ...").
  [[nodiscard]] virtual Result<void> unmap_batch(std::span<const DmaUnmapRequest> reqs);
  [[nodiscard]] virtual Result<void> sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) = 0;
  [[nodiscard]] virtual Result<void> sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) = 0;

  // Page-aligned coherent memory of at least `size` bytes, zeroed.
  [[nodiscard]] virtual Result<CoherentBuffer> alloc_coherent(uint64_t size) = 0;
  [[nodiscard]] virtual Result<void> free_coherent(const CoherentBuffer& buf) = 0;

  // The largest len map() accepts.
  [[nodiscard]] virtual uint64_t max_mapping_size() const = 0;
  // Whether sync_for_* does anything for this address (bounce, non-coherent).
  [[nodiscard]] virtual bool need_sync(DmaAddr addr) const = 0;

  // Scatter lists (Linux dma_map_sg). Maps every entry; returns the number of
  // DMA segments written to sg[0..n) (an implementation may merge entries,
  // so n <= sg.size(); the default maps each entry on its own, n ==
  // sg.size()). On error nothing stays mapped.
  // Errors: those of map(); BaseErrc::kInvalidArgument for an empty list.
  [[nodiscard]] virtual Result<size_t> map_sg(std::span<SgEntry> sg, DmaDirection dir,
                                              DmaAttrs attrs = DmaAttrs::kNone);
  // Unmaps what map_sg() mapped; `sg` is the list map_sg() filled in.
  // Errors: the first error of unmap(); the remaining segments are still unmapped.
  [[nodiscard]] virtual Result<void> unmap_sg(std::span<const SgEntry> sg, DmaDirection dir,
                                              DmaAttrs attrs = DmaAttrs::kNone);
  [[nodiscard]] virtual Result<void> sync_sg_for_cpu(std::span<const SgEntry> sg, DmaDirection dir);
  [[nodiscard]] virtual Result<void> sync_sg_for_device(std::span<const SgEntry> sg, DmaDirection dir);

  // A short name of the implementation and mode, for logs and policy
  // decisions: "bypass", "direct", "bounce", "restricted", "debug", "iommu".
  [[nodiscard]] virtual std::string_view kind() const noexcept { return "custom"; }
};

// The bypass: DmaAddr == Gpa, no syncs. Coherent memory comes from a window
// of guest memory given at construction. This is what a virtio device without
// VIRTIO_F_ACCESS_PLATFORM gets.
class IdentityDmaOps final : public DmaOps {
 public:
  // `coherent_window` must lie inside one region of `mem`; alloc_coherent carves from it.
  IdentityDmaOps(const GuestMemory& mem, AddrRange<Gpa> coherent_window);
  // Shares ring memory with other devices' DmaOps.
  IdentityDmaOps(const GuestMemory& mem, std::shared_ptr<CoherentPool> coherent);

  [[nodiscard]] Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir,
                                    DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir,
                                   DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> sync_for_cpu(DmaAddr, uint64_t, DmaDirection) override { return ok(); }
  [[nodiscard]] Result<void> sync_for_device(DmaAddr, uint64_t, DmaDirection) override { return ok(); }
  [[nodiscard]] Result<CoherentBuffer> alloc_coherent(uint64_t size) override;
  [[nodiscard]] Result<void> free_coherent(const CoherentBuffer& buf) override;
  [[nodiscard]] uint64_t max_mapping_size() const override { return UINT64_MAX; }
  [[nodiscard]] bool need_sync(DmaAddr) const override { return false; }
  [[nodiscard]] std::string_view kind() const noexcept override { return "bypass"; }

 private:
  const GuestMemory& mem_;
  std::shared_ptr<CoherentPool> coherent_;
};

}  // namespace vdma
