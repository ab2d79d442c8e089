// BlkDevice request handling: every request type with exact bytes on a
// temporary file and on the null disk, every bad-request class with its exact
// status, read-only disks, discard / write-zeroes semantics and hostile chains.
#include "vdma/blk/blk_device.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>
#include <thread>

#include "blk_test_util.h"
#include "result_matchers.h"
#include "vdma/virtio/features.h"

namespace vdma::blk {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using namespace ::vdma::testing;  // NOLINT: result matchers
using test_util::header_bytes;
using test_util::pattern;
using test_util::RequestBuilder;
using test_util::segment_bytes;
using test_util::TempFile;

constexpr uint64_t kDiskBytes = 1 << 20;  // 2048 sectors

std::unique_ptr<BlkDevice> file_device(const TempFile& f, BlkOptions opt = {}, StorageOptions so = {}) {
  auto spec = parse_storage_spec(f.path());
  EXPECT_THAT(spec, IsOk());
  auto storage = open_storage(*spec, so);
  EXPECT_THAT(storage, IsOk());
  auto dev = BlkDevice::create(std::move(*storage), opt);
  EXPECT_THAT(dev, IsOk());
  return std::move(*dev);
}

std::unique_ptr<BlkDevice> null_device(BlkOptions opt = {}, bool read_only = false) {
  auto storage = open_storage(*parse_storage_spec("null:1M"), {.read_only = read_only});
  EXPECT_THAT(storage, IsOk());
  auto dev = BlkDevice::create(std::move(*storage), opt);
  EXPECT_THAT(dev, IsOk());
  return std::move(*dev);
}

class FileDeviceTest : public ::testing::Test {
 protected:
  TempFile file_{kDiskBytes, std::byte{0x5a}};
  std::unique_ptr<BlkDevice> dev_ = file_device(file_);
};

TEST_F(FileDeviceTest, ReadReturnsFileBytesAcrossFragments) {
  const auto data = pattern(1024, 3);
  file_.write(4096, data);
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeIn, 8)).writable(100).writable(924).status();
  EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1025u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  std::vector<std::byte> got = rq.out(0);
  const auto second = rq.out(1);
  got.insert(got.end(), second.begin(), second.end());
  EXPECT_THAT(got, ElementsAreArray(data));
}

TEST_F(FileDeviceTest, WriteStoresExactBytes) {
  const auto data = pattern(1536, 9);
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeOut, 2))
      .readable({data.begin(), data.begin() + 1000})
      .readable({data.begin() + 1000, data.end()})
      .status();
  EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  EXPECT_THAT(file_.read(1024, 1536), ElementsAreArray(data));
  EXPECT_EQ(file_.read(1023, 1)[0], std::byte{0x5a});
  EXPECT_EQ(file_.read(1024 + 1536, 1)[0], std::byte{0x5a});
}

TEST_F(FileDeviceTest, WriteWithHeaderAndDataInOneFragment) {
  auto bytes = header_bytes(kBlkTypeOut, 0);
  const auto data = pattern(512, 1);
  bytes.insert(bytes.end(), data.begin(), data.end());
  RequestBuilder rq;
  rq.readable(bytes).status();
  EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  EXPECT_THAT(file_.read(0, 512), ElementsAreArray(data));
}

TEST_F(FileDeviceTest, LastSectorIsReachableAndNextIsNot) {
  RequestBuilder ok_rq;
  ok_rq.readable(header_bytes(kBlkTypeIn, 2047)).writable(512).status();
  EXPECT_THAT(dev_->handle(ok_rq.chain()), HasValue(513u));
  EXPECT_EQ(ok_rq.status_byte(), kBlkStatusOk);
  RequestBuilder past;
  past.readable(header_bytes(kBlkTypeIn, 2047)).writable(1024).status();
  EXPECT_THAT(dev_->handle(past.chain()), HasValue(1025u));
  EXPECT_EQ(past.status_byte(), kBlkStatusIoErr);
  // The used length claims the data bytes (§2.7.8.2: written), so they are
  // zeroed, never left as the buffer's old bytes.
  EXPECT_EQ(past.out(0), std::vector<std::byte>(1024, std::byte{0}));
  RequestBuilder beyond;
  beyond.readable(header_bytes(kBlkTypeOut, 2048)).readable(pattern(512, 0)).status();
  EXPECT_THAT(dev_->handle(beyond.chain()), HasValue(1u));
  EXPECT_EQ(beyond.status_byte(), kBlkStatusIoErr);
  EXPECT_THAT(file_.read(kDiskBytes - 512, 512), ElementsAreArray(std::vector<std::byte>(512, std::byte{0x5a})));
}

TEST_F(FileDeviceTest, SectorTimes512OverflowIsIoErr) {
  for (const uint64_t sector : {std::numeric_limits<uint64_t>::max(), uint64_t{1} << 55,
                                (std::numeric_limits<uint64_t>::max() >> 9) + 1}) {
    RequestBuilder rq;
    rq.readable(header_bytes(kBlkTypeIn, sector)).writable(512).status();
    EXPECT_THAT(dev_->handle(rq.chain()), HasValue(513u));
    EXPECT_EQ(rq.status_byte(), kBlkStatusIoErr) << sector;
  }
}

TEST_F(FileDeviceTest, DataNotMultipleOf512IsIoErr) {
  RequestBuilder rd;
  rd.readable(header_bytes(kBlkTypeIn, 0)).writable(511).status();
  EXPECT_THAT(dev_->handle(rd.chain()), HasValue(512u));
  EXPECT_EQ(rd.status_byte(), kBlkStatusIoErr);
  RequestBuilder wr;
  wr.readable(header_bytes(kBlkTypeOut, 0)).readable(pattern(513, 1)).status();
  EXPECT_THAT(dev_->handle(wr.chain()), HasValue(1u));
  EXPECT_EQ(wr.status_byte(), kBlkStatusIoErr);
  EXPECT_EQ(file_.read(0, 1)[0], std::byte{0x5a});
}

TEST_F(FileDeviceTest, DataOnTheWrongSideIsIoErr) {
  RequestBuilder in_with_out_data;
  in_with_out_data.readable(header_bytes(kBlkTypeIn, 0)).readable(pattern(512, 1)).writable(512).status();
  EXPECT_THAT(dev_->handle(in_with_out_data.chain()), HasValue(513u));
  EXPECT_EQ(in_with_out_data.status_byte(), kBlkStatusIoErr);
  EXPECT_EQ(in_with_out_data.out(0), std::vector<std::byte>(512, std::byte{0}));
  RequestBuilder out_with_in_data;
  out_with_in_data.readable(header_bytes(kBlkTypeOut, 0)).readable(pattern(512, 1)).writable(512).status();
  EXPECT_THAT(dev_->handle(out_with_in_data.chain()), HasValue(513u));
  EXPECT_EQ(out_with_in_data.status_byte(), kBlkStatusIoErr);
  EXPECT_EQ(file_.read(0, 1)[0], std::byte{0x5a});
  RequestBuilder flush_with_data;
  flush_with_data.readable(header_bytes(kBlkTypeFlush, 0)).readable(pattern(512, 1)).status();
  EXPECT_THAT(dev_->handle(flush_with_data.chain()), HasValue(1u));
  EXPECT_EQ(flush_with_data.status_byte(), kBlkStatusIoErr);
}

TEST_F(FileDeviceTest, FlushIsOk) {
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeFlush, 0)).status();
  EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
}

TEST_F(FileDeviceTest, GetIdIsNulPaddedSerial) {
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeGetId, 0)).writable(20).status();
  EXPECT_THAT(dev_->handle(rq.chain()), HasValue(21u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  std::vector<std::byte> want(20, std::byte{0});
  const std::string serial = "vdma-blk";
  std::memcpy(want.data(), serial.data(), serial.size());
  EXPECT_THAT(rq.out(0), ElementsAreArray(want));
}

TEST(BlkDeviceGetId, TwentyByteSerialHasNoTerminator) {
  auto dev = null_device({.serial = "ABCDEFGHIJKLMNOPQRST"});
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeGetId, 0)).writable(8).writable(12).status();
  EXPECT_THAT(dev->handle(rq.chain()), HasValue(21u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  std::string got;
  for (const auto& part : {rq.out(0), rq.out(1)}) {
    for (std::byte b : part) got.push_back(static_cast<char>(b));
  }
  EXPECT_EQ(got, "ABCDEFGHIJKLMNOPQRST");
}

TEST(BlkDeviceGetId, NoDataBufferIsIoErr) {
  auto dev = null_device();
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeGetId, 0)).status();
  EXPECT_THAT(dev->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusIoErr);
}

TEST_F(FileDeviceTest, UnknownAndUnimplementedTypesAreUnsupp) {
  for (const uint32_t type : {2u, 3u, kBlkTypeGetLifetime, kBlkTypeSecureErase, 0xffffffffu}) {
    RequestBuilder rq;
    rq.readable(header_bytes(type, 0)).status();
    EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u));
    EXPECT_EQ(rq.status_byte(), kBlkStatusUnsupp) << type;
  }
}

TEST_F(FileDeviceTest, DiscardReadsBackZero) {
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeDiscard, 0)).readable(segment_bytes(8, 16, 0)).status();
  EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  EXPECT_THAT(file_.read(4096, 8192), ElementsAreArray(std::vector<std::byte>(8192, std::byte{0})));
  EXPECT_EQ(file_.read(4095, 1)[0], std::byte{0x5a});
  EXPECT_EQ(file_.read(4096 + 8192, 1)[0], std::byte{0x5a});
}

TEST_F(FileDeviceTest, WriteZeroesWithAndWithoutUnmapAcrossSegments) {
  auto segs = segment_bytes(1, 3, 0);
  const auto second = segment_bytes(100, 7, kBlkDiscardFlagUnmap);
  segs.insert(segs.end(), second.begin(), second.end());
  RequestBuilder rq;
  // The two segments straddle fragment boundaries.
  rq.readable(header_bytes(kBlkTypeWriteZeroes, 0))
      .readable({segs.begin(), segs.begin() + 5})
      .readable({segs.begin() + 5, segs.end()})
      .status();
  EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  EXPECT_THAT(file_.read(512, 3 * 512), ElementsAreArray(std::vector<std::byte>(3 * 512, std::byte{0})));
  EXPECT_THAT(file_.read(100 * 512, 7 * 512), ElementsAreArray(std::vector<std::byte>(7 * 512, std::byte{0})));
  EXPECT_EQ(file_.read(511, 1)[0], std::byte{0x5a});
  EXPECT_EQ(file_.read(4 * 512, 1)[0], std::byte{0x5a});
  EXPECT_EQ(file_.read(107 * 512, 1)[0], std::byte{0x5a});
}

TEST_F(FileDeviceTest, BadDiscardSegmentsChangeNothing) {
  struct Case {
    uint32_t type;
    std::vector<std::byte> data;
    uint8_t status;
  };
  auto two = [](std::vector<std::byte> a, const std::vector<std::byte>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const std::vector<Case> cases = {
      {kBlkTypeDiscard, {}, kBlkStatusIoErr},                                            // no segment
      {kBlkTypeDiscard, pattern(15, 0), kBlkStatusIoErr},                                // short segment
      {kBlkTypeDiscard, pattern(17, 0), kBlkStatusIoErr},                                // not a multiple of 16
      {kBlkTypeDiscard, segment_bytes(0, 8, kBlkDiscardFlagUnmap), kBlkStatusUnsupp},    // UNMAP on discard
      {kBlkTypeWriteZeroes, segment_bytes(0, 8, 2), kBlkStatusUnsupp},                   // reserved flag
      {kBlkTypeDiscard, segment_bytes(2040, 16, 0), kBlkStatusIoErr},                    // past capacity
      {kBlkTypeWriteZeroes, segment_bytes(~uint64_t{0}, 1, 0), kBlkStatusIoErr},         // sector overflow
      {kBlkTypeDiscard, segment_bytes(0, (1u << 22) + 1, 0), kBlkStatusIoErr},           // over max sectors
      // The first segment is valid, the second is not: neither runs.
      {kBlkTypeWriteZeroes, two(segment_bytes(0, 8, 0), segment_bytes(4000, 8, 0)), kBlkStatusIoErr},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    RequestBuilder rq;
    rq.readable(header_bytes(cases[i].type, 0));
    if (!cases[i].data.empty()) rq.readable(cases[i].data);
    rq.status();
    EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u)) << i;
    EXPECT_EQ(rq.status_byte(), cases[i].status) << "case " << i;
    EXPECT_THAT(file_.read(0, 4096), ElementsAreArray(std::vector<std::byte>(4096, std::byte{0x5a}))) << i;
  }
}

TEST_F(FileDeviceTest, TooManySegmentsIsUnsupp) {
  std::vector<std::byte> segs;
  for (int i = 0; i < 17; ++i) {
    const auto s = segment_bytes(static_cast<uint64_t>(i) * 8, 8, 0);
    segs.insert(segs.end(), s.begin(), s.end());
  }
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeDiscard, 0)).readable(segs).status();
  EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusUnsupp);
}

TEST_F(FileDeviceTest, DiscardNotNegotiatedIsUnsupp) {
  const uint64_t without = dev_->offered_features() & ~(feature_bit(kBlkFeatureDiscard) |
                                                        feature_bit(kBlkFeatureWriteZeroes));
  ASSERT_THAT(dev_->set_features(without), IsOk());
  for (const uint32_t type : {kBlkTypeDiscard, kBlkTypeWriteZeroes}) {
    RequestBuilder rq;
    rq.readable(header_bytes(type, 0)).readable(segment_bytes(0, 8, 0)).status();
    EXPECT_THAT(dev_->handle(rq.chain()), HasValue(1u));
    EXPECT_EQ(rq.status_byte(), kBlkStatusUnsupp);
  }
  EXPECT_EQ(file_.read(0, 1)[0], std::byte{0x5a});
}

TEST(BlkDeviceAlignment, UnalignedToBlockSizeIsIoErr) {
  TempFile f(kDiskBytes, std::byte{0x11});
  auto dev = file_device(f, {.blk_size = 4096});
  RequestBuilder unaligned_sector;
  unaligned_sector.readable(header_bytes(kBlkTypeIn, 1)).writable(4096).status();
  EXPECT_THAT(dev->handle(unaligned_sector.chain()), HasValue(4097u));
  EXPECT_EQ(unaligned_sector.status_byte(), kBlkStatusIoErr);
  RequestBuilder unaligned_len;
  unaligned_len.readable(header_bytes(kBlkTypeOut, 8)).readable(pattern(512, 0)).status();
  EXPECT_THAT(dev->handle(unaligned_len.chain()), HasValue(1u));
  EXPECT_EQ(unaligned_len.status_byte(), kBlkStatusIoErr);
  RequestBuilder discard;
  discard.readable(header_bytes(kBlkTypeDiscard, 0)).readable(segment_bytes(8, 4, 0)).status();
  EXPECT_THAT(dev->handle(discard.chain()), HasValue(1u));
  EXPECT_EQ(discard.status_byte(), kBlkStatusIoErr);
  RequestBuilder aligned;
  aligned.readable(header_bytes(kBlkTypeIn, 8)).writable(4096).status();
  EXPECT_THAT(dev->handle(aligned.chain()), HasValue(4097u));
  EXPECT_EQ(aligned.status_byte(), kBlkStatusOk);
  EXPECT_THAT(aligned.out(0), ElementsAreArray(std::vector<std::byte>(4096, std::byte{0x11})));
}

TEST(BlkDeviceReadOnly, WritesAndDiscardsFailReadsWork) {
  TempFile f(kDiskBytes, std::byte{0x22});
  auto dev = file_device(f, {}, {.read_only = true});
  EXPECT_TRUE(dev->read_only());
  EXPECT_TRUE(has_feature(dev->offered_features(), kBlkFeatureRo));
  EXPECT_FALSE(has_feature(dev->offered_features(), kBlkFeatureDiscard));
  RequestBuilder wr;
  wr.readable(header_bytes(kBlkTypeOut, 0)).readable(pattern(512, 1)).status();
  EXPECT_THAT(dev->handle(wr.chain()), HasValue(1u));
  EXPECT_EQ(wr.status_byte(), kBlkStatusIoErr);
  RequestBuilder rd;
  rd.readable(header_bytes(kBlkTypeIn, 0)).writable(512).status();
  EXPECT_THAT(dev->handle(rd.chain()), HasValue(513u));
  EXPECT_EQ(rd.status_byte(), kBlkStatusOk);
  EXPECT_THAT(rd.out(0), ElementsAreArray(std::vector<std::byte>(512, std::byte{0x22})));
  RequestBuilder fl;
  fl.readable(header_bytes(kBlkTypeFlush, 0)).status();
  EXPECT_THAT(dev->handle(fl.chain()), HasValue(1u));
  EXPECT_EQ(fl.status_byte(), kBlkStatusOk);
  // DISCARD was not offered, so it is not negotiated either.
  RequestBuilder dc;
  dc.readable(header_bytes(kBlkTypeDiscard, 0)).readable(segment_bytes(0, 1, 0)).status();
  EXPECT_THAT(dev->handle(dc.chain()), HasValue(1u));
  EXPECT_EQ(dc.status_byte(), kBlkStatusUnsupp);
  EXPECT_THAT(f.read(0, 512), ElementsAreArray(std::vector<std::byte>(512, std::byte{0x22})));
}

TEST(BlkDeviceNull, ReadsZeroesWritesSucceed) {
  auto dev = null_device();
  EXPECT_EQ(dev->capacity_sectors(), 2048u);
  RequestBuilder wr;
  wr.readable(header_bytes(kBlkTypeOut, 0)).readable(pattern(4096, 1)).status();
  EXPECT_THAT(dev->handle(wr.chain()), HasValue(1u));
  EXPECT_EQ(wr.status_byte(), kBlkStatusOk);
  RequestBuilder rd;
  rd.readable(header_bytes(kBlkTypeIn, 0)).writable(4096, std::byte{0x77}).status();
  EXPECT_THAT(dev->handle(rd.chain()), HasValue(4097u));
  EXPECT_EQ(rd.status_byte(), kBlkStatusOk);
  EXPECT_THAT(rd.out(0), ElementsAreArray(std::vector<std::byte>(4096, std::byte{0})));
  for (const uint32_t type : {kBlkTypeDiscard, kBlkTypeWriteZeroes}) {
    RequestBuilder rq;
    rq.readable(header_bytes(type, 0)).readable(segment_bytes(0, 8, 0)).status();
    EXPECT_THAT(dev->handle(rq.chain()), HasValue(1u));
    EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  }
  RequestBuilder past;
  past.readable(header_bytes(kBlkTypeIn, 2048)).writable(512).status();
  EXPECT_THAT(dev->handle(past.chain()), HasValue(513u));
  EXPECT_EQ(past.status_byte(), kBlkStatusIoErr);
  RequestBuilder ro;
  auto ro_dev = null_device({}, true);
  ro.readable(header_bytes(kBlkTypeOut, 0)).readable(pattern(512, 1)).status();
  EXPECT_THAT(ro_dev->handle(ro.chain()), HasValue(1u));
  EXPECT_EQ(ro.status_byte(), kBlkStatusIoErr);
}

// Hostile chains.

// No writable status byte: a used length of 0 would read as success to the
// driver (issue: stale translations gave such chains), so it is an error.
TEST(BlkDeviceHostile, EmptyChainIsABadChain) {
  auto dev = null_device();
  DescriptorChain empty;
  EXPECT_THAT(dev->handle(empty), IsError(BlkErrc::kBadChain));
}

TEST(BlkDeviceHostile, NoWritableStatusIsABadChain) {
  auto dev = null_device();
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeIn, 0));
  EXPECT_THAT(dev->handle(rq.chain()), IsErrorWith(BlkErrc::kBadChain, HasSubstr("no writable status byte")));
}

TEST(BlkDeviceHostile, ZeroLengthStatusFragmentIsSkipped) {
  auto dev = null_device();
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeFlush, 0)).status().writable(0);
  EXPECT_THAT(dev->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(std::to_integer<uint8_t>(rq.out(0)[0]), kBlkStatusOk);
  RequestBuilder only_empty;
  only_empty.readable(header_bytes(kBlkTypeFlush, 0)).writable(0).writable(0);
  EXPECT_THAT(dev->handle(only_empty.chain()), IsError(BlkErrc::kBadChain));
}

TEST(BlkDeviceHostile, HeaderSplitAcrossFragments) {
  TempFile f(kDiskBytes, std::byte{0x33});
  auto dev = file_device(f);
  const auto h = header_bytes(kBlkTypeOut, 4);
  const auto data = pattern(512, 4);
  RequestBuilder rq;
  rq.readable({h.begin(), h.begin() + 1})
      .readable({})
      .readable({h.begin() + 1, h.begin() + 9})
      .readable({h.begin() + 9, h.end()})
      .readable(data)
      .status();
  EXPECT_THAT(dev->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  EXPECT_THAT(f.read(2048, 512), ElementsAreArray(data));
}

TEST(BlkDeviceHostile, ShortHeaderIsIoErr) {
  auto dev = null_device();
  const auto h = header_bytes(kBlkTypeIn, 0);
  RequestBuilder rq;
  rq.readable({h.begin(), h.begin() + 15}).status();
  EXPECT_THAT(dev->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusIoErr);
  RequestBuilder no_readable;
  no_readable.writable(512).status();
  EXPECT_THAT(dev->handle(no_readable.chain()), HasValue(513u));
  EXPECT_EQ(no_readable.status_byte(), kBlkStatusIoErr);
}

TEST(BlkDeviceHostile, ChainWithWalkErrorIsNotProcessed) {
  auto dev = null_device();
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeIn, 0)).writable(512).status();
  DescriptorChain chain = rq.chain();
  chain.error = Error(VirtioErrc::kBadDescriptor, "test");
  EXPECT_THAT(dev->handle(chain), IsError(BlkErrc::kBadChain));
  EXPECT_EQ(rq.status_byte(), 0xee);
}

TEST(BlkDeviceHostile, QueueIndexOutOfRangeIsAnError) {
  auto dev = null_device({.num_queues = 2});
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeFlush, 0)).status();
  EXPECT_THAT(dev->handle(2, rq.chain()), IsError(BlkErrc::kInvalidOption));
  EXPECT_EQ(rq.status_byte(), 0xee);
  EXPECT_THAT(dev->handle(1, rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
}

TEST(BlkDeviceHostile, ManyTinyFragmentsAreBatched) {
  // More fragments than the queue's iovec array (seg_max + 2 = 18, clamped
  // to at least 16): the transfer is split, every byte still lands.
  TempFile f(kDiskBytes, std::byte{0});
  auto dev = file_device(f, {.seg_max = 16});
  const auto data = pattern(8192, 5);
  RequestBuilder rq;
  rq.readable(header_bytes(kBlkTypeOut, 16));
  for (size_t i = 0; i < data.size(); i += 64) rq.readable({data.begin() + i, data.begin() + i + 64});
  rq.status();
  EXPECT_THAT(dev->handle(rq.chain()), HasValue(1u));
  EXPECT_EQ(rq.status_byte(), kBlkStatusOk);
  EXPECT_THAT(f.read(8192, 8192), ElementsAreArray(data));
  RequestBuilder rd;
  rd.readable(header_bytes(kBlkTypeIn, 16));
  for (int i = 0; i < 128; ++i) rd.writable(64);
  rd.status();
  EXPECT_THAT(dev->handle(rd.chain()), HasValue(8193u));
  EXPECT_EQ(rd.status_byte(), kBlkStatusOk);
  std::vector<std::byte> got;
  for (size_t i = 0; i < 128; ++i) {
    const auto part = rd.out(i);
    got.insert(got.end(), part.begin(), part.end());
  }
  EXPECT_THAT(got, ElementsAreArray(data));
}

TEST(BlkDeviceQueues, QueuesRunConcurrently) {
  TempFile f(kDiskBytes, std::byte{0});
  auto dev = file_device(f, {.num_queues = 4});
  std::vector<std::thread> threads;
  for (uint32_t q = 0; q < 4; ++q) {
    threads.emplace_back([&, q] {
      for (uint64_t i = 0; i < 50; ++i) {
        const uint64_t sector = q * 512 + (i % 64) * 8;
        const auto data = pattern(4096, static_cast<uint8_t>(q * 50 + i));
        RequestBuilder wr;
        wr.readable(header_bytes(kBlkTypeOut, sector)).readable(data).status();
        EXPECT_THAT(dev->handle(q, wr.chain()), HasValue(1u));
        RequestBuilder rd;
        rd.readable(header_bytes(kBlkTypeIn, sector)).writable(4096).status();
        EXPECT_THAT(dev->handle(q, rd.chain()), HasValue(4097u));
        EXPECT_EQ(rd.status_byte(), kBlkStatusOk);
        EXPECT_EQ(rd.out(0), data);
      }
    });
  }
  for (auto& t : threads) t.join();
}

TEST(BlkDeviceCache, WritethroughWhenFlushNotAcceptedOrWceCleared) {
  auto dev = null_device();
  EXPECT_TRUE(dev->writeback_enabled());
  ASSERT_THAT(dev->set_features(dev->offered_features() & ~feature_bit(kBlkFeatureFlush)), IsOk());
  EXPECT_FALSE(dev->writeback_enabled());
  ASSERT_THAT(dev->set_features(dev->offered_features()), IsOk());
  const std::byte zero{0};
  ASSERT_THAT(dev->write_config(kBlkConfigWritebackOffset, std::span(&zero, 1)), IsOk());
  EXPECT_FALSE(dev->writeback_enabled());
  dev->reset();
  EXPECT_TRUE(dev->writeback_enabled());
}

TEST(BlkDeviceFeatures, UnofferedBitIsRejected) {
  auto dev = null_device({}, true);
  EXPECT_THAT(dev->set_features(feature_bit(kBlkFeatureDiscard)), IsError(BlkErrc::kInvalidOption));
  // Bits above 23 belong to the transport and are ignored here.
  EXPECT_THAT(dev->set_features(feature_bit(kFeatureVersion1) | feature_bit(kBlkFeatureRo)), IsOk());
  EXPECT_EQ(dev->acked_features(), feature_bit(kBlkFeatureRo));
}

}  // namespace
}  // namespace vdma::blk
