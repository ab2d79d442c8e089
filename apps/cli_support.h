// Command-line conventions shared by vdma's programs.
//
// Exit codes: 0 success (also --help and --version), 1 a runtime failure
// (the disk cannot be opened, the back-end died, a check failed), 2 a usage
// error (an unknown option, a value out of range, a missing argument),
// found before any work starts. CLI11's own codes (105-109) never escape.
//
//   CLI::App app{"..."};
//   add_version_flag(app, "vdma-blk");
//   if (auto code = parse_command_line(app, argc, argv)) return *code;
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace vdma::apps {

inline constexpr int kExitRuntimeFailure = 1;
inline constexpr int kExitUsage = 2;

// --version prints "<program> <project version>" on stdout and exits 0.
inline void add_version_flag(CLI::App& app, const std::string& program) {
  app.set_version_flag("--version", program + " " VDMA_VERSION, "Print the version and exit");
}

// Parses the command line. nullopt: go on. Otherwise the program's exit
// code: 0 after --help / --version (printed on stdout), kExitUsage after a
// usage error (printed on stderr with a pointer to --help).
[[nodiscard]] inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
}

}  // namespace vdma::apps
