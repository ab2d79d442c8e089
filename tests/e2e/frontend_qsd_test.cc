// The vhost-user front-end against qemu-storage-daemon, the reference
// back-end from Debian: bypass mode works with every byte verified (also on
// the host's image), and the modes that need ACCESS_PLATFORM are refused
// with a clear message because qemu-storage-daemon does not offer it.
#include <gmock/gmock.h>

#include "e2e_util.h"
#include "vdma/workload/workload.h"

namespace vdma::e2e {
namespace {

using ::testing::HasSubstr;
using ::vdma::testing::IsErrorWith;
using ::vdma::testing::IsOk;

constexpr uint64_t kDiskSize = 8 << 20;

class FrontendQsd : public ::testing::Test {
 protected:
  void SetUp() override {
    qsd_ = find_in_path("qemu-storage-daemon");
    if (qsd_.empty()) {
      if (peers_required()) FAIL() << "qemu-storage-daemon not found (scripts/install-guest-deps installs it)";
      GTEST_SKIP() << "qemu-storage-daemon not installed (scripts/install-guest-deps); set VDMA_REQUIRE_PEERS=1 "
                      "to make this a failure";
    }
    image_ = make_image(dir_, kDiskSize);
    sock_ = dir_.file("qsd.sock");
    auto be = spawn_backend({qsd_, "--blockdev", "driver=file,node-name=disk0,filename=" + image_, "--export",
                             "type=vhost-user-blk,id=exp0,node-name=disk0,writable=on,addr.type=unix,addr.path=" +
                                 sock_},
                            sock_);
    ASSERT_THAT(be, IsOk());
    backend_.emplace(std::move(*be));
  }

  std::string qsd_;
  ScratchDir dir_;
  std::string image_;
  std::string sock_;
  std::optional<BackendProcess> backend_;
};

TEST_F(FrontendQsd, BypassVerifiedWorkloadAndExactBytesOnTheImage) {
  auto fe = VhostUserFrontend::create(backend_->take_connection(), frontend_options(DmaMode::kBypass));
  ASSERT_THAT(fe, IsOk());
  auto drv = blk::BlkDriver::create(**fe, {.queue_depth = 16, .max_io_bytes = 64 << 10});
  ASSERT_THAT(drv, IsOk());
  EXPECT_EQ((*drv)->capacity_sectors(), kDiskSize / 512);

  std::vector<std::byte> data(65536);
  for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 7 + 3);
  ASSERT_THAT((*drv)->write(0, 99, data), IsOk());
  ASSERT_THAT((*drv)->flush(0), IsOk());
  EXPECT_EQ(read_image(image_, 99 * 512, data.size()), data);

  workload::WorkloadSpec spec;
  spec.rw = workload::RwMode::kRandRw;
  spec.block_size = 4096;
  spec.iodepth = 16;
  spec.size = 4 << 20;
  spec.span = 4 << 20;
  spec.verify = true;
  auto r = workload::run_workload(**drv, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->error, "");
  EXPECT_EQ(r->verify_errors, 0u);
  EXPECT_GT(r->verified_blocks, 0u);
  EXPECT_EQ(r->bytes, r->ios * 4096);
}

TEST_F(FrontendQsd, ModesThatNeedAccessPlatformAreRefused) {
  auto fe = VhostUserFrontend::create(backend_->take_connection(), frontend_options(DmaMode::kIommuLazy));
  EXPECT_THAT(fe, IsErrorWith(FrontendErrc::kBackendLacks, HasSubstr("does not offer ACCESS_PLATFORM")));
}

}  // namespace
}  // namespace vdma::e2e
