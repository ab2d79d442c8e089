// Report: vdma-bench's results as a table for people, JSON for machines and
// a gnuplot chart.
//
//   BenchReport rep{.backend = "vdma-blk (spawned, null:1G)", .spec = spec, .rounds = 3};
//   rep.rows.push_back({.mode = "bypass", .round = 1, .result = r});   // every (round, mode) run
//   fmt::print("{}", format_table(rep));
//   fmt::print("{}\n", to_json(rep));
//   VDMA_TRY(plot_png(rep, "modes.png"));
//
// Rounds (vdma-bench --repeat N): every mode runs once per round, rounds in
// turn (A B C A B C ...), so slow drifts of the machine hit every mode alike.
// Each mode is summarized over the rounds it ran in: the median, min and
// max of IOPS, MB/s and each latency percentile, and of its ratio to the
// baseline mode (IOPS of the mode / IOPS of the baseline in the same round,
// one ratio per round). The spread of a figure is (max - min) / median;
// a ratio whose spread is above kRatioSpreadLimit (20%) is too wide to
// trust, and the table and the JSON say so.
//
// The table has one row per mode: median IOPS, MB/s, p50/p99/p99.9 latency
// in microseconds, the ratio to the baseline (when it ran and succeeded) and
// the verify result ("ok 8192" blocks checked, "FAIL 3", "error", or "-"
// without --verify); with more than one round a "min-max" row under it;
// with randrw a "reads" and a "writes" row. A mode that failed shows its
// error (the round it failed in, with more than one round).
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/workload/workload.h"

namespace vdma::workload {

// Above this relative spread ((max - min) / median) a ratio is not trusted.
inline constexpr double kRatioSpreadLimit = 0.20;

// One run of one mode.
struct ModeRow {
  std::string mode;
  uint32_t round = 1;  // 1-based
  WorkloadResult result;
  // Transport counters worth showing next to the figures (IOTLB misses
  // served, invalidations sent, ...), by name.
  std::map<std::string, uint64_t> counters;
  // Set when the mode could not run at all (negotiation failed, ...).
  std::string setup_error;

  [[nodiscard]] bool ok() const noexcept { return setup_error.empty() && result.ok(); }
};

// The median and range of one figure over rounds.
struct Spread {
  double median = 0;
  double min = 0;
  double max = 0;
  size_t samples = 0;
  // (max - min) / median: 0 when every sample is equal, infinity when the
  // median is 0 and the samples differ.
  [[nodiscard]] double relative() const noexcept;
};
// nullopt for no values. The median of an even count is the mean of the
// two middle values.
[[nodiscard]] std::optional<Spread> spread_of(std::vector<double> values);

struct ModeSummary {
  std::string mode;
  uint32_t rounds = 0;     // rounds the mode ran in
  uint32_t rounds_ok = 0;  // of them, the successful ones
  // Why the first failed round failed ("back-end does not offer ...",
  // "FAIL: 3 verify mismatches"), empty when none failed.
  std::string error;
  uint32_t error_round = 0;
  uint64_t verified_blocks = 0;  // over every round
  uint64_t verify_errors = 0;
  // Over the rounds that ran (were set up and not interrupted; a round
  // with verify mismatches or an I/O error counts: its figures stand);
  // nullopt when none did.
  std::optional<Spread> iops, mb_per_s, p50_ns, p99_ns, p999_ns;
  std::optional<Spread> read_iops, read_p50_ns, read_p99_ns, read_p999_ns;
  std::optional<Spread> write_iops, write_p50_ns, write_p99_ns, write_p999_ns;
  // The per-round ratios to the baseline (rounds where both ran).
  std::optional<Spread> ratio;

  [[nodiscard]] bool ok() const noexcept { return rounds > 0 && rounds_ok == rounds; }
  // At least two ratios and a relative spread above kRatioSpreadLimit.
  [[nodiscard]] bool ratio_spread_too_wide() const noexcept {
    return ratio && ratio->samples >= 2 && ratio->relative() > kRatioSpreadLimit;
  }
};

struct BenchReport {
  std::string backend;
  WorkloadSpec spec;
  uint32_t rounds = 1;            // rounds planned (--repeat)
  std::string baseline = "bypass";  // the mode ratios are taken to
  std::vector<ModeRow> rows;      // every run, in run order
  // Set when the run was cut short ("interrupted by SIGINT", "the back-end
  // ... was killed by signal 9"): the rows are those that finished.
  std::string stopped;

  // True when every row succeeded, there is at least one and nothing stopped the run.
  [[nodiscard]] bool ok() const noexcept;
  // The row's IOPS over the baseline's IOPS in the same round, when both
  // ran (were set up and not interrupted).
  [[nodiscard]] std::optional<double> ratio_to_baseline(const ModeRow& row) const noexcept;
  // One summary per mode, in the order the modes first ran.
  [[nodiscard]] std::vector<ModeSummary> summarize() const;
};

[[nodiscard]] std::string format_table(const BenchReport& report);
[[nodiscard]] std::string to_json(const BenchReport& report);
// Draws per mode the median IOPS (with its min-max) and the p50/p99/p99.9
// latencies on a log scale, each bar labelled with its value, into a PNG
// with gnuplot; a failed mode keeps its place, labelled "FAILED". Errors:
// BaseErrc::kSystem when gnuplot cannot be run or fails (its exit status and
// "install gnuplot" in the message).
[[nodiscard]] Result<void> plot_png(const BenchReport& report, const std::filesystem::path& out);
// The gnuplot data plot_png() draws: one line per mode, "name" iops iops_min
// iops_max p50_us p99_us p99.9_us; a failed mode has NaN figures and its
// name ends in " FAILED". Public for tests.
[[nodiscard]] std::string plot_data(const BenchReport& report);

}  // namespace vdma::workload
