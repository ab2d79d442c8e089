// vdma-blk's statistics while it runs: --stats-socket serves the counters of
// every session as JSON (requests, bytes, errors, in flight per queue; the
// IOTLB's hits, misses, invalidations), checked against what vdma-bench did.
#include <sys/socket.h>
#include <sys/un.h>

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>
#include <thread>

#include "e2e_util.h"

namespace vdma::e2e {
namespace {

using ::vdma::testing::IsOk;

// Connects to the stats socket and reads its one JSON document.
nlohmann::json read_stats(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ADD_FAILURE() << "connect " << path << ": " << std::strerror(errno);
    return {};
  }
  std::string text;
  char buf[4096];
  ssize_t n = 0;
  while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  return nlohmann::json::parse(text);
}

// Waits until the front-end's session has ended (its counters are totals then).
nlohmann::json stats_when_disconnected(const std::string& path) {
  nlohmann::json s;
  for (int i = 0; i < 200; ++i) {
    s = read_stats(path);
    if (s.contains("connected") && !s["connected"].get<bool>()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return s;
}

TEST(VdmaBlkStats, CountsTheRequestsOfEverySession) {
  ScratchDir dir;
  const std::string sock = dir.file("blk.sock");
  const std::string stats = dir.file("stats.sock");
  auto be = spawn_backend(
      {vdma_blk_binary(), "--socket-path", sock, "--blk-file", "null:64M", "--num-queues", "2", "--stats-socket", stats},
      sock);
  ASSERT_THAT(be, IsOk());
  { UniqueFd probe = be->take_connection(); }
  nlohmann::json s = read_stats(stats);
  EXPECT_EQ(s["sessions"], 0);
  ASSERT_EQ(s["queues"].size(), 2u);
  EXPECT_EQ(s["queues"][0]["requests"], 0);

  const ProgramRun r = run_program(dir, vdma_bench_binary(),
                                   {"--socket-path", sock, "--mode", "bypass", "--mode", "iommu-lazy", "--runtime",
                                    "0.3", "--no-verify", "--rw", "randread", "--iodepth", "8", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  uint64_t ios = 0;
  for (const auto& m : j["results"]) ios += m["runs"][0]["ios"].get<uint64_t>();
  ASSERT_GT(ios, 0u);

  s = stats_when_disconnected(stats);
  EXPECT_EQ(s["connected"], false);
  EXPECT_GE(s["sessions"].get<uint64_t>(), 2u);  // one per mode
  const uint64_t requests = s["queues"][0]["requests"].get<uint64_t>() + s["queues"][1]["requests"].get<uint64_t>();
  const uint64_t bytes = s["queues"][0]["bytes"].get<uint64_t>() + s["queues"][1]["bytes"].get<uint64_t>();
  // Every request vdma-bench counted, plus the few it sends besides (GET_ID, FLUSH).
  EXPECT_GE(requests, ios);
  EXPECT_LE(requests, ios + 64);
  // Each 4 KiB read: a 16-byte header read, 4096 + 1 bytes written.
  EXPECT_GE(bytes, ios * (16 + 4097));
  EXPECT_EQ(s["queues"][0]["errors"], 0);
  EXPECT_EQ(s["queues"][0]["in_flight"], 0);
  // The iommu-lazy mode went through the IOTLB.
  EXPECT_GT(s["iotlb"]["misses"].get<uint64_t>(), 0u);
  EXPECT_GT(s["iotlb"]["updates"].get<uint64_t>(), 0u);
  EXPECT_GT(s["iotlb"]["hits"].get<uint64_t>(), 0u);
  EXPECT_EQ(s["iotlb"]["access_fails"], 0);
  auto code = be->stop();
  ASSERT_THAT(code, IsOk());
  EXPECT_EQ(*code, 0);
  struct stat st {};
  EXPECT_NE(::stat(stats.c_str(), &st), 0) << "stats socket not removed at exit";
}

}  // namespace
}  // namespace vdma::e2e
