// ReadPin / ReadDomain::wait_for_pins, and DeviceIotlb writers that wait for
// the pins of requests with I/O in flight (an epoch grace period).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "result_matchers.h"
#include "vdma/iommu/device_iotlb.h"
#include "vdma/iommu/read_section.h"

namespace vdma {
namespace {

using namespace std::chrono_literals;
using ::vdma::testing::IsOk;

TEST(ReadPin, WaitForPinsWaitsForAPinTakenBeforeIt) {
  ReadDomain d(2);
  auto reader = d.register_reader();
  ASSERT_TRUE(reader.has_value());
  ReadPin pin;
  {
    ReadSection s(*reader);
    pin = s.pin();
  }
  EXPECT_TRUE(pin.held());
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    d.wait_for_pins();
    returned = true;
  });
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(returned.load());
  pin.release();
  EXPECT_FALSE(pin.held());
  pin.release();  // idempotent
  waiter.join();
  EXPECT_TRUE(returned.load());
}

TEST(ReadPin, WaitForPinsReturnsAtOnceWithoutPins) {
  ReadDomain d(1);
  auto reader = d.register_reader();
  ASSERT_TRUE(reader.has_value());
  d.wait_for_pins();
  ReadPin moved;
  {
    ReadSection s(*reader);
    ReadPin p = s.pin();
    moved = std::move(p);
    EXPECT_FALSE(p.held());  // NOLINT(bugprone-use-after-move): the moved-from pin is empty
  }
  moved = ReadPin();  // assignment releases
  d.wait_for_pins();
}

// New pins, taken all the time while the writer waits, never hold it back:
// only the pins taken before the call do.
TEST(ReadPin, PinsTakenDuringTheWaitDoNotHoldItBack) {
  ReadDomain d(1);
  std::atomic<bool> old_taken{false};
  std::atomic<bool> release_old{false};
  std::atomic<bool> waiter_done{false};
  std::thread reader_thread([&] {
    auto reader = d.register_reader();
    ASSERT_TRUE(reader.has_value());
    ReadPin old_pin;
    {
      ReadSection s(*reader);
      old_pin = s.pin();
    }
    old_taken = true;
    std::vector<ReadPin> fresh;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!waiter_done && std::chrono::steady_clock::now() < deadline) {
      {
        ReadSection s(*reader);
        fresh.push_back(s.pin());
      }
      if (fresh.size() > 2) fresh.erase(fresh.begin());  // always at least two held
      if (release_old) old_pin.release();
      std::this_thread::sleep_for(1ms);
    }
    fresh.clear();
    old_pin.release();
  });
  while (!old_taken) std::this_thread::yield();
  std::thread waiter([&] {
    d.wait_for_pins();
    waiter_done = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(waiter_done.load());
  const auto released_at = std::chrono::steady_clock::now();
  release_old = true;
  waiter.join();
  EXPECT_LT(std::chrono::steady_clock::now() - released_at, 4s) << "new pins held the writer back";
  reader_thread.join();
}

struct IotlbPinTest : ::testing::Test {
  std::vector<std::byte> mem = std::vector<std::byte>(4 * 4096);
  DeviceIotlb iotlb;
  void SetUp() override {
    ASSERT_THAT(iotlb.insert(Iova(0x10000), 4 * 4096, FrontVa(0x7f0000000000), mem.data(), Access::kReadWrite),
                IsOk());
  }
  // A "request": looks up one page in a section and pins it.
  std::pair<std::byte*, ReadPin> start(ReaderHandle& reader, uint64_t page) {
    ReadSection s(reader);
    IotlbLookup out;
    auto r = iotlb.lookup(s, Iova(0x10000 + page * 4096), 4096, Access::kWrite, out);
    EXPECT_TRUE(r.has_value() && *r);
    if (!r || !*r) return {nullptr, ReadPin()};
    return {out.fragments.front().host, s.pin()};
  }
};

TEST_F(IotlbPinTest, InvalidateWaitsForAPinnedRequest) {
  auto reader = iotlb.register_reader();
  ASSERT_TRUE(reader.has_value());
  auto [host, pin] = start(*reader, 1);
  ASSERT_NE(host, nullptr);
  std::atomic<bool> acked{false};
  std::thread session([&] {
    EXPECT_THAT(iotlb.invalidate(Iova(0x11000), 4096), IsOk());
    acked = true;
  });
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(acked.load()) << "INVALIDATE acknowledged while a request still uses the page";
  host[0] = std::byte{1};  // the "I/O" still may use it
  pin.release();
  session.join();
  EXPECT_TRUE(acked.load());
}

TEST_F(IotlbPinTest, InsertIntoAGapAndForgetDoNotWaitForPins) {
  auto reader = iotlb.register_reader();
  ASSERT_TRUE(reader.has_value());
  auto [host, pin] = start(*reader, 0);
  ASSERT_NE(host, nullptr);
  // The worker itself, holding pins, drops its cached translations.
  const AddrRange<Iova> used{Iova(0x10000), 4096};
  EXPECT_EQ(iotlb.forget(std::span(&used, 1)), 1u);
  // The session answers a MISS with an UPDATE into a gap: no wait either.
  std::vector<std::byte> other(4096);
  EXPECT_THAT(iotlb.insert(Iova(0x40000), 4096, FrontVa(0x7f0000100000), other.data(), Access::kRead), IsOk());
  // But an UPDATE over the forgotten range (a different translation) waits.
  std::atomic<bool> acked{false};
  std::thread session([&] {
    EXPECT_THAT(iotlb.insert(Iova(0x10000), 4096, FrontVa(0x7f0000100000), other.data(), Access::kRead), IsOk());
    acked = true;
  });
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(acked.load());
  pin.release();
  session.join();
  EXPECT_TRUE(acked.load());
}

}  // namespace
}  // namespace vdma
