// BlkDevice's asynchronous path (start / submit / reap) on a real file:
// many requests in flight on one queue's io_uring, exact bytes for each,
// completions reported once per tag, writethrough writes completing after
// their flush, and the requests that finish at once.
#include <poll.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "blk_test_util.h"
#include "result_matchers.h"
#include "vdma/blk/blk_device.h"
#include "vdma/virtio/features.h"

namespace vdma::blk {
namespace {

using ::testing::ElementsAreArray;
using namespace ::vdma::testing;  // NOLINT: result matchers
using test_util::header_bytes;
using test_util::pattern;
using test_util::RequestBuilder;
using test_util::TempFile;

constexpr uint64_t kDiskBytes = 1 << 20;

std::unique_ptr<BlkDevice> file_device(const TempFile& f, BlkOptions opt = {}) {
  auto storage = open_storage(*parse_storage_spec(f.path()), {});
  EXPECT_THAT(storage, IsOk());
  auto dev = BlkDevice::create(std::move(*storage), opt);
  EXPECT_THAT(dev, IsOk());
  return std::move(*dev);
}

// Reaps until `n` completions arrived (waiting on the completion fd); tag -> used.
std::map<uint32_t, uint32_t> reap_all(BlkDevice& dev, size_t n) {
  std::map<uint32_t, uint32_t> got;
  std::array<BlkDeviceCompletion, 8> buf{};
  while (got.size() < n) {
    const size_t k = dev.reap(0, buf);
    for (size_t i = 0; i < k; ++i) {
      EXPECT_TRUE(got.emplace(buf[i].tag, buf[i].used).second) << "tag " << buf[i].tag << " reported twice";
    }
    if (k == 0) {
      pollfd p{dev.completion_fd(0), POLLIN, 0};
      if (::poll(&p, 1, 5000) != 1) {
        ADD_FAILURE() << "no completion within 5 s; " << got.size() << " of " << n;
        break;
      }
    }
  }
  return got;
}

TEST(BlkAsync, FileQueueTakesAWholeQueueOfRequests) {
  TempFile file(kDiskBytes, std::byte{0x5a});
  auto dev = file_device(file);
  EXPECT_EQ(dev->max_in_flight(0), 1024u);
  EXPECT_GE(dev->completion_fd(0), 0);
  auto null = BlkDevice::create(open_storage(*parse_storage_spec("null:1M"), {}).value(), {});
  ASSERT_THAT(null, IsOk());
  EXPECT_EQ((*null)->max_in_flight(0), 0u);  // completes at once: start() is handle()
  EXPECT_EQ((*null)->completion_fd(0), -1);
}

TEST(BlkAsync, ManyWritesThenReadsInFlightMoveExactBytes) {
  TempFile file(kDiskBytes, std::byte{0x5a});
  auto dev = file_device(file);
  constexpr uint32_t kRequests = 64;
  std::vector<RequestBuilder> writes(kRequests);
  for (uint32_t i = 0; i < kRequests; ++i) {
    // 4 KiB at sector 8*i, in two fragments (the header carries no data).
    writes[i].readable(header_bytes(kBlkTypeOut, 8 * i)).readable(pattern(1536, uint8_t(i)))
        .readable(pattern(2560, uint8_t(i + 100))).status();
    auto r = dev->start(0, writes[i].chain(), i);
    ASSERT_FALSE(r.has_value()) << "a file write runs in the background";
  }
  dev->submit(0);
  auto done = reap_all(*dev, kRequests);
  ASSERT_EQ(done.size(), kRequests);
  for (uint32_t i = 0; i < kRequests; ++i) {
    EXPECT_EQ(done.at(i), 1u);  // the status byte only
    EXPECT_EQ(writes[i].status_byte(), kBlkStatusOk) << i;
    std::vector<std::byte> expect = pattern(1536, uint8_t(i));
    const auto tail = pattern(2560, uint8_t(i + 100));
    expect.insert(expect.end(), tail.begin(), tail.end());
    EXPECT_THAT(file.read(4096 * i, 4096), ElementsAreArray(expect)) << i;
  }
  EXPECT_EQ(file.read(4096 * kRequests, 1)[0], std::byte{0x5a});

  std::vector<RequestBuilder> reads(kRequests);
  for (uint32_t i = 0; i < kRequests; ++i) {
    reads[i].readable(header_bytes(kBlkTypeIn, 8 * i)).writable(4096).status();
    ASSERT_FALSE(dev->start(0, reads[i].chain(), kRequests - 1 - i).has_value());
  }
  dev->submit(0);
  done = reap_all(*dev, kRequests);
  for (uint32_t i = 0; i < kRequests; ++i) {
    EXPECT_EQ(done.at(kRequests - 1 - i), 4097u);
    EXPECT_EQ(reads[i].status_byte(), kBlkStatusOk);
    EXPECT_THAT(reads[i].out(0), ElementsAreArray(file.read(4096 * i, 4096))) << i;
  }
}

TEST(BlkAsync, FlushAndWritethroughWritesComplete) {
  TempFile file(kDiskBytes, std::byte{0x5a});
  // No FLUSH accepted: writethrough, each write completes after its flush.
  auto dev = file_device(file);
  ASSERT_THAT(dev->set_features(0), IsOk());
  ASSERT_FALSE(dev->writeback_enabled());
  RequestBuilder w;
  w.readable(header_bytes(kBlkTypeOut, 16)).readable(pattern(512, 3)).status();
  ASSERT_FALSE(dev->start(0, w.chain(), 5).has_value());
  dev->submit(0);
  auto done = reap_all(*dev, 1);
  EXPECT_EQ(done, (std::map<uint32_t, uint32_t>{{5, 1}}));
  EXPECT_EQ(w.status_byte(), kBlkStatusOk);
  EXPECT_THAT(file.read(16 * 512, 512), ElementsAreArray(pattern(512, 3)));

  RequestBuilder f;
  f.readable(header_bytes(kBlkTypeFlush, 0)).status();
  ASSERT_FALSE(dev->start(0, f.chain(), 0).has_value());
  dev->submit(0);
  EXPECT_EQ(reap_all(*dev, 1), (std::map<uint32_t, uint32_t>{{0, 1}}));
  EXPECT_EQ(f.status_byte(), kBlkStatusOk);
}

TEST(BlkAsync, InvalidAndImmediateRequestsFinishAtOnce) {
  TempFile file(kDiskBytes, std::byte{0x5a});
  auto dev = file_device(file);
  // Past the end: IOERR at once, nothing in flight.
  RequestBuilder past;
  past.readable(header_bytes(kBlkTypeIn, kDiskBytes / 512)).writable(512).status();
  auto r = dev->start(0, past.chain(), 0);
  ASSERT_TRUE(r.has_value());
  EXPECT_THAT(*r, HasValue(513u));
  EXPECT_EQ(past.status_byte(), kBlkStatusIoErr);
  EXPECT_EQ(past.out(0), std::vector<std::byte>(512, std::byte{0})) << "claimed, so written: as zeros";
  EXPECT_EQ(dev->queue_errors(0), 1u);  // what vdma-blk's statistics report as errors
  // GET_ID runs at once.
  RequestBuilder id;
  id.readable(header_bytes(kBlkTypeGetId, 0)).writable(20).status();
  r = dev->start(0, id.chain(), 1);
  ASSERT_TRUE(r.has_value());
  EXPECT_THAT(*r, HasValue(21u));
  EXPECT_EQ(id.status_byte(), kBlkStatusOk);
  // No status byte: the same error as handle().
  RequestBuilder bad;
  bad.readable(header_bytes(kBlkTypeIn, 0));
  r = dev->start(0, bad.chain(), 2);
  ASSERT_TRUE(r.has_value());
  EXPECT_THAT(*r, IsError(BlkErrc::kBadChain));
  EXPECT_EQ(dev->queue_errors(0), 1u) << "no status written: not a completed request";
  // Nothing was left in flight.
  std::array<BlkDeviceCompletion, 4> buf{};
  EXPECT_EQ(dev->reap(0, buf), 0u);
}

// A read the storage fails (EIO past the file's end, after the device
// opened it at full size) completes with IOERR and its data zeroed: the used
// length claims those bytes (§2.7.8.2), so they are written, as zeros,
// never left as what the driver's buffer (or its bounce slot) held.
TEST(BlkAsync, AFailedReadInFlightCompletesWithItsDataZeroed) {
  TempFile file(kDiskBytes, std::byte{0x5a});
  auto dev = file_device(file);
  ASSERT_EQ(::truncate(file.path().c_str(), 4096), 0);
  RequestBuilder rd;
  rd.readable(header_bytes(kBlkTypeIn, 16)).writable(1000).writable(3096).status();
  auto r = dev->start(0, rd.chain(), 3);
  ASSERT_FALSE(r.has_value()) << "the read should be in flight";
  dev->submit(0);
  const auto got = reap_all(*dev, 1);
  ASSERT_EQ(got.count(3), 1u);
  EXPECT_EQ(got.at(3), 4097u);
  EXPECT_EQ(rd.status_byte(), kBlkStatusIoErr);
  EXPECT_EQ(rd.out(0), std::vector<std::byte>(1000, std::byte{0}));
  EXPECT_EQ(rd.out(1), std::vector<std::byte>(3096, std::byte{0}));
  // A read that succeeds on the same tag afterwards is not touched by that.
  RequestBuilder ok;
  ok.readable(header_bytes(kBlkTypeIn, 0)).writable(4096).status();
  r = dev->start(0, ok.chain(), 3);
  if (!r) {
    dev->submit(0);
    ASSERT_EQ(reap_all(*dev, 1).count(3), 1u);
  }
  EXPECT_EQ(ok.status_byte(), kBlkStatusOk);
  EXPECT_EQ(ok.out(0), std::vector<std::byte>(4096, std::byte{0x5a}));
}

TEST(BlkAsync, MoreFragmentsThanOneOperationTakesRunsAtOnce) {
  TempFile file(kDiskBytes, std::byte{0x5a});
  auto dev = file_device(file, {.seg_max = 1});  // 16 iovecs per operation at least
  RequestBuilder w;
  w.readable(header_bytes(kBlkTypeOut, 0));
  std::vector<std::byte> expect;
  for (int i = 0; i < 40; ++i) {
    auto p = pattern(512, uint8_t(i));
    expect.insert(expect.end(), p.begin(), p.end());
    w.readable(std::move(p));
  }
  w.status();
  auto r = dev->start(0, w.chain(), 0);
  ASSERT_TRUE(r.has_value());
  EXPECT_THAT(*r, HasValue(1u));
  EXPECT_EQ(w.status_byte(), kBlkStatusOk);
  EXPECT_THAT(file.read(0, expect.size()), ElementsAreArray(expect));
}

}  // namespace
}  // namespace vdma::blk
