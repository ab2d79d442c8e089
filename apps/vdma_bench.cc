// vdma-bench: drives a vhost-user-blk back-end through the platform DMA
// layer in each DMA mode, verifies every byte it wrote, and compares the
// modes.
//
//   vdma-bench                                   # the demo: spawn vdma-blk, every mode, verified
//   vdma-bench --socket-path /tmp/qsd.sock --mode bypass --rw randread --iodepth 32 --runtime 10
//   vdma-bench --blk-file null:1G --no-verify --mode bypass --mode iommu-lazy --json
//
// Without --socket-path it starts vdma-blk (next to this program, or
// --backend) on a temporary file (or --blk-file) and stops it at the end.
// Each run (a mode in a round, --repeat) gets a fresh front-end connection
// to the same back-end. The whole command line is checked before anything
// is spawned. SIGINT/SIGTERM stop the run in order (the current run drains
// and is dropped, the back-end is stopped, the temporary disk removed, the
// finished runs printed), then the signal is raised again; a second one
// ends the program at once. A spawned back-end that dies ends the run
// within about 50 ms, naming its exit status or signal. Exit status: 0
// when every mode ran and verified, 1 when a mode failed (set-up, I/O
// error, verify mismatch, the back-end died), 2 for a usage error; killed
// by the signal after an interrupt.
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli_support.h"
#include "vdma/base/log.h"
#include "vdma/blk/storage.h"
#include "vdma/blk/virtio_blk.h"
#include "vdma/blk_driver/blk_driver.h"
#include "vdma/dma/topology.h"
#include "vdma/frontend/backend_process.h"
#include "vdma/frontend/dma_mode.h"
#include "vdma/frontend/vhost_user_frontend.h"
#include "vdma/workload/progress_line.h"
#include "vdma/workload/report.h"
#include "vdma/workload/workload.h"

namespace {

using namespace vdma;
using workload::BenchReport;
using workload::Interruption;
using workload::ModeRow;
using workload::WorkloadSpec;

struct Options {
  std::string socket_path;
  std::string backend;
  std::string blk_file;
  std::string disk_size = "64M";
  std::vector<std::string> backend_args;
  std::vector<std::string> modes;
  std::string topology;
  std::string rw = "randrw";
  std::string bs = "4K";
  uint32_t iodepth = 32;
  uint32_t queues = 1;
  double runtime_s = 1.0;
  double ramp_time_s = 0.0;
  uint32_t repeat = 1;
  uint64_t seed = 1;
  std::string baseline;  // empty: bypass, when it runs
  std::string size;
  std::string span;
  uint32_t rwmix_read = 50;
  bool verify = true;
  std::string ring = "split";
  uint32_t queue_size = 256;
  bool poll = false;
  bool json = false;
  std::string plot;
  std::string progress = "auto";
  std::string log_level;
  bool dma_debug = false;
};

// The options vdma-bench passes the back-end it spawns, each dropped when
// the user passes it with --backend-arg (--backend-arg=--iommu=off wins).
constexpr std::string_view kOverridableBackendOptions[] = {"--num-queues", "--iommu", "--iotlb-cache", "--log-level"};

// Whether `args` holds option `flag`, as "--flag" or "--flag=value".
bool has_option(const std::vector<std::string>& args, std::string_view flag) {
  return std::any_of(args.begin(), args.end(), [flag](const std::string& a) {
    return a == flag || (a.size() > flag.size() && a.starts_with(flag) && a[flag.size()] == '=');
  });
}

// The first signal that asked us to stop (0: none). Set by the handler,
// read by the run loop and the workload's check.
volatile sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// SIGINT, SIGTERM and SIGHUP stop the run in order; SA_RESETHAND makes a
// second one take its default action (the user insists).
void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

// The temporary disk of a spawned back-end; removed at exit.
class TempDisk {
 public:
  static Result<TempDisk> create(uint64_t size) {
    const char* dir = std::getenv("TMPDIR");
    std::string path = fmt::format("{}/vdma-bench-XXXXXX", dir != nullptr && *dir != 0 ? dir : "/tmp");
    const int fd = mkstemp(path.data());
    if (fd < 0) return system_error(fmt::format("cannot create {}", path), errno);
    const int rc = ftruncate(fd, static_cast<off_t>(size));
    const int err = errno;
    close(fd);
    TempDisk d;
    d.path_ = path;
    if (rc != 0) return system_error(fmt::format("cannot size {} to {} bytes", path, size), err);
    return d;
  }
  TempDisk() = default;
  TempDisk(TempDisk&& o) noexcept : path_(std::exchange(o.path_, {})) {}
  TempDisk& operator=(TempDisk&&) = delete;
  ~TempDisk() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  [[nodiscard]] const std::string& path() const { return path_; }
  // Removes the name now: a back-end that opened the disk keeps it until it
  // exits, and nothing is left behind however vdma-bench ends.
  void unlink_now() {
    if (!path_.empty()) ::unlink(path_.c_str());
    path_.clear();
  }

 private:
  std::string path_;
};

// Where vdma-blk is: next to this program, in ../libexec, else $PATH.
std::string default_backend() {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    // The build tree keeps both programs in one directory; an installed
    // vdma-bench is in bin/ and vdma-blk in libexec/.
    for (const auto& candidate : {self.parent_path() / "vdma-blk", self.parent_path() / "../libexec/vdma-blk"}) {
      if (std::filesystem::exists(candidate, ec)) return candidate.lexically_normal().string();
    }
  }
  return "vdma-blk";
}

uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

std::chrono::nanoseconds to_ns(double seconds) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(seconds));
}

struct Plan {
  std::vector<DmaMode> modes;
  std::optional<PlatformTopology> topology;
  WorkloadSpec spec;
  FrontendOptions frontend;
  blk::BlkDriverOptions driver;
  uint64_t disk_size = 0;  // of the temporary disk, when there is one
};

// Every check that needs no back-end: a usage error is found before
// anything is spawned or created. The messages name the option.
Result<Plan> make_plan(const Options& o) {
  Plan p;
  if (o.modes.empty()) {
    p.modes.assign(std::begin(kAllDmaModes), std::end(kAllDmaModes));
  } else {
    for (const auto& m : o.modes) p.modes.push_back(VDMA_TRY(parse_dma_mode(m)));
  }
  if (!o.baseline.empty()) {
    const DmaMode baseline = VDMA_TRY(parse_dma_mode(o.baseline));
    if (std::find(p.modes.begin(), p.modes.end(), baseline) == p.modes.end()) {
      return make_error(BaseErrc::kInvalidArgument, "--baseline {}: not one of the modes run", o.baseline);
    }
  }
  if (!o.topology.empty()) p.topology = VDMA_TRY(load_topology(o.topology));

  WorkloadSpec& s = p.spec;
  s.rw = VDMA_TRY(workload::parse_rw_mode(o.rw));
  auto bs = blk::parse_size(o.bs);
  if (!bs) return make_error(BaseErrc::kInvalidArgument, "--bs {}: not a size", o.bs);
  if (*bs > (uint64_t{16} << 20)) return make_error(BaseErrc::kInvalidArgument, "--bs {}: above 16M", o.bs);
  s.block_size = static_cast<uint32_t>(*bs);
  s.iodepth = o.iodepth;
  s.queues = o.queues;
  if (!std::isfinite(o.runtime_s) || !std::isfinite(o.ramp_time_s)) {
    return make_error(BaseErrc::kInvalidArgument, "--runtime / --ramp-time: not a number of seconds");
  }
  s.runtime = to_ns(o.runtime_s);
  s.ramp_time = to_ns(o.ramp_time_s);
  if (!o.size.empty()) {
    auto size = blk::parse_size(o.size);
    if (!size) return make_error(BaseErrc::kInvalidArgument, "--size {}: not a size", o.size);
    s.size = *size;
  }
  if (!o.span.empty()) {
    auto span = blk::parse_size(o.span);
    if (!span) return make_error(BaseErrc::kInvalidArgument, "--span {}: not a size", o.span);
    s.span = *span;
  }
  s.read_percent = o.rwmix_read;
  s.verify = o.verify;
  s.seed = o.seed;
  VDMA_TRY(workload::check_spec(s));
  const RingFormat format = o.ring == "packed" ? RingFormat::kPacked : RingFormat::kSplit;
  VDMA_TRY(workload::check_ring_options(format, o.queue_size, o.iodepth));

  if (o.socket_path.empty()) {
    for (std::string_view own : {"--socket-path", "--blk-file"}) {
      if (has_option(o.backend_args, own)) {
        return make_error(BaseErrc::kInvalidArgument,
                          "--backend-arg {}: vdma-bench sets the spawned back-end's {} itself{}", own, own,
                          own == "--blk-file" ? " (use vdma-bench's --blk-file)" : " (use --socket-path without --backend-arg to drive a back-end you started)");
      }
    }
    if (o.blk_file.empty()) {
      auto size = blk::parse_size(o.disk_size);
      if (!size || *size == 0) return make_error(BaseErrc::kInvalidArgument, "--disk-size {}: not a size", o.disk_size);
      p.disk_size = *size;
      if (s.span > p.disk_size) {
        return make_error(BaseErrc::kInvalidArgument, "--span {}: beyond --disk-size {}", s.span, o.disk_size);
      }
      const uint64_t blocks = (s.span != 0 ? s.span : p.disk_size) / s.block_size;
      if (blocks < uint64_t{s.iodepth} * s.queues) {
        return make_error(BaseErrc::kInvalidArgument,
                          "--disk-size {} holds {} blocks of {} bytes: fewer than --iodepth {} x --queues {}",
                          o.disk_size, blocks, s.block_size, s.iodepth, s.queues);
      }
    }
  }

  FrontendOptions& f = p.frontend;
  f.num_queues = o.queues;
  f.queue_size = static_cast<uint16_t>(o.queue_size);  // check_ring_options: at most 32768
  f.ring_format = format;
  f.device_features = blk::driver_features();
  f.polling = o.poll;
  f.dma_debug = o.dma_debug;
  // Driver buffers: one max-size buffer per slot per queue, plus slack for
  // headers; bounce pool: every byte that can be in flight, twice.
  const uint64_t in_flight = uint64_t{o.iodepth} * o.queues * s.block_size;
  f.ram_size = std::max(f.ram_size, round_up(2 * in_flight + (8 << 20), 2 << 20));
  f.bounce_size = std::max(f.bounce_size, round_up(2 * in_flight + (4 << 20), 2 << 20));
  p.driver.queue_depth = o.iodepth;
  p.driver.max_io_bytes = s.block_size;
  return p;
}

// The spawned back-end's end, in words, once it ended; nullopt while it runs
// (or when there is none). `grace`: how long to wait for an end that is
// expected. A back-end that dies closes its socket before the kernel reports
// its exit, so a hang-up seen first would otherwise hide the signal.
using BackendGone = std::function<std::optional<std::string>(std::chrono::milliseconds grace)>;
constexpr std::chrono::milliseconds kNoGrace{0};
constexpr std::chrono::milliseconds kExitGrace{500};

// Which barriers the mode's queues used (virtio/barriers.h), for the report.
std::string describe_barriers(VhostUserFrontend& fe) {
  uint64_t platform = 0;
  for (uint32_t i = 0; i < fe.num_queues(); ++i) platform += fe.queue(i).platform_barriers();
  if (fe.queue(0).barriers() == BarrierKind::kStrong) {
    return fmt::format("platform DMA barriers (ORDER_PLATFORM negotiated; {} executed)", platform);
  }
  return "SMP barriers (ORDER_PLATFORM not negotiated)";
}

// --dma-debug: after the driver and the front-end are gone, whatever the
// checker reported (leaks at teardown included) fails the mode, each report
// printed. Returns how many reports there were.
size_t check_dma_debug(const std::shared_ptr<DebugDmaOps>& dbg, ModeRow& row) {
  if (dbg == nullptr) return 0;
  (void)dbg->check_teardown();  // its reports are in reports()
  const std::vector<DmaMisuseReport> reports = dbg->reports();
  if (reports.empty()) return 0;
  for (const DmaMisuseReport& r : reports) {
    std::fprintf(stderr, "vdma-bench: mode %s: dma-debug %s: %s\n", row.mode.c_str(),
                 std::string(to_string(r.kind)).c_str(), r.message.c_str());
  }
  // A run abandoned because the back-end died leaves its requests mapped;
  // the back-end's end is the news, not the leak it caused.
  if (row.setup_error.empty() && row.result.error.empty()) {
    row.setup_error = fmt::format("dma-debug: {} report(s), the first: {}", reports.size(), reports.front().message);
  }
  return reports.size();
}

// Runs one mode on a fresh connection; fills `row`.
void run_mode(DmaMode mode, const Plan& plan, UniqueFd first_connection, const std::string& socket_path,
              workload::RunHooks hooks, const BackendGone& backend_gone, ModeRow& row, std::string& barriers,
              size_t& dma_reports) {
  row.mode = std::string(to_string(mode));
  FrontendOptions fo = plan.frontend;
  fo.mode = mode;
  fo.topology = plan.topology;
  auto fe = first_connection.valid() ? VhostUserFrontend::create(std::move(first_connection), fo)
                                     : VhostUserFrontend::connect(socket_path, fo);
  if (!fe) {
    row.setup_error = fe.error().message();
    if (auto gone = backend_gone(kExitGrace)) row.setup_error = *gone;
    return;
  }
  const std::shared_ptr<DebugDmaOps> dbg = (*fe)->dma_debug();
  VhostUserFrontend& frontend = **fe;
  auto drv = blk::BlkDriver::create(frontend, plan.driver);
  if (!drv) {
    row.setup_error = fmt::format("virtio-blk driver: {}", drv.error().message());
    if (auto gone = backend_gone(kExitGrace)) row.setup_error = *gone;
  } else {
    hooks.check = [&]() -> std::optional<Interruption> {
      if (const int sig = g_stop_signal; sig != 0) {
        return Interruption{Interruption::Kind::kStop, fmt::format("interrupted by {}", signal_name(sig))};
      }
      if (auto gone = backend_gone(kNoGrace)) return Interruption{Interruption::Kind::kAbandon, *gone};
      if (frontend.disconnected()) {
        // A spawned back-end that hung up is most likely dying: name how it
        // ended. A back-end we did not spawn: its hang-up is all we can see.
        if (auto gone = backend_gone(kExitGrace)) return Interruption{Interruption::Kind::kAbandon, *gone};
        return Interruption{Interruption::Kind::kAbandon, "the back-end hung up"};
      }
      return std::nullopt;
    };
    if (auto result = workload::run_workload(**drv, plan.spec, hooks); !result) {
      row.setup_error = result.error().message();
    } else {
      row.result = std::move(*result);
    }
  }
  const FrontendStats st = frontend.stats();
  row.counters = {{"iotlb_misses_served", st.misses_served},
                  {"iotlb_updates_sent", st.updates_sent},
                  {"iotlb_invalidates_sent", st.invalidates_sent},
                  {"iotlb_updates_announced", st.updates_announced},
                  {"iotlb_updates_refused", st.updates_refused},
                  {"iotlb_invalidation_round_trips", st.invalidation_round_trips},
                  {"iotlb_access_failures", st.access_failures}};
  uint64_t platform_barriers = 0;
  for (uint32_t i = 0; i < frontend.num_queues(); ++i) platform_barriers += frontend.queue(i).platform_barriers();
  row.counters["platform_dma_barriers"] = platform_barriers;
  barriers = describe_barriers(frontend);
  // Teardown in the order a guest does it: driver (unmaps its buffers),
  // then the device and its queues; then the checker's verdict.
  if (drv) drv->reset();
  fe->reset();
  dma_reports += check_dma_debug(dbg, row);
}

int run(const Options& o) {
  auto plan = make_plan(o);
  if (!plan) {
    std::fprintf(stderr, "vdma-bench: %s (see --help)\n", plan.error().message().c_str());
    return apps::kExitUsage;
  }
  install_stop_handlers();

  BenchReport report;
  report.spec = plan->spec;
  report.rounds = o.repeat;
  report.baseline = o.baseline.empty() ? "bypass" : o.baseline;
  std::optional<TempDisk> disk;
  std::optional<BackendProcess> backend;
  std::string backend_binary;
  std::string socket_path = o.socket_path;
  UniqueFd first_connection;
  if (socket_path.empty()) {
    std::string blk_file = o.blk_file;
    if (blk_file.empty()) {
      auto d = TempDisk::create(plan->disk_size);
      if (!d) {
        spdlog::error("vdma-bench: {}", d.error());
        return apps::kExitRuntimeFailure;
      }
      disk.emplace(std::move(*d));
      blk_file = disk->path();
    }
    socket_path = fmt::format("{}/vdma-bench-{}.sock",
                              std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp", getpid());
    backend_binary = o.backend.empty() ? default_backend() : o.backend;
    std::vector<std::string> argv = {backend_binary, "--socket-path", socket_path, "--blk-file", blk_file};
    // What vdma-bench passes on its own, unless the user's --backend-arg
    // has it:
    //  - as many queues as the workload uses;
    //  - ACCESS_PLATFORM offered, for the iommu and restricted modes;
    //  - the back-end's info lines (a connect per run) would bury the table;
    //  - this front-end sends an INVALIDATE for every unmap and waits for
    //    its ack (strict) or flushes before reusing an IOVA (lazy), so the
    //    back-end may keep buffer translations until then.
    const std::pair<std::string_view, std::string> own[] = {{"--num-queues", std::to_string(o.queues)},
                                                            {"--iommu", "on"},
                                                            {"--log-level", "warn"},
                                                            {"--iotlb-cache", "persistent"}};
    static_assert(std::size(own) == std::size(kOverridableBackendOptions));
    for (const auto& [flag, value] : own) {
      if (!has_option(o.backend_args, flag)) argv.insert(argv.end(), {std::string(flag), value});
    }
    argv.insert(argv.end(), o.backend_args.begin(), o.backend_args.end());
    auto be = spawn_backend(argv, socket_path);
    if (!be) {
      spdlog::error("vdma-bench: starting the back-end: {}", be.error());
      return apps::kExitRuntimeFailure;
    }
    backend.emplace(std::move(*be));
    first_connection = backend->take_connection();
    report.backend = fmt::format("{} --blk-file {} (spawned, pid {})", backend_binary, blk_file, backend->pid());
    // vdma-blk opens its disk before it listens, so it holds it open by now.
    if (disk) disk->unlink_now();
  } else {
    report.backend = fmt::format("{} (--socket-path)", socket_path);
  }

  const BackendGone backend_gone = [&](std::chrono::milliseconds grace) -> std::optional<std::string> {
    if (!backend) return std::nullopt;
    const auto deadline = std::chrono::steady_clock::now() + grace;
    for (;;) {
      auto st = backend->poll_exit();
      if (!st) return fmt::format("the back-end {}: {}", backend_binary, st.error().message());
      if (*st) return fmt::format("the back-end {} {}", backend_binary, describe_wait_status(**st));
      if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  };

  std::vector<std::string> barrier_lines;  // one per mode (the first round's)
  size_t dma_reports = 0;
  const bool tty = isatty(STDERR_FILENO) != 0;
  const auto per_run = plan->spec.ramp_time + plan->spec.runtime;
  const double total_s = std::chrono::duration<double>(per_run).count() * static_cast<double>(plan->modes.size()) *
                         o.repeat;
  const bool show_progress = o.progress == "always" || (o.progress == "auto" && tty && !o.json && total_s > 2.0);
  const auto runs = static_cast<uint32_t>(plan->modes.size()) * o.repeat;
  uint32_t run_index = 0;
  for (uint32_t round = 1; round <= o.repeat && report.stopped.empty(); ++round) {
    for (size_t m = 0; m < plan->modes.size(); ++m) {
      const DmaMode mode = plan->modes[m];
      ++run_index;
      if (const int sig = g_stop_signal; sig != 0) {
        report.stopped = fmt::format("interrupted by {}", signal_name(sig));
        break;
      }
      if (auto gone = backend_gone(kNoGrace)) {
        report.stopped = *gone;
        break;
      }
      ModeRow row;
      row.round = round;
      workload::RunHooks hooks;
      std::optional<workload::ProgressLine> line;
      if (show_progress) {
        line.emplace(workload::ProgressContext{.mode = std::string(to_string(mode)),
                                               .mode_index = static_cast<uint32_t>(m + 1),
                                               .mode_count = static_cast<uint32_t>(plan->modes.size()),
                                               .round = round,
                                               .rounds = o.repeat,
                                               .runtime = plan->spec.runtime,
                                               .ramp_time = plan->spec.ramp_time,
                                               .size = plan->spec.size,
                                               .runs_after = runs - run_index});
        hooks.progress = [&line, tty](const workload::Progress& p) {
          const std::string text = line->format(p);
          std::fprintf(stderr, "%s%s%s", tty ? "\r\033[K" : "", text.c_str(), tty ? "" : "\n");
          std::fflush(stderr);
        };
      }
      std::string barriers;
      run_mode(mode, *plan, std::move(first_connection), socket_path, hooks, backend_gone, row, barriers,
               dma_reports);
      if (round == 1 && !barriers.empty()) barrier_lines.push_back(fmt::format("{}: {}", row.mode, barriers));
      if (show_progress && tty) std::fprintf(stderr, "\r\033[K");
      if (!row.result.interrupted.empty()) {
        // Cut short: its figures would mislead; the finished runs stand.
        report.stopped = fmt::format("{} during {}{}", row.result.interrupted, row.mode,
                                     o.repeat > 1 ? fmt::format(" (round {})", round) : std::string());
        break;
      }
      if (!row.ok()) {
        spdlog::error("vdma-bench: mode {}{}: {}", row.mode, o.repeat > 1 ? fmt::format(" round {}", round) : "",
                      !row.setup_error.empty() ? row.setup_error
                      : !row.result.error.empty()
                          ? row.result.error
                          : fmt::format("{} verify mismatches", row.result.verify_errors));
      }
      report.rows.push_back(std::move(row));
      if (auto gone = backend_gone(kNoGrace)) {
        report.stopped = *gone;
        break;
      }
    }
  }
  if (!report.stopped.empty() && g_stop_signal == 0) spdlog::error("vdma-bench: {}", report.stopped);

  if (o.json) {
    std::printf("%s\n", workload::to_json(report).c_str());
  } else {
    std::printf("%s", workload::format_table(report).c_str());
    for (const std::string& line : barrier_lines) std::printf("barriers: %s\n", line.c_str());
    if (o.dma_debug) {
      if (dma_reports == 0) {
        std::printf("dma-debug: on (no reports)\n");
      } else {
        std::printf("dma-debug: on (%zu report(s), printed above)\n", dma_reports);
      }
    }
  }
  std::fflush(stdout);
  int rc = report.ok() ? 0 : apps::kExitRuntimeFailure;
  if (!o.plot.empty() && !report.rows.empty()) {
    if (auto r = workload::plot_png(report, o.plot); !r) {
      spdlog::error("vdma-bench: --plot: {}", r.error());
      rc = apps::kExitRuntimeFailure;
    } else if (!o.json) {
      std::printf("plot: %s\n", o.plot.c_str());
    }
  }
  if (backend) {
    if (auto st = backend->stop(); st && *st != 0 && report.stopped.empty()) {
      spdlog::warn("vdma-bench: the back-end {}", describe_wait_status(*st));
    }
    // A back-end that was killed could not remove its socket; the name is ours.
    std::error_code ec;
    std::filesystem::remove(socket_path, ec);
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  vdma::log::init();
  Options o;
  CLI::App app{
      "vdma-bench: a userspace virtio-blk driver that speaks vhost-user to any back-end and runs every buffer "
      "through the platform DMA layer. It measures each DMA mode (IOPS, MB/s, latency percentiles from a "
      "histogram of every request, reads and writes apart) and verifies every byte it wrote. With no arguments "
      "it is the demo: it spawns vdma-blk on a temporary 64 MiB file and runs a short verified randrw workload "
      "in every mode.\n"
      "WARNING: the default workload (randrw with --verify) WRITES: with --socket-path it overwrites the disk "
      "behind that back-end. Point it at a scratch disk, or use --rw randread --no-verify.\n"
      "Modes: bypass (descriptors carry guest-physical addresses), iommu-strict / iommu-lazy / iommu-premapped "
      "(buffers mapped through an IOMMU; the back-end translates IOVAs with IOTLB messages this front-end "
      "answers), restricted (confidential guest: only the bounce pool and rings are shared, every buffer "
      "bounces), offset and encryption-bit (bus addresses differ from guest-physical ones).\n"
      "Ratios: --repeat N runs the modes in turn N times (A B C A B C ...) and reports per mode the median and "
      "the min-max; a ratio to the baseline whose spread, (max - min) / median of the per-round ratios, is "
      "above 20% is marked '!' as too wide to trust.\n"
      "Ctrl-C / SIGTERM: the current run drains and is dropped, the spawned back-end is stopped, the temporary "
      "disk removed and the finished runs printed; then vdma-bench ends by that signal (a second one ends it at "
      "once). The spawned vdma-blk never outlives vdma-bench, even after SIGKILL.\n"
      "Exit status: 0 all modes ran and verified, 1 a mode failed or the back-end died, 2 usage error (found "
      "before anything is started).",
      "vdma-bench"};
  auto* socket_opt = app.add_option("--socket-path", o.socket_path,
                 "Drive the vhost-user-blk back-end listening on this socket (vdma-blk, qemu-storage-daemon, ...) "
                 "instead of spawning vdma-blk. The default workload overwrites its disk (see WARNING above)");
  auto* backend_opt = app.add_option("--backend", o.backend,
                                     "vdma-blk binary to spawn (default: the one next to vdma-bench, else $PATH)");
  auto* blk_opt = app.add_option("--blk-file", o.blk_file,
                                 "Disk for the spawned vdma-blk: a path, or null:SIZE (no storage; reads return "
                                 "zeroes, so use --no-verify). Default: a temporary file of --disk-size");
  auto* disk_opt = app.add_option("--disk-size", o.disk_size, "Size of the temporary disk (K/M/G suffixes)")
                       ->capture_default_str();
  auto* args_opt = app.add_option(
      "--backend-arg", o.backend_args,
      "Extra argument for the spawned vdma-blk (repeatable; give it as --backend-arg=ARG), e.g. "
      "--backend-arg=--poll=50. vdma-bench passes --num-queues (--queues), --iommu on, --log-level warn and "
      "--iotlb-cache persistent itself; one of those given here replaces vdma-bench's "
      "(--backend-arg=--iommu=off). --socket-path and --blk-file cannot be given here");
  for (auto* opt : {backend_opt, blk_opt, disk_opt, args_opt}) opt->excludes(socket_opt);
  app.add_option("--mode", o.modes,
                 "DMA mode, repeatable: bypass, iommu-strict, iommu-lazy, iommu-premapped, restricted, offset, "
                 "encryption-bit (default: all, in that order)");
  app.add_option("--topology", o.topology,
                 "Platform topology JSON (docs/topology-example.json) replacing each mode's built-in one; the "
                 "device is \"blk0\"");
  app.add_option("--rw", o.rw, "randread, randwrite, read, write or randrw")->capture_default_str();
  app.add_option("--rwmixread", o.rwmix_read, "Percentage of reads in randrw")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  app.add_option("--bs", o.bs, "Bytes per request (K/M suffixes): a multiple of 512 up to 16M, and of the device "
                               "block size")
      ->capture_default_str();
  app.add_option("--iodepth", o.iodepth, "Requests in flight per queue, at most --queue-size")->capture_default_str();
  app.add_option("--queues", o.queues, "Queues, one thread each")->check(CLI::Range(1, 16))->capture_default_str();
  app.add_option("--runtime", o.runtime_s,
                 "Seconds measured per run (0: until --size is transferred; then --size is needed)")
      ->capture_default_str();
  app.add_option("--ramp-time", o.ramp_time_s,
                 "Seconds each run goes at full depth before the measurement starts (not measured)")
      ->capture_default_str();
  app.add_option("--repeat", o.repeat,
                 "Rounds: run every mode this many times, interleaved (A B C A B C ...); the table gives each "
                 "mode's median and min-max")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--baseline", o.baseline, "Mode the ratios are taken to (default: bypass, when it runs)");
  app.add_option("--seed", o.seed,
                 "Seed of the random offsets (and randrw's read/write choice): the same seed submits the same "
                 "requests on each queue")
      ->capture_default_str();
  app.add_option("--size", o.size, "Stop a run after transferring this many bytes (K/M/G suffixes)");
  app.add_option("--span", o.span, "Bytes of the disk used, from its start (default: the whole disk)");
  app.add_flag("--verify,!--no-verify", o.verify,
               "Write blocks with a header (LBA, generation, checksum), check every read of a written block and "
               "read all of them back after the run; any mismatch is reported with its LBA and fails the run "
               "(default: on)");
  app.add_option("--ring", o.ring, "Virtqueue format: split or packed")
      ->check(CLI::IsMember({"split", "packed"}))
      ->capture_default_str();
  app.add_option("--queue-size", o.queue_size,
                 "Descriptors per virtqueue: 1..32768, a power of two for split rings")
      ->capture_default_str();
  app.add_flag("--poll", o.poll, "Complete by polling the used ring instead of waiting on call eventfds");
  app.add_flag("--json", o.json, "Print the results as JSON instead of the table (every run, and each mode's median "
                                 "and min-max)");
  app.add_flag("--dma-debug", o.dma_debug,
               "Map every buffer through the DMA-API debug checker (slower): it reports mappings leaked at "
               "teardown, double unmaps and CPU access to buffers the device owns; any report is printed and "
               "fails the mode (exit status 1)");
  app.add_option("--plot", o.plot,
                 "Draw IOPS and latency (log scale) per mode into this PNG with gnuplot; failed modes are shown "
                 "as FAILED");
  app.add_option("--progress", o.progress,
                 "Live progress line on stderr (mode i/n, phase, the last interval's rate, time left): auto (on a "
                 "terminal, for runs over 2 s in all), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
  app.add_option("--log-level", o.log_level,
                 "trace, debug, info, warn, error, critical or off (overrides $VDMA_LOG; default info)");
  vdma::apps::add_version_flag(app, "vdma-bench");
  if (auto code = vdma::apps::parse_command_line(app, argc, argv)) return *code;
  if (!o.log_level.empty()) {
    if (auto r = vdma::log::set_level(o.log_level); !r) {
      std::fprintf(stderr, "vdma-bench: --log-level: %s\n", r.error().message().c_str());
      return vdma::apps::kExitUsage;
    }
  }
  const int rc = run(o);
  if (const int sig = g_stop_signal; sig != 0) {
    // Everything is cleaned up: end as the signal asked, so the caller (a
    // shell loop, a test harness) sees an interrupt, not a failure.
    std::fflush(nullptr);
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
  return rc;
}
