#include "vdma/virtio/features.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "result_matchers.h"

namespace vdma {
namespace {

using ::testing::HasSubstr;
using namespace vdma::testing;

constexpr uint64_t f(unsigned b) { return feature_bit(b); }

TEST(Features, BitNumbersMatchTheSpec) {
  EXPECT_EQ(kFeatureIndirectDesc, 28u);
  EXPECT_EQ(kFeatureEventIdx, 29u);
  EXPECT_EQ(kFeatureVersion1, 32u);
  EXPECT_EQ(kFeatureAccessPlatform, 33u);
  EXPECT_EQ(kFeatureRingPacked, 34u);
  EXPECT_EQ(kFeatureInOrder, 35u);
  EXPECT_EQ(kFeatureOrderPlatform, 36u);
  EXPECT_EQ(kFeatureNotificationData, 38u);
}

TEST(Features, PackedWithoutVersion1IsRefused) {
  EXPECT_THAT(validate_features(f(kFeatureRingPacked)),
              IsErrorWith(VirtioErrc::kFeatureDependency, "RING_PACKED (34) requires VERSION_1 (32)"));
  EXPECT_THAT(validate_features(f(kFeatureRingPacked) | f(kFeatureVersion1)), IsOk());
}

TEST(Features, EveryHighBitNeedsVersion1) {
  for (unsigned bit : {kFeatureAccessPlatform, kFeatureInOrder, kFeatureOrderPlatform, kFeatureNotificationData, 40u}) {
    EXPECT_THAT(validate_features(f(bit)), IsError(VirtioErrc::kFeatureDependency)) << bit;
    EXPECT_THAT(validate_features(f(bit) | f(kFeatureVersion1)), IsOk()) << bit;
  }
  EXPECT_THAT(validate_features(f(kFeatureEventIdx) | f(kFeatureIndirectDesc)), IsOk());  // legacy-capable bits
}

TEST(Features, NegotiationRejectsBitsNotOffered) {
  const uint64_t offered = f(kFeatureVersion1) | f(kFeatureEventIdx);
  EXPECT_THAT(negotiate_features(offered, f(kFeatureVersion1)), HasValue(f(kFeatureVersion1)));
  EXPECT_THAT(negotiate_features(offered, f(kFeatureVersion1) | f(kFeatureRingPacked)),
              IsErrorWith(VirtioErrc::kFeatureNotOffered, HasSubstr("RING_PACKED")));
  EXPECT_THAT(negotiate_features(f(kFeatureRingPacked), f(kFeatureRingPacked)), IsError(VirtioErrc::kFeatureDependency));
}

TEST(Features, Describe) {
  EXPECT_EQ(describe_features(0), "none");
  EXPECT_EQ(describe_features(f(kFeatureEventIdx) | f(kFeatureVersion1) | f(40)), "EVENT_IDX|VERSION_1|bit 40");
}

}  // namespace
}  // namespace vdma
