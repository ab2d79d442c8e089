// PackedDriverQueue and PackedDeviceQueue together over one GuestMemory
// (IdentityDmaOps + RegionTable::bypass): bytes moved through both, laps over
// the largest ring, notifications decided end to end, a device restored from
// avail_position(), and reclaiming chains after a device stops.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <random>
#include <set>

#include "packed_ring_builder.h"
#include "result_matchers.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/packed_device_queue.h"
#include "vdma/virtio/packed_driver_queue.h"
#include "param_printers.h"

namespace vdma {
namespace {

using namespace vdma::testing;

struct Pair {
  std::unique_ptr<DriverQueue> drv;
  std::unique_ptr<DeviceQueue> dev;
};

class PackedRoundTrip : public ::testing::Test {
 protected:
  Pair make(QueueConfig cfg) {
    auto drv = make_driver_queue(RingFormat::kPacked, *w.dma, cfg);
    EXPECT_THAT(drv, IsOk());
    auto dev = make_device_queue(RingFormat::kPacked, w.table, cfg, (*drv)->ring_addresses());
    EXPECT_THAT(dev, IsOk());
    return {std::move(drv).value(), std::move(dev).value()};
  }

  PackedTestWorld w = PackedTestWorld::make();
};

// Random chains (1-3 readable, 1-2 writable segments) through queues of
// several sizes, completed out of order; the device copies readable bytes to
// writable ones and the driver checks every byte and length.
struct TripParam {
  uint16_t size;
  bool indirect;
};

class PackedRoundTripSizes : public PackedRoundTrip, public ::testing::WithParamInterface<TripParam> {};

TEST_P(PackedRoundTripSizes, MovesBytesOutOfOrderOverManyLaps) {
  const TripParam p = GetParam();
  Pair q = make({.size = p.size,
                 .features = feature_bit(kFeatureVersion1) | (p.indirect ? feature_bit(kFeatureIndirectDesc) : 0)});
  EXPECT_EQ(q.drv->format(), RingFormat::kPacked);
  EXPECT_EQ(q.dev->format(), RingFormat::kPacked);
  std::mt19937 rng(p.size * 2 + p.indirect);
  struct Sent {
    std::vector<std::byte> payload;
    uint64_t out_off;
    uint32_t out_len;
  };
  std::vector<std::optional<Sent>> sent(p.size);  // by slot of data area, one per outstanding chain
  std::deque<DescriptorChain> popped;
  uint64_t done = 0, next_cookie = 0;
  std::vector<DriverSegment> segs;
  while (done < 3000) {
    // Driver: add while there is room (each chain uses its own 4 KiB data area).
    for (int b = 0; b < 4; ++b) {
      // A chain has at most `size` segments: a single-slot queue carries one
      // writable segment and nothing for the device to copy.
      const int nw = std::min(1 + static_cast<int>(rng() % 2), static_cast<int>(p.size));
      const int nr = std::min(1 + static_cast<int>(rng() % 3), p.size - nw);
      const bool one_slot = p.indirect && nr + nw > 1 && nr + nw <= std::min<int>(p.size, 64);
      if (q.drv->num_free() < (one_slot ? 1 : nr + nw)) break;
      const uint64_t cookie = next_cookie % p.size;
      if (sent[cookie]) break;  // that data area is still in flight
      ++next_cookie;
      const uint64_t base = cookie * 0x1000;
      Sent s;
      segs.clear();
      for (int i = 0; i < nr; ++i) {
        const uint32_t len = 1 + rng() % 200;
        std::vector<std::byte> bytes(len);
        for (auto& x : bytes) x = std::byte(static_cast<uint8_t>(rng()));
        const Gpa at = PackedTestWorld::data(base + static_cast<uint64_t>(i) * 0x100);
        ASSERT_THAT(w.mem->write(at, bytes), IsOk());
        s.payload.insert(s.payload.end(), bytes.begin(), bytes.end());
        segs.push_back({at, len, BufferType::kDeviceReadable});
      }
      s.out_off = base + 0x400;
      s.out_len = 0;
      for (int i = 0; i < nw; ++i) {
        const uint32_t len = 1 + rng() % 400;
        segs.push_back({PackedTestWorld::data(s.out_off + s.out_len), len, BufferType::kDeviceWritable});
        s.out_len += len;
      }
      sent[cookie] = std::move(s);
      ASSERT_THAT(q.drv->add(segs, cookie), IsOk());
    }
    // Device: pop all, complete a random subset in random order.
    while (true) {
      DescriptorChain c;
      auto got = q.dev->pop(c);
      ASSERT_THAT(got, IsOk());
      if (!*got) break;
      ASSERT_FALSE(c.error) << c.error->to_string();
      popped.push_back(std::move(c));
    }
    std::shuffle(popped.begin(), popped.end(), rng);
    const size_t n = popped.empty() ? 0 : 1 + rng() % popped.size();
    for (size_t i = 0; i < n; ++i) {
      const DescriptorChain& c = popped.front();
      std::vector<std::byte> in;
      for (const Fragment& f : c.readable) in.insert(in.end(), f.host, f.host + f.len);
      uint64_t written = 0;
      for (const Fragment& f : c.writable) {
        const size_t k = std::min<size_t>(f.len, in.size() - std::min<size_t>(in.size(), written));
        if (k != 0) std::memcpy(f.host, in.data() + written, k);
        written += k;
      }
      ASSERT_THAT(q.dev->push_used(c, static_cast<uint32_t>(written)), IsOk());
      popped.pop_front();
    }
    // Driver: check every returned byte.
    while (true) {
      auto u = q.drv->get_used();
      ASSERT_THAT(u, IsOk());
      if (!*u) break;
      ASSERT_LT((*u)->cookie, sent.size());
      ASSERT_TRUE(sent[(*u)->cookie].has_value()) << "cookie " << (*u)->cookie << " returned twice";
      const Sent& s = *sent[(*u)->cookie];
      const uint32_t expect = static_cast<uint32_t>(std::min<size_t>(s.payload.size(), s.out_len));
      ASSERT_EQ((*u)->len, expect);
      std::vector<std::byte> got(expect);
      ASSERT_THAT(w.mem->read(PackedTestWorld::data(s.out_off), got), IsOk());
      ASSERT_TRUE(std::equal(got.begin(), got.end(), s.payload.begin())) << "cookie " << (*u)->cookie;
      sent[(*u)->cookie].reset();
      ++done;
    }
  }
  EXPECT_FALSE(q.drv->is_broken());
  EXPECT_EQ(q.dev->state(), DeviceQueueState::kRunning);
}

[[maybe_unused]] void PrintTo(const TripParam& p, std::ostream* os) {
  *os << "size " << p.size << ", " << (p.indirect ? "indirect" : "direct");
}

INSTANTIATE_TEST_SUITE_P(Sizes, PackedRoundTripSizes,
                         ::testing::Values(TripParam{1, false}, TripParam{3, false}, TripParam{3, true},
                                           TripParam{8, false}, TripParam{8, true}, TripParam{255, true}),
                         [](const ::testing::TestParamInfo<TripParam>& i) {
                           return "Size" + std::to_string(i.param.size) + (i.param.indirect ? "Indirect" : "Direct");
                         });

// Two full laps of the largest ring: positions up to 32767 and both wrap
// counter values at the 15-bit boundary of avail_position().
TEST_F(PackedRoundTrip, LargestRingFullLaps) {
  Pair q = make({.size = 32768});
  std::vector<DescriptorChain> chains(32768);
  for (int lap = 0; lap < 2; ++lap) {
    for (uint32_t i = 0; i < 32768; ++i) {
      const DriverSegment seg{PackedTestWorld::data(i % 64 * 8), 8, BufferType::kDeviceWritable};
      ASSERT_THAT(q.drv->add(std::span(&seg, 1), i), IsOk());
    }
    EXPECT_EQ(q.drv->num_free(), 0);
    const DriverSegment extra{PackedTestWorld::data(0), 8, BufferType::kDeviceWritable};
    EXPECT_THAT(q.drv->add(std::span(&extra, 1), 0), IsError(VirtioErrc::kNoSpace));
    for (uint32_t i = 0; i < 32768; ++i) ASSERT_THAT(q.dev->pop(chains[i]), HasValue(true)) << i;
    DescriptorChain none;
    ASSERT_THAT(q.dev->pop(none), HasValue(false));
    EXPECT_EQ(q.dev->avail_position(), lap == 0 ? 0 : 0x8000);
    for (uint32_t i = 0; i < 32768; ++i) ASSERT_THAT(q.dev->push_used(chains[i], 8), IsOk());
    for (uint32_t i = 0; i < 32768; ++i) {
      auto u = q.drv->get_used();
      ASSERT_THAT(u, IsOk());
      ASSERT_TRUE(u->has_value()) << i;
      ASSERT_EQ((*u)->cookie, i);
    }
    EXPECT_EQ(q.drv->num_free(), 32768);
  }
}

TEST_F(PackedRoundTrip, NotificationsDecidedEndToEndWithEventIdx) {
  Pair q = make({.size = 8, .features = feature_bit(kFeatureEventIdx)});
  const DriverSegment seg{PackedTestWorld::data(0), 8, BufferType::kDeviceWritable};
  auto add = [&](uint64_t cookie) { ASSERT_THAT(q.drv->add(std::span(&seg, 1), cookie), IsOk()); };
  DescriptorChain a, b, c;

  // Kicks: the device asks for one at its next descriptor.
  EXPECT_TRUE(q.dev->enable_notifications());
  add(1);
  EXPECT_TRUE(q.drv->kick_prepare());
  add(2);
  EXPECT_FALSE(q.drv->kick_prepare()) << "the device has not caught up with the last kick";
  ASSERT_THAT(q.dev->pop(a), HasValue(true));
  ASSERT_THAT(q.dev->pop(b), HasValue(true));
  add(3);
  EXPECT_TRUE(q.drv->kick_prepare()) << "pop moved the event to the next descriptor";
  q.dev->disable_notifications();
  ASSERT_THAT(q.dev->pop(c), HasValue(true));
  add(4);
  EXPECT_FALSE(q.drv->kick_prepare()) << "device polling";
  EXPECT_FALSE(q.dev->enable_notifications()) << "chain 4 is already there: poll again";

  // Interrupts: the driver asks for one at its next used descriptor.
  EXPECT_TRUE(q.drv->enable_callbacks());
  ASSERT_THAT(q.dev->push_used(a, 1), IsOk());
  EXPECT_TRUE(q.dev->should_notify());
  ASSERT_THAT(q.dev->push_used(b, 1), IsOk());
  EXPECT_FALSE(q.dev->should_notify()) << "the driver has not consumed the first yet";
  ASSERT_THAT(q.drv->get_used(), IsOk());
  ASSERT_THAT(q.drv->get_used(), IsOk());
  ASSERT_THAT(q.dev->push_used(c, 1), IsOk());
  EXPECT_TRUE(q.dev->should_notify()) << "get_used moved the event on";
  q.drv->disable_callbacks();
  DescriptorChain d;
  ASSERT_THAT(q.dev->pop(d), HasValue(true));
  ASSERT_THAT(q.dev->push_used(d, 1), IsOk());
  EXPECT_FALSE(q.dev->should_notify());
  EXPECT_FALSE(q.drv->enable_callbacks()) << "two used buffers pending";
}

TEST_F(PackedRoundTrip, DeviceRestoredFromAvailPositionContinues) {
  const QueueConfig cfg{.size = 5};
  Pair q = make(cfg);
  const DriverSegment seg[] = {{PackedTestWorld::data(0), 8, BufferType::kDeviceReadable},
                               {PackedTestWorld::data(8), 8, BufferType::kDeviceWritable}};
  uint64_t cookie = 0;
  for (int round = 0; round < 7; ++round) {
    // Three chains of two descriptors per round, then a device restart.
    for (int i = 0; i < 2; ++i) ASSERT_THAT(q.drv->add(seg, ++cookie), IsOk());
    DescriptorChain c;
    for (int i = 0; i < 2; ++i) {
      ASSERT_THAT(q.dev->pop(c), HasValue(true));
      ASSERT_THAT(q.dev->push_used(c, 8), IsOk());
    }
    const uint16_t pos = q.dev->avail_position();
    q.dev.reset();
    auto dev = make_device_queue(RingFormat::kPacked, w.table, cfg, q.drv->ring_addresses(), pos);
    ASSERT_THAT(dev, IsOk());
    q.dev = std::move(dev).value();
    EXPECT_EQ(q.dev->avail_position(), pos);
    for (int i = 0; i < 2; ++i) {
      auto u = q.drv->get_used();
      ASSERT_THAT(u, IsOk());
      ASSERT_TRUE(u->has_value());
      EXPECT_EQ((*u)->cookie, cookie - 1 + static_cast<uint64_t>(i));
    }
  }
  EXPECT_EQ(q.drv->num_free(), 5);
}

TEST_F(PackedRoundTrip, DetachUnusedAfterTheDeviceStops) {
  Pair q = make({.size = 8, .features = feature_bit(kFeatureIndirectDesc)});
  const DriverSegment seg[] = {{PackedTestWorld::data(0), 8, BufferType::kDeviceReadable},
                               {PackedTestWorld::data(8), 8, BufferType::kDeviceWritable}};
  for (uint64_t i = 1; i <= 5; ++i) ASSERT_THAT(q.drv->add(seg, i), IsOk());
  DescriptorChain a, b;
  ASSERT_THAT(q.dev->pop(a), HasValue(true));
  ASSERT_THAT(q.dev->pop(b), HasValue(true));
  ASSERT_THAT(q.dev->push_used(b, 8), IsOk());
  q.dev.reset();  // device reset: chain `a` and the unpopped ones never come back
  auto u = q.drv->get_used();
  ASSERT_THAT(u, IsOk());
  ASSERT_TRUE(u->has_value());
  EXPECT_EQ((*u)->cookie, 2u);
  std::set<uint64_t> left;
  while (auto c = q.drv->detach_unused()) left.insert(*c);
  EXPECT_EQ(left, (std::set<uint64_t>{1, 3, 4, 5}));
  EXPECT_EQ(q.drv->num_free(), 8);
}

}  // namespace
}  // namespace vdma
