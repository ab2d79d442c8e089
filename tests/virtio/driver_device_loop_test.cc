// The driver<->device loop of the foundation issue: both sides of a virtqueue
// in one process over one GuestMemory, moving >= 100,000 chains (25,000 under
// a sanitizer, see iterations.h) of random segment counts and sizes per
// configuration. The device copies the readable bytes of each chain into its
// writable buffers; the test checks every byte,
// the reported length, and that no byte past what was written changed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <random>
#include <unordered_map>

#include "chain_copy.h"
#include "result_matchers.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/mem/gpa_allocator.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"
#include "iterations.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t kRingWindow = 8 << 20;   // coherent memory for rings and indirect tables
constexpr uint64_t kDataBase = 16 << 20;
constexpr uint64_t kDataSize = 32 << 20;
constexpr std::byte kUntouched{0x5a};
const int kChains = testing::test_iterations(100'000);  // see iterations.h

struct LoopParam {
  RingFormat format;
  bool indirect;
  bool event_idx;
};

std::string describe(const LoopParam& p) {
  return std::string(to_string(p.format)) + (p.indirect ? "_Indirect" : "_Direct") +
         (p.event_idx ? "_EventIdx" : "_NoEventIdx");
}

std::string param_name(const ::testing::TestParamInfo<LoopParam>& info) { return describe(info.param); }

// gtest prints this in test listings instead of the parameter's raw bytes.
[[maybe_unused]] void PrintTo(const LoopParam& p, std::ostream* os) { *os << describe(p); }

struct Segment {
  Gpa gpa;
  uint32_t len;
  BufferType type;
};

struct Pending {
  std::vector<Segment> segs;
  std::vector<std::byte> readable_bytes;  // what the device must copy, in order
  uint64_t writable_total = 0;
};

class DriverDeviceLoop : public ::testing::TestWithParam<LoopParam> {};

TEST_P(DriverDeviceLoop, MovesEveryByteOfRandomChains) {
  const LoopParam p = GetParam();
  auto mem_r = GuestMemory::create({{Gpa{0}, kRingWindow, MemAttr::kShared, "rings"},
                                    {Gpa{kDataBase}, kDataSize, MemAttr::kPrivate, "data"}});
  ASSERT_THAT(mem_r, IsOk());
  auto mem = std::move(mem_r).value();
  ASSERT_THAT(mem->fill(Gpa{kDataBase}, kDataSize, kUntouched), IsOk());
  IdentityDmaOps dma(*mem, {Gpa{0}, kRingWindow});
  RegionTable dev_mem = RegionTable::bypass(*mem);

  uint64_t features = feature_bit(kFeatureVersion1);
  if (p.indirect) features |= feature_bit(kFeatureIndirectDesc);
  if (p.event_idx) features |= feature_bit(kFeatureEventIdx);
  const QueueConfig cfg{.size = 128, .features = features, .max_indirect = 16};

  auto drv_r = make_driver_queue(p.format, dma, cfg);
  ASSERT_THAT(drv_r, IsOk());
  auto drv = std::move(drv_r).value();
  auto dev_r = make_device_queue(p.format, dev_mem, cfg, drv->ring_addresses());
  ASSERT_THAT(dev_r, IsOk());
  auto dev = std::move(dev_r).value();

  GpaAllocator data_alloc({Gpa{kDataBase}, kDataSize});
  std::mt19937_64 rng(0x5eed + static_cast<int>(p.format) * 4 + p.indirect * 2 + p.event_idx);
  std::unordered_map<uint64_t, Pending> pending;
  std::deque<DescriptorChain> popped;  // completed out of order, in batches
  uint64_t next_cookie = 1;
  int completed = 0;
  uint64_t bytes_checked = 0;
  std::vector<DriverSegment> segs;
  std::vector<std::byte> seen, want;

  auto seg_len = [&] {
    switch (rng() % 8) {
      case 0: return static_cast<uint32_t>(1 + rng() % 16);       // tiny
      case 1: return static_cast<uint32_t>(4096 + rng() % 12288);  // page-sized and more
      default: return static_cast<uint32_t>(1 + rng() % 2048);
    }
  };

  while (completed < kChains) {
    // Driver: add a random batch of chains while there is room.
    const int batch = 1 + static_cast<int>(rng() % 24);
    for (int b = 0; b < batch && next_cookie <= static_cast<uint64_t>(kChains); ++b) {
      const int nr = static_cast<int>(rng() % 5);                 // 0..4 readable
      const int nw = (nr == 0 ? 1 : 0) + static_cast<int>(rng() % 4);  // >= 1 segment overall
      const int nseg = nr + nw;
      // Direct chains need nseg free descriptors; indirect ones need one.
      if (drv->num_free() < nseg) break;
      Pending pend;
      segs.clear();
      for (int i = 0; i < nseg; ++i) {
        const uint32_t len = seg_len();
        auto g = data_alloc.allocate(len, 1);
        ASSERT_THAT(g, IsOk());
        const BufferType t = i < nr ? BufferType::kDeviceReadable : BufferType::kDeviceWritable;
        if (t == BufferType::kDeviceReadable) {
          // Random bytes, eight at a time (xorshift64 seeded from the test's rng).
          std::vector<std::byte> bytes(len);
          uint64_t x = rng() | 1;
          for (size_t k = 0; k < len; k += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            std::memcpy(bytes.data() + k, &x, std::min<size_t>(8, len - k));
          }
          ASSERT_THAT(mem->write(*g, bytes), IsOk());
          pend.readable_bytes.insert(pend.readable_bytes.end(), bytes.begin(), bytes.end());
        } else {
          pend.writable_total += len;
        }
        pend.segs.push_back({*g, len, t});
        segs.push_back(DriverSegment{.addr = *g, .len = len, .type = t});
      }
      ASSERT_THAT(drv->add(segs, next_cookie), IsOk()) << "chain " << next_cookie;
      pending.emplace(next_cookie++, std::move(pend));
    }
    (void)drv->kick_prepare();

    // Device: pop everything available, then complete in a shuffled order.
    while (true) {
      DescriptorChain chain;
      auto got = dev->pop(chain);
      ASSERT_THAT(got, IsOk());
      if (!*got) break;
      ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
      popped.push_back(std::move(chain));
    }
    std::shuffle(popped.begin(), popped.end(), rng);
    const size_t complete_now = popped.empty() ? 0 : 1 + rng() % popped.size();
    for (size_t i = 0; i < complete_now; ++i) {
      const DescriptorChain& c = popped.front();
      const uint32_t written = copy_readable_to_writable(c);
      ASSERT_THAT(dev->push_used(c, written), IsOk());
      popped.pop_front();
    }
    (void)dev->should_notify();

    // Driver: collect and verify every byte.
    while (true) {
      auto u = drv->get_used();
      ASSERT_THAT(u, IsOk());
      if (!u->has_value()) break;
      auto it = pending.find((*u)->cookie);
      ASSERT_NE(it, pending.end()) << "unknown cookie " << (*u)->cookie;
      Pending& pend = it->second;
      const uint64_t expect_written = std::min<uint64_t>(pend.readable_bytes.size(), pend.writable_total);
      ASSERT_EQ((*u)->len, expect_written) << "cookie " << (*u)->cookie;
      uint64_t stream = 0;
      for (const Segment& s : pend.segs) {
        if (s.type == BufferType::kDeviceReadable) {
          // Restore the guard: the range may later be reused as a writable buffer.
          ASSERT_THAT(mem->fill(s.gpa, s.len, kUntouched), IsOk());
          ASSERT_THAT(data_alloc.free(s.gpa, s.len), IsOk());
          continue;
        }
        // What this segment must hold: its share of the copied stream, then the guard.
        want.assign(s.len, kUntouched);
        if (stream < expect_written) {
          const uint64_t n = std::min<uint64_t>(s.len, expect_written - stream);
          std::copy_n(pend.readable_bytes.begin() + static_cast<ptrdiff_t>(stream), n, want.begin());
        }
        seen.resize(s.len);
        ASSERT_THAT(mem->read(s.gpa, seen), IsOk());
        if (std::memcmp(seen.data(), want.data(), s.len) != 0) {  // memcmp: the -O0 ASan build runs this a lot
          const auto [g, w] = std::mismatch(seen.begin(), seen.end(), want.begin());
          FAIL() << "cookie " << (*u)->cookie << " byte " << stream + static_cast<uint64_t>(g - seen.begin())
                 << ": got " << std::to_integer<int>(*g) << ", want " << std::to_integer<int>(*w);
        }
        stream += s.len;
        bytes_checked += s.len;
        // Restore the guard so the buffer can be reused.
        ASSERT_THAT(mem->fill(s.gpa, s.len, kUntouched), IsOk());
        ASSERT_THAT(data_alloc.free(s.gpa, s.len), IsOk());
      }
      pending.erase(it);
      ++completed;
    }
  }
  EXPECT_TRUE(pending.empty());
  EXPECT_FALSE(drv->is_broken());
  EXPECT_EQ(dev->state(), DeviceQueueState::kRunning);
  EXPECT_EQ(drv->num_free(), cfg.size);
  EXPECT_GT(bytes_checked, static_cast<uint64_t>(kChains) * 1000);
  RecordProperty("bytes_checked", std::to_string(bytes_checked));
}

INSTANTIATE_TEST_SUITE_P(AllFormats, DriverDeviceLoop,
                         ::testing::Values(LoopParam{RingFormat::kSplit, false, false},
                                           LoopParam{RingFormat::kSplit, false, true},
                                           LoopParam{RingFormat::kSplit, true, false},
                                           LoopParam{RingFormat::kSplit, true, true},
                                           LoopParam{RingFormat::kPacked, false, false},
                                           LoopParam{RingFormat::kPacked, false, true},
                                           LoopParam{RingFormat::kPacked, true, false},
                                           LoopParam{RingFormat::kPacked, true, true}),
                         param_name);

}  // namespace
}  // namespace vdma
