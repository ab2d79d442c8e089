// Multi-queue: 2 to 4 queues, one driver thread per queue, each keeping 8
// requests in flight over its own quarter of a file-backed disk, writing
// and verifying reads; then every queue's data is checked in the file and
// across queues (a block written through queue 0 reads back through queue 1).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "blk_driver_test_util.h"
#include "result_matchers.h"
#include "param_printers.h"

namespace vdma::blk {
namespace {

using namespace vdma::testing;
using test_util::pattern;
using test_util::TempDisk;

constexpr uint64_t kDiskBytes = 16 << 20;
constexpr uint32_t kDepth = 8;
constexpr uint32_t kBlock = 4096;
constexpr int kRequestsPerQueue = 1500;

struct Mode {
  RingFormat format;
  uint32_t queues;
  bool polling;
};

class BlkDriverMultiQueue : public ::testing::TestWithParam<Mode> {};

// One queue's worker over blocks [first, first + count) of the disk;
// `seeds` gets the seed each block holds at the end (0: never written),
// `failure` the first thing that went wrong.
void drive_queue(BlkDriver& drv, uint32_t q, uint64_t first, uint32_t count, std::vector<uint32_t>& seeds,
                 std::string& failure) {
  seeds.assign(count, 0);
  std::vector<bool> busy(count, false);
  struct Pending {
    bool write;
    uint32_t block;
    uint32_t seed;
  };
  std::vector<Pending> pending(kDepth);
  std::vector<uint32_t> free_slots;
  for (uint32_t s = 0; s < kDepth; ++s) free_slots.push_back(s);
  std::mt19937 rng(q * 7919 + 1);
  int submitted = 0;
  int done = 0;
  BlkCompletion completions[kDepth];
  auto fail = [&](const std::string& why) { failure = fmt::format("queue {}: {}", q, why); };
  while (done < kRequestsPerQueue && failure.empty()) {
    while (!free_slots.empty() && submitted < kRequestsPerQueue) {
      const uint32_t slot = free_slots.back();
      uint32_t block = rng() % count;
      while (busy[block]) block = (block + 1) % count;
      Pending p{seeds[block] == 0 || rng() % 2 == 0, block, 0};
      if (p.write) {
        p.seed = 1 + static_cast<uint32_t>(rng() % 1000000) + q * 1000000;
        const auto data = pattern(kBlock, p.seed);
        std::copy(data.begin(), data.end(), drv.buffer(q, slot).begin());
      } else {
        p.seed = seeds[block];
      }
      auto r = drv.submit(q, slot, p.write ? BlkOp::kWrite : BlkOp::kRead, (first + block) * (kBlock / 512), kBlock);
      if (!r) return fail(r.error().to_string());
      busy[block] = true;
      pending[slot] = p;
      free_slots.pop_back();
      ++submitted;
    }
    if (auto r = drv.kick(q); !r) return fail(r.error().to_string());
    auto n = drv.wait(q, completions, std::chrono::seconds(10));
    if (!n) return fail(n.error().to_string());
    for (size_t i = 0; i < *n; ++i) {
      const BlkCompletion& c = completions[i];
      const Pending& p = pending[c.slot];
      if (c.status != kBlkStatusOk) return fail(fmt::format("slot {} status {}", c.slot, c.status));
      if (p.write) {
        seeds[p.block] = p.seed;
      } else if (test_util::to_vector(drv.buffer(q, c.slot).first(kBlock)) != pattern(kBlock, p.seed)) {
        return fail(fmt::format("block {} does not read back seed {}", first + p.block, p.seed));
      }
      busy[p.block] = false;
      free_slots.push_back(c.slot);
      ++done;
    }
  }
}

TEST_P(BlkDriverMultiQueue, QueuesRunConcurrentlyAndEveryByteLands) {
  const Mode m = GetParam();
  TempDisk disk(kDiskBytes);
  ASSERT_TRUE(disk.ok());
  LoopbackOptions opt{.format = m.format, .num_queues = m.queues, .polling = m.polling};
  opt.storage = disk.path();
  auto t = LoopbackTransport::create(opt);
  ASSERT_THAT(t, IsOk());
  auto d = BlkDriver::create(**t, {.queue_depth = kDepth, .max_io_bytes = 16384});
  ASSERT_THAT(d, IsOk());
  BlkDriver& drv = **d;
  ASSERT_EQ(drv.num_queues(), m.queues);

  const uint32_t blocks_per_queue = static_cast<uint32_t>(kDiskBytes / kBlock / m.queues);
  std::vector<std::vector<uint32_t>> seeds(m.queues);
  std::vector<std::string> failures(m.queues);
  std::vector<std::thread> threads;
  for (uint32_t q = 0; q < m.queues; ++q) {
    threads.emplace_back([&, q] {
      drive_queue(drv, q, uint64_t{q} * blocks_per_queue, blocks_per_queue, seeds[q], failures[q]);
    });
  }
  for (auto& th : threads) th.join();
  for (const std::string& f : failures) EXPECT_EQ(f, "");
  for (uint32_t q = 0; q < m.queues; ++q) {
    EXPECT_EQ(drv.in_flight(q), 0u);
    EXPECT_GT((*t)->completed(q), 0u);
    EXPECT_EQ((*t)->device_error(q), std::nullopt);
    for (uint32_t b = 0; b < blocks_per_queue; ++b) {
      const uint64_t off = (uint64_t{q} * blocks_per_queue + b) * kBlock;
      if (seeds[q][b] == 0) continue;
      ASSERT_EQ(disk.read(off, kBlock), pattern(kBlock, seeds[q][b])) << "queue " << q << " block " << b;
    }
  }
  // Across queues: what queue 0 wrote reads back through the last queue.
  for (uint32_t b = 0; b < blocks_per_queue; ++b) {
    if (seeds[0][b] == 0) continue;
    std::vector<std::byte> back(kBlock);
    ASSERT_THAT(drv.read(m.queues - 1, uint64_t{b} * (kBlock / 512), back), IsOk());
    EXPECT_EQ(back, pattern(kBlock, seeds[0][b]));
    break;
  }
}

[[maybe_unused]] void PrintTo(const Mode& m, std::ostream* os) {
  *os << to_string(m.format) << ", " << m.queues << " queues, " << (m.polling ? "polling" : "eventfd");
}

INSTANTIATE_TEST_SUITE_P(Modes, BlkDriverMultiQueue,
                         ::testing::Values(Mode{RingFormat::kSplit, 2, false}, Mode{RingFormat::kPacked, 4, false},
                                           Mode{RingFormat::kSplit, 4, true}, Mode{RingFormat::kPacked, 3, true}),
                         [](const ::testing::TestParamInfo<Mode>& i) {
                           return fmt::format("{}_{}q_{}", to_string(i.param.format), i.param.queues,
                                              i.param.polling ? "polling" : "eventfd");
                         });

}  // namespace
}  // namespace vdma::blk
