// Lazy revival under threads (run under ThreadSanitizer by the
// `concurrency` label): workers map and unmap the same few buffers (so runs
// are revived all the time) while another thread forces flushes. A model of
// the device's IOTLB is filled from the page table while a mapping is live
// and emptied only by the sink, as a vhost-user back-end's would be. It
// checks that no live mapping's IOVA is ever invalidated, that no IOVA is
// live twice, that the device never translates an IOVA to anything but the
// buffer it is live for (a freed or re-used IOVA with a stale entry would),
// and that after the last flush nothing is left in the model IOTLB.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "iommu_dma_fixture.h"
#include "result_matchers.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t k4K = 4096;

struct Violations {
  std::atomic<int> invalidated_while_live{0};
  std::atomic<int> live_twice{0};
  std::atomic<int> wrong_translation{0};
  std::atomic<int> still_mapped_at_invalidation{0};
  std::atomic<int> errors{0};
};

// The device side: its IOTLB, and the IOVA pages currently live.
class DeviceModel final : public InvalidationSink {
 public:
  explicit DeviceModel(Violations& v) : v_(v) {}
  void watch(const IommuDmaDomain* d) { dom_ = d; }

  Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
    std::lock_guard lock(mu_);
    for (const auto& r : ranges) {
      for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += k4K) {
        if (live_.contains(p)) v_.invalidated_while_live.fetch_add(1);
        if (dom_->translate(Iova(p), Access::kNone)) v_.still_mapped_at_invalidation.fetch_add(1);
        iotlb_.erase(p);
      }
    }
    return ok();
  }
  // The driver made [page, page + pages) live for itself.
  void went_live(uint64_t page, uint64_t pages) {
    std::lock_guard lock(mu_);
    for (uint64_t i = 0; i < pages; ++i) {
      if (!live_.insert(page + i * k4K).second) v_.live_twice.fetch_add(1);
    }
  }
  void ends(uint64_t page, uint64_t pages) {
    std::lock_guard lock(mu_);
    for (uint64_t i = 0; i < pages; ++i) live_.erase(page + i * k4K);
  }
  // A device access at `iova`: served from the IOTLB, filled from the page
  // table on a miss (the vIOMMU's UPDATE).
  std::optional<std::pair<uint64_t, Access>> translate(uint64_t iova) {
    std::lock_guard lock(mu_);
    const uint64_t page = align_down(iova, k4K);
    if (auto it = iotlb_.find(page); it != iotlb_.end()) return it->second;
    auto t = dom_->translate(Iova(page), Access::kNone);
    if (!t) return std::nullopt;
    iotlb_[page] = {t->gpa.value(), t->perms};
    return iotlb_[page];
  }
  size_t iotlb_entries() {
    std::lock_guard lock(mu_);
    return iotlb_.size();
  }

 private:
  Violations& v_;
  const IommuDmaDomain* dom_ = nullptr;
  std::mutex mu_;
  std::map<uint64_t, std::pair<uint64_t, Access>> iotlb_;  // IOVA page -> (Gpa page, perms)
  std::set<uint64_t> live_;
};

TEST(IommuDmaRevivalConcurrency, RevivedRunsAreNeverInvalidatedWhileLiveNorTranslatedAfterTheyAreFreed) {
  Violations v;
  auto device = std::make_shared<DeviceModel>(v);
  IommuDmaFixture f(InvalidationMode::kLazy, {.flush_queue_entries = 16, .sink = device});
  device->watch(f.domain.get());

  // Six buffers, some straddling a page boundary; mapped in both directions
  // so revival must tell the permissions apart.
  struct Buffer {
    Gpa gpa;
    uint64_t len;
  };
  const Buffer buffers[] = {{Gpa{0x10000}, 16},   {Gpa{0x20000}, k4K},  {Gpa{0x30ff0}, 0x20},
                            {Gpa{0x40000}, 1},    {Gpa{0x50800}, k4K}, {Gpa{0x60000}, 2 * k4K}};
  constexpr int kWorkers = 3;
  constexpr int kOps = 3000;
  std::atomic<int> workers_left{kWorkers};

  auto worker = [&](int id) {
    std::mt19937 rng(static_cast<unsigned>(id) * 7919u + 1);
    struct Live {
      DmaAddr dma;
      Buffer b;
      DmaDirection dir;
    };
    std::vector<Live> held;
    auto end_one = [&](size_t i) {
      const Live l = held[i];
      const uint64_t page = align_down(l.dma.value(), k4K);
      device->ends(page, align_up(l.dma.value() + l.b.len, k4K) / k4K - page / k4K);
      if (!f.ops->unmap(l.dma, l.b.len, l.dir)) v.errors.fetch_add(1);
      held[i] = held.back();
      held.pop_back();
    };
    for (int op = 0; op < kOps; ++op) {
      if (held.size() >= 2 || (!held.empty() && rng() % 2 == 0)) {
        end_one(rng() % held.size());
        continue;
      }
      const Buffer& b = buffers[rng() % std::size(buffers)];
      const DmaDirection dir = rng() % 4 == 0 ? DmaDirection::kToDevice : DmaDirection::kFromDevice;
      auto d = f.ops->map(b.gpa, b.len, dir);
      if (!d) {
        v.errors.fetch_add(1);
        continue;
      }
      const uint64_t page = align_down(d->value(), k4K);
      const uint64_t pages = align_up(d->value() + b.len, k4K) / k4K - page / k4K;
      device->went_live(page, pages);
      // The device touches the first and last byte: whatever its IOTLB
      // holds must be this buffer with exactly this mapping's rights.
      const Access want = dir == DmaDirection::kToDevice ? Access::kRead : Access::kWrite;
      for (uint64_t off : {uint64_t{0}, b.len - 1}) {
        auto t = device->translate(d->value() + off);
        if (!t || t->first != align_down(b.gpa.value() + off, k4K) || t->second != want) {
          v.wrong_translation.fetch_add(1);
        }
      }
      held.push_back({*d, b, dir});
    }
    while (!held.empty()) end_one(held.size() - 1);
    workers_left.fetch_sub(1);
  };

  std::vector<std::thread> threads;
  for (int i = 0; i < kWorkers; ++i) threads.emplace_back(worker, i);
  std::thread flusher([&] {
    while (workers_left.load() != 0) {
      if (!f.domain->flush()) v.errors.fetch_add(1);
      std::this_thread::yield();
    }
  });
  for (auto& t : threads) t.join();
  flusher.join();
  ASSERT_THAT(f.domain->flush(), IsOk());

  EXPECT_EQ(v.errors.load(), 0);
  EXPECT_EQ(v.invalidated_while_live.load(), 0);
  EXPECT_EQ(v.live_twice.load(), 0);
  EXPECT_EQ(v.wrong_translation.load(), 0);
  EXPECT_EQ(v.still_mapped_at_invalidation.load(), 0);
  EXPECT_EQ(f.domain->mapping_count(), 0u);
  EXPECT_EQ(f.fq().pending, 0u);
  // Every translation the device ever cached was invalidated by now.
  EXPECT_EQ(device->iotlb_entries(), 0u);
  // Revival did happen (the workers remap the same six buffers all the time).
  EXPECT_GT(f.fq().revived, 0u);
  EXPECT_GT(f.fq().flushes, 0u);
}

}  // namespace
}  // namespace vdma
