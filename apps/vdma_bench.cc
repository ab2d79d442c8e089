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
// Each mode gets a fresh front-end connection to the same back-end. Exit
// status: 0 when every mode ran and verified, 1 when a mode failed (set-up,
// I/O error or verify mismatch), 2 for a usage error.
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
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
#include "vdma/workload/report.h"
#include "vdma/workload/workload.h"

namespace {

using namespace vdma;
using workload::BenchReport;
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
  std::string size;
  std::string span;
  uint32_t rwmix_read = 50;
  bool verify = true;
  std::string ring = "split";
  uint16_t queue_size = 256;
  bool poll = false;
  bool json = false;
  std::string plot;
  std::string progress = "auto";
  std::string log_level;
  bool dma_debug = false;
};

// The temporary disk of a spawned back-end; removed at exit.
class TempDisk {
 public:
  static Result<TempDisk> create(uint64_t size) {
    const char* dir = std::getenv("TMPDIR");
    std::string path = fmt::format("{}/vdma-bench-XXXXXX", dir != nullptr && *dir != 0 ? dir : "/tmp");
    const int fd = mkstemp(path.data());
    if (fd < 0) return Unexpected(system_error(fmt::format("cannot create {}", path), errno));
    const int rc = ftruncate(fd, static_cast<off_t>(size));
    const int err = errno;
    close(fd);
    TempDisk d;
    d.path_ = path;
    if (rc != 0) return Unexpected(system_error(fmt::format("cannot size {} to {} bytes", path, size), err));
    return d;
  }
  TempDisk() = default;
  TempDisk(TempDisk&& o) noexcept : path_(std::exchange(o.path_, {})) {}
  TempDisk& operator=(TempDisk&&) = delete;
  ~TempDisk() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  [[nodiscard]] const std::string& path() const { return path_; }

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

struct Plan {
  std::vector<DmaMode> modes;
  std::optional<PlatformTopology> topology;
  WorkloadSpec spec;
  FrontendOptions frontend;
  blk::BlkDriverOptions driver;
};

Result<Plan> make_plan(const Options& o) {
  Plan p;
  if (o.modes.empty()) {
    p.modes.assign(std::begin(kAllDmaModes), std::end(kAllDmaModes));
  } else {
    for (const auto& m : o.modes) p.modes.push_back(VDMA_TRY(parse_dma_mode(m)));
  }
  if (!o.topology.empty()) p.topology = VDMA_TRY(load_topology(o.topology));

  WorkloadSpec& s = p.spec;
  s.rw = VDMA_TRY(workload::parse_rw_mode(o.rw));
  const uint64_t bs = VDMA_TRY(blk::parse_size(o.bs));
  if (bs == 0 || bs > (uint64_t{16} << 20)) {
    return make_error(BaseErrc::kInvalidArgument, "--bs {}: not in 1..16M", o.bs);
  }
  s.block_size = static_cast<uint32_t>(bs);
  s.iodepth = o.iodepth;
  s.queues = o.queues;
  if (o.runtime_s < 0) return make_error(BaseErrc::kInvalidArgument, "--runtime {}: negative", o.runtime_s);
  s.runtime = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(o.runtime_s));
  if (!o.size.empty()) s.size = VDMA_TRY(blk::parse_size(o.size));
  if (!o.span.empty()) s.span = VDMA_TRY(blk::parse_size(o.span));
  s.read_percent = o.rwmix_read;
  s.verify = o.verify;

  FrontendOptions& f = p.frontend;
  f.num_queues = o.queues;
  f.queue_size = o.queue_size;
  f.ring_format = o.ring == "packed" ? RingFormat::kPacked : RingFormat::kSplit;
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
  if (row.setup_error.empty()) {
    row.setup_error = fmt::format("dma-debug: {} report(s), the first: {}", reports.size(), reports.front().message);
  }
  return reports.size();
}

// Runs one mode on a fresh connection; fills `row`.
void run_mode(DmaMode mode, const Plan& plan, UniqueFd first_connection, const std::string& socket_path,
              const workload::ProgressFn& progress, ModeRow& row, std::string& barriers, size_t& dma_reports) {
  row.mode = std::string(to_string(mode));
  FrontendOptions fo = plan.frontend;
  fo.mode = mode;
  fo.topology = plan.topology;
  auto fe = first_connection.valid() ? VhostUserFrontend::create(std::move(first_connection), fo)
                                     : VhostUserFrontend::connect(socket_path, fo);
  if (!fe) {
    row.setup_error = fe.error().message();
    return;
  }
  const std::shared_ptr<DebugDmaOps> dbg = (*fe)->dma_debug();
  auto drv = blk::BlkDriver::create(**fe, plan.driver);
  if (!drv) {
    row.setup_error = fmt::format("virtio-blk driver: {}", drv.error().message());
  } else if (auto result = workload::run_workload(**drv, plan.spec, progress); !result) {
    row.setup_error = result.error().message();
  } else {
    row.result = std::move(*result);
  }
  const FrontendStats st = (*fe)->stats();
  row.counters = {{"iotlb_misses_served", st.misses_served},
                  {"iotlb_updates_sent", st.updates_sent},
                  {"iotlb_invalidates_sent", st.invalidates_sent},
                  {"iotlb_access_failures", st.access_failures}};
  uint64_t platform_barriers = 0;
  for (uint32_t i = 0; i < (*fe)->num_queues(); ++i) platform_barriers += (*fe)->queue(i).platform_barriers();
  row.counters["platform_dma_barriers"] = platform_barriers;
  barriers = describe_barriers(**fe);
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
    return 2;
  }

  BenchReport report;
  report.spec = plan->spec;
  std::optional<TempDisk> disk;
  std::optional<BackendProcess> backend;
  std::string socket_path = o.socket_path;
  UniqueFd first_connection;
  if (socket_path.empty()) {
    std::string blk_file = o.blk_file;
    if (blk_file.empty()) {
      auto size = blk::parse_size(o.disk_size);
      if (!size || *size == 0) {
        std::fprintf(stderr, "vdma-bench: --disk-size %s: not a size (see --help)\n", o.disk_size.c_str());
        return 2;
      }
      auto d = TempDisk::create(*size);
      if (!d) {
        spdlog::error("vdma-bench: {}", d.error());
        return 1;
      }
      disk.emplace(std::move(*d));
      blk_file = disk->path();
    }
    socket_path = fmt::format("{}/vdma-bench-{}.sock",
                              std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp", getpid());
    const std::string binary = o.backend.empty() ? default_backend() : o.backend;
    std::vector<std::string> argv = {binary,         "--socket-path", socket_path, "--blk-file",
                                     blk_file,       "--num-queues",  std::to_string(o.queues),
                                     "--iommu",      "on"};
    // The back-end's info lines (a connect per mode) would bury the table;
    // a --backend-arg=--log-level=... wins.
    auto given = [&o](std::string_view flag) {
      return std::any_of(o.backend_args.begin(), o.backend_args.end(),
                         [flag](const std::string& a) { return a.starts_with(flag); });
    };
    if (!given("--log-level")) argv.insert(argv.end(), {"--log-level", "warn"});
    // This front-end sends an INVALIDATE for every unmap and waits for its
    // ack (strict) or flushes before reusing an IOVA (lazy), so the back-end
    // may keep buffer translations until then; a --backend-arg=--iotlb-cache=... wins.
    if (!given("--iotlb-cache")) argv.insert(argv.end(), {"--iotlb-cache", "persistent"});
    argv.insert(argv.end(), o.backend_args.begin(), o.backend_args.end());
    auto be = spawn_backend(argv, socket_path);
    if (!be) {
      spdlog::error("vdma-bench: starting the back-end: {}", be.error());
      return 1;
    }
    backend.emplace(std::move(*be));
    first_connection = backend->take_connection();
    report.backend = fmt::format("{} --blk-file {} (spawned, pid {})", binary, blk_file, backend->pid());
  } else {
    report.backend = fmt::format("{} (--socket-path)", socket_path);
  }

  std::vector<std::string> barrier_lines;
  size_t dma_reports = 0;
  const bool tty = isatty(STDERR_FILENO) != 0;
  const bool show_progress =
      o.progress == "always" || (o.progress == "auto" && tty && !o.json && o.runtime_s > 2.0);
  for (DmaMode mode : plan->modes) {
    ModeRow row;
    workload::ProgressFn progress;
    if (show_progress) {
      const double total = o.runtime_s;
      progress = [mode, total, tty](const workload::Progress& p) {
        const double t = std::chrono::duration<double>(p.elapsed).count();
        std::fprintf(stderr, "%s%-16s %5.1f/%.1f s  %10.0f IOPS  %8.1f MB/s%s", tty ? "\r" : "",
                     std::string(to_string(mode)).c_str(), t, total, t > 0 ? static_cast<double>(p.ios) / t : 0.0,
                     t > 0 ? static_cast<double>(p.bytes) / t / 1e6 : 0.0, tty ? "" : "\n");
        std::fflush(stderr);
      };
    }
    std::string barriers;
    run_mode(mode, *plan, std::move(first_connection), socket_path, progress, row, barriers, dma_reports);
    if (!barriers.empty()) barrier_lines.push_back(fmt::format("{}: {}", row.mode, barriers));
    if (show_progress && tty) std::fprintf(stderr, "\r\033[K");
    if (!row.ok()) {
      spdlog::error("vdma-bench: mode {}: {}", row.mode,
                    !row.setup_error.empty() ? row.setup_error
                    : !row.result.error.empty()
                        ? row.result.error
                        : fmt::format("{} verify mismatches", row.result.verify_errors));
    }
    report.rows.push_back(std::move(row));
  }

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
  if (!o.plot.empty()) {
    if (auto r = workload::plot_png(report, o.plot); !r) {
      spdlog::error("vdma-bench: --plot: {}", r.error());
      return 1;
    }
    if (!o.json) std::printf("plot: %s\n", o.plot.c_str());
  }
  if (backend) {
    if (auto st = backend->stop(); st && *st != 0) {
      spdlog::warn("vdma-bench: the back-end {}", describe_wait_status(*st));
    }
  }
  return report.ok() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  vdma::log::init();
  Options o;
  CLI::App app{
      "vdma-bench: a userspace virtio-blk driver that speaks vhost-user to any back-end and runs every buffer "
      "through the platform DMA layer. It measures each DMA mode (IOPS, MB/s, latency percentiles from a "
      "histogram of every request) and verifies every byte it wrote. With no arguments it is the demo: it "
      "spawns vdma-blk on a temporary 64 MiB file and runs a short verified randrw workload in every mode.\n"
      "Modes: bypass (descriptors carry guest-physical addresses), iommu-strict / iommu-lazy / iommu-premapped "
      "(buffers mapped through an IOMMU; the back-end translates IOVAs with IOTLB messages this front-end "
      "answers), restricted (confidential guest: only the bounce pool and rings are shared, every buffer "
      "bounces), offset and encryption-bit (bus addresses differ from guest-physical ones).\n"
      "Exit status: 0 all modes ran and verified, 1 a mode failed, 2 usage error.",
      "vdma-bench"};
  auto* socket_opt = app.add_option("--socket-path", o.socket_path,
                 "Drive the vhost-user-blk back-end listening on this socket (vdma-blk, qemu-storage-daemon, ...) "
                 "instead of spawning vdma-blk");
  auto* backend_opt = app.add_option("--backend", o.backend,
                                     "vdma-blk binary to spawn (default: the one next to vdma-bench, else $PATH)");
  auto* blk_opt = app.add_option("--blk-file", o.blk_file,
                                 "Disk for the spawned vdma-blk: a path, or null:SIZE (no storage; reads return "
                                 "zeroes, so use --no-verify). Default: a temporary file of --disk-size");
  auto* disk_opt = app.add_option("--disk-size", o.disk_size, "Size of the temporary disk (K/M/G suffixes)")
                       ->capture_default_str();
  auto* args_opt = app.add_option("--backend-arg", o.backend_args,
                                  "Extra argument for the spawned vdma-blk (repeatable), e.g. --backend-arg=--poll=50");
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
  app.add_option("--bs", o.bs, "Bytes per request (K/M suffixes), a multiple of the device block size")
      ->capture_default_str();
  app.add_option("--iodepth", o.iodepth, "Requests in flight per queue")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--queues", o.queues, "Queues, one thread each")->check(CLI::Range(1, 16))->capture_default_str();
  app.add_option("--runtime", o.runtime_s, "Seconds per mode (0: until --size is transferred)")
      ->capture_default_str();
  app.add_option("--size", o.size, "Stop a mode after transferring this many bytes (K/M/G suffixes)");
  app.add_option("--span", o.span, "Bytes of the disk used, from its start (default: the whole disk)");
  app.add_flag("--verify,!--no-verify", o.verify,
               "Write blocks with a header (LBA, generation, checksum), check every read of a written block and "
               "read all of them back after the run; any mismatch is reported with its LBA and fails the run "
               "(default: on)");
  app.add_option("--ring", o.ring, "Virtqueue format: split or packed")
      ->check(CLI::IsMember({"split", "packed"}))
      ->capture_default_str();
  app.add_option("--queue-size", o.queue_size, "Descriptors per virtqueue")
      ->check(CLI::Range(1, 32768))
      ->capture_default_str();
  app.add_flag("--poll", o.poll, "Complete by polling the used ring instead of waiting on call eventfds");
  app.add_flag("--json", o.json, "Print the results as JSON instead of the table");
  app.add_flag("--dma-debug", o.dma_debug,
               "Map every buffer through the DMA-API debug checker (slower): it reports mappings leaked at "
               "teardown, double unmaps and CPU access to buffers the device owns; any report is printed and "
               "fails the mode (exit status 1)");
  app.add_option("--plot", o.plot, "Draw IOPS and latency per mode into this PNG with gnuplot");
  app.add_option("--progress", o.progress,
                 "Live progress line on stderr: auto (on a terminal, for runs over 2 s), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
  app.add_option("--log-level", o.log_level,
                 "trace, debug, info, warn, error, critical or off (overrides $VDMA_LOG; default info)");
  vdma::apps::add_version_flag(app, "vdma-bench");
  if (auto code = vdma::apps::parse_command_line(app, argc, argv)) return *code;
  if (!o.log_level.empty()) {
    if (auto r = vdma::log::set_level(o.log_level); !r) {
      std::fprintf(stderr, "vdma-bench: --log-level: %s\n", r.error().message().c_str());
      return 2;
    }
  }
  return run(o);
}
