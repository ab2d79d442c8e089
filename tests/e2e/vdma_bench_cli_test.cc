// The vdma-bench program: its help, its errors, a verified multi-mode run
// against the vdma-blk it spawns, its JSON and its plot.
#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include "e2e_util.h"

namespace vdma::e2e {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::vdma::testing::IsOk;

ProgramRun bench(const ScratchDir& dir, std::vector<std::string> args) {
  return run_program(dir, vdma_bench_binary(), args);
}

TEST(VdmaBenchCli, HelpNamesEveryModeAndOption) {
  ScratchDir dir;
  const ProgramRun r = bench(dir, {"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* word : {"bypass", "iommu-strict", "iommu-lazy", "iommu-premapped", "restricted", "offset",
                           "encryption-bit", "--socket-path", "--rw", "--bs", "--iodepth", "--queues", "--runtime",
                           "--size", "--mode", "--topology", "--verify", "--json", "--plot", "--blk-file",
                           "--dma-debug"}) {
    EXPECT_THAT(r.out, HasSubstr(word));
  }
}

TEST(VdmaBenchCli, UsageErrorsExitTwoWithTheReason) {
  ScratchDir dir;
  ProgramRun r = bench(dir, {"--mode", "iommu"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown DMA mode 'iommu'"));
  r = bench(dir, {"--rw", "sideways"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--rw sideways"));
  r = bench(dir, {"--bs", "4Q"});
  EXPECT_EQ(r.exit_code, 2);
  r = bench(dir, {"--iodepth", "0"});
  EXPECT_NE(r.exit_code, 0);
  r = bench(dir, {"--socket-path", "/x.sock", "--blk-file", "null:1G"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("excludes"));
  r = bench(dir, {"--topology", dir.file("missing.json")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("missing.json"));
}

TEST(VdmaBenchCli, BadTopologyFileIsRefusedWithItsPath) {
  ScratchDir dir;
  const std::string topo = dir.file("topo.json");
  std::ofstream(topo) << R"({"devices": [{"id": "blk0", "kind": "warp"}]})";
  const ProgramRun r = bench(dir, {"--topology", topo, "--mode", "bypass"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("devices[0]"));
}

TEST(VdmaBenchCli, SocketThatIsNotThere) {
  ScratchDir dir;
  const ProgramRun r = bench(dir, {"--socket-path", dir.file("none.sock"), "--mode", "bypass", "--runtime", "0.2"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("none.sock: No such file or directory"));
}

TEST(VdmaBenchCli, VerifiedRunInSeveralModesWithJsonAndPlot) {
  ScratchDir dir;
  const std::string png = dir.file("modes.png");
  const ProgramRun r = bench(dir, {"--mode", "bypass", "--mode", "iommu-lazy", "--mode", "restricted", "--runtime",
                                   "0.3", "--disk-size", "4M", "--iodepth", "8", "--json", "--plot", png});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["results"].size(), 3u);
  const char* modes[] = {"bypass", "iommu-lazy", "restricted"};
  for (size_t i = 0; i < 3; ++i) {
    const auto& m = j["results"][i];
    EXPECT_EQ(m["mode"], modes[i]);
    EXPECT_EQ(m["ok"], true) << m.dump();
    ASSERT_EQ(m["runs"].size(), 1u);
    const auto& run = m["runs"][0];
    EXPECT_GT(run["ios"].get<uint64_t>(), 0u);
    EXPECT_EQ(run["bytes"].get<uint64_t>(), run["ios"].get<uint64_t>() * 4096);
    EXPECT_EQ(run["verify"]["errors"], 0);
    EXPECT_GT(run["verify"]["blocks"].get<uint64_t>(), 0u);
    EXPECT_LE(run["latency_ns"]["p50"].get<uint64_t>(), run["latency_ns"]["p99"].get<uint64_t>());
    EXPECT_EQ(m["verify"]["blocks"], run["verify"]["blocks"]);
  }
  // iommu-lazy: the back-end got translations from the front-end, announced
  // (every new IOVA) or asked for (a MISS).
  const auto& lazy = j["results"][1]["runs"][0]["counters"];
  EXPECT_GT(lazy["iotlb_updates_announced"].get<uint64_t>() + lazy["iotlb_misses_served"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["results"][0]["runs"][0]["counters"]["iotlb_misses_served"].get<uint64_t>(), 0u);
  EXPECT_DOUBLE_EQ(j["results"][0]["ratio_to_baseline"]["median"].get<double>(), 1.0);
  // A PNG file starts with its 8-byte signature.
  const std::string image = slurp(png);
  ASSERT_GE(image.size(), 8u);
  EXPECT_EQ(image.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

TEST(VdmaBenchCli, TableAgainstAnExistingSocketAndAModeTheBackEndCannotServe) {
  ScratchDir dir;
  const std::string sock = dir.file("blk.sock");
  auto be = spawn_backend({vdma_blk_binary(), "--socket-path", sock, "--blk-file", "null:64M", "--iommu", "off"},
                          sock);
  ASSERT_THAT(be, IsOk());
  // vdma-blk serves one front-end at a time; let go of the probe connection.
  { UniqueFd probe = be->take_connection(); }
  const ProgramRun r = bench(dir, {"--socket-path", sock, "--mode", "bypass", "--mode", "iommu-strict", "--runtime",
                                   "0.2", "--no-verify", "--rw", "randread"});
  EXPECT_EQ(r.exit_code, 1) << "a mode that cannot run fails the run";
  EXPECT_THAT(r.out, HasSubstr("bypass"));
  EXPECT_THAT(r.out, HasSubstr("iommu-strict     error: back-end does not offer ACCESS_PLATFORM"));
  EXPECT_THAT(r.out, Not(HasSubstr("bypass           error")));
}

// --dma-debug: every mode's driver maps through the DMA-API debug checker;
// a clean run says so and exits 0. Each mode reports its barriers: SMP by
// default, the platform's once vdma-blk offers ORDER_PLATFORM.
TEST(VdmaBenchCli, DmaDebugRunIsCleanAndTheBarriersAreReported) {
  ScratchDir dir;
  ProgramRun r = bench(dir, {"--dma-debug", "--mode", "bypass", "--mode", "iommu-premapped", "--mode", "restricted",
                             "--runtime", "0.3", "--disk-size", "4M", "--iodepth", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("dma-debug: on (no reports)"));
  EXPECT_THAT(r.err, Not(HasSubstr("dma-debug")));
  EXPECT_THAT(r.out, HasSubstr("barriers: bypass: SMP barriers (ORDER_PLATFORM not negotiated)"));
  EXPECT_THAT(r.out, HasSubstr("barriers: restricted: SMP barriers (ORDER_PLATFORM not negotiated)"));

  r = bench(dir, {"--backend-arg=--order-platform", "--mode", "bypass", "--mode", "iommu-lazy", "--ring", "packed",
                  "--runtime", "0.3", "--disk-size", "4M", "--iodepth", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("barriers: bypass: platform DMA barriers (ORDER_PLATFORM negotiated; "));
  EXPECT_THAT(r.out, HasSubstr("barriers: iommu-lazy: platform DMA barriers (ORDER_PLATFORM negotiated; "));
  EXPECT_THAT(r.out, Not(HasSubstr("dma-debug")));

  r = bench(dir, {"--backend-arg=--order-platform", "--mode", "bypass", "--runtime", "0.2", "--disk-size", "4M",
                  "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["results"][0]["runs"][0]["counters"]["platform_dma_barriers"].get<uint64_t>(), 0u);
}

TEST(VdmaBenchCli, VerifyOnNullBackingIsCaughtAsMissingWrites) {
  ScratchDir dir;
  // null: storage keeps nothing, so every read-back of a written block fails.
  const ProgramRun r = bench(dir, {"--blk-file", "null:16M", "--mode", "bypass", "--runtime", "0.2", "--rw",
                                   "randwrite", "--iodepth", "4"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("FAIL"));
  EXPECT_THAT(r.out, HasSubstr("magic expected 0x48434e42414d4456, found 0x0"));
}

}  // namespace
}  // namespace vdma::e2e
