// The vdma-blk program itself: --print-capabilities, --help, argument
// errors, serving vhost-user GET_FEATURES over --socket-path and --fd,
// reconnecting, and a clean exit on SIGTERM.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "programs.h"

namespace {

using namespace vdma::testing;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

struct Child {
  pid_t pid = -1;
  int out = -1;  // stdout pipe
  int err = -1;  // stderr pipe
};

// Starts vdma-blk with `args`; `keep_fd` (if >= 0) is inherited as is.
Child spawn(const std::vector<std::string>& args, int keep_fd = -1) {
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) std::abort();
  const std::string bin = vdma_blk_binary();
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(bin.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    if (keep_fd >= 0) ::fcntl(keep_fd, F_SETFD, 0);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  return {pid, out[0], err[0]};
}

std::string drain(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) s.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return s;
}

struct RunResult {
  int status;
  std::string out;
  std::string err;
};

RunResult run(const std::vector<std::string>& args) {
  Child c = spawn(args);
  std::string out = drain(c.out);
  std::string err = drain(c.err);
  return {wait_exit(c.pid), out, err};
}

// A fresh directory for a socket path; removed (with the socket, if left)
// when the test ends.
class TempSocketPath {
 public:
  TempSocketPath() {
    char dir[] = "/tmp/vdma-blk-cli-XXXXXX";
    if (::mkdtemp(dir) == nullptr) std::abort();
    dir_ = dir;
    path_ = dir_ + "/sock";
  }
  ~TempSocketPath() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  TempSocketPath(const TempSocketPath&) = delete;
  TempSocketPath& operator=(const TempSocketPath&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string dir_;
  std::string path_;
};

constexpr uint64_t bit(unsigned b) { return uint64_t{1} << b; }

TEST(VdmaBlkCli, PrintCapabilities) {
  const RunResult r = run({"--print-capabilities"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto caps = nlohmann::json::parse(r.out);
  EXPECT_EQ(caps.at("type"), "block");
  EXPECT_EQ(caps.at("features"), nlohmann::json::array({"read-only", "blk-file"}));
  EXPECT_EQ(caps.size(), 2u);
}

TEST(VdmaBlkCli, HelpListsEveryOption) {
  const RunResult r = run({"--help"});
  ASSERT_EQ(r.status, 0);
  for (const char* opt : {"--socket-path", "--fd", "--print-capabilities", "--blk-file", "--read-only", "--direct",
                          "--num-queues", "--blk-size", "--seg-max", "--serial", "--poll", "--iothreads", "--iommu",
                          "--log-level"}) {
    EXPECT_THAT(r.out, HasSubstr(opt));
  }
}

TEST(VdmaBlkCli, VersionPrintsTheProjectVersion) {
  const RunResult r = run({"--version"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, MatchesRegex("vdma-blk [0-9]+\\.[0-9]+\\.[0-9]+\n"));
}

// Usage errors exit 2 (never CLI11's own 105-109); runtime failures exit 1.
TEST(VdmaBlkCli, SocketPathAndFdAreMutuallyExclusive) {
  const RunResult r = run({"--socket-path=/tmp/x.sock", "--fd=3", "--blk-file=null:1M"});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err + r.out, HasSubstr("excludes"));
}

TEST(VdmaBlkCli, MissingRequiredArguments) {
  RunResult r = run({"--blk-file=null:1M"});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("one of --socket-path or --fd is required"));
  r = run({"--socket-path=/tmp/vdma-never.sock"});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("--blk-file is required"));
}

TEST(VdmaBlkCli, BadValuesExitAtOnceWithAMessage) {
  const TempSocketPath tmp;
  const std::string& sock = tmp.path();
  struct Case {
    std::vector<std::string> args;
    const char* message;
    int status;  // 2: usage error; 1: runtime failure
  };
  const std::vector<Case> cases = {
      {{"--num-queues=0"}, "--num-queues", 2},
      {{"--num-queues=17"}, "--num-queues", 2},
      {{"--blk-size=1000"}, "--blk-size", 2},
      {{"--iommu=maybe"}, "--iommu", 2},
      {{"--iotlb-cache=sometimes"}, "--iotlb-cache", 2},
      {{"--fd=-1"}, "--fd", 2},
      {{"--log-level=loud"}, "loud", 2},
      {{"--poll=2000000"}, "--poll", 2},
      {{"--poll=soon"}, "--poll", 2},
      {{"--iothreads=17"}, "--iothreads", 2},
      {{"--iothreads=2"}, "--iothreads 2 is more than --num-queues 1", 2},
      {{"--num-queues=2", "--iothreads=3"}, "--iothreads 3 is more than --num-queues 2", 2},
      {{"--blk-file=null:12Q"}, "null:12Q", 2},
      {{"--blk-file=/nonexistent/disk.img"}, "/nonexistent/disk.img", 1},
      {{"--serial=123456789012345678901"}, "serial", 2},
      {{"--bogus"}, "--bogus", 2},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--socket-path=" + sock};
    if (c.args[0].rfind("--blk-file", 0) != 0) args.push_back("--blk-file=null:1M");
    args.insert(args.end(), c.args.begin(), c.args.end());
    const RunResult r = run(args);
    EXPECT_EQ(r.status, c.status) << c.args[0];
    EXPECT_THAT(r.err + r.out, HasSubstr(c.message)) << c.args[0];
    struct stat st {};
    EXPECT_NE(::stat(sock.c_str(), &st), 0) << c.args[0] << ": left a socket behind";
  }
}

// A second vdma-blk on an image another one serves is refused at start
// (runtime failure, status 1), naming the image; the first keeps serving.
TEST(VdmaBlkCli, ASecondWriterOnOneImageIsRefused) {
  const TempSocketPath tmp1;
  const TempSocketPath tmp2;
  char image[] = "/tmp/vdma-blk-lock-XXXXXX";
  const int ifd = ::mkstemp(image);
  ASSERT_GE(ifd, 0);
  ASSERT_EQ(::ftruncate(ifd, 1 << 20), 0);
  ::close(ifd);
  Child first = spawn({"--socket-path=" + tmp1.path(), std::string("--blk-file=") + image});
  const int fd = connect_to(tmp1.path());  // listening: the image is open and locked
  ASSERT_GE(fd, 0);
  const RunResult second = run({"--socket-path=" + tmp2.path(), std::string("--blk-file=") + image});
  EXPECT_EQ(second.status, 1);
  EXPECT_THAT(second.err, HasSubstr(std::string(image) + " is in use"));
  EXPECT_NE(get_features(fd), 0u);  // the first one still serves
  ::close(fd);
  ::kill(first.pid, SIGTERM);
  EXPECT_EQ(wait_exit(first.pid), 0);
  ::unlink(image);
}

TEST(VdmaBlkCli, PidfileIsWrittenOnceListeningAndRemovedAtExit) {
  const TempSocketPath tmp;
  const std::string pidfile = tmp.path() + ".pid";
  Child c = spawn({"--socket-path=" + tmp.path(), "--blk-file=null:1M", "--pidfile=" + pidfile});
  const int fd = connect_to(tmp.path());
  ASSERT_GE(fd, 0);
  std::string text;
  for (int i = 0; i < 200 && text.empty(); ++i) {  // written right after listen(): at most a moment later
    if (FILE* f = std::fopen(pidfile.c_str(), "r")) {
      char buf[32] = {};
      if (std::fgets(buf, sizeof buf, f) != nullptr) text = buf;
      std::fclose(f);
    }
    if (text.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(text, std::to_string(c.pid) + "\n");
  ::close(fd);
  ::kill(c.pid, SIGTERM);
  EXPECT_EQ(wait_exit(c.pid), 0);
  struct stat st {};
  EXPECT_NE(::stat(pidfile.c_str(), &st), 0) << "pidfile left behind";
}

TEST(VdmaBlkCli, ServesReconnectsAndExitsCleanlyOnSigterm) {
  const TempSocketPath tmp;
  const std::string& sock = tmp.path();
  Child c = spawn({"--socket-path=" + sock, "--blk-file=null:1M", "--num-queues=2"});
  int fd = connect_to(sock);
  ASSERT_GE(fd, 0);
  const uint64_t f = get_features(fd);
  EXPECT_NE(f & bit(33), 0u) << "ACCESS_PLATFORM";      // --iommu defaults to on
  EXPECT_NE(f & bit(32), 0u) << "VERSION_1";
  EXPECT_NE(f & bit(9), 0u) << "VIRTIO_BLK_F_FLUSH";
  EXPECT_NE(f & bit(13), 0u) << "VIRTIO_BLK_F_DISCARD";
  EXPECT_EQ(f & bit(5), 0u) << "VIRTIO_BLK_F_RO";
  ::close(fd);
  // The front-end went away; the next one is served.
  fd = connect_to(sock);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(get_features(fd), f);
  // SIGTERM while a front-end is connected.
  ::kill(c.pid, SIGTERM);
  EXPECT_EQ(wait_exit(c.pid), 0);
  ::close(fd);
  struct stat st {};
  EXPECT_NE(::stat(sock.c_str(), &st), 0) << "socket path not removed";
  const std::string err = drain(c.err);
  EXPECT_THAT(err, HasSubstr("shutting down"));
  drain(c.out);
}

TEST(VdmaBlkCli, Sigusr1LogsTheStatistics) {
  const TempSocketPath tmp;
  const std::string& sock = tmp.path();
  Child c = spawn({"--socket-path=" + sock, "--blk-file=null:1M", "--num-queues=2"});
  const int fd = connect_to(sock);
  ASSERT_GE(fd, 0);
  ASSERT_NE(get_features(fd), 0u);  // a session runs
  ::kill(c.pid, SIGUSR1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(c.pid, SIGTERM);
  EXPECT_EQ(wait_exit(c.pid), 0) << "SIGUSR1 must not end it";
  ::close(fd);
  const std::string err = drain(c.err);
  EXPECT_THAT(err, HasSubstr("vdma-blk stats: 1 session(s), front-end connected"));
  EXPECT_THAT(err, HasSubstr("vdma-blk stats: queue 0: requests=0 bytes=0 errors=0 in_flight=0"));
  EXPECT_THAT(err, HasSubstr("vdma-blk stats: queue 1: requests=0 bytes=0 errors=0 in_flight=0"));
  EXPECT_THAT(err, HasSubstr("vdma-blk stats: iotlb: hits=0 misses=0 invalidations=0"));
  drain(c.out);
}

TEST(VdmaBlkCli, SigtermWhileWaitingForAFrontEnd) {
  const TempSocketPath tmp;
  const std::string& sock = tmp.path();
  Child c = spawn({"--socket-path=" + sock, "--blk-file=null:1M"});
  const int fd = connect_to(sock);  // proves it listens
  ASSERT_GE(fd, 0);
  ::close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ::kill(c.pid, SIGTERM);
  EXPECT_EQ(wait_exit(c.pid), 0);
  struct stat st {};
  EXPECT_NE(::stat(sock.c_str(), &st), 0);
  drain(c.err);
  drain(c.out);
}

TEST(VdmaBlkCli, InheritedConnectedFdReadOnlyNoIommu) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Child c = spawn({"--fd=" + std::to_string(sv[1]), "--blk-file=null:1M", "--read-only", "--iommu=off"}, sv[1]);
  ::close(sv[1]);
  const uint64_t f = get_features(sv[0]);
  EXPECT_NE(f, 0u);
  EXPECT_EQ(f & bit(33), 0u) << "ACCESS_PLATFORM with --iommu=off";
  EXPECT_NE(f & bit(5), 0u) << "VIRTIO_BLK_F_RO";
  EXPECT_EQ(f & bit(13), 0u) << "DISCARD on a read-only disk";
  // A connected --fd is served once: hanging up ends the program.
  ::close(sv[0]);
  EXPECT_EQ(wait_exit(c.pid), 0);
  drain(c.err);
  drain(c.out);
}

}  // namespace
