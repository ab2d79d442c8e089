// Report: vdma-bench's results as a table for people, JSON for machines and
// a gnuplot chart.
//
//   BenchReport rep{.backend = "vdma-blk (spawned, null:1G)", .spec = spec};
//   rep.rows.push_back({.mode = "bypass", .result = r});
//   fmt::print("{}", format_table(rep));
//   fmt::print("{}\n", to_json(rep));
//   VDMA_TRY(plot_png(rep, "modes.png"));
//
// The table has one row per mode: IOPS, MB/s, p50/p99/p99.9 latency in
// microseconds, the ratio of IOPS to the bypass row (when there is one that
// succeeded), and the verify result ("ok 8192" blocks checked, "FAIL 3", or
// "-" without --verify). A row whose mode could not run shows its error.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/workload/workload.h"

namespace vdma::workload {

struct ModeRow {
  std::string mode;
  WorkloadResult result;
  // Transport counters worth showing next to the figures (IOTLB misses
  // served, invalidations sent, ...), by name.
  std::map<std::string, uint64_t> counters;
  // Set when the mode could not run at all (negotiation failed, ...).
  std::string setup_error;

  [[nodiscard]] bool ok() const noexcept { return setup_error.empty() && result.ok(); }
};

struct BenchReport {
  std::string backend;
  WorkloadSpec spec;
  std::vector<ModeRow> rows;

  [[nodiscard]] bool ok() const noexcept;
  // IOPS of the row as a fraction of the bypass row's, or nullopt.
  [[nodiscard]] std::optional<double> ratio_to_bypass(const ModeRow& row) const noexcept;
};

[[nodiscard]] std::string format_table(const BenchReport& report);
[[nodiscard]] std::string to_json(const BenchReport& report);
// Draws IOPS and latency percentiles per mode side by side into a PNG with
// gnuplot. Errors: BaseErrc::kSystem when gnuplot cannot be run or fails
// (its exit status and "install gnuplot" in the message).
[[nodiscard]] Result<void> plot_png(const BenchReport& report, const std::filesystem::path& out);

}  // namespace vdma::workload
