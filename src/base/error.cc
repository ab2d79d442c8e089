#include "vdma/base/error.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "vdma/base/check.h"

namespace vdma {

std::string Error::to_string() const { return fmt::format("{}.{}: {}", domain_, code_name(), message_); }

Error Error::with_context(std::string_view context) && {
  message_ = fmt::format("{}: {}", context, message_);
  return std::move(*this);
}

std::string_view ErrcTraits<BaseErrc>::name(BaseErrc e) {
  switch (e) {
    case BaseErrc::kOverflow: return "overflow";
    case BaseErrc::kInvalidArgument: return "invalid_argument";
    case BaseErrc::kSystem: return "system";
    case BaseErrc::kTimeout: return "timeout";
  }
  return "unknown";
}

Error system_error(std::string_view what, int err) {
  return Error(BaseErrc::kSystem, fmt::format("{}: {} (errno {})", what, std::strerror(err), err));
}

namespace detail {
void check_failed(const char* expr, const char* msg, const char* file, int line) noexcept {
  std::fprintf(stderr, "vdma: check failed at %s:%d: %s (%s)\n", file, line, msg, expr);
  std::fflush(stderr);
  std::abort();
}
}  // namespace detail

}  // namespace vdma
