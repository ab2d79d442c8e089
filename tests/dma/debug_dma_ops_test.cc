// DebugDmaOps: every misuse class is returned as kMisuse, recorded, logged,
// and not forwarded; correct use produces no report.
#include "vdma/dma/debug_dma_ops.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "result_matchers.h"
#include "vdma/dma/direct_dma_ops.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr uint64_t kShared = 16 << 20;

class DebugDmaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mem_ = *GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"},
                                 {Gpa{kShared}, 4 << 20, MemAttr::kShared, "shared"}});
    pool_ = *BouncePool::create(*mem_, {.window = {Gpa{kShared + (1 << 20)}, 1 << 20}, .min_areas = 1});
    inner_ = *DirectDmaOps::create(*mem_, {.bounce_mode = BounceMode::kForce, .bounce_pool = pool_,
                                           .coherent = *CoherentPool::create(*mem_, {Gpa{kShared}, 1 << 20})});
    dbg_ = std::make_unique<DebugDmaOps>(*inner_, "blk0");
  }
  void TearDown() override {
    // Each test cleans up what it leaves live on purpose; nothing else may leak.
    dbg_.reset();
  }
  std::unique_ptr<GuestMemory> mem_;
  std::shared_ptr<BouncePool> pool_;
  std::unique_ptr<DirectDmaOps> inner_;
  std::unique_ptr<DebugDmaOps> dbg_;
};

TEST_F(DebugDmaOpsTest, CorrectUseProducesNoReport) {
  auto d = dbg_->map(Gpa{0x1000}, 512, DmaDirection::kFromDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(dbg_->live_mappings(), 1u);
  ASSERT_THAT(dbg_->sync_for_cpu(*d, 512, DmaDirection::kFromDevice), IsOk());
  ASSERT_THAT(dbg_->cpu_access(Gpa{0x1000}, 512, CpuAccess::kRead), IsOk());
  ASSERT_THAT(dbg_->cpu_access(Gpa{0x1000}, 16, CpuAccess::kWrite), IsOk());
  ASSERT_THAT(dbg_->sync_for_device(*d, 512, DmaDirection::kFromDevice), IsOk());
  ASSERT_THAT(dbg_->unmap(*d, 512, DmaDirection::kFromDevice), IsOk());
  ASSERT_THAT(dbg_->cpu_access(Gpa{0x1000}, 512, CpuAccess::kRead), IsOk());  // unmapped: the CPU owns it
  auto ring = dbg_->alloc_coherent(4096);
  ASSERT_THAT(ring, IsOk());
  ASSERT_THAT(dbg_->free_coherent(*ring), IsOk());
  // A bidirectional mapping may be synced either way.
  auto b = dbg_->map(Gpa{0x3000}, 64, DmaDirection::kBidirectional);
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT(dbg_->sync_for_cpu(*b, 64, DmaDirection::kFromDevice), IsOk());
  ASSERT_THAT(dbg_->sync_for_device(*b, 64, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(dbg_->unmap(*b, 64, DmaDirection::kBidirectional), IsOk());
  EXPECT_THAT(dbg_->check_teardown(), IsOk());
  EXPECT_TRUE(dbg_->reports().empty());
  EXPECT_EQ(pool_->stats().used_slots, 0u);
  EXPECT_EQ(dbg_->kind(), "debug");
  EXPECT_EQ(dbg_->max_mapping_size(), inner_->max_mapping_size());
}

TEST_F(DebugDmaOpsTest, UnmapOfAnAddressNeverMapped) {
  EXPECT_THAT(dbg_->unmap(DmaAddr{kShared + (1 << 20)}, 64, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kMisuse, AllOf(HasSubstr("device blk0"), HasSubstr("never mapped"))));
  EXPECT_EQ(dbg_->count(DmaMisuse::kUnknownAddress), 1u);
  auto d = dbg_->map(Gpa{0x1000}, 4096, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(dbg_->unmap(DmaAddr{d->value() + 8}, 64, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("not the start of a mapping")));
  EXPECT_EQ(dbg_->count(DmaMisuse::kUnknownAddress), 2u);
  ASSERT_THAT(dbg_->unmap(*d, 4096, DmaDirection::kToDevice), IsOk());
}

TEST_F(DebugDmaOpsTest, DoubleUnmapIsNamedAndNotForwarded) {
  auto d = dbg_->map(Gpa{0x1000}, 100, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  ASSERT_THAT(dbg_->unmap(*d, 100, DmaDirection::kToDevice), IsOk());
  // Someone else gets the same slot meanwhile; the double unmap must not free it.
  auto other = inner_->map(Gpa{0x9000}, 100, DmaDirection::kToDevice);
  ASSERT_THAT(other, IsOk());
  ASSERT_EQ(*other, *d);
  EXPECT_THAT(dbg_->unmap(*d, 100, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("already unmapped (was gpa:0x1000")));
  EXPECT_EQ(dbg_->count(DmaMisuse::kDoubleUnmap), 1u);
  EXPECT_EQ(pool_->stats().used_slots, 1u);  // the other mapping survived
  EXPECT_THAT(dbg_->sync_for_cpu(*d, 100, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("was already unmapped")));
  ASSERT_THAT(inner_->unmap(*other, 100, DmaDirection::kToDevice), IsOk());
}

TEST_F(DebugDmaOpsTest, WrongSizeOrDirectionOnUnmapLeavesTheMappingLive) {
  auto d = dbg_->map(Gpa{0x1000}, 300, DmaDirection::kFromDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(dbg_->unmap(*d, 200, DmaDirection::kFromDevice),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("with len 0xc8, but it was mapped with len 0x12c")));
  EXPECT_THAT(dbg_->unmap(*d, 300, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("as to-device, but it was mapped from-device")));
  EXPECT_EQ(dbg_->count(DmaMisuse::kSizeMismatch), 1u);
  EXPECT_EQ(dbg_->count(DmaMisuse::kDirectionMismatch), 1u);
  EXPECT_EQ(dbg_->live_mappings(), 1u);
  EXPECT_EQ(pool_->stats().used_slots, 1u);
  ASSERT_THAT(dbg_->unmap(*d, 300, DmaDirection::kFromDevice), IsOk());
  EXPECT_EQ(pool_->stats().used_slots, 0u);
}

TEST_F(DebugDmaOpsTest, SyncWithTheWrongDirectionOrOutsideTheMapping) {
  auto d = dbg_->map(Gpa{0x1000}, 1000, DmaDirection::kToDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(dbg_->sync_for_cpu(*d, 1000, DmaDirection::kFromDevice),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("sync_for_cpu of")));
  EXPECT_THAT(dbg_->sync_for_device(DmaAddr{d->value() + 900}, 200, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("leaves the mapping")));
  EXPECT_THAT(dbg_->sync_for_device(DmaAddr{d->value() + 4096}, 4, DmaDirection::kToDevice),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("no live mapping there")));
  EXPECT_EQ(dbg_->count(DmaMisuse::kDirectionMismatch), 1u);
  EXPECT_EQ(dbg_->count(DmaMisuse::kSyncOutsideMapping), 1u);
  EXPECT_EQ(dbg_->count(DmaMisuse::kUnknownAddress), 1u);
  ASSERT_THAT(dbg_->sync_for_device(DmaAddr{d->value() + 900}, 100, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(dbg_->unmap(*d, 1000, DmaDirection::kToDevice), IsOk());
}

TEST_F(DebugDmaOpsTest, CpuReadingAFromDeviceBufferNeedsSyncForCpu) {
  auto d = dbg_->map(Gpa{0x2000}, 4096, DmaDirection::kFromDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x2100}, 16, CpuAccess::kRead),
              IsErrorWith(DmaErrc::kMisuse, AllOf(HasSubstr("CPU reads gpa:0x2100 + len 0x10"),
                                                  HasSubstr("without sync_for_cpu"))));
  // Sync only the first half: reading it is fine, the second half is not.
  ASSERT_THAT(dbg_->sync_for_cpu(*d, 2048, DmaDirection::kFromDevice), IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x2000}, 2048, CpuAccess::kRead), IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x2000}, 2049, CpuAccess::kRead), IsError(DmaErrc::kMisuse));
  // Handing it back to the device ends the CPU's right to read.
  ASSERT_THAT(dbg_->sync_for_device(DmaAddr{d->value() + 1024}, 1024, DmaDirection::kFromDevice), IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x2000}, 1024, CpuAccess::kRead), IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x2000 + 1500}, 8, CpuAccess::kRead), IsError(DmaErrc::kMisuse));
  EXPECT_EQ(dbg_->count(DmaMisuse::kCpuReadWithoutSync), 3u);
  // Bytes outside any mapping, and reads of to-device mappings, are the CPU's.
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x1000}, 4096, CpuAccess::kRead), IsOk());
  auto t = dbg_->map(Gpa{0x8000}, 64, DmaDirection::kToDevice);
  ASSERT_THAT(t, IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x8000}, 64, CpuAccess::kRead), IsOk());
  ASSERT_THAT(dbg_->unmap(*t, 64, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(dbg_->unmap(*d, 4096, DmaDirection::kFromDevice), IsOk());
}

TEST_F(DebugDmaOpsTest, CpuWritingAMappedBufferTheDeviceOwns) {
  auto t = dbg_->map(Gpa{0x8000}, 64, DmaDirection::kToDevice);
  ASSERT_THAT(t, IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x8010}, 4, CpuAccess::kWrite),
              IsErrorWith(DmaErrc::kMisuse, HasSubstr("CPU writes gpa:0x8010 + len 0x4")));
  EXPECT_EQ(dbg_->count(DmaMisuse::kCpuWriteWhileDeviceOwns), 1u);
  ASSERT_THAT(dbg_->sync_for_cpu(*t, 64, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x8010}, 4, CpuAccess::kWrite), IsOk());
  ASSERT_THAT(dbg_->sync_for_device(*t, 64, DmaDirection::kToDevice), IsOk());
  ASSERT_THAT(dbg_->unmap(*t, 64, DmaDirection::kToDevice), IsOk());
}

TEST_F(DebugDmaOpsTest, LeaksAtTeardownAreReportedOnceEach) {
  auto a = dbg_->map(Gpa{0x1000}, 64, DmaDirection::kToDevice);
  auto b = dbg_->map(Gpa{0x2000}, 64, DmaDirection::kFromDevice);
  auto ring = dbg_->alloc_coherent(4096);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT(ring, IsOk());
  ASSERT_THAT(dbg_->unmap(*a, 64, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(dbg_->check_teardown(),
              IsErrorWith(DmaErrc::kMisuse, AllOf(HasSubstr("2 DMA mapping(s)/buffer(s) live at teardown"),
                                                  HasSubstr("gpa:0x2000"))));
  EXPECT_EQ(dbg_->count(DmaMisuse::kLeakAtTeardown), 2u);
  EXPECT_THAT(dbg_->check_teardown(), IsError(DmaErrc::kMisuse));  // still live, not reported again
  EXPECT_EQ(dbg_->count(DmaMisuse::kLeakAtTeardown), 2u);
  ASSERT_THAT(dbg_->unmap(*b, 64, DmaDirection::kFromDevice), IsOk());
  ASSERT_THAT(dbg_->free_coherent(*ring), IsOk());
  EXPECT_THAT(dbg_->check_teardown(), IsOk());
}

TEST_F(DebugDmaOpsTest, FreeOfAnUnknownCoherentBuffer) {
  auto ring = dbg_->alloc_coherent(4096);
  ASSERT_THAT(ring, IsOk());
  CoherentBuffer wrong = *ring;
  wrong.cpu = Gpa{wrong.cpu.value() + 4096};
  EXPECT_THAT(dbg_->free_coherent(wrong), IsErrorWith(DmaErrc::kMisuse, HasSubstr("not a live coherent buffer")));
  ASSERT_THAT(dbg_->free_coherent(*ring), IsOk());
  EXPECT_THAT(dbg_->free_coherent(*ring), IsError(DmaErrc::kMisuse));
  EXPECT_EQ(dbg_->count(DmaMisuse::kUnknownCoherentFree), 2u);
}

TEST_F(DebugDmaOpsTest, ReportsAreLoggedAndListed) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(8);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  spdlog::set_level(spdlog::level::err);
  (void)dbg_->unmap(DmaAddr{0x1234}, 1, DmaDirection::kToDevice);
  auto lines = sink->last_formatted();
  spdlog::set_default_logger(previous);
  spdlog::set_level(spdlog::level::critical);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], AllOf(HasSubstr("unknown-address"), HasSubstr("dma:0x1234")));
  const auto reports = dbg_->reports();
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].kind, DmaMisuse::kUnknownAddress);
  EXPECT_THAT(reports[0].message, HasSubstr("device blk0: unmap of dma:0x1234"));
  dbg_->clear_reports();
  EXPECT_TRUE(dbg_->reports().empty());
}

TEST_F(DebugDmaOpsTest, ScatterListsAreRecordedEntryByEntry) {
  SgEntry sg[2] = {{.gpa = Gpa{0x1000}, .len = 100}, {.gpa = Gpa{0x4000}, .len = 200}};
  ASSERT_THAT(dbg_->map_sg(sg, DmaDirection::kFromDevice), HasValue(2u));
  EXPECT_EQ(dbg_->live_mappings(), 2u);
  ASSERT_THAT(dbg_->sync_sg_for_cpu(sg, DmaDirection::kFromDevice), IsOk());
  EXPECT_THAT(dbg_->cpu_access(Gpa{0x4000}, 200, CpuAccess::kRead), IsOk());
  ASSERT_THAT(dbg_->unmap_sg(sg, DmaDirection::kFromDevice), IsOk());
  EXPECT_EQ(dbg_->live_mappings(), 0u);
  EXPECT_THAT(dbg_->unmap_sg(sg, DmaDirection::kFromDevice), IsError(DmaErrc::kMisuse));
  EXPECT_EQ(dbg_->count(DmaMisuse::kDoubleUnmap), 2u);  // both entries named
}

TEST_F(DebugDmaOpsTest, ConcurrentUseKeepsAnExactRecord) {
  constexpr int kThreads = 4, kOps = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kOps; ++i) {
        const Gpa g{0x10000 + uint64_t(t) * 0x10000 + uint64_t(i % 8) * 0x1000};
        auto d = dbg_->map(g, 512, DmaDirection::kBidirectional);
        ASSERT_THAT(d, IsOk());
        ASSERT_THAT(dbg_->sync_for_cpu(*d, 512, DmaDirection::kBidirectional), IsOk());
        ASSERT_THAT(dbg_->cpu_access(g, 512, CpuAccess::kRead), IsOk());
        ASSERT_THAT(dbg_->unmap(*d, 512, DmaDirection::kBidirectional), IsOk());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_TRUE(dbg_->reports().empty());
  EXPECT_THAT(dbg_->check_teardown(), IsOk());
  EXPECT_EQ(pool_->stats().used_slots, 0u);
}

}  // namespace
}  // namespace vdma
