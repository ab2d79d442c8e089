// LatencyHistogram: a log-linear histogram of latencies in nanoseconds, so
// percentiles come from every completion, not from a sample.
//
//   LatencyHistogram h;
//   h.record(elapsed_ns);                 // per completion, no allocation
//   total.merge(h);                       // one histogram per queue thread, merged at the end
//   uint64_t p99 = total.percentile(99.0);
//
// Buckets: values below 2^kSubBits are exact; above, each power of two is cut
// into 2^kSubBits equal buckets, so a reported value is at most 1/128 (0.8%)
// above the true one. percentile() returns the highest value of the bucket
// that holds the requested rank (never below the true percentile), clamped
// to the largest value recorded.
//
// Thread safety: none; one histogram per thread, merged after the threads end.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace vdma::workload {

class LatencyHistogram {
 public:
  static constexpr unsigned kSubBits = 7;
  static constexpr uint64_t kSubCount = uint64_t{1} << kSubBits;
  // Exact buckets below kSubCount, then kSubCount per power of two up to 2^63.
  static constexpr size_t kBuckets = kSubCount + (64 - kSubBits) * kSubCount;

  void record(uint64_t ns) noexcept;
  void merge(const LatencyHistogram& other) noexcept;
  void reset() noexcept;

  [[nodiscard]] uint64_t count() const noexcept { return count_; }
  [[nodiscard]] uint64_t min() const noexcept { return count_ == 0 ? 0 : min_; }
  [[nodiscard]] uint64_t max() const noexcept { return max_; }
  [[nodiscard]] double mean() const noexcept;
  // p in [0, 100]; 0 with no samples. p = 0 gives min(), p = 100 max().
  [[nodiscard]] uint64_t percentile(double p) const noexcept;

  // Bucket arithmetic, public for tests.
  [[nodiscard]] static size_t bucket_of(uint64_t ns) noexcept;
  [[nodiscard]] static uint64_t bucket_low(size_t index) noexcept;
  [[nodiscard]] static uint64_t bucket_high(size_t index) noexcept;

 private:
  std::array<uint64_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
  // Sum in long double: 2^64 ns would take 584 years, but a sum over many
  // samples could still pass 2^64 in a long soak.
  long double sum_ = 0;
};

}  // namespace vdma::workload
