// vdma-blk: a vhost-user-blk back-end, following QEMU's "Backend program
// conventions" (docs/interop/vhost-user.rst) with the block capabilities of
// docs/interop/vhost-user.json.
//
//   vdma-blk --socket-path=/run/vdma-blk.sock --blk-file=disk.img [--read-only]
//   vdma-blk --fd=3 --blk-file=null:1G
//   vdma-blk --print-capabilities
//
// With --socket-path it listens, serves one front-end at a time and waits for
// the next one when a front-end disconnects (so QEMU can reconnect). With --fd
// it serves the connected socket it inherited (or accepts on it, if it is a
// listening socket). It never daemonizes. SIGTERM or SIGINT end it cleanly:
// the current session is shut down, its workers joined, the listening socket
// closed and the socket path it created removed; the exit status is 0.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "blk_backend_device.h"
#include "cli_support.h"
#include "vdma/base/log.h"
#include "vdma/blk/blk_device.h"
#include "vdma/vhost_user/backend_session.h"
#include "vdma/vhost_user/errors.h"

namespace {

using namespace vdma;
using vdma::UniqueFd;

struct Options {
  std::string socket_path;
  int fd = -1;
  bool print_capabilities = false;
  std::string blk_file;
  bool read_only = false;
  bool direct = false;
  uint32_t num_queues = 1;
  uint32_t blk_size = 512;
  uint32_t seg_max = 126;
  std::string serial = "vdma-blk";
  uint32_t poll_us = 0;
  std::string iotlb_cache = "per-request";
  std::string iommu = "on";
  bool order_platform = false;
  std::string log_level;
  std::string pidfile;
};

// The vhost-user.json "VHostUserBackendBlockFeature" values this program
// implements: --read-only and --blk-file.
void print_capabilities() {
  const nlohmann::json caps = {{"type", "block"}, {"features", {"read-only", "blk-file"}}};
  std::printf("%s\n", caps.dump().c_str());
}

// Shutdown on SIGTERM / SIGINT. The signals are blocked in every thread
// (before any is created) and taken by a watcher thread through a signalfd;
// it shuts the current connection down, which ends the session's run() at
// its next read, and wakes the accept loop.
class ShutdownWatcher {
 public:
  static Result<std::unique_ptr<ShutdownWatcher>> start() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return Unexpected(system_error("pthread_sigmask", errno));
    UniqueFd sfd(::signalfd(-1, &set, SFD_CLOEXEC));
    if (!sfd) return Unexpected(system_error("signalfd", errno));
    UniqueFd wake(::eventfd(0, EFD_CLOEXEC));
    UniqueFd quit(::eventfd(0, EFD_CLOEXEC));
    if (!wake || !quit) return Unexpected(system_error("eventfd", errno));
    std::unique_ptr<ShutdownWatcher> w(new ShutdownWatcher(std::move(sfd), std::move(wake), std::move(quit)));
    w->thread_ = std::thread([p = w.get()] { p->watch(); });
    return w;
  }
  ~ShutdownWatcher() {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(quit_.get(), &one, sizeof(one));
    thread_.join();
  }
  ShutdownWatcher(const ShutdownWatcher&) = delete;
  ShutdownWatcher& operator=(const ShutdownWatcher&) = delete;

  // Readable once a stop was requested (for poll in the accept loop).
  [[nodiscard]] int wake_fd() const noexcept { return wake_.get(); }
  [[nodiscard]] bool stopping() {
    std::lock_guard lock(mu_);
    return stopping_;
  }
  // Registers the connection being served (-1: none). False when a stop was
  // already requested: the caller must not start serving.
  [[nodiscard]] bool set_connection(int fd) {
    std::lock_guard lock(mu_);
    connection_ = fd;
    return !stopping_;
  }

 private:
  ShutdownWatcher(UniqueFd sfd, UniqueFd wake, UniqueFd quit)
      : signal_fd_(std::move(sfd)), wake_(std::move(wake)), quit_(std::move(quit)) {}

  void watch() {
    pollfd fds[2] = {{signal_fd_.get(), POLLIN, 0}, {quit_.get(), POLLIN, 0}};
    while (true) {
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        spdlog::error("vdma-blk: poll on the signal fd: {}", std::strerror(errno));
        return;
      }
      if ((fds[1].revents & POLLIN) != 0) return;
      if ((fds[0].revents & POLLIN) == 0) continue;
      signalfd_siginfo info{};
      if (::read(signal_fd_.get(), &info, sizeof(info)) != sizeof(info)) continue;
      spdlog::info("vdma-blk: {} received, shutting down", strsignal(static_cast<int>(info.ssi_signo)));
      {
        std::lock_guard lock(mu_);
        stopping_ = true;
        // The session reads from this socket; shutting it down makes that
        // read see end-of-file, so run() returns and the workers are joined
        // on the main thread. connection_ is a duplicate we own, never closed
        // while registered, so the number cannot have been reused.
        if (connection_ >= 0) ::shutdown(connection_, SHUT_RDWR);
      }
      const uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof(one));
    }
  }

  UniqueFd signal_fd_;
  UniqueFd wake_;
  UniqueFd quit_;
  std::thread thread_;
  std::mutex mu_;
  bool stopping_ = false;  // guarded by mu_
  int connection_ = -1;    // guarded by mu_
};

// Serves one connected front-end until it disconnects or a stop is requested.
void serve(UniqueFd conn, apps::BlkBackendDevice& device, blk::BlkDevice& blk, const vhost_user::BackendOptions& opt,
           ShutdownWatcher& watcher) {
  auto dup = UniqueFd::duplicate(conn.get());
  if (!dup) {
    spdlog::error("vdma-blk: {}", dup.error());
    return;
  }
  if (!watcher.set_connection(dup->get())) return;
  // A connection that closes before its first byte is not a front-end: it
  // is another vdma-blk checking whether this socket is alive (listen_on).
  // A stop request shuts the socket down, which ends this wait too.
  std::byte first{};
  ssize_t peeked = -1;
  do {
    peeked = ::recv(conn.get(), &first, 1, MSG_PEEK);
  } while (peeked < 0 && errno == EINTR);
  if (peeked == 0) {
    spdlog::debug("vdma-blk: a connection closed before sending anything (another instance probing the socket)");
    (void)watcher.set_connection(-1);
    return;
  }
  auto session = vhost_user::BackendSession::create(std::move(conn), device, opt);
  if (!session) {
    spdlog::error("vdma-blk: cannot start a session: {}", session.error());
  } else {
    spdlog::info("vdma-blk: front-end connected");
    const Error end = (*session)->run();
    if (end.is(VhostUserErrc::kPeerClosed)) spdlog::info("vdma-blk: front-end disconnected");
    else spdlog::warn("vdma-blk: session ended: {}", end);
    session->reset();  // joins the ring workers
  }
  (void)watcher.set_connection(-1);
  blk.reset();
}

// --pidfile: this process's pid, written once the socket accepts
// connections (through a temporary file and a rename, so a reader never sees
// a partial file) and removed at exit.
class Pidfile {
 public:
  static Result<std::unique_ptr<Pidfile>> write(const std::string& path) {
    const std::string tmp = path + ".tmp";
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return make_error(BaseErrc::kSystem, "--pidfile {}: {}", tmp, std::strerror(errno));
    const std::string text = fmt::format("{}\n", ::getpid());
    if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return make_error(BaseErrc::kSystem, "--pidfile {}: {}", tmp, std::strerror(err));
    }
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return make_error(BaseErrc::kSystem, "--pidfile {}: {}", path, std::strerror(err));
    }
    return std::unique_ptr<Pidfile>(new Pidfile(path));
  }
  ~Pidfile() { ::unlink(path_.c_str()); }
  Pidfile(const Pidfile&) = delete;
  Pidfile& operator=(const Pidfile&) = delete;

 private:
  explicit Pidfile(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// Binds and listens on `path`. A stale socket file nobody listens on (left by
// a killed instance) is replaced; anything else at the path is an error.
Result<UniqueFd> listen_on(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return make_error(BaseErrc::kInvalidArgument, "--socket-path {}: longer than {} bytes", path,
                      sizeof(addr.sun_path) - 1);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Unexpected(system_error("socket", errno));
  if (::bind(fd.get(), sa, sizeof(addr)) != 0) {
    const int err = errno;
    struct stat st {};
    if (err != EADDRINUSE || ::stat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
      return make_error(BaseErrc::kSystem, "bind {}: {}", path, std::strerror(err));
    }
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), sa, sizeof(addr)) == 0) {
      return make_error(BaseErrc::kSystem, "bind {}: another back-end is listening there", path);
    }
    spdlog::info("vdma-blk: replacing stale socket {}", path);
    ::unlink(path.c_str());
    if (::bind(fd.get(), sa, sizeof(addr)) != 0) {
      return make_error(BaseErrc::kSystem, "bind {}: {}", path, std::strerror(errno));
    }
  }
  if (::listen(fd.get(), 1) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return make_error(BaseErrc::kSystem, "listen {}: {}", path, std::strerror(err));
  }
  return fd;
}

// Accepts front-ends one at a time until a stop is requested.
Result<void> accept_loop(int listen_fd, apps::BlkBackendDevice& device, blk::BlkDevice& blk,
                         const vhost_user::BackendOptions& opt, ShutdownWatcher& watcher) {
  while (!watcher.stopping()) {
    pollfd fds[2] = {{listen_fd, POLLIN, 0}, {watcher.wake_fd(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return Unexpected(system_error("poll", errno));
    }
    if ((fds[1].revents & POLLIN) != 0) break;
    if ((fds[0].revents & POLLIN) == 0) continue;
    UniqueFd conn(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
      return Unexpected(system_error("accept", errno));
    }
    serve(std::move(conn), device, blk, opt, watcher);
  }
  return ok();
}

Result<void> run(const Options& o) {
  auto spec = VDMA_TRY(blk::parse_storage_spec(o.blk_file));
  auto storage = VDMA_TRY(blk::open_storage(spec, {.read_only = o.read_only, .direct = o.direct}));
  const std::string described = storage->describe();
  auto blk = VDMA_TRY(blk::BlkDevice::create(
      std::move(storage),
      {.num_queues = o.num_queues, .blk_size = o.blk_size, .seg_max = o.seg_max, .serial = o.serial}));
  apps::BlkBackendDevice device(*blk, {.order_platform = o.order_platform});
  const vhost_user::BackendOptions session_options{
      .offer_access_platform = o.iommu == "on",
      .poll = std::chrono::microseconds(o.poll_us),
      .iotlb_cache = o.iotlb_cache == "persistent" ? vhost_user::BackendOptions::IotlbCache::kPersistent
                                                   : vhost_user::BackendOptions::IotlbCache::kPerRequest};

  // Before any other thread exists, so every thread inherits the blocked mask.
  auto watcher = VDMA_TRY(ShutdownWatcher::start());
  spdlog::info("vdma-blk: {}, {} queue(s), ACCESS_PLATFORM {}{}, ORDER_PLATFORM {}", described, o.num_queues,
               session_options.offer_access_platform ? "offered" : "not offered",
               session_options.offer_access_platform ? fmt::format(", IOTLB cache {}", o.iotlb_cache) : "",
               o.order_platform ? "offered" : "not offered");

  if (o.fd >= 0) {
    struct stat st {};
    if (::fstat(o.fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
      return make_error(BaseErrc::kInvalidArgument, "--fd {}: not an open socket", o.fd);
    }
    int listening = 0;
    socklen_t len = sizeof(listening);
    if (::getsockopt(o.fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) {
      return Unexpected(system_error("getsockopt SO_ACCEPTCONN", errno));
    }
    UniqueFd fd(o.fd);
    std::unique_ptr<Pidfile> pidfile;
    if (!o.pidfile.empty()) pidfile = VDMA_TRY(Pidfile::write(o.pidfile));
    if (listening != 0) return accept_loop(fd.get(), device, *blk, session_options, *watcher);
    serve(std::move(fd), device, *blk, session_options, *watcher);
    return ok();
  }

  UniqueFd listen_fd = VDMA_TRY(listen_on(o.socket_path));
  spdlog::info("vdma-blk: listening on {}", o.socket_path);
  std::unique_ptr<Pidfile> pidfile;
  if (!o.pidfile.empty()) {
    auto written = Pidfile::write(o.pidfile);
    if (!written) {
      listen_fd.reset();
      ::unlink(o.socket_path.c_str());
      return Unexpected(std::move(written).error());
    }
    pidfile = std::move(*written);
  }
  Result<void> r = accept_loop(listen_fd.get(), device, *blk, session_options, *watcher);
  listen_fd.reset();
  ::unlink(o.socket_path.c_str());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  // A front-end may hand over a pipe as a call or err fd and close its read
  // end: writing to it must fail with EPIPE, not kill the daemon. Set before
  // any thread starts, so every thread inherits it. Sockets also use
  // MSG_NOSIGNAL.
  ::signal(SIGPIPE, SIG_IGN);
  vdma::log::init();
  Options o;
  CLI::App app{
      "vdma-blk: vhost-user-blk back-end (virtio-blk over io_uring) following QEMU's vhost-user back-end "
      "program conventions. Serves one front-end at a time; waits for the next after a disconnect. "
      "SIGTERM/SIGINT exit cleanly (status 0).",
      "vdma-blk"};
  auto* socket_opt = app.add_option("--socket-path", o.socket_path,
                                    "Listen on this unix socket path (created; removed at exit)");
  auto* fd_opt = app.add_option("--fd", o.fd,
                                "Use this inherited unix socket: a connected one is served once, a listening "
                                "one is accepted on")
                     ->check(CLI::NonNegativeNumber);
  socket_opt->excludes(fd_opt);
  fd_opt->excludes(socket_opt);
  app.add_flag("--print-capabilities", o.print_capabilities,
               "Print the vhost-user.json capabilities as JSON on stdout and exit");
  app.add_option("--blk-file", o.blk_file,
                 "Disk image: a file or block device path, or null:SIZE (e.g. null:1G; K/M/G/T suffixes) for a "
                 "disk that stores nothing and reads zeroes. Required to serve");
  app.add_flag("--read-only", o.read_only, "Open the disk read-only and offer VIRTIO_BLK_F_RO");
  app.add_flag("--direct", o.direct,
               "Open the file with O_DIRECT (transfers the kernel refuses for alignment use the page cache)");
  app.add_option("--num-queues", o.num_queues, "Number of request queues")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  app.add_option("--blk-size", o.blk_size, "Logical block size in bytes: 512, 1024, 2048 or 4096")
      ->check(CLI::IsMember({512, 1024, 2048, 4096}))
      ->capture_default_str();
  app.add_option("--seg-max", o.seg_max, "Largest number of data segments per request (seg_max)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--serial", o.serial, "Device ID returned by GET_ID (at most 20 printable ASCII bytes)")
      ->capture_default_str();
  app.add_option("--poll", o.poll_us,
                 "Busy-poll window in microseconds: a worker that drained its ring keeps checking it this long "
                 "(notifications off) before it sleeps on the kick eventfd; 0 disables polling")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  app.add_option("--iommu", o.iommu,
                 "on: offer VIRTIO_F_ACCESS_PLATFORM (descriptors carry IOVAs translated through the "
                 "front-end's vIOMMU via IOTLB messages; see --iotlb-cache); off: guest addresses only")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_flag("--order-platform", o.order_platform,
               "Offer VIRTIO_F_ORDER_PLATFORM (bit 36): a driver that accepts it, and this device's queues, order "
               "ring accesses with the platform's DMA barriers instead of SMP barriers (for a device that is, or "
               "stands in for, hardware)");
  app.add_option("--iotlb-cache", o.iotlb_cache,
                 "With --iommu on, how long the translations of a request's buffers stay cached. per-request: "
                 "dropped when the request completes, before the guest sees it done; correct with any "
                 "front-end, costs one IOTLB miss per buffer page per request. persistent: kept until the "
                 "front-end's INVALIDATE; faster, but safe only with a front-end that forwards every unmap: "
                 "QEMU 8.0 or later, QEMU 7.2 with the disk behind a pcie-root-port with ats=on (or a guest "
                 "booted with iommu.strict=1), or vdma-bench. With QEMU 7.2 and the guest's default lazy IOMMU "
                 "mode without ATS, persistent corrupts data (see README). Ring translations are cached in both")
      ->check(CLI::IsMember({"per-request", "persistent"}))
      ->capture_default_str();
  app.add_option("--log-level", o.log_level,
                 "trace, debug, info, warn, error, critical or off (overrides $VDMA_LOG; default info)");
  app.add_option("--pidfile", o.pidfile,
                 "Write the process id to this file once the socket accepts connections; removed at exit");
  vdma::apps::add_version_flag(app, "vdma-blk");
  if (auto code = vdma::apps::parse_command_line(app, argc, argv)) return *code;

  if (o.print_capabilities) {
    print_capabilities();
    return 0;
  }
  if (!o.log_level.empty()) {
    if (auto r = vdma::log::set_level(o.log_level); !r) {
      std::fprintf(stderr, "vdma-blk: --log-level: %s\n", r.error().message().c_str());
      return 2;
    }
  }
  auto usage_error = [](const char* msg) {
    std::fprintf(stderr, "vdma-blk: %s (see --help)\n", msg);
    return 2;
  };
  if (o.socket_path.empty() && o.fd < 0) return usage_error("one of --socket-path or --fd is required");
  if (o.blk_file.empty()) return usage_error("--blk-file is required");

  if (auto r = run(o); !r) {
    spdlog::error("vdma-blk: {}", r.error());
    // A value the options parser could not judge (a malformed --blk-file
    // spec, a bad --serial, an --fd that is no socket) is still a usage error.
    const Error& e = r.error();
    const bool usage = e.is(BlkErrc::kInvalidSpec) || e.is(BlkErrc::kInvalidOption) ||
                       e.is(BaseErrc::kInvalidArgument);
    return usage ? vdma::apps::kExitUsage : vdma::apps::kExitRuntimeFailure;
  }
  return 0;
}
