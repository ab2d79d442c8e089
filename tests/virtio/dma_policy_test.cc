// DmaPolicy: the full table of negotiated features x restricted platform x
// per-device quirk, transport feature acceptance, the non-coherent rule,
// barriers, and selecting the DmaOps from a PlatformDma.
#include "vdma/virtio/dma_policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "result_matchers.h"
#include "vdma/virtio/features.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr uint64_t V1 = feature_bit(kFeatureVersion1);
constexpr uint64_t AP = feature_bit(kFeatureAccessPlatform);
constexpr uint64_t OP = feature_bit(kFeatureOrderPlatform);

// The negotiated sets of the table (AP without V1 is what a buggy or legacy
// transport could still present; the policy must judge it too).
constexpr uint64_t kSets[] = {0, V1, AP, V1 | AP, V1 | AP | OP, V1 | OP};
constexpr DmaQuirk kQuirks[] = {DmaQuirk::kNone, DmaQuirk::kUseDmaApi, DmaQuirk::kDeclineAccessPlatform};

// Expected outcome, written out row by row:
//   P platform DmaOps, B bypass, V refused naming VERSION_1, A refused naming
//   ACCESS_PLATFORM, X rejected (the quirk declines ACCESS_PLATFORM yet it was negotiated).
//                                         0    V1   AP   V1|AP V1|AP|OP V1|OP
constexpr char kOpen[3][6] = {/* none    */ {'B', 'B', 'P', 'P', 'P', 'B'},
                              /* use_api */ {'P', 'P', 'P', 'P', 'P', 'P'},
                              /* decline */ {'B', 'B', 'X', 'X', 'X', 'B'}};
constexpr char kRestricted[3][6] = {/* none    */ {'V', 'A', 'V', 'P', 'P', 'A'},
                                    /* use_api */ {'V', 'A', 'V', 'P', 'P', 'A'},
                                    /* decline */ {'V', 'A', 'V', 'P', 'P', 'A'}};

DmaPolicy policy_for(bool restricted, DmaQuirk q) {
  DmaPolicyConfig c;
  c.restricted_memory_access = restricted;
  if (q != DmaQuirk::kNone) c.quirks.emplace("dev0", q);
  return DmaPolicy(std::move(c));
}

TEST(DmaPolicy, FullTable) {
  int rows = 0;
  for (bool restricted : {false, true}) {
    for (int qi = 0; qi < 3; ++qi) {
      const DmaPolicy policy = policy_for(restricted, kQuirks[qi]);
      for (int fi = 0; fi < 6; ++fi) {
        const uint64_t f = kSets[fi];
        const char want = (restricted ? kRestricted : kOpen)[qi][fi];
        SCOPED_TRACE(fmt::format("restricted={} quirk={} features={}", restricted, to_string(kQuirks[qi]),
                                 describe_features(f)));
        auto d = policy.decide("dev0", f);
        auto ok = policy.features_ok("dev0", f);
        // A different device never inherits dev0's quirk.
        auto other = policy.decide("dev1", f);
        switch (want) {
          case 'P':
          case 'B':
            ASSERT_THAT(d, IsOk());
            EXPECT_THAT(ok, IsOk());
            EXPECT_EQ(d->path, want == 'P' ? DmaPath::kPlatform : DmaPath::kBypass);
            EXPECT_EQ(d->barriers, (f & OP) != 0 ? BarrierKind::kStrong : BarrierKind::kWeak);
            EXPECT_FALSE(d->reason.empty());
            break;
          case 'V':
            EXPECT_THAT(d, IsErrorWith(DmaErrc::kPlatformRefused,
                                       AllOf(HasSubstr("device dev0: device must provide VIRTIO_F_VERSION_1 (bit 32)"),
                                             HasSubstr("restricts memory access"))));
            EXPECT_THAT(ok, IsError(DmaErrc::kPlatformRefused));
            break;
          case 'A':
            EXPECT_THAT(d, IsErrorWith(DmaErrc::kPlatformRefused,
                                       HasSubstr("device must provide VIRTIO_F_ACCESS_PLATFORM (bit 33)")));
            EXPECT_THAT(ok, IsError(DmaErrc::kPlatformRefused));
            break;
          case 'X':
            EXPECT_THAT(d, IsErrorWith(BaseErrc::kInvalidArgument, HasSubstr("quirk decline_access_platform")));
            EXPECT_THAT(ok, IsError(BaseErrc::kInvalidArgument));
            break;
          default:
            FAIL() << "bad table entry";
        }
        const char plain = (restricted ? kRestricted : kOpen)[0][fi];
        if (plain == 'P' || plain == 'B') {
          ASSERT_THAT(other, IsOk());
          EXPECT_EQ(other->path, plain == 'P' ? DmaPath::kPlatform : DmaPath::kBypass);
        } else {
          EXPECT_THAT(other, IsError(DmaErrc::kPlatformRefused));
        }
        ++rows;
      }
    }
  }
  EXPECT_EQ(rows, 36);
}

TEST(DmaPolicy, QuirksCannotLiftTheRestrictedRefusalAndTheMessageSaysSo) {
  const DmaPolicy policy = policy_for(true, DmaQuirk::kUseDmaApi);
  EXPECT_THAT(policy.features_ok("dev0", V1),
              IsErrorWith(DmaErrc::kPlatformRefused,
                          AllOf(HasSubstr("negotiated VERSION_1"), HasSubstr("quirk use_dma_api cannot lift this"))));
}

TEST(DmaPolicy, TransportFeaturesAcceptAccessPlatformUnlessDeclined) {
  const uint64_t offered = V1 | AP | OP | feature_bit(kFeatureEventIdx) | feature_bit(kFeatureRingPacked);
  EXPECT_EQ(policy_for(false, DmaQuirk::kNone).transport_features("dev0", offered), AP | OP);
  EXPECT_EQ(policy_for(false, DmaQuirk::kUseDmaApi).transport_features("dev0", offered), AP | OP);
  EXPECT_EQ(policy_for(false, DmaQuirk::kDeclineAccessPlatform).transport_features("dev0", offered), OP);
  EXPECT_EQ(policy_for(false, DmaQuirk::kDeclineAccessPlatform).transport_features("dev1", offered), AP | OP);
  EXPECT_EQ(policy_for(true, DmaQuirk::kNone).transport_features("dev0", V1), 0u);

  // The whole handshake: accept what the policy says, negotiate, check, decide.
  const DmaPolicy policy = policy_for(false, DmaQuirk::kDeclineAccessPlatform);
  const uint64_t wanted = V1 | feature_bit(kFeatureEventIdx);
  auto f = negotiate_features(offered, wanted | policy.transport_features("dev0", offered));
  ASSERT_THAT(f, HasValue(V1 | OP | feature_bit(kFeatureEventIdx)));
  ASSERT_THAT(policy.features_ok("dev0", *f), IsOk());
  auto d = policy.decide("dev0", *f);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(d->path, DmaPath::kBypass);
  EXPECT_EQ(d->barriers, BarrierKind::kStrong);
  EXPECT_EQ(d->reason, "quirk decline_access_platform");
}

TEST(DmaPolicy, ANonCoherentDeviceNeedsOrderPlatformOnThePlatformPath) {
  DmaPolicyConfig c;
  c.non_coherent.insert("dev0");
  const DmaPolicy policy{c};
  EXPECT_THAT(policy.features_ok("dev0", V1 | AP),
              IsErrorWith(DmaErrc::kPlatformRefused,
                          AllOf(HasSubstr("device dev0: non-coherent device needs VIRTIO_F_ORDER_PLATFORM (bit 36)"),
                                HasSubstr("negotiated VERSION_1|ACCESS_PLATFORM"))));
  auto d = policy.decide("dev0", V1 | AP | OP);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(d->barriers, BarrierKind::kStrong);
  EXPECT_THAT(policy.decide("dev0", V1), IsOk());        // bypass: a software device
  EXPECT_THAT(policy.decide("dev1", V1 | AP), IsOk());   // another, coherent device
}

TEST(DmaPolicy, FromTopologyAndSelectingTheOps) {
  auto mem = *GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"},
                                   {Gpa{16 << 20}, 4 << 20, MemAttr::kShared, "shared"}});
  auto topo = parse_topology(R"({
      "coherent_pool": {"base": "0x1000000", "size": "0x100000"},
      "swiotlb": {"base": "0x1100000", "size": "0x100000"},
      "devices": [
        {"id": "blk0", "kind": "direct", "dma_mask": "0xffffffff"},
        {"id": "net0", "kind": "direct", "force_bounce": true, "coherent": false, "quirk": "use_dma_api"},
        {"id": "gpu0", "kind": "iommu", "iommu_domain": 7, "quirk": "decline_access_platform"}]})");
  ASSERT_THAT(topo, IsOk());
  const DmaPolicy policy = DmaPolicy::from_topology(*topo);
  EXPECT_FALSE(policy.config().restricted_memory_access);
  EXPECT_EQ(policy.quirk("net0"), DmaQuirk::kUseDmaApi);
  EXPECT_EQ(policy.quirk("gpu0"), DmaQuirk::kDeclineAccessPlatform);
  EXPECT_EQ(policy.quirk("blk0"), DmaQuirk::kNone);
  EXPECT_TRUE(policy.config().non_coherent.contains("net0"));
  auto platform = PlatformDma::create(*mem, *topo);
  ASSERT_THAT(platform, IsOk());

  auto pick = [&](const char* dev, uint64_t f) -> Result<DmaOps*> {
    const DmaDecision d = VDMA_TRY(policy.decide(dev, f));
    return select_dma_ops(**platform, dev, d);
  };
  auto blk = pick("blk0", V1 | AP);
  ASSERT_THAT(blk, IsOk());
  EXPECT_EQ((*blk)->kind(), "direct");
  auto legacy = pick("blk0", V1);
  ASSERT_THAT(legacy, IsOk());
  EXPECT_EQ((*legacy)->kind(), "bypass");
  // net0's quirk selects the (bouncing) platform ops without ACCESS_PLATFORM;
  // being non-coherent it still needs ORDER_PLATFORM.
  EXPECT_THAT(pick("net0", V1), IsErrorWith(DmaErrc::kPlatformRefused, HasSubstr("ORDER_PLATFORM")));
  auto net = pick("net0", V1 | OP);
  ASSERT_THAT(net, IsOk());
  EXPECT_EQ((*net)->kind(), "bounce");
  // gpu0 declines ACCESS_PLATFORM: bypass, and the IOMMU (not available yet) is never asked.
  auto gpu = pick("gpu0", V1);
  ASSERT_THAT(gpu, IsOk());
  EXPECT_EQ((*gpu)->kind(), "bypass");
  EXPECT_THAT((*platform)->platform_ops("gpu0"), IsError(DmaErrc::kUnavailable));
}

TEST(DmaPolicy, RestrictedTopologySelectsSharedMemoryOpsOnly) {
  auto mem = *GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"},
                                   {Gpa{16 << 20}, 4 << 20, MemAttr::kShared, "shared"}});
  auto topo = parse_topology(R"({
      "restricted_memory_access": true,
      "coherent_pool": {"base": "0x1000000", "size": "0x100000"},
      "swiotlb": {"base": "0x1100000", "size": "0x100000"},
      "devices": [
        {"id": "blk0", "kind": "direct", "force_bounce": true},
        {"id": "vsock0", "kind": "restricted", "restricted_pool": {"base": "0x1200000", "size": "0x100000"}}]})");
  ASSERT_THAT(topo, IsOk());
  const DmaPolicy policy = DmaPolicy::from_topology(*topo);
  auto platform = *PlatformDma::create(*mem, *topo);
  for (const char* dev : {"blk0", "vsock0"}) {
    EXPECT_THAT(policy.decide(dev, V1), IsError(DmaErrc::kPlatformRefused));
    auto d = policy.decide(dev, V1 | AP);
    ASSERT_THAT(d, IsOk());
    auto ops = select_dma_ops(*platform, dev, *d);
    ASSERT_THAT(ops, IsOk());
    auto m = (*ops)->map(Gpa{0x1000}, 64, DmaDirection::kToDevice);  // private RAM
    ASSERT_THAT(m, IsOk());
    EXPECT_TRUE(mem->is_all(Gpa{m->value()}, 64, MemAttr::kShared)) << dev;
    EXPECT_THAT((*ops)->unmap(*m, 64, DmaDirection::kToDevice), IsOk());
  }
}

}  // namespace
}  // namespace vdma
