// DebugDmaOps: a checker that wraps any DmaOps, records every mapping and
// coherent buffer, and reports misuse (Linux CONFIG_DMA_API_DEBUG).
//
//   DebugDmaOps dbg(platform_ops, "blk0");
//   auto q = make_driver_queue(RingFormat::kSplit, dbg, cfg);   // the queue maps through the checker
//   ...
//   (void)dbg.sync_for_cpu(d, len, DmaDirection::kFromDevice);
//   (void)dbg.cpu_access(gpa, len, CpuAccess::kRead);          // the driver says "I read this now"
//   ...
//   q.reset();
//   EXPECT_THAT(dbg.check_teardown(), IsOk());                  // nothing left mapped
//   EXPECT_TRUE(dbg.reports().empty());
//
// Every report is (1) returned as DmaErrc::kMisuse from the call that
// misbehaved, (2) kept in reports() for tests, and (3) logged at error level.
// A call found to be misuse is NOT forwarded to the wrapped ops (forwarding an
// unmap of the wrong size could free the wrong slots); the mapping involved
// stays recorded, so check_teardown() reports it again if it is never fixed.
//
// Classes of misuse (DmaMisuse):
//   kUnknownAddress      unmap/sync of an address that no live mapping has
//   kDoubleUnmap         unmap/sync of a mapping that was already unmapped
//   kSizeMismatch        unmap with a length other than the mapped one
//   kDirectionMismatch   unmap with another direction; sync with another
//                        direction (any sync direction is fine for a
//                        kBidirectional mapping)
//   kSyncOutsideMapping  sync of a range that starts in a mapping and leaves it
//   kCpuReadWithoutSync  cpu_access(kRead) of bytes the device may be writing
//                        (kFromDevice/kBidirectional, not synced for the CPU)
//   kCpuWriteWhileDeviceOwns cpu_access(kWrite) of mapped bytes the device owns
//   kUnknownCoherentFree free_coherent of a buffer this device never allocated
//   kLeakAtTeardown      a mapping or coherent buffer still live at check_teardown()
//
// Ownership follows the DMA API: map() gives the whole buffer to the device,
// sync_for_cpu() gives the synced range to the CPU, sync_for_device() gives
// it back, unmap() ends the mapping.
//
// Scatter lists go through the DmaOps defaults, entry by entry, so every
// entry is a recorded mapping.
//
// Lifetime: `inner` must outlive the checker. Destroying the checker with
// live mappings logs each of them.
// Thread safety: all methods may be called concurrently (one internal lock,
// never held across a call into the wrapped ops).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "vdma/dma/dma_ops.h"

namespace vdma {

enum class DmaMisuse : uint8_t {
  kUnknownAddress,
  kDoubleUnmap,
  kSizeMismatch,
  kDirectionMismatch,
  kSyncOutsideMapping,
  kCpuReadWithoutSync,
  kCpuWriteWhileDeviceOwns,
  kUnknownCoherentFree,
  kLeakAtTeardown,
};
[[nodiscard]] std::string_view to_string(DmaMisuse m) noexcept;

struct DmaMisuseReport {
  DmaMisuse kind;
  std::string message;
};

enum class CpuAccess : uint8_t { kRead, kWrite };

class DebugDmaOps final : public DmaOps {
 public:
  DebugDmaOps(DmaOps& inner, std::string device);
  ~DebugDmaOps() override;
  DebugDmaOps(const DebugDmaOps&) = delete;
  DebugDmaOps& operator=(const DebugDmaOps&) = delete;

  [[nodiscard]] Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir,
                                    DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir,
                                   DmaAttrs attrs = DmaAttrs::kNone) override;
  [[nodiscard]] Result<void> sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) override;
  [[nodiscard]] Result<void> sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) override;
  [[nodiscard]] Result<CoherentBuffer> alloc_coherent(uint64_t size) override;
  [[nodiscard]] Result<void> free_coherent(const CoherentBuffer& buf) override;
  [[nodiscard]] uint64_t max_mapping_size() const override { return inner_.max_mapping_size(); }
  // Always true, as Linux's dma_need_sync() under CONFIG_DMA_API_DEBUG: a
  // driver that skips syncs where the wrapped ops need none would otherwise
  // hand buffers between CPU and device without the checker seeing it.
  [[nodiscard]] bool need_sync(DmaAddr) const override { return true; }
  [[nodiscard]] std::string_view kind() const noexcept override { return "debug"; }

  // The driver declares a CPU access to [gpa, gpa+len) of its own buffers.
  // Errors: DmaErrc::kMisuse (kCpuReadWithoutSync, kCpuWriteWhileDeviceOwns).
  [[nodiscard]] Result<void> cpu_access(Gpa gpa, uint64_t len, CpuAccess access);
  // The device is being reset or removed: every live mapping and coherent
  // buffer is a kLeakAtTeardown report (once each).
  // Errors: DmaErrc::kMisuse naming how many were live and the first of them.
  [[nodiscard]] Result<void> check_teardown();

  [[nodiscard]] std::vector<DmaMisuseReport> reports() const;
  [[nodiscard]] size_t count(DmaMisuse kind) const;
  void clear_reports();
  [[nodiscard]] size_t live_mappings() const;
  [[nodiscard]] size_t live_coherent() const;
  [[nodiscard]] DmaOps& inner() const noexcept { return inner_; }

 private:
  // Disjoint [lo, hi) offsets into a mapping that the CPU owns.
  using Intervals = std::vector<std::pair<uint64_t, uint64_t>>;
  struct Mapping {
    DmaAddr dma;
    uint64_t len = 0;
    Gpa gpa;
    DmaDirection dir = DmaDirection::kToDevice;
    Intervals cpu_owned;
    bool leak_reported = false;
  };
  struct Unmapped {
    DmaAddr dma;
    uint64_t len;
    Gpa gpa;
    DmaDirection dir;
  };
  struct Coherent {
    CoherentBuffer buf;
    bool leak_reported = false;
  };
  using MapIt = std::multimap<uint64_t, Mapping>::iterator;

  // Records a report and builds the error to return. Caller holds mu_.
  [[nodiscard]] Error report(DmaMisuse kind, std::string message);
  void erase(MapIt it);
  // The live mapping containing `addr`, or end(). Caller holds mu_.
  [[nodiscard]] MapIt find_containing(DmaAddr addr);
  // The most recent unmapped record containing `addr`, or nullptr. Caller holds mu_.
  [[nodiscard]] const Unmapped* find_unmapped(DmaAddr addr) const;
  // Checks a sync; on success gives ownership of the range. Caller holds mu_.
  [[nodiscard]] Result<void> check_sync(DmaAddr addr, uint64_t len, DmaDirection dir, bool for_cpu);
  void set_owner(DmaAddr addr, uint64_t len, bool cpu);

  static constexpr size_t kUnmappedHistory = 4096;

  DmaOps& inner_;
  const std::string device_;
  mutable std::mutex mu_;
  std::multimap<uint64_t, Mapping> live_;   // guarded by mu_; by DMA address
  std::multimap<uint64_t, MapIt> by_gpa_;   // guarded by mu_; the same mappings by Gpa
  uint64_t max_len_ = 0;                    // guarded by mu_; longest mapping ever made
  std::deque<Unmapped> unmapped_;           // guarded by mu_; newest at the back
  std::map<uint64_t, Coherent> coherent_;   // guarded by mu_; by cpu Gpa
  std::vector<DmaMisuseReport> reports_;    // guarded by mu_
};

}  // namespace vdma
