// A driver thread and a device thread on one ring, split or packed, as in a
// real guest/back-end pair: the only synchronisation is the ring itself
// (indices or flags with acquire/release, event suppression with full
// barriers) plus two counters standing in for the kick and the interrupt.
// Both sides sleep when told they may, so a lost wakeup (a notification
// decision that is wrong under concurrency) hangs the test and fails it on
// the deadline. Every chain's data is checked.
//
// These are the barrier tests: run under ThreadSanitizer (label
// "concurrency"), they fail when a barrier of the publish or consume path is
// missing. scripts/check-barriers proves it: it builds the tsan preset with
// VDMA_TEST_DROP_BARRIER=<site> (src/virtio/barrier_switch.h) for each site
// and expects these tests to fail. The data check alone catches a missing
// barrier only on a weakly ordered CPU (or when the compiler reorders); on
// x86 it is ThreadSanitizer that sees the unordered accesses.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "packed_ring_builder.h"
#include "result_matchers.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using Clock = std::chrono::steady_clock;

constexpr uint16_t kSize = 64;
constexpr uint64_t kChains = 50'000;
constexpr auto kDeadline = std::chrono::seconds(60);

struct Param {
  RingFormat format;
  bool indirect;
  bool event_idx;
  bool order_platform;
};

class RingConcurrency : public ::testing::TestWithParam<Param> {};

// Waits until `counter` moves past `seen`, or `stop`; false on the deadline.
bool wait_for_change(const std::atomic<uint64_t>& counter, uint64_t seen, const std::atomic<bool>& stop,
                     Clock::time_point deadline) {
  while (counter.load(std::memory_order_acquire) == seen && !stop.load(std::memory_order_acquire)) {
    if (Clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST_P(RingConcurrency, DriverAndDeviceThreadsMoveEveryChain) {
  const Param p = GetParam();
  PackedTestWorld w = PackedTestWorld::make();
  uint64_t features = feature_bit(kFeatureVersion1);
  if (p.indirect) features |= feature_bit(kFeatureIndirectDesc);
  if (p.event_idx) features |= feature_bit(kFeatureEventIdx);
  if (p.order_platform) features |= feature_bit(kFeatureOrderPlatform);
  const QueueConfig cfg{.size = kSize, .features = features};
  auto drv_r = make_driver_queue(p.format, *w.dma, cfg);
  ASSERT_THAT(drv_r, IsOk());
  auto drv = std::move(drv_r).value();
  auto dev_r = make_device_queue(p.format, w.table, cfg, drv->ring_addresses());
  ASSERT_THAT(dev_r, IsOk());
  auto dev = std::move(dev_r).value();

  std::atomic<uint64_t> kicks{0}, interrupts{0};
  std::atomic<bool> stop{false};
  std::atomic<bool> device_failed{false};
  const auto deadline = Clock::now() + kDeadline;

  // Device: pops, copies the 8 readable bytes into the writable buffer, pushes;
  // sleeps on the kick counter when the ring is empty and it may.
  std::thread device([&] {
    DescriptorChain c;
    while (!stop.load(std::memory_order_acquire)) {
      auto got = dev->pop(c);
      if (!got || (*got && (c.error || c.readable.size() != 1 || c.writable.size() != 1))) {
        device_failed = true;
        return;
      }
      if (*got) {
        std::memcpy(c.writable[0].host, c.readable[0].host, 8);
        if (!dev->push_used(c, 8)) {
          device_failed = true;
          return;
        }
        if (dev->should_notify()) interrupts.fetch_add(1, std::memory_order_release);
        continue;
      }
      const uint64_t seen = kicks.load(std::memory_order_acquire);
      if (!dev->enable_notifications()) continue;  // work arrived meanwhile
      if (!wait_for_change(kicks, seen, stop, deadline)) {
        device_failed = true;
        return;
      }
      dev->disable_notifications();
    }
  });

  // Stops and joins the device however this test body is left (an ASSERT).
  struct Joiner {
    std::atomic<bool>& stop;
    std::thread& t;
    ~Joiner() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } joiner{stop, device};

  // Driver: one 16-byte data area per buffer id, the first 8 bytes carrying
  // the chain number, the second 8 receiving it.
  uint64_t sent = 0, received = 0;
  std::vector<uint16_t> free_areas;
  for (uint16_t i = 0; i < kSize; ++i) free_areas.push_back(i);
  bool lost_wakeup = false;
  drv->disable_callbacks();
  while (received < kChains && !device_failed) {
    bool progress = false;
    while (sent < kChains && !free_areas.empty()) {
      const uint16_t area = free_areas.back();
      const Gpa in = PackedTestWorld::data(uint64_t{area} * 16);
      ASSERT_THAT(w.mem->write(in, std::as_bytes(std::span(&sent, 1))), IsOk());
      const DriverSegment segs[] = {{in, 8, BufferType::kDeviceReadable},
                                    {in.unchecked_add(8), 8, BufferType::kDeviceWritable}};
      auto r = drv->add(segs, sent * kSize + area);
      if (!r && r.error().is(VirtioErrc::kNoSpace)) break;
      ASSERT_THAT(r, IsOk());
      free_areas.pop_back();
      ++sent;
      progress = true;
      if (drv->kick_prepare()) kicks.fetch_add(1, std::memory_order_release);
    }
    while (true) {
      auto u = drv->get_used();
      ASSERT_THAT(u, IsOk());
      if (!*u) break;
      const uint16_t area = static_cast<uint16_t>((*u)->cookie % kSize);
      uint64_t echoed = 0;
      ASSERT_THAT(
          w.mem->read(PackedTestWorld::data(uint64_t{area} * 16 + 8), std::as_writable_bytes(std::span(&echoed, 1))),
          IsOk());
      ASSERT_EQ((*u)->len, 8u);
      ASSERT_EQ(echoed, (*u)->cookie / kSize) << "chain " << (*u)->cookie / kSize;
      free_areas.push_back(area);
      ++received;
      progress = true;
    }
    if (progress) continue;
    const uint64_t seen = interrupts.load(std::memory_order_acquire);
    if (!drv->enable_callbacks()) continue;  // used buffers arrived meanwhile
    if (!wait_for_change(interrupts, seen, device_failed, deadline)) {
      lost_wakeup = true;
      break;
    }
    drv->disable_callbacks();
  }
  stop = true;
  device.join();
  EXPECT_FALSE(lost_wakeup) << "driver slept through a used buffer (" << received << " of " << kChains << ")";
  EXPECT_FALSE(device_failed) << "device failed or slept through a kick";
  EXPECT_EQ(received, kChains);
  EXPECT_FALSE(drv->is_broken());
  EXPECT_EQ(dev->state(), DeviceQueueState::kRunning);
  EXPECT_EQ(drv->barriers(), p.order_platform ? BarrierKind::kStrong : BarrierKind::kWeak);
}

std::vector<Param> all_params() {
  std::vector<Param> v;
  for (RingFormat f : {RingFormat::kSplit, RingFormat::kPacked}) {
    for (bool order_platform : {false, true}) {
      for (bool indirect : {false, true}) {
        for (bool event_idx : {false, true}) v.push_back({f, indirect, event_idx, order_platform});
      }
    }
  }
  return v;
}

[[maybe_unused]] void PrintTo(const Param& p, std::ostream* os) {
  *os << to_string(p.format) << ", " << (p.indirect ? "indirect" : "direct") << ", "
      << (p.event_idx ? "event_idx" : "no event_idx") << ", " << (p.order_platform ? "ORDER_PLATFORM" : "smp");
}

// Named <Split|Packed><Direct|Indirect><EventIdx|NoEventIdx><Smp|OrderPlatform>,
// so that scripts/check-barriers can pick a format with a filter.
INSTANTIATE_TEST_SUITE_P(Modes, RingConcurrency, ::testing::ValuesIn(all_params()),
                         [](const ::testing::TestParamInfo<Param>& i) {
                           return std::string(i.param.format == RingFormat::kSplit ? "Split" : "Packed") +
                                  (i.param.indirect ? "Indirect" : "Direct") +
                                  (i.param.event_idx ? "EventIdx" : "NoEventIdx") +
                                  (i.param.order_platform ? "OrderPlatform" : "Smp");
                         });

}  // namespace
}  // namespace vdma
