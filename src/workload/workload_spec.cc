// WorkloadSpec parsing and validation.
#include <bit>

#include <fmt/format.h>

#include "vdma/base/error.h"
#include "vdma/workload/workload.h"

namespace vdma::workload {
namespace {

constexpr uint32_t kMaxIodepth = 32768;  // the largest virtqueue (virtio 1.2 §2.7, §2.8)
constexpr uint32_t kMaxQueues = 256;

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

std::string_view to_string(RwMode m) noexcept {
  switch (m) {
    case RwMode::kRandRead: return "randread";
    case RwMode::kRandWrite: return "randwrite";
    case RwMode::kRead: return "read";
    case RwMode::kWrite: return "write";
    case RwMode::kRandRw: return "randrw";
  }
  return "unknown";
}

std::string_view to_string(RunPhase p) noexcept {
  switch (p) {
    case RunPhase::kPrefill: return "prefill";
    case RunPhase::kRamp: return "ramp";
    case RunPhase::kMeasure: return "measure";
    case RunPhase::kVerify: return "verify";
  }
  return "unknown";
}

Result<RwMode> parse_rw_mode(std::string_view s) {
  for (RwMode m : {RwMode::kRandRead, RwMode::kRandWrite, RwMode::kRead, RwMode::kWrite, RwMode::kRandRw}) {
    if (s == to_string(m)) return m;
  }
  return make_error(BaseErrc::kInvalidArgument, "--rw {}: not one of randread, randwrite, read, write, randrw", s);
}

Result<void> check_spec(const WorkloadSpec& spec) {
  if (spec.block_size == 0 || spec.block_size % blk::kSectorSize != 0) {
    return make_error(BaseErrc::kInvalidArgument, "--bs {}: not a multiple of {}", spec.block_size,
                      blk::kSectorSize);
  }
  if (spec.iodepth == 0 || spec.iodepth > kMaxIodepth) {
    return make_error(BaseErrc::kInvalidArgument, "--iodepth {}: not in 1..{}", spec.iodepth, kMaxIodepth);
  }
  if (spec.queues == 0 || spec.queues > kMaxQueues) {
    return make_error(BaseErrc::kInvalidArgument, "--queues {}: not in 1..{}", spec.queues, kMaxQueues);
  }
  if (spec.runtime.count() < 0) {
    return make_error(BaseErrc::kInvalidArgument, "--runtime {:g}: negative", seconds(spec.runtime));
  }
  if (spec.runtime.count() == 0 && spec.size == 0) {
    return make_error(BaseErrc::kInvalidArgument, "--runtime 0 without --size: the run would not end");
  }
  if (spec.ramp_time.count() < 0) {
    return make_error(BaseErrc::kInvalidArgument, "--ramp-time {:g}: negative", seconds(spec.ramp_time));
  }
  if (spec.rw == RwMode::kRandRw && spec.read_percent > 100) {
    return make_error(BaseErrc::kInvalidArgument, "--rwmixread {}: not a percentage", spec.read_percent);
  }
  if (spec.span != 0) {
    const uint64_t blocks = spec.span / spec.block_size;
    if (blocks < uint64_t{spec.iodepth} * spec.queues) {
      return make_error(BaseErrc::kInvalidArgument,
                        "--span {} holds {} blocks of {} bytes: fewer than --iodepth {} x --queues {}", spec.span,
                        blocks, spec.block_size, spec.iodepth, spec.queues);
    }
  }
  return ok();
}

Result<void> check_ring_options(RingFormat format, uint32_t queue_size, uint32_t iodepth) {
  if (queue_size == 0 || queue_size > kMaxIodepth) {
    return make_error(BaseErrc::kInvalidArgument, "--queue-size {}: not in 1..{}", queue_size, kMaxIodepth);
  }
  if (format == RingFormat::kSplit && !std::has_single_bit(queue_size)) {
    return make_error(BaseErrc::kInvalidArgument,
                      "--queue-size {}: not a power of two (a split ring needs one; --ring packed takes any size)",
                      queue_size);
  }
  if (iodepth > queue_size) {
    return make_error(BaseErrc::kInvalidArgument,
                      "--iodepth {}: above --queue-size {} (a request takes at least one descriptor)", iodepth,
                      queue_size);
  }
  return ok();
}

Result<void> validate(const WorkloadSpec& spec, const blk::BlkDriver& driver) {
  VDMA_TRY(check_spec(spec));
  const uint64_t capacity = driver.capacity_sectors() * blk::kSectorSize;
  const uint64_t span = spec.span == 0 ? capacity : spec.span;
  if (spec.block_size % driver.block_size() != 0) {
    return make_error(BaseErrc::kInvalidArgument, "--bs {}: not a positive multiple of the device block size {}",
                      spec.block_size, driver.block_size());
  }
  if (spec.block_size > driver.max_io_bytes()) {
    return make_error(BaseErrc::kInvalidArgument, "--bs {}: above the driver's largest request, {} bytes",
                      spec.block_size, driver.max_io_bytes());
  }
  if (spec.iodepth > driver.queue_depth()) {
    return make_error(BaseErrc::kInvalidArgument, "--iodepth {}: not in 1..{} (the driver's queue depth)",
                      spec.iodepth, driver.queue_depth());
  }
  if (spec.queues > driver.num_queues()) {
    return make_error(BaseErrc::kInvalidArgument, "--queues {}: not in 1..{} (the queues the device has)",
                      spec.queues, driver.num_queues());
  }
  if (span > capacity) {
    return make_error(BaseErrc::kInvalidArgument, "--span {}: beyond the device's {} bytes", span, capacity);
  }
  const uint64_t blocks = span / spec.block_size;
  if (blocks < uint64_t{spec.iodepth} * spec.queues) {
    return make_error(BaseErrc::kInvalidArgument,
                      "--span {} bytes holds {} blocks of {} bytes: fewer than --iodepth {} x --queues {}", span,
                      blocks, spec.block_size, spec.iodepth, spec.queues);
  }
  // The verify state keeps one 32-bit generation per block.
  constexpr uint64_t kMaxVerifyBlocks = uint64_t{1} << 26;
  if (spec.verify && blocks > kMaxVerifyBlocks) {
    return make_error(BaseErrc::kInvalidArgument,
                      "--verify over {} blocks: more than {} (use a smaller --span or a larger --bs)", blocks,
                      kMaxVerifyBlocks);
  }
  const bool writes = spec.rw != RwMode::kRead && spec.rw != RwMode::kRandRead;
  if ((writes || spec.verify) && driver.read_only()) {
    return make_error(BaseErrc::kInvalidArgument, "--rw {}{}: the device is read-only", to_string(spec.rw),
                      spec.verify ? " with --verify" : "");
  }
  return ok();
}

}  // namespace vdma::workload
