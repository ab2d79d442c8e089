#include "vdma/frontend/backend_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include "vdma/frontend/connect.h"
#include "vdma/frontend/errors.h"

namespace vdma {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(10);

}  // namespace

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* abbrev = sigabbrev_np(WTERMSIG(status));
    return abbrev != nullptr ? fmt::format("was killed by signal {} (SIG{})", WTERMSIG(status), abbrev)
                             : fmt::format("was killed by signal {}", WTERMSIG(status));
  }
  return fmt::format("changed state ({:#x})", status);
}

BackendProcess::BackendProcess(BackendProcess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      status_(o.status_),
      socket_path_(std::move(o.socket_path_)),
      connection_(std::move(o.connection_)) {}

BackendProcess& BackendProcess::operator=(BackendProcess&& o) noexcept {
  if (this != &o) {
    (void)stop();
    pid_ = std::exchange(o.pid_, -1);
    status_ = o.status_;
    socket_path_ = std::move(o.socket_path_);
    connection_ = std::move(o.connection_);
  }
  return *this;
}

BackendProcess::~BackendProcess() { (void)stop(); }

Result<std::optional<int>> BackendProcess::poll_exit() {
  if (pid_ < 0) return std::optional<int>(status_);
  int status = 0;
  pid_t r = 0;
  do {
    r = ::waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return system_error(fmt::format("waitpid {}", pid_), errno);
  if (r == 0) return std::optional<int>();
  pid_ = -1;
  status_ = status;
  return std::optional<int>(status);
}

Result<int> BackendProcess::stop(std::chrono::milliseconds grace) {
  connection_.reset();
  if (pid_ < 0) return status_;
  ::kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      status_ = status;
      return status;
    }
    if (r < 0 && errno != EINTR) {
      const int err = errno;
      pid_ = -1;
      return system_error("waitpid", err);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid_, SIGKILL);
      if (::waitpid(pid_, &status, 0) == pid_) status_ = status;
      pid_ = -1;
      return status_;
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

Result<BackendProcess> spawn_backend(std::vector<std::string> argv, std::filesystem::path socket_path,
                                     std::chrono::milliseconds timeout) {
  if (argv.empty()) return make_error(BaseErrc::kInvalidArgument, "spawn_backend: empty argv");
  // Everything the child needs is prepared before fork(): after it, only
  // async-signal-safe calls until exec.
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return system_error("pipe2", errno);
  UniqueFd exec_read(pipe_fds[0]);
  UniqueFd exec_write(pipe_fds[1]);

  const pid_t parent = ::getpid();
  sigset_t no_signals;
  sigemptyset(&no_signals);
  const pid_t pid = ::fork();
  if (pid < 0) return system_error("fork", errno);
  if (pid == 0) {
    // The back-end must not outlive the front-end that started it, however
    // that one ends (prctl(2) PR_SET_PDEATHSIG). A parent that died before
    // the prctl took effect left us reparented: then stop here.
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != parent) ::_exit(127);
    // Its own process group: a terminal's Ctrl-C goes to the front-end,
    // which stops the back-end in order. The parent's blocked signals are
    // not the back-end's business.
    ::setpgid(0, 0);
    ::sigprocmask(SIG_SETMASK, &no_signals, nullptr);
    ::execvp(args[0], args.data());
    // exec failed: tell the parent why through the close-on-exec pipe.
    const int err = errno;
    [[maybe_unused]] const ssize_t n = ::write(exec_write.get(), &err, sizeof err);
    ::_exit(127);
  }
  BackendProcess child(pid, socket_path);
  exec_write.reset();
  int exec_errno = 0;
  ssize_t n = 0;
  do {
    n = ::read(exec_read.get(), &exec_errno, sizeof exec_errno);  // EOF once exec succeeded
  } while (n < 0 && errno == EINTR);
  if (n == sizeof exec_errno) {
    (void)child.stop();
    return make_error(BaseErrc::kSystem, "cannot execute {}: {}", argv[0], std::strerror(exec_errno));
  }

  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      child.pid_ = -1;
      return make_error(FrontendErrc::kBackendExited, "back-end {} {} before accepting connections on {}", argv[0],
                        describe_wait_status(status), socket_path.native());
    }
    if (auto c = connect_unix_socket(socket_path)) {
      child.connection_ = std::move(*c);
      return child;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      (void)child.stop();
      return make_error(BaseErrc::kTimeout, "back-end {} did not accept connections on {} within {} ms", argv[0],
                        socket_path.native(), timeout.count());
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

Result<std::vector<std::string>> mapped_memfd_names(pid_t pid) {
  const std::string path = fmt::format("/proc/{}/maps", pid);
  std::ifstream in(path);
  if (!in) return system_error(fmt::format("open {}", path), errno);
  constexpr std::string_view kPrefix = "/memfd:";
  constexpr std::string_view kDeleted = " (deleted)";
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    const size_t at = line.find(kPrefix);
    if (at == std::string::npos) continue;
    std::string name = line.substr(at + kPrefix.size());
    if (name.size() >= kDeleted.size() && name.compare(name.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0) {
      name.resize(name.size() - kDeleted.size());
    }
    names.push_back(std::move(name));
  }
  return names;
}

}  // namespace vdma
