// The front-end against our in-process BackendSession (EchoDevice) in every
// DMA mode: negotiation, the memory table each mode must give, the vrings,
// and echo chains whose bytes must come back exactly.
#include <unistd.h>

#include "frontend_test_util.h"
#include "vdma/frontend/backend_process.h"
#include "vdma/frontend/dma_mode.h"
#include "vdma/virtio/features.h"
#include "dma_mode_printer.h"

namespace vdma::frontend_testing {
namespace {

using ::testing::Each;
using ::testing::Ge;

using vhost_user::BackendRegion;

// The back-end's region for the front-end region `r` (matched by front-end
// address; the back-end keeps its table sorted by guest address).
const BackendRegion* backend_region_of(const BackendSession& s, const GuestRegion& r) {
  const uint64_t va = reinterpret_cast<uintptr_t>(r.host().data());
  for (const BackendRegion& b : s.memory().regions()) {
    if (b.spec().user_addr.value() == va) return &b;
  }
  return nullptr;
}

class FrontendModeTest : public ::testing::TestWithParam<DmaMode> {};

TEST_P(FrontendModeTest, QueuesComeUpAndEchoChainsRoundTrip) {
  const DmaMode mode = GetParam();
  InProcessBackend backend;
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(mode));
  ASSERT_THAT(fe, IsOk());
  VirtioTransport& t = **fe;

  const bool platform = is_iommu(mode) || mode == DmaMode::kRestricted;
  EXPECT_EQ(has_feature(t.features(), kFeatureAccessPlatform), platform) << to_string(mode);
  EXPECT_TRUE(has_feature(t.features(), kFeatureVersion1));
  EXPECT_TRUE(has_feature(t.features(), vhost_user::testing::kDeviceFeatureBit));
  EXPECT_EQ(backend.session().acked_features(), t.features());
  EXPECT_EQ(t.num_queues(), 2u);
  EXPECT_EQ(t.premap_buffers(), mode == DmaMode::kIommuPremapped);

  std::array<std::byte, 16> config{};
  ASSERT_THAT(t.read_config(0, config), IsOk());
  for (size_t i = 0; i < config.size(); ++i) EXPECT_EQ(config[i], std::byte(0xa0 + i)) << "config byte " << i;

  const bool premap = t.premap_buffers();
  uint8_t seed = 1;
  for (uint32_t len : {1u, 512u, 4096u, 20000u, 65536u}) {
    for (uint32_t q = 0; q < 2; ++q) echo_round_trip(t, q, len, seed++, premap);
  }
  EXPECT_EQ(backend.device().handled.load(), 10);

  const FrontendStats s = (*fe)->stats();
  if (is_iommu(mode)) {
    // New IOVAs are announced as they are mapped, so the back-end rarely
    // needs to ask (it still may: it can read the ring before the socket).
    EXPECT_GT(s.updates_announced, 0u);
  }
  if (mode == DmaMode::kIommuStrict || mode == DmaMode::kIommuPremapped) {
    EXPECT_GT(s.invalidates_sent, 0u);
  }
  if (!platform) {
    EXPECT_EQ(s.updates_sent, 0u);
  }
  EXPECT_EQ(s.misses_refused, s.misses_unmapped);  // only MISSes that crossed their buffer's unmap
  EXPECT_EQ(s.access_failures, 0u);
}

INSTANTIATE_TEST_SUITE_P(AllModes, FrontendModeTest, ::testing::ValuesIn(kAllDmaModes),
                         [](const ::testing::TestParamInfo<DmaMode>& p) {
                           std::string n(to_string(p.param));
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(FrontendModes, PackedRingsRoundTripInBypassAndIommuLazy) {
  for (DmaMode mode : {DmaMode::kBypass, DmaMode::kIommuLazy}) {
    SCOPED_TRACE(to_string(mode));
    InProcessBackend backend;
    FrontendOptions o = small_options(mode);
    o.ring_format = RingFormat::kPacked;
    auto fe = VhostUserFrontend::create(backend.take_socket(), o);
    ASSERT_THAT(fe, IsOk());
    EXPECT_TRUE(has_feature((*fe)->features(), kFeatureRingPacked));
    for (uint32_t i = 0; i < 20; ++i) echo_round_trip(**fe, i % 2, 3000 + i, static_cast<uint8_t>(i), false);
    EXPECT_EQ(backend.device().handled.load(), 20);
    if (mode == DmaMode::kIommuLazy) {
      // Unmaps are queued and flushed in batches by age (10 ms), by the
      // front-end's tick: some invalidation has gone out by now.
      for (int i = 0; i < 500 && (*fe)->stats().invalidates_sent == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      EXPECT_GT((*fe)->stats().invalidates_sent, 0u);
      EXPECT_GT((*fe)->stats().misses_served + (*fe)->stats().updates_announced, 0u);
    }
  }
}

TEST(FrontendModes, PollingModeHasNoInterruptFds) {
  InProcessBackend backend;
  FrontendOptions o = small_options(DmaMode::kBypass);
  o.polling = true;
  auto fe = VhostUserFrontend::create(backend.take_socket(), o);
  ASSERT_THAT(fe, IsOk());
  EXPECT_EQ((*fe)->interrupt_fd(0), -1);
  EXPECT_EQ((*fe)->interrupt_fd(1), -1);
  echo_round_trip(**fe, 0, 4096, 7, false);
  echo_round_trip(**fe, 1, 100, 8, false);
}

TEST(FrontendModes, BypassTableIsEveryRegionAtItsGpa) {
  InProcessBackend backend;
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kBypass));
  ASSERT_THAT(fe, IsOk());
  const auto regions = (*fe)->memory().regions();
  ASSERT_EQ(backend.session().memory().regions().size(), regions.size());
  for (const GuestRegion& r : regions) {
    const BackendRegion* b = backend_region_of(backend.session(), r);
    ASSERT_NE(b, nullptr) << r.name();
    EXPECT_EQ(b->spec().guest_addr.value(), r.base().value()) << r.name();
    EXPECT_EQ(b->size(), r.size());
  }
}

TEST(FrontendModes, OffsetTableIsGivenInBusAddresses) {
  InProcessBackend backend;
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kOffset));
  ASSERT_THAT(fe, IsOk());
  const auto regions = (*fe)->memory().regions();
  ASSERT_EQ(backend.session().memory().regions().size(), regions.size());
  for (const GuestRegion& r : regions) {
    const BackendRegion* b = backend_region_of(backend.session(), r);
    ASSERT_NE(b, nullptr) << r.name();
    EXPECT_EQ(b->spec().guest_addr.value(), r.base().value() + kBuiltinBusOffset) << r.name();
  }
  // A mapped buffer's DMA address is its bus address too.
  const Gpa buf = *(*fe)->alloc_buffer(4096, 4096);
  auto d = (*fe)->dma().map(buf, 4096, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(d->value(), buf.value() + kBuiltinBusOffset);
  ASSERT_THAT((*fe)->dma().unmap(*d, 4096, DmaDirection::kToDevice), IsOk());
}

TEST(FrontendModes, EncryptionBitTableSetsTheCBitForPrivateMemoryOnly) {
  InProcessBackend backend;
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kEncryptionBit));
  ASSERT_THAT(fe, IsOk());
  const auto regions = (*fe)->memory().regions();
  ASSERT_EQ(backend.session().memory().regions().size(), regions.size());
  const uint64_t cbit = uint64_t{1} << kBuiltinEncryptionBit;
  for (const GuestRegion& r : regions) {
    const BackendRegion* b = backend_region_of(backend.session(), r);
    ASSERT_NE(b, nullptr) << r.name();
    EXPECT_EQ(b->spec().guest_addr.value(), r.base().value() | (r.is_shared() ? 0 : cbit)) << r.name();
  }
}

TEST(FrontendModes, RestrictedSharesOnlySharedRegionsAndNeverThePrivateMemfd) {
  InProcessBackend backend;
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kRestricted));
  ASSERT_THAT(fe, IsOk());
  const GuestRegion& ram = (*fe)->platform().ram();
  EXPECT_FALSE(ram.is_shared());

  // What the back-end received: only the shared regions, none of ram's
  // front-end addresses.
  const auto& table = backend.session().memory().regions();
  size_t shared = 0;
  for (const GuestRegion& r : (*fe)->memory().regions()) shared += r.is_shared() ? 1 : 0;
  EXPECT_EQ(table.size(), shared);
  const uint64_t ram_va = reinterpret_cast<uintptr_t>(ram.host().data());
  for (const auto& r : table) {
    const AddrRange<FrontVa> user = r.spec().user_range();
    EXPECT_FALSE(user.overlaps(AddrRange<FrontVa>{FrontVa(ram_va), ram.size()}));
  }
  // The identity grants went out right after negotiation, one per region.
  EXPECT_EQ((*fe)->stats().updates_sent, shared);

  // Process level: the back-end (same process) mapped every shared memfd a
  // second time, the private one never.
  echo_round_trip(**fe, 0, 8192, 3, false);
  auto names = mapped_memfd_names(::getpid());
  ASSERT_THAT(names, IsOk());
  EXPECT_EQ(count_mappings(*names, "ram"), 1u);
  EXPECT_EQ(count_mappings(*names, "swiotlb"), 2u);
  EXPECT_EQ(count_mappings(*names, "coherent"), 2u);

  // Every buffer bounced: the device saw only swiotlb addresses.
  BouncePool* pool = (*fe)->platform().dma().swiotlb();
  ASSERT_NE(pool, nullptr);
  EXPECT_GT(pool->stats().high_water, 0u);
}

TEST(FrontendModes, BuiltinTopologiesMatchTheContractTable) {
  const GuestLayout l = default_layout(8 << 20, 1 << 20, 2 << 20);
  EXPECT_EQ(l.ram.start, Gpa{0});
  EXPECT_EQ(l.coherent.start, Gpa{8 << 20});
  EXPECT_EQ(l.bounce.start, Gpa{10 << 20});
  EXPECT_EQ(builtin_topology(DmaMode::kBypass, l, "d").devices[0].quirk, DmaQuirk::kDeclineAccessPlatform);
  EXPECT_EQ(builtin_topology(DmaMode::kIommuLazy, l, "d").devices[0].kind, DeviceDmaKind::kIommu);
  const PlatformTopology r = builtin_topology(DmaMode::kRestricted, l, "d");
  EXPECT_TRUE(r.restricted_memory_access);
  EXPECT_TRUE(r.devices[0].force_bounce);
  ASSERT_TRUE(r.swiotlb.has_value());
  EXPECT_EQ(r.swiotlb->window, l.bounce);
  EXPECT_EQ(builtin_topology(DmaMode::kOffset, l, "d").devices[0].quirk, DmaQuirk::kUseDmaApi);
  EXPECT_EQ(builtin_topology(DmaMode::kEncryptionBit, l, "d").devices[0].encryption_bit, kBuiltinEncryptionBit);
}

TEST(FrontendModes, ModeNamesRoundTripAndUnknownNamesListTheValidOnes) {
  for (DmaMode m : kAllDmaModes) EXPECT_THAT(parse_dma_mode(to_string(m)), ::vdma::testing::HasValue(m));
  EXPECT_THAT(parse_dma_mode("iommu"),
              IsErrorWith(FrontendErrc::kInvalidOption,
                          "unknown DMA mode 'iommu'; valid modes: bypass, iommu-strict, iommu-lazy, iommu-premapped, "
                          "restricted, offset, encryption-bit"));
}

TEST(FrontendModes, BuffersAreZeroedAlignedAndInPrivateRam) {
  InProcessBackend backend;
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kBypass));
  ASSERT_THAT(fe, IsOk());
  const Gpa a = *(*fe)->alloc_buffer(100, 512);
  EXPECT_TRUE(a.is_aligned(512));
  EXPECT_TRUE((*fe)->platform().ram().range().contains(a, 100));
  ASSERT_THAT((*fe)->memory().fill(a, 100, std::byte{0x5a}), IsOk());
  ASSERT_THAT((*fe)->free_buffer(a, 100), IsOk());
  const Gpa b = *(*fe)->alloc_buffer(100, 512);
  std::vector<std::byte> got(100);
  ASSERT_THAT((*fe)->memory().read(b, got), IsOk());
  EXPECT_THAT(got, Each(std::byte{0}));
  EXPECT_THAT((*fe)->free_buffer(Gpa{b.value() + 4096}, 100), IsError(BaseErrc::kInvalidArgument));
  EXPECT_THAT((*fe)->alloc_buffer(0, 512), IsError(BaseErrc::kInvalidArgument));
}

}  // namespace
}  // namespace vdma::frontend_testing
