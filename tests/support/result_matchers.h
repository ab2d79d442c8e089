// gtest matchers for Result<T>.
//
//   EXPECT_THAT(mem->read(gpa, buf), IsOk());
//   EXPECT_THAT(checked_add(Gpa{~0ull}, 2), IsError(BaseErrc::kOverflow));
//   EXPECT_THAT(r, IsErrorWith(MemErrc::kNotMapped, HasSubstr("gpa:0x5000")));
//   EXPECT_THAT(r, HasValue(Eq(Gpa{0x1000})));
#pragma once

#include <gmock/gmock.h>

#include "vdma/base/result.h"

namespace vdma::testing {

MATCHER(IsOk, "is a Result holding a value") {
  if (arg.has_value()) return true;
  *result_listener << "holds error " << arg.error().to_string();
  return false;
}

MATCHER_P(HasValue, inner, "holds a value that matches") {
  if (!arg.has_value()) {
    *result_listener << "holds error " << arg.error().to_string();
    return false;
  }
  return ::testing::ExplainMatchResult(inner, *arg, result_listener);
}

MATCHER_P(IsError, code, "is an error " + std::string(ErrcTraits<std::remove_cv_t<decltype(code)>>::domain) + "." +
                             std::string(ErrcTraits<std::remove_cv_t<decltype(code)>>::name(code))) {
  if (arg.has_value()) {
    *result_listener << "holds a value";
    return false;
  }
  if (arg.error().is(code)) return true;
  *result_listener << "holds error " << arg.error().to_string();
  return false;
}

MATCHER_P2(IsErrorWith, code, msg_matcher,
           "is an error " + std::string(ErrcTraits<std::remove_cv_t<decltype(code)>>::domain) + "." +
               std::string(ErrcTraits<std::remove_cv_t<decltype(code)>>::name(code)) + " whose message " +
               ::testing::DescribeMatcher<std::string>(msg_matcher)) {
  if (arg.has_value()) {
    *result_listener << "holds a value";
    return false;
  }
  if (!arg.error().is(code)) {
    *result_listener << "holds error " << arg.error().to_string();
    return false;
  }
  return ::testing::ExplainMatchResult(msg_matcher, arg.error().message(), result_listener);
}

// For a bare Error (not a Result).
MATCHER_P(ErrorIs, code, "") { return arg.is(code); }

}  // namespace vdma::testing
