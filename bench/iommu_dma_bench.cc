// IOMMU DMA costs that a vIOMMU makes expensive (release preset):
//   BM_LazyRemap/{0,1,2}: map+unmap of a 4 KiB buffer in lazy mode.
//     0 = the same buffer every time (revival: the queued run comes back,
//     no new IOVA, no invalidation), 1 = a different buffer each time (a
//     new IOVA per map, and one invalidated run per unmap, as before
//     revival), 2 = the same buffer with revival turned off.
//     Counters: new_iovas and invalidated runs per map+unmap; behind a
//     vhost-user front-end each new IOVA is one IOTLB miss round trip
//     (~20 us) and the invalidations are batched INVALIDATE round trips.
//   BM_StrictChainUnmap/{0,1}/{us}: a virtio-blk chain (16 B header, 4 KiB
//     data, 1 B status) mapped and then unmapped in strict mode, 0 = one
//     unmap() per buffer, 1 = one unmap_batch(); the sink counts its calls
//     and spins `us` microseconds per call to stand for the INVALIDATE
//     round trip (0 = the CPU cost alone).
//
//   build/<dir>/bench/iommu_dma_bench --benchmark_filter=LazyRemap
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <memory>

#include "vdma/dma/iommu_dma_ops.h"

namespace vdma {
namespace {

constexpr uint64_t k4K = 4096;
constexpr uint64_t kRam = 0;
constexpr uint64_t kRamSize = 64 << 20;
constexpr uint64_t kShared = 64 << 20;

class CountingSink final : public InvalidationSink {
 public:
  explicit CountingSink(std::chrono::microseconds delay) : delay_(delay) {}
  Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
    calls.fetch_add(1, std::memory_order_relaxed);
    ranges_seen.fetch_add(ranges.size(), std::memory_order_relaxed);
    if (delay_.count() != 0) {
      const auto until = std::chrono::steady_clock::now() + delay_;
      while (std::chrono::steady_clock::now() < until) {
      }
    }
    return ok();
  }
  std::atomic<uint64_t> calls{0}, ranges_seen{0};

 private:
  const std::chrono::microseconds delay_;
};

struct World {
  World(InvalidationMode mode, bool revive, std::shared_ptr<InvalidationSink> sink) {
    mem = std::move(GuestMemory::create({{Gpa{kRam}, kRamSize, MemAttr::kPrivate, "ram"},
                                         {Gpa{kShared}, 4 << 20, MemAttr::kShared, "shared"}}))
              .value();
    ioas = IoAddressSpace::create();
    paging = std::move(PagingDomain::create(*ioas)).value();
    dom = std::move(IommuDmaDomain::create(*ioas, *paging,
                                           {.mode = mode, .sink = std::move(sink), .revive_lazy_unmaps = revive}))
              .value();
    auto coherent = std::move(CoherentPool::create(*mem, {Gpa{kShared}, 1 << 20})).value();
    ops = std::move(IommuDmaOps::create(*mem, dom, {.coherent = coherent})).value();
    ring = *ops->alloc_coherent(8192);  // a virtio device always has its ring mapped
  }
  ~World() {
    (void)ops->free_coherent(ring);
    (void)dom->flush();
  }
  std::unique_ptr<GuestMemory> mem;
  std::unique_ptr<IoAddressSpace> ioas;
  std::unique_ptr<PagingDomain> paging;
  std::shared_ptr<IommuDmaDomain> dom;
  std::unique_ptr<IommuDmaOps> ops;
  CoherentBuffer ring;
};

void BM_LazyRemap(benchmark::State& state) {
  const int64_t kind = state.range(0);
  auto sink = std::make_shared<CountingSink>(std::chrono::microseconds(0));
  World w(InvalidationMode::kLazy, kind != 2, sink);
  constexpr uint64_t kBuffers = 4096;  // distinct buffers for kind 1
  uint64_t i = 0;
  for (auto _ : state) {
    const Gpa buf{kRam + (1 << 20) + (kind == 1 ? (i++ % kBuffers) * k4K : 0)};
    Result<DmaAddr> d = w.ops->map(buf, k4K, DmaDirection::kFromDevice);
    Result<void> u = w.ops->unmap(*d, k4K, DmaDirection::kFromDevice);
    benchmark::DoNotOptimize(u);
  }
  const FlushQueueStats s = w.dom->flush_queue()->stats();
  const auto n = static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations());
  state.counters["new_iovas"] = (n - static_cast<double>(s.revived)) / n;
  state.counters["invalidated"] = static_cast<double>(s.runs_freed) / n;
  state.counters["sink_calls"] = static_cast<double>(sink->calls.load()) / n;
}
BENCHMARK(BM_LazyRemap)->Arg(0)->Arg(1)->Arg(2);

void BM_StrictChainUnmap(benchmark::State& state) {
  const bool batch = state.range(0) != 0;
  auto sink = std::make_shared<CountingSink>(std::chrono::microseconds(state.range(1)));
  World w(InvalidationMode::kStrict, false, sink);
  const Gpa hdr{kRam + (1 << 20)}, data{kRam + (2 << 20)}, status{kRam + (3 << 20) + 0x10};
  for (auto _ : state) {
    const DmaUnmapRequest chain[] = {{*w.ops->map(hdr, 16, DmaDirection::kToDevice), 16, DmaDirection::kToDevice},
                                     {*w.ops->map(data, k4K, DmaDirection::kFromDevice), k4K,
                                      DmaDirection::kFromDevice},
                                     {*w.ops->map(status, 1, DmaDirection::kFromDevice), 1, DmaDirection::kFromDevice}};
    if (batch) {
      benchmark::DoNotOptimize(w.ops->unmap_batch(chain));
    } else {
      for (const DmaUnmapRequest& q : chain) benchmark::DoNotOptimize(w.ops->unmap(q.addr, q.len, q.dir));
    }
  }
  const auto n = static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations());
  state.counters["sink_calls"] = static_cast<double>(sink->calls.load()) / n;
  state.counters["ranges"] = static_cast<double>(sink->ranges_seen.load()) / n;
}
BENCHMARK(BM_StrictChainUnmap)->ArgsProduct({{0, 1}, {0, 20}});

}  // namespace
}  // namespace vdma

BENCHMARK_MAIN();
