// IOMMU benchmarks (release preset):
//   BM_IoasAutoMapUnmap4K    one "don't care" map of 4 KiB plus its unmap   target <= 250 ns
//   BM_PageTableTranslate    one IoPageTable walk                           target <= 25 ns
// and, for context, batched maps, huge-leaf walks and the nested domain.
//
//   build/<dir>/bench/iommu_bench --benchmark_filter=AutoMap
#include <benchmark/benchmark.h>

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "vdma/iommu/domain.h"
#include "vdma/iommu/io_address_space.h"
#include "vdma/iommu/io_page_table.h"
#include "vdma/iommu/nested.h"
#include "vdma/mem/guest_memory.h"

namespace vdma {
namespace {

constexpr uint64_t k4K = 4096;

// Leaves `holes` free 4 KiB holes between live mappings, so the free-range
// tree holds that many ranges.
void fragment(IoAddressSpace& ioas, int64_t holes) {
  std::vector<Iova> iovas;
  for (int64_t i = 0; i < 2 * holes; ++i) iovas.push_back(*ioas.map(Gpa{0x100000}, k4K, Access::kRead));
  for (int64_t i = 0; i < 2 * holes; i += 2) (void)ioas.unmap(iovas[static_cast<size_t>(i)], k4K);
}

// Args: {with a PagingDomain attached (0/1), free holes before the test}.
void BM_IoasAutoMapUnmap4K(benchmark::State& state) {
  auto ioas = IoAddressSpace::create();
  std::unique_ptr<PagingDomain> dom;
  if (state.range(0) != 0) dom = std::move(PagingDomain::create(*ioas)).value();
  fragment(*ioas, state.range(1));
  for (auto _ : state) {
    Result<Iova> iova = ioas->map(Gpa{0x200000}, k4K, Access::kReadWrite);
    Result<uint64_t> bytes = ioas->unmap(*iova, k4K);
    benchmark::DoNotOptimize(bytes);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_IoasAutoMapUnmap4K)->Args({0, 0})->Args({1, 0})->Args({1, 1000})->Args({1, 100000});

// 256 maps of 4 KiB, then their 256 unmaps: the steady state of a queue that
// keeps many buffers in flight. Items: map+unmap pairs.
void BM_IoasAutoMapBatch4K(benchmark::State& state) {
  auto ioas = IoAddressSpace::create();
  auto dom = std::move(PagingDomain::create(*ioas)).value();
  std::vector<Iova> iovas(256);
  for (auto _ : state) {
    for (Iova& i : iovas) i = *ioas->map(Gpa{0x200000}, k4K, Access::kReadWrite);
    for (Iova i : iovas) benchmark::DoNotOptimize(ioas->unmap(i, k4K));
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(iovas.size()));
}
BENCHMARK(BM_IoasAutoMapBatch4K);

// A table with `pages` 4 KiB leaves (outputs deliberately not 2 MiB aligned
// so nothing is promoted) or 2 MiB leaves, walked at pseudo-random IOVAs.
// Args: {mapped MiB, leaf size in KiB}.
void BM_PageTableTranslate(benchmark::State& state) {
  const uint64_t bytes = static_cast<uint64_t>(state.range(0)) << 20;
  const uint64_t leaf = static_cast<uint64_t>(state.range(1)) << 10;
  IoPageTable pt;
  const uint64_t out = leaf == k4K ? 0x4000'0000 + k4K : 0x4000'0000;
  if (!pt.map(Iova{0x1'0000'0000}, Gpa{out}, bytes, Access::kReadWrite)) state.SkipWithError("map failed");
  std::mt19937_64 rng(1);
  std::vector<Iova> probes(4096);
  for (Iova& p : probes) p = Iova{0x1'0000'0000 + (rng() % bytes)};
  size_t i = 0;
  for (auto _ : state) {
    Result<PageTranslation> t = pt.translate(probes[i], Access::kRead);
    benchmark::DoNotOptimize(t);
    i = (i + 1) & (probes.size() - 1);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PageTableTranslate)->Args({64, 4})->Args({1024, 4})->Args({1024, 2048});

// The nested domain: a TLB hit, and a full two-stage walk (TLB flushed
// every time).
void BM_NestedTranslate(benchmark::State& state) {
  auto mem = std::move(GuestMemory::create({{Gpa{0}, 16 << 20, MemAttr::kPrivate, "ram"}})).value();
  auto ioas = IoAddressSpace::create();
  auto s2 = std::move(PagingDomain::create(*ioas)).value();
  constexpr uint64_t kS2 = 0x4000'0000;
  if (!ioas->map(Gpa{0}, 8 << 20, Access::kReadWrite, Iova{kS2})) state.SkipWithError("map failed");
  // Stage 1: root at gpa 1 MiB, then one table per level, one 4 KiB leaf at iova 0x1000.
  auto put = [&](uint64_t gpa, uint64_t e) {
    std::byte raw[8];
    for (int b = 0; b < 8; ++b) raw[b] = std::byte{static_cast<uint8_t>(e >> (8 * b))};
    (void)mem->write(Gpa{gpa}, raw);
  };
  put(0x10'0000, pte::make_table(kS2 + 0x10'1000));
  put(0x10'1000, pte::make_table(kS2 + 0x10'2000));
  put(0x10'2000, pte::make_table(kS2 + 0x10'3000));
  put(0x10'3000 + 8, pte::make_leaf(kS2 + 0x40'0000, Access::kReadWrite));
  auto nested = std::move(NestedDomain::create(*s2, *mem, Iova{kS2 + 0x10'0000})).value();
  const bool flush = state.range(0) != 0;
  for (auto _ : state) {
    if (flush) nested->invalidate_all();
    Result<PageTranslation> t = nested->translate(Iova{0x1234}, Access::kRead);
    benchmark::DoNotOptimize(t);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_NestedTranslate)->Arg(0)->Arg(1);

}  // namespace
}  // namespace vdma

BENCHMARK_MAIN();
