// vdma-blk as a service: the socket it creates (--socket-mode,
// --socket-group), inherited sockets (--fd and systemd socket activation
// through $LISTEN_FDS / $LISTEN_PID) with their refusals, and readiness
// notification on $NOTIFY_SOCKET (READY=1 once it serves, STOPPING=1 on
// SIGTERM). Every case runs the real program.
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

namespace vdma::e2e {
namespace {

using vdma::testing::connect_once;
using vdma::testing::connect_to;
using vdma::testing::get_features;
using vdma::testing::unix_address;
using vdma::testing::unix_address_length;
using vdma::testing::wait_exit;
using ::testing::HasSubstr;
using ::testing::Not;

// A vdma-blk process. `fd3`, if set, becomes its fd 3 (what systemd passes);
// `fd4` its fd 4;
// `keep_fd` is inherited under its own number; `env` is added to (or, for
// an empty value, removed from) its environment. stdout and stderr go to
// files in `dir`.
struct Spawned {
  pid_t pid = -1;
  std::string out_path;
  std::string err_path;
};

struct SpawnOptions {
  std::vector<std::string> args;
  std::map<std::string, std::string> env;
  int fd3 = -1;
  int fd4 = -1;  // becomes fd 4 (a second activated socket)
  int keep_fd = -1;
  bool listen_pid_is_child = false;  // LISTEN_PID=<the child's pid>
};

Spawned spawn(const ScratchDir& dir, const SpawnOptions& o, const std::string& tag = "run") {
  Spawned s{-1, dir.file(tag + ".out"), dir.file(tag + ".err")};
  const std::string bin = vdma_blk_binary();
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(bin.c_str()));
  for (const auto& a : o.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  s.pid = ::fork();
  if (s.pid == 0) {
    const int in = ::open("/dev/null", O_RDONLY);
    const int out = ::open(s.out_path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    const int err = ::open(s.err_path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    if (in < 0 || out < 0 || err < 0) ::_exit(127);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    for (const char* v : {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"}) ::unsetenv(v);
    for (const auto& [k, v] : o.env) {
      if (v.empty()) ::unsetenv(k.c_str());
      else ::setenv(k.c_str(), v.c_str(), 1);
    }
    if (o.listen_pid_is_child) ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    if (o.fd3 >= 0) {
      if (o.fd3 != 3 && ::dup2(o.fd3, 3) != 3) ::_exit(127);
      ::fcntl(3, F_SETFD, 0);
    }
    if (o.fd4 >= 0) {
      if (::dup2(o.fd4, 4) != 4) ::_exit(127);
      ::fcntl(4, F_SETFD, 0);
    }
    if (o.keep_fd >= 0) ::fcntl(o.keep_fd, F_SETFD, 0);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return s;
}

struct Finished {
  int status;
  std::string err;
};

Finished run_to_exit(const ScratchDir& dir, const SpawnOptions& o) {
  const Spawned s = spawn(dir, o);
  const int status = wait_exit(s.pid);
  return {status, slurp(s.err_path)};
}

// A unix stream socket bound to `path`, listening unless `listen` is false.
int bound_socket(const std::string& path, bool listen = true) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const sockaddr_un addr = unix_address(path);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), unix_address_length(path)) != 0) std::abort();
  if (listen && ::listen(fd, 4) != 0) std::abort();
  return fd;
}

constexpr uint64_t kAccessPlatform = uint64_t{1} << 33;

// A datagram socket standing in for systemd's notification socket.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const sockaddr_un addr = unix_address(path_);
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), unix_address_length(path_)) != 0) std::abort();
  }
  ~NotifySocket() { ::close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }

  // The next datagram, or nullopt after `seconds` without one.
  std::optional<std::string> receive(int seconds = 20) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, seconds * 1000) <= 0) return std::nullopt;
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n < 0) return std::nullopt;
    return std::string(buf, static_cast<size_t>(n));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// A group this process may give a file it owns: as root any group other
// than its own; otherwise one of its supplementary groups.
std::optional<gid_t> another_group() {
  const gid_t own = ::getegid();
  if (::geteuid() == 0) {
    for (const char* name : {"nogroup", "daemon", "users", "adm"}) {
      if (const group* g = ::getgrnam(name); g != nullptr && g->gr_gid != own) return g->gr_gid;
    }
    return own + 4242;  // no such group in /etc/group, but root may chown to any gid
  }
  std::vector<gid_t> groups(256);
  const int n = ::getgroups(static_cast<int>(groups.size()), groups.data());
  for (int i = 0; i < n; ++i) {
    if (groups[static_cast<size_t>(i)] != own) return groups[static_cast<size_t>(i)];
  }
  return std::nullopt;
}

TEST(VdmaBlkService, HelpDescribesTheServiceOptions) {
  const ScratchDir dir;
  const ProgramRun r = run_program(dir, vdma_blk_binary(), {"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* text : {"--socket-mode", "--socket-group", "--fd", "$LISTEN_FDS", "$LISTEN_PID"}) {
    EXPECT_THAT(r.out, HasSubstr(text));
  }
}

TEST(VdmaBlkService, SocketModeAndGroupHoldOnceTheSocketAcceptsConnections) {
  const ScratchDir dir;
  const std::string sock = dir.file("sock");
  const std::optional<gid_t> gid = another_group();
  if (!gid) GTEST_SKIP() << "not root and in no supplementary group: no other group to give the socket";
  const group* named = ::getgrgid(*gid);
  // A name when the group has one (the usual case), else the number.
  const std::string group_arg = named != nullptr ? named->gr_name : std::to_string(*gid);
  const Spawned s = spawn(dir, {.args = {"--socket-path=" + sock, "--blk-file=null:1M", "--socket-mode=0660",
                                         "--socket-group=" + group_arg}});
  const int fd = connect_to(sock);
  ASSERT_GE(fd, 0) << slurp(s.err_path);
  struct stat st {};
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, *gid);
  EXPECT_EQ(st.st_uid, ::geteuid());
  EXPECT_NE(get_features(fd), 0u);
  ::close(fd);
  ::kill(s.pid, SIGTERM);
  EXPECT_EQ(wait_exit(s.pid), 0);
  EXPECT_NE(::stat(sock.c_str(), &st), 0) << "socket path left behind";
}

TEST(VdmaBlkService, SocketModeByNumberAndTheDefaultFollowsTheUmask) {
  const ScratchDir dir;
  const std::string sock = dir.file("sock");
  // A numeric group (our own) and a mode that only the owner may use.
  const Spawned s = spawn(dir, {.args = {"--socket-path=" + sock, "--blk-file=null:1M", "--socket-mode=600",
                                         "--socket-group=" + std::to_string(::getegid())}});
  int fd = connect_to(sock);
  ASSERT_GE(fd, 0) << slurp(s.err_path);
  struct stat st {};
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_gid, ::getegid());
  ::close(fd);
  ::kill(s.pid, SIGTERM);
  EXPECT_EQ(wait_exit(s.pid), 0);

  // Without --socket-mode: 0777 less the umask vdma-blk inherits (0022 here).
  const mode_t old = ::umask(0022);
  const Spawned d = spawn(dir, {.args = {"--socket-path=" + sock, "--blk-file=null:1M"}}, "default");
  ::umask(old);
  fd = connect_to(sock);
  ASSERT_GE(fd, 0) << slurp(d.err_path);
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ::close(fd);
  ::kill(d.pid, SIGTERM);
  EXPECT_EQ(wait_exit(d.pid), 0);
}

// Usage errors (exit 2), each with its message, and no socket left behind.
TEST(VdmaBlkService, BadSocketModeOrGroupIsAUsageError) {
  const ScratchDir dir;
  const std::string sock = dir.file("sock");
  struct Case {
    std::string arg;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"--socket-mode=0999", "vdma-blk: --socket-mode 0999: not an octal mode from 0 to 0777 (e.g. 0660) (see --help)\n"},
      {"--socket-mode=1777", "vdma-blk: --socket-mode 1777: not an octal mode from 0 to 0777 (e.g. 0660) (see --help)\n"},
      {"--socket-mode=rw-rw----",
       "vdma-blk: --socket-mode rw-rw----: not an octal mode from 0 to 0777 (e.g. 0660) (see --help)\n"},
      {"--socket-mode=00660", "vdma-blk: --socket-mode 00660: not an octal mode from 0 to 0777 (e.g. 0660) (see --help)\n"},
      {"--socket-group=vdma-no-such-group", "vdma-blk: --socket-group vdma-no-such-group: no such group (see --help)\n"},
  };
  for (const Case& c : cases) {
    const Finished r = run_to_exit(dir, {.args = {"--socket-path=" + sock, "--blk-file=null:1M", c.arg}});
    EXPECT_EQ(r.status, 2) << c.arg;
    EXPECT_EQ(r.err, c.message) << c.arg;
    struct stat st {};
    EXPECT_NE(::stat(sock.c_str(), &st), 0) << c.arg << ": left a socket behind";
  }
  // They shape the socket vdma-blk creates, so they need --socket-path.
  for (const char* arg : {"--socket-mode=0660", "--socket-group=0"}) {
    const Finished r = run_to_exit(dir, {.args = {"--fd=0", "--blk-file=null:1M", arg}});
    EXPECT_EQ(r.status, 2) << arg;
    EXPECT_THAT(r.err, HasSubstr("requires --socket-path")) << arg;
  }
}

TEST(VdmaBlkService, InheritedListeningSocketIsAcceptedOnAgainAndAgain) {
  const ScratchDir dir;
  const std::string sock = dir.file("sock");
  const int listener = bound_socket(sock);
  const Spawned s = spawn(dir, {.args = {"--fd=" + std::to_string(listener), "--blk-file=null:1M"},
                                .keep_fd = listener});
  ::close(listener);  // vdma-blk holds its copy
  for (int i = 0; i < 2; ++i) {
    const int fd = connect_to(sock);
    ASSERT_GE(fd, 0);
    EXPECT_NE(get_features(fd) & kAccessPlatform, 0u) << "front-end " << i << ": " << slurp(s.err_path);
    ::close(fd);
  }
  ::kill(s.pid, SIGTERM);
  EXPECT_EQ(wait_exit(s.pid), 0);
  // The socket was not vdma-blk's to create, so not its to remove.
  struct stat st {};
  EXPECT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_THAT(slurp(s.err_path), HasSubstr("listening on --fd " + std::to_string(listener)));
}

// Anything but a listening or connected unix stream socket is refused at
// start, naming the fd and what is wrong with it (exit 2, a usage error).
TEST(VdmaBlkService, InheritedFdThatCannotServeIsRefused) {
  const ScratchDir dir;
  struct Case {
    std::string name;
    int fd;
    std::string message;
  };
  const int file = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const int dgram = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  const int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in loopback{};
  loopback.sin_family = AF_INET;
  loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(tcp, reinterpret_cast<const sockaddr*>(&loopback), sizeof(loopback)), 0);
  ASSERT_EQ(::listen(tcp, 1), 0);
  const int unbound = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int bound_only = bound_socket(dir.file("bound"), /*listen=*/false);
  const std::vector<Case> cases = {
      {"/dev/null", file, "not a socket"},
      {"unix datagram", dgram, "not a unix stream socket (AF_UNIX, SOCK_STREAM)"},
      {"listening tcp", tcp, "not a unix stream socket (AF_UNIX, SOCK_STREAM)"},
      {"unbound unix stream", unbound, "a unix stream socket that neither listens nor is connected"},
      {"bound, not listening", bound_only, "a unix stream socket that neither listens nor is connected"},
      {"closed", 900, "not an open file descriptor"},
  };
  for (const Case& c : cases) {
    const std::string fd = std::to_string(c.fd);
    const Finished r = run_to_exit(dir, {.args = {"--fd=" + fd, "--blk-file=null:1M"}, .keep_fd = c.name == "closed" ? -1 : c.fd});
    EXPECT_EQ(r.status, 2) << c.name;
    EXPECT_THAT(r.err, HasSubstr("vdma-blk: base.invalid_argument: --fd " + fd + ": " + c.message + "\n")) << c.name;
  }
  for (const int fd : {file, dgram, tcp, unbound, bound_only}) ::close(fd);
}

// systemd socket activation: with neither --socket-path nor --fd, the one
// socket of $LISTEN_FDS (fd 3) is served when $LISTEN_PID is this process.
TEST(VdmaBlkService, SocketActivationServesTheSocketOfListenFds) {
  const ScratchDir dir;
  const std::string sock = dir.file("sock");
  const int listener = bound_socket(sock);
  const Spawned s = spawn(dir, {.args = {"--blk-file=null:1M", "--iommu=off"},
                                .env = {{"LISTEN_FDS", "1"}},
                                .fd3 = listener,
                                .listen_pid_is_child = true});
  ::close(listener);
  const int fd = connect_to(sock);
  ASSERT_GE(fd, 0);
  const uint64_t features = get_features(fd);
  EXPECT_NE(features, 0u) << slurp(s.err_path);
  EXPECT_EQ(features & kAccessPlatform, 0u) << "--iommu=off";
  ::close(fd);
  ::kill(s.pid, SIGTERM);
  EXPECT_EQ(wait_exit(s.pid), 0);
  EXPECT_THAT(slurp(s.err_path), HasSubstr("listening on socket activation (LISTEN_FDS) fd 3"));
}

TEST(VdmaBlkService, SocketActivationForAnotherProcessOrOfTwoSocketsIsRefused) {
  const ScratchDir dir;
  const int listener = bound_socket(dir.file("sock"));
  // $LISTEN_PID names another process (the variables leaked from a parent):
  // they are not for vdma-blk, so it has no socket.
  Finished r = run_to_exit(dir, {.args = {"--blk-file=null:1M"},
                                 .env = {{"LISTEN_FDS", "1"}, {"LISTEN_PID", std::to_string(::getpid())}},
                                 .fd3 = listener});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err,
            "vdma-blk: one of --socket-path or --fd is required (or systemd socket activation: $LISTEN_FDS) "
            "(see --help)\n");
  r = run_to_exit(dir, {.args = {"--blk-file=null:1M"},
                        .env = {{"LISTEN_FDS", "2"}},
                        .fd3 = listener,
                        .fd4 = listener,
                        .listen_pid_is_child = true});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "vdma-blk: socket activation passed 2 sockets (LISTEN_FDS=2); vdma-blk serves one\n");
  // The activated fd is checked as --fd is.
  const int file = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  r = run_to_exit(dir, {.args = {"--blk-file=null:1M"}, .env = {{"LISTEN_FDS", "1"}}, .fd3 = file,
                        .listen_pid_is_child = true});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("socket activation (LISTEN_FDS) fd 3: not a socket\n"));
  ::close(file);
  ::close(listener);
}

// Type=notify: READY=1 arrives once the socket accepts front-ends (a single
// connect right after it succeeds), STOPPING=1 when SIGTERM starts the
// shutdown.
TEST(VdmaBlkService, ReadyIsSentOnceListeningAndStoppingOnSigterm) {
  const ScratchDir dir;
  const std::string sock = dir.file("sock");
  NotifySocket notify(dir.file("notify"));
  const Spawned s = spawn(dir, {.args = {"--socket-path=" + sock, "--blk-file=null:1M"},
                                .env = {{"NOTIFY_SOCKET", notify.path()}}});
  const std::optional<std::string> ready = notify.receive();
  ASSERT_TRUE(ready.has_value()) << slurp(s.err_path);
  EXPECT_EQ(*ready, "READY=1\nSTATUS=listening on " + sock);
  const int fd = connect_once(sock);
  ASSERT_GE(fd, 0) << "READY=1 before the socket listens";
  EXPECT_NE(get_features(fd), 0u);
  ::close(fd);
  ::kill(s.pid, SIGTERM);
  EXPECT_EQ(notify.receive(), std::optional<std::string>("STOPPING=1"));
  EXPECT_EQ(wait_exit(s.pid), 0);
  EXPECT_EQ(notify.receive(0), std::nullopt) << "one STOPPING=1 only";
}

// The abstract-namespace form of $NOTIFY_SOCKET ("@name"), with socket
// activation, as systemd runs the unit vdma-blk@.service.
TEST(VdmaBlkService, ReadyOnAnAbstractNotifySocketUnderSocketActivation) {
  const ScratchDir dir;
  const std::string sock = dir.file("sock");
  NotifySocket notify("@vdma-blk-test-notify-" + std::to_string(::getpid()));
  const int listener = bound_socket(sock);
  const Spawned s = spawn(dir, {.args = {"--blk-file=null:1M"},
                                .env = {{"LISTEN_FDS", "1"}, {"NOTIFY_SOCKET", notify.path()}},
                                .fd3 = listener,
                                .listen_pid_is_child = true});
  ::close(listener);
  const std::optional<std::string> ready = notify.receive();
  ASSERT_TRUE(ready.has_value()) << slurp(s.err_path);
  EXPECT_EQ(*ready, "READY=1\nSTATUS=listening on socket activation (LISTEN_FDS) fd 3");
  ::kill(s.pid, SIGTERM);
  EXPECT_EQ(notify.receive(), std::optional<std::string>("STOPPING=1"));
  EXPECT_EQ(wait_exit(s.pid), 0);
}

// Without $NOTIFY_SOCKET nothing is sent and nothing fails; a connected
// inherited socket is served once and READY=1 says so.
TEST(VdmaBlkService, ConnectedFdReportsReadyAndEndsWithItsFrontEnd) {
  const ScratchDir dir;
  NotifySocket notify(dir.file("notify"));
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  const Spawned s = spawn(dir, {.args = {"--fd=" + std::to_string(sv[1]), "--blk-file=null:1M"},
                                .env = {{"NOTIFY_SOCKET", notify.path()}},
                                .keep_fd = sv[1]});
  ::close(sv[1]);
  EXPECT_EQ(notify.receive(),
            std::optional<std::string>("READY=1\nSTATUS=serving the front-end connected to --fd " +
                                       std::to_string(sv[1])));
  EXPECT_NE(get_features(sv[0]), 0u);
  ::close(sv[0]);
  EXPECT_EQ(wait_exit(s.pid), 0);
  EXPECT_EQ(notify.receive(), std::optional<std::string>("STOPPING=1"));
  EXPECT_THAT(slurp(s.err_path), Not(HasSubstr("sd_notify")));
}

}  // namespace
}  // namespace vdma::e2e
