// The front-end against the real vdma-blk program (spawned with
// spawn_backend): features and config space in bypass and iommu-strict,
// restricted mode's /proc/<pid>/maps, a back-end killed mid-session, and
// spawn errors.
#include <limits.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "frontend_test_util.h"
#include "programs.h"
#include "vdma/blk/virtio_blk.h"
#include "vdma/frontend/backend_process.h"
#include "vdma/virtio/features.h"
#include "dma_mode_printer.h"

namespace vdma::frontend_testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using blk::kBlkFeatureBlkSize;
using blk::kBlkFeatureFlush;
using blk::kBlkFeatureMq;
using blk::kBlkFeatureSegMax;

using vdma::testing::vdma_blk_binary;

std::string socket_path(std::string_view tag) {
  return fmt::format("/tmp/vdma-fe-blk-{}-{}.sock", ::getpid(), tag);
}

Result<BackendProcess> spawn_null_blk(const std::string& sock) {
  std::filesystem::remove(sock);
  return spawn_backend({vdma_blk_binary(), "--socket-path", sock, "--blk-file", "null:64M", "--log-level", "warn"},
                       sock, std::chrono::seconds(20));
}

FrontendOptions blk_options(DmaMode mode) {
  FrontendOptions o;
  o.mode = mode;
  o.num_queues = 1;
  o.queue_size = 128;
  o.ram_size = 8 << 20;
  o.bounce_size = 4 << 20;
  o.device_features = feature_bit(kBlkFeatureFlush) | feature_bit(kBlkFeatureBlkSize) |
                      feature_bit(kBlkFeatureSegMax) | feature_bit(kBlkFeatureMq);
  return o;
}

class VdmaBlkTest : public ::testing::TestWithParam<DmaMode> {};

TEST_P(VdmaBlkTest, NegotiatesAndReadsTheCapacity) {
  const std::string sock = socket_path(to_string(GetParam()));
  auto be = spawn_null_blk(sock);
  ASSERT_THAT(be, IsOk());
  auto fe = VhostUserFrontend::create(be->take_connection(), blk_options(GetParam()));
  ASSERT_THAT(fe, IsOk());
  const uint64_t f = (*fe)->features();
  EXPECT_TRUE(has_feature(f, kFeatureVersion1));
  EXPECT_TRUE(has_feature(f, kBlkFeatureFlush));
  EXPECT_TRUE(has_feature(f, kBlkFeatureBlkSize));
  EXPECT_EQ(has_feature(f, kFeatureAccessPlatform), GetParam() != DmaMode::kBypass);
  std::array<std::byte, 8> cap{};
  ASSERT_THAT((*fe)->read_config(0, cap), IsOk());
  uint64_t sectors = 0;
  std::memcpy(&sectors, cap.data(), sizeof sectors);
  EXPECT_EQ(sectors, 131072u);  // 64 MiB of 512-byte sectors
  std::array<std::byte, 4> blk_size{};
  ASSERT_THAT((*fe)->read_config(20, blk_size), IsOk());  // virtio 1.2 §5.2.4: blk_size at offset 20
  uint32_t bs = 0;
  std::memcpy(&bs, blk_size.data(), sizeof bs);
  EXPECT_EQ(bs, 512u);
  fe->reset();
  EXPECT_THAT(be->stop(), ::vdma::testing::HasValue(0));
  std::filesystem::remove(sock);
}

INSTANTIATE_TEST_SUITE_P(BypassAndStrict, VdmaBlkTest, ::testing::Values(DmaMode::kBypass, DmaMode::kIommuStrict),
                         [](const ::testing::TestParamInfo<DmaMode>& p) {
                           return p.param == DmaMode::kBypass ? "bypass" : "iommu_strict";
                         });

TEST(VdmaBlk, RestrictedBackendMapsOnlyTheSharedMemfds) {
  const std::string sock = socket_path("restricted");
  auto be = spawn_null_blk(sock);
  ASSERT_THAT(be, IsOk());
  auto fe = VhostUserFrontend::create(be->take_connection(), blk_options(DmaMode::kRestricted));
  ASSERT_THAT(fe, IsOk());
  auto names = mapped_memfd_names(be->pid());
  ASSERT_THAT(names, IsOk());
  EXPECT_EQ(count_mappings(*names, "ram"), 0u);
  EXPECT_EQ(count_mappings(*names, "swiotlb"), 1u);
  EXPECT_EQ(count_mappings(*names, "coherent"), 1u);
  std::filesystem::remove(sock);
}

TEST(VdmaBlk, BackendKilledMidSessionGivesErrorsNotHangs) {
  const std::string sock = socket_path("killed");
  auto be = spawn_null_blk(sock);
  ASSERT_THAT(be, IsOk());
  auto fe = VhostUserFrontend::create(be->take_connection(), blk_options(DmaMode::kIommuStrict));
  ASSERT_THAT(fe, IsOk());
  ASSERT_EQ(::kill(be->pid(), SIGKILL), 0);
  EXPECT_THAT(be->stop(), ::vdma::testing::HasValue(SIGKILL));  // reaped: killed by SIGKILL

  std::array<std::byte, 8> cap{};
  EXPECT_THAT((*fe)->read_config(0, cap), IsError(FrontendErrc::kDisconnected));
  for (int i = 0; i < 500 && !(*fe)->disconnected(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_TRUE((*fe)->disconnected());
  EXPECT_THAT((*fe)->notify(0), IsErrorWith(FrontendErrc::kDisconnected, "queue 0: the back-end hung up"));
  // Unmapping in strict mode needs an INVALIDATE ack that cannot come: an error, at once.
  const Gpa buf = *(*fe)->alloc_buffer(4096, 4096);
  const DmaAddr d = *(*fe)->dma().map(buf, 4096, DmaDirection::kToDevice);
  EXPECT_THAT((*fe)->dma().unmap(d, 4096, DmaDirection::kToDevice), IsError(FrontendErrc::kDisconnected));
  const auto start = std::chrono::steady_clock::now();
  fe->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  std::filesystem::remove(sock);
}

TEST(VdmaBlk, ProgramThatCannotRunIsReported) {
  EXPECT_THAT(spawn_backend({"/nonexistent/vdma-blk", "--socket-path", "/tmp/x.sock"}, "/tmp/x.sock"),
              IsErrorWith(BaseErrc::kSystem, "cannot execute /nonexistent/vdma-blk: No such file or directory"));
}

TEST(VdmaBlk, BackendExitingBeforeItListensIsReportedWithItsStatus) {
  const std::string sock = socket_path("exits");
  const std::string bin = vdma_blk_binary();
  // No --blk-file: vdma-blk refuses to start.
  auto be = spawn_backend({bin, "--socket-path", sock}, sock, std::chrono::seconds(20));
  EXPECT_THAT(be, IsErrorWith(FrontendErrc::kBackendExited,
                              StartsWith("back-end " + bin + " exited with status ")));
  EXPECT_THAT(be, IsErrorWith(FrontendErrc::kBackendExited, HasSubstr("before accepting connections on " + sock)));
}

}  // namespace
}  // namespace vdma::frontend_testing
