// Private: the test-only build switch VDMA_TEST_DROP_BARRIER (CMake cache
// variable, src/virtio/CMakeLists.txt) that removes one barrier from the
// driver queues' publish or consume path, so that the stress tests in
// tests/virtio/*_concurrency_test.cc can be seen to fail without it
// (scripts/check-barriers builds the tsan preset once per site and expects
// ThreadSanitizer to report the race). A normal build defines none of the
// macros and every site keeps its barrier.
//
//   site                   what is dropped
//   split-avail-publish    SplitDriverQueue::add: the release store of avail
//                          idx (relaxed) and, under ORDER_PLATFORM, the wmb before it
//   split-used-consume     SplitDriverQueue::get_used: the acquire load of
//                          used idx (relaxed) and, under ORDER_PLATFORM, the rmb after it
//   packed-avail-publish   PackedDriverQueue publish: the wmb and the release
//                          store of the head's flags (relaxed)
//   packed-used-consume    PackedDriverQueue::get_used: the acquire load of the
//                          descriptor flags (relaxed) and, under ORDER_PLATFORM, the rmb
#pragma once

#include <atomic>

namespace vdma::barrier_switch {

#if defined(VDMA_TEST_DROP_BARRIER_SPLIT_AVAIL_PUBLISH)
inline constexpr bool kDropSplitAvailPublish = true;
#else
inline constexpr bool kDropSplitAvailPublish = false;
#endif
#if defined(VDMA_TEST_DROP_BARRIER_SPLIT_USED_CONSUME)
inline constexpr bool kDropSplitUsedConsume = true;
#else
inline constexpr bool kDropSplitUsedConsume = false;
#endif
#if defined(VDMA_TEST_DROP_BARRIER_PACKED_AVAIL_PUBLISH)
inline constexpr bool kDropPackedAvailPublish = true;
#else
inline constexpr bool kDropPackedAvailPublish = false;
#endif
#if defined(VDMA_TEST_DROP_BARRIER_PACKED_USED_CONSUME)
inline constexpr bool kDropPackedUsedConsume = true;
#else
inline constexpr bool kDropPackedUsedConsume = false;
#endif

// The order of a publishing store / a consuming load at a site.
[[nodiscard]] constexpr std::memory_order publish_order(bool dropped) noexcept {
  return dropped ? std::memory_order_relaxed : std::memory_order_release;
}
[[nodiscard]] constexpr std::memory_order consume_order(bool dropped) noexcept {
  return dropped ? std::memory_order_relaxed : std::memory_order_acquire;
}

}  // namespace vdma::barrier_switch
