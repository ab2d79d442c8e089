// How many iterations a randomized model test runs.
//
// Its full count in an uninstrumented build (the release preset runs every
// test, so the full count runs in CI). Under AddressSanitizer or
// ThreadSanitizer (the dev and tsan presets, three to twenty times slower) a
// quarter of it: enough for the sanitizer to watch every code path the test
// reaches, at a cost CI can afford. VDMA_TEST_ITERATIONS=full in the
// environment runs the full count anyway.
#pragma once

#include <cstdlib>
#include <cstring>

namespace vdma::testing {

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define VDMA_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define VDMA_TEST_SANITIZED 1
#endif

inline bool sanitized_build() {
#ifdef VDMA_TEST_SANITIZED
  return true;
#else
  return false;
#endif
}

// `full` in an uninstrumented build or with VDMA_TEST_ITERATIONS=full; a
// quarter of it (at least 1) under a sanitizer.
inline int test_iterations(int full) {
  if (!sanitized_build()) return full;
  const char* env = std::getenv("VDMA_TEST_ITERATIONS");
  if (env != nullptr && std::strcmp(env, "full") == 0) return full;
  return full / 4 > 0 ? full / 4 : 1;
}

}  // namespace vdma::testing
