// run_workload over the in-process loopback virtio-blk device: exact counts,
// stop conditions, verify catching lost writes, and option errors.
#include "vdma/workload/workload.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

#include <gmock/gmock.h>

#include "loopback_transport.h"
#include "result_matchers.h"

namespace vdma::workload {
namespace {

using ::testing::HasSubstr;
using ::vdma::testing::IsErrorWith;
using ::vdma::testing::IsOk;
using ::vdma::testing::LoopbackOptions;
using ::vdma::testing::LoopbackTransport;

class TempImage {
 public:
  explicit TempImage(uint64_t size) {
    path_ = (std::filesystem::temp_directory_path() / "vdma-workload-XXXXXX").string();
    const int fd = ::mkstemp(path_.data());
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) std::abort();
    ::close(fd);
  }
  ~TempImage() { ::unlink(path_.c_str()); }
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::vector<std::byte> read(uint64_t offset, size_t len) const {
    std::vector<std::byte> out(len);
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::pread(fd, out.data(), len, static_cast<off_t>(offset)) != static_cast<ssize_t>(len)) std::abort();
    ::close(fd);
    return out;
  }

 private:
  std::string path_;
};

struct Rig {
  std::unique_ptr<LoopbackTransport> transport;
  std::unique_ptr<blk::BlkDriver> driver;
};

Rig make_rig(const std::string& storage, uint32_t queues = 1, uint32_t depth = 16, uint32_t max_io = 16 << 10) {
  LoopbackOptions o;
  o.storage = storage;
  o.num_queues = queues;
  auto t = LoopbackTransport::create(std::move(o));
  if (!t) ADD_FAILURE() << t.error().message();
  auto d = blk::BlkDriver::create(**t, {.queue_depth = depth, .max_io_bytes = max_io});
  if (!d) ADD_FAILURE() << d.error().message();
  return {std::move(*t), std::move(*d)};
}

TEST(Workload, VerifiedRandRwOnTwoQueues) {
  TempImage img(8 << 20);
  Rig rig = make_rig(img.path(), 2);
  WorkloadSpec spec{.rw = RwMode::kRandRw, .block_size = 4096, .iodepth = 16, .queues = 2,
                    .runtime = std::chrono::milliseconds(300), .verify = true};
  auto r = run_workload(*rig.driver, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->ok()) << r->error;
  EXPECT_GT(r->reads, 0u);
  EXPECT_GT(r->writes, 0u);
  EXPECT_EQ(r->reads + r->writes, r->ios);
  EXPECT_EQ(r->bytes, r->ios * 4096);
  EXPECT_EQ(r->latency.count(), r->ios);
  EXPECT_GT(r->verified_blocks, 0u);
  EXPECT_GT(r->elapsed, std::chrono::milliseconds(300));
}

TEST(Workload, SizeStopsAfterExactlyThatManyBytes) {
  Rig rig = make_rig("null:8M");
  WorkloadSpec spec{.rw = RwMode::kRandRead, .block_size = 4096, .iodepth = 8, .size = 1 << 20};
  auto r = run_workload(*rig.driver, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->ios, 256u);
  EXPECT_EQ(r->bytes, uint64_t{1} << 20);
  EXPECT_EQ(r->reads, 256u);
}

TEST(Workload, SequentialWriteCoversTheSpanOnceWithTheVerifyPattern) {
  TempImage img(4 << 20);
  Rig rig = make_rig(img.path());
  constexpr uint64_t kSpan = 1 << 20;
  WorkloadSpec spec{.rw = RwMode::kWrite, .block_size = 8192, .iodepth = 8, .size = kSpan, .span = kSpan,
                    .verify = true};
  auto r = run_workload(*rig.driver, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->ok()) << r->error;
  EXPECT_EQ(r->writes, kSpan / 8192);
  // The final pass read every block back.
  EXPECT_EQ(r->verified_blocks, kSpan / 8192);
  // And the host file holds generation 1 of every sector of the span,
  // nothing after it.
  const auto bytes = img.read(0, kSpan);
  EXPECT_FALSE(check_block(bytes, 0, 1).has_value());
  EXPECT_EQ(img.read(kSpan, 4096), std::vector<std::byte>(4096));
}

TEST(Workload, RandReadWithVerifyPrefillsThenChecksEveryRead) {
  TempImage img(2 << 20);
  Rig rig = make_rig(img.path());
  WorkloadSpec spec{.rw = RwMode::kRandRead, .block_size = 4096, .iodepth = 4, .size = 512 << 10,
                    .span = 1 << 20, .verify = true};
  auto r = run_workload(*rig.driver, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->ok()) << r->error;
  EXPECT_EQ(r->ios, 128u);
  EXPECT_EQ(r->writes, 0u) << "the prefill is not part of the measured run";
  // 128 timed reads plus the final pass over all 256 prefilled blocks.
  EXPECT_EQ(r->verified_blocks, 128u + 256u);
}

TEST(Workload, LostWritesAreReportedWithLbaExpectedAndActual) {
  // null: storage keeps nothing, so every written block reads back as zeroes.
  Rig rig = make_rig("null:4M");
  WorkloadSpec spec{.rw = RwMode::kRandWrite, .block_size = 4096, .iodepth = 4, .size = 64 << 10,
                    .span = 1 << 20, .verify = true};
  auto r = run_workload(*rig.driver, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_FALSE(r->ok());
  EXPECT_GT(r->verify_errors, 0u);
  ASSERT_FALSE(r->mismatches.empty());
  const VerifyMismatch& m = r->mismatches.front();
  EXPECT_EQ(m.field, VerifyMismatch::Field::kMagic);
  EXPECT_EQ(m.expected, kVerifyMagic);
  EXPECT_EQ(m.actual, 0u);
  EXPECT_EQ(m.lba % 8, 0u) << "the first sector of a 4 KiB block";
}

TEST(Workload, OptionErrorsNameTheOption) {
  Rig rig = make_rig("null:1M", 1, 8, 8192);
  auto check = [&](WorkloadSpec s, const char* what) {
    EXPECT_THAT(validate(s, *rig.driver), IsErrorWith(BaseErrc::kInvalidArgument, HasSubstr(what))) << what;
  };
  const auto t = std::chrono::seconds(1);
  check({.block_size = 1000, .iodepth = 1, .runtime = t}, "--bs 1000: not a multiple of 512");
  check({.block_size = 16384, .iodepth = 1, .runtime = t}, "--bs 16384: above the driver's largest request, 8192");
  check({.block_size = 4096, .iodepth = 9, .runtime = t}, "--iodepth 9: not in 1..8");
  check({.block_size = 4096, .iodepth = 1, .queues = 2, .runtime = t}, "--queues 2: not in 1..1");
  check({.block_size = 4096, .iodepth = 1}, "--runtime 0 without --size: the run would not end");
  check({.block_size = 4096, .iodepth = 1, .runtime = t, .span = 2 << 20}, "--span 2097152: beyond");
  check({.block_size = 4096, .iodepth = 8, .runtime = t, .span = 16384}, "fewer than --iodepth 8");
  EXPECT_THAT(parse_rw_mode("sideways"),
              IsErrorWith(BaseErrc::kInvalidArgument, "--rw sideways: not one of randread, randwrite, read, write, "
                                                      "randrw"));
}

TEST(Workload, TheDeviceBlockSizeIsCheckedAgainstTheDriver) {
  LoopbackOptions o;
  o.storage = "null:1M";
  o.blk.blk_size = 4096;
  auto t = LoopbackTransport::create(std::move(o));
  ASSERT_THAT(t, IsOk());
  auto d = blk::BlkDriver::create(**t, {.queue_depth = 4, .max_io_bytes = 8192});
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(validate({.block_size = 1024, .iodepth = 1, .runtime = std::chrono::seconds(1)}, **d),
              IsErrorWith(BaseErrc::kInvalidArgument,
                          "--bs 1024: not a positive multiple of the device block size 4096"));
}

// The same seed submits the same requests: with verify, the image ends up
// holding the same generation of the same blocks, byte for byte, even with
// requests in flight together (a drawn block still in flight is waited
// for, never replaced, so timing cannot change the sequence).
TEST(Workload, TheSameSeedWritesTheSameBlocks) {
  constexpr uint64_t kSpan = 1 << 20;  // 256 blocks: draws of in-flight blocks are common
  auto write_run = [](uint64_t seed) {
    TempImage img(kSpan);
    Rig rig = make_rig(img.path(), 1, 8);
    WorkloadSpec spec{.rw = RwMode::kRandRw, .block_size = 4096, .iodepth = 8, .size = 300 * 4096, .span = kSpan,
                      .verify = true, .seed = seed};
    auto r = run_workload(*rig.driver, spec);
    EXPECT_THAT(r, IsOk());
    EXPECT_TRUE(r->ok()) << r->error;
    EXPECT_EQ(r->ios, 300u);
    return std::make_pair(img.read(0, kSpan), r->writes);
  };
  const auto [a, writes_a] = write_run(7);
  const auto [b, writes_b] = write_run(7);
  const auto [c, writes_c] = write_run(8);
  EXPECT_EQ(writes_a, writes_b);
  EXPECT_TRUE(a == b) << "seed 7 twice wrote different bytes";
  EXPECT_FALSE(a == c) << "seeds 7 and 8 wrote the same bytes";
  (void)writes_c;
}

// --ramp-time: requests before the measurement are sent but neither
// counted nor charged to --size.
TEST(Workload, RampRequestsAreNotMeasured) {
  Rig rig = make_rig("null:8M");
  WorkloadSpec spec{.rw = RwMode::kRandRead, .block_size = 4096, .iodepth = 4, .size = 64 * 4096,
                    .ramp_time = std::chrono::milliseconds(100)};
  auto r = run_workload(*rig.driver, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->ok()) << r->error;
  EXPECT_EQ(r->ios, 64u);
  EXPECT_EQ(r->latency.count(), 64u);
  EXPECT_EQ(r->read_latency.count(), 64u);
  EXPECT_EQ(r->write_latency.count(), 0u);
  EXPECT_GT(rig.transport->completed(0), 64u) << "the ramp's requests reached the device";
}

TEST(Workload, ReadAndWriteLatenciesAreKeptApart) {
  TempImage img(4 << 20);
  Rig rig = make_rig(img.path());
  WorkloadSpec spec{.rw = RwMode::kRandRw, .block_size = 4096, .iodepth = 4, .size = 400 * 4096,
                    .read_percent = 25};
  auto r = run_workload(*rig.driver, spec);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->read_latency.count(), r->reads);
  EXPECT_EQ(r->write_latency.count(), r->writes);
  EXPECT_EQ(r->reads + r->writes, 400u);
  EXPECT_GT(r->writes, r->reads) << "25% reads";
}

// RunHooks::check: kStop drains and marks the result interrupted, without
// the verify pass; the progress callback sees the phases.
TEST(Workload, StopFromTheCheckDrainsAndSaysWhy) {
  TempImage img(4 << 20);
  Rig rig = make_rig(img.path());
  WorkloadSpec spec{.rw = RwMode::kRandWrite, .block_size = 4096, .iodepth = 4,
                    .runtime = std::chrono::seconds(60), .verify = true};
  RunHooks hooks;
  int checks = 0;
  std::vector<RunPhase> phases;
  hooks.progress_interval = std::chrono::milliseconds(1);
  hooks.progress = [&](const Progress& p) { phases.push_back(p.phase); };
  hooks.check = [&]() -> std::optional<Interruption> {
    if (++checks < 3) return std::nullopt;
    return Interruption{Interruption::Kind::kStop, "interrupted by SIGINT"};
  };
  auto r = run_workload(*rig.driver, spec, hooks);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->interrupted, "interrupted by SIGINT");
  EXPECT_TRUE(r->error.empty()) << r->error;
  EXPECT_FALSE(r->ok());
  EXPECT_GT(r->writes, 0u);
  EXPECT_EQ(r->verified_blocks, 0u) << "no verify pass after a stop";
  EXPECT_EQ(rig.driver->in_flight(0), 0u) << "drained";
  EXPECT_LT(r->elapsed, std::chrono::seconds(60));
  ASSERT_FALSE(phases.empty());
  EXPECT_EQ(phases.front(), RunPhase::kMeasure);
}

TEST(Workload, ReadOnlyDeviceRefusesWritesAndVerify) {
  TempImage img(1 << 20);
  LoopbackOptions o;
  o.storage = img.path();
  o.read_only = true;
  auto t = LoopbackTransport::create(std::move(o));
  ASSERT_THAT(t, IsOk());
  auto d = blk::BlkDriver::create(**t, {.queue_depth = 4, .max_io_bytes = 4096});
  ASSERT_THAT(d, IsOk());
  const auto s = std::chrono::seconds(1);
  EXPECT_THAT(validate({.rw = RwMode::kRandWrite, .iodepth = 4, .runtime = s}, **d),
              IsErrorWith(BaseErrc::kInvalidArgument, "--rw randwrite: the device is read-only"));
  EXPECT_THAT(validate({.rw = RwMode::kRead, .iodepth = 4, .runtime = s, .verify = true}, **d),
              IsErrorWith(BaseErrc::kInvalidArgument, "--rw read with --verify: the device is read-only"));
  EXPECT_THAT(validate({.rw = RwMode::kRead, .iodepth = 4, .runtime = s}, **d), IsOk());
}

}  // namespace
}  // namespace vdma::workload
