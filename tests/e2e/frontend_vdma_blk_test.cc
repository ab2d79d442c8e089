// The vhost-user front-end against the real vdma-blk program, over a real
// unix socket, in every DMA mode: exact bytes on the host's disk image, a
// verified random workload, the vIOMMU traffic each mode must (and must
// not) cause, and what a confidential guest's back-end can see of its
// memory.
#include <atomic>
#include <set>
#include <thread>

#include <gmock/gmock.h>

#include "e2e_util.h"
#include "vdma/workload/workload.h"
#include "dma_mode_printer.h"

namespace vdma::e2e {
namespace {

using ::testing::HasSubstr;
using ::vdma::testing::IsErrorWith;
using ::vdma::testing::IsOk;

constexpr uint64_t kDiskSize = 8 << 20;

class FrontendVdmaBlk : public ::testing::TestWithParam<DmaMode> {
 protected:
  void SetUp() override {
    image_ = make_image(dir_, kDiskSize);
    socket_ = dir_.file("blk.sock");
    auto be = spawn_backend({vdma_blk_binary(), "--socket-path", socket_, "--blk-file", image_, "--num-queues", "2"},
                            socket_);
    ASSERT_THAT(be, IsOk());
    backend_.emplace(std::move(*be));
  }

  ScratchDir dir_;
  std::string image_;
  std::string socket_;
  std::optional<BackendProcess> backend_;
};

// Bytes unique to a mode and an offset, so one mode cannot pass on another's data.
std::vector<std::byte> pattern(DmaMode mode, size_t len, uint64_t salt) {
  std::vector<std::byte> v(len);
  uint64_t x = (static_cast<uint64_t>(mode) + 1) * 0x9e3779b97f4a7c15 ^ salt;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = std::byte(x);
  }
  return v;
}

TEST_P(FrontendVdmaBlk, WritesLandOnTheImageAndReadBackExactly) {
  const DmaMode mode = GetParam();
  auto fe = VhostUserFrontend::create(backend_->take_connection(), frontend_options(mode));
  ASSERT_THAT(fe, IsOk());
  auto drv = blk::BlkDriver::create(**fe, {.queue_depth = 8, .max_io_bytes = 128 << 10});
  ASSERT_THAT(drv, IsOk());
  EXPECT_EQ((*drv)->capacity_sectors(), kDiskSize / 512);

  // Several sizes at odd sector offsets, through queue 0.
  uint64_t sector = 7;
  for (size_t len : {512u, 4096u, 12288u, 65536u, 131072u}) {
    const auto data = pattern(mode, len, sector);
    ASSERT_THAT((*drv)->write(0, sector, data), IsOk()) << len;
    ASSERT_THAT((*drv)->flush(0), IsOk());
    EXPECT_EQ(read_image(image_, sector * 512, len), data) << "host image, " << len << " bytes at sector " << sector;
    std::vector<std::byte> back(len);
    ASSERT_THAT((*drv)->read(0, sector, back), IsOk());
    EXPECT_EQ(back, data) << "read back, " << len << " bytes";
    sector += len / 512 + 3;
  }
  // Discard and write-zeroes leave zeroes on the host.
  ASSERT_THAT((*drv)->write_zeroes(0, 7, 4096), IsOk());
  EXPECT_EQ(read_image(image_, 7 * 512, 4096), std::vector<std::byte>(4096));

  const FrontendStats st = (*fe)->stats();
  if (is_iommu(mode)) {
    EXPECT_GT(st.misses_served + st.updates_announced, 0u) << "the back-end translated IOVAs it was never given";
  } else if (mode != DmaMode::kRestricted) {
    EXPECT_EQ(st.misses_served, 0u);
    EXPECT_EQ(st.updates_sent, 0u);
  }
  if (mode == DmaMode::kIommuStrict) {
    EXPECT_GT(st.invalidates_sent, 0u);
  }
  if (mode == DmaMode::kBypass || mode == DmaMode::kOffset || mode == DmaMode::kEncryptionBit) {
    EXPECT_EQ(st.invalidates_sent, 0u);
  }
}

TEST_P(FrontendVdmaBlk, VerifiedRandomWorkloadOnTwoQueues) {
  const DmaMode mode = GetParam();
  auto fe = VhostUserFrontend::create(backend_->take_connection(), frontend_options(mode, 2));
  ASSERT_THAT(fe, IsOk());
  auto drv = blk::BlkDriver::create(**fe, {.queue_depth = 16, .max_io_bytes = 16 << 10});
  ASSERT_THAT(drv, IsOk());
  workload::WorkloadSpec spec;
  spec.rw = workload::RwMode::kRandRw;
  spec.block_size = 8192;
  spec.iodepth = 16;
  spec.queues = 2;
  spec.size = 4 << 20;
  spec.span = 2 << 20;
  spec.verify = true;
  auto r = workload::run_workload(**drv, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->error, "");
  EXPECT_EQ(r->verify_errors, 0u);
  EXPECT_EQ(r->bytes, r->ios * 8192);
  EXPECT_EQ(r->reads + r->writes, r->ios);
  EXPECT_GE(r->bytes, spec.size);
  EXPECT_GT(r->writes, 0u);
  // Every block written was read back in the final pass at least.
  EXPECT_GE(r->verified_blocks, 1u);
  EXPECT_EQ(r->latency.count(), r->ios);
}

INSTANTIATE_TEST_SUITE_P(AllModes, FrontendVdmaBlk, ::testing::ValuesIn(kAllDmaModes),
                         [](const ::testing::TestParamInfo<DmaMode>& param_info) {
                           std::string n(to_string(param_info.param));
                           for (auto& c : n) c = c == '-' ? '_' : c;
                           return n;
                         });

// A confidential guest: while I/O runs, the back-end process maps the
// shared regions and never the private RAM's memfd.
TEST(FrontendVdmaBlkRestricted, BackendNeverMapsPrivateMemory) {
  ScratchDir dir;
  const std::string image = make_image(dir, kDiskSize);
  const std::string sock = dir.file("blk.sock");
  auto be = spawn_backend({vdma_blk_binary(), "--socket-path", sock, "--blk-file", image}, sock);
  ASSERT_THAT(be, IsOk());

  for (DmaMode mode : {DmaMode::kBypass, DmaMode::kRestricted}) {
    UniqueFd conn = be->take_connection();
    auto fe = conn.valid() ? VhostUserFrontend::create(std::move(conn), frontend_options(mode))
                           : VhostUserFrontend::connect(sock, frontend_options(mode));
    ASSERT_THAT(fe, IsOk());
    auto drv = blk::BlkDriver::create(**fe, {.queue_depth = 8, .max_io_bytes = 4096});
    ASSERT_THAT(drv, IsOk());

    std::atomic<bool> done{false};
    workload::WorkloadSpec spec;
    spec.rw = workload::RwMode::kRandRw;
    spec.block_size = 4096;
    spec.iodepth = 8;
    spec.runtime = std::chrono::milliseconds(1500);
    spec.verify = true;
    Result<workload::WorkloadResult> result = make_error(BaseErrc::kInvalidArgument, "not run");
    std::thread io([&] {
      result = workload::run_workload(**drv, spec);
      done = true;
    });
    std::set<std::string> seen;
    int samples = 0;
    while (!done) {
      auto names = mapped_memfd_names(be->pid());
      ASSERT_THAT(names, IsOk());
      seen.insert(names->begin(), names->end());
      ++samples;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    io.join();
    ASSERT_THAT(result, IsOk());
    EXPECT_TRUE(result->ok()) << result->error;
    EXPECT_GT(result->ios, 0u);
    EXPECT_GT(samples, 3);
    if (mode == DmaMode::kBypass) {
      // The check can fail: a non-confidential guest shares its RAM.
      EXPECT_TRUE(seen.count("vdma-ram")) << "bypass back-end did not map guest RAM";
    } else {
      EXPECT_FALSE(seen.count("vdma-ram")) << "restricted back-end mapped private guest RAM";
      EXPECT_FALSE(seen.empty()) << "restricted back-end mapped no shared region at all";
      for (const auto& name : seen) EXPECT_THAT(name, ::testing::AnyOf("vdma-coherent", "vdma-swiotlb")) << name;
    }
  }
}

TEST(FrontendVdmaBlkErrors, IommuModeAgainstBackendWithoutAccessPlatform) {
  ScratchDir dir;
  const std::string image = make_image(dir, kDiskSize);
  const std::string sock = dir.file("blk.sock");
  auto be = spawn_backend({vdma_blk_binary(), "--socket-path", sock, "--blk-file", image, "--iommu", "off"}, sock);
  ASSERT_THAT(be, IsOk());
  for (DmaMode mode : {DmaMode::kIommuStrict, DmaMode::kRestricted}) {
    UniqueFd conn = be->take_connection();
    auto fe = conn.valid() ? VhostUserFrontend::create(std::move(conn), frontend_options(mode))
                           : VhostUserFrontend::connect(sock, frontend_options(mode));
    EXPECT_THAT(fe, IsErrorWith(FrontendErrc::kBackendLacks,
                                HasSubstr("back-end does not offer ACCESS_PLATFORM; the iommu and restricted modes "
                                          "need it")))
        << to_string(mode);
  }
  // The same back-end still serves a bypass front-end.
  auto fe = VhostUserFrontend::connect(sock, frontend_options(DmaMode::kBypass));
  ASSERT_THAT(fe, IsOk());
}

TEST(FrontendVdmaBlkErrors, SocketThatIsNotThere) {
  ScratchDir dir;
  auto fe = VhostUserFrontend::connect(dir.file("nothing.sock"), frontend_options(DmaMode::kBypass));
  EXPECT_THAT(fe, IsErrorWith(FrontendErrc::kConnectFailed, HasSubstr("nothing.sock: No such file or directory")));
}

TEST(FrontendVdmaBlkErrors, BackendThatExitsBeforeAccepting) {
  ScratchDir dir;
  const std::string sock = dir.file("blk.sock");
  // No --blk-file: vdma-blk refuses to start (usage error, status 2).
  auto be = spawn_backend({vdma_blk_binary(), "--socket-path", sock}, sock);
  EXPECT_THAT(be, IsErrorWith(FrontendErrc::kBackendExited, HasSubstr("exited with status 2")));
}

}  // namespace
}  // namespace vdma::e2e
