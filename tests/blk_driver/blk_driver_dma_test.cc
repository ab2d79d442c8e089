// BlkDriver through the platform DMA layer: per-request mapping (three
// mappings per request, all undone), premapped buffers (mapped once at
// create(), never per request, unmapped at destruction), and a forced
// bounce (a confidential guest's swiotlb) where the device reaches only
// shared memory, so every byte it reads or writes crosses the bounce pool.
// The platform's notify hook runs once per kick, and the DMA-API debug
// checker sees every CPU access the driver declares land on a buffer the
// CPU owns.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <thread>

#include "blk_driver_test_util.h"
#include "result_matchers.h"
#include "vdma/dma/debug_dma_ops.h"
#include "vdma/dma/direct_dma_ops.h"
#include "vdma/mem/region_table.h"
#include "param_printers.h"

namespace vdma::blk {
namespace {

using namespace vdma::testing;
using test_util::pattern;
using test_util::TempDisk;

// Forwards to an owned DmaOps and counts what the driver side asks of it.
class CountingDmaOps final : public DmaOps {
 public:
  explicit CountingDmaOps(std::unique_ptr<DmaOps> inner) : inner_(std::move(inner)) {}

  Result<DmaAddr> map(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) override {
    maps[static_cast<int>(dir)].fetch_add(1);
    return inner_->map(gpa, len, dir, attrs);
  }
  Result<void> unmap(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs) override {
    unmaps[static_cast<int>(dir)].fetch_add(1);
    return inner_->unmap(addr, len, dir, attrs);
  }
  Result<void> sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) override {
    syncs.fetch_add(1);
    return inner_->sync_for_cpu(addr, len, dir);
  }
  Result<void> sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) override {
    syncs.fetch_add(1);
    return inner_->sync_for_device(addr, len, dir);
  }
  Result<CoherentBuffer> alloc_coherent(uint64_t size) override { return inner_->alloc_coherent(size); }
  Result<void> free_coherent(const CoherentBuffer& buf) override { return inner_->free_coherent(buf); }
  uint64_t max_mapping_size() const override { return inner_->max_mapping_size(); }
  bool need_sync(DmaAddr addr) const override { return inner_->need_sync(addr); }
  std::string_view kind() const noexcept override { return inner_->kind(); }

  uint64_t total_maps() const { return maps[0] + maps[1] + maps[2]; }
  uint64_t total_unmaps() const { return unmaps[0] + unmaps[1] + unmaps[2]; }

  std::atomic<uint64_t> maps[3] = {0, 0, 0};    // by DmaDirection
  std::atomic<uint64_t> unmaps[3] = {0, 0, 0};
  std::atomic<uint64_t> syncs{0};

 private:
  std::unique_ptr<DmaOps> inner_;
};

constexpr int kTo = static_cast<int>(DmaDirection::kToDevice);
constexpr int kFrom = static_cast<int>(DmaDirection::kFromDevice);
constexpr int kBidi = static_cast<int>(DmaDirection::kBidirectional);

class BlkDriverDma : public ::testing::TestWithParam<RingFormat> {
 protected:
  // A loopback whose DmaOps is a CountingDmaOps around `inner`.
  void start(bool premap, std::function<Result<std::unique_ptr<DmaOps>>(const GuestMemory&, const LoopbackLayout&)> inner,
             bool shared_only_device, uint32_t queues = 1) {
    LoopbackOptions opt{.format = GetParam(), .num_queues = queues, .premap_buffers = premap};
    opt.storage = disk_.path();
    opt.notify_flush = &flush_;
    opt.make_dma = [this, inner](const GuestMemory& mem, const LoopbackLayout& l) -> Result<std::unique_ptr<DmaOps>> {
      auto ops = std::make_unique<CountingDmaOps>(VDMA_TRY(inner(mem, l)));
      counting_ = ops.get();
      if (!debug_) return std::unique_ptr<DmaOps>(std::move(ops));
      // The checker in front of the counter: what the driver's transport.dma() is.
      checked_ = std::move(ops);
      auto dbg = std::make_unique<DebugDmaOps>(*checked_, "blk0");
      checker_ = dbg.get();
      return std::unique_ptr<DmaOps>(std::move(dbg));
    };
    if (shared_only_device) {
      // The device reaches shared memory only: a private buffer handed to it
      // would fail its translation and the request would come back unprocessed.
      opt.make_device_memory = [](const GuestMemory& mem, DmaOps&) -> Result<std::unique_ptr<DeviceMemory>> {
        return std::unique_ptr<DeviceMemory>(std::make_unique<RegionTable>(RegionTable::bypass(mem, MemAttr::kShared)));
      };
    }
    auto t = LoopbackTransport::create(std::move(opt));
    ASSERT_THAT(t, IsOk());
    transport_ = std::move(t).value();
  }

  static Result<std::unique_ptr<DmaOps>> identity(const GuestMemory& mem, const LoopbackLayout& l) {
    return std::unique_ptr<DmaOps>(std::make_unique<IdentityDmaOps>(mem, l.coherent));
  }
  Result<std::unique_ptr<DmaOps>> bounce(const GuestMemory& mem, const LoopbackLayout& l) {
    pool_ = VDMA_TRY(BouncePool::create(mem, {.window = l.bounce, .min_areas = 2}));
    auto coherent = VDMA_TRY(CoherentPool::create(mem, l.coherent));
    return std::unique_ptr<DmaOps>(
        VDMA_TRY(DirectDmaOps::create(mem, {.bounce_mode = BounceMode::kForce, .bounce_pool = pool_, .coherent = coherent})));
  }

  // Writes then reads `rounds` blocks through slots 0..depth-1, checking bytes.
  void run_round_trips(BlkDriver& drv, int rounds) {
    for (int r = 0; r < rounds; ++r) {
      const uint32_t slot = static_cast<uint32_t>(r) % drv.queue_depth();
      const auto data = pattern(8192, 1000 + r);
      std::copy(data.begin(), data.end(), drv.buffer(0, slot).begin());
      ASSERT_THAT(drv.submit(0, slot, BlkOp::kWrite, uint64_t(r) * 16, 8192), IsOk());
      ASSERT_THAT(drv.kick(0), IsOk());
      BlkCompletion c[1];
      ASSERT_THAT(drv.wait(0, c, std::chrono::seconds(5)), HasValue(1u));
      ASSERT_EQ(c[0].status, kBlkStatusOk);
      std::fill_n(drv.buffer(0, slot).begin(), 8192, std::byte{0xee});
      ASSERT_THAT(drv.submit(0, slot, BlkOp::kRead, uint64_t(r) * 16, 8192), IsOk());
      ASSERT_THAT(drv.kick(0), IsOk());
      ASSERT_THAT(drv.wait(0, c, std::chrono::seconds(5)), HasValue(1u));
      ASSERT_EQ(c[0].status, kBlkStatusOk);
      ASSERT_EQ(c[0].used_len, 8192u + 1);
      ASSERT_EQ(test_util::to_vector(drv.buffer(0, slot).first(8192)), data) << "round " << r;
      ASSERT_EQ(disk_.read(uint64_t(r) * 16 * 512, 8192), data);
    }
  }

  TempDisk disk_{4 << 20};
  std::shared_ptr<BouncePool> pool_;
  PostedWriteFlush flush_{NotifyFlushKind::kWriteCombining};  // every transport's notify hook
  bool debug_ = false;                                         // wrap the ops in a DebugDmaOps
  std::unique_ptr<DmaOps> checked_;                            // what the checker wraps
  CountingDmaOps* counting_ = nullptr;
  DebugDmaOps* checker_ = nullptr;
  std::unique_ptr<LoopbackTransport> transport_;
};

TEST_P(BlkDriverDma, PerRequestMappingMapsThreeSegmentsAndUnmapsThemAll) {
  start(false, identity, false);
  auto d = BlkDriver::create(*transport_, {.queue_depth = 4, .max_io_bytes = 8192});
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(counting_->total_maps(), 0u);
  run_round_trips(**d, 20);
  // 40 requests: header + status + data each; data TO_DEVICE for writes,
  // FROM_DEVICE for reads (the queue's direction rule).
  EXPECT_EQ(counting_->maps[kTo], 40u + 20u);
  EXPECT_EQ(counting_->maps[kFrom], 40u + 20u);
  EXPECT_EQ(counting_->maps[kBidi], 0u);
  EXPECT_EQ(counting_->total_unmaps(), counting_->total_maps());
  EXPECT_EQ(counting_->syncs, 0u);
}

TEST_P(BlkDriverDma, PremappedBuffersAreMappedOnceAtCreate) {
  start(true, identity, false, 2);
  auto d = BlkDriver::create(*transport_, {.queue_depth = 4, .max_io_bytes = 8192});
  ASSERT_THAT(d, IsOk());
  // Per queue: the request array TO_DEVICE, the status array FROM_DEVICE
  // and one BIDIRECTIONAL data buffer per slot.
  EXPECT_EQ(counting_->maps[kTo], 2u);
  EXPECT_EQ(counting_->maps[kFrom], 2u);
  EXPECT_EQ(counting_->maps[kBidi], 8u);
  EXPECT_EQ(counting_->total_unmaps(), 0u);
  run_round_trips(**d, 30);
  // No mapping per request, and no sync on a coherent identity mapping.
  EXPECT_EQ(counting_->total_maps(), 12u);
  EXPECT_EQ(counting_->total_unmaps(), 0u);
  EXPECT_EQ(counting_->syncs, 0u);
  d->reset();
  EXPECT_EQ(counting_->unmaps[kTo], 2u);
  EXPECT_EQ(counting_->unmaps[kFrom], 2u);
  EXPECT_EQ(counting_->unmaps[kBidi], 8u);
  EXPECT_EQ(transport_->buffer_bytes_in_use(), 0u);
}

TEST_P(BlkDriverDma, ForcedBounceCarriesEveryByte) {
  start(false, [this](const GuestMemory& m, const LoopbackLayout& l) { return bounce(m, l); }, true);
  ASSERT_EQ(transport_->dma().kind(), "bounce");
  auto d = BlkDriver::create(*transport_, {.queue_depth = 4, .max_io_bytes = 8192});
  ASSERT_THAT(d, IsOk());
  // Driver buffers are private guest RAM, which this device cannot reach.
  ASSERT_TRUE(transport_->memory().is_all(Gpa{0}, 4096, MemAttr::kPrivate));
  run_round_trips(**d, 20);
  EXPECT_EQ(counting_->total_unmaps(), counting_->total_maps());
  EXPECT_EQ(pool_->stats().used_slots, 0u);
  EXPECT_GT(pool_->stats().high_water, 0u);
  // Larger requests through the synchronous helpers, 512 B to 8 KiB.
  for (uint32_t size : {512u, 1536u, 4096u, 8192u}) {
    const auto data = pattern(size, size);
    ASSERT_THAT((*d)->write(0, 1000, data), IsOk());
    std::vector<std::byte> back(size);
    ASSERT_THAT((*d)->read(0, 1000, back), IsOk());
    EXPECT_EQ(back, data) << size;
  }
  EXPECT_EQ(transport_->device_error(0), std::nullopt);
}

TEST_P(BlkDriverDma, ReadDataArrivesOnlyThroughTheBounceCopyBack) {
  start(false, [this](const GuestMemory& m, const LoopbackLayout& l) { return bounce(m, l); }, true);
  auto d = BlkDriver::create(*transport_, {.queue_depth = 2, .max_io_bytes = 4096});
  ASSERT_THAT(d, IsOk());
  const auto data = pattern(4096, 31);
  disk_.write(0, data);
  std::fill_n((*d)->buffer(0, 1).begin(), 4096, std::byte{0xee});
  ASSERT_THAT((*d)->submit(0, 1, BlkOp::kRead, 0, 4096), IsOk());
  ASSERT_THAT((*d)->kick(0), IsOk());
  // Wait for the device without reaping: until get_used() unmaps the
  // chain, the private buffer still holds the old bytes.
  for (int i = 0; i < 5000 && transport_->completed(0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(transport_->completed(0), 1u);
  EXPECT_EQ(test_util::to_vector((*d)->buffer(0, 1).first(4096)), std::vector<std::byte>(4096, std::byte{0xee}));
  BlkCompletion c[1];
  ASSERT_THAT((*d)->wait(0, c, std::chrono::seconds(5)), HasValue(1u));
  EXPECT_EQ(c[0].status, kBlkStatusOk);
  EXPECT_EQ(test_util::to_vector((*d)->buffer(0, 1).first(4096)), data);
}

// The queue copies a bounce buffer back only as far as the used length
// claims, and virtio-blk devices claim the whole data buffer even for a
// failed read. Whatever the slot held (an earlier read's data) must not
// reach the caller: a failed read hands back zeros.
TEST_P(BlkDriverDma, AFailedBouncedReadHandsBackZerosNotTheSlotsStaleBytes) {
  start(false, [this](const GuestMemory& m, const LoopbackLayout& l) { return bounce(m, l); }, true);
  auto d = BlkDriver::create(*transport_, {.queue_depth = 1, .max_io_bytes = 4096});
  ASSERT_THAT(d, IsOk());
  // Every slot holds an earlier mapping's bytes (nothing is mapped now).
  ASSERT_EQ(pool_->stats().used_slots, 0u);
  for (const AddrRange<Gpa>& w : pool_->windows()) {
    ASSERT_THAT(transport_->memory().fill(w.start, w.len, std::byte{0x5a}), IsOk());
  }
  // The device keeps the capacity it opened with; a read past the file's
  // new end fails with EIO.
  ASSERT_EQ(::truncate(disk_.path().c_str(), 4096), 0);
  BlkCompletion c[1];
  std::fill_n((*d)->buffer(0, 0).begin(), 4096, std::byte{0xee});
  ASSERT_THAT((*d)->submit(0, 0, BlkOp::kRead, 8, 4096), IsOk());
  ASSERT_THAT((*d)->kick(0), IsOk());
  ASSERT_THAT((*d)->wait(0, c, std::chrono::seconds(5)), HasValue(1u));
  EXPECT_EQ(c[0].status, kBlkStatusIoErr);
  EXPECT_EQ(c[0].used_len, 4096u + 1) << "the device claims the whole buffer";
  EXPECT_EQ(test_util::to_vector((*d)->buffer(0, 0).first(4096)), std::vector<std::byte>(4096, std::byte{0}));
  EXPECT_EQ(pool_->stats().used_slots, 0u);
}

TEST_P(BlkDriverDma, PremappedBounceSyncsOwnership) {
  // Premapped through a forced bounce: the queue never unmaps, so the
  // driver's sync_for_device / sync_for_cpu are what move the bytes.
  start(true, [this](const GuestMemory& m, const LoopbackLayout& l) { return bounce(m, l); }, true);
  auto d = BlkDriver::create(*transport_, {.queue_depth = 4, .max_io_bytes = 8192});
  ASSERT_THAT(d, IsOk());
  const uint64_t maps = counting_->total_maps();
  EXPECT_EQ(maps, 2u + 4u);
  run_round_trips(**d, 20);
  EXPECT_EQ(counting_->total_maps(), maps);
  EXPECT_GT(counting_->syncs, 0u);
  d->reset();
  EXPECT_EQ(counting_->total_unmaps(), maps);
  EXPECT_EQ(pool_->stats().used_slots, 0u);
}

TEST_P(BlkDriverDma, NotifyFlushRunsOncePerKick) {
  start(false, identity, false);
  auto d = BlkDriver::create(*transport_, {.queue_depth = 4, .max_io_bytes = 8192});
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(flush_.flushes(), 0u);
  run_round_trips(**d, 20);
  // The device thread sleeps between requests here, so most kicks notify;
  // whichever did, each had exactly one flush before it.
  EXPECT_GT(transport_->kicks(0), 0u);
  EXPECT_EQ(flush_.flushes(), transport_->kicks(0));
}

// Under the checker (vdma-bench --dma-debug) the driver declares its CPU
// accesses: header, status and data written before a request, status and
// read data read after it. With per-request mappings, premapped buffers
// (synced both ways, need_sync() being true under the checker) and a forced
// bounce, none of them touches a buffer the device owns, and nothing stays
// mapped.
TEST_P(BlkDriverDma, TheDebugCheckerFindsNoMisuse) {
  struct Case {
    const char* name;
    bool premap;
    bool bounce;
  };
  for (const Case c : {Case{"per-request", false, false}, Case{"premapped", true, false},
                       Case{"premapped bounce", true, true}, Case{"per-request bounce", false, true}}) {
    SCOPED_TRACE(c.name);
    debug_ = true;
    if (c.bounce) {
      start(c.premap, [this](const GuestMemory& m, const LoopbackLayout& l) { return bounce(m, l); }, true);
    } else {
      start(c.premap, identity, false);
    }
    ASSERT_NE(checker_, nullptr);
    auto d = BlkDriver::create(*transport_, {.queue_depth = 4, .max_io_bytes = 8192});
    ASSERT_THAT(d, IsOk());
    run_round_trips(**d, 12);
    if (c.premap) {
      EXPECT_GT(counting_->syncs, 0u);
    }
    d->reset();
    EXPECT_EQ(checker_->live_mappings(), 0u);
    EXPECT_TRUE(checker_->reports().empty()) << checker_->reports().front().message;
    transport_.reset();
    checked_.reset();
  }
}

// A caller that hands the driver a slot whose premapped data buffer the
// device still owns (mapped again behind the driver's back and not synced)
// is caught at submit(), with the checker's report as the error.
TEST_P(BlkDriverDma, SubmitOfADeviceOwnedBufferIsReported) {
  debug_ = true;
  start(true, identity, false);
  auto d = BlkDriver::create(*transport_, {.queue_depth = 2, .max_io_bytes = 8192});
  ASSERT_THAT(d, IsOk());
  // Slot 1's data buffer, mapped once more for the device (as a buggy
  // caller sharing it with a second device would).
  const std::byte* host = (*d)->buffer(0, 1).data();
  std::optional<Gpa> gpa;
  for (const GuestRegion& r : transport_->memory().regions()) {
    if (host >= r.host().data() && host < r.host().data() + r.size()) {
      gpa = r.base().unchecked_add(static_cast<uint64_t>(host - r.host().data()));
    }
  }
  ASSERT_TRUE(gpa.has_value());
  auto dma = transport_->dma().map(*gpa, 4096, DmaDirection::kToDevice);
  ASSERT_THAT(dma, IsOk());
  const std::string msg = fmt::format(
      "device blk0: CPU writes {} + len 0x200 while it is mapped to-device at {} + len 0x1000 and owned by the device "
      "(sync_for_cpu first, sync_for_device after)",
      *gpa, *dma);
  EXPECT_THAT((*d)->submit(0, 1, BlkOp::kWrite, 0, 512), IsErrorWith(DmaErrc::kMisuse, msg));
  ASSERT_EQ(checker_->reports().size(), 1u);
  EXPECT_EQ(checker_->reports()[0].kind, DmaMisuse::kCpuWriteWhileDeviceOwns);
  ASSERT_THAT(transport_->dma().unmap(*dma, 4096, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT((*d)->submit(0, 1, BlkOp::kWrite, 0, 512), IsOk());  // the buffer is the CPU's again
  ASSERT_THAT((*d)->kick(0), IsOk());
  BlkCompletion c[1];
  ASSERT_THAT((*d)->wait(0, c, std::chrono::seconds(5)), HasValue(1u));
  EXPECT_EQ(c[0].status, kBlkStatusOk);
}

INSTANTIATE_TEST_SUITE_P(Formats, BlkDriverDma, ::testing::Values(RingFormat::kSplit, RingFormat::kPacked),
                         [](const ::testing::TestParamInfo<RingFormat>& i) { return std::string(to_string(i.param)); });

}  // namespace
}  // namespace vdma::blk
