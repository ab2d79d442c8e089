// Model-based randomized test of IoAddressSpace + PagingDomain: 100,000
// operations (25,000 under a sanitizer, see iterations.h) checked against
// IoasModel (tests/support/ioas_model.h), with
// sampled page-table translations after every operation and a full
// comparison of mappings, usable ranges and page-table leaves at checkpoints.
//
// The seed is fixed; set VDMA_IOAS_SEED to replay another one. A failure
// prints the seed, the operation index and the operation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "ioas_model_harness.h"
#include "iterations.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t kDefaultSeed = 0x10a5'5eed'2024ull;
const int kOps = testing::test_iterations(100'000);  // see iterations.h
constexpr int kCheckpointEvery = 2'000;
constexpr int kSamplesPerOp = 4;

uint64_t seed_from_env() {
  const char* s = std::getenv("VDMA_IOAS_SEED");
  return s != nullptr ? std::strtoull(s, nullptr, 0) : kDefaultSeed;
}

TEST(IoasModel, RandomOperationsMatchTheModel) {
  const uint64_t seed = seed_from_env();
  IoasModelHarness h;
  RngChoices rng(seed);
  for (int i = 0; i < kOps; ++i) {
    if (auto bad = h.step(rng)) FAIL() << "seed " << seed << " op " << i << ": " << *bad;
    if (auto bad = h.sample(rng, kSamplesPerOp)) {
      FAIL() << "seed " << seed << " after op " << i << " (" << h.last_op() << "): " << *bad;
    }
    if ((i + 1) % kCheckpointEvery == 0) {
      if (auto bad = h.check_full()) FAIL() << "seed " << seed << " checkpoint after op " << i << ": " << *bad;
    }
  }
  if (auto bad = h.check_full()) FAIL() << "seed " << seed << " final: " << *bad;

  // The generator must have reached every outcome that matters; otherwise
  // the comparison above proved less than it claims.
  const auto& seen = h.outcomes();
  for (const char* key : {"map_auto:ok", "map_auto:no_space", "map_auto:invalid_argument", "map_auto:overflow",
                          "map_fixed:ok", "map_fixed:misaligned", "map_fixed:reserved", "map_fixed:already_mapped",
                          "map_fixed:overflow", "unmap:ok", "unmap:would_split", "unmap:not_mapped",
                          "unmap:invalid_argument", "unmap:overflow", "copy:ok", "copy:would_split",
                          "copy:not_mapped", "copy:already_mapped", "attach:ok", "attach:conflict",
                          "attach:invalid_argument", "detach:ok", "detach:invalid_argument", "allow:ok",
                          "allow:conflict", "allow:misaligned", "allow:invalid_argument", "unmap_all:ok"}) {
    EXPECT_GT(seen.count(key) ? seen.at(key) : 0, 0u) << "outcome never produced: " << key;
  }
  std::string summary;
  for (const auto& [k, n] : seen) summary += fmt::format(" {}={}", k, n);
  std::printf("seed %#llx outcomes:%s\n", static_cast<unsigned long long>(seed), summary.c_str());

  // Unmapping everything frees every table but the roots.
  for (int w = 0; w < 2; ++w) {
    h.ioas(w).unmap_all();
    const PageTableStats s = h.domain(w).table().stats();
    EXPECT_EQ(s.tables[3] + s.tables[2] + s.tables[1], 0u);
    EXPECT_EQ(s.leaves[1] + s.leaves[2] + s.leaves[3], 0u);
  }
}

}  // namespace
}  // namespace vdma
