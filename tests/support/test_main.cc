#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Tests provoke many errors on purpose; keep their logs out of the way
  // unless VDMA_LOG asks for them.
  spdlog::set_level(std::getenv("VDMA_LOG") ? spdlog::level::debug : spdlog::level::critical);
  return RUN_ALL_TESTS();
}
