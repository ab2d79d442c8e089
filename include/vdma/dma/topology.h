// PlatformTopology: a JSON description of how each device reaches memory,
// for platforms that cannot describe it themselves (docs/topology-example.json).
//
//   auto topo = load_topology("platform.json");        // or parse_topology(text)
//   if (!topo) { log(topo.error()); }   // "dma.invalid_config: devices[2].dma_mask: 0x1234 is not 2^n-1 ..."
//   const DeviceTopology* blk = topo->find("blk0");
//
// Format (numbers are JSON unsigned integers or strings "0x..."/decimal):
//   {
//     "restricted_memory_access": false,       // a confidential guest: devices reach shared memory only
//     "coherent_pool": {"base": "0x0", "size": "0x800000"},   // ring memory (bypass and direct devices)
//     "swiotlb": {"base": .., "size": .., "areas": 0,        // the platform bounce pool
//                 "growth": {"base": .., "size": .., "pool_size": ..}},
//     "devices": [
//       {"id": "blk0", "kind": "direct",                      // bypass | direct | restricted | iommu
//        "offset_ranges": [{"cpu_start": .., "dma_start": .., "size": ..}],
//        "encryption_bit": 47, "force_bounce": false, "min_align_mask": "0xfff",
//        "dma_mask": "0xffffffff", "coherent": true, "quirk": "none",
//        "flush_before_notify": "none"},                    // none | write_combining
//       {"id": "vsock0", "kind": "restricted", "restricted_pool": {"base": .., "size": ..}},
//       {"id": "net0", "kind": "iommu", "iommu_domain": 1},
//       {"id": "legacy0", "kind": "bypass"}]
//   }
//
// Fields by kind: "offset_ranges" and "encryption_bit" (direct, restricted),
// "force_bounce" (direct), "restricted_pool" (restricted, required),
// "iommu_domain" (iommu, required), "min_align_mask" (all but bypass);
// "id", "kind", "dma_mask" (default all ones), "coherent" (default true) and
// "quirk" (none | use_dma_api | decline_access_platform) and
// "flush_before_notify" (none | write_combining: the driver drains posted
// writes before every notification, posted_write_flush.h) for every device.
//
// Every error is DmaErrc::kInvalidConfig and names the JSON path and the
// reason: a syntax error (with its byte offset), an unknown field, a field
// of the wrong type or not valid for the device's kind, a missing required
// field, a duplicate id, a bad mask or range, a device the platform's
// restrictions forbid (a bypass device, or a direct one without
// force_bounce, under restricted_memory_access), or a pool the device kind
// needs but the file does not give. An iommu device under
// restricted_memory_access bounces through "swiotlb"; PlatformDma::create
// refuses it, naming the device, when that pool is missing or not shared. Checks that need the guest memory (pools
// inside shared regions, reachability) happen when PlatformDma builds the
// ops, with the same paths in the message.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/dma/errors.h"
#include "vdma/dma/posted_write_flush.h"
#include "vdma/mem/region_table.h"

namespace vdma {

enum class DeviceDmaKind : uint8_t { kBypass, kDirect, kRestricted, kIommu };
[[nodiscard]] std::string_view to_string(DeviceDmaKind k) noexcept;

// Per-device overrides of the ACCESS_PLATFORM policy (virtio/dma_policy.h).
enum class DmaQuirk : uint8_t {
  kNone,
  kUseDmaApi,              // use the platform DmaOps even without ACCESS_PLATFORM (Xen grant style)
  kDeclineAccessPlatform,  // do not accept ACCESS_PLATFORM: legacy bypass (a device that breaks with it)
};
[[nodiscard]] std::string_view to_string(DmaQuirk q) noexcept;

struct PoolSpec {
  AddrRange<Gpa> window;
  uint32_t areas = 0;  // 0: one per hardware thread
  AddrRange<Gpa> growth_window{};
  uint64_t growth_pool_size = 0;
};

struct DeviceTopology {
  size_t index = 0;  // position in "devices", for messages
  std::string id;
  DeviceDmaKind kind = DeviceDmaKind::kDirect;
  std::vector<OffsetRange> offset_ranges;
  std::optional<unsigned> encryption_bit;
  uint64_t dma_mask = UINT64_MAX;
  bool coherent = true;
  bool force_bounce = false;
  uint64_t min_align_mask = 0;
  std::optional<PoolSpec> restricted_pool;
  std::optional<uint32_t> iommu_domain;
  DmaQuirk quirk = DmaQuirk::kNone;
  NotifyFlushKind notify_flush = NotifyFlushKind::kNone;  // "flush_before_notify"

  // "devices[2] (blk0)"
  [[nodiscard]] std::string path() const;
};

struct PlatformTopology {
  bool restricted_memory_access = false;
  std::optional<AddrRange<Gpa>> coherent_pool;
  std::optional<PoolSpec> swiotlb;
  std::vector<DeviceTopology> devices;

  [[nodiscard]] const DeviceTopology* find(std::string_view id) const noexcept;
};

[[nodiscard]] Result<PlatformTopology> parse_topology(std::string_view json);
// Errors: also BaseErrc::kSystem when the file cannot be read.
[[nodiscard]] Result<PlatformTopology> load_topology(const std::filesystem::path& path);

}  // namespace vdma
