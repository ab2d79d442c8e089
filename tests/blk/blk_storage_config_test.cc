// Storage specs and sizes, the file and null storages directly, options
// validation and the config space bytes.
#include <fcntl.h>
#include <poll.h>
#include <sys/uio.h>

#include <optional>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "blk_test_util.h"
#include "result_matchers.h"
#include "vdma/blk/blk_device.h"
#include "vdma/virtio/features.h"

namespace vdma::blk {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using namespace ::vdma::testing;  // NOLINT: result matchers
using ::testing::HasSubstr;
using test_util::pattern;
using test_util::TempFile;

TEST(ParseSize, SuffixesArePowersOf1024) {
  EXPECT_THAT(parse_size("512"), HasValue(512u));
  EXPECT_THAT(parse_size("4K"), HasValue(4096u));
  EXPECT_THAT(parse_size("3m"), HasValue(3u << 20));
  EXPECT_THAT(parse_size("1G"), HasValue(1u << 30));
  EXPECT_THAT(parse_size("2T"), HasValue(uint64_t{2} << 40));
  EXPECT_THAT(parse_size("16777215T"), HasValue(uint64_t{16777215} << 40));
}

TEST(ParseSize, BadSizesAreRejected) {
  for (const char* bad : {"", "K", "1X", "-1", "1.5G", " 1", "1 G", "16777216T", "18446744073709551616"}) {
    EXPECT_THAT(parse_size(bad), IsError(BlkErrc::kInvalidSpec)) << bad;
  }
}

TEST(ParseStorageSpec, NullAndPath) {
  auto n = parse_storage_spec("null:1G");
  ASSERT_THAT(n, IsOk());
  EXPECT_EQ(n->kind, StorageSpec::Kind::kNull);
  EXPECT_EQ(n->null_size, uint64_t{1} << 30);
  auto p = parse_storage_spec("/var/disk.img");
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->kind, StorageSpec::Kind::kFile);
  EXPECT_EQ(p->path, "/var/disk.img");
  EXPECT_THAT(parse_storage_spec(""), IsError(BlkErrc::kInvalidSpec));
  EXPECT_THAT(parse_storage_spec("null:"), IsError(BlkErrc::kInvalidSpec));
  EXPECT_THAT(parse_storage_spec("null:0"), IsError(BlkErrc::kInvalidSpec));
  EXPECT_THAT(parse_storage_spec("null:1000"), IsErrorWith(BlkErrc::kInvalidSpec, HasSubstr("multiple of 512")));
  EXPECT_THAT(parse_storage_spec("null:1Q"), IsErrorWith(BlkErrc::kInvalidSpec, HasSubstr("null:1Q")));
}

TEST(OpenStorage, FileErrorsNameThePath) {
  EXPECT_THAT(open_storage({.kind = StorageSpec::Kind::kFile, .path = "/nonexistent/vdma.img"}, {}),
              IsErrorWith(BlkErrc::kIo, HasSubstr("/nonexistent/vdma.img")));
  TempFile tiny(511);
  EXPECT_THAT(open_storage({.kind = StorageSpec::Kind::kFile, .path = tiny.path()}, {}),
              IsErrorWith(BlkErrc::kInvalidSpec, HasSubstr("smaller than one 512-byte sector")));
  EXPECT_THAT(open_storage({.kind = StorageSpec::Kind::kFile, .path = "/dev/null"}, {}),
              IsError(BlkErrc::kInvalidSpec));
}

// Image locking: one writer, or any number of readers (open-file-description
// locks conflict between two opens in one process too).
TEST(OpenStorage, ImageLockAllowsOneWriterOrSharedReaders) {
  TempFile f(4096);
  const StorageSpec spec{.kind = StorageSpec::Kind::kFile, .path = f.path()};
  {
    auto writer = open_storage(spec, {});
    ASSERT_THAT(writer, IsOk());
    EXPECT_THAT(open_storage(spec, {}), IsErrorWith(BlkErrc::kInUse, HasSubstr(f.path() + " is in use")));
    EXPECT_THAT(open_storage(spec, {.read_only = true}),
                IsErrorWith(BlkErrc::kInUse, HasSubstr("open for writing")));
  }
  // The writer is gone: readers share the image, and keep a writer out.
  auto r1 = open_storage(spec, {.read_only = true});
  auto r2 = open_storage(spec, {.read_only = true, .direct = true});
  ASSERT_THAT(r1, IsOk());
  ASSERT_THAT(r2, IsOk());
  EXPECT_THAT(open_storage(spec, {}), IsError(BlkErrc::kInUse));
  r1->reset();
  r2->reset();
  EXPECT_THAT(open_storage(spec, {}), IsOk());
}

TEST(OpenStorage, PartialLastSectorIsCut) {
  TempFile f(1000);
  auto s = open_storage({.kind = StorageSpec::Kind::kFile, .path = f.path()}, {});
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ((*s)->size_bytes(), 512u);
}

TEST(FileStorage, ReadWriteFlushDiscardZeroes) {
  TempFile f(65536, std::byte{0x44});
  auto s = open_storage({.kind = StorageSpec::Kind::kFile, .path = f.path()}, {});
  ASSERT_THAT(s, IsOk());
  auto q = (*s)->make_queue(4);
  ASSERT_THAT(q, IsOk());
  // More iovecs than the queue's scratch array (4): issued in batches.
  auto data = pattern(4096, 8);
  std::vector<iovec> iov;
  for (size_t i = 0; i < 4096; i += 512) iov.push_back({data.data() + i, 512});
  ASSERT_THAT((*q)->write(8192, iov), IsOk());
  EXPECT_THAT(f.read(8192, 4096), ElementsAreArray(data));
  std::vector<std::byte> back(4096);
  iovec one{back.data(), back.size()};
  ASSERT_THAT((*q)->read(8192, {&one, 1}), IsOk());
  EXPECT_EQ(back, data);
  ASSERT_THAT((*q)->flush(), IsOk());
  ASSERT_THAT((*q)->discard(0, 4096), IsOk());
  ASSERT_THAT((*q)->write_zeroes(16384, 4096, false), IsOk());
  ASSERT_THAT((*q)->write_zeroes(32768, 4096, true), IsOk());
  const std::vector<std::byte> zero(4096, std::byte{0});
  EXPECT_EQ(f.read(0, 4096), zero);
  EXPECT_EQ(f.read(16384, 4096), zero);
  EXPECT_EQ(f.read(32768, 4096), zero);
  EXPECT_EQ(f.read(4096, 1)[0], std::byte{0x44});
  EXPECT_EQ(f.read(20480, 1)[0], std::byte{0x44});
}

TEST(FileStorage, ReadPastEndOfFileIsAnError) {
  TempFile f(4096);
  auto s = open_storage({.kind = StorageSpec::Kind::kFile, .path = f.path()}, {});
  ASSERT_THAT(s, IsOk());
  auto q = (*s)->make_queue(4);
  ASSERT_THAT(q, IsOk());
  std::vector<std::byte> buf(512);
  iovec v{buf.data(), buf.size()};
  EXPECT_THAT((*q)->read(4096, {&v, 1}), IsError(BlkErrc::kIo));
}

TEST(FileStorage, ReadOnlyFileRefusesWrites) {
  TempFile f(4096, std::byte{1});
  auto s = open_storage({.kind = StorageSpec::Kind::kFile, .path = f.path()}, {.read_only = true});
  ASSERT_THAT(s, IsOk());
  EXPECT_TRUE((*s)->read_only());
  auto q = (*s)->make_queue(4);
  ASSERT_THAT(q, IsOk());
  auto data = pattern(512, 1);
  iovec v{data.data(), data.size()};
  EXPECT_THAT((*q)->write(0, {&v, 1}), IsError(BlkErrc::kIo));
  EXPECT_EQ(f.read(0, 1)[0], std::byte{1});
}

// `f` opened with O_DIRECT; nullopt when the file system of /tmp has none.
std::optional<Result<std::unique_ptr<StorageBackend>>> open_direct(const TempFile& f) {
  auto s = open_storage({.kind = StorageSpec::Kind::kFile, .path = f.path()}, {.direct = true});
  if (!s && s.error().message().find("Invalid argument") != std::string::npos) return std::nullopt;
  return s;
}

// Runs one operation on the asynchronous path (tag 3) and waits for it, up
// to 5 s: its error, or nullopt on success. `must_go_async`: a start() that
// finishes at once is a failure.
std::optional<Error> run_async(StorageQueue& q, StorageQueue::Op op, uint64_t offset, iovec v,
                               bool must_go_async = false) {
  auto now = q.start(op, offset, {&v, 1}, 3);
  if (now) {
    EXPECT_FALSE(must_go_async) << "start() finished at once";
    return now->has_value() ? std::nullopt : std::optional<Error>(now->error());
  }
  q.submit();
  StorageQueue::Completion c[4];
  for (int i = 0; i < 500; ++i) {
    pollfd p{q.completion_fd(), POLLIN, 0};
    (void)::poll(&p, 1, 10);
    const size_t n = q.reap(c);
    if (n > 0) {
      EXPECT_EQ(n, 1u);
      EXPECT_EQ(c[0].tag, 3u);
      return c[0].error;
    }
  }
  ADD_FAILURE() << "no completion within 5 s";
  return std::nullopt;
}

TEST(FileStorage, DirectIoWithUnalignedBuffersFallsBack) {
  TempFile f(65536, std::byte{0});
  auto s = open_direct(f);
  if (!s) {
    GTEST_SKIP() << "the file system of /tmp has no O_DIRECT";
  }
  ASSERT_THAT(*s, IsOk());
  auto q = (**s)->make_queue(8);
  ASSERT_THAT(q, IsOk());
  // A buffer at an odd address: O_DIRECT refuses it, the page cache takes it.
  std::vector<std::byte> raw(4096 + 1);
  const auto data = pattern(4096, 2);
  std::memcpy(raw.data() + 1, data.data(), data.size());
  iovec v{raw.data() + 1, 4096};
  ASSERT_THAT((*q)->write(4096, {&v, 1}), IsOk());
  EXPECT_EQ(f.read(4096, 4096), data);
  std::vector<std::byte> back(4096 + 1);
  iovec r{back.data() + 1, 4096};
  ASSERT_THAT((*q)->read(4096, {&r, 1}), IsOk());
  EXPECT_TRUE(std::equal(data.begin(), data.end(), back.begin() + 1));
}

// The asynchronous path (io_uring): an aligned transfer goes O_DIRECT, an
// unaligned one falls back to the page-cache fd there too, every byte
// checked.
TEST(FileStorage, AsyncDirectIoWithUnalignedBuffersFallsBackToo) {
  TempFile f(65536, std::byte{0});
  auto s = open_direct(f);
  if (!s) {
    GTEST_SKIP() << "the file system of /tmp has no O_DIRECT";
  }
  ASSERT_THAT(*s, IsOk());
  auto q = (**s)->make_queue(8);
  ASSERT_THAT(q, IsOk());
  StorageQueue& sq = **q;
  ASSERT_GT(sq.max_in_flight(), 0u);
  auto run = [&](StorageQueue::Op op, uint64_t offset, iovec v) { return run_async(sq, op, offset, v); };
  std::vector<std::byte> raw(8192 + 1);
  const auto data = pattern(8192, 5);
  std::memcpy(raw.data() + 1, data.data(), data.size());
  EXPECT_EQ(run(StorageQueue::Op::kWrite, 8192, iovec{raw.data() + 1, 8192}), std::nullopt);
  EXPECT_EQ(f.read(8192, 8192), data);
  std::vector<std::byte> back(8192 + 1);
  EXPECT_EQ(run(StorageQueue::Op::kRead, 8192, iovec{back.data() + 1, 8192}), std::nullopt);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), back.begin() + 1));
  // Aligned: O_DIRECT itself.
  auto* aligned = static_cast<std::byte*>(std::aligned_alloc(4096, 4096));
  ASSERT_NE(aligned, nullptr);
  std::memset(aligned, 0x6b, 4096);
  EXPECT_EQ(run(StorageQueue::Op::kWrite, 0, iovec{aligned, 4096}), std::nullopt);
  EXPECT_EQ(f.read(0, 4096), std::vector<std::byte>(4096, std::byte{0x6b}));
  std::free(aligned);
}

// A disk whose queues and storage are gone can be opened again at once, as
// a restarted vdma-blk does: nothing (an io_uring's registered file table,
// torn down asynchronously by the kernel) keeps the image's lock alive.
TEST(FileStorage, AClosedDiskCanBeOpenedAgainAtOnce) {
  TempFile f(65536, std::byte{0});
  for (int round = 0; round < 20; ++round) {
    auto s = open_storage({.kind = StorageSpec::Kind::kFile, .path = f.path()}, {});
    ASSERT_THAT(s, IsOk()) << "round " << round;
    auto q = (*s)->make_queue(8);
    ASSERT_THAT(q, IsOk());
    std::vector<std::byte> buf(4096);
    // Through the queue's io_uring.
    EXPECT_EQ(run_async(**q, StorageQueue::Op::kRead, 0, iovec{buf.data(), buf.size()}, /*must_go_async=*/true),
              std::nullopt);
  }
}

TEST(NullStorage, ReadsZeroes) {
  auto s = open_storage(*parse_storage_spec("null:4K"), {});
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ((*s)->size_bytes(), 4096u);
  EXPECT_FALSE((*s)->read_only());
  auto q = (*s)->make_queue(1);
  ASSERT_THAT(q, IsOk());
  std::vector<std::byte> buf(1024, std::byte{9});
  iovec v[2] = {{buf.data(), 512}, {buf.data() + 512, 512}};
  ASSERT_THAT((*q)->read(0, v), IsOk());
  EXPECT_EQ(buf, std::vector<std::byte>(1024, std::byte{0}));
}

TEST(BlkOptionsValidation, EachFieldIsChecked) {
  EXPECT_THAT(validate_options({}), IsOk());
  EXPECT_THAT(validate_options({.num_queues = 0}), IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("num_queues 0")));
  EXPECT_THAT(validate_options({.num_queues = 65}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.blk_size = 1024 + 512}), IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("1536")));
  EXPECT_THAT(validate_options({.blk_size = 256}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.blk_size = 8192}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.seg_max = 0}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.seg_max = 1025}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.size_max = 100}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.max_discard_seg = 0}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.max_write_zeroes_seg = 257}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.blk_size = 4096, .max_discard_sectors = 7}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.serial = "123456789012345678901"}), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(validate_options({.serial = std::string("a\nb")}), IsError(BlkErrc::kInvalidOption));
}

TEST(BlkFeatures, OfferedSetDependsOnOptions) {
  const uint64_t base = feature_bit(kBlkFeatureSegMax) | feature_bit(kBlkFeatureBlkSize) |
                        feature_bit(kBlkFeatureFlush) | feature_bit(kBlkFeatureTopology) |
                        feature_bit(kBlkFeatureConfigWce) | feature_bit(kBlkFeatureMq);
  EXPECT_EQ(offered_blk_features({}, false),
            base | feature_bit(kBlkFeatureDiscard) | feature_bit(kBlkFeatureWriteZeroes));
  EXPECT_EQ(offered_blk_features({}, true), base | feature_bit(kBlkFeatureRo));
  EXPECT_EQ(offered_blk_features({.size_max = 65536}, true),
            base | feature_bit(kBlkFeatureRo) | feature_bit(kBlkFeatureSizeMax));
}

TEST(BlkConfigSpace, ExactLittleEndianBytes) {
  auto storage = open_storage(*parse_storage_spec("null:1G"), {});
  ASSERT_THAT(storage, IsOk());
  auto dev = BlkDevice::create(std::move(*storage), {.num_queues = 3,
                                                     .blk_size = 4096,
                                                     .seg_max = 254,
                                                     .size_max = 65536,
                                                     .max_discard_sectors = 0x10000,
                                                     .max_discard_seg = 2,
                                                     .max_write_zeroes_sectors = 0x20000,
                                                     .max_write_zeroes_seg = 3});
  ASSERT_THAT(dev, IsOk());
  ASSERT_EQ(BlkDevice::config_size(), 72u);
  std::vector<std::byte> cfg(72);
  ASSERT_THAT((*dev)->read_config(0, cfg), IsOk());
  const std::vector<uint8_t> want = {
      0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,  // capacity 2^21 sectors
      0x00, 0x00, 0x01, 0x00,                          // size_max 65536
      0xfe, 0x00, 0x00, 0x00,                          // seg_max 254
      0x00, 0x00, 0x00, 0x00,                          // geometry
      0x00, 0x10, 0x00, 0x00,                          // blk_size 4096
      0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,  // topology: exp 0, offset 0, min_io 1, opt_io 0
      0x01, 0x00,                                      // writeback 1, unused0
      0x03, 0x00,                                      // num_queues 3
      0x00, 0x00, 0x01, 0x00,                          // max_discard_sectors
      0x02, 0x00, 0x00, 0x00,                          // max_discard_seg
      0x08, 0x00, 0x00, 0x00,                          // discard_sector_alignment (4096 / 512)
      0x00, 0x00, 0x02, 0x00,                          // max_write_zeroes_sectors
      0x03, 0x00, 0x00, 0x00,                          // max_write_zeroes_seg
      0x01, 0x00, 0x00, 0x00,                          // write_zeroes_may_unmap, unused1
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // secure erase
  };
  ASSERT_EQ(want.size(), 72u);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(std::to_integer<uint8_t>(cfg[i]), want[i]) << "byte " << i;
  // A partial read at an offset.
  std::vector<std::byte> nq(2);
  ASSERT_THAT((*dev)->read_config(34, nq), IsOk());
  EXPECT_EQ(std::to_integer<uint8_t>(nq[0]), 3);
  EXPECT_THAT((*dev)->read_config(71, nq), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT((*dev)->read_config(0xffffffff, nq), IsError(BlkErrc::kInvalidOption));
}

TEST(BlkConfigSpace, WritebackByteIsTheOnlyWritableField) {
  auto storage = open_storage(*parse_storage_spec("null:1M"), {});
  ASSERT_THAT(storage, IsOk());
  auto dev = BlkDevice::create(std::move(*storage), {});
  ASSERT_THAT(dev, IsOk());
  BlkDevice& d = **dev;
  const std::byte zero{0}, one{1}, two{2};
  EXPECT_THAT(d.write_config(kBlkConfigWritebackOffset, std::span(&zero, 1)), IsOk());
  std::byte wb{0xff};
  ASSERT_THAT(d.read_config(kBlkConfigWritebackOffset, std::span(&wb, 1)), IsOk());
  EXPECT_EQ(wb, std::byte{0});
  EXPECT_THAT(d.write_config(kBlkConfigWritebackOffset, std::span(&two, 1)),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("writeback value 2")));
  EXPECT_THAT(d.write_config(0, std::span(&one, 1)), IsError(BlkErrc::kInvalidOption));
  const std::byte pair[2] = {one, one};
  EXPECT_THAT(d.write_config(kBlkConfigWritebackOffset, pair), IsError(BlkErrc::kInvalidOption));
  EXPECT_THAT(d.write_config(kBlkConfigWritebackOffset, std::span(&one, 1)), IsOk());
  ASSERT_THAT(d.read_config(kBlkConfigWritebackOffset, std::span(&wb, 1)), IsOk());
  EXPECT_EQ(wb, std::byte{1});
  // Without CONFIG_WCE the byte is read-only; without FLUSH it reads 0.
  ASSERT_THAT(d.set_features(d.offered_features() & ~feature_bit(kBlkFeatureConfigWce) &
                             ~feature_bit(kBlkFeatureFlush)),
              IsOk());
  EXPECT_THAT(d.write_config(kBlkConfigWritebackOffset, std::span(&one, 1)),
              IsErrorWith(BlkErrc::kInvalidOption, HasSubstr("CONFIG_WCE")));
  ASSERT_THAT(d.read_config(kBlkConfigWritebackOffset, std::span(&wb, 1)), IsOk());
  EXPECT_EQ(wb, std::byte{0});
}

}  // namespace
}  // namespace vdma::blk
