// GuestPlatform: the front-end's "guest" — its memory (memfd regions) and the
// platform DMA layer a device of one DmaMode sees, built from the mode's
// built-in topology or from a topology the user gives.
//
//   auto sink = std::make_shared<MySink>();           // IOTLB INVALIDATE for the iommu modes
//   auto gp = VDMA_TRY(GuestPlatform::create({.mode = DmaMode::kIommuLazy, .sink = sink}));
//   DmaPolicy policy = gp->policy();                   // decides the DMA path from the features
//   IommuDmaDomain* dom = gp->iommu_domain();          // what the vIOMMU walks on a MISS
//   Gpa buf = VDMA_TRY(gp->alloc_buffer(4096, 4096));  // driver buffers, in private "ram"
//
// Memory. Every pool window of the topology becomes its own shared region:
// "coherent" (coherent_pool: rings), "swiotlb" (the bounce pool),
// "swiotlb-growth" (its growth window) and "restricted-<device id>" (a
// restricted pool). Driver buffers live in the private region "ram" of
// ram_size bytes, at gpa 0 unless a window is there, else on the first
// 2 MiB boundary above every window.
//
// Built-in topologies (builtin_topology()), device `device_id`, with the
// default layout (ram at 0, coherent above it, swiotlb above that, each on
// a 2 MiB boundary):
//   bypass          kind bypass, quirk decline_access_platform
//   iommu-*         kind iommu, iommu_domain 1
//   restricted      restricted_memory_access, kind direct + force_bounce, swiotlb
//   offset          kind direct, one offset range: bus = gpa + 2^40, quirk use_dma_api
//   encryption-bit  kind direct, encryption_bit 47, quirk use_dma_api
// The iommu modes build the device's ops with an IommuPlatform whose
// domains invalidate through `sink`, strict or lazy after the mode.
//
// Restricted platforms (restricted_memory_access, the built-in restricted
// mode or a user topology): only shared regions go into the memory table,
// and the device reaches nothing else: direct devices bounce, and an iommu
// device bounces through the swiotlb with the vIOMMU mapping only the
// slots (PlatformDma), so a MISS never resolves to private memory. A user
// topology with an iommu device but no shared swiotlb is refused here
// (DmaErrc::kInvalidConfig naming the device), before any back-end sees it.
//
// Errors of create(): FrontendErrc::kInvalidOption (a size of 0 or not a
// multiple of 4 KiB, a device id the topology does not have, mode
// restricted with a topology without restricted_memory_access), and the
// errors of GuestMemory::create and PlatformDma::create as they are
// (DmaErrc::kInvalidConfig naming the topology path).
//
// Lifetime: the DmaOps, regions and domains handed out live as long as the
// GuestPlatform. Thread safety: const accessors are safe from any thread;
// alloc_buffer() and free_buffer() are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "vdma/dma/dma_ops.h"
#include "vdma/dma/invalidation_sink.h"
#include "vdma/dma/iommu_platform.h"
#include "vdma/dma/platform_dma.h"
#include "vdma/dma/topology.h"
#include "vdma/frontend/dma_mode.h"
#include "vdma/mem/gpa_allocator.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/virtio/dma_policy.h"

namespace vdma {

inline constexpr uint64_t kDefaultRamSize = uint64_t{64} << 20;
inline constexpr uint64_t kDefaultCoherentSize = uint64_t{2} << 20;
inline constexpr uint64_t kDefaultBounceSize = uint64_t{16} << 20;
// The bus offset of the built-in offset mode, and the C-bit of encryption-bit.
inline constexpr uint64_t kBuiltinBusOffset = uint64_t{1} << 40;
inline constexpr unsigned kBuiltinEncryptionBit = 47;

struct GuestPlatformConfig {
  DmaMode mode = DmaMode::kBypass;
  // Replaces the built-in topology; the mode then only picks strict, lazy or
  // premapped behaviour for an iommu device (and mode restricted requires
  // the topology's restricted_memory_access).
  std::optional<PlatformTopology> topology;
  std::string device_id = "blk0";
  uint64_t ram_size = kDefaultRamSize;
  uint64_t coherent_size = kDefaultCoherentSize;
  uint64_t bounce_size = kDefaultBounceSize;  // a multiple of 256 KiB (BouncePool segments)
  std::shared_ptr<InvalidationSink> sink;     // null: NoopInvalidationSink
  // IOMMU domains announce every mapping to sink->mapped()
  // (IommuDomainConfig::announce_maps).
  bool announce_maps = false;
};

// The default layout's windows: ram at 0, then coherent, then swiotlb, each
// on a 2 MiB boundary.
struct GuestLayout {
  AddrRange<Gpa> ram;
  AddrRange<Gpa> coherent;
  AddrRange<Gpa> bounce;
};
[[nodiscard]] GuestLayout default_layout(uint64_t ram_size, uint64_t coherent_size, uint64_t bounce_size);

// The topology of `mode` over `layout` (see the table above).
[[nodiscard]] PlatformTopology builtin_topology(DmaMode mode, const GuestLayout& layout, std::string_view device_id);

class GuestPlatform {
 public:
  [[nodiscard]] static Result<std::unique_ptr<GuestPlatform>> create(GuestPlatformConfig config);
  ~GuestPlatform();
  GuestPlatform(const GuestPlatform&) = delete;
  GuestPlatform& operator=(const GuestPlatform&) = delete;

  [[nodiscard]] DmaMode mode() const noexcept { return mode_; }
  [[nodiscard]] bool uses_builtin_topology() const noexcept { return builtin_; }
  [[nodiscard]] const GuestMemory& memory() const noexcept { return *mem_; }
  [[nodiscard]] const PlatformDma& dma() const noexcept { return *platform_; }
  [[nodiscard]] const DeviceTopology& device() const noexcept { return *device_; }
  [[nodiscard]] const DmaPolicy& policy() const noexcept { return policy_; }
  [[nodiscard]] const GuestRegion& ram() const noexcept { return *ram_; }
  // The device's IOMMU DMA domain (what a MISS is answered from); null
  // unless the device is of kind iommu.
  [[nodiscard]] IommuDmaDomain* iommu_domain() const noexcept;

  // Whether the device needs VIRTIO_F_ACCESS_PLATFORM: an iommu device, or
  // any device of a restricted (confidential) platform.
  [[nodiscard]] bool needs_access_platform() const noexcept;
  // The transport bits the driver accepts out of `offered`: the policy's
  // (ACCESS_PLATFORM unless declined, ORDER_PLATFORM), except that the
  // built-in offset and encryption-bit modes never accept ACCESS_PLATFORM
  // (their bus addresses go in the memory table instead).
  [[nodiscard]] uint64_t transport_features(uint64_t offered) const;

  // Driver-private buffers in "ram": `align`-aligned (a power of two), zeroed.
  // Errors: BaseErrc::kInvalidArgument (size 0, bad align), MemErrc::kNoSpace.
  [[nodiscard]] Result<Gpa> alloc_buffer(uint64_t size, uint64_t align);
  // Errors: BaseErrc::kInvalidArgument unless (gpa, size) is a live buffer.
  [[nodiscard]] Result<void> free_buffer(Gpa gpa, uint64_t size);

 private:
  GuestPlatform(DmaMode mode, bool builtin, DmaPolicy policy);

  const DmaMode mode_;
  const bool builtin_;
  const DmaPolicy policy_;
  std::unique_ptr<GuestMemory> mem_;
  // Declared before platform_: the ops PlatformDma holds refer to its domains.
  std::unique_ptr<IommuPlatform> iommu_;
  std::unique_ptr<PlatformDma> platform_;
  const DeviceTopology* device_ = nullptr;  // inside platform_->topology()
  const GuestRegion* ram_ = nullptr;        // inside *mem_
  std::mutex buffers_mu_;
  std::optional<GpaAllocator> buffers_;  // guarded by buffers_mu_
};

}  // namespace vdma
