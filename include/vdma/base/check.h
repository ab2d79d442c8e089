// Assertions.
//
//   VDMA_CHECK(cond) << never used; it is a plain macro:
//   VDMA_CHECK(idx < size, "index out of range");
//
// VDMA_CHECK guards memory safety and stays on in every build type (the
// `release` preset keeps it). It is for invariants that our own code
// maintains; it is never the way to reject hostile input, which gets a
// Result error instead. VDMA_DCHECK is compiled only in Debug builds.
#pragma once

namespace vdma::detail {
[[noreturn]] void check_failed(const char* expr, const char* msg, const char* file, int line) noexcept;
}  // namespace vdma::detail

#define VDMA_CHECK(cond, msg)                                            \
  do {                                                                   \
    if (__builtin_expect(!(cond), 0)) {                                  \
      ::vdma::detail::check_failed(#cond, (msg), __FILE__, __LINE__);   \
    }                                                                    \
  } while (0)

#if defined(VDMA_DEBUG_CHECKS)
#define VDMA_DCHECK(cond, msg) VDMA_CHECK(cond, msg)
#else
#define VDMA_DCHECK(cond, msg) \
  do {                         \
    (void)sizeof(cond);        \
  } while (0)
#endif
