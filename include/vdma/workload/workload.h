// Workload: an fio-like I/O job run through a BlkDriver, measured with a
// latency histogram and, with verify, checked block by block.
//
//   WorkloadSpec spec{.rw = RwMode::kRandRead, .block_size = 4096, .iodepth = 32,
//                     .runtime = std::chrono::seconds(5)};
//   VDMA_TRY(validate(spec, *driver));
//   WorkloadResult r = VDMA_TRY(run_workload(*driver, spec, [](const Progress& p) { ... }));
//   fmt::print("{:.0f} IOPS, p99 {} ns\n", r.iops(), r.latency.percentile(99));
//
// Threads: one per queue (spec.queues of the driver's queues), each keeping
// `iodepth` requests in flight on its own queue. Blocks are split between
// the queues (block b belongs to queue b % queues), so no two requests ever
// touch the same block at once and the verify state needs no lock.
//
// Stop: after `runtime`, or once `size` bytes were transferred, whichever
// comes first (at least one of them is set). In-flight requests are then
// drained and counted.
//
// Verify: every write carries the verify pattern (verify_pattern.h) with the
// block's next generation; reads of a written block are checked inline; after
// the timed run every written block is read back and checked (not timed).
// For read-only workloads (read, randread) the span is first filled
// sequentially (not timed), so every read has something to check. A device
// error status, a mismatch or a driver error ends the run for that queue; the
// result says which.
//
// Errors of validate(): BaseErrc::kInvalidArgument naming the option
// ("--bs 1000: not a multiple of the device block size 512", "--iodepth 64:
// above the driver's queue depth 32", "--queues 4: the device has 1 queue",
// "--span: 0 bytes", "--verify on a read-only device", ...).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/blk_driver/blk_driver.h"
#include "vdma/workload/latency_histogram.h"
#include "vdma/workload/verify_pattern.h"

namespace vdma::workload {

enum class RwMode : uint8_t { kRandRead, kRandWrite, kRead, kWrite, kRandRw };
[[nodiscard]] std::string_view to_string(RwMode m) noexcept;
// "randread" | "randwrite" | "read" | "write" | "randrw".
[[nodiscard]] Result<RwMode> parse_rw_mode(std::string_view s);

struct WorkloadSpec {
  RwMode rw = RwMode::kRandRead;
  uint32_t block_size = 4096;  // bytes per request
  uint32_t iodepth = 32;       // requests in flight per queue
  uint32_t queues = 1;
  std::chrono::nanoseconds runtime{0};  // 0: no time limit (size must be set)
  uint64_t size = 0;                    // bytes to transfer; 0: no limit (runtime must be set)
  uint64_t span = 0;                    // bytes of the disk used, from sector 0; 0: the whole disk
  uint32_t read_percent = 50;           // randrw only
  bool verify = false;
  uint64_t seed = 1;
};

struct Progress {
  std::chrono::nanoseconds elapsed{0};
  uint64_t ios = 0;
  uint64_t bytes = 0;
};
using ProgressFn = std::function<void(const Progress&)>;

struct WorkloadResult {
  uint64_t ios = 0;  // requests completed in the timed run
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t bytes = 0;
  std::chrono::nanoseconds elapsed{0};
  LatencyHistogram latency;  // submit to completion, every request of the timed run
  // Verify: blocks checked (inline and in the final pass) and what failed.
  uint64_t verified_blocks = 0;
  uint64_t verify_errors = 0;
  std::vector<VerifyMismatch> mismatches;  // the first few
  // The first device error status or driver error, empty when none.
  std::string error;

  [[nodiscard]] double seconds() const noexcept { return std::chrono::duration<double>(elapsed).count(); }
  [[nodiscard]] double iops() const noexcept { return seconds() > 0 ? static_cast<double>(ios) / seconds() : 0; }
  [[nodiscard]] double mb_per_s() const noexcept {
    return seconds() > 0 ? static_cast<double>(bytes) / seconds() / 1e6 : 0;
  }
  [[nodiscard]] bool ok() const noexcept { return error.empty() && verify_errors == 0; }
};

// Checks `spec` against the driver and the device.
[[nodiscard]] Result<void> validate(const WorkloadSpec& spec, const blk::BlkDriver& driver);

// Runs the workload. `progress` (may be empty) is called about twice a
// second from the calling thread. Errors: validate()'s; failures during the
// run are reported in the result, not as an error, so their numbers survive.
[[nodiscard]] Result<WorkloadResult> run_workload(blk::BlkDriver& driver, const WorkloadSpec& spec,
                                                  const ProgressFn& progress = {});

}  // namespace vdma::workload
