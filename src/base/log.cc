#include "vdma/base/log.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace vdma::log {

Result<spdlog::level::level_enum> parse_level(std::string_view name) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug}, {"info", spdlog::level::info},
      {"warn", spdlog::level::warn},   {"error", spdlog::level::err},   {"critical", spdlog::level::critical},
      {"off", spdlog::level::off},
  };
  for (const auto& [n, l] : kLevels) {
    if (n == name) return l;
  }
  return make_error(BaseErrc::kInvalidArgument,
                    "log level '{}' is not one of trace, debug, info, warn, error, critical, off", name);
}

Result<void> set_level(std::string_view name) {
  auto level = VDMA_TRY(parse_level(name));
  spdlog::set_level(level);
  return ok();
}

void init() {
  auto logger = spdlog::get("vdma");
  if (!logger) logger = spdlog::stderr_color_mt("vdma");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  spdlog::set_level(spdlog::level::info);
  if (const char* env = std::getenv(std::string(kEnvVar).c_str()); env != nullptr && *env != '\0') {
    if (auto r = set_level(env); !r) {
      std::fprintf(stderr, "vdma: ignoring $%s: %s\n", std::string(kEnvVar).c_str(), r.error().to_string().c_str());
    }
  }
}

}  // namespace vdma::log
