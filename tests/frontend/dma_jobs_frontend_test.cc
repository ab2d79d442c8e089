// The platform DMA jobs beside translation and bounce, end to end through
// the front-end:
//   - the topology's "flush_before_notify" hook runs exactly once per
//     notification, on both ring formats, over our back-end and over the
//     real vdma-blk driven by the virtio-blk driver;
//   - ORDER_PLATFORM: vdma-blk --order-platform offers it, the front-end
//     accepts it and its queues then execute the platform's DMA barriers
//     (and none without it);
//   - the DMA-API debug checker (FrontendOptions::dma_debug, what
//     vdma-bench --dma-debug turns on): the exact report for a leaked
//     mapping, a double unmap and CPU access to a buffer the device owns,
//     and no report at all for the virtio-blk driver in every mode.
#include <limits.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "frontend_test_util.h"
#include "programs.h"
#include "vdma/blk/virtio_blk.h"
#include "vdma/blk_driver/blk_driver.h"
#include "vdma/frontend/backend_process.h"
#include "vdma/virtio/features.h"

namespace vdma::frontend_testing {
namespace {

using ::testing::SizeIs;

using vdma::testing::vdma_blk_binary;

// A 16 MiB disk file for one vdma-blk, removed with the object (a null: disk
// would read back zeroes, and the round trips check bytes).
class DiskFile {
 public:
  explicit DiskFile(std::string_view tag) : path_(fmt::format("/tmp/vdma-fe-jobs-{}-{}.img", ::getpid(), tag)) {
    std::filesystem::remove(path_);
    std::ofstream(path_).close();
    std::filesystem::resize_file(path_, 16 << 20);
  }
  ~DiskFile() { std::filesystem::remove(path_); }
  DiskFile(const DiskFile&) = delete;
  DiskFile& operator=(const DiskFile&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Result<BackendProcess> spawn_vdma_blk(const DiskFile& disk, std::string_view tag,
                                      std::vector<std::string> extra = {}) {
  const std::string sock = fmt::format("/tmp/vdma-fe-jobs-{}-{}.sock", ::getpid(), tag);
  std::filesystem::remove(sock);
  std::vector<std::string> argv = {vdma_blk_binary(), "--socket-path", sock, "--blk-file", disk.path(),
                                   "--log-level",     "warn"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return spawn_backend(argv, sock, std::chrono::seconds(20));
}

FrontendOptions blk_options(DmaMode mode, RingFormat format) {
  FrontendOptions o;
  o.mode = mode;
  o.num_queues = 1;
  o.queue_size = 64;
  o.ring_format = format;
  o.ram_size = 8 << 20;
  o.bounce_size = 4 << 20;
  o.device_features = blk::driver_features();
  return o;
}

// Writes then reads back `rounds` 4 KiB blocks through the virtio-blk driver,
// checking every byte.
void blk_round_trips(VirtioTransport& t, int rounds) {
  auto drv = blk::BlkDriver::create(t, {.queue_depth = 4, .max_io_bytes = 8192});
  ASSERT_THAT(drv, IsOk());
  for (int r = 0; r < rounds; ++r) {
    const std::vector<std::byte> data = pattern(4096, static_cast<uint8_t>(r));
    ASSERT_THAT((*drv)->write(0, uint64_t(r) * 8, data), IsOk());
    std::vector<std::byte> back(4096);
    ASSERT_THAT((*drv)->read(0, uint64_t(r) * 8, back), IsOk());
    ASSERT_EQ(back, data) << "round " << r;
  }
}

// The mode's built-in topology with "flush_before_notify": "write_combining".
PlatformTopology with_write_combining(const FrontendOptions& o) {
  PlatformTopology t =
      builtin_topology(o.mode, default_layout(o.ram_size, o.coherent_size, o.bounce_size), o.device_id);
  t.devices[0].notify_flush = NotifyFlushKind::kWriteCombining;
  return t;
}

std::string format_name(RingFormat f) { return std::string(to_string(f)); }

class NotifyFlush : public ::testing::TestWithParam<RingFormat> {};

TEST_P(NotifyFlush, RunsOncePerNotificationOnEveryQueue) {
  for (DmaMode mode : {DmaMode::kBypass, DmaMode::kIommuLazy}) {
    SCOPED_TRACE(to_string(mode));
    InProcessBackend backend;
    FrontendOptions o = small_options(mode);
    o.ring_format = GetParam();
    o.topology = with_write_combining(o);
    auto fe = VhostUserFrontend::create(backend.take_socket(), o);
    ASSERT_THAT(fe, IsOk());
    const PostedWriteFlush* flush = (*fe)->notify_flush();
    ASSERT_NE(flush, nullptr);
    EXPECT_EQ(flush->kind(), NotifyFlushKind::kWriteCombining);
    for (uint32_t i = 0; i < 20; ++i) echo_round_trip(**fe, i % 2, 512 + i, static_cast<uint8_t>(i), false);
    // A round whose chain the device found while still polling needed no
    // notification; every notification that was sent had its flush.
    const uint64_t notifies = (*fe)->stats().notifies;
    EXPECT_GT(notifies, 0u);
    EXPECT_LE(notifies, 20u);
    EXPECT_EQ(flush->flushes(), notifies);
  }
}

TEST_P(NotifyFlush, RunsOncePerKickOfTheBlkDriverAgainstVdmaBlk) {
  const DiskFile disk("flush-" + format_name(GetParam()));
  auto be = spawn_vdma_blk(disk, "flush-" + format_name(GetParam()));
  ASSERT_THAT(be, IsOk());
  FrontendOptions o = blk_options(DmaMode::kBypass, GetParam());
  o.topology = with_write_combining(o);
  auto fe = VhostUserFrontend::create(be->take_connection(), o);
  ASSERT_THAT(fe, IsOk());
  blk_round_trips(**fe, 30);
  const uint64_t notifies = (*fe)->stats().notifies;
  EXPECT_GT(notifies, 0u);
  EXPECT_EQ((*fe)->notify_flush()->flushes(), notifies);
}

TEST(NotifyFlushNone, WithoutTheDeclarationThereIsNoHook) {
  InProcessBackend backend;
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kBypass));
  ASSERT_THAT(fe, IsOk());
  EXPECT_EQ((*fe)->notify_flush(), nullptr);
  echo_round_trip(**fe, 0, 64, 1, false);
  EXPECT_EQ((*fe)->stats().notifies, 1u);
}

INSTANTIATE_TEST_SUITE_P(Formats, NotifyFlush, ::testing::Values(RingFormat::kSplit, RingFormat::kPacked),
                         [](const ::testing::TestParamInfo<RingFormat>& i) { return format_name(i.param); });

class OrderPlatform : public ::testing::TestWithParam<RingFormat> {};

TEST_P(OrderPlatform, VdmaBlkOffersItAndTheQueuesUseThePlatformBarriers) {
  for (const bool offered : {false, true}) {
    SCOPED_TRACE(offered ? "--order-platform" : "default");
    const std::string tag = fmt::format("op-{}-{}", format_name(GetParam()), offered);
    const DiskFile disk(tag);
    auto be = spawn_vdma_blk(disk, tag,
                             offered ? std::vector<std::string>{"--order-platform"} : std::vector<std::string>{});
    ASSERT_THAT(be, IsOk());
    auto fe = VhostUserFrontend::create(be->take_connection(), blk_options(DmaMode::kIommuLazy, GetParam()));
    ASSERT_THAT(fe, IsOk());
    EXPECT_EQ(has_feature((*fe)->features(), kFeatureOrderPlatform), offered);
    DriverQueue& q = (*fe)->queue(0);
    EXPECT_EQ(q.barriers(), offered ? BarrierKind::kStrong : BarrierKind::kWeak);
    blk_round_trips(**fe, 10);
    if (offered) {
      // At least a write barrier per request published and a read barrier
      // per request reaped.
      EXPECT_GE(q.platform_barriers(), 2u * 20);
    } else {
      EXPECT_EQ(q.platform_barriers(), 0u);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, OrderPlatform, ::testing::Values(RingFormat::kSplit, RingFormat::kPacked),
                         [](const ::testing::TestParamInfo<RingFormat>& i) { return format_name(i.param); });

// ---- The DMA-API debug checker behind the front-end.

class DmaDebug : public ::testing::Test {
 protected:
  void SetUp() override {
    FrontendOptions o = small_options(DmaMode::kBypass);
    o.dma_debug = true;
    auto fe = VhostUserFrontend::create(backend_.take_socket(), o);
    ASSERT_THAT(fe, IsOk());
    fe_ = std::move(fe).value();
    dbg_ = fe_->dma_debug();
    ASSERT_NE(dbg_, nullptr);
    EXPECT_EQ(&fe_->dma(), dbg_.get());  // the driver maps through the checker
    buf_ = *fe_->alloc_buffer(4096, 4096);
  }

  InProcessBackend backend_;
  std::unique_ptr<VhostUserFrontend> fe_;
  std::shared_ptr<DebugDmaOps> dbg_;
  Gpa buf_;
};

TEST_F(DmaDebug, EchoTrafficAndTeardownLeaveNoReport) {
  for (uint32_t i = 0; i < 8; ++i) echo_round_trip(*fe_, i % 2, 1000 + i, static_cast<uint8_t>(i), i >= 4);
  fe_.reset();  // the queues unmap and free everything they hold
  EXPECT_THAT(dbg_->check_teardown(), IsOk());
  EXPECT_THAT(dbg_->reports(), SizeIs(0));
}

TEST_F(DmaDebug, ReportsAMappingLeakedAtTeardown) {
  auto d = fe_->dma().map(buf_, 4096, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(*d, DmaAddr{buf_.value()});  // bypass: dma == gpa
  fe_.reset();
  const std::string leak =
      fmt::format("device blk0: mapping {} + len 0x1000 ({}, to-device) still live at teardown", *d, buf_);
  EXPECT_THAT(dbg_->check_teardown(),
              IsErrorWith(DmaErrc::kMisuse,
                          fmt::format("device blk0: 1 DMA mapping(s)/buffer(s) live at teardown; first: {}", leak)));
  ASSERT_THAT(dbg_->reports(), SizeIs(1));
  EXPECT_EQ(dbg_->reports()[0].kind, DmaMisuse::kLeakAtTeardown);
  EXPECT_EQ(dbg_->reports()[0].message, leak);
}

TEST_F(DmaDebug, ReportsADoubleUnmap) {
  auto d = fe_->dma().map(buf_, 4096, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  ASSERT_THAT(fe_->dma().unmap(*d, 4096, DmaDirection::kToDevice), IsOk());
  const std::string msg =
      fmt::format("device blk0: unmap of {} + len 0x1000: already unmapped (was {} + len 0x1000, to-device)", *d, buf_);
  EXPECT_THAT(fe_->dma().unmap(*d, 4096, DmaDirection::kToDevice), IsErrorWith(DmaErrc::kMisuse, msg));
  ASSERT_THAT(dbg_->reports(), SizeIs(1));
  EXPECT_EQ(dbg_->reports()[0].kind, DmaMisuse::kDoubleUnmap);
  EXPECT_EQ(dbg_->reports()[0].message, msg);
  fe_.reset();
  EXPECT_THAT(dbg_->check_teardown(), IsOk());  // nothing leaked besides
}

TEST_F(DmaDebug, ReportsCpuAccessToABufferTheDeviceOwns) {
  auto from = fe_->dma().map(buf_, 2048, DmaDirection::kFromDevice);
  ASSERT_THAT(from, IsOk());
  const Gpa second = buf_.unchecked_add(2048);
  auto to = fe_->dma().map(second, 2048, DmaDirection::kToDevice);
  ASSERT_THAT(to, IsOk());

  const std::string read_msg = fmt::format(
      "device blk0: CPU reads {} + len 0x10 while it is mapped from-device at {} + len 0x800 without sync_for_cpu: "
      "the device may still be writing it",
      buf_.unchecked_add(16), *from);
  EXPECT_THAT(dbg_->cpu_access(buf_.unchecked_add(16), 16, CpuAccess::kRead), IsErrorWith(DmaErrc::kMisuse, read_msg));
  const std::string write_msg = fmt::format(
      "device blk0: CPU writes {} + len 0x800 while it is mapped to-device at {} + len 0x800 and owned by the device "
      "(sync_for_cpu first, sync_for_device after)",
      second, *to);
  EXPECT_THAT(dbg_->cpu_access(second, 2048, CpuAccess::kWrite), IsErrorWith(DmaErrc::kMisuse, write_msg));
  ASSERT_THAT(dbg_->reports(), SizeIs(2));
  EXPECT_EQ(dbg_->reports()[0].kind, DmaMisuse::kCpuReadWithoutSync);
  EXPECT_EQ(dbg_->reports()[0].message, read_msg);
  EXPECT_EQ(dbg_->reports()[1].kind, DmaMisuse::kCpuWriteWhileDeviceOwns);
  EXPECT_EQ(dbg_->reports()[1].message, write_msg);

  // After the hand-over the same accesses are fine.
  ASSERT_THAT(fe_->dma().sync_for_cpu(*from, 2048, DmaDirection::kFromDevice), IsOk());
  EXPECT_THAT(dbg_->cpu_access(buf_.unchecked_add(16), 16, CpuAccess::kRead), IsOk());
  ASSERT_THAT(fe_->dma().sync_for_cpu(*to, 2048, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(dbg_->cpu_access(second, 2048, CpuAccess::kWrite), IsOk());
  ASSERT_THAT(fe_->dma().unmap(*from, 2048, DmaDirection::kFromDevice), IsOk());
  ASSERT_THAT(fe_->dma().unmap(*to, 2048, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(dbg_->reports(), SizeIs(2));
}

// The virtio-blk driver under the checker against vdma-blk: every CPU access
// it declares is to a buffer the CPU owns (premapped buffers are synced
// both ways), and nothing is left mapped once driver and front-end are gone.
class DmaDebugBlk : public ::testing::TestWithParam<DmaMode> {};

TEST_P(DmaDebugBlk, TheVirtioBlkDriverIsCleanInEveryMode) {
  const std::string tag = fmt::format("dbg-{}", to_string(GetParam()));
  const DiskFile disk(tag);
  auto be = spawn_vdma_blk(disk, tag);
  ASSERT_THAT(be, IsOk());
  FrontendOptions o = blk_options(GetParam(), RingFormat::kSplit);
  o.dma_debug = true;
  auto fe = VhostUserFrontend::create(be->take_connection(), o);
  ASSERT_THAT(fe, IsOk());
  std::shared_ptr<DebugDmaOps> dbg = (*fe)->dma_debug();
  blk_round_trips(**fe, 12);
  (*fe).reset();
  EXPECT_THAT(dbg->check_teardown(), IsOk());
  EXPECT_THAT(dbg->reports(), SizeIs(0));
}

INSTANTIATE_TEST_SUITE_P(Modes, DmaDebugBlk,
                         ::testing::Values(DmaMode::kBypass, DmaMode::kIommuStrict, DmaMode::kIommuPremapped,
                                           DmaMode::kRestricted),
                         [](const ::testing::TestParamInfo<DmaMode>& p) {
                           std::string n(to_string(p.param));
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace vdma::frontend_testing
