// DeviceIotlb and ring-cache costs (run from the `release` preset).
//
//   BM_LookupHitInSection/N      4 KiB hit, section already entered (target <= 15 ns)
//   BM_LookupHitWithSection/N    the same with section enter/exit per lookup
//   BM_TranslateHitInSection/N   DeviceMemory::translate inside a section
//   BM_TranslateHitTransient/N   DeviceMemory::translate with no section (pool slot)
//   BM_LookupWhileInvalidating   lookups (section per lookup) while another thread
//                                invalidates and re-inserts other entries; reports
//                                the uncontended and contended ns and their ratio
//   BM_RingCacheHit              epoch check + cached pointer (what a device queue does)
//   BM_RingIotlbLookup           the same ring range looked up in the IOTLB instead
//
// Arguments: the number of 4 KiB entries, and the access pattern: 0 random
// (a shuffled order: every lookup searches the table), 1 sequential (the next
// page each time), 2 the same page each time. Each reader remembers the entry
// it hit last and tries it and the next one before searching.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "vdma/iommu/device_iotlb.h"
#include "vdma/iommu/ring_cache.h"

namespace {

using namespace vdma;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kIovaBase = 0x100000000;

// Benchmarks set up with operations that cannot fail; if one does, say why.
template <class T>
void check(const Result<T>& r) {
  if (!r) {
    std::fprintf(stderr, "iotlb_bench: %s\n", r.error().to_string().c_str());
    std::abort();
  }
}

enum Pattern : int64_t { kRandom = 0, kSequential = 1, kSame = 2 };

struct Fixture {
  explicit Fixture(size_t entries, int64_t pattern = kRandom)
      : memory(entries * kPage), iotlb({.max_entries = entries + 64, .max_readers = 4}) {
    for (size_t i = 0; i < entries; ++i) {
      check(iotlb.insert(Iova(kIovaBase + i * kPage), kPage, FrontVa(0x7f0000000000 + i * kPage),
                         memory.data() + i * kPage, Access::kReadWrite));
    }
    order.resize(1024);
    std::mt19937 rng(7);
    for (size_t i = 0; i < order.size(); ++i) {
      const uint64_t page = pattern == kRandom ? rng() % entries : pattern == kSequential ? i % entries : 3;
      order[i] = kIovaBase + page * kPage;
    }
    reader = *iotlb.register_reader();
  }
  std::vector<std::byte> memory;
  DeviceIotlb iotlb;
  ReaderHandle reader;  // destroyed before iotlb
  std::vector<uint64_t> order;
};

void BM_LookupHitInSection(benchmark::State& state) {
  Fixture f(static_cast<size_t>(state.range(0)), state.range(1));
  IotlbLookup found;
  ReadSection section(f.reader);
  size_t i = 0;
  for (auto _ : state) {
    auto r = f.iotlb.lookup(section, Iova(f.order[i++ & 1023]), kPage, Access::kRead, found);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(found.fragments.data()->host);
  }
}
BENCHMARK(BM_LookupHitInSection)->ArgsProduct({{16, 256, 2048}, {kRandom, kSequential, kSame}});

void BM_LookupHitWithSection(benchmark::State& state) {
  Fixture f(static_cast<size_t>(state.range(0)), state.range(1));
  IotlbLookup found;
  size_t i = 0;
  for (auto _ : state) {
    ReadSection section(f.reader);
    auto r = f.iotlb.lookup(section, Iova(f.order[i++ & 1023]), kPage, Access::kRead, found);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(found.fragments.data()->host);
  }
}
BENCHMARK(BM_LookupHitWithSection)->ArgsProduct({{16, 256, 2048}, {kRandom, kSequential, kSame}});

void BM_TranslateHitInSection(benchmark::State& state) {
  Fixture f(static_cast<size_t>(state.range(0)));
  std::vector<Fragment> out;
  out.reserve(4);
  ReadSection section(f.reader);
  size_t i = 0;
  for (auto _ : state) {
    out.clear();
    auto r = f.iotlb.translate(DmaAddr(f.order[i++ & 1023]), kPage, Access::kRead, out);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(out.data()->host);
  }
}
BENCHMARK(BM_TranslateHitInSection)->Arg(256);

void BM_TranslateHitTransient(benchmark::State& state) {
  Fixture f(static_cast<size_t>(state.range(0)));
  std::vector<Fragment> out;
  out.reserve(4);
  size_t i = 0;
  for (auto _ : state) {
    out.clear();
    auto r = f.iotlb.translate(DmaAddr(f.order[i++ & 1023]), kPage, Access::kRead, out);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(out.data()->host);
  }
}
BENCHMARK(BM_TranslateHitTransient)->Arg(256);

// ns per lookup (section per lookup) over `n` lookups.
double timed_lookups(Fixture& f, IotlbLookup& found, size_t n) {
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; ++i) {
    ReadSection section(f.reader);
    auto r = f.iotlb.lookup(section, Iova(f.order[i & 1023]), kPage, Access::kRead, found);
    benchmark::DoNotOptimize(r);
  }
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
         static_cast<double>(n);
}

void BM_LookupWhileInvalidating(benchmark::State& state) {
  constexpr size_t kEntries = 256;
  constexpr size_t kBatch = 1 << 20;
  Fixture f(kEntries);
  IotlbLookup found;
  // The writer churns pages next to the looked-up ones, in the same table.
  const uint64_t churn_base = kIovaBase + (kEntries + 16) * kPage;
  std::vector<std::byte> churn_mem(8 * kPage);
  const double uncontended = timed_lookups(f, found, kBatch);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> writer_ops{0};
  std::thread writer([&] {
    for (uint64_t n = 0; !stop.load(std::memory_order_relaxed); ++n) {
      const uint64_t iova = churn_base + (n % 8) * kPage;
      check(f.iotlb.invalidate(Iova(iova), kPage));
      check(f.iotlb.insert(Iova(iova), kPage, FrontVa(iova), churn_mem.data() + (n % 8) * kPage, Access::kRead));
      writer_ops.fetch_add(2, std::memory_order_relaxed);
    }
  });
  double contended_total = 0;
  uint64_t batches = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    contended_total += timed_lookups(f, found, kBatch);
    ++batches;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stop.store(true);
  writer.join();
  const double contended = contended_total / static_cast<double>(batches);
  state.counters["uncontended_ns"] = uncontended;
  state.counters["contended_ns"] = contended;
  state.counters["slowdown"] = contended / uncontended;
  state.counters["writer_ops_per_s"] = static_cast<double>(writer_ops.load()) / seconds;
  state.counters["grace_periods"] = static_cast<double>(f.iotlb.stats().grace_periods);
}
BENCHMARK(BM_LookupWhileInvalidating)->Iterations(5)->Unit(benchmark::kMillisecond)->UseRealTime();

// A ring area as a device queue uses it: translated once, then per request
// one acquire load of the epoch, a compare, and the cached pointer.
void BM_RingCacheHit(benchmark::State& state) {
  Fixture f(256);
  IotlbQueueView view(f.iotlb);
  const std::atomic<uint64_t>* epoch = view.ring_epoch();
  uint64_t seen = epoch->load(std::memory_order_acquire);
  auto span = view.translate_ring(DmaAddr(kIovaBase + 5 * kPage), 1024, Access::kRead);
  check(span);
  const std::byte* ring = span->data();
  ReadSection section(f.reader);
  for (auto _ : state) {
    if (epoch->load(std::memory_order_acquire) != seen) {
      seen = epoch->load(std::memory_order_acquire);
      ring = view.translate_ring(DmaAddr(kIovaBase + 5 * kPage), 1024, Access::kRead)->data();
    }
    benchmark::DoNotOptimize(ring[64]);
  }
}
BENCHMARK(BM_RingCacheHit);

void BM_RingIotlbLookup(benchmark::State& state) {
  Fixture f(256);
  IotlbLookup found;
  ReadSection section(f.reader);
  for (auto _ : state) {
    auto r = f.iotlb.lookup(section, Iova(kIovaBase + 5 * kPage), 1024, Access::kRead, found);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(found.fragments.data()->host[64]);
  }
}
BENCHMARK(BM_RingIotlbLookup);

}  // namespace

BENCHMARK_MAIN();
