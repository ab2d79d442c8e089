// vdma-blk: a vhost-user-blk back-end, following QEMU's "Backend program
// conventions" (docs/interop/vhost-user.rst) with the block capabilities of
// docs/interop/vhost-user.json.
//
//   vdma-blk --socket-path=/run/vdma-blk.sock --blk-file=disk.img [--read-only]
//   vdma-blk --fd=3 --blk-file=null:1G
//   LISTEN_FDS=1 LISTEN_PID=<pid> vdma-blk --blk-file=disk.img   (systemd)
//   vdma-blk --print-capabilities
//
// With --socket-path it listens, serves one front-end at a time and waits for
// the next one when a front-end disconnects (so QEMU can reconnect). With --fd
// it serves the connected socket it inherited (or accepts on it, if it is a
// listening socket). With neither, systemd socket activation hands it one
// socket (sd_listen_fds(3)). Once it serves, it tells $NOTIFY_SOCKET READY=1
// (sd_notify(3), Type=notify). It never daemonizes. SIGTERM or SIGINT end it
// cleanly: the current session is shut down, its workers joined, the
// listening socket closed and the socket path it created removed; the exit
// status is 0.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "blk_backend_device.h"
#include "cli_support.h"
#include "vdma/base/event_fd.h"
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
  uint32_t poll_max_us = 32;
  uint32_t iothreads = 0;
  std::string iotlb_cache = "per-request";
  std::string iommu = "on";
  bool order_platform = false;
  std::string log_level;
  std::string pidfile;
  std::string stats_socket;
  // --socket-mode / --socket-group, checked by check_socket_access().
  std::string socket_mode;
  std::string socket_group;
};

// What --socket-mode and --socket-group ask of the socket --socket-path
// creates; applied between bind() and listen(), so no front-end can connect
// before they hold.
struct SocketAccess {
  std::optional<mode_t> mode;
  std::optional<gid_t> gid;
  std::string group;  // as given, for messages
};

// Checks --socket-mode (octal, 0 to 0777) and --socket-group (a group name
// or a numeric gid). Errors are usage errors (kInvalidArgument).
Result<SocketAccess> check_socket_access(const Options& o) {
  SocketAccess a;
  if (!o.socket_mode.empty()) {
    const std::string& m = o.socket_mode;
    unsigned long value = 0;
    const bool octal = m.size() <= 4 && m.find_first_not_of("01234567") == std::string::npos;
    if (octal) value = std::stoul(m, nullptr, 8);
    if (!octal || value > 0777) {
      return make_error(BaseErrc::kInvalidArgument, "--socket-mode {}: not an octal mode from 0 to 0777 (e.g. 0660)",
                        m);
    }
    a.mode = static_cast<mode_t>(value);
  }
  if (!o.socket_group.empty()) {
    const std::string& g = o.socket_group;
    a.group = g;
    if (g.find_first_not_of("0123456789") == std::string::npos && g.size() <= 9) {
      a.gid = static_cast<gid_t>(std::stoul(g));
    } else {
      std::vector<char> buf(16384);
      group entry{};
      group* found = nullptr;
      int err = 0;
      while ((err = ::getgrnam_r(g.c_str(), &entry, buf.data(), buf.size(), &found)) == ERANGE && buf.size() < (1u << 24)) {
        buf.resize(buf.size() * 2);
      }
      if (err != 0) return make_error(BaseErrc::kSystem, "--socket-group {}: {}", g, std::strerror(err));
      if (found == nullptr) return make_error(BaseErrc::kInvalidArgument, "--socket-group {}: no such group", g);
      a.gid = found->gr_gid;
    }
  }
  return a;
}

// systemd readiness (sd_notify(3)): a datagram to $NOTIFY_SOCKET, nothing
// when it is unset. Failures are logged, never fatal: the service manager
// decides what a missing READY=1 means.
void notify_service_manager(const std::string& state) {
  const int r = ::sd_notify(0, state.c_str());
  if (r < 0) spdlog::warn("vdma-blk: sd_notify to $NOTIFY_SOCKET: {}", std::strerror(-r));
  else if (r > 0) spdlog::debug("vdma-blk: told the service manager {}", state.substr(0, state.find('\n')));
}

// STOPPING=1, once, from whichever of the signal watcher and run() gets there
// first.
void notify_stopping() {
  static std::once_flag once;
  std::call_once(once, [] { notify_service_manager("STOPPING=1"); });
}

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
    sigaddset(&set, SIGUSR1);  // statistics to the log
    if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return system_error("pthread_sigmask", errno);
    UniqueFd sfd(::signalfd(-1, &set, SFD_CLOEXEC));
    if (!sfd) return system_error("signalfd", errno);
    EventFd wake = VDMA_TRY(EventFd::create());
    EventFd quit = VDMA_TRY(EventFd::create());
    std::unique_ptr<ShutdownWatcher> w(new ShutdownWatcher(std::move(sfd), std::move(wake), std::move(quit)));
    w->thread_ = std::thread([p = w.get()] { p->watch(); });
    return w;
  }
  ~ShutdownWatcher() {
    (void)quit_.signal();
    thread_.join();
  }
  ShutdownWatcher(const ShutdownWatcher&) = delete;
  ShutdownWatcher& operator=(const ShutdownWatcher&) = delete;

  // Called on the watcher thread for each SIGUSR1.
  void set_report(std::function<void()> report) {
    std::lock_guard lock(mu_);
    report_ = std::move(report);
  }

  // Readable once a stop was requested (for poll in the accept loop).
  [[nodiscard]] int wake_fd() const noexcept { return wake_.fd(); }
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
  ShutdownWatcher(UniqueFd sfd, EventFd wake, EventFd quit)
      : signal_fd_(std::move(sfd)), wake_(std::move(wake)), quit_(std::move(quit)) {}

  void watch() {
    pollfd fds[2] = {{signal_fd_.get(), POLLIN, 0}, {quit_.fd(), POLLIN, 0}};
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
      if (info.ssi_signo == SIGUSR1) {
        std::function<void()> report;
        {
          std::lock_guard lock(mu_);
          report = report_;
        }
        if (report) report();
        continue;
      }
      spdlog::info("vdma-blk: {} received, shutting down", strsignal(static_cast<int>(info.ssi_signo)));
      notify_stopping();
      {
        std::lock_guard lock(mu_);
        stopping_ = true;
        // The session reads from this socket; shutting it down makes that
        // read see end-of-file, so run() returns and the workers are joined
        // on the main thread. connection_ is a duplicate we own, never closed
        // while registered, so the number cannot have been reused.
        if (connection_ >= 0) ::shutdown(connection_, SHUT_RDWR);
      }
      (void)wake_.signal();
    }
  }

  UniqueFd signal_fd_;
  EventFd wake_;  // readable once stopping: the accept loop ends
  EventFd quit_;
  std::thread thread_;
  std::mutex mu_;
  bool stopping_ = false;  // guarded by mu_
  int connection_ = -1;    // guarded by mu_
  std::function<void()> report_;  // guarded by mu_
};

// Statistics while it runs (SIGUSR1 to the log, --stats-socket as JSON): the
// counters of every session so far, the current one's read live.
class StatsBoard {
 public:
  explicit StatsBoard(const blk::BlkDevice& blk) : blk_(blk) {}

  void attach(const vhost_user::BackendSession* session) {
    std::lock_guard lock(mu_);
    current_ = session;
    ++sessions_;
  }
  // Before the session is destroyed: its counters join the totals.
  void detach() {
    std::lock_guard lock(mu_);
    if (current_ != nullptr) add(done_, current_->stats());
    current_ = nullptr;
  }

  [[nodiscard]] nlohmann::json json() const {
    std::lock_guard lock(mu_);
    Totals t = done_;
    vhost_user::SessionStats live;
    if (current_ != nullptr) {
      live = current_->stats();
      add(t, live);
    }
    nlohmann::json queues = nlohmann::json::array();
    for (uint32_t q = 0; q < blk_.num_queues(); ++q) {
      const vhost_user::QueueStats* l = q < live.queues.size() ? &live.queues[q] : nullptr;
      queues.push_back({{"index", q},
                        {"requests", q < t.requests.size() ? t.requests[q] : 0},
                        {"bytes", q < t.bytes.size() ? t.bytes[q] : 0},
                        {"errors", blk_.queue_errors(q)},
                        {"in_flight", l != nullptr ? l->in_flight : 0},
                        {"running", l != nullptr && l->running},
                        {"needs_reset", l != nullptr && l->needs_reset}});
    }
    return {{"sessions", sessions_},
            {"connected", current_ != nullptr},
            {"queues", queues},
            {"iotlb",
             {{"hits", t.iotlb.hits},
              {"misses", t.iotlb.misses},
              {"permission_failures", t.iotlb.permission_failures},
              {"access_fails", t.access_fails},
              {"updates", t.updates},
              {"invalidations", t.invalidations},
              {"evictions", t.iotlb.evictions},
              {"forgotten", t.iotlb.forgotten},
              {"grace_periods", t.iotlb.grace_periods},
              {"entries", live.iommu ? live.iotlb.entries : 0}}}};
  }

  // SIGUSR1: one line per queue and one for the IOTLB.
  void log() const {
    const nlohmann::json j = json();
    spdlog::info("vdma-blk stats: {} session(s), front-end {}", j["sessions"].get<uint64_t>(),
                 j["connected"].get<bool>() ? "connected" : "not connected");
    for (const auto& q : j["queues"]) {
      spdlog::info("vdma-blk stats: queue {}: requests={} bytes={} errors={} in_flight={}{}",
                   q["index"].get<uint32_t>(), q["requests"].get<uint64_t>(), q["bytes"].get<uint64_t>(),
                   q["errors"].get<uint64_t>(), q["in_flight"].get<uint32_t>(),
                   q["needs_reset"].get<bool>() ? " needs_reset" : "");
    }
    const auto& i = j["iotlb"];
    spdlog::info("vdma-blk stats: iotlb: hits={} misses={} invalidations={} access_fails={} updates={} entries={}",
                 i["hits"].get<uint64_t>(), i["misses"].get<uint64_t>(), i["invalidations"].get<uint64_t>(),
                 i["access_fails"].get<uint64_t>(), i["updates"].get<uint64_t>(), i["entries"].get<uint64_t>());
  }

 private:
  struct Totals {
    std::vector<uint64_t> requests;
    std::vector<uint64_t> bytes;
    IotlbStats iotlb;
    uint64_t access_fails = 0;
    uint64_t updates = 0;
    uint64_t invalidations = 0;
  };
  static void add(Totals& t, const vhost_user::SessionStats& s) {
    if (t.requests.size() < s.queues.size()) {
      t.requests.resize(s.queues.size());
      t.bytes.resize(s.queues.size());
    }
    for (size_t q = 0; q < s.queues.size(); ++q) {
      t.requests[q] += s.queues[q].requests;
      t.bytes[q] += s.queues[q].bytes;
      t.access_fails += s.queues[q].access_fails;
    }
    t.iotlb.hits += s.iotlb.hits;
    t.iotlb.misses += s.iotlb.misses;
    t.iotlb.permission_failures += s.iotlb.permission_failures;
    t.iotlb.evictions += s.iotlb.evictions;
    t.iotlb.forgotten += s.iotlb.forgotten;
    t.iotlb.grace_periods += s.iotlb.grace_periods;
    t.updates += s.iotlb_updates;
    t.invalidations += s.iotlb_invalidations;
  }

  const blk::BlkDevice& blk_;
  mutable std::mutex mu_;
  const vhost_user::BackendSession* current_ = nullptr;  // guarded by mu_
  uint64_t sessions_ = 0;                                // guarded by mu_
  Totals done_;                                          // guarded by mu_
};

// Serves one connected front-end until it disconnects or a stop is requested.
void serve(UniqueFd conn, apps::BlkBackendDevice& device, blk::BlkDevice& blk, const vhost_user::BackendOptions& opt,
           ShutdownWatcher& watcher, StatsBoard& stats) {
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
    stats.attach(session->get());
    const Error end = (*session)->run();
    if (end.is(VhostUserErrc::kPeerClosed)) spdlog::info("vdma-blk: front-end disconnected");
    else spdlog::warn("vdma-blk: session ended: {}", end);
    stats.detach();
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

// Binds and listens on `path`, with the mode and group of `access` set
// before listen(). A stale socket file nobody listens on (left by a killed
// instance) is replaced; anything else at the path is an error.
Result<UniqueFd> listen_on(const std::string& path, const SocketAccess& access) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return make_error(BaseErrc::kInvalidArgument, "--socket-path {}: longer than {} bytes", path,
                      sizeof(addr.sun_path) - 1);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return system_error("socket", errno);
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
  if (access.gid && ::chown(path.c_str(), static_cast<uid_t>(-1), *access.gid) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return make_error(BaseErrc::kSystem, "--socket-group {}: chown {}: {}", access.group, path, std::strerror(err));
  }
  if (access.mode && ::chmod(path.c_str(), *access.mode) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return make_error(BaseErrc::kSystem, "--socket-mode {:o}: chmod {}: {}", *access.mode, path, std::strerror(err));
  }
  if (::listen(fd.get(), 1) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return make_error(BaseErrc::kSystem, "listen {}: {}", path, std::strerror(err));
  }
  return fd;
}

// An inherited socket (--fd, socket activation) must be a unix stream socket
// that listens (vdma-blk accepts on it) or is connected (it serves it once).
enum class InheritedSocket { kListening, kConnected };

Result<InheritedSocket> check_inherited_socket(int fd, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return make_error(BaseErrc::kInvalidArgument, "{}: not an open file descriptor", what);
  if (!S_ISSOCK(st.st_mode)) return make_error(BaseErrc::kInvalidArgument, "{}: not a socket", what);
  const int is_unix_stream = ::sd_is_socket_unix(fd, SOCK_STREAM, -1, nullptr, 0);
  if (is_unix_stream < 0) return system_error(what, -is_unix_stream);
  if (is_unix_stream == 0) {
    return make_error(BaseErrc::kInvalidArgument, "{}: not a unix stream socket (AF_UNIX, SOCK_STREAM)", what);
  }
  if (::sd_is_socket_unix(fd, SOCK_STREAM, 1, nullptr, 0) > 0) return InheritedSocket::kListening;
  sockaddr_un peer{};
  socklen_t len = sizeof(peer);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0) return InheritedSocket::kConnected;
  return make_error(BaseErrc::kInvalidArgument, "{}: a unix stream socket that neither listens nor is connected", what);
}

// Accepts front-ends one at a time until a stop is requested.
Result<void> accept_loop(int listen_fd, apps::BlkBackendDevice& device, blk::BlkDevice& blk,
                         const vhost_user::BackendOptions& opt, ShutdownWatcher& watcher, StatsBoard& stats) {
  while (!watcher.stopping()) {
    pollfd fds[2] = {{listen_fd, POLLIN, 0}, {watcher.wake_fd(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return system_error("poll", errno);
    }
    if ((fds[1].revents & POLLIN) != 0) break;
    if ((fds[0].revents & POLLIN) == 0) continue;
    UniqueFd conn(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
      return system_error("accept", errno);
    }
    serve(std::move(conn), device, blk, opt, watcher, stats);
  }
  return ok();
}

// --stats-socket: each connection gets the statistics as one JSON document
// (and a newline), then the server closes it. Its own thread; removed at exit.
class StatsServer {
 public:
  static Result<std::unique_ptr<StatsServer>> start(const std::string& path, const SocketAccess& access,
                                                     const StatsBoard& board) {
    UniqueFd fd = VDMA_TRY(listen_on(path, access));
    EventFd quit = VDMA_TRY(EventFd::create());
    std::unique_ptr<StatsServer> s(new StatsServer(path, std::move(fd), std::move(quit), board));
    s->thread_ = std::thread([p = s.get()] { p->serve(); });
    spdlog::info("vdma-blk: statistics on {}", path);
    return s;
  }
  ~StatsServer() {
    (void)quit_.signal();
    thread_.join();
    fd_.reset();
    ::unlink(path_.c_str());
  }
  StatsServer(const StatsServer&) = delete;
  StatsServer& operator=(const StatsServer&) = delete;

 private:
  StatsServer(std::string path, UniqueFd fd, EventFd quit, const StatsBoard& board)
      : path_(std::move(path)), fd_(std::move(fd)), quit_(std::move(quit)), board_(board) {}

  void serve() {
    while (true) {
      pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {quit_.fd(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        spdlog::error("vdma-blk: poll on the stats socket: {}", std::strerror(errno));
        return;
      }
      if ((fds[1].revents & POLLIN) != 0) return;
      if ((fds[0].revents & POLLIN) == 0) continue;
      UniqueFd conn(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!conn) continue;
      const std::string text = board_.json().dump() + "\n";
      // A few hundred bytes into an empty socket buffer: never blocks; a
      // reader that went away costs nothing (MSG_NOSIGNAL).
      [[maybe_unused]] const ssize_t n = ::send(conn.get(), text.data(), text.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
  }

  std::string path_;
  UniqueFd fd_;
  EventFd quit_;
  const StatsBoard& board_;
  std::thread thread_;
};

// `fd_origin` names where o.fd came from in messages: "--fd 5", or
// "socket activation (LISTEN_FDS) fd 3".
Result<void> run(const Options& o, const SocketAccess& access, const std::string& fd_origin) {
  // An unusable inherited socket is refused before the disk is opened (and locked).
  std::optional<InheritedSocket> inherited;
  if (o.fd >= 0) inherited = VDMA_TRY(check_inherited_socket(o.fd, fd_origin));
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
      .poll_max = std::chrono::microseconds(o.poll_max_us),
      .iotlb_cache = o.iotlb_cache == "persistent" ? vhost_user::BackendOptions::IotlbCache::kPersistent
                                                   : vhost_user::BackendOptions::IotlbCache::kPerRequest,
      .iothreads = o.iothreads};

  // Outlives the watcher, whose thread reports it on SIGUSR1.
  StatsBoard stats(*blk);
  // Before any other thread exists, so every thread inherits the blocked mask.
  auto watcher = VDMA_TRY(ShutdownWatcher::start());
  watcher->set_report([&stats] { stats.log(); });
  std::unique_ptr<StatsServer> stats_server;
  // The statistics socket gets the same --socket-mode / --socket-group.
  if (!o.stats_socket.empty()) stats_server = VDMA_TRY(StatsServer::start(o.stats_socket, access, stats));
  spdlog::info("vdma-blk: {}, {} queue(s) on {}, ACCESS_PLATFORM {}{}, ORDER_PLATFORM {}", described, o.num_queues,
               o.iothreads == 0 ? std::string("a thread each") : fmt::format("{} I/O thread(s)", o.iothreads),
               session_options.offer_access_platform ? "offered" : "not offered",
               session_options.offer_access_platform ? fmt::format(", IOTLB cache {}", o.iotlb_cache) : "",
               o.order_platform ? "offered" : "not offered");

  if (inherited) {
    UniqueFd fd(o.fd);
    std::unique_ptr<Pidfile> pidfile;
    if (!o.pidfile.empty()) pidfile = VDMA_TRY(Pidfile::write(o.pidfile));
    if (*inherited == InheritedSocket::kListening) {
      spdlog::info("vdma-blk: listening on {}", fd_origin);
      notify_service_manager(fmt::format("READY=1\nSTATUS=listening on {}", fd_origin));
      Result<void> r = accept_loop(fd.get(), device, *blk, session_options, *watcher, stats);
      notify_stopping();
      return r;
    }
    notify_service_manager(fmt::format("READY=1\nSTATUS=serving the front-end connected to {}", fd_origin));
    serve(std::move(fd), device, *blk, session_options, *watcher, stats);
    notify_stopping();
    return ok();
  }

  UniqueFd listen_fd = VDMA_TRY(listen_on(o.socket_path, access));
  spdlog::info("vdma-blk: listening on {}", o.socket_path);
  std::unique_ptr<Pidfile> pidfile;
  if (!o.pidfile.empty()) {
    auto written = Pidfile::write(o.pidfile);
    if (!written) {
      listen_fd.reset();
      ::unlink(o.socket_path.c_str());
      return std::move(written).error();
    }
    pidfile = std::move(*written);
  }
  notify_service_manager(fmt::format("READY=1\nSTATUS=listening on {}", o.socket_path));
  Result<void> r = accept_loop(listen_fd.get(), device, *blk, session_options, *watcher, stats);
  notify_stopping();
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
                                "Use this inherited unix stream socket: a connected one is served once, a listening "
                                "one is accepted on. Without --socket-path and --fd, systemd socket activation "
                                "($LISTEN_FDS, $LISTEN_PID) must pass exactly one such socket")
                     ->check(CLI::NonNegativeNumber);
  socket_opt->excludes(fd_opt);
  fd_opt->excludes(socket_opt);
  app.add_option("--socket-mode", o.socket_mode,
                 "Permissions of the --socket-path socket, octal (e.g. 0660; default: 0777 less the umask)")
      ->needs(socket_opt);
  app.add_option("--socket-group", o.socket_group,
                 "Group (name or number) owning the --socket-path socket (default: the caller's); with "
                 "--socket-mode=0660, members of the group may connect")
      ->needs(socket_opt);
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
                 "(notifications off) before it sleeps on the kick eventfd; 0 disables this fixed window "
                 "(see --poll-max-us)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  app.add_option("--poll-max-us", o.poll_max_us,
                 "Adaptive polling, used when --poll is 0 (as QEMU's poll-max-ns): each queue's poll window "
                 "grows from 4 us (doubling) while requests arrive soon after its ring ran empty, and shrinks "
                 "(halving, down to 0) while they arrive later than this bound; 0 disables polling")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  app.add_option("--iothreads", o.iothreads,
                 "Event-loop threads serving the queues (as QEMU's iothreads): queue q is served by thread "
                 "q % N, which polls all of its queues at once; each thread is named after its queues "
                 "(vdma-q0,2). 0: a thread per queue (vdma-vqN). At most --num-queues")
      ->check(CLI::Range(0, 16))
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
  app.add_option("--stats-socket", o.stats_socket,
                 "Serve statistics on this unix socket: each connection reads one JSON document (per queue: "
                 "requests, bytes, errors, in_flight; IOTLB: hits, misses, invalidations, access_fails, ...). "
                 "SIGUSR1 logs the same at info level. Created with the main socket's --socket-mode and --socket-group; "
                 "removed at exit");
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
  auto access = check_socket_access(o);
  if (!access) {
    std::fprintf(stderr, "vdma-blk: %s (see --help)\n", access.error().message().c_str());
    return access.error().is(BaseErrc::kInvalidArgument) ? vdma::apps::kExitUsage : vdma::apps::kExitRuntimeFailure;
  }
  std::string fd_origin = fmt::format("--fd {}", o.fd);
  if (o.socket_path.empty() && o.fd < 0) {
    // systemd socket activation: $LISTEN_PID must be this process and
    // $LISTEN_FDS count the sockets passed from fd 3 on (sd_listen_fds(3)).
    // The variables are removed, so nothing started later inherits them.
    const int n = ::sd_listen_fds(1);
    if (n < 0) {
      std::fprintf(stderr, "vdma-blk: socket activation: %s\n", std::strerror(-n));
      return vdma::apps::kExitUsage;
    }
    if (n == 0) {
      return usage_error("one of --socket-path or --fd is required (or systemd socket activation: $LISTEN_FDS)");
    }
    if (n > 1) {
      std::fprintf(stderr, "vdma-blk: socket activation passed %d sockets (LISTEN_FDS=%d); vdma-blk serves one\n",
                   n, n);
      return vdma::apps::kExitUsage;
    }
    o.fd = SD_LISTEN_FDS_START;
    fd_origin = fmt::format("socket activation (LISTEN_FDS) fd {}", o.fd);
  }
  if (o.blk_file.empty()) return usage_error("--blk-file is required");
  if (o.iothreads > o.num_queues) {
    std::fprintf(stderr, "vdma-blk: --iothreads %u is more than --num-queues %u: each thread serves at least one "
                 "queue (see --help)\n", o.iothreads, o.num_queues);
    return vdma::apps::kExitUsage;
  }

  if (auto r = run(o, *access, fd_origin); !r) {
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
