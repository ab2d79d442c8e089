// Non-coherent devices: the cache-maintenance hooks DirectDmaOps runs on map,
// unmap and sync, per direction, on the memory the device really accesses,
// and in the right order relative to the bounce copies.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <mutex>
#include <vector>

#include "result_matchers.h"
#include "vdma/dma/cache_maintenance.h"
#include "vdma/dma/direct_dma_ops.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

struct Op {
  char kind;  // 'W' writeback, 'I' invalidate
  uint64_t gpa;
  uint64_t len;
  std::byte first_byte_of_watch;  // the watched byte at the time of the call
  bool operator==(const Op& o) const { return kind == o.kind && gpa == o.gpa && len == o.len; }
};

// Records every hook call and, to check ordering against bounce copies,
// snapshots one watched guest byte at the time of each call.
class Recorder final : public CacheMaintenance {
 public:
  explicit Recorder(const GuestMemory& mem) : mem_(mem) {}
  void writeback(Gpa gpa, uint64_t len) override { record('W', gpa, len); }
  void invalidate(Gpa gpa, uint64_t len) override { record('I', gpa, len); }
  std::vector<Op> take() {
    std::lock_guard lock(mu_);
    return std::exchange(ops_, {});
  }
  void watch(Gpa g) { watch_ = g; }

 private:
  void record(char k, Gpa gpa, uint64_t len) {
    std::byte b{0};
    (void)mem_.read(watch_, {&b, 1});
    std::lock_guard lock(mu_);
    ops_.push_back({k, gpa.value(), len, b});
  }
  const GuestMemory& mem_;
  Gpa watch_{0};
  std::mutex mu_;
  std::vector<Op> ops_;
};

Op W(uint64_t g, uint64_t l) { return {'W', g, l, std::byte{0}}; }
Op I(uint64_t g, uint64_t l) { return {'I', g, l, std::byte{0}}; }

constexpr uint64_t kShared = 16 << 20;

class CoherencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mem_ = *GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"},
                                 {Gpa{kShared}, 8 << 20, MemAttr::kShared, "shared"}});
    rec_ = std::make_shared<Recorder>(*mem_);
    coherent_ = *CoherentPool::create(*mem_, {Gpa{kShared}, 1 << 20});
    pool_ = *BouncePool::create(*mem_, {.window = {Gpa{kShared + (2 << 20)}, 1 << 20}, .min_areas = 1});
  }
  std::unique_ptr<DirectDmaOps> make(BounceMode mode, bool coherent_device) {
    return *DirectDmaOps::create(*mem_, {.bounce_mode = mode, .bounce_pool = pool_, .coherent = coherent_,
                                         .coherent_device = coherent_device, .cache = rec_});
  }
  std::unique_ptr<GuestMemory> mem_;
  std::shared_ptr<Recorder> rec_;
  std::shared_ptr<CoherentPool> coherent_;
  std::shared_ptr<BouncePool> pool_;
};

TEST_F(CoherencyTest, DirectMappingsFollowTheArchSyncTable) {
  auto ops = make(BounceMode::kWhenNeeded, false);
  const uint64_t g = 0x4000, n = 300;
  struct Row {
    DmaDirection dir;
    std::vector<Op> for_device;
    std::vector<Op> for_cpu;
  };
  const Row table[] = {
      {DmaDirection::kToDevice, {W(g, n)}, {}},
      {DmaDirection::kFromDevice, {I(g, n)}, {I(g, n)}},
      {DmaDirection::kBidirectional, {W(g, n), I(g, n)}, {I(g, n)}},
  };
  for (const Row& r : table) {
    SCOPED_TRACE(std::string(to_string(r.dir)));
    auto d = ops->map(Gpa{g}, n, r.dir);
    ASSERT_THAT(d, IsOk());
    EXPECT_EQ(rec_->take(), r.for_device);
    EXPECT_TRUE(ops->need_sync(*d));
    ASSERT_THAT(ops->sync_for_cpu(*d, n, r.dir), IsOk());
    EXPECT_EQ(rec_->take(), r.for_cpu);
    ASSERT_THAT(ops->sync_for_device(*d, n, r.dir), IsOk());
    EXPECT_EQ(rec_->take(), r.for_device);
    ASSERT_THAT(ops->unmap(*d, n, r.dir), IsOk());
    EXPECT_EQ(rec_->take(), r.for_cpu);
    // kSkipCpuSync: no maintenance at map and unmap.
    d = ops->map(Gpa{g}, n, r.dir, DmaAttrs::kSkipCpuSync);
    ASSERT_THAT(d, IsOk());
    ASSERT_THAT(ops->unmap(*d, n, r.dir, DmaAttrs::kSkipCpuSync), IsOk());
    EXPECT_THAT(rec_->take(), IsEmpty());
  }
}

TEST_F(CoherencyTest, BouncedMappingsMaintainTheSlotAroundTheCopies) {
  auto ops = make(BounceMode::kForce, false);
  const Gpa buf{0x8000};
  ASSERT_THAT(mem_->fill(buf, 256, std::byte{0x11}), IsOk());
  // Map to-device: the writeback of the slot comes after the copy-in.
  auto d = ops->map(buf, 256, DmaDirection::kBidirectional);
  ASSERT_THAT(d, IsOk());
  const Gpa slot{d->value()};
  rec_->take();  // (the watch was elsewhere during map; check map separately below)
  rec_->watch(slot);
  ASSERT_THAT(mem_->fill(buf, 256, std::byte{0x22}), IsOk());
  ASSERT_THAT(ops->sync_for_device(*d, 256, DmaDirection::kBidirectional), IsOk());
  auto ops_seen = rec_->take();
  ASSERT_THAT(ops_seen, ElementsAre(W(slot.value(), 256), I(slot.value(), 256)));
  EXPECT_EQ(ops_seen[0].first_byte_of_watch, std::byte{0x22}) << "writeback before the copy-in";
  // The device writes the slot; sync_for_cpu invalidates before copying back.
  ASSERT_THAT(mem_->fill(slot, 256, std::byte{0x33}), IsOk());
  rec_->watch(buf);
  ASSERT_THAT(ops->sync_for_cpu(*d, 256, DmaDirection::kBidirectional), IsOk());
  ops_seen = rec_->take();
  ASSERT_THAT(ops_seen, ElementsAre(I(slot.value(), 256)));
  EXPECT_EQ(ops_seen[0].first_byte_of_watch, std::byte{0x22}) << "invalidate after the copy-back";
  std::byte now{0};
  ASSERT_THAT(mem_->read(buf, {&now, 1}), IsOk());
  EXPECT_EQ(now, std::byte{0x33});
  // Unmap: the same order.
  ASSERT_THAT(mem_->fill(slot, 256, std::byte{0x44}), IsOk());
  ASSERT_THAT(ops->unmap(*d, 256, DmaDirection::kBidirectional), IsOk());
  ops_seen = rec_->take();
  ASSERT_THAT(ops_seen, ElementsAre(I(slot.value(), 256)));
  EXPECT_EQ(ops_seen[0].first_byte_of_watch, std::byte{0x33});

  // Map: watch the slot the next mapping will get (d's, freed last).
  ASSERT_THAT(mem_->fill(buf, 256, std::byte{0x55}), IsOk());
  rec_->watch(slot);
  auto e = ops->map(buf, 256, DmaDirection::kToDevice);
  ASSERT_THAT(e, IsOk());
  ASSERT_EQ(e->value(), slot.value());
  ops_seen = rec_->take();
  ASSERT_THAT(ops_seen, ElementsAre(W(e->value(), 256)));
  EXPECT_EQ(ops_seen[0].first_byte_of_watch, std::byte{0x55}) << "map: writeback after the copy-in";
  ASSERT_THAT(ops->unmap(*e, 256, DmaDirection::kToDevice), IsOk());
  EXPECT_THAT(rec_->take(), IsEmpty());
}

TEST_F(CoherencyTest, CoherentDevicesAndRingsNeedNoMaintenance) {
  auto ops = make(BounceMode::kWhenNeeded, true);
  auto d = ops->map(Gpa{0x1000}, 64, DmaDirection::kBidirectional);
  ASSERT_THAT(d, IsOk());
  EXPECT_FALSE(ops->need_sync(*d));
  ASSERT_THAT(ops->sync_for_cpu(*d, 64, DmaDirection::kBidirectional), IsOk());
  ASSERT_THAT(ops->sync_for_device(*d, 64, DmaDirection::kBidirectional), IsOk());
  ASSERT_THAT(ops->unmap(*d, 64, DmaDirection::kBidirectional), IsOk());
  auto nc = make(BounceMode::kWhenNeeded, false);
  auto ring = nc->alloc_coherent(4096);
  ASSERT_THAT(ring, IsOk());
  ASSERT_THAT(nc->free_coherent(*ring), IsOk());
  EXPECT_THAT(rec_->take(), IsEmpty());
}

TEST(FenceCacheMaintenance, CountsItsCalls) {
  FenceCacheMaintenance f;
  cache_sync_for_device(f, Gpa{0}, 64, DmaDirection::kBidirectional);
  cache_sync_for_cpu(f, Gpa{0}, 64, DmaDirection::kFromDevice);
  cache_sync_for_cpu(f, Gpa{0}, 64, DmaDirection::kToDevice);
  EXPECT_EQ(f.writebacks(), 1u);
  EXPECT_EQ(f.invalidates(), 2u);
}

}  // namespace
}  // namespace vdma
