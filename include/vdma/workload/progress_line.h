// ProgressLine: vdma-bench's live progress line, one per Progress report.
//
//   ProgressLine line({.mode = "iommu-lazy", .mode_index = 2, .mode_count = 6,
//                      .runtime = std::chrono::seconds(3)});
//   hooks.progress = [&](const Progress& p) { std::fprintf(stderr, "\r%s", line.format(p).c_str()); };
//
//   "mode 2/6 iommu-lazy  measure 1.5/3.0 s  412345 IOPS  1689.0 MB/s  ~14 s left"
//   "mode 2/6 iommu-lazy round 1/3  ramp 0.5/1.0 s (not measured)  ~17 s left"
//   "mode 2/6 iommu-lazy  verify read-back 4096/16384 blocks"
//
// The rate is that of the last interval (since the previous report of the
// measure phase), not the average since the start: a stall shows at once.
// "left" counts the rest of this run's ramp and runtime and the ramp and
// runtime of every run still to come; the verify passes are not counted
// (their length depends on what was written). With no runtime (a --size
// run) the line shows the bytes done instead of a time.
//
// Thread safety: none; one per run, fed from the thread that runs it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "vdma/workload/workload.h"

namespace vdma::workload {

struct ProgressContext {
  std::string mode;
  uint32_t mode_index = 1;  // 1-based
  uint32_t mode_count = 1;
  uint32_t round = 1;       // 1-based
  uint32_t rounds = 1;
  std::chrono::nanoseconds runtime{0};
  std::chrono::nanoseconds ramp_time{0};
  uint64_t size = 0;
  // Runs (mode x round) after this one.
  uint32_t runs_after = 0;
};

class ProgressLine {
 public:
  explicit ProgressLine(ProgressContext context) : c_(std::move(context)) {}
  // The line for `p` (no newline, no terminal control); remembers `p` as
  // the start of the next interval.
  [[nodiscard]] std::string format(const Progress& p);

 private:
  ProgressContext c_;
  std::optional<Progress> last_measure_;
};

}  // namespace vdma::workload
