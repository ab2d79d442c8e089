// BlkDriver over the loopback transport, both ring formats, with interrupt
// eventfds and with polling: exact bytes of write/read round trips from 512
// bytes to max_io_bytes (checked in the backing file too), queue depth 32
// with completions that overtake each other, flush / discard /
// write-zeroes / get-id and their exact effect on the file, and what the
// device answers to requests it refuses.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "blk_driver_test_util.h"
#include "result_matchers.h"
#include "vdma/virtio/features.h"
#include "param_printers.h"

namespace vdma::blk {
namespace {

using namespace vdma::testing;
using test_util::pattern;
using test_util::TempDisk;
using ::testing::HasSubstr;

constexpr uint64_t kDiskBytes = 8 << 20;
constexpr uint32_t kMaxIo = 128 << 10;

struct Mode {
  RingFormat format;
  bool polling;
};

std::string mode_name(const ::testing::TestParamInfo<Mode>& info) {
  return std::string(to_string(info.param.format)) + (info.param.polling ? "_polling" : "_eventfd");
}

class BlkDriverIo : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override { ASSERT_TRUE(disk_.ok()); }

  // A transport over the temp file and a driver on it.
  void start(LoopbackOptions opt, BlkDriverOptions dopt = {.queue_depth = 32, .max_io_bytes = kMaxIo}) {
    opt.format = GetParam().format;
    opt.polling = GetParam().polling;
    opt.storage = disk_.path();
    auto t = LoopbackTransport::create(std::move(opt));
    ASSERT_THAT(t, IsOk());
    transport_ = std::move(t).value();
    auto d = BlkDriver::create(*transport_, dopt);
    ASSERT_THAT(d, IsOk());
    driver_ = std::move(d).value();
  }

  void TearDown() override {
    if (transport_) {
      for (uint32_t q = 0; q < transport_->num_queues(); ++q) EXPECT_EQ(transport_->device_error(q), std::nullopt);
    }
    driver_.reset();
    if (transport_) {
      EXPECT_EQ(transport_->buffer_bytes_in_use(), 0u);
    }
    transport_.reset();
  }

  TempDisk disk_{kDiskBytes};
  std::unique_ptr<LoopbackTransport> transport_;
  std::unique_ptr<BlkDriver> driver_;
};

TEST_P(BlkDriverIo, ReportsWhatTheDeviceOffers) {
  start({.blk = {.blk_size = 512, .serial = "loop-serial-1"}});
  EXPECT_EQ(driver_->capacity_sectors(), kDiskBytes / 512);
  EXPECT_EQ(driver_->block_size(), 512u);
  EXPECT_FALSE(driver_->read_only());
  EXPECT_EQ(driver_->num_queues(), 1u);
  EXPECT_EQ(driver_->queue_depth(), 32u);
  EXPECT_EQ(driver_->max_io_bytes(), kMaxIo);
  for (BlkOp op : {BlkOp::kRead, BlkOp::kWrite, BlkOp::kFlush, BlkOp::kDiscard, BlkOp::kWriteZeroes, BlkOp::kGetId}) {
    EXPECT_TRUE(driver_->supports(op)) << to_string(op);
  }
  EXPECT_EQ(driver_->buffer(0, 31).size(), kMaxIo);
  EXPECT_THAT(driver_->get_id(0), HasValue(std::string("loop-serial-1")));
}

TEST_P(BlkDriverIo, WriteThenReadReturnsExactBytesForEverySize) {
  start({});
  uint64_t sector = 0;
  uint32_t seed = 1;
  for (uint32_t size : {512u, 1024u, 4096u, 4608u, 65536u, 65536u + 512u, kMaxIo - 512u, kMaxIo, 3 * kMaxIo + 1024}) {
    SCOPED_TRACE(size);
    const std::vector<std::byte> data = pattern(size, seed++);
    ASSERT_THAT(driver_->write(0, sector, data), IsOk());
    // What the device stored, read from the file itself.
    EXPECT_EQ(disk_.read(sector * 512, size), data);
    std::vector<std::byte> back(size, std::byte{0x77});
    ASSERT_THAT(driver_->read(0, sector, back), IsOk());
    EXPECT_EQ(back, data);
    sector += size / 512 + 3;  // gaps stay zero
  }
  // A sector between two writes was never written: still zero in the file.
  EXPECT_EQ(disk_.read(512 + 512, 512), std::vector<std::byte>(512));
  // The last sector of the disk is reachable, one past it is not.
  const std::vector<std::byte> last = pattern(512, 99);
  ASSERT_THAT(driver_->write(0, kDiskBytes / 512 - 1, last), IsOk());
  EXPECT_EQ(disk_.read(kDiskBytes - 512, 512), last);
}

TEST_P(BlkDriverIo, ReadsWhatTheFileHolds) {
  start({});
  const std::vector<std::byte> data = pattern(20480, 7);
  disk_.write(4096 * 512, data);
  std::vector<std::byte> back(data.size());
  ASSERT_THAT(driver_->read(0, 4096, back), IsOk());
  EXPECT_EQ(back, data);
}

// 32 requests in flight; the device returns each batch last-first, so the
// completions overtake each other. Every slot is refilled as soon as it
// completes, alternating writes and verifying reads over random sectors.
TEST_P(BlkDriverIo, QueueDepth32WithOutOfOrderCompletions) {
  start({.complete_out_of_order = true});
  constexpr uint32_t kDepth = 32;
  constexpr int kRequests = 3000;
  constexpr uint32_t kBlocks = 1024;  // 4 KiB blocks used by the test
  std::mt19937 rng(GetParam().polling ? 11 : 12);
  std::map<uint64_t, uint32_t> stored;  // block -> seed of what it holds
  struct Pending {
    BlkOp op;
    uint64_t block;
    uint32_t seed;
  };
  std::vector<Pending> pending(kDepth);
  std::vector<uint32_t> free_slots;
  for (uint32_t s = 0; s < kDepth; ++s) free_slots.push_back(s);
  std::vector<bool> block_busy(kBlocks, false);
  int submitted = 0;
  int completed = 0;
  int overtaken = 0;  // completions of a request submitted before the one completed just earlier
  uint64_t prev_order = 0;
  uint64_t last_submit_order = 0;
  std::vector<uint64_t> submit_order(kDepth);
  std::vector<BlkCompletion> done(kDepth);
  while (completed < kRequests) {
    while (!free_slots.empty() && submitted < kRequests) {
      const uint32_t slot = free_slots.back();
      uint64_t block = rng() % kBlocks;
      while (block_busy[block]) block = (block + 1) % kBlocks;
      // A block is in at most one request at a time, so every read knows
      // exactly what it must find.
      const bool write = !stored.contains(block) || rng() % 2 == 0;
      Pending p{write ? BlkOp::kWrite : BlkOp::kRead, block, 0};
      if (write) {
        p.seed = static_cast<uint32_t>(rng());
        const auto data = pattern(4096, p.seed);
        std::copy(data.begin(), data.end(), driver_->buffer(0, slot).begin());
      } else {
        p.seed = stored[block];
        std::fill_n(driver_->buffer(0, slot).begin(), 4096, std::byte{0xcc});
      }
      ASSERT_THAT(driver_->submit(0, slot, p.op, block * 8, 4096), IsOk());
      block_busy[block] = true;
      pending[slot] = p;
      submit_order[slot] = last_submit_order++;
      free_slots.pop_back();
      ++submitted;
    }
    ASSERT_THAT(driver_->kick(0), IsOk());
    auto n = driver_->wait(0, done, std::chrono::seconds(10));
    ASSERT_THAT(n, IsOk());
    ASSERT_GE(*n, 1u);
    for (size_t i = 0; i < *n; ++i) {
      const BlkCompletion& c = done[i];
      ASSERT_LT(c.slot, kDepth);
      const Pending& p = pending[c.slot];
      if (completed > 0 && submit_order[c.slot] < prev_order) ++overtaken;
      prev_order = submit_order[c.slot];
      EXPECT_EQ(c.status, kBlkStatusOk);
      if (p.op == BlkOp::kWrite) {
        EXPECT_EQ(c.used_len, 1u);  // the status byte only
        stored[p.block] = p.seed;
      } else {
        EXPECT_EQ(c.used_len, 4096u + 1);
        const auto got = test_util::to_vector(driver_->buffer(0, c.slot).first(4096));
        ASSERT_EQ(got, pattern(4096, p.seed)) << "block " << p.block;
      }
      block_busy[p.block] = false;
      free_slots.push_back(c.slot);
      ++completed;
    }
  }
  EXPECT_EQ(driver_->in_flight(0), 0u);
  EXPECT_GT(overtaken, 0);
  // The file holds the last write of every block.
  for (const auto& [block, seed] : stored) ASSERT_EQ(disk_.read(block * 4096, 4096), pattern(4096, seed)) << block;
}

TEST_P(BlkDriverIo, FlushDiscardWriteZeroesGetIdHaveTheirExactEffect) {
  start({.blk = {.serial = "id-0123456789abcdefg"}});  // 20 bytes: no NUL terminator
  const std::vector<std::byte> data = pattern(64 << 10, 5);
  ASSERT_THAT(driver_->write(0, 0, data), IsOk());
  ASSERT_THAT(driver_->flush(0), IsOk());
  // Discard sectors [8, 24) and write zeroes over [40, 41).
  ASSERT_THAT(driver_->discard(0, 8, 16 * 512), IsOk());
  ASSERT_THAT(driver_->write_zeroes(0, 40, 512), IsOk());
  std::vector<std::byte> expect = data;
  std::fill(expect.begin() + 8 * 512, expect.begin() + 24 * 512, std::byte{0});
  std::fill(expect.begin() + 40 * 512, expect.begin() + 41 * 512, std::byte{0});
  EXPECT_EQ(disk_.read(0, data.size()), expect);
  std::vector<std::byte> back(data.size());
  ASSERT_THAT(driver_->read(0, 0, back), IsOk());
  EXPECT_EQ(back, expect);
  EXPECT_THAT(driver_->get_id(0), HasValue(std::string("id-0123456789abcdefg")));

  // The asynchronous forms report their used lengths: status only, and
  // 20 ID bytes + status for GET_ID.
  BlkCompletion c[1];
  ASSERT_THAT(driver_->submit(0, 5, BlkOp::kFlush, 0, 0), IsOk());
  ASSERT_THAT(driver_->kick(0), IsOk());
  ASSERT_THAT(driver_->wait(0, c, std::chrono::seconds(5)), HasValue(1u));
  EXPECT_EQ(c[0].slot, 5u);
  EXPECT_EQ(c[0].status, kBlkStatusOk);
  EXPECT_EQ(c[0].used_len, 1u);
  ASSERT_THAT(driver_->submit(0, 6, BlkOp::kGetId, 0, 20), IsOk());
  ASSERT_THAT(driver_->kick(0), IsOk());
  ASSERT_THAT(driver_->wait(0, c, std::chrono::seconds(5)), HasValue(1u));
  EXPECT_EQ(c[0].slot, 6u);
  EXPECT_EQ(c[0].used_len, 21u);
  EXPECT_EQ(test_util::to_vector(driver_->buffer(0, 6).first(3)),
            (std::vector<std::byte>{std::byte{'i'}, std::byte{'d'}, std::byte{'-'}}));
}

TEST_P(BlkDriverIo, DeviceAnswersIoErrForAMisalignedRequest) {
  // blk_size 4096: the driver leaves alignment to the device (virtio 1.2
  // §5.2.6.2 makes it the device's rule), which answers IOERR.
  start({.blk = {.blk_size = 4096}});
  EXPECT_EQ(driver_->block_size(), 4096u);
  const std::vector<std::byte> data = pattern(512, 3);
  std::copy(data.begin(), data.end(), driver_->buffer(0, 2).begin());
  ASSERT_THAT(driver_->submit(0, 2, BlkOp::kWrite, 1, 512), IsOk());
  ASSERT_THAT(driver_->kick(0), IsOk());
  BlkCompletion c[2];
  ASSERT_THAT(driver_->wait(0, c, std::chrono::seconds(5)), HasValue(1u));
  EXPECT_EQ(c[0].slot, 2u);
  EXPECT_EQ(c[0].status, kBlkStatusIoErr);
  EXPECT_EQ(c[0].used_len, 1u);
  EXPECT_EQ(disk_.read(512, 512), std::vector<std::byte>(512));  // nothing written
  // The synchronous helper turns it into BlkErrc::kIo naming op, sector and status.
  EXPECT_THAT(driver_->write(0, 1, data),
              IsErrorWith(BlkErrc::kIo, HasSubstr("write at sector 1 (512 bytes): device status IOERR (1)")));
  EXPECT_THAT(driver_->read(0, 9, std::span<std::byte>(driver_->buffer(0, 3).first(4096))),
              IsErrorWith(BlkErrc::kIo, HasSubstr("read at sector 9 (4096 bytes): device status IOERR")));
  // Aligned requests still work after the errors.
  const std::vector<std::byte> ok_data = pattern(4096, 4);
  ASSERT_THAT(driver_->write(0, 8, ok_data), IsOk());
  EXPECT_EQ(disk_.read(4096, 4096), ok_data);
}

TEST_P(BlkDriverIo, ReadOnlyDiskRefusesAWriteTheDriverWasNotToldAbout) {
  // The device offers RO but the driver does not accept it, so the driver
  // sends the write and the device answers IOERR; the file is unchanged.
  LoopbackOptions probe_opt{.read_only = true};
  probe_opt.storage = disk_.path();
  auto probe = LoopbackTransport::create(probe_opt);
  ASSERT_THAT(probe, IsOk());
  const uint64_t offered = (*probe)->offered_features();
  ASSERT_TRUE(has_feature(offered, kBlkFeatureRo));
  probe->reset();
  disk_.write(0, pattern(4096, 9));
  start({.features = offered & ~feature_bit(kBlkFeatureRo) & ~feature_bit(kFeatureAccessPlatform) &
                     ~feature_bit(kFeatureRingPacked),
         .read_only = true});
  EXPECT_FALSE(driver_->read_only());
  EXPECT_FALSE(driver_->supports(BlkOp::kDiscard));
  std::copy_n(pattern(4096, 10).begin(), 4096, driver_->buffer(0, 0).begin());
  ASSERT_THAT(driver_->submit(0, 0, BlkOp::kWrite, 0, 4096), IsOk());
  ASSERT_THAT(driver_->kick(0), IsOk());
  BlkCompletion c[1];
  ASSERT_THAT(driver_->wait(0, c, std::chrono::seconds(5)), HasValue(1u));
  EXPECT_EQ(c[0].status, kBlkStatusIoErr);
  EXPECT_EQ(disk_.read(0, 4096), pattern(4096, 9));
  std::vector<std::byte> back(4096);
  ASSERT_THAT(driver_->read(0, 0, back), IsOk());
  EXPECT_EQ(back, pattern(4096, 9));
}

TEST_P(BlkDriverIo, WaitWithNothingInFlightTimesOutAtOnce) {
  start({});
  BlkCompletion c[4];
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(driver_->wait(0, c, std::chrono::seconds(20)),
              IsErrorWith(BaseErrc::kTimeout, HasSubstr("queue 0: nothing in flight")));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_THAT(driver_->reap(0, c), HasValue(0u));
}

TEST_P(BlkDriverIo, WaitTimesOutNamingTheSlotsInFlightUntilTheKick) {
  start({});
  // The device thread sleeps until the first notification: requests
  // submitted without a kick are not seen.
  ASSERT_THAT(driver_->submit(0, 3, BlkOp::kRead, 0, 512), IsOk());
  ASSERT_THAT(driver_->submit(0, 17, BlkOp::kFlush, 0, 0), IsOk());
  EXPECT_EQ(driver_->in_flight(0), 2u);
  BlkCompletion c[4];
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(driver_->wait(0, c, std::chrono::milliseconds(50)),
              IsErrorWith(BaseErrc::kTimeout, HasSubstr("queue 0: no completion within 50000 us; 2 requests in "
                                                        "flight (slots 3, 17)")));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(50));
  ASSERT_THAT(driver_->kick(0), IsOk());
  size_t got = 0;
  while (got < 2) {
    auto n = driver_->wait(0, std::span<BlkCompletion>(c).subspan(got), std::chrono::seconds(5));
    ASSERT_THAT(n, IsOk());
    got += *n;
  }
  std::vector<uint32_t> slots{c[0].slot, c[1].slot};
  std::sort(slots.begin(), slots.end());
  EXPECT_EQ(slots, (std::vector<uint32_t>{3, 17}));
  EXPECT_EQ(transport_->kicks(0), 1u);
}

TEST_P(BlkDriverIo, DataSplitIntoSizeMaxSegments) {
  // size_max 4096, seg_max 4: a 16 KiB request is four data descriptors.
  start({.blk = {.seg_max = 4, .size_max = 4096}}, {.queue_depth = 8, .max_io_bytes = 16384});
  const std::vector<std::byte> data = pattern(16384, 21);
  ASSERT_THAT(driver_->write(0, 100, data), IsOk());
  EXPECT_EQ(disk_.read(100 * 512, data.size()), data);
  std::vector<std::byte> back(data.size());
  ASSERT_THAT(driver_->read(0, 100, back), IsOk());
  EXPECT_EQ(back, data);
}

TEST_P(BlkDriverIo, WithoutIndirectDescriptors) {
  // No INDIRECT_DESC: three ring descriptors per request, depth 42 fits 128.
  LoopbackOptions opt;
  opt.storage = disk_.path();
  auto probe = LoopbackTransport::create(opt);
  ASSERT_THAT(probe, IsOk());
  const uint64_t f = (*probe)->features() & ~feature_bit(kFeatureIndirectDesc) & ~feature_bit(kFeatureRingPacked);
  probe->reset();
  start({.features = f}, {.queue_depth = 42, .max_io_bytes = 4096});
  std::vector<BlkCompletion> done(42);
  for (uint32_t s = 0; s < 42; ++s) {
    const auto d = pattern(4096, 200 + s);
    std::copy(d.begin(), d.end(), driver_->buffer(0, s).begin());
    ASSERT_THAT(driver_->submit(0, s, BlkOp::kWrite, s * 8, 4096), IsOk());
  }
  ASSERT_THAT(driver_->kick(0), IsOk());
  size_t got = 0;
  while (got < 42) {
    auto n = driver_->wait(0, std::span<BlkCompletion>(done).subspan(got), std::chrono::seconds(5));
    ASSERT_THAT(n, IsOk());
    got += *n;
  }
  for (const BlkCompletion& c : done) EXPECT_EQ(c.status, kBlkStatusOk);
  for (uint32_t s = 0; s < 42; ++s) ASSERT_EQ(disk_.read(uint64_t{s} * 4096, 4096), pattern(4096, 200 + s)) << s;
}

[[maybe_unused]] void PrintTo(const Mode& m, std::ostream* os) { *os << mode_name({m, 0}); }

INSTANTIATE_TEST_SUITE_P(Modes, BlkDriverIo,
                         ::testing::Values(Mode{RingFormat::kSplit, false}, Mode{RingFormat::kSplit, true},
                                           Mode{RingFormat::kPacked, false}, Mode{RingFormat::kPacked, true}),
                         mode_name);

}  // namespace
}  // namespace vdma::blk
