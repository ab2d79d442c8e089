#include "vdma/workload/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace vdma::workload {

size_t LatencyHistogram::bucket_of(uint64_t ns) noexcept {
  if (ns < kSubCount) return static_cast<size_t>(ns);
  // ns in [2^m, 2^(m+1)) with m >= kSubBits: shift it down to kSubBits + 1
  // significant bits; the top one is implied by the power of two.
  const unsigned m = 63 - static_cast<unsigned>(std::countl_zero(ns));
  const unsigned shift = m - kSubBits;
  const uint64_t sub = (ns >> shift) - kSubCount;  // 0 .. kSubCount-1
  return static_cast<size_t>(kSubCount + shift * kSubCount + sub);
}

uint64_t LatencyHistogram::bucket_low(size_t index) noexcept {
  if (index < kSubCount) return index;
  const uint64_t shift = (index - kSubCount) / kSubCount;
  const uint64_t sub = (index - kSubCount) % kSubCount;
  return (kSubCount + sub) << shift;
}

uint64_t LatencyHistogram::bucket_high(size_t index) noexcept {
  if (index < kSubCount) return index;
  const uint64_t shift = (index - kSubCount) / kSubCount;
  // The last bucket ends at 2^64 - 1; low + (width - 1) cannot wrap.
  return bucket_low(index) + ((uint64_t{1} << shift) - 1);
}

void LatencyHistogram::record(uint64_t ns) noexcept {
  ++buckets_[bucket_of(ns)];
  ++count_;
  min_ = std::min(min_, ns);
  max_ = std::max(max_, ns);
  sum_ += static_cast<long double>(ns);
}

void LatencyHistogram::merge(const LatencyHistogram& other) noexcept {
  for (size_t i = 0; i < kBuckets; ++i) buckets_[i] += other.buckets_[i];
  count_ += other.count_;
  min_ = std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  sum_ += other.sum_;
}

void LatencyHistogram::reset() noexcept { *this = LatencyHistogram{}; }

double LatencyHistogram::mean() const noexcept {
  return count_ == 0 ? 0.0 : static_cast<double>(sum_ / static_cast<long double>(count_));
}

uint64_t LatencyHistogram::percentile(double p) const noexcept {
  if (count_ == 0) return 0;
  if (p <= 0) return min();
  if (p >= 100) return max_;
  // The smallest rank r (1-based) with r >= p% of count.
  const auto rank = static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count_)));
  const uint64_t want = std::clamp<uint64_t>(rank, 1, count_);
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    seen += buckets_[i];
    if (seen >= want) return std::clamp(bucket_high(i), min(), max_);
  }
  return max_;
}

}  // namespace vdma::workload
