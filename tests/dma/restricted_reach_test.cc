// What a device can reach, in every combination of platform and device kind
// (issue 13, "restricted platform + IOMMU device"): on a restricted
// (confidential) platform every DMA address a device is handed resolves to
// shared memory only, whatever the kind, direction or buffer; an IOMMU
// device bounces through the swiotlb and the IOMMU maps the slot; and
// every combination that cannot be made safe is refused at set-up, naming
// the device and the reason.
//
// The device is simulated in-process: it resolves a DMA address the way its
// hardware would (the IOMMU domain's page table, the bus translation, or
// dma == gpa) and reads or writes guest memory there.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "result_matchers.h"
#include "vdma/dma/direct_dma_ops.h"
#include "vdma/dma/iommu_platform.h"
#include "vdma/dma/platform_dma.h"
#include "vdma/dma/topology.h"
#include "param_printers.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::AllOf;
using ::testing::HasSubstr;

// Guest memory: private "ram" and one shared region per pool window, as the
// front-end's GuestPlatform lays it out, plus a shared region for driver
// buffers that already live in shared memory.
constexpr Gpa kRam{0};
constexpr uint64_t kRamSize = 16 << 20;
constexpr Gpa kCoherent{0x1000000};
constexpr Gpa kSwiotlb{0x1100000};
constexpr Gpa kRestrictedPool{0x1300000};
constexpr Gpa kSharedBuf{0x1400000};
constexpr Gpa kPrivateSwiotlb{0x800000};  // inside "ram": a pool that is not shared

std::unique_ptr<GuestMemory> make_memory() {
  return std::move(GuestMemory::create({{kRam, kRamSize, MemAttr::kPrivate, "ram"},
                                        {kCoherent, 0x100000, MemAttr::kShared, "coherent"},
                                        {kSwiotlb, 0x200000, MemAttr::kShared, "swiotlb"},
                                        {kRestrictedPool, 0x100000, MemAttr::kShared, "restricted-dev0"},
                                        {kSharedBuf, 0x100000, MemAttr::kShared, "shared-buf"}}))
      .value();
}

enum class Kind : uint8_t { kBypass, kDirect, kDirectForceBounce, kRestricted, kIommuStrict, kIommuLazy, kIommuIdentity };

constexpr Kind kAllKinds[] = {Kind::kBypass,     Kind::kDirect,      Kind::kDirectForceBounce, Kind::kRestricted,
                              Kind::kIommuStrict, Kind::kIommuLazy, Kind::kIommuIdentity};
constexpr DmaDirection kAllDirections[] = {DmaDirection::kToDevice, DmaDirection::kFromDevice,
                                           DmaDirection::kBidirectional};

std::string name_of(Kind k) {
  switch (k) {
    case Kind::kBypass: return "bypass";
    case Kind::kDirect: return "direct";
    case Kind::kDirectForceBounce: return "direct_force_bounce";
    case Kind::kRestricted: return "restricted";
    case Kind::kIommuStrict: return "iommu_strict";
    case Kind::kIommuLazy: return "iommu_lazy";
    case Kind::kIommuIdentity: return "iommu_identity";
  }
  return "?";
}

// For gtest's "where GetParam() = ..." lines.
void PrintTo(Kind k, std::ostream* os) { *os << name_of(k); }

bool is_iommu(Kind k) { return k == Kind::kIommuStrict || k == Kind::kIommuLazy || k == Kind::kIommuIdentity; }

// The topology JSON of one combination: device "dev0" of the kind; direct
// kinds carry an encryption bit so a bus address says whether it targets
// private memory.
std::string topology_json(bool restricted, Kind kind) {
  std::string dev;
  switch (kind) {
    case Kind::kBypass: dev = R"("kind": "bypass")"; break;
    case Kind::kDirect: dev = R"("kind": "direct", "encryption_bit": 47)"; break;
    case Kind::kDirectForceBounce: dev = R"("kind": "direct", "encryption_bit": 47, "force_bounce": true)"; break;
    case Kind::kRestricted:
      dev = R"("kind": "restricted", "encryption_bit": 47,
               "restricted_pool": {"base": "0x1300000", "size": "0x100000"})";
      break;
    case Kind::kIommuStrict:
    case Kind::kIommuLazy:
    case Kind::kIommuIdentity: dev = R"("kind": "iommu", "iommu_domain": 1)"; break;
  }
  return fmt::format(R"({{"restricted_memory_access": {},
                          "coherent_pool": {{"base": "0x1000000", "size": "0x100000"}},
                          "swiotlb": {{"base": "0x1100000", "size": "0x200000", "areas": 1}},
                          "devices": [{{"id": "dev0", {}}}]}})",
                     restricted ? "true" : "false", dev);
}

// Counts sink calls; the strict-mode tests look at what the slot and the
// buffer hold at the moment of the invalidation.
class CountingSink final : public InvalidationSink {
 public:
  Result<void> invalidate(std::span<const AddrRange<Iova>>) override {
    ++calls;
    if (on_call) on_call();
    if (fail) return make_error(DmaErrc::kUnavailable, "back-end did not acknowledge");
    return ok();
  }
  int calls = 0;
  bool fail = false;
  std::function<void()> on_call;
};

// One fragment of what a device reaches through a DMA address.
struct Reach {
  Gpa gpa;
  uint64_t len = 0;
};

// A platform of one combination, and the device's view of it.
struct Rig {
  Rig(bool restricted_platform, Kind k) : restricted(restricted_platform), kind(k) {
    IommuPlatformConfig cfg;
    cfg.domain.mode = kind == Kind::kIommuLazy ? InvalidationMode::kLazy : InvalidationMode::kStrict;
    cfg.domain.sink = sink;
    if (kind == Kind::kIommuIdentity) cfg.identity_domains = {1};
    iommu = std::make_unique<IommuPlatform>(std::move(cfg));
  }

  // Builds the platform; the error of parsing or of PlatformDma::create.
  Result<void> build() {
    PlatformTopology t = VDMA_TRY(parse_topology(topology_json(restricted, kind)));
    platform = VDMA_TRY(PlatformDma::create(*mem, std::move(t), {.iommu = iommu->factory()}));
    ops = VDMA_TRY(platform->platform_ops("dev0"));
    return ok();
  }

  // What the device reaches at [dma, dma + len) with `access`, resolved as
  // its hardware would; fails the test when the address does not resolve.
  std::vector<Reach> resolve(DmaAddr dma, uint64_t len, Access access) const {
    std::vector<Reach> out;
    if (is_iommu(kind)) {
      IommuDmaDomain* dom = iommu->dma_domain(1);
      for (uint64_t cur = dma.value(), left = len; left > 0;) {
        auto t = dom->translate(Iova(cur), access);
        EXPECT_THAT(t, IsOk()) << "IOVA " << cur << " does not translate with the device's rights";
        if (!t) return {};
        const uint64_t n = std::min(t->contiguous, left);
        out.push_back({t->gpa, n});
        cur += n;
        left -= n;
      }
      return out;
    }
    if (const auto* direct = dynamic_cast<const DirectDmaOps*>(ops); direct != nullptr) {
      auto gpa = direct->bus().to_cpu(dma);
      EXPECT_THAT(gpa, IsOk());
      if (!gpa) return {};
      // The encryption bit is the device's statement of what it targets.
      const bool cbit = (dma.value() >> 47) & 1;
      EXPECT_EQ(cbit, !mem->is_all(*gpa, len, MemAttr::kShared)) << "C-bit of " << fmt::format("{}", dma);
      return {{*gpa, len}};
    }
    return {{Gpa(dma.value()), len}};  // bypass
  }

  // Every byte reached is shared memory when the platform is restricted.
  void expect_reaches_only_shared(const std::vector<Reach>& reach, std::string_view what) const {
    ASSERT_FALSE(reach.empty()) << what;
    for (const Reach& r : reach) {
      ASSERT_TRUE(mem->contains(r.gpa, r.len)) << what << ": " << fmt::format("{}", r.gpa) << " is not guest memory";
      if (restricted) {
        EXPECT_TRUE(mem->is_all(r.gpa, r.len, MemAttr::kShared))
            << what << ": the device reaches " << fmt::format("{}", r.gpa) << " + " << r.len << " in region '"
            << mem->find_region(r.gpa)->name() << "', which is private";
      }
    }
  }

  std::vector<std::byte> device_read(const std::vector<Reach>& reach) const {
    std::vector<std::byte> out;
    for (const Reach& r : reach) {
      std::vector<std::byte> part(r.len);
      EXPECT_THAT(mem->read(r.gpa, part), IsOk());
      out.insert(out.end(), part.begin(), part.end());
    }
    return out;
  }

  void device_write(const std::vector<Reach>& reach, const std::vector<std::byte>& bytes) const {
    size_t pos = 0;
    for (const Reach& r : reach) {
      EXPECT_THAT(mem->write(r.gpa, std::span(bytes).subspan(pos, r.len)), IsOk());
      pos += r.len;
    }
  }

  [[nodiscard]] uint64_t slots_in_use() const {
    uint64_t n = platform->swiotlb() != nullptr ? platform->swiotlb()->stats().used_slots : 0;
    if (BouncePool* p = platform->restricted_pool("dev0"); p != nullptr) n += p->stats().used_slots;
    return n;
  }

  const bool restricted;
  const Kind kind;
  std::unique_ptr<GuestMemory> mem = make_memory();
  std::shared_ptr<CountingSink> sink = std::make_shared<CountingSink>();
  std::unique_ptr<IommuPlatform> iommu;  // outlives platform (declared before it)
  std::unique_ptr<PlatformDma> platform;
  DmaOps* ops = nullptr;
};

std::vector<std::byte> pattern(size_t len, uint8_t seed) {
  std::vector<std::byte> b(len);
  for (size_t i = 0; i < len; ++i) b[i] = std::byte(static_cast<uint8_t>(seed + i * 7 + (i >> 9)));
  return b;
}

std::vector<std::byte> read_back(const GuestMemory& mem, Gpa gpa, size_t len) {
  std::vector<std::byte> b(len);
  EXPECT_THAT(mem.read(gpa, b), IsOk());
  return b;
}

Access access_of(DmaDirection d) {
  return device_reads(d) && device_writes(d) ? Access::kReadWrite : device_reads(d) ? Access::kRead : Access::kWrite;
}

// Buffers the driver maps: private RAM (unaligned, across pages) and a
// buffer that already lives in shared memory.
struct Buffer {
  const char* what;
  Gpa gpa;
  uint64_t len;
};
constexpr Buffer kBuffers[] = {{"private ram", Gpa{0x3010}, 5000},
                               {"private ram, one byte", Gpa{0x9fff}, 1},
                               {"shared buffer", Gpa{kSharedBuf.value() + 0x200}, 6000}};

using Combination = std::tuple<bool, Kind, DmaDirection>;

std::string combination_name(const ::testing::TestParamInfo<Combination>& p) {
  std::string d(to_string(std::get<2>(p.param)));
  std::replace(d.begin(), d.end(), '-', '_');
  return fmt::format("{}_{}_{}", std::get<0>(p.param) ? "restricted" : "open", name_of(std::get<1>(p.param)), d);
}

class ReachTest : public ::testing::TestWithParam<Combination> {};

TEST_P(ReachTest, DeviceReachesOnlySharedMemoryOnARestrictedPlatformAndBytesRoundTrip) {
  const auto [restricted, kind, dir] = GetParam();
  Rig rig(restricted, kind);
  auto built = rig.build();
  // A restricted platform refuses the kinds that would hand the device
  // private memory; everything else must build.
  if (restricted && kind == Kind::kBypass) {
    EXPECT_THAT(built, IsErrorWith(DmaErrc::kInvalidConfig,
                                   AllOf(HasSubstr("devices[0].kind"), HasSubstr("would be handed private memory"))));
    return;
  }
  if (restricted && kind == Kind::kDirect) {
    EXPECT_THAT(built, IsErrorWith(DmaErrc::kInvalidConfig,
                                   AllOf(HasSubstr("devices[0].force_bounce"), HasSubstr("shared memory only"))));
    return;
  }
  ASSERT_THAT(built, IsOk());
  if (restricted && is_iommu(kind)) {
    EXPECT_THAT(rig.ops->kind(), ::testing::EndsWith("-bounce"));
    EXPECT_TRUE(rig.ops->need_sync(DmaAddr{0}));
  }
  const Access access = access_of(dir);

  // Single mappings: copy-in exact, device writes copied back exactly, the
  // slot given back.
  uint8_t seed = 1;
  for (const Buffer& b : kBuffers) {
    SCOPED_TRACE(b.what);
    const std::vector<std::byte> original = pattern(b.len, seed++);
    const std::vector<std::byte> device_bytes = pattern(b.len, seed++);
    ASSERT_THAT(rig.mem->write(b.gpa, original), IsOk());
    auto dma = rig.ops->map(b.gpa, b.len, dir);
    ASSERT_THAT(dma, IsOk());
    const std::vector<Reach> reach = rig.resolve(*dma, b.len, access);
    rig.expect_reaches_only_shared(reach, b.what);
    if (device_reads(dir)) {
      EXPECT_EQ(rig.device_read(reach), original) << "the device read other bytes";
    }
    if (device_writes(dir)) rig.device_write(reach, device_bytes);
    const int calls_before = rig.sink->calls;
    ASSERT_THAT(rig.ops->unmap(*dma, b.len, dir), IsOk());
    EXPECT_EQ(read_back(*rig.mem, b.gpa, b.len), device_writes(dir) ? device_bytes : original);
    EXPECT_EQ(rig.slots_in_use(), 0u) << "a bounce slot was not given back";
    if (kind == Kind::kIommuStrict) {
      EXPECT_EQ(rig.sink->calls, calls_before + 1) << "strict unmap invalidates at once";
      EXPECT_FALSE(rig.iommu->dma_domain(1)->translate(Iova(dma->value()), Access::kNone).has_value());
    }
  }

  // Ring memory: shared on a restricted platform, reachable read/write.
  auto ring = rig.ops->alloc_coherent(8192);
  ASSERT_THAT(ring, IsOk());
  rig.expect_reaches_only_shared(rig.resolve(ring->dma, 8192, Access::kReadWrite), "coherent ring");
  ASSERT_THAT(rig.ops->free_coherent(*ring), IsOk());

  // A chain unmapped as one batch (private and shared buffers together).
  std::vector<DmaUnmapRequest> chain;
  std::vector<std::vector<std::byte>> written;
  for (const Buffer& b : kBuffers) {
    ASSERT_THAT(rig.mem->write(b.gpa, pattern(b.len, seed++)), IsOk());
    auto dma = rig.ops->map(b.gpa, b.len, dir);
    ASSERT_THAT(dma, IsOk());
    const std::vector<Reach> reach = rig.resolve(*dma, b.len, access);
    rig.expect_reaches_only_shared(reach, b.what);
    written.push_back(device_writes(dir) ? pattern(b.len, seed++) : read_back(*rig.mem, b.gpa, b.len));
    if (device_writes(dir)) rig.device_write(reach, written.back());
    chain.push_back({*dma, b.len, dir});
  }
  const int calls_before = rig.sink->calls;
  ASSERT_THAT(rig.ops->unmap_batch(chain), IsOk());
  for (size_t i = 0; i < chain.size(); ++i) {
    EXPECT_EQ(read_back(*rig.mem, kBuffers[i].gpa, kBuffers[i].len), written[i]) << kBuffers[i].what;
  }
  EXPECT_EQ(rig.slots_in_use(), 0u);
  if (kind == Kind::kIommuStrict) {
    EXPECT_EQ(rig.sink->calls, calls_before + 1) << "one invalidation per batch";
  }

  // A scatter list of a private and a shared entry.
  SgEntry sg[2] = {{.gpa = Gpa{0x20000}, .len = 3000}, {.gpa = Gpa{kSharedBuf.value() + 0x8000}, .len = 4096}};
  ASSERT_THAT(rig.mem->write(sg[0].gpa, pattern(3000, 90)), IsOk());
  ASSERT_THAT(rig.mem->write(sg[1].gpa, pattern(4096, 91)), IsOk());
  auto segs = rig.ops->map_sg(sg, dir);
  ASSERT_THAT(segs, IsOk());
  for (size_t i = 0; i < *segs; ++i) {
    rig.expect_reaches_only_shared(rig.resolve(sg[i].dma, sg[i].dma_len, access), "scatter segment");
  }
  ASSERT_THAT(rig.ops->unmap_sg(sg, dir), IsOk());
  EXPECT_EQ(read_back(*rig.mem, sg[0].gpa, 3000), pattern(3000, 90));
  EXPECT_EQ(rig.slots_in_use(), 0u);
  if (kind == Kind::kIommuLazy) {
    EXPECT_THAT(rig.iommu->dma_domain(1)->flush(), IsOk());
  }
}

INSTANTIATE_TEST_SUITE_P(EveryPlatformKindAndDirection, ReachTest,
                         ::testing::Combine(::testing::Bool(), ::testing::ValuesIn(kAllKinds),
                                            ::testing::ValuesIn(kAllDirections)),
                         combination_name);

// Strict mode: the IOMMU mapping ends, and the device loses the slot, before
// the device's bytes are copied back and the slot is reused.
TEST(RestrictedIommu, StrictUnmapInvalidatesBeforeTheCopyBackAndTheSlotRelease) {
  Rig rig(true, Kind::kIommuStrict);
  ASSERT_THAT(rig.build(), IsOk());
  const Gpa buf{0x5000};
  ASSERT_THAT(rig.mem->write(buf, pattern(4096, 1)), IsOk());
  auto dma = rig.ops->map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_THAT(dma, IsOk());
  const std::vector<Reach> reach = rig.resolve(*dma, 4096, Access::kWrite);
  ASSERT_EQ(reach.size(), 1u);
  EXPECT_TRUE(rig.platform->swiotlb()->contains(reach[0].gpa)) << "the IOMMU maps the slot, not the buffer";
  rig.device_write(reach, pattern(4096, 2));
  bool checked = false;
  rig.sink->on_call = [&] {
    checked = true;
    EXPECT_FALSE(rig.iommu->dma_domain(1)->translate(Iova(dma->value()), Access::kNone).has_value())
        << "the page table still maps the slot at invalidation time";
    EXPECT_EQ(rig.slots_in_use(), 2u) << "the slot was freed before the invalidation";
    EXPECT_EQ(read_back(*rig.mem, buf, 4096), pattern(4096, 1)) << "copied back before the invalidation";
  };
  ASSERT_THAT(rig.ops->unmap(*dma, 4096, DmaDirection::kFromDevice), IsOk());
  EXPECT_TRUE(checked);
  EXPECT_EQ(read_back(*rig.mem, buf, 4096), pattern(4096, 2));
  EXPECT_EQ(rig.slots_in_use(), 0u);
}

// unmap_batch() with the device's written counts (buffers mapped with
// kNoCopyIn, as the virtqueues map device-writable buffers): each slot is
// copied back only after the invalidation, and only as far as its written
// count; one entry alone takes the same order.
TEST(RestrictedIommu, UnmapBatchCopiesBackOnlyTheWrittenBytesAfterTheInvalidation) {
  Rig rig(true, Kind::kIommuStrict);
  ASSERT_THAT(rig.build(), IsOk());
  const Gpa a{0x5000}, b{0x8000};
  for (size_t entries : {2u, 1u}) {
    SCOPED_TRACE(::testing::Message() << entries << " entries");
    ASSERT_THAT(rig.mem->write(a, pattern(4096, 1)), IsOk());
    ASSERT_THAT(rig.mem->write(b, pattern(3000, 3)), IsOk());
    auto da = rig.ops->map(a, 4096, DmaDirection::kFromDevice, DmaAttrs::kNoCopyIn);
    auto db = rig.ops->map(b, 3000, DmaDirection::kFromDevice, DmaAttrs::kNoCopyIn);
    ASSERT_THAT(da, IsOk());
    ASSERT_THAT(db, IsOk());
    rig.device_write(rig.resolve(*da, 4096, Access::kWrite), pattern(4096, 2));
    rig.device_write(rig.resolve(*db, 3000, Access::kWrite), pattern(3000, 4));
    int calls = 0;
    rig.sink->on_call = [&] {
      // The first invalidation covers a's mapping.
      if (++calls == 1) {
        EXPECT_EQ(read_back(*rig.mem, a, 4096), pattern(4096, 1)) << "copied back before it";
      }
    };
    const DmaUnmapRequest reqs[] = {
        {.addr = *da, .len = 4096, .dir = DmaDirection::kFromDevice, .written = 100},
        {.addr = *db, .len = 3000, .dir = DmaDirection::kFromDevice, .written = 0}};
    ASSERT_THAT(rig.ops->unmap_batch(std::span(reqs).first(entries)), IsOk());
    if (entries == 1) {
      ASSERT_THAT(rig.ops->unmap_batch(std::span(reqs).subspan(1)), IsOk());
    }
    EXPECT_EQ(calls, static_cast<int>(3 - entries));  // one invalidation per unmap_batch call
    auto got = read_back(*rig.mem, a, 4096);
    const auto dev = pattern(4096, 2), original = pattern(4096, 1);
    EXPECT_TRUE(std::equal(dev.begin(), dev.begin() + 100, got.begin()));
    EXPECT_TRUE(std::equal(original.begin() + 100, original.end(), got.begin() + 100));
    EXPECT_EQ(read_back(*rig.mem, b, 3000), pattern(3000, 3));
    EXPECT_EQ(rig.slots_in_use(), 0u);
    rig.sink->on_call = nullptr;
  }
}

// A failed strict invalidation keeps the slot out of the pool (the device
// may still write it) and gives the buffer no copy-back.
TEST(RestrictedIommu, FailedStrictInvalidationQuarantinesTheSlot) {
  Rig rig(true, Kind::kIommuStrict);
  ASSERT_THAT(rig.build(), IsOk());
  const Gpa buf{0x5000};
  ASSERT_THAT(rig.mem->write(buf, pattern(2048, 1)), IsOk());
  auto dma = rig.ops->map(buf, 2048, DmaDirection::kFromDevice);
  ASSERT_THAT(dma, IsOk());
  rig.device_write(rig.resolve(*dma, 2048, Access::kWrite), pattern(2048, 2));
  rig.sink->fail = true;
  EXPECT_THAT(rig.ops->unmap(*dma, 2048, DmaDirection::kFromDevice),
              IsErrorWith(DmaErrc::kUnavailable, HasSubstr("did not acknowledge")));
  EXPECT_EQ(rig.slots_in_use(), 1u);
  EXPECT_EQ(read_back(*rig.mem, buf, 2048), pattern(2048, 1));
  rig.sink->fail = false;
  EXPECT_THAT(rig.iommu->dma_domain(1)->flush(), IsOk());
}

// Lazy mode: the slot goes back at unmap (a stale IOTLB entry can reach only
// shared memory); the invalidation comes with the next flush; a map of the
// same slot revives the same IOVA.
TEST(RestrictedIommu, LazyUnmapFreesTheSlotAndDefersTheInvalidation) {
  Rig rig(true, Kind::kIommuLazy);
  ASSERT_THAT(rig.build(), IsOk());
  const Gpa buf{0x5000};
  ASSERT_THAT(rig.mem->write(buf, pattern(4096, 1)), IsOk());
  auto dma = rig.ops->map(buf, 4096, DmaDirection::kBidirectional);
  ASSERT_THAT(dma, IsOk());
  rig.device_write(rig.resolve(*dma, 4096, Access::kReadWrite), pattern(4096, 3));
  ASSERT_THAT(rig.ops->unmap(*dma, 4096, DmaDirection::kBidirectional), IsOk());
  EXPECT_EQ(rig.sink->calls, 0);
  EXPECT_EQ(rig.slots_in_use(), 0u);
  EXPECT_EQ(read_back(*rig.mem, buf, 4096), pattern(4096, 3));
  auto again = rig.ops->map(buf, 4096, DmaDirection::kBidirectional);
  ASSERT_THAT(again, IsOk());
  rig.expect_reaches_only_shared(rig.resolve(*again, 4096, Access::kReadWrite), "revived mapping");
  ASSERT_THAT(rig.ops->unmap(*again, 4096, DmaDirection::kBidirectional), IsOk());
  ASSERT_THAT(rig.iommu->dma_domain(1)->flush(), IsOk());
  EXPECT_EQ(rig.sink->calls, 1);
}

// sync_for_cpu / sync_for_device move bytes between the buffer and the
// slot while the mapping lives (premapped buffers depend on it).
TEST(RestrictedIommu, SyncsCopyBetweenTheBufferAndTheSlot) {
  Rig rig(true, Kind::kIommuStrict);
  ASSERT_THAT(rig.build(), IsOk());
  const Gpa buf{0x7000};
  ASSERT_THAT(rig.mem->write(buf, pattern(4096, 1)), IsOk());
  auto dma = rig.ops->map(buf, 4096, DmaDirection::kBidirectional);
  ASSERT_THAT(dma, IsOk());
  const auto reach = rig.resolve(*dma, 4096, Access::kReadWrite);
  rig.device_write(reach, pattern(4096, 5));
  ASSERT_THAT(rig.ops->sync_for_cpu(*dma, 4096, DmaDirection::kBidirectional), IsOk());
  EXPECT_EQ(read_back(*rig.mem, buf, 4096), pattern(4096, 5));
  ASSERT_THAT(rig.mem->write(buf, pattern(4096, 6)), IsOk());
  ASSERT_THAT(rig.ops->sync_for_device(*dma, 4096, DmaDirection::kBidirectional), IsOk());
  EXPECT_EQ(rig.device_read(reach), pattern(4096, 6));
  ASSERT_THAT(rig.ops->unmap(*dma, 4096, DmaDirection::kBidirectional), IsOk());
}

// ---- Refusals: the exact code, the device and the reason ---------------------

Result<std::unique_ptr<PlatformDma>> build_platform(const GuestMemory& mem, const char* json, IommuDmaFactory f) {
  PlatformTopology t = VDMA_TRY(parse_topology(json));
  return PlatformDma::create(mem, std::move(t), {.iommu = std::move(f)});
}

TEST(RestrictedIommuRefusal, NoSwiotlbNamesTheDeviceAndTheReason) {
  auto mem = make_memory();
  IommuPlatform iommu;
  EXPECT_THAT(build_platform(*mem, R"({"restricted_memory_access": true,
                                       "coherent_pool": {"base": "0x1000000", "size": "0x100000"},
                                       "devices": [
                                         {"id": "vsock0", "kind": "restricted",
                                          "restricted_pool": {"base": "0x1300000", "size": "0x100000"}},
                                         {"id": "net0", "kind": "iommu", "iommu_domain": 1}]})",
                             iommu.factory()),
              IsErrorWith(DmaErrc::kInvalidConfig,
                          AllOf(HasSubstr("devices[1] (net0): kind \"iommu\" with restricted_memory_access needs the "
                                          "top-level \"swiotlb\" pool"),
                                HasSubstr("would be handed private memory"))));
}

TEST(RestrictedIommuRefusal, PrivateSwiotlbNamesTheDeviceAndTheReason) {
  auto mem = make_memory();
  IommuPlatform iommu;
  EXPECT_THAT(build_platform(*mem, R"({"restricted_memory_access": true,
                                       "coherent_pool": {"base": "0x1000000", "size": "0x100000"},
                                       "swiotlb": {"base": "0x800000", "size": "0x100000"},
                                       "devices": [
                                         {"id": "blk0", "kind": "direct", "force_bounce": true},
                                         {"id": "net0", "kind": "iommu", "iommu_domain": 1}]})",
                             iommu.factory()),
              IsErrorWith(DmaErrc::kInvalidConfig,
                          AllOf(HasSubstr("devices[1] (net0): kind \"iommu\" with restricted_memory_access bounces "
                                          "through the swiotlb"),
                                HasSubstr(fmt::format("window {} + len 0x100000 is not all shared memory",
                                                      kPrivateSwiotlb)))));
}

TEST(RestrictedIommuRefusal, AFactoryThatDoesNotBounceIsRefused) {
  auto mem = make_memory();
  auto coherent = *CoherentPool::create(*mem, {kCoherent, 0x100000});
  bool saw_pool = false;
  IommuDmaFactory in_place = [&](const DeviceTopology&, const IommuDmaEnv& env) -> Result<std::unique_ptr<DmaOps>> {
    saw_pool = env.bounce != nullptr;
    return std::unique_ptr<DmaOps>(std::make_unique<IdentityDmaOps>(env.mem, coherent));
  };
  EXPECT_THAT(build_platform(*mem, R"({"restricted_memory_access": true,
                                       "coherent_pool": {"base": "0x1000000", "size": "0x100000"},
                                       "swiotlb": {"base": "0x1100000", "size": "0x200000"},
                                       "devices": [{"id": "gpu0", "kind": "iommu", "iommu_domain": 1}]})",
                             in_place),
              IsErrorWith(DmaErrc::kInvalidConfig,
                          AllOf(HasSubstr("devices[0] (gpu0): the IommuDmaFactory built \"bypass\" DMA ops, which do "
                                          "not bounce"),
                                HasSubstr("may reach only shared memory"))));
  EXPECT_TRUE(saw_pool) << "the factory was not handed the shared pool";
  // On an open platform the factory gets no pool and its ops are taken as they are.
  saw_pool = true;
  EXPECT_THAT(build_platform(*mem, R"({"coherent_pool": {"base": "0x1000000", "size": "0x100000"},
                                       "swiotlb": {"base": "0x1100000", "size": "0x200000"},
                                       "devices": [{"id": "gpu0", "kind": "iommu", "iommu_domain": 1}]})",
                             in_place),
              IsOk());
  EXPECT_FALSE(saw_pool);
}

TEST(RestrictedIommuRefusal, BouncingIommuOpsRefuseAPrivateCoherentWindow) {
  auto mem = make_memory();
  auto ioas = IoAddressSpace::create();
  auto paging = std::move(PagingDomain::create(*ioas)).value();
  ASSERT_THAT(paging->attach_device(DeviceId{1}, std::vector<IovaRange>{kMsiWindow}), IsOk());
  auto dom = std::move(IommuDmaDomain::create(*ioas, *paging, {})).value();
  auto pool = std::move(BouncePool::create(*mem, {.window = {kSwiotlb, 0x200000}, .min_areas = 1})).value();
  auto private_rings = std::move(CoherentPool::create(*mem, {Gpa{0x100000}, 0x10000})).value();
  EXPECT_THAT(IommuDmaOps::create(*mem, dom, {.coherent = private_rings, .bounce_pool = pool}),
              IsErrorWith(DmaErrc::kInvalidConfig,
                          AllOf(HasSubstr("coherent window gpa:0x100000 + len 0x10000 is private memory"),
                                HasSubstr("rings must be shared too"))));
  dom.reset();
}

TEST(RestrictedIommuRefusal, BouncingIdentityDomainMustTranslateThePool) {
  auto mem = make_memory();
  IdentityDomain identity;
  // The device's reserved region lies over the pool: its slots' addresses
  // (dma == gpa) would not reach memory.
  ASSERT_THAT(identity.attach_device(DeviceId{1}, std::vector<IovaRange>{{Iova(0x1180000), Iova(0x118ffff)}}),
              IsOk());
  auto dom = IommuDmaDomain::create_identity(identity);
  auto pool = std::move(BouncePool::create(*mem, {.window = {kSwiotlb, 0x200000}, .min_areas = 1})).value();
  auto rings = std::move(CoherentPool::create(*mem, {kCoherent, 0x10000})).value();
  EXPECT_THAT(IommuDmaOps::create(*mem, dom, {.coherent = rings, .bounce_pool = pool}),
              IsErrorWith(DmaErrc::kInvalidConfig,
                          AllOf(HasSubstr(fmt::format("bounce pool window {} + len 0x200000: ", kSwiotlb)),
                                HasSubstr("not covered by the identity domain"))));
}

}  // namespace
}  // namespace vdma
