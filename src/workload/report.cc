#include "vdma/workload/report.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "vdma/base/error.h"

namespace vdma::workload {
namespace {

double us(double ns) { return ns / 1000.0; }

std::string spec_line(const BenchReport& rep) {
  const WorkloadSpec& s = rep.spec;
  std::string limit;
  if (s.ramp_time.count() > 0) {
    limit += fmt::format(" ramp={:.1f}s", std::chrono::duration<double>(s.ramp_time).count());
  }
  if (s.runtime.count() > 0) limit += fmt::format(" runtime={:.1f}s", std::chrono::duration<double>(s.runtime).count());
  if (s.size != 0) limit += fmt::format(" size={}", s.size);
  if (s.rw == RwMode::kRandRw) limit += fmt::format(" rwmixread={}", s.read_percent);
  return fmt::format("rw={} bs={} iodepth={} queues={}{} seed={}{}{}", to_string(s.rw), s.block_size, s.iodepth,
                     s.queues, limit, s.seed, s.verify ? " verify" : "",
                     rep.rounds > 1 ? fmt::format(" rounds={}", rep.rounds) : std::string());
}

// Whether a run was set up and measured to its end: its figures stand even
// when it failed (verify mismatches, an I/O error).
bool ran(const ModeRow& row) { return row.setup_error.empty() && row.result.interrupted.empty(); }

// Why a run failed, in a few words.
std::string row_error(const ModeRow& row) {
  if (!row.setup_error.empty()) return row.setup_error;
  if (!row.result.error.empty()) return row.result.error;
  if (!row.result.interrupted.empty()) return row.result.interrupted;
  return fmt::format("{} verify mismatches", row.result.verify_errors);
}

std::optional<Spread> spread_over(const std::vector<const ModeRow*>& rows, double (*figure)(const WorkloadResult&)) {
  std::vector<double> v;
  for (const ModeRow* r : rows) v.push_back(figure(r->result));
  return spread_of(std::move(v));
}

// A number short enough for a min-max cell: 621k, 1.63M, 12.3, 0.71.
std::string short_num(double v) {
  if (!std::isfinite(v)) return "-";
  if (v >= 1e8) return fmt::format("{:.0f}M", v / 1e6);
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e4) return fmt::format("{:.0f}k", v / 1e3);
  if (v >= 100) return fmt::format("{:.0f}", v);
  if (v >= 10) return fmt::format("{:.1f}", v);
  return fmt::format("{:.2f}", v);
}

std::string range(const std::optional<Spread>& s, double scale = 1.0) {
  if (!s) return "-";
  return short_num(s->min * scale) + "-" + short_num(s->max * scale);
}

std::string median(const std::optional<Spread>& s, const char* format, double scale = 1.0) {
  if (!s) return "-";
  return fmt::format(fmt::runtime(format), s->median * scale);
}

std::string verify_cell(const BenchReport& rep, const ModeSummary& m) {
  if (!rep.spec.verify) return "-";
  if (m.verify_errors != 0) return fmt::format("FAIL {}", m.verify_errors);
  if (!m.ok()) return "error";
  return fmt::format("ok {}", m.verified_blocks);
}

// mode, IOPS, MB/s, p50, p99, p99.9, ratio, verify.
std::string table_row(std::string_view mode, const std::string& iops, const std::string& mbs, const std::string& p50,
                      const std::string& p99, const std::string& p999, const std::string& ratio,
                      const std::string& verify) {
  std::string line =
      fmt::format("{:<16} {:>11} {:>10} {:>10} {:>10} {:>10} {:>9}  {}", mode, iops, mbs, p50, p99, p999, ratio, verify);
  line.erase(line.find_last_not_of(' ') + 1);
  return line + "\n";
}

nlohmann::json spread_json(const std::optional<Spread>& s) {
  if (!s) return nullptr;
  return {{"median", s->median}, {"min", s->min}, {"max", s->max}};
}

nlohmann::json latency_json(const LatencyHistogram& l) {
  return {{"min", l.min()},
          {"mean", l.mean()},
          {"p50", l.percentile(50)},
          {"p99", l.percentile(99)},
          {"p99.9", l.percentile(99.9)},
          {"max", l.max()},
          {"count", l.count()}};
}

}  // namespace

double Spread::relative() const noexcept {
  if (max == min) return 0;
  if (median == 0) return std::numeric_limits<double>::infinity();
  return (max - min) / median;
}

std::optional<Spread> spread_of(std::vector<double> values) {
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  Spread s;
  s.samples = n;
  s.min = values.front();
  s.max = values.back();
  s.median = n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  return s;
}

bool BenchReport::ok() const noexcept {
  if (!stopped.empty()) return false;
  for (const auto& r : rows) {
    if (!r.ok()) return false;
  }
  return !rows.empty();
}

std::optional<double> BenchReport::ratio_to_baseline(const ModeRow& row) const noexcept {
  if (!ran(row)) return std::nullopt;
  for (const auto& r : rows) {
    if (r.mode == baseline && r.round == row.round && ran(r) && r.result.iops() > 0) {
      return row.result.iops() / r.result.iops();
    }
  }
  return std::nullopt;
}

std::vector<ModeSummary> BenchReport::summarize() const {
  std::vector<ModeSummary> out;
  for (const auto& row : rows) {
    if (std::none_of(out.begin(), out.end(), [&](const ModeSummary& m) { return m.mode == row.mode; })) {
      out.push_back({.mode = row.mode});
    }
  }
  for (ModeSummary& m : out) {
    std::vector<const ModeRow*> good;
    std::vector<double> ratios;
    for (const auto& row : rows) {
      if (row.mode != m.mode) continue;
      ++m.rounds;
      m.verified_blocks += row.result.verified_blocks;
      m.verify_errors += row.result.verify_errors;
      if (!row.ok() && m.error.empty()) {
        m.error = row_error(row);
        m.error_round = row.round;
      }
      if (row.ok()) ++m.rounds_ok;
      if (!ran(row)) continue;
      good.push_back(&row);
      if (auto r = ratio_to_baseline(row)) ratios.push_back(*r);
    }
    const auto pct = [](double p) {
      return [p](const LatencyHistogram& h) { return static_cast<double>(h.percentile(p)); };
    };
    m.iops = spread_over(good, [](const WorkloadResult& r) { return r.iops(); });
    m.mb_per_s = spread_over(good, [](const WorkloadResult& r) { return r.mb_per_s(); });
    m.p50_ns = spread_over(good, [](const WorkloadResult& r) { return static_cast<double>(r.latency.percentile(50)); });
    m.p99_ns = spread_over(good, [](const WorkloadResult& r) { return static_cast<double>(r.latency.percentile(99)); });
    m.p999_ns =
        spread_over(good, [](const WorkloadResult& r) { return static_cast<double>(r.latency.percentile(99.9)); });
    // Only rounds that did reads (writes) have read (write) figures.
    std::vector<const ModeRow*> with_reads, with_writes;
    for (const ModeRow* r : good) {
      if (r->result.reads != 0) with_reads.push_back(r);
      if (r->result.writes != 0) with_writes.push_back(r);
    }
    m.read_iops = spread_over(with_reads, [](const WorkloadResult& r) { return r.read_iops(); });
    m.write_iops = spread_over(with_writes, [](const WorkloadResult& r) { return r.write_iops(); });
    const auto latency_of = [&pct](const std::vector<const ModeRow*>& rs, bool reads, double p) {
      std::vector<double> v;
      for (const ModeRow* r : rs) v.push_back(pct(p)(reads ? r->result.read_latency : r->result.write_latency));
      return spread_of(std::move(v));
    };
    m.read_p50_ns = latency_of(with_reads, true, 50);
    m.read_p99_ns = latency_of(with_reads, true, 99);
    m.read_p999_ns = latency_of(with_reads, true, 99.9);
    m.write_p50_ns = latency_of(with_writes, false, 50);
    m.write_p99_ns = latency_of(with_writes, false, 99);
    m.write_p999_ns = latency_of(with_writes, false, 99.9);
    m.ratio = spread_of(std::move(ratios));
  }
  return out;
}

std::string format_table(const BenchReport& rep) {
  std::string out = fmt::format("back-end: {}\nworkload: {}\n\n", rep.backend, spec_line(rep));
  const bool several = rep.rounds > 1;
  const std::string ratio_head = rep.baseline == "bypass" ? "x bypass" : "x base";
  out += table_row(several ? "mode (median)" : "mode", "IOPS", "MB/s", "p50 us", "p99 us",
                     "p99.9 us", ratio_head, "verify");
  const std::vector<ModeSummary> summaries = rep.summarize();
  std::vector<const ModeSummary*> too_wide;
  bool any_ratio = false;
  for (const ModeSummary& m : summaries) {
    if (!m.iops) {
      out += several ? fmt::format("{:<16} error in round {}: {}\n", m.mode, m.error_round, m.error)
                     : fmt::format("{:<16} error: {}\n", m.mode, m.error);
    } else {
      std::string ratio = median(m.ratio, "{:.2f}");
      if (m.ratio_spread_too_wide()) {
        ratio += "!";
        too_wide.push_back(&m);
      }
      any_ratio = any_ratio || (m.ratio.has_value() && m.mode != rep.baseline);
      out += table_row(m.mode, median(m.iops, "{:.0f}"), median(m.mb_per_s, "{:.1f}"),
                         median(m.p50_ns, "{:.1f}", 1e-3), median(m.p99_ns, "{:.1f}", 1e-3),
                         median(m.p999_ns, "{:.1f}", 1e-3), ratio, verify_cell(rep, m));
      if (several) {
        out += table_row("  min-max", range(m.iops), range(m.mb_per_s),
                           range(m.p50_ns, 1e-3), range(m.p99_ns, 1e-3), range(m.p999_ns, 1e-3), range(m.ratio),
                           fmt::format("{}/{} rounds ok", m.rounds_ok, m.rounds));
      }
      if (rep.spec.rw == RwMode::kRandRw) {
        const double bs_mb = rep.spec.block_size / 1e6;
        out += table_row("  reads", median(m.read_iops, "{:.0f}"),
                           median(m.read_iops, "{:.1f}", bs_mb), median(m.read_p50_ns, "{:.1f}", 1e-3),
                           median(m.read_p99_ns, "{:.1f}", 1e-3), median(m.read_p999_ns, "{:.1f}", 1e-3), "", "");
        out += table_row("  writes", median(m.write_iops, "{:.0f}"),
                           median(m.write_iops, "{:.1f}", bs_mb), median(m.write_p50_ns, "{:.1f}", 1e-3),
                           median(m.write_p99_ns, "{:.1f}", 1e-3), median(m.write_p999_ns, "{:.1f}", 1e-3), "", "");
      }
      // Verify mismatches show in the verify column and the mismatch lines.
      if (!m.error.empty() && m.verify_errors == 0) {
        out += fmt::format("{:<16} error{}: {}\n", "",
                           several ? fmt::format(" in round {}", m.error_round) : std::string(), m.error);
      }
    }
    for (const auto& row : rep.rows) {
      if (row.mode != m.mode) continue;
      for (const auto& mm : row.result.mismatches) out += fmt::format("{:<16} mismatch: {}\n", "", describe(mm));
    }
  }
  if (!too_wide.empty()) {
    out += fmt::format("\n! the ratio's spread ((max - min) / median of the per-round ratios) is above {:.0f}%: too "
                       "wide to trust:",
                       kRatioSpreadLimit * 100);
    for (size_t i = 0; i < too_wide.size(); ++i) {
      out += fmt::format("{} {} {:.0f}%", i == 0 ? "" : ",", too_wide[i]->mode, too_wide[i]->ratio->relative() * 100);
    }
    out += "\n";
  } else if (any_ratio && !several) {
    out += "\none round: no spread to judge the ratios by (--repeat 3 or more)\n";
  }
  if (!rep.stopped.empty()) out += fmt::format("\nstopped: {}; the table holds the runs that finished\n", rep.stopped);
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
                   {"ramp_time_s", std::chrono::duration<double>(s.ramp_time).count()},
                   {"size", s.size},
                   {"span", s.span},
                   {"rwmixread", s.read_percent},
                   {"seed", s.seed},
                   {"verify", s.verify}};
  j["rounds"] = rep.rounds;
  j["baseline"] = rep.baseline;
  j["ratio_spread_limit"] = kRatioSpreadLimit;
  j["ok"] = rep.ok();
  if (!rep.stopped.empty()) j["stopped"] = rep.stopped;
  j["results"] = json::array();
  for (const ModeSummary& m : rep.summarize()) {
    json r;
    r["mode"] = m.mode;
    r["ok"] = m.ok();
    r["rounds"] = m.rounds;
    r["rounds_ok"] = m.rounds_ok;
    if (!m.error.empty()) r["error"] = {{"round", m.error_round}, {"what", m.error}};
    r["iops"] = spread_json(m.iops);
    r["mb_per_s"] = spread_json(m.mb_per_s);
    r["latency_ns"] = {{"p50", spread_json(m.p50_ns)}, {"p99", spread_json(m.p99_ns)}, {"p99.9", spread_json(m.p999_ns)}};
    r["read"] = {{"iops", spread_json(m.read_iops)},
                 {"latency_ns",
                  {{"p50", spread_json(m.read_p50_ns)}, {"p99", spread_json(m.read_p99_ns)},
                   {"p99.9", spread_json(m.read_p999_ns)}}}};
    r["write"] = {{"iops", spread_json(m.write_iops)},
                  {"latency_ns",
                   {{"p50", spread_json(m.write_p50_ns)}, {"p99", spread_json(m.write_p99_ns)},
                    {"p99.9", spread_json(m.write_p999_ns)}}}};
    if (m.ratio) {
      json ratio = spread_json(m.ratio);
      ratio["spread"] = m.ratio->relative();
      ratio["too_wide"] = m.ratio_spread_too_wide();
      r["ratio_to_baseline"] = ratio;
    } else {
      r["ratio_to_baseline"] = nullptr;
    }
    if (s.verify) r["verify"] = {{"blocks", m.verified_blocks}, {"errors", m.verify_errors}};
    r["runs"] = json::array();
    for (const auto& row : rep.rows) {
      if (row.mode != m.mode) continue;
      json run;
      run["round"] = row.round;
      run["ok"] = row.ok();
      if (!row.setup_error.empty()) {
        run["error"] = row.setup_error;
        r["runs"].push_back(run);
        continue;
      }
      const WorkloadResult& w = row.result;
      run["ios"] = w.ios;
      run["reads"] = w.reads;
      run["writes"] = w.writes;
      run["bytes"] = w.bytes;
      run["seconds"] = w.seconds();
      run["iops"] = w.iops();
      run["mb_per_s"] = w.mb_per_s();
      run["latency_ns"] = latency_json(w.latency);
      run["read_latency_ns"] = latency_json(w.read_latency);
      run["write_latency_ns"] = latency_json(w.write_latency);
      if (auto ratio = rep.ratio_to_baseline(row)) run["ratio_to_baseline"] = *ratio;
      if (s.verify) {
        json mism = json::array();
        for (const auto& mm : w.mismatches) mism.push_back({{"lba", mm.lba}, {"what", describe(mm)}});
        run["verify"] = {{"blocks", w.verified_blocks}, {"errors", w.verify_errors}, {"mismatches", mism}};
      }
      if (!w.error.empty()) run["error"] = w.error;
      if (!w.interrupted.empty()) run["interrupted"] = w.interrupted;
      run["counters"] = json::object();
      for (const auto& [name, value] : row.counters) run["counters"][name] = value;
      r["runs"].push_back(run);
    }
    j["results"].push_back(r);
  }
  return j.dump(2);
}

std::string plot_data(const BenchReport& rep) {
  std::string data;
  for (const ModeSummary& m : rep.summarize()) {
    if (!m.iops) {
      data += fmt::format("\"{} FAILED\" NaN NaN NaN NaN NaN NaN\n", m.mode);
      continue;
    }
    data += fmt::format("\"{}{}\" {:.0f} {:.0f} {:.0f} {:.2f} {:.2f} {:.2f}\n", m.mode, m.ok() ? "" : " FAILED",
                        m.iops->median, m.iops->min, m.iops->max, us(m.p50_ns->median), us(m.p99_ns->median),
                        us(m.p999_ns->median));
  }
  return data;
}

Result<void> plot_png(const BenchReport& rep, const std::filesystem::path& out) {
  // The data goes through a temporary file: gnuplot's inline data blocks
  // cannot be reused by two plots in one multiplot.
  char data_path[] = "/tmp/vdma-bench-plot-XXXXXX";
  const int fd = mkstemp(data_path);
  if (fd < 0) return system_error("plot: mkstemp", errno);
  close(fd);
  std::ofstream(data_path) << plot_data(rep);
  // Left: IOPS bars with their min-max over the rounds. Right: latency
  // percentiles on a log axis (they span decades). Every bar carries its
  // value; a failed mode keeps its slot, named "... FAILED", with no bar.
  const std::string script = fmt::format(
      "set terminal pngcairo size 1400,560 noenhanced\n"
      "set output '{out}'\n"
      "set datafile missing NaN\n"
      "set multiplot layout 1,2 title 'vdma-bench: {title}'\n"
      "set style fill solid 0.8 border -1\n"
      "set xtics rotate by 30 right\nset bmargin 7\nset grid ytics\nset key top left\n"
      // Every mode keeps its slot, a failed one (no bar) included.
      "set xrange [-0.5:{last}]\n"
      "set title 'IOPS (median{rounds})'\nset ylabel 'IOPS'\nset yrange [0:*]\n"
      "set style data histograms\nset style histogram errorbars gap 1 lw 1\n"
      "plot '{data}' using 2:3:4:xtic(1) notitle lc rgb '#3070b0', "
      "'' using 0:2:(sprintf('%.0f', $2)) with labels offset 0,1 notitle\n"
      "set title 'latency (us, log scale)'\nset ylabel 'microseconds'\nset logscale y\nset yrange [*:*]\n"
      "set style histogram clustered gap 1\nset boxwidth 0.9\n"
      "plot '{data}' using 5:xtic(1) title 'p50', '' using 6 title 'p99', '' using 7 title 'p99.9', "
      "'' using ($0-0.27):5:(sprintf('%.1f', $5)) with labels rotate left offset 0,0.5 font ',8' notitle, "
      "'' using ($0):6:(sprintf('%.1f', $6)) with labels rotate left offset 0,0.5 font ',8' notitle, "
      "'' using ($0+0.27):7:(sprintf('%.1f', $7)) with labels rotate left offset 0,0.5 font ',8' notitle\n"
      "unset multiplot\n",
      fmt::arg("last", static_cast<double>(rep.summarize().size()) - 0.5), fmt::arg("out", out.string()), fmt::arg("title", spec_line(rep)), fmt::arg("data", data_path),
      fmt::arg("rounds", rep.rounds > 1 ? fmt::format(" and min-max of {} rounds", rep.rounds) : std::string()));
  FILE* gp = popen("gnuplot 2>&1", "w");
  if (gp == nullptr) {
    std::remove(data_path);
    return system_error("plot: cannot run gnuplot (install gnuplot; scripts/install-deps does)", errno);
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
