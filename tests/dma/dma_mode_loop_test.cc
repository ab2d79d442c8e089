// The driver<->device loop in every DMA mode the platform offers today:
// bypass, bus offsets with an encryption bit, DMA-mask bouncing, forced
// bouncing (a confidential guest's swiotlb), a restricted pool, and a
// non-coherent device; split and packed rings. The whole stack is used: a
// topology file builds the platform, the policy picks the DmaOps from the
// negotiated features, the debug checker wraps them, the driver queue maps
// through them and the device queue reads through a DeviceMemory that holds
// exactly what that mode lets the device reach. The device copies the
// readable bytes of each chain into its writable buffers; the driver checks
// every byte, including that bytes the device did not write keep their old
// value (no stale bounce bytes), and the checker finds nothing to report.
// IOMMU modes (strict and lazy invalidation): the device translates every
// IOVA like a device IOTLB, filled from the domain's page table on a miss
// and emptied only by the invalidation sink, so an IOVA reused before its
// invalidation would make the device read or write the wrong buffer.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <unordered_map>

#include "chain_copy.h"
#include "result_matchers.h"
#include "vdma/dma/debug_dma_ops.h"
#include "vdma/dma/iommu_platform.h"
#include "vdma/dma/platform_dma.h"
#include "vdma/mem/gpa_allocator.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/dma_policy.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"
#include "param_printers.h"
#include "iterations.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t kLow = 1 << 20;            // private data arena, below 4 GiB
constexpr uint64_t kHigh = 1ull << 32;        // private data arena, beyond 32 bits
constexpr uint64_t kArena = 16 << 20;
constexpr uint64_t kShared = 32 << 20;        // coherent pool, swiotlb, restricted pool
constexpr uint64_t kSharedSize = 16 << 20;
constexpr uint64_t kC = 1ull << 47;
constexpr std::byte kUntouched{0x5a};
const int kChains = testing::test_iterations(10'000);  // see iterations.h

constexpr const char* kTopology = R"({
  "coherent_pool": {"base": "0x2000000", "size": "0x800000"},
  "swiotlb": {"base": "0x2800000", "size": "0x400000", "areas": 2},
  "devices": [
    {"id": "bypass", "kind": "bypass"},
    {"id": "offsets", "kind": "direct", "encryption_bit": 47,
     "offset_ranges": [{"cpu_start": "0x0", "dma_start": "0x10000000000", "size": "0x3000000"},
                       {"cpu_start": "0x100000000", "dma_start": "0x20000000000", "size": "0x1000000"}]},
    {"id": "mask", "kind": "direct", "dma_mask": "0xffffffff"},
    {"id": "force", "kind": "direct", "force_bounce": true},
    {"id": "restricted", "kind": "restricted", "restricted_pool": {"base": "0x2c00000", "size": "0x400000"}},
    {"id": "noncoherent", "kind": "direct", "coherent": false},
    {"id": "iommu_strict", "kind": "iommu", "iommu_domain": 1},
    {"id": "iommu_lazy", "kind": "iommu", "iommu_domain": 2, "dma_mask": "0xffffffff"}
  ]})";

// The device's view behind an IOMMU: an IOTLB of 4 KiB pages filled from
// the domain's page table on a miss and emptied only by invalidations (it is
// the domain's InvalidationSink). Single-threaded, like the loop.
class TestIotlb final : public DeviceMemory, public InvalidationSink {
 public:
  explicit TestIotlb(const GuestMemory& mem) : mem_(mem) {}
  void set_domain(IommuDmaDomain* d) { domain_ = d; }
  [[nodiscard]] IommuDmaDomain* domain_for_test() const { return domain_; }

  Result<void> translate(DmaAddr addr, uint64_t len, Access access, std::vector<Fragment>& out) const override {
    if (!fits(addr, len)) return make_error(BaseErrc::kOverflow, "{} + {:#x} wraps", addr, len);
    const size_t first = out.size();
    uint64_t cur = addr.value();
    const uint64_t end = addr.value() + len;
    while (cur < end || (len == 0 && cur == addr.value())) {
      const uint64_t page = align_down(cur, 4096);
      auto it = pages_.find(page);
      if (it == pages_.end()) {
        ++misses;
        auto t = domain_->translate(Iova(page), Access::kNone);
        if (!t) {
          out.resize(first);
          return make_error(MemErrc::kNotMapped, "iova:{:#x}: {}", cur, t.error().message());
        }
        it = pages_.emplace(page, Entry{t->gpa, t->perms}).first;
      }
      if (!permits(it->second.perms, access)) {
        out.resize(first);
        return make_error(MemErrc::kPermissionDenied, "iova:{:#x}: {} not allowed", cur, to_string(access));
      }
      if (len == 0) break;
      const uint64_t n = std::min(end, page + 4096) - cur;
      auto host = mem_.span(it->second.gpa.unchecked_add(cur - page), n);
      VDMA_CHECK(host.has_value(), "page table output outside guest memory");
      if (out.size() > first && out.back().host + out.back().len == host->data()) {
        out.back().len += n;
      } else {
        out.push_back({host->data(), n});
      }
      cur += n;
    }
    return ok();
  }

  Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
    for (const auto& r : ranges) {
      pages_.erase(pages_.lower_bound(r.start.value()), pages_.lower_bound(r.start.value() + r.len));
      ++invalidations;
    }
    return ok();
  }

  mutable uint64_t misses = 0;
  uint64_t invalidations = 0;

 private:
  struct Entry {
    Gpa gpa;
    Access perms;
  };
  const GuestMemory& mem_;
  IommuDmaDomain* domain_ = nullptr;
  mutable std::map<uint64_t, Entry> pages_;
};

struct Param {
  RingFormat format;
  const char* device;
};

std::string param_name(const ::testing::TestParamInfo<Param>& i) {
  return std::string(to_string(i.param.format)) + "_" + i.param.device;
}

// What the device can reach in each mode, at the addresses it is given.
RegionTable device_view(const GuestMemory& mem, std::string_view device) {
  if (device == "offsets") {
    const OffsetRange ranges[] = {{Gpa{0}, DmaAddr{(1ull << 40) | kC}, 32 << 20},        // private: C-bit set
                                  {Gpa{kShared}, DmaAddr{(1ull << 40) + kShared}, kSharedSize},
                                  {Gpa{kHigh}, DmaAddr{(1ull << 41) | kC}, kArena}};
    return *RegionTable::with_offsets(mem, ranges);
  }
  if (device == "force" || device == "restricted") return RegionTable::bypass(mem, MemAttr::kShared);
  return RegionTable::bypass(mem);
}

struct Segment {
  Gpa gpa;
  uint32_t len;
  BufferType type;
};
struct Pending {
  std::vector<Segment> segs;
  std::vector<std::byte> readable_bytes;
  uint64_t writable_total = 0;
};

class DmaModeLoop : public ::testing::TestWithParam<Param> {};

TEST_P(DmaModeLoop, EveryByteArrivesAndTheCheckerIsSilent) {
  const Param p = GetParam();
  auto mem = *GuestMemory::create({{Gpa{0}, 32 << 20, MemAttr::kPrivate, "ram-low"},
                                   {Gpa{kShared}, kSharedSize, MemAttr::kShared, "shared"},
                                   {Gpa{kHigh}, kArena, MemAttr::kPrivate, "ram-high"}});
  ASSERT_THAT(mem->fill(Gpa{kLow}, kArena, kUntouched), IsOk());
  ASSERT_THAT(mem->fill(Gpa{kHigh}, kArena, kUntouched), IsOk());
  auto topo = parse_topology(kTopology);
  ASSERT_THAT(topo, IsOk());
  auto iotlb = std::make_shared<TestIotlb>(*mem);
  IommuPlatform iommu({.per_domain = {{1, {.mode = InvalidationMode::kStrict, .sink = iotlb}},
                                      {2, {.mode = InvalidationMode::kLazy, .sink = iotlb, .flush_queue_entries = 64}}}});
  auto platform = PlatformDma::create(*mem, *topo, {.iommu = iommu.factory()});
  ASSERT_THAT(platform, IsOk());
  const bool behind_iommu = std::string_view(p.device).starts_with("iommu_");
  if (behind_iommu) iotlb->set_domain(iommu.dma_domain(std::string_view(p.device) == "iommu_strict" ? 1 : 2));
  const DmaPolicy policy = DmaPolicy::from_topology(*topo);

  // Negotiation: the device offers everything; the driver takes what it
  // wants plus what the policy accepts.
  const uint64_t offered = feature_bit(kFeatureVersion1) | feature_bit(kFeatureIndirectDesc) |
                           feature_bit(kFeatureEventIdx) | feature_bit(kFeatureOrderPlatform) |
                           (std::string_view(p.device) == "bypass" ? 0 : feature_bit(kFeatureAccessPlatform));
  const uint64_t wanted = feature_bit(kFeatureVersion1) | feature_bit(kFeatureIndirectDesc) |
                          feature_bit(kFeatureEventIdx);
  auto features = negotiate_features(offered, wanted | policy.transport_features(p.device, offered));
  ASSERT_THAT(features, IsOk());
  auto decision = policy.decide(p.device, *features);
  ASSERT_THAT(decision, IsOk());
  EXPECT_EQ(decision->barriers, BarrierKind::kStrong);  // ORDER_PLATFORM offered and accepted
  auto ops = select_dma_ops(**platform, p.device, *decision);
  ASSERT_THAT(ops, IsOk());
  DebugDmaOps dma(**ops, p.device);
  const RegionTable region_view = device_view(*mem, p.device);
  const DeviceMemory& dev_mem = behind_iommu ? static_cast<const DeviceMemory&>(*iotlb) : region_view;

  const QueueConfig cfg{.size = 128, .features = *features, .max_indirect = 16};
  auto drv_r = make_driver_queue(p.format, dma, cfg);
  ASSERT_THAT(drv_r, IsOk());
  auto drv = std::move(drv_r).value();
  auto dev_r = make_device_queue(p.format, dev_mem, cfg, drv->ring_addresses());
  ASSERT_THAT(dev_r, IsOk());
  auto dev = std::move(dev_r).value();

  GpaAllocator arenas[2] = {GpaAllocator({Gpa{kLow}, kArena}), GpaAllocator({Gpa{kHigh}, kArena})};
  std::mt19937_64 rng(std::hash<std::string>{}(param_name({p, 0})));
  std::unordered_map<uint64_t, Pending> pending;
  std::deque<DescriptorChain> popped;
  std::vector<DriverSegment> segs;
  uint64_t next_cookie = 1, bytes_checked = 0;
  int completed = 0, pool_full = 0;
  auto seg_len = [&] {
    switch (rng() % 8) {
      case 0: return static_cast<uint32_t>(1 + rng() % 16);
      case 1: return static_cast<uint32_t>(4096 + rng() % 12288);
      default: return static_cast<uint32_t>(1 + rng() % 2048);
    }
  };

  while (completed < kChains) {
    const int batch = 1 + static_cast<int>(rng() % 16);
    for (int b = 0; b < batch && next_cookie <= static_cast<uint64_t>(kChains); ++b) {
      const int nr = static_cast<int>(rng() % 4);
      const int nw = (nr == 0 ? 1 : 0) + static_cast<int>(rng() % 3);
      if (drv->num_free() < nr + nw) break;
      Pending pend;
      segs.clear();
      for (int i = 0; i < nr + nw; ++i) {
        const uint32_t len = seg_len();
        auto g = arenas[rng() % 2].allocate(len, 1);
        ASSERT_THAT(g, IsOk());
        const BufferType t = i < nr ? BufferType::kDeviceReadable : BufferType::kDeviceWritable;
        ASSERT_THAT(dma.cpu_access(*g, len, CpuAccess::kWrite), IsOk());
        if (t == BufferType::kDeviceReadable) {
          std::vector<std::byte> bytes(len);
          for (auto& x : bytes) x = std::byte(static_cast<uint8_t>(rng()));
          ASSERT_THAT(mem->write(*g, bytes), IsOk());
          pend.readable_bytes.insert(pend.readable_bytes.end(), bytes.begin(), bytes.end());
        } else {
          pend.writable_total += len;
        }
        pend.segs.push_back({*g, len, t});
        segs.push_back(DriverSegment{.addr = *g, .len = len, .type = t});
      }
      auto added = drv->add(segs, next_cookie);
      if (!added && added.error().is(DmaErrc::kPoolFull) && !pending.empty()) {
        // The bounce pool is busy with outstanding chains: like a driver
        // seeing -ENOMEM, retry after the device returns some.
        ++pool_full;
        for (const Segment& s : pend.segs) {
          ASSERT_THAT(mem->fill(s.gpa, s.len, kUntouched), IsOk());
          ASSERT_THAT(arenas[s.gpa.value() >= kHigh ? 1 : 0].free(s.gpa, s.len), IsOk());
        }
        break;
      }
      ASSERT_THAT(added, IsOk()) << "chain " << next_cookie;
      pending.emplace(next_cookie++, std::move(pend));
    }
    (void)drv->kick_prepare();

    while (true) {
      DescriptorChain chain;
      auto got = dev->pop(chain);
      ASSERT_THAT(got, IsOk());
      if (!*got) break;
      ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
      popped.push_back(std::move(chain));
    }
    std::shuffle(popped.begin(), popped.end(), rng);
    const size_t now = popped.empty() ? 0 : 1 + rng() % popped.size();
    for (size_t i = 0; i < now; ++i) {
      ASSERT_THAT(dev->push_used(popped.front(), copy_readable_to_writable(popped.front())), IsOk());
      popped.pop_front();
    }
    (void)dev->should_notify();

    while (true) {
      auto u = drv->get_used();
      ASSERT_THAT(u, IsOk());
      if (!u->has_value()) break;
      auto it = pending.find((*u)->cookie);
      ASSERT_NE(it, pending.end());
      Pending& pend = it->second;
      const uint64_t expect = std::min<uint64_t>(pend.readable_bytes.size(), pend.writable_total);
      ASSERT_EQ((*u)->len, expect);
      uint64_t stream = 0;
      for (const Segment& s : pend.segs) {
        GpaAllocator& a = arenas[s.gpa.value() >= kHigh ? 1 : 0];
        if (s.type == BufferType::kDeviceReadable) {
          // Restore the guard: this memory may become a writable buffer next.
          ASSERT_THAT(mem->fill(s.gpa, s.len, kUntouched), IsOk());
          ASSERT_THAT(a.free(s.gpa, s.len), IsOk());
          continue;
        }
        // The chain is unmapped: the CPU may read its buffers.
        ASSERT_THAT(dma.cpu_access(s.gpa, s.len, CpuAccess::kRead), IsOk());
        std::vector<std::byte> got(s.len);
        ASSERT_THAT(mem->read(s.gpa, got), IsOk());
        for (uint32_t k = 0; k < s.len; ++k, ++stream) {
          const std::byte want = stream < expect ? pend.readable_bytes[stream] : kUntouched;
          ASSERT_EQ(got[k], want) << "cookie " << (*u)->cookie << " byte " << stream;
        }
        bytes_checked += s.len;
        ASSERT_THAT(mem->fill(s.gpa, s.len, kUntouched), IsOk());
        ASSERT_THAT(a.free(s.gpa, s.len), IsOk());
      }
      pending.erase(it);
      ++completed;
    }
  }
  EXPECT_FALSE(drv->is_broken());
  EXPECT_EQ(dev->state(), DeviceQueueState::kRunning);
  EXPECT_EQ(dma.live_mappings(), 0u);
  dev.reset();
  drv.reset();
  EXPECT_THAT(dma.check_teardown(), IsOk());
  EXPECT_TRUE(dma.reports().empty()) << dma.reports().front().message;
  if (BouncePool* pool = (*platform)->restricted_pool(p.device)) {
    EXPECT_EQ(pool->stats().used_slots, 0u);
  }
  EXPECT_EQ((*platform)->swiotlb()->stats().used_slots, 0u);
  if (behind_iommu) {
    IommuDmaDomain* dom = iotlb->domain_for_test();
    ASSERT_THAT(dom->flush(), IsOk());
    EXPECT_EQ(dom->mapping_count(), 0u);  // rings and buffers all unmapped
    EXPECT_EQ(dom->flush_queue()->stats().pending, 0u);
    EXPECT_GT(iotlb->invalidations, 0u);
    EXPECT_GT(iotlb->misses, static_cast<uint64_t>(kChains));
    RecordProperty("iotlb_misses", std::to_string(iotlb->misses));
  }
  EXPECT_GT(bytes_checked, static_cast<uint64_t>(kChains) * 500);
  RecordProperty("bytes_checked", std::to_string(bytes_checked));
  RecordProperty("pool_full_retries", pool_full);
}

[[maybe_unused]] void PrintTo(const Param& p, std::ostream* os) { *os << param_name({p, 0}); }

INSTANTIATE_TEST_SUITE_P(
    AllModes, DmaModeLoop,
    ::testing::Values(Param{RingFormat::kSplit, "bypass"}, Param{RingFormat::kSplit, "offsets"},
                      Param{RingFormat::kSplit, "mask"}, Param{RingFormat::kSplit, "force"},
                      Param{RingFormat::kSplit, "restricted"}, Param{RingFormat::kSplit, "noncoherent"},
                      Param{RingFormat::kSplit, "iommu_strict"}, Param{RingFormat::kSplit, "iommu_lazy"},
                      Param{RingFormat::kPacked, "bypass"}, Param{RingFormat::kPacked, "offsets"},
                      Param{RingFormat::kPacked, "mask"}, Param{RingFormat::kPacked, "force"},
                      Param{RingFormat::kPacked, "restricted"}, Param{RingFormat::kPacked, "noncoherent"},
                      Param{RingFormat::kPacked, "iommu_strict"}, Param{RingFormat::kPacked, "iommu_lazy"}),
    param_name);

}  // namespace
}  // namespace vdma
