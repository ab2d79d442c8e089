#include <gtest/gtest.h>
#include "result_matchers.h"
#include "vdma/base/address.h"
using namespace vdma;
using namespace vdma::testing;
TEST(Placeholder, Builds) { EXPECT_THAT(checked_add(Gpa{1}, 2), HasValue(Gpa{3})); }
