// Randomized, for ThreadSanitizer: workers keep requests "in flight" on
// pinned IOTLB translations (plain writes into the page, then a check, at
// random times after the section ended) while a session thread invalidates
// pages, and, once each INVALIDATE returns, takes the page back (plain
// writes of its own, as a guest reusing the memory would) before mapping
// it again. An access through a removed translation after the
// acknowledgement is a data race TSan reports, and a clobbered page fails
// the byte checks on either side.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <random>
#include <thread>
#include <vector>

#include "vdma/iommu/device_iotlb.h"
#include "vdma/iommu/read_section.h"

namespace vdma {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPages = 16;
constexpr uint64_t kBase = 0x100000;

TEST(IotlbPinConcurrency, NothingUsesAnInvalidatedPageAfterTheAck) {
  std::vector<std::byte> mem(kPages * kPage);
  DeviceIotlb iotlb;
  auto map = [&](uint64_t p) {
    ASSERT_TRUE(iotlb.insert(Iova(kBase + p * kPage), kPage, FrontVa(0x7f0000000000 + p * kPage), mem.data() + p * kPage,
                             Access::kReadWrite));
  };
  for (uint64_t p = 0; p < kPages; ++p) map(p);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> requests{0};
  std::atomic<int> failures{0};

  // Worker w uses the pages p with p % 2 == w, so workers never share a page.
  auto worker = [&](uint64_t w) {
    auto reader = iotlb.register_reader();
    ASSERT_TRUE(reader.has_value());
    std::mt19937_64 rng(w + 1);
    struct InFlight {
      std::byte* host;
      ReadPin pin;
      uint8_t tag;
    };
    std::deque<InFlight> in_flight;
    IotlbLookup out;
    uint8_t tag = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      if (in_flight.size() < 4) {
        const uint64_t p = (rng() % (kPages / 2)) * 2 + w;
        std::byte* const want = mem.data() + p * kPage;
        bool busy = false;  // one request per page at a time
        for (const InFlight& f : in_flight) busy = busy || f.host == want;
        if (busy) continue;
        ReadSection s(*reader);
        auto r = iotlb.lookup(s, Iova(kBase + p * kPage), kPage, Access::kWrite, out);
        if (r && *r) {
          InFlight f{out.fragments.front().host, s.pin(), ++tag};
          // The "I/O" starts: the first half of the page.
          std::memset(f.host, f.tag, kPage / 2);
          in_flight.push_back(std::move(f));
        }
      }
      if (!in_flight.empty() && (in_flight.size() >= 4 || rng() % 3 == 0)) {
        // A random request completes: second half, check, release.
        const size_t i = rng() % in_flight.size();
        InFlight& f = in_flight[i];
        std::memset(f.host + kPage / 2, f.tag, kPage / 2);
        for (uint64_t b = 0; b < kPage; b += 512) {
          if (f.host[b] != std::byte{f.tag}) failures.fetch_add(1);
        }
        f.pin.release();
        in_flight.erase(in_flight.begin() + static_cast<std::ptrdiff_t>(i));
        requests.fetch_add(1, std::memory_order_relaxed);
      }
      if (rng() % 8 == 0) std::this_thread::yield();
    }
    in_flight.clear();  // releases the pins
  };
  std::thread w0(worker, 0);
  std::thread w1(worker, 1);

  std::mt19937_64 rng(99);
  uint64_t invalidations = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < deadline && invalidations < 3000) {
    const uint64_t p = rng() % kPages;
    ASSERT_TRUE(iotlb.invalidate(Iova(kBase + p * kPage), kPage));
    // Acknowledged: the page is the guest's again. No worker may touch it.
    std::byte* page = mem.data() + p * kPage;
    std::memset(page, 0xa5, kPage);
    std::this_thread::yield();
    for (uint64_t b = 0; b < kPage; b += 256) {
      if (page[b] != std::byte{0xa5}) failures.fetch_add(1);
    }
    map(p);
    ++invalidations;
  }
  stop = true;
  w0.join();
  w1.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(requests.load(), 100u);
  EXPECT_GT(invalidations, 50u);
}

}  // namespace
}  // namespace vdma
