#include "vdma/workload/progress_line.h"

#include <algorithm>

#include <fmt/format.h>

namespace vdma::workload {
namespace {

double secs(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

std::string ProgressLine::format(const Progress& p) {
  std::string line = fmt::format("mode {}/{} {}", c_.mode_index, c_.mode_count, c_.mode);
  if (c_.rounds > 1) line += fmt::format(" round {}/{}", c_.round, c_.rounds);
  line += "  ";
  // Seconds of ramp and runtime still to come in this run, when known.
  std::optional<double> left_here;
  switch (p.phase) {
    case RunPhase::kPrefill:
      line += fmt::format("prefill {}/{} blocks", p.blocks_done, p.blocks_total);
      if (c_.runtime.count() > 0) left_here = secs(c_.ramp_time + c_.runtime);
      break;
    case RunPhase::kRamp:
      line += fmt::format("ramp {:.1f}/{:.1f} s (not measured)", secs(p.elapsed), secs(c_.ramp_time));
      if (c_.runtime.count() > 0) left_here = std::max(0.0, secs(c_.ramp_time - p.elapsed)) + secs(c_.runtime);
      break;
    case RunPhase::kMeasure: {
      double rate_ios = 0;
      double rate_bytes = 0;
      const double span = secs(p.elapsed - (last_measure_ ? last_measure_->elapsed : std::chrono::nanoseconds{0}));
      if (span > 0) {
        rate_ios = static_cast<double>(p.ios - (last_measure_ ? last_measure_->ios : 0)) / span;
        rate_bytes = static_cast<double>(p.bytes - (last_measure_ ? last_measure_->bytes : 0)) / span;
      }
      last_measure_ = p;
      if (c_.runtime.count() > 0) {
        line += fmt::format("measure {:.1f}/{:.1f} s", secs(p.elapsed), secs(c_.runtime));
        left_here = std::max(0.0, secs(c_.runtime - p.elapsed));
      } else {
        line += fmt::format("measure {:.1f} s, {}/{} bytes", secs(p.elapsed), p.bytes, c_.size);
      }
      line += fmt::format("  {:.0f} IOPS  {:.1f} MB/s", rate_ios, rate_bytes / 1e6);
      break;
    }
    case RunPhase::kVerify:
      line += fmt::format("verify read-back {}/{} blocks", p.blocks_done, p.blocks_total);
      left_here = 0;
      break;
  }
  if (left_here && c_.runtime.count() > 0) {
    const double left = *left_here + c_.runs_after * secs(c_.ramp_time + c_.runtime);
    if (left >= 0.5) line += fmt::format("  ~{:.0f} s left", left);
  }
  return line;
}

}  // namespace vdma::workload
