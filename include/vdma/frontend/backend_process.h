// BackendProcess: a vhost-user back-end program the front-end starts itself
// (vdma-blk, qemu-storage-daemon), and what a test needs to look at it.
//
//   auto be = VDMA_TRY(spawn_backend({"/usr/libexec/vdma-blk", "--socket-path", "/tmp/b.sock",
//                                     "--blk-file", "null:64M"}, "/tmp/b.sock", std::chrono::seconds(10)));
//   auto fe = VDMA_TRY(VhostUserFrontend::create(be.take_connection(), options));
//   auto names = VDMA_TRY(mapped_memfd_names(be.pid()));   // "vdma-swiotlb", ...
//   // ~BackendProcess: SIGTERM, then waitpid (SIGKILL after the grace time)
//
// spawn_backend forks and execs argv (argv[0] a path, or a name looked up
// in $PATH), then connects to socket_path every 10 ms until the back-end
// accepts. The child does not outlive the thread that spawned it: it gets
// SIGTERM when that thread ends (PR_SET_PDEATHSIG, set between fork and
// exec; a parent already gone by then makes the child exit at once), even
// when the parent was killed with SIGKILL. So spawn from a thread that
// lives as long as the back-end should (the main thread). The child runs
// in a process group of its own with no signal blocked, so a terminal's
// Ctrl-C reaches only the parent, which stops the back-end in order. That first connection is kept (take_connection()) because a
// back-end that serves one front-end at a time, as vdma-blk, would
// otherwise be busy with a closed probe.
// Errors of spawn_backend: BaseErrc::kInvalidArgument (empty argv),
// BaseErrc::kSystem (fork, pipe; exec failing in the child, with errno
// text: "cannot execute /x/vdma-blk: No such file or directory"),
// FrontendErrc::kBackendExited when the child ends first ("back-end
// vdma-blk exited with status 1 before accepting connections on /tmp/b.sock"
// or "... was killed by signal 9 ..."), BaseErrc::kTimeout (the child is
// stopped again).
//
// Lifetime: the object owns the child; destroying it (or stop()) sends
// SIGTERM to that pid only and reaps it. Move-only.
// Thread safety: none; one owner.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/base/unique_fd.h"

namespace vdma {

class BackendProcess {
 public:
  BackendProcess(BackendProcess&& o) noexcept;
  BackendProcess& operator=(BackendProcess&& o) noexcept;
  BackendProcess(const BackendProcess&) = delete;
  BackendProcess& operator=(const BackendProcess&) = delete;
  ~BackendProcess();

  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  [[nodiscard]] const std::filesystem::path& socket_path() const noexcept { return socket_path_; }
  // The connection that proved readiness; invalid after the first call.
  [[nodiscard]] UniqueFd take_connection() noexcept { return std::move(connection_); }

  // Without blocking: the waitpid status once the back-end ended (it is then
  // reaped, and stop() returns that status), nullopt while it runs.
  // Errors: BaseErrc::kSystem (waitpid).
  [[nodiscard]] Result<std::optional<int>> poll_exit();

  // SIGTERM, wait up to `grace`, then SIGKILL; returns the waitpid status.
  // A second call returns the first status. Errors: BaseErrc::kSystem (waitpid).
  [[nodiscard]] Result<int> stop(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  friend Result<BackendProcess> spawn_backend(std::vector<std::string> argv, std::filesystem::path socket_path,
                                              std::chrono::milliseconds timeout);
  BackendProcess(pid_t pid, std::filesystem::path socket_path) : pid_(pid), socket_path_(std::move(socket_path)) {}

  pid_t pid_ = -1;  // -1 once reaped
  int status_ = 0;  // waitpid status after stop()
  std::filesystem::path socket_path_;
  UniqueFd connection_;
};

[[nodiscard]] Result<BackendProcess> spawn_backend(std::vector<std::string> argv, std::filesystem::path socket_path,
                                                   std::chrono::milliseconds timeout = std::chrono::seconds(10));

// "exited with status 3", "was killed by signal 9 (SIGKILL)": a waitpid
// status in words.
[[nodiscard]] std::string describe_wait_status(int status);

// The memfd names (without the "memfd:" prefix and " (deleted)" suffix) of
// every mapping in /proc/<pid>/maps, one entry per mapping, in address
// order: what memory a process can reach. GuestMemory names its memfds
// "vdma-<region name>" ("vdma-ram", "vdma-swiotlb", ...).
// Errors: BaseErrc::kSystem when the maps file cannot be read.
[[nodiscard]] Result<std::vector<std::string>> mapped_memfd_names(pid_t pid);

}  // namespace vdma
