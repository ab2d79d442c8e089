// The front-end on a restricted (confidential) platform whose device sits
// behind an IOMMU (issue 13): the back-end is given shared memory only, the
// vIOMMU maps bounce slots only, so every IOTLB miss is answered and echo
// chains round-trip (before the fix the first miss resolved to private
// "ram", went unanswered and the request stalled). Set-ups that cannot be
// made safe are refused before the back-end sees any memory.
#include <unistd.h>

#include "frontend_test_util.h"
#include "vdma/frontend/backend_process.h"
#include "vdma/dma/topology.h"
#include "vdma/virtio/features.h"
#include "dma_mode_printer.h"

namespace vdma::frontend_testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// small_options(): ram is 4 MiB at gpa 0; the pools sit above it.
constexpr const char* kRestrictedIommu = R"({"restricted_memory_access": true,
    "coherent_pool": {"base": "0x1000000", "size": "0x100000"},
    "swiotlb": {"base": "0x1200000", "size": "0x200000"},
    "devices": [{"id": "blk0", "kind": "iommu", "iommu_domain": 1}]})";

class RestrictedIommuFrontend : public ::testing::TestWithParam<DmaMode> {};

TEST_P(RestrictedIommuFrontend, BouncesThroughTheVIommuAndSharesNoPrivateMemory) {
  const DmaMode mode = GetParam();
  auto t = parse_topology(kRestrictedIommu);
  ASSERT_THAT(t, IsOk());
  InProcessBackend backend;
  FrontendOptions o = small_options(mode);
  o.topology = *t;
  o.reply_timeout = std::chrono::milliseconds(2000);
  auto fe = VhostUserFrontend::create(backend.take_socket(), o);
  ASSERT_THAT(fe, IsOk());
  VirtioTransport& tr = **fe;
  EXPECT_TRUE(has_feature(tr.features(), kFeatureAccessPlatform));
  EXPECT_EQ((*fe)->platform().dma().platform_ops("blk0").value()->kind(), "iommu-bounce");

  // The back-end's memory table: the shared regions only, never ram.
  const GuestRegion& ram = (*fe)->platform().ram();
  const uint64_t ram_va = reinterpret_cast<uintptr_t>(ram.host().data());
  size_t shared = 0;
  for (const GuestRegion& r : (*fe)->memory().regions()) shared += r.is_shared() ? 1 : 0;
  EXPECT_EQ(backend.session().memory().regions().size(), shared);
  for (const auto& r : backend.session().memory().regions()) {
    EXPECT_FALSE(r.spec().user_range().overlaps(AddrRange<FrontVa>{FrontVa(ram_va), ram.size()}));
  }

  const bool premap = tr.premap_buffers();
  uint8_t seed = 1;
  for (uint32_t len : {1u, 512u, 4096u, 20000u, 65536u}) {
    for (uint32_t q = 0; q < 2; ++q) echo_round_trip(tr, q, len, seed++, premap);
  }
  EXPECT_EQ(backend.device().handled.load(), 10);

  // Every miss was answered (and every announced mapping accepted) from a
  // bounce slot or a ring; none pointed at private memory.
  const FrontendStats s = (*fe)->stats();
  EXPECT_GT(s.misses_served + s.updates_announced, 0u);
  EXPECT_EQ(s.updates_refused, 0u);
  // A MISS may cross its buffer's unmap (its announced UPDATE answered it
  // first): refused as unmapped. None is refused for private memory.
  EXPECT_EQ(s.misses_refused, s.misses_unmapped);
  EXPECT_EQ(s.access_failures, 0u);
  BouncePool* pool = (*fe)->platform().dma().swiotlb();
  ASSERT_NE(pool, nullptr);
  EXPECT_GT(pool->stats().high_water, 0u);
  IommuDmaDomain* dom = (*fe)->platform().iommu_domain();
  ASSERT_NE(dom, nullptr);

  // Process level: the back-end (same process) mapped the shared memfds a
  // second time, the private one never.
  auto names = mapped_memfd_names(::getpid());
  ASSERT_THAT(names, IsOk());
  EXPECT_EQ(count_mappings(*names, "ram"), 1u);
  EXPECT_EQ(count_mappings(*names, "swiotlb"), 2u);
}

INSTANTIATE_TEST_SUITE_P(IommuModes, RestrictedIommuFrontend,
                         ::testing::Values(DmaMode::kIommuStrict, DmaMode::kIommuLazy, DmaMode::kIommuPremapped,
                                           DmaMode::kRestricted),
                         [](const ::testing::TestParamInfo<DmaMode>& p) {
                           std::string n(to_string(p.param));
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(RestrictedIommuFrontendRefusal, NoSwiotlbIsRefusedBeforeTheBackEndSeesMemory) {
  auto t = parse_topology(R"({"restricted_memory_access": true,
      "coherent_pool": {"base": "0x1000000", "size": "0x100000"},
      "devices": [{"id": "blk0", "kind": "iommu", "iommu_domain": 1}]})");
  ASSERT_THAT(t, IsOk());
  InProcessBackend backend;
  FrontendOptions o = small_options(DmaMode::kIommuStrict);
  o.topology = *t;
  EXPECT_THAT(VhostUserFrontend::create(backend.take_socket(), o),
              IsErrorWith(DmaErrc::kInvalidConfig,
                          AllOf(HasSubstr("devices[0] (blk0): kind \"iommu\" with restricted_memory_access needs the "
                                          "top-level \"swiotlb\" pool"),
                                HasSubstr("private memory"))));
}

TEST(RestrictedIommuFrontendRefusal, RestrictedModeNeedsARestrictedTopology) {
  auto t = parse_topology(R"({"coherent_pool": {"base": "0x1000000", "size": "0x100000"},
      "swiotlb": {"base": "0x1200000", "size": "0x200000"},
      "devices": [{"id": "blk0", "kind": "iommu", "iommu_domain": 1}]})");
  ASSERT_THAT(t, IsOk());
  InProcessBackend backend;
  FrontendOptions o = small_options(DmaMode::kRestricted);
  o.topology = *t;
  EXPECT_THAT(VhostUserFrontend::create(backend.take_socket(), o),
              IsErrorWith(FrontendErrc::kInvalidOption,
                          "mode restricted (a confidential guest) needs a topology with \"restricted_memory_access\": "
                          "true; this one lets devices reach private memory"));
}

}  // namespace
}  // namespace vdma::frontend_testing
