// One-descriptor round trip through both sides of a virtqueue on one thread:
// driver add -> device pop -> device push_used -> driver get_used, over
// IdentityDmaOps (driver) and a bypass RegionTable (device).
//
//   BM_SplitRoundTrip            the concrete final classes (calls devirtualised)
//   BM_SplitRoundTripNotify      + kick_prepare / should_notify with EVENT_IDX
//   BM_SplitRoundTripVirtual     through DriverQueue / DeviceQueue from the factories
//   BM_PackedRoundTripVirtual    the packed ring, same path (skipped while it does not build)
//
// Target: <= 50 ns per split round trip in the release preset.
#include <benchmark/benchmark.h>

#include <memory>

#include "vdma/dma/dma_ops.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/split_device_queue.h"
#include "vdma/virtio/split_driver_queue.h"

namespace vdma {
namespace {

constexpr uint64_t kRingWindow = 4 << 20;
constexpr Gpa kData{16 << 20};

struct World {
  std::unique_ptr<GuestMemory> mem;
  std::unique_ptr<IdentityDmaOps> dma;
  RegionTable table;
};

bool make_world(World& w, benchmark::State& state) {
  auto mem = GuestMemory::create(
      {{Gpa{0}, kRingWindow, MemAttr::kShared, "rings"}, {kData, 1 << 20, MemAttr::kShared, "data"}});
  if (!mem) {
    state.SkipWithError(mem.error().to_string().c_str());
    return false;
  }
  w.mem = std::move(mem).value();
  w.dma = std::make_unique<IdentityDmaOps>(*w.mem, AddrRange<Gpa>{Gpa{0}, kRingWindow});
  w.table = RegionTable::bypass(*w.mem);
  return true;
}

const DriverSegment kSegment[] = {{.addr = kData, .len = 512, .type = BufferType::kDeviceWritable}};

// Drv and Dev are either the concrete split classes or the interfaces.
template <class Drv, class Dev, bool kNotify>
void round_trips(benchmark::State& state, Drv& drv, Dev& dev) {
  DescriptorChain chain;
  uint64_t cookie = 0;
  for (auto _ : state) {
    if (!drv.add(kSegment, ++cookie).has_value()) [[unlikely]] {
      state.SkipWithError("add failed");
      break;
    }
    if constexpr (kNotify) benchmark::DoNotOptimize(drv.kick_prepare());
    auto got = dev.pop(chain);
    if (!got.has_value() || !*got || chain.error) [[unlikely]] {
      state.SkipWithError("pop failed");
      break;
    }
    if (!dev.push_used(chain, 512).has_value()) [[unlikely]] {
      state.SkipWithError("push_used failed");
      break;
    }
    if constexpr (kNotify) benchmark::DoNotOptimize(dev.should_notify());
    auto used = drv.get_used();
    if (!used.has_value() || !used->has_value() || (*used)->cookie != cookie) [[unlikely]] {
      state.SkipWithError("get_used failed");
      break;
    }
    benchmark::DoNotOptimize((*used)->len);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

template <bool kNotify>
void BM_SplitRoundTripImpl(benchmark::State& state) {
  World w;
  if (!make_world(w, state)) return;
  const QueueConfig cfg{.size = 256,
                        .features = feature_bit(kFeatureVersion1) | (kNotify ? feature_bit(kFeatureEventIdx) : 0)};
  auto drv = SplitDriverQueue::create(*w.dma, cfg);
  if (!drv) return state.SkipWithError(drv.error().to_string().c_str());
  auto dev = SplitDeviceQueue::create(w.table, cfg, (*drv)->ring_addresses());
  if (!dev) return state.SkipWithError(dev.error().to_string().c_str());
  round_trips<SplitDriverQueue, SplitDeviceQueue, kNotify>(state, **drv, **dev);
}

void BM_SplitRoundTrip(benchmark::State& state) { BM_SplitRoundTripImpl<false>(state); }
void BM_SplitRoundTripNotify(benchmark::State& state) { BM_SplitRoundTripImpl<true>(state); }

void virtual_round_trips(benchmark::State& state, RingFormat format) {
  World w;
  if (!make_world(w, state)) return;
  const QueueConfig cfg{.size = 256, .features = feature_bit(kFeatureVersion1)};
  auto drv = make_driver_queue(format, *w.dma, cfg);
  if (!drv) return state.SkipWithError(drv.error().to_string().c_str());
  auto dev = make_device_queue(format, w.table, cfg, (*drv)->ring_addresses());
  if (!dev) return state.SkipWithError(dev.error().to_string().c_str());
  round_trips<DriverQueue, DeviceQueue, false>(state, **drv, **dev);
}

void BM_SplitRoundTripVirtual(benchmark::State& state) { virtual_round_trips(state, RingFormat::kSplit); }
void BM_PackedRoundTripVirtual(benchmark::State& state) { virtual_round_trips(state, RingFormat::kPacked); }

BENCHMARK(BM_SplitRoundTrip);
BENCHMARK(BM_SplitRoundTripNotify);
BENCHMARK(BM_SplitRoundTripVirtual);
BENCHMARK(BM_PackedRoundTripVirtual);

}  // namespace
}  // namespace vdma

BENCHMARK_MAIN();
