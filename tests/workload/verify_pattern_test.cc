#include "vdma/workload/verify_pattern.h"

#include <cstring>
#include <vector>

#include <gtest/gtest.h>

namespace vdma::workload {
namespace {

using Field = VerifyMismatch::Field;

std::vector<std::byte> block(size_t sectors, uint64_t lba, uint64_t gen) {
  std::vector<std::byte> b(sectors * kVerifySector);
  fill_block(b, lba, gen);
  return b;
}

TEST(VerifyPattern, FreshBlockChecksClean) {
  auto b = block(8, 800, 3);
  EXPECT_FALSE(check_block(b, 800, 3).has_value());
  VerifyHeader h;
  std::memcpy(&h, b.data() + 5 * kVerifySector, sizeof h);
  EXPECT_EQ(h.magic, kVerifyMagic);
  EXPECT_EQ(h.lba, 805u);
  EXPECT_EQ(h.generation, 3u);
}

TEST(VerifyPattern, EverySectorAndGenerationDiffers) {
  auto a = block(2, 10, 1);
  auto b = block(2, 10, 2);
  EXPECT_NE(0, std::memcmp(a.data() + 32, b.data() + 32, kVerifySector - 32));
  EXPECT_NE(0, std::memcmp(a.data() + 32, a.data() + kVerifySector + 32, kVerifySector - 32));
}

TEST(VerifyPattern, ZeroedSectorIsAMissingWrite) {
  auto b = block(8, 0, 1);
  std::memset(b.data() + 3 * kVerifySector, 0, kVerifySector);
  auto m = check_block(b, 0, 1);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->lba, 3u);
  EXPECT_EQ(m->field, Field::kMagic);
  EXPECT_EQ(m->expected, kVerifyMagic);
  EXPECT_EQ(m->actual, 0u);
  EXPECT_EQ(describe(*m), "lba 3: magic expected 0x48434e42414d4456, found 0x0 (no vdma-bench header: the write never landed)");
}

TEST(VerifyPattern, OtherSectorsDataIsMisdirected) {
  auto b = block(1, 64, 2);
  EXPECT_EQ(check_block(b, 72, 2)->field, Field::kLba);
  EXPECT_EQ(check_block(b, 72, 2)->expected, 72u);
  EXPECT_EQ(check_block(b, 72, 2)->actual, 64u);
}

TEST(VerifyPattern, OlderGenerationIsStale) {
  auto b = block(4, 100, 4);
  auto m = check_block(b, 100, 5);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->field, Field::kGeneration);
  EXPECT_EQ(m->expected, 5u);
  EXPECT_EQ(m->actual, 4u);
  EXPECT_EQ(describe(*m), "lba 100: generation expected 0x5, found 0x4 (stale data: a lost write)");
}

TEST(VerifyPattern, FlippedPayloadByteIsCorruption) {
  auto b = block(8, 0, 9);
  b[6 * kVerifySector + 300] ^= std::byte{0x10};
  auto m = check_block(b, 0, 9);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->lba, 6u);
  EXPECT_EQ(m->field, Field::kChecksum);
  EXPECT_NE(m->expected, m->actual);
}

TEST(VerifyPattern, FlippedChecksumFieldIsCorruption) {
  auto b = block(1, 0, 1);
  b[24] ^= std::byte{1};
  auto m = check_block(b, 0, 1);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->field, Field::kChecksum);
  EXPECT_EQ(m->actual ^ m->expected, 1u);
}

}  // namespace
}  // namespace vdma::workload
