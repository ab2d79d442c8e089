// Report: the repeat aggregation (median, min-max, per-round ratios and
// their spread) from known inputs, and how the table, the JSON and the
// plot data show it.
#include "vdma/workload/report.h"

#include <cmath>

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

namespace vdma::workload {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(SpreadOf, MedianMinMax) {
  auto odd = spread_of({3, 1, 2});
  ASSERT_TRUE(odd.has_value());
  EXPECT_EQ(odd->median, 2);
  EXPECT_EQ(odd->min, 1);
  EXPECT_EQ(odd->max, 3);
  EXPECT_EQ(odd->samples, 3u);
  EXPECT_DOUBLE_EQ(odd->relative(), 1.0);
  auto even = spread_of({4, 1, 3, 2});
  ASSERT_TRUE(even.has_value());
  EXPECT_EQ(even->median, 2.5);
  EXPECT_FALSE(spread_of({}).has_value());
  EXPECT_EQ(spread_of({5, 5})->relative(), 0);
  EXPECT_TRUE(std::isinf(spread_of({0, 0, 1})->relative()));
}

// A run of `ios` requests in one second, every one of latency `ns`
// (below 128 ns the histogram is exact).
ModeRow run(const char* mode, uint32_t round, uint64_t ios, uint64_t ns, uint64_t reads = 0) {
  ModeRow r;
  r.mode = mode;
  r.round = round;
  r.result.ios = ios;
  r.result.reads = reads;
  r.result.writes = ios - reads;
  r.result.bytes = ios * 4096;
  r.result.elapsed = std::chrono::seconds(1);
  for (uint64_t i = 0; i < ios; ++i) {
    r.result.latency.record(ns);
    (i < reads ? r.result.read_latency : r.result.write_latency).record(i < reads ? ns : ns + 1);
  }
  return r;
}

BenchReport three_rounds() {
  BenchReport rep;
  rep.backend = "test";
  rep.spec = {.rw = RwMode::kRandRead, .block_size = 4096, .iodepth = 1, .runtime = std::chrono::seconds(1)};
  rep.rounds = 3;
  // Interleaved, as vdma-bench runs them. Ratios of iommu-lazy per round:
  // 0.7, 0.5, 0.9; of offset: 1.0, 1.05, 0.95.
  rep.rows.push_back(run("bypass", 1, 1000, 100));
  rep.rows.push_back(run("iommu-lazy", 1, 700, 120));
  rep.rows.push_back(run("offset", 1, 1000, 100));
  ModeRow failed;
  failed.mode = "restricted";
  failed.round = 1;
  failed.setup_error = "no bounce pool";
  rep.rows.push_back(failed);
  rep.rows.push_back(run("bypass", 2, 2000, 50));
  rep.rows.push_back(run("iommu-lazy", 2, 1000, 60));
  rep.rows.push_back(run("offset", 2, 2100, 50));
  rep.rows.push_back(failed);
  rep.rows.back().round = 2;
  rep.rows.push_back(run("bypass", 3, 1000, 110));
  rep.rows.push_back(run("iommu-lazy", 3, 900, 127));
  rep.rows.push_back(run("offset", 3, 950, 110));
  rep.rows.push_back(failed);
  rep.rows.back().round = 3;
  return rep;
}

TEST(BenchReport, SummarizesEachModeOverItsRounds) {
  const BenchReport rep = three_rounds();
  const auto s = rep.summarize();
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0].mode, "bypass");
  EXPECT_EQ(s[1].mode, "iommu-lazy");
  const ModeSummary& lazy = s[1];
  EXPECT_EQ(lazy.rounds, 3u);
  EXPECT_EQ(lazy.rounds_ok, 3u);
  EXPECT_EQ(lazy.iops->median, 900);
  EXPECT_EQ(lazy.iops->min, 700);
  EXPECT_EQ(lazy.iops->max, 1000);
  EXPECT_EQ(lazy.p50_ns->median, 120);
  EXPECT_EQ(lazy.p50_ns->min, 60);
  EXPECT_EQ(lazy.p50_ns->max, 127);
  // The ratio of each round is taken to that round's bypass.
  EXPECT_DOUBLE_EQ(lazy.ratio->median, 0.7);
  EXPECT_DOUBLE_EQ(lazy.ratio->min, 0.5);
  EXPECT_DOUBLE_EQ(lazy.ratio->max, 0.9);
  EXPECT_NEAR(lazy.ratio->relative(), 0.4 / 0.7, 1e-12);
  EXPECT_TRUE(lazy.ratio_spread_too_wide());
  const ModeSummary& offset = s[2];
  EXPECT_DOUBLE_EQ(offset.ratio->median, 1.0);
  EXPECT_DOUBLE_EQ(offset.ratio->min, 0.95);
  EXPECT_DOUBLE_EQ(offset.ratio->max, 1.05);
  EXPECT_FALSE(offset.ratio_spread_too_wide()) << "10% is within the 20% rule";
  const ModeSummary& restricted = s[3];
  EXPECT_FALSE(restricted.ok());
  EXPECT_EQ(restricted.rounds_ok, 0u);
  EXPECT_EQ(restricted.error, "no bounce pool");
  EXPECT_EQ(restricted.error_round, 1u);
  EXPECT_FALSE(restricted.iops.has_value());
  EXPECT_FALSE(rep.ok());
}

TEST(BenchReport, ASingleRatioIsNeverTooWide) {
  BenchReport rep;
  rep.rows.push_back(run("bypass", 1, 1000, 100));
  rep.rows.push_back(run("iommu-strict", 1, 10, 100));
  const auto s = rep.summarize();
  EXPECT_DOUBLE_EQ(s[1].ratio->median, 0.01);
  EXPECT_FALSE(s[1].ratio_spread_too_wide());
  EXPECT_TRUE(rep.ok());
  EXPECT_THAT(format_table(rep), HasSubstr("one round: no spread to judge the ratios by (--repeat 3 or more)"));
}

TEST(BenchReport, ABaselineOtherThanBypass) {
  BenchReport rep = three_rounds();
  rep.baseline = "offset";
  const auto s = rep.summarize();
  // bypass / offset per round: 1000/1000, 2000/2100, 1000/950.
  EXPECT_DOUBLE_EQ(s[0].ratio->median, 1.0);
  EXPECT_DOUBLE_EQ(s[0].ratio->min, 2000.0 / 2100);
  EXPECT_DOUBLE_EQ(s[0].ratio->max, 1000.0 / 950);
  EXPECT_THAT(format_table(rep), HasSubstr("x base"));
}

TEST(BenchReport, TableShowsMedianRangeAndTheTrustRule) {
  const std::string t = format_table(three_rounds());
  EXPECT_THAT(t, HasSubstr("rounds=3"));
  EXPECT_THAT(t, HasSubstr("mode (median)"));
  EXPECT_THAT(t, HasSubstr("iommu-lazy               900        3.7        0.1        0.1        0.1     0.70!"));
  EXPECT_THAT(t, HasSubstr("  min-max           700-1000  2.87-4.10  0.06-0.13  0.06-0.13  0.06-0.13 0.50-0.90  "
                           "3/3 rounds ok"));
  EXPECT_THAT(t, HasSubstr("offset                  1000        4.1        0.1        0.1        0.1      1.00"));
  EXPECT_THAT(t, Not(HasSubstr("1.00!")));
  EXPECT_THAT(t, HasSubstr("restricted       error in round 1: no bounce pool"));
  EXPECT_THAT(t, HasSubstr("! the ratio's spread ((max - min) / median of the per-round ratios) is above 20%: too "
                           "wide to trust: iommu-lazy 57%"));
}

TEST(BenchReport, MixedWorkloadsShowReadsAndWritesApart) {
  BenchReport rep;
  rep.spec = {.rw = RwMode::kRandRw, .block_size = 4096, .iodepth = 1, .runtime = std::chrono::seconds(1)};
  rep.rows.push_back(run("bypass", 1, 1000, 100, 600));
  const auto s = rep.summarize();
  EXPECT_EQ(s[0].read_iops->median, 600);
  EXPECT_EQ(s[0].write_iops->median, 400);
  EXPECT_EQ(s[0].read_p99_ns->median, 100);
  EXPECT_EQ(s[0].write_p99_ns->median, 101);
  const std::string t = format_table(rep);
  EXPECT_THAT(t, HasSubstr("  reads                  600        2.5        0.1        0.1        0.1\n"));
  EXPECT_THAT(t, HasSubstr("  writes                 400        1.6        0.1        0.1        0.1\n"));
  const auto j = nlohmann::json::parse(to_json(rep));
  EXPECT_EQ(j["results"][0]["read"]["iops"]["median"], 600.0);
  EXPECT_EQ(j["results"][0]["write"]["latency_ns"]["p99"]["median"], 101.0);
  EXPECT_EQ(j["results"][0]["runs"][0]["read_latency_ns"]["count"], 600);
  EXPECT_EQ(j["results"][0]["runs"][0]["write_latency_ns"]["p50"], 101);
}

TEST(BenchReport, JsonCarriesRoundsMediansAndRatioSpread) {
  const auto j = nlohmann::json::parse(to_json(three_rounds()));
  EXPECT_EQ(j["rounds"], 3);
  EXPECT_EQ(j["baseline"], "bypass");
  EXPECT_EQ(j["ratio_spread_limit"], 0.2);
  EXPECT_EQ(j["ok"], false);
  ASSERT_EQ(j["results"].size(), 4u);
  const auto& lazy = j["results"][1];
  EXPECT_EQ(lazy["mode"], "iommu-lazy");
  EXPECT_EQ(lazy["iops"]["median"], 900.0);
  EXPECT_EQ(lazy["iops"]["min"], 700.0);
  EXPECT_EQ(lazy["latency_ns"]["p50"]["max"], 127.0);
  EXPECT_DOUBLE_EQ(lazy["ratio_to_baseline"]["median"].get<double>(), 0.7);
  EXPECT_DOUBLE_EQ(lazy["ratio_to_baseline"]["min"].get<double>(), 0.5);
  EXPECT_EQ(lazy["ratio_to_baseline"]["too_wide"], true);
  ASSERT_EQ(lazy["runs"].size(), 3u);
  EXPECT_EQ(lazy["runs"][1]["round"], 2);
  EXPECT_EQ(lazy["runs"][1]["ios"], 1000);
  EXPECT_DOUBLE_EQ(lazy["runs"][1]["ratio_to_baseline"].get<double>(), 0.5);
  EXPECT_EQ(j["results"][2]["ratio_to_baseline"]["too_wide"], false);
  const auto& restricted = j["results"][3];
  EXPECT_EQ(restricted["ok"], false);
  EXPECT_EQ(restricted["rounds_ok"], 0);
  EXPECT_EQ(restricted["error"]["round"], 1);
  EXPECT_EQ(restricted["error"]["what"], "no bounce pool");
  EXPECT_TRUE(restricted["iops"].is_null());
}

TEST(BenchReport, PlotDataKeepsFailedModes) {
  const std::string d = plot_data(three_rounds());
  EXPECT_EQ(d,
            "\"bypass\" 1000 1000 2000 0.10 0.10 0.10\n"
            "\"iommu-lazy\" 900 700 1000 0.12 0.12 0.12\n"
            "\"offset\" 1000 950 2100 0.10 0.10 0.10\n"
            "\"restricted FAILED\" NaN NaN NaN NaN NaN NaN\n");
}

TEST(BenchReport, StoppedRunSaysSoAndFails) {
  BenchReport rep;
  rep.rows.push_back(run("bypass", 1, 1000, 100));
  rep.stopped = "interrupted by SIGINT during iommu-lazy";
  EXPECT_FALSE(rep.ok());
  EXPECT_THAT(format_table(rep),
              HasSubstr("stopped: interrupted by SIGINT during iommu-lazy; the table holds the runs that finished"));
  EXPECT_EQ(nlohmann::json::parse(to_json(rep))["stopped"], "interrupted by SIGINT during iommu-lazy");
}

}  // namespace
}  // namespace vdma::workload
