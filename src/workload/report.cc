#include "vdma/workload/report.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "vdma/base/error.h"

namespace vdma::workload {
namespace {

double us(uint64_t ns) { return static_cast<double>(ns) / 1000.0; }

std::string verify_cell(const BenchReport& rep, const ModeRow& row) {
  if (!rep.spec.verify || !row.setup_error.empty()) return "-";
  if (row.result.verify_errors != 0) return fmt::format("FAIL {}", row.result.verify_errors);
  if (!row.result.error.empty()) return "error";
  return fmt::format("ok {}", row.result.verified_blocks);
}

std::string spec_line(const WorkloadSpec& s) {
  std::string limit;
  if (s.runtime.count() > 0) limit += fmt::format(" runtime={:.1f}s", std::chrono::duration<double>(s.runtime).count());
  if (s.size != 0) limit += fmt::format(" size={}", s.size);
  return fmt::format("rw={} bs={} iodepth={} queues={}{}{}", to_string(s.rw), s.block_size, s.iodepth, s.queues,
                     limit, s.verify ? " verify" : "");
}

}  // namespace

bool BenchReport::ok() const noexcept {
  for (const auto& r : rows) {
    if (!r.ok()) return false;
  }
  return !rows.empty();
}

std::optional<double> BenchReport::ratio_to_bypass(const ModeRow& row) const noexcept {
  for (const auto& r : rows) {
    if (r.mode == "bypass" && r.ok() && r.result.iops() > 0 && row.setup_error.empty()) {
      return row.result.iops() / r.result.iops();
    }
  }
  return std::nullopt;
}

std::string format_table(const BenchReport& rep) {
  std::string out = fmt::format("back-end: {}\nworkload: {}\n\n", rep.backend, spec_line(rep.spec));
  out += fmt::format("{:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}  {}\n", "mode", "IOPS", "MB/s", "p50 us", "p99 us",
                     "p99.9 us", "x bypass", "verify");
  for (const auto& row : rep.rows) {
    if (!row.setup_error.empty()) {
      out += fmt::format("{:<16} error: {}\n", row.mode, row.setup_error);
      continue;
    }
    const WorkloadResult& r = row.result;
    const auto ratio = rep.ratio_to_bypass(row);
    out += fmt::format("{:<16} {:>10.0f} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f} {:>8}  {}\n", row.mode, r.iops(),
                       r.mb_per_s(), us(r.latency.percentile(50)), us(r.latency.percentile(99)),
                       us(r.latency.percentile(99.9)), ratio ? fmt::format("{:.2f}", *ratio) : std::string("-"),
                       verify_cell(rep, row));
    if (!r.error.empty()) out += fmt::format("{:<16} error: {}\n", "", r.error);
    for (const auto& m : r.mismatches) out += fmt::format("{:<16} mismatch: {}\n", "", describe(m));
  }
  return out;
}

std::string to_json(const BenchReport& rep) {
  using nlohmann::json;
  const WorkloadSpec& s = rep.spec;
  json j;
  j["backend"] = rep.backend;
  j["workload"] = {{"rw", to_string(s.rw)},
                   {"bs", s.block_size},
                   {"iodepth", s.iodepth},
                   {"queues", s.queues},
                   {"runtime_s", std::chrono::duration<double>(s.runtime).count()},
                   {"size", s.size},
                   {"span", s.span},
                   {"verify", s.verify}};
  j["results"] = json::array();
  for (const auto& row : rep.rows) {
    json r;
    r["mode"] = row.mode;
    r["ok"] = row.ok();
    if (!row.setup_error.empty()) {
      r["error"] = row.setup_error;
      j["results"].push_back(r);
      continue;
    }
    const WorkloadResult& w = row.result;
    r["ios"] = w.ios;
    r["reads"] = w.reads;
    r["writes"] = w.writes;
    r["bytes"] = w.bytes;
    r["seconds"] = w.seconds();
    r["iops"] = w.iops();
    r["mb_per_s"] = w.mb_per_s();
    r["latency_ns"] = {{"min", w.latency.min()},
                       {"mean", w.latency.mean()},
                       {"p50", w.latency.percentile(50)},
                       {"p99", w.latency.percentile(99)},
                       {"p99.9", w.latency.percentile(99.9)},
                       {"max", w.latency.max()}};
    if (auto ratio = rep.ratio_to_bypass(row)) r["ratio_to_bypass"] = *ratio;
    if (s.verify) {
      json mism = json::array();
      for (const auto& m : w.mismatches) mism.push_back({{"lba", m.lba}, {"what", describe(m)}});
      r["verify"] = {{"blocks", w.verified_blocks}, {"errors", w.verify_errors}, {"mismatches", mism}};
    }
    if (!w.error.empty()) r["error"] = w.error;
    for (const auto& [name, value] : row.counters) r["counters"][name] = value;
    j["results"].push_back(r);
  }
  return j.dump(2);
}

Result<void> plot_png(const BenchReport& rep, const std::filesystem::path& out) {
  // The data goes through a temporary file: gnuplot's inline data blocks
  // cannot be reused by two plots in one multiplot.
  char data_path[] = "/tmp/vdma-bench-plot-XXXXXX";
  const int fd = mkstemp(data_path);
  if (fd < 0) return Unexpected(system_error("plot: mkstemp", errno));
  close(fd);
  {
    std::ofstream data(data_path);
    for (const auto& row : rep.rows) {
      if (!row.setup_error.empty()) continue;
      const auto& l = row.result.latency;
      data << fmt::format("\"{}\" {:.0f} {:.2f} {:.2f} {:.2f}\n", row.mode, row.result.iops(), us(l.percentile(50)),
                          us(l.percentile(99)), us(l.percentile(99.9)));
    }
  }
  const std::string script = fmt::format(
      "set terminal pngcairo size 1200,500 noenhanced\n"
      "set output '{}'\n"
      "set multiplot layout 1,2 title 'vdma-bench: {}'\n"
      "set style data histograms\nset style fill solid 0.8 border -1\nset boxwidth 0.8\n"
      "set xtics rotate by -30\nset grid ytics\nset yrange [0:*]\n"
      "set title 'IOPS'\nplot '{}' using 2:xtic(1) notitle lc rgb '#3070b0'\n"
      "set title 'latency (us)'\nset style histogram clustered gap 1\nset key top left\n"
      "plot '{}' using 3:xtic(1) title 'p50', '' using 4 title 'p99', '' using 5 title 'p99.9'\n"
      "unset multiplot\n",
      out.string(), spec_line(rep.spec), data_path, data_path);
  FILE* gp = popen("gnuplot 2>&1", "w");
  if (gp == nullptr) {
    std::remove(data_path);
    return Unexpected(system_error("plot: cannot run gnuplot (install gnuplot; scripts/install-deps does)", errno));
  }
  std::fputs(script.c_str(), gp);
  const int status = pclose(gp);
  std::remove(data_path);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return make_error(BaseErrc::kSystem,
                      "plot: gnuplot failed (exit status {}); is gnuplot installed? scripts/install-deps installs it",
                      status == -1 ? -1 : WEXITSTATUS(status));
  }
  return ok();
}

}  // namespace vdma::workload
