// End-to-end test support: real back-end processes (vdma-blk,
// qemu-storage-daemon) on temporary disks, driven by the vhost-user
// front-end over real unix sockets.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "programs.h"
#include "result_matchers.h"
#include "vdma/blk/virtio_blk.h"
#include "vdma/blk_driver/blk_driver.h"
#include "vdma/frontend/backend_process.h"
#include "vdma/frontend/errors.h"
#include "vdma/frontend/vhost_user_frontend.h"

namespace vdma::e2e {

using vdma::testing::build_dir_program;
using vdma::testing::vdma_bench_binary;
using vdma::testing::vdma_blk_binary;

// A scratch directory removed with everything in it.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "vdma-e2e-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A sparse disk image of `size` bytes.
inline std::string make_image(const ScratchDir& dir, uint64_t size) {
  const std::string path = dir.file("disk.img");
  const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) std::abort();
  ::close(fd);
  return path;
}

inline std::vector<std::byte> read_image(const std::string& path, uint64_t offset, size_t len) {
  std::vector<std::byte> out(len);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) std::abort();
  const ssize_t n = ::pread(fd, out.data(), len, static_cast<off_t>(offset));
  ::close(fd);
  if (n != static_cast<ssize_t>(len)) out.clear();
  return out;
}

inline FrontendOptions frontend_options(DmaMode mode, uint32_t queues = 1) {
  FrontendOptions o;
  o.mode = mode;
  o.num_queues = queues;
  o.device_features = blk::driver_features();
  return o;
}

// Whether tests that need qemu-storage-daemon must run (scripts/test sets
// VDMA_REQUIRE_PEERS=1 after installing it) or may be skipped.
inline bool peers_required() {
  const char* v = std::getenv("VDMA_REQUIRE_PEERS");
  return v != nullptr && std::string(v) == "1";
}

inline std::string find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string p = path != nullptr ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    const size_t end = p.find(':', start);
    const std::string dir = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const std::string candidate = dir + "/" + name;
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return {};
}

struct ProgramRun {
  int exit_code = -1;  // -1: killed by a signal
  std::string out;
  std::string err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs `program args...` to completion with stdin from /dev/null; stdout and
// stderr go through files in `dir`, so any amount of output is fine.
inline ProgramRun run_program(const ScratchDir& dir, const std::string& program, const std::vector<std::string>& args) {
  const std::string out_path = dir.file("run.out");
  const std::string err_path = dir.file("run.err");
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(program.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int in = ::open("/dev/null", O_RDONLY);
    const int out = ::open(out_path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    const int err = ::open(err_path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    if (in < 0 || out < 0 || err < 0) ::_exit(127);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::execv(program.c_str(), argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ProgramRun r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  return r;
}

}  // namespace vdma::e2e
