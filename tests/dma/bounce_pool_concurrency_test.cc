// BouncePool under concurrent use (run under ThreadSanitizer in CI): threads
// on their own areas and across areas, with exhaustion and dynamic growth.
// Every mapping carries a per-thread pattern, so a slot handed to two
// mappings at once shows up as corrupted data.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "result_matchers.h"
#include "vdma/dma/bounce_pool.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t kShared = 64 << 20;

std::unique_ptr<GuestMemory> make_memory() {
  return *GuestMemory::create({{Gpa{0}, 64 << 20, MemAttr::kPrivate, "ram"},
                               {Gpa{kShared}, 16 << 20, MemAttr::kShared, "shared"}});
}

// One worker: map a random buffer of its own, check the copy-in, play the
// device, unmap, check the copy-back. Holds up to `hold` mappings at once.
void worker(BouncePool& pool, GuestMemory& mem, int id, int iterations, uint64_t max_len, size_t hold,
            std::atomic<int>& pool_full, std::atomic<int>& failures) {
  std::mt19937_64 rng(1000 + id);
  const uint64_t base = uint64_t(id) * (8 << 20);
  struct M {
    Gpa gpa, tlb;
    uint64_t len;
    DmaDirection dir;
    uint8_t dev_byte;
    size_t buffer;
  };
  std::vector<M> live;
  // Each live mapping owns one of hold+1 buffers, so no two overlap.
  std::vector<bool> busy(hold + 1, false);
  std::vector<std::byte> buf;
  auto finish = [&](const M& m) {
    busy[m.buffer] = false;
    if (!pool.unmap(m.tlb, m.len, m.dir, DmaAttrs::kNone)) {
      ++failures;
      return;
    }
    buf.resize(m.len);
    (void)mem.read(m.gpa, buf);
    const bool copied = device_writes(m.dir);
    for (uint64_t k = 0; k < m.len; ++k) {
      const auto want = copied ? std::byte{m.dev_byte} : std::byte(static_cast<uint8_t>(id * 31 + k));
      if (buf[k] != want) {
        ++failures;
        return;
      }
    }
  };
  for (int i = 0; i < iterations; ++i) {
    const uint64_t len = 1 + rng() % max_len;
    if (live.size() >= hold) {
      finish(live.front());
      live.erase(live.begin());
    }
    const size_t b = static_cast<size_t>(std::find(busy.begin(), busy.end(), false) - busy.begin());
    const Gpa gpa{base + b * (264 << 10) + (uint64_t(i) % 8) * 8};
    // The pattern of this worker, at this address (distinct from every other worker's).
    buf.resize(len);
    for (uint64_t k = 0; k < len; ++k) buf[k] = std::byte(static_cast<uint8_t>(id * 31 + k));
    (void)mem.write(gpa, buf);
    const auto dir = static_cast<DmaDirection>(rng() % 3);
    auto t = pool.map(gpa, len, dir);
    if (!t) {
      if (t.error().is(DmaErrc::kPoolFull)) {
        ++pool_full;
      } else {
        ++failures;
      }
      continue;
    }
    auto slot = *mem.span(*t, len);
    if (std::memcmp(slot.data(), buf.data(), len) != 0) ++failures;
    const auto dev = static_cast<uint8_t>(rng());
    if (device_writes(dir)) std::memset(slot.data(), dev, len);
    busy[b] = true;
    live.push_back({gpa, *t, len, dir, dev, b});
  }
  for (const M& m : live) finish(m);
}

TEST(BouncePoolConcurrency, ThreadsOnTheirOwnAreas) {
  auto mem = make_memory();
  auto pool = *BouncePool::create(*mem, {.window = {Gpa{kShared}, 4 << 20}, .min_areas = 4});
  ASSERT_EQ(pool->stats().areas, 4u);
  std::atomic<int> full{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { worker(*pool, *mem, t, 5000, 16 << 10, 4, full, failures); });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(full.load(), 0);
  EXPECT_EQ(pool->stats().used_slots, 0u);
  EXPECT_GT(pool->stats().high_water, 0u);
  EXPECT_THAT(pool->validate(), IsOk());
}

TEST(BouncePoolConcurrency, ExhaustionAcrossAreasIsAnErrorNeverACorruption) {
  auto mem = make_memory();
  // 2 areas, 4 threads holding up to 6 mappings of up to 64 KiB: the pool runs dry.
  auto pool = *BouncePool::create(*mem, {.window = {Gpa{kShared}, 1 << 20}, .min_areas = 2});
  std::atomic<int> full{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { worker(*pool, *mem, t, 3000, 64 << 10, 6, full, failures); });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(full.load(), 0);
  EXPECT_EQ(pool->stats().used_slots, 0u);
  EXPECT_LE(pool->stats().high_water, pool->stats().total_slots);
  EXPECT_THAT(pool->validate(), IsOk());
}

TEST(BouncePoolConcurrency, ConcurrentGrowthAddsEachPoolOnce) {
  auto mem = make_memory();
  auto pool = *BouncePool::create(*mem, {.window = {Gpa{kShared}, 256 << 10}, .min_areas = 1,
                                         .growth_window = {Gpa{kShared + (1 << 20)}, 2 << 20},
                                         .growth_pool_size = 256 << 10});
  std::atomic<int> full{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { worker(*pool, *mem, t, 400, 256 << 10, 2, full, failures); });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  const auto s = pool->stats();
  EXPECT_GT(s.pools, 1u);
  EXPECT_LE(s.pools, 9u);  // the first pool and at most 8 from the 2 MiB growth window
  EXPECT_EQ(s.total_slots, uint64_t{s.pools} * 128);
  EXPECT_EQ(s.used_slots, 0u);
  EXPECT_THAT(pool->validate(), IsOk());
}

}  // namespace
}  // namespace vdma
