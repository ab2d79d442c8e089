// Every error of BlkDriver::create() and submit(), with its exact code and
// the values its message names; a rejected request leaves the slot free and
// the queue usable.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "blk_driver_test_util.h"
#include "result_matchers.h"
#include "vdma/dma/direct_dma_ops.h"
#include "vdma/virtio/features.h"

namespace vdma::blk {
namespace {

using namespace vdma::testing;
using ::testing::HasSubstr;

std::unique_ptr<LoopbackTransport> make_transport(LoopbackOptions opt) {
  auto t = LoopbackTransport::create(std::move(opt));
  EXPECT_THAT(t, IsOk());
  return t ? std::move(t).value() : nullptr;
}

// The default accepted features without `bits`.
uint64_t features_without(uint64_t bits, const LoopbackOptions& base = {}) {
  auto t = make_transport(base);
  return t == nullptr ? 0 : t->features() & ~bits;
}

TEST(BlkDriverCreate, RejectsBadOptions) {
  auto t = make_transport({.queue_size = 128});
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 0}), IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("queue_depth 0")));
  EXPECT_THAT(BlkDriver::create(*t, {.max_io_bytes = 0}),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("max_io_bytes 0 is not a positive multiple of 512")));
  EXPECT_THAT(BlkDriver::create(*t, {.max_io_bytes = 1000}),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("max_io_bytes 1000 is not a positive multiple of 512")));
  // INDIRECT_DESC: one descriptor per request, so the queue holds 128.
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 129, .max_io_bytes = 4096}),
              IsErrorWith(BlkErrc::kInvalidOption,
                          HasSubstr("queue_depth 129 needs 129 descriptors (1 per request) but queue 0 has 128 free")));
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 128, .max_io_bytes = 4096}), IsOk());
  // Nothing leaked by the failed attempts or the destroyed driver.
  EXPECT_EQ(t->buffer_bytes_in_use(), 0u);
}

TEST(BlkDriverCreate, WithoutIndirectEachRequestTakesThreeDescriptors) {
  const uint64_t f = features_without(feature_bit(kFeatureIndirectDesc));
  auto t = make_transport({.queue_size = 128, .features = f});
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 43, .max_io_bytes = 4096}),
              IsErrorWith(BlkErrc::kInvalidOption,
                          HasSubstr("queue_depth 43 needs 129 descriptors (3 per request) but queue 0 has 128 free")));
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 42, .max_io_bytes = 4096}), IsOk());
}

TEST(BlkDriverCreate, RequestLongerThanTheQueue) {
  // seg_max 8, size_max 4096: 32 KiB takes 8 data descriptors + 2 > queue size 8.
  auto t = make_transport({.queue_size = 8, .blk = {.seg_max = 8, .size_max = 4096}});
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 1, .max_io_bytes = 32768}),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("a request of up to 10 descriptors does not fit queue 0 "
                                                             "of size 8")));
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 1, .max_io_bytes = 24576}), IsOk());
}

TEST(BlkDriverCreate, MaxIoAboveSegMaxTimesSizeMax) {
  auto t = make_transport({.blk = {.seg_max = 2, .size_max = 4096}});
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 4, .max_io_bytes = 12288}),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("max_io_bytes 12288 needs 3 data segments of at most 4096 "
                                                             "bytes but the device takes 2 (seg_max)")));
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 4, .max_io_bytes = 8192}), IsOk());
}

TEST(BlkDriverCreate, WithoutSegMaxOneDataSegment) {
  // No SEG_MAX and no SIZE_MAX: one data segment of any size (Linux's rule).
  const uint64_t f = features_without(feature_bit(kBlkFeatureSegMax));
  auto t = make_transport({.features = f});
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 4, .max_io_bytes = 1 << 20}), IsOk());
}

TEST(BlkDriverCreate, PremappedBufferAboveTheLargestMapping) {
  // A bounce pool maps at most 256 KiB at once; a premapped data buffer is one mapping.
  auto t = make_transport({.premap_buffers = true, .make_dma = [](const GuestMemory& mem, const LoopbackLayout& l)
                                                       -> Result<std::unique_ptr<DmaOps>> {
                             auto pool = VDMA_TRY(BouncePool::create(mem, {.window = l.bounce, .min_areas = 1}));
                             auto coherent = VDMA_TRY(CoherentPool::create(mem, l.coherent));
                             return std::unique_ptr<DmaOps>(VDMA_TRY(DirectDmaOps::create(
                                 mem, {.bounce_mode = BounceMode::kForce, .bounce_pool = pool, .coherent = coherent})));
                           }});
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 2, .max_io_bytes = 512 << 10}),
              IsErrorWith(BlkErrc::kInvalidOption,
                          HasSubstr("max_io_bytes 524288 is above the largest DMA mapping 262144 of the bounce ops")));
  EXPECT_EQ(t->buffer_bytes_in_use(), 0u);
}

TEST(BlkDriverCreate, QueuesWithoutMq) {
  const uint64_t f = features_without(feature_bit(kBlkFeatureMq), {.num_queues = 2});
  auto t = make_transport({.num_queues = 2, .features = f});
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(BlkDriver::create(*t, {}),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("the transport set up 2 queues but MQ was not negotiated")));
}

TEST(BlkDriverCreate, OutOfGuestMemory) {
  // 64 slots of 128 KiB do not fit 4 MiB of RAM; everything taken is given back.
  auto t = make_transport({.ram_size = 4 << 20});
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(BlkDriver::create(*t, {.queue_depth = 64, .max_io_bytes = 128 << 10}),
              IsErrorWith(MemErrc::kNoSpace, HasSubstr("queue 0 slot ")));
  EXPECT_EQ(t->buffer_bytes_in_use(), 0u);
}

class BlkDriverSubmit : public ::testing::Test {
 protected:
  void start(LoopbackOptions opt) {
    transport_ = make_transport(std::move(opt));
    ASSERT_NE(transport_, nullptr);
    auto d = BlkDriver::create(*transport_, {.queue_depth = 8, .max_io_bytes = 8192});
    ASSERT_THAT(d, IsOk());
    driver_ = std::move(d).value();
  }
  // Requests that must still work after rejected ones (a null disk: reads
  // return zeroes whatever was written).
  void expect_usable() {
    ASSERT_THAT(driver_->write(0, 16, test_util::pattern(4096, 77)), IsOk());
    std::vector<std::byte> back(4096, std::byte{0x3c});
    ASSERT_THAT(driver_->read(0, 16, back), IsOk());
    EXPECT_EQ(back, std::vector<std::byte>(4096));
    EXPECT_EQ(driver_->in_flight(0), 0u);
  }
  std::unique_ptr<LoopbackTransport> transport_;
  std::unique_ptr<BlkDriver> driver_;
};

TEST_F(BlkDriverSubmit, RejectsBadRequests) {
  start({.storage = "null:1M"});  // 2048 sectors
  ASSERT_EQ(driver_->capacity_sectors(), 2048u);
  auto invalid = [](std::string msg) { return IsErrorWith(BlkErrc::kInvalidOption, HasSubstr(msg)); };
  EXPECT_THAT(driver_->submit(1, 0, BlkOp::kRead, 0, 512), invalid("queue 1 out of range (the driver has 1)"));
  EXPECT_THAT(driver_->submit(0, 8, BlkOp::kRead, 0, 512), invalid("queue 0: slot 8 out of range (queue depth 8)"));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kRead, 0, 1000),
              invalid("queue 0: read of length 1000 at sector 0: not a multiple of 512"));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kWrite, 0, 0),
              invalid("queue 0: write of length 0 at sector 0: not a multiple of 512"));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kRead, 0, 8704), invalid("queue 0: read of length 8704 is above "
                                                                     "max_io_bytes 8192"));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kRead, 2047, 1024),
              invalid("queue 0: read of sectors [2047, 2047+2) is past the capacity of 2048 sectors"));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kWrite, UINT64_MAX, 512),
              invalid("is past the capacity of 2048 sectors"));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kDiscard, 2040, 8192),
              invalid("queue 0: discard of sectors [2040, 2040+16) is past the capacity"));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kGetId, 0, 21), invalid("queue 0: get-id length 21 is not in 1..20"));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kGetId, 0, 0), invalid("get-id length 0"));
  // The last sector works.
  EXPECT_THAT(driver_->read(0, 2047, std::span<std::byte>(driver_->buffer(0, 5).first(512))), IsOk());

  ASSERT_THAT(driver_->submit(0, 3, BlkOp::kRead, 0, 512), IsOk());
  EXPECT_THAT(driver_->submit(0, 3, BlkOp::kRead, 8, 512), invalid("queue 0: slot 3 is in flight"));
  // The synchronous helpers need an idle queue.
  std::vector<std::byte> buf(512);
  EXPECT_THAT(driver_->read(0, 0, buf),
              invalid("queue 0: 1 requests in flight; the synchronous helpers need an idle queue"));
  ASSERT_THAT(driver_->kick(0), IsOk());
  BlkCompletion c[1];
  ASSERT_THAT(driver_->wait(0, c, std::chrono::seconds(5)), HasValue(1u));
  EXPECT_EQ(c[0].slot, 3u);
  EXPECT_EQ(c[0].status, kBlkStatusOk);
  EXPECT_THAT(driver_->kick(2), invalid("queue 2 out of range"));
  EXPECT_THAT(driver_->reap(2, c), invalid("queue 2 out of range"));
  EXPECT_THAT(driver_->wait(2, c, std::chrono::seconds(1)), invalid("queue 2 out of range"));
  EXPECT_THAT(driver_->read(0, 0, std::span<std::byte>()), invalid("queue 0: read of 0 bytes"));
  expect_usable();
}

TEST_F(BlkDriverSubmit, ReadOnlyDevice) {
  start({.storage = "null:1M", .read_only = true});
  EXPECT_TRUE(driver_->read_only());
  EXPECT_FALSE(driver_->supports(BlkOp::kWrite));
  EXPECT_FALSE(driver_->supports(BlkOp::kDiscard));
  EXPECT_FALSE(driver_->supports(BlkOp::kWriteZeroes));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kWrite, 8, 512),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("queue 0: write at sector 8 on a read-only device")));
  EXPECT_THAT(driver_->write(0, 8, test_util::pattern(512, 1)),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("on a read-only device")));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kDiscard, 8, 512),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("queue 0: discard at sector 8 on a read-only device")));
  EXPECT_EQ(driver_->in_flight(0), 0u);
  // Reads of a null disk return zeroes, over what the buffer held.
  std::fill_n(driver_->buffer(0, 0).begin(), 512, std::byte{0x5a});
  std::vector<std::byte> back(1024, std::byte{0x11});
  ASSERT_THAT(driver_->read(0, 8, back), IsOk());
  EXPECT_EQ(back, std::vector<std::byte>(1024));
}

TEST_F(BlkDriverSubmit, OpsThatWereNotNegotiated) {
  const uint64_t f = features_without(feature_bit(kBlkFeatureDiscard) | feature_bit(kBlkFeatureWriteZeroes) |
                                      feature_bit(kBlkFeatureFlush));
  start({.features = f, .storage = "null:1M"});
  EXPECT_FALSE(driver_->supports(BlkOp::kDiscard));
  EXPECT_FALSE(driver_->supports(BlkOp::kWriteZeroes));
  EXPECT_FALSE(driver_->supports(BlkOp::kFlush));
  EXPECT_THAT(driver_->submit(0, 0, BlkOp::kDiscard, 0, 512),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("queue 0: discard was not negotiated")));
  EXPECT_THAT(driver_->write_zeroes(0, 0, 512),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("queue 0: write-zeroes was not negotiated")));
  EXPECT_THAT(driver_->flush(0), IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("queue 0: flush was not negotiated")));
  expect_usable();
}

TEST_F(BlkDriverSubmit, DiscardAboveTheDeviceLimit) {
  start({.storage = "null:1M", .blk = {.max_discard_sectors = 8, .max_write_zeroes_sectors = 4}});
  EXPECT_THAT(driver_->discard(0, 0, 16 * 512),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("queue 0: discard of 16 sectors is above the device's "
                                                             "limit of 8")));
  EXPECT_THAT(driver_->write_zeroes(0, 0, 8 * 512),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("write-zeroes of 8 sectors is above the device's limit "
                                                             "of 4")));
  EXPECT_THAT(driver_->discard(0, 0, 8 * 512), IsOk());
  EXPECT_THAT(driver_->write_zeroes(0, 0, 4 * 512), IsOk());
}

}  // namespace
}  // namespace vdma::blk
