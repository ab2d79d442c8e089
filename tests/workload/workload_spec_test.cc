// check_spec and check_ring_options: the usage errors vdma-bench reports
// before it starts anything, word for word.
#include <gmock/gmock.h>

#include "result_matchers.h"
#include "vdma/workload/workload.h"

namespace vdma::workload {
namespace {

using ::vdma::testing::IsErrorWith;
using ::vdma::testing::IsOk;

WorkloadSpec good() {
  return {.rw = RwMode::kRandRw, .block_size = 4096, .iodepth = 32, .queues = 1, .runtime = std::chrono::seconds(1)};
}

TEST(CheckSpec, AcceptsTheDefaults) { EXPECT_THAT(check_spec(good()), IsOk()); }

TEST(CheckSpec, BlockSizeMustBeAMultipleOf512) {
  WorkloadSpec s = good();
  s.block_size = 1000;
  EXPECT_THAT(check_spec(s), IsErrorWith(BaseErrc::kInvalidArgument, "--bs 1000: not a multiple of 512"));
  s.block_size = 0;
  EXPECT_THAT(check_spec(s), IsErrorWith(BaseErrc::kInvalidArgument, "--bs 0: not a multiple of 512"));
  s.block_size = 512;
  EXPECT_THAT(check_spec(s), IsOk());
}

TEST(CheckSpec, DepthAndQueuesInRange) {
  WorkloadSpec s = good();
  s.iodepth = 0;
  EXPECT_THAT(check_spec(s), IsErrorWith(BaseErrc::kInvalidArgument, "--iodepth 0: not in 1..32768"));
  s.iodepth = 32769;
  EXPECT_THAT(check_spec(s), IsErrorWith(BaseErrc::kInvalidArgument, "--iodepth 32769: not in 1..32768"));
  s = good();
  s.queues = 0;
  EXPECT_THAT(check_spec(s), IsErrorWith(BaseErrc::kInvalidArgument, "--queues 0: not in 1..256"));
}

TEST(CheckSpec, ARunMustEnd) {
  WorkloadSpec s = good();
  s.runtime = std::chrono::nanoseconds{0};
  EXPECT_THAT(check_spec(s),
              IsErrorWith(BaseErrc::kInvalidArgument, "--runtime 0 without --size: the run would not end"));
  s.size = 1 << 20;
  EXPECT_THAT(check_spec(s), IsOk()) << "--size ends it";
  s = good();
  s.runtime = std::chrono::milliseconds(-1500);
  EXPECT_THAT(check_spec(s), IsErrorWith(BaseErrc::kInvalidArgument, "--runtime -1.5: negative"));
  s = good();
  s.ramp_time = std::chrono::seconds(-1);
  EXPECT_THAT(check_spec(s), IsErrorWith(BaseErrc::kInvalidArgument, "--ramp-time -1: negative"));
}

TEST(CheckSpec, MixAndSpan) {
  WorkloadSpec s = good();
  s.read_percent = 101;
  EXPECT_THAT(check_spec(s), IsErrorWith(BaseErrc::kInvalidArgument, "--rwmixread 101: not a percentage"));
  s = good();
  s.iodepth = 8;
  s.span = 16384;
  EXPECT_THAT(check_spec(s),
              IsErrorWith(BaseErrc::kInvalidArgument,
                          "--span 16384 holds 4 blocks of 4096 bytes: fewer than --iodepth 8 x --queues 1"));
  s.span = 32768;
  EXPECT_THAT(check_spec(s), IsOk());
}

TEST(CheckRingOptions, SplitSizesArePowersOfTwo) {
  EXPECT_THAT(check_ring_options(RingFormat::kSplit, 100, 32),
              IsErrorWith(BaseErrc::kInvalidArgument,
                          "--queue-size 100: not a power of two (a split ring needs one; --ring packed takes any "
                          "size)"));
  EXPECT_THAT(check_ring_options(RingFormat::kPacked, 100, 32), IsOk());
  EXPECT_THAT(check_ring_options(RingFormat::kSplit, 32768, 32), IsOk());
  EXPECT_THAT(check_ring_options(RingFormat::kPacked, 0, 1),
              IsErrorWith(BaseErrc::kInvalidArgument, "--queue-size 0: not in 1..32768"));
  EXPECT_THAT(check_ring_options(RingFormat::kPacked, 40000, 1),
              IsErrorWith(BaseErrc::kInvalidArgument, "--queue-size 40000: not in 1..32768"));
}

TEST(CheckRingOptions, DepthFitsTheQueue) {
  EXPECT_THAT(check_ring_options(RingFormat::kSplit, 256, 300),
              IsErrorWith(BaseErrc::kInvalidArgument,
                          "--iodepth 300: above --queue-size 256 (a request takes at least one descriptor)"));
  EXPECT_THAT(check_ring_options(RingFormat::kSplit, 256, 256), IsOk());
}

}  // namespace
}  // namespace vdma::workload
