// IovaFlushQueue's shards: each thread releases into and revives from its
// own queue, so a run released on one thread is not revived on another
// (that thread gets nothing, and the run is flushed like any other); a full
// shard flushes only itself; an expiry flush and flush() take every
// shard's runs in one sink call.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "result_matchers.h"
#include "vdma/dma/iova_flush_queue.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t k4K = 4096;

class Sink final : public InvalidationSink {
 public:
  Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
    std::lock_guard lock(mu_);
    std::set<uint64_t> pages;
    for (const AddrRange<Iova>& r : ranges) {
      for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += k4K) pages.insert(p);
    }
    calls_.push_back(std::move(pages));
    return ok();
  }
  std::vector<std::set<uint64_t>> calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::vector<std::set<uint64_t>> calls_;
};

struct Rig {
  explicit Rig(size_t entries) {
    alloc = std::move(IovaAllocator::create({.ranges = {{Iova(0x100000), Iova(0xffffffff)}}, .shards = 1})).value();
    fq = std::make_unique<IovaFlushQueue>(*alloc, sink,
                                          FlushQueueConfig{.mode = InvalidationMode::kLazy, .max_entries = entries,
                                                           .max_delay = std::chrono::milliseconds(10),
                                                           .clock = [this] { return now; }, .shards = 2});
  }
  Iova take() { return *alloc->allocate(k4K, Iova(0xffffffff)); }
  static RevivalKey key(uint64_t gpa) { return {.gpa = gpa, .len = k4K, .perms = Access::kRead}; }
  std::shared_ptr<Sink> sink = std::make_shared<Sink>();
  std::unique_ptr<IovaAllocator> alloc;
  std::unique_ptr<IovaFlushQueue> fq;
  std::chrono::steady_clock::time_point now{std::chrono::seconds(100)};
};

// Runs `fn` on a thread of its own (a shard other than the caller's: the
// queue has two, and threads are numbered in turn).
template <class Fn>
void on_another_thread(Fn&& fn) {
  std::thread t(std::forward<Fn>(fn));
  t.join();
}

TEST(IovaFlushQueueShards, EachThreadRevivesOnlyWhatItReleased) {
  Rig r(64);
  const Iova mine = r.take();
  ASSERT_THAT(r.fq->release(mine, k4K, Rig::key(0x10000)), IsOk());
  // Two new threads in turn: one of them is on the other shard and cannot
  // have it (one on this thread's shard may, and puts it back).
  int refused = 0;
  for (int i = 0; i < 2 && refused == 0; ++i) {
    on_another_thread([&] {
      if (const std::optional<Iova> back = r.fq->revive(Rig::key(0x10000), k4K, Iova(0xffffffff))) {
        EXPECT_EQ(*back, mine);
        ASSERT_THAT(r.fq->release(*back, k4K, Rig::key(0x10000)), IsOk());
      } else {
        ++refused;
      }
    });
  }
  EXPECT_EQ(refused, 1);
  // This thread gets its run back.
  EXPECT_EQ(r.fq->revive(Rig::key(0x10000), k4K, Iova(0xffffffff)), mine);
  EXPECT_GE(r.fq->stats().revived, 1u);
  EXPECT_EQ(r.fq->stats().pending, 0u);
}

TEST(IovaFlushQueueShards, AFullShardFlushesOnlyItself) {
  Rig r(4);
  // A probe released here is revivable only on this thread's shard: the
  // first new thread that cannot revive it is on the other one (threads are
  // numbered in turn, so one of two consecutive threads is).
  const Iova probe = r.take();
  ASSERT_THAT(r.fq->release(probe, k4K, Rig::key(0x90000)), IsOk());
  std::set<uint64_t> theirs;
  bool other_shard = false;
  for (int attempt = 0; attempt < 2 && !other_shard; ++attempt) {
    on_another_thread([&] {
      if (const std::optional<Iova> back = r.fq->revive(Rig::key(0x90000), k4K, Iova(0xffffffff))) {
        ASSERT_THAT(r.fq->release(*back, k4K, Rig::key(0x90000)), IsOk());  // same shard: put it back
        return;
      }
      other_shard = true;
      for (int i = 0; i < 2; ++i) {
        const Iova run = r.take();
        theirs.insert(run.value());
        ASSERT_THAT(r.fq->release(run, k4K, Rig::key(0x20000 + i * k4K)), IsOk());
      }
    });
  }
  ASSERT_TRUE(other_shard);
  EXPECT_TRUE(r.sink->calls().empty());
  // The probe and three more fill this thread's shard: it flushes its own 4.
  std::set<uint64_t> ours = {probe.value()};
  for (int i = 0; i < 3; ++i) {
    const Iova run = r.take();
    ours.insert(run.value());
    ASSERT_THAT(r.fq->release(run, k4K, Rig::key(0x40000 + i * k4K)), IsOk());
  }
  ASSERT_EQ(r.sink->calls().size(), 1u);
  EXPECT_EQ(r.sink->calls()[0], ours);
  EXPECT_EQ(r.fq->stats().pending, 2u);
  // flush() takes the other shard's runs too, in one sink call.
  ASSERT_THAT(r.fq->flush(), IsOk());
  ASSERT_EQ(r.sink->calls().size(), 2u);
  EXPECT_EQ(r.sink->calls()[1], theirs);
  EXPECT_EQ(r.fq->stats().pending, 0u);
}

TEST(IovaFlushQueueShards, AnExpiryFlushTakesTheOldRunsOfEveryShard) {
  Rig r(64);
  std::set<uint64_t> old_runs;
  on_another_thread([&] {
    const Iova run = r.take();
    old_runs.insert(run.value());
    ASSERT_THAT(r.fq->release(run, k4K, Rig::key(0x20000)), IsOk());
  });
  const Iova old_here = r.take();
  old_runs.insert(old_here.value());
  ASSERT_THAT(r.fq->release(old_here, k4K, Rig::key(0x30000)), IsOk());
  r.now += std::chrono::milliseconds(8);
  const Iova young = r.take();
  ASSERT_THAT(r.fq->release(young, k4K, Rig::key(0x40000)), IsOk());
  r.now += std::chrono::milliseconds(2);  // the old ones 10 ms, the young one 2 ms
  ASSERT_THAT(r.fq->flush_expired(), IsOk());
  const auto calls = r.sink->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], old_runs);
  EXPECT_EQ(r.fq->stats().pending, 1u);
  EXPECT_EQ(r.fq->revive(Rig::key(0x40000), k4K, Iova(0xffffffff)), young);
}

}  // namespace
}  // namespace vdma
