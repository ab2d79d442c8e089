#include "vdma/base/log.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "result_matchers.h"

namespace vdma {
namespace {

using namespace vdma::testing;

TEST(Log, ParsesEveryLevelName) {
  EXPECT_THAT(log::parse_level("trace"), HasValue(spdlog::level::trace));
  EXPECT_THAT(log::parse_level("debug"), HasValue(spdlog::level::debug));
  EXPECT_THAT(log::parse_level("info"), HasValue(spdlog::level::info));
  EXPECT_THAT(log::parse_level("warn"), HasValue(spdlog::level::warn));
  EXPECT_THAT(log::parse_level("error"), HasValue(spdlog::level::err));
  EXPECT_THAT(log::parse_level("critical"), HasValue(spdlog::level::critical));
  EXPECT_THAT(log::parse_level("off"), HasValue(spdlog::level::off));
}

TEST(Log, RejectsUnknownLevelNamingIt) {
  EXPECT_THAT(log::parse_level("loud"), IsErrorWith(BaseErrc::kInvalidArgument, ::testing::HasSubstr("'loud'")));
  EXPECT_THAT(log::set_level(""), IsError(BaseErrc::kInvalidArgument));
}

TEST(Log, InitAppliesEnvironmentThenFlagOverrides) {
  ::setenv("VDMA_LOG", "warn", 1);
  log::init();
  EXPECT_EQ(spdlog::get_level(), spdlog::level::warn);
  ASSERT_THAT(log::set_level("debug"), IsOk());
  EXPECT_EQ(spdlog::get_level(), spdlog::level::debug);
  ::setenv("VDMA_LOG", "bogus", 1);
  log::init();  // a bad value is reported and ignored: default level
  EXPECT_EQ(spdlog::get_level(), spdlog::level::info);
  ::unsetenv("VDMA_LOG");
}

}  // namespace
}  // namespace vdma
