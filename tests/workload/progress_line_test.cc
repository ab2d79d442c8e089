// ProgressLine: the live line's exact text in every phase, the last
// interval's rate (not the average) and the time left.
#include "vdma/workload/progress_line.h"

#include <gmock/gmock.h>

namespace vdma::workload {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

Progress measure(milliseconds elapsed, uint64_t ios) {
  return {.phase = RunPhase::kMeasure, .elapsed = elapsed, .ios = ios, .bytes = ios * 4096};
}

TEST(ProgressLine, RateIsThatOfTheLastInterval) {
  ProgressLine line({.mode = "iommu-lazy", .mode_index = 2, .mode_count = 6, .runtime = seconds(3), .runs_after = 4});
  // 1000 requests in the first 0.4 s, then 4000 in the next 0.4 s: the
  // second line shows 10000 IOPS, not the average of 6250. Time left: the
  // rest of this run and 4 runs of 3 s.
  EXPECT_EQ(line.format(measure(milliseconds(400), 1000)),
            "mode 2/6 iommu-lazy  measure 0.4/3.0 s  2500 IOPS  10.2 MB/s  ~15 s left");
  EXPECT_EQ(line.format(measure(milliseconds(800), 5000)),
            "mode 2/6 iommu-lazy  measure 0.8/3.0 s  10000 IOPS  41.0 MB/s  ~14 s left");
  // A stall shows at once.
  EXPECT_EQ(line.format(measure(milliseconds(1200), 5000)),
            "mode 2/6 iommu-lazy  measure 1.2/3.0 s  0 IOPS  0.0 MB/s  ~14 s left");
}

TEST(ProgressLine, RampRoundsAndTimeLeft) {
  ProgressLine line({.mode = "bypass", .mode_index = 1, .mode_count = 2, .round = 2, .rounds = 3,
                     .runtime = seconds(2), .ramp_time = seconds(1), .runs_after = 3});
  // 0.7 s of ramp and 2 s of runtime here, then 3 runs of 3 s.
  EXPECT_EQ(line.format({.phase = RunPhase::kRamp, .elapsed = milliseconds(300)}),
            "mode 1/2 bypass round 2/3  ramp 0.3/1.0 s (not measured)  ~12 s left");
}

TEST(ProgressLine, VerifyAndPrefillCountBlocks) {
  ProgressLine line({.mode = "restricted", .mode_index = 6, .mode_count = 6, .runtime = seconds(1)});
  EXPECT_EQ(line.format({.phase = RunPhase::kVerify, .blocks_done = 4096, .blocks_total = 16384}),
            "mode 6/6 restricted  verify read-back 4096/16384 blocks");
  EXPECT_EQ(line.format({.phase = RunPhase::kPrefill, .blocks_done = 10, .blocks_total = 20}),
            "mode 6/6 restricted  prefill 10/20 blocks  ~1 s left");
}

TEST(ProgressLine, SizeRunsShowBytesNotTime) {
  ProgressLine line({.mode = "bypass", .size = 1 << 20});
  EXPECT_EQ(line.format(measure(milliseconds(500), 64)),
            "mode 1/1 bypass  measure 0.5 s, 262144/1048576 bytes  128 IOPS  0.5 MB/s");
}

}  // namespace
}  // namespace vdma::workload
