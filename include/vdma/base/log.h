// Logging through spdlog.
//
//   vdma::log::init();                   // level from $VDMA_LOG (trace..off), default "info"
//   vdma::log::set_level("debug");       // from a --log-level flag; error names the bad value
//   spdlog::info("queue {} ready", q);
//
// Every program calls init() once at start; a command-line flag, when given,
// overrides the environment by calling set_level() after init().
#pragma once

#include <string_view>

#include <spdlog/spdlog.h>

#include "vdma/base/result.h"

namespace vdma::log {

inline constexpr std::string_view kEnvVar = "VDMA_LOG";

// Sets up the default logger (stderr, "[time] [level] msg") and applies
// $VDMA_LOG. A bad $VDMA_LOG value is reported on stderr and ignored.
void init();

// Parses "trace", "debug", "info", "warn", "error", "critical" or "off".
[[nodiscard]] Result<spdlog::level::level_enum> parse_level(std::string_view name);
[[nodiscard]] Result<void> set_level(std::string_view name);

}  // namespace vdma::log
