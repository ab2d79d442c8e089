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
// Ramp: with `ramp_time`, the timed run starts `ramp_time` earlier; a
// request submitted before the measurement starts is not counted (neither
// in the figures nor in the --size budget), so the figures describe a
// device already at full depth.
//
// Stop: after `runtime` of measurement, or once `size` bytes were
// transferred, whichever comes first (at least one of them is set).
// In-flight requests are then drained and counted.
//
// Offsets: the random offsets of each queue come from a generator seeded by
// (`seed`, queue), drawn one per request in submission order. A drawn block
// that is still in flight is waited for, never replaced, so the sequence of
// blocks (and, for randrw, of reads and writes) each queue submits depends
// only on the seed (with one libstdc++): the same seed gives the same
// requests. With several queues and --size, how the byte budget splits
// between the queues depends on timing.
//
// Verify: every write carries the verify pattern (verify_pattern.h) with the
// block's next generation; reads of a written block are checked inline; after
// the timed run every written block is read back and checked (not timed).
// For read-only workloads (read, randread) the span is first filled
// sequentially (not timed), so every read has something to check. A device
// error status, a mismatch or a driver error ends the run for that queue; the
// result says which.
//
// Interruption (RunHooks::check): the caller is asked about every 50 ms
// whether to go on. kStop drains the requests in flight, skips the verify
// pass and marks the result interrupted; kAbandon (the back-end is gone)
// stops every queue at once without waiting for its requests, which
// stay the device's: the driver must then only be destroyed, with the
// device reset or gone.
//
// Errors of check_spec() (what can be checked without a device, so a
// program can refuse a usage error before it starts anything), all
// BaseErrc::kInvalidArgument with the option's name and value:
//   "--bs 1000: not a multiple of 512", "--bs 0: not a multiple of 512",
//   "--iodepth 0: not in 1..32768", "--queues 0: not in 1..256",
//   "--runtime 0 without --size: the run would not end",
//   "--ramp-time -1: negative", "--rwmixread 101: not a percentage",
//   "--span 16384 holds 4 blocks of 4096 bytes: fewer than --iodepth 8 x --queues 1".
// Errors of validate(): check_spec()'s, then against the device
// ("--bs 1024: not a positive multiple of the device block size 4096",
// "--iodepth 64: not in 1..32 (the driver's queue depth)", "--queues 4: not
// in 1..1 (the queues the device has)", "--span ...: beyond the device's N
// bytes", "--verify over N blocks: ...", "--rw randwrite: the device is
// read-only").
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/blk_driver/blk_driver.h"
#include "vdma/virtio/queue.h"
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
  uint64_t seed = 1;                        // of the random offsets (and randrw's read/write choice)
  std::chrono::nanoseconds ramp_time{0};    // run, not measured, before the measurement
};

// Where a run is; the progress callback's view.
enum class RunPhase : uint8_t {
  kPrefill,  // read workloads with verify: every block written once (not measured)
  kRamp,     // --ramp-time (not measured)
  kMeasure,  // the measured run
  kVerify,   // the read-back of every written block (not measured)
};
[[nodiscard]] std::string_view to_string(RunPhase p) noexcept;

struct Progress {
  RunPhase phase = RunPhase::kMeasure;
  // Since the phase began (kMeasure: since the measurement started).
  std::chrono::nanoseconds elapsed{0};
  uint64_t ios = 0;    // measured requests completed so far
  uint64_t bytes = 0;  // their bytes
  // kPrefill: blocks written so far, of the span's; kVerify: blocks read
  // back so far, of the written ones (the total grows while the queue
  // threads count theirs at the start of the phase).
  uint64_t blocks_done = 0;
  uint64_t blocks_total = 0;
};
using ProgressFn = std::function<void(const Progress&)>;

// What RunHooks::check answers.
struct Interruption {
  enum class Kind : uint8_t {
    kStop,      // drain what is in flight, then end (an interrupt: the device is fine)
    kAbandon,   // end at once; what is in flight will never complete (the device is gone)
  };
  Kind kind = Kind::kStop;
  std::string reason;  // "interrupted by SIGINT", "the back-end was killed by signal 9 (Killed)"
};

struct RunHooks {
  // Called from the calling thread about every progress_interval while the
  // run is in a phase (may be empty).
  ProgressFn progress;
  std::chrono::milliseconds progress_interval{500};
  // Called from the calling thread about every 50 ms; nullopt goes on (may
  // be empty).
  std::function<std::optional<Interruption>()> check;
};

struct WorkloadResult {
  uint64_t ios = 0;  // requests completed in the timed run
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t bytes = 0;
  std::chrono::nanoseconds elapsed{0};
  LatencyHistogram latency;  // submit to completion, every request of the timed run
  LatencyHistogram read_latency;   // the reads among them
  LatencyHistogram write_latency;  // the writes among them
  // Verify: blocks checked (inline and in the final pass) and what failed.
  uint64_t verified_blocks = 0;
  uint64_t verify_errors = 0;
  std::vector<VerifyMismatch> mismatches;  // the first few
  // The first device error status or driver error, or the reason of a
  // kAbandon interruption; empty when none.
  std::string error;
  // The reason of a kStop interruption; the figures cover the run until then.
  std::string interrupted;

  [[nodiscard]] double seconds() const noexcept { return std::chrono::duration<double>(elapsed).count(); }
  [[nodiscard]] double iops() const noexcept { return seconds() > 0 ? static_cast<double>(ios) / seconds() : 0; }
  [[nodiscard]] double mb_per_s() const noexcept {
    return seconds() > 0 ? static_cast<double>(bytes) / seconds() / 1e6 : 0;
  }
  [[nodiscard]] double read_iops() const noexcept {
    return seconds() > 0 ? static_cast<double>(reads) / seconds() : 0;
  }
  [[nodiscard]] double write_iops() const noexcept {
    return seconds() > 0 ? static_cast<double>(writes) / seconds() : 0;
  }
  [[nodiscard]] bool ok() const noexcept { return error.empty() && verify_errors == 0 && interrupted.empty(); }
};

// Checks what needs no device (see the errors above).
[[nodiscard]] Result<void> check_spec(const WorkloadSpec& spec);
// The virtqueue a run will use, before it is set up: the size is 1..32768
// and, for a split ring, a power of two (virtio 1.2 §2.7); every request
// takes at least one descriptor, so iodepth <= size. Errors:
// BaseErrc::kInvalidArgument ("--queue-size 100: not a power of two (a split
// ring needs one; --ring packed takes any size)", "--iodepth 300: above
// --queue-size 256 (a request takes at least one descriptor)").
[[nodiscard]] Result<void> check_ring_options(RingFormat format, uint32_t queue_size, uint32_t iodepth);
// check_spec(), then `spec` against the driver and the device.
[[nodiscard]] Result<void> validate(const WorkloadSpec& spec, const blk::BlkDriver& driver);

// Runs the workload. Errors: validate()'s; failures during the run are
// reported in the result, not as an error, so their numbers survive.
[[nodiscard]] Result<WorkloadResult> run_workload(blk::BlkDriver& driver, const WorkloadSpec& spec,
                                                  const RunHooks& hooks);
// The same with only a progress callback, called about twice a second.
[[nodiscard]] Result<WorkloadResult> run_workload(blk::BlkDriver& driver, const WorkloadSpec& spec,
                                                  const ProgressFn& progress = {});

}  // namespace vdma::workload
