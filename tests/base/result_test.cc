#include "vdma/base/result.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <type_traits>

#include "result_matchers.h"
#include "vdma/base/address.h"

namespace vdma {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace vdma::testing;

Result<int> parse_positive(int v) {
  if (v <= 0) return make_error(BaseErrc::kInvalidArgument, "value {} is not positive", v);
  return v;
}

Result<int> doubled(int v) {
  int x = VDMA_TRY(parse_positive(v));
  return 2 * x;
}

Result<void> check_small(int v) {
  if (v > 10) return make_error(BaseErrc::kInvalidArgument, "value {} > 10", v);
  return ok();
}

Result<int> checked_twice(int v) {
  VDMA_TRY(check_small(v));
  return v;
}

TEST(Result, HoldsValue) {
  Result<int> r = 7;
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(static_cast<bool>(r));
  EXPECT_EQ(*r, 7);
  EXPECT_EQ(r.value(), 7);
  EXPECT_THAT(r, IsOk());
  EXPECT_THAT(r, HasValue(7));
}

TEST(Result, HoldsErrorWithDomainCodeAndMessage) {
  Result<int> r = parse_positive(-3);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().is(BaseErrc::kInvalidArgument));
  EXPECT_FALSE(r.error().is(BaseErrc::kOverflow));
  EXPECT_EQ(r.error().domain(), "base");
  EXPECT_EQ(r.error().code_name(), "invalid_argument");
  EXPECT_EQ(r.error().message(), "value -3 is not positive");
  EXPECT_EQ(r.error().to_string(), "base.invalid_argument: value -3 is not positive");
  EXPECT_THAT(r, IsError(BaseErrc::kInvalidArgument));
  EXPECT_THAT(r, IsErrorWith(BaseErrc::kInvalidArgument, HasSubstr("-3")));
  EXPECT_THAT(r, Not(IsOk()));
}

TEST(Result, TryPropagatesErrorAndUnwrapsValue) {
  EXPECT_THAT(doubled(4), HasValue(8));
  EXPECT_THAT(doubled(0), IsErrorWith(BaseErrc::kInvalidArgument, "value 0 is not positive"));
  EXPECT_THAT(checked_twice(3), HasValue(3));
  EXPECT_THAT(checked_twice(11), IsErrorWith(BaseErrc::kInvalidArgument, "value 11 > 10"));
}

TEST(Result, AndThenTransformOrElse) {
  auto r = parse_positive(5).and_then([](int v) { return parse_positive(v - 10); });
  EXPECT_THAT(r, IsErrorWith(BaseErrc::kInvalidArgument, "value -5 is not positive"));
  auto t = parse_positive(5).transform([](int v) { return std::to_string(v); });
  EXPECT_THAT(t, HasValue(std::string("5")));
  auto recovered = parse_positive(-1).or_else([](Error) -> Result<int> { return 42; });
  EXPECT_THAT(recovered, HasValue(42));
  EXPECT_EQ(parse_positive(-1).value_or(9), 9);
  EXPECT_EQ(parse_positive(3).value_or(9), 3);
  auto relabeled = parse_positive(-1).transform_error([](Error e) { return std::move(e).with_context("field x"); });
  EXPECT_THAT(relabeled, IsErrorWith(BaseErrc::kInvalidArgument, "field x: value -1 is not positive"));
}

TEST(Result, MoveOnlyValues) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(3);
  ASSERT_THAT(r, IsOk());
  std::unique_ptr<int> p = std::move(r).value();
  EXPECT_EQ(*p, 3);
  Result<std::unique_ptr<int>> moved = std::move(r);
  EXPECT_TRUE(moved.has_value());
}

TEST(Result, CopyAndAssignKeepState) {
  Result<std::string> a = std::string("abc");
  Result<std::string> b = make_error(BaseErrc::kOverflow, "x");
  Result<std::string> c = a;
  EXPECT_THAT(c, HasValue(std::string("abc")));
  c = b;
  EXPECT_THAT(c, IsError(BaseErrc::kOverflow));
  c = a;
  EXPECT_THAT(c, HasValue(std::string("abc")));
}

// An Error converts to a Result of any type, as an error: a returned error,
// a moved-out one, an assigned one.
Result<std::string> first_error(Result<int> a, Result<void> b) {
  if (!a) return std::move(a).error();
  if (!b) return b.error();
  return std::string("both ok");
}

TEST(Result, ConvertsFromAnError) {
  EXPECT_THAT(first_error(parse_positive(-1), {}), IsError(BaseErrc::kInvalidArgument));
  EXPECT_THAT(first_error(1, Error(BaseErrc::kTimeout, "late")), IsError(BaseErrc::kTimeout));
  EXPECT_THAT(first_error(1, {}), HasValue(std::string("both ok")));
  Result<void> v;
  EXPECT_TRUE(v.has_value());
  v = Error(BaseErrc::kOverflow, "wrapped");
  ASSERT_THAT(v, IsError(BaseErrc::kOverflow));
  EXPECT_EQ(v.error().message(), "wrapped");
  Result<uint64_t> n = make_error(BaseErrc::kSystem, "errno {}", 5);
  ASSERT_THAT(n, IsError(BaseErrc::kSystem));
  EXPECT_EQ(n.error().message(), "errno 5");
  static_assert(std::is_convertible_v<Error, Result<int>>);
  static_assert(std::is_convertible_v<Error, Result<void>>);
  static_assert(!std::is_convertible_v<int, Result<void>>);
}

TEST(Result, VoidResult) {
  Result<void> good = ok();
  EXPECT_THAT(good, IsOk());
  Result<void> bad = check_small(99);
  EXPECT_THAT(bad, IsErrorWith(BaseErrc::kInvalidArgument, "value 99 > 10"));
  auto chained = good.and_then([] { return check_small(50); });
  EXPECT_THAT(chained, IsError(BaseErrc::kInvalidArgument));
}

TEST(ResultDeathTest, ValueOnErrorAborts) {
  Result<int> r = parse_positive(-1);
  EXPECT_DEATH((void)r.value(), "Result::value\\(\\) on an error");
}

TEST(SystemError, NamesErrno) {
  Error e = system_error("open /nope", 2);
  EXPECT_TRUE(e.is(BaseErrc::kSystem));
  EXPECT_THAT(e.message(), HasSubstr("open /nope"));
  EXPECT_THAT(e.message(), HasSubstr("errno 2"));
}

}  // namespace
}  // namespace vdma
