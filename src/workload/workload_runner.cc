// run_workload: one thread per queue, each keeping iodepth requests in flight.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "vdma/base/error.h"
#include "vdma/workload/workload.h"

namespace vdma::workload {
namespace {

using Clock = std::chrono::steady_clock;
using blk::BlkCompletion;
using blk::BlkOp;

constexpr size_t kMaxMismatchesPerQueue = 8;
// A request that takes this long means the back-end is gone or stuck.
constexpr auto kCompletionTimeout = std::chrono::seconds(30);
// A queue thread waits for completions in slices of this length, so that
// an abandoned run (the back-end died) ends within one slice.
constexpr auto kWaitSlice = std::chrono::milliseconds(50);
// How often the calling thread asks RunHooks::check.
constexpr auto kCheckInterval = std::chrono::milliseconds(50);

enum class Phase : uint8_t { kPrefill, kTimed, kVerifyPass };

// Where the run is, for progress: set by the barrier's completion step.
enum class Stage : int { kBeforeTimed, kTimed, kVerify };

// State the queue threads share. Each block's generation is written only by
// the thread that owns the block (b % queues), so the vector needs no lock.
struct Shared {
  const WorkloadSpec& spec;
  blk::BlkDriver& driver;
  uint64_t blocks = 0;
  std::vector<uint32_t> generation;            // per block; 0: never written by this run
  std::atomic<uint64_t> bytes_budget_used{0};  // --size accounting, measured requests
  std::atomic<bool> stop{false};               // a queue failed or the caller stopped: everyone drains
  std::atomic<bool> abandon{false};            // the device is gone: everyone ends without draining
  // Written by the barrier's completion step, read after the barrier.
  Clock::time_point measure_from{};
  std::atomic<uint64_t> blocks_done{0};   // prefill / verify pass progress
  std::atomic<uint64_t> blocks_total{0};  // verify pass: written blocks
};

struct Slot {
  uint64_t block = 0;
  BlkOp op = BlkOp::kRead;
  bool counted = false;  // submitted once the measurement had started
  Clock::time_point submitted;
};

// One drawn request: an own block index and the operation.
struct Pick {
  uint64_t own = 0;
  BlkOp op = BlkOp::kRead;
};

class QueueRunner {
 public:
  QueueRunner(Shared& shared, uint32_t queue)
      : s_(shared), q_(queue), bs_(shared.spec.block_size),
        own_blocks_((shared.blocks - queue + shared.spec.queues - 1) / shared.spec.queues),
        busy_(own_blocks_, 0), slots_(shared.spec.iodepth), rng_(shared.spec.seed * 0x9e3779b97f4a7c15 + queue) {
    for (uint32_t i = 0; i < s_.spec.iodepth; ++i) free_.push_back(s_.spec.iodepth - 1 - i);
    if (!s_.spec.verify) {
      // Without verify a write's bytes do not matter; give them a pattern
      // once so the device does not see zeroes.
      for (uint32_t i = 0; i < s_.spec.iodepth; ++i) fill_block(s_.driver.buffer(q_, i).first(bs_), 0, 0);
    }
  }

  void run(Phase phase, Clock::time_point deadline);
  // The blocks this queue wrote (the verify pass reads them back).
  [[nodiscard]] uint64_t written_blocks() const noexcept {
    uint64_t n = 0;
    for (uint64_t i = 0; i < own_blocks_; ++i) n += s_.generation[block_of(i)] != 0 ? 1 : 0;
    return n;
  }

  std::atomic<uint64_t> ios{0};    // measured, for progress
  std::atomic<uint64_t> bytes{0};  // measured, for progress
  uint64_t reads = 0, writes = 0;
  LatencyHistogram latency, read_latency, write_latency;
  uint64_t verified = 0, verify_errors = 0;
  std::vector<VerifyMismatch> mismatches;
  std::string error;

 private:
  enum class Next : uint8_t { kReady, kBusy, kDone };

  uint64_t block_of(uint64_t own_index) const noexcept { return own_index * s_.spec.queues + q_; }
  uint64_t lba_of(uint64_t block) const noexcept { return block * (bs_ / blk::kSectorSize); }
  // The next request of `phase` in `out`; kBusy when the drawn block is
  // still in flight (it stays drawn: the sequence never depends on timing),
  // kDone when the phase has no more blocks.
  Next next_request(Phase phase, Pick& out);
  std::optional<uint64_t> draw_index(Phase phase);
  bool pick_read(Phase phase);
  void fail(std::string why) {
    if (error.empty()) error = std::move(why);
    s_.stop.store(true, std::memory_order_relaxed);
  }
  void complete(const BlkCompletion& c, Phase phase, Clock::time_point now);

  Shared& s_;
  const uint32_t q_;
  const uint32_t bs_;
  const uint64_t own_blocks_;
  std::vector<uint8_t> busy_;  // per own block: a request is in flight on it
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  std::mt19937_64 rng_;
  uint64_t cursor_ = 0;        // sequential phases
  std::optional<Pick> held_;   // drawn, waiting for its block to be free
};

std::optional<uint64_t> QueueRunner::draw_index(Phase phase) {
  const RwMode rw = s_.spec.rw;
  if (phase == Phase::kTimed) {
    if (rw == RwMode::kRead || rw == RwMode::kWrite) return cursor_++ % own_blocks_;  // wraps around
    return std::uniform_int_distribution<uint64_t>(0, own_blocks_ - 1)(rng_);
  }
  // Prefill and the verify pass visit each own block once (the verify pass
  // only those written), after a drained phase: none is in flight.
  while (cursor_ < own_blocks_) {
    const uint64_t i = cursor_++;
    if (phase == Phase::kVerifyPass && s_.generation[block_of(i)] == 0) continue;
    return i;
  }
  return std::nullopt;
}

bool QueueRunner::pick_read(Phase phase) {
  switch (phase) {
    case Phase::kPrefill: return false;
    case Phase::kVerifyPass: return true;
    case Phase::kTimed: break;
  }
  switch (s_.spec.rw) {
    case RwMode::kRandRead:
    case RwMode::kRead: return true;
    case RwMode::kRandWrite:
    case RwMode::kWrite: return false;
    case RwMode::kRandRw: return std::uniform_int_distribution<uint32_t>(0, 99)(rng_) < s_.spec.read_percent;
  }
  return true;
}

QueueRunner::Next QueueRunner::next_request(Phase phase, Pick& out) {
  if (!held_) {
    const std::optional<uint64_t> own = draw_index(phase);
    if (!own) return Next::kDone;
    // The block first, then the operation: one fixed order of draws.
    held_ = Pick{*own, pick_read(phase) ? BlkOp::kRead : BlkOp::kWrite};
  }
  if (busy_[held_->own]) return Next::kBusy;
  out = *held_;
  held_.reset();
  return Next::kReady;
}

void QueueRunner::complete(const BlkCompletion& c, Phase phase, Clock::time_point now) {
  Slot& slot = slots_[c.slot];
  const uint64_t own = slot.block / s_.spec.queues;
  busy_[own] = 0;
  free_.push_back(c.slot);
  const bool is_read = slot.op == BlkOp::kRead;
  if (c.status != blk::kBlkStatusOk) {
    fail(fmt::format("queue {}: {} of lba {} ({} bytes) completed with status {}", q_, to_string(slot.op),
                     lba_of(slot.block), bs_, c.status));
    return;
  }
  if (phase != Phase::kTimed) s_.blocks_done.fetch_add(1, std::memory_order_relaxed);
  if (slot.counted) {
    const auto ns =
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - slot.submitted).count());
    latency.record(ns);
    (is_read ? read_latency : write_latency).record(ns);
    (is_read ? reads : writes) += 1;
    ios.fetch_add(1, std::memory_order_relaxed);
    bytes.fetch_add(bs_, std::memory_order_relaxed);
  }
  if (is_read && s_.spec.verify) {
    const uint32_t gen = s_.generation[slot.block];
    if (gen == 0) return;  // never written by this run: nothing is known of its bytes
    ++verified;
    if (auto bad = check_block(s_.driver.buffer(q_, c.slot).first(bs_), lba_of(slot.block), gen)) {
      ++verify_errors;
      if (mismatches.size() < kMaxMismatchesPerQueue) mismatches.push_back(*bad);
    }
  }
}

void QueueRunner::run(Phase phase, Clock::time_point deadline) {
  cursor_ = 0;
  held_.reset();
  const WorkloadSpec& spec = s_.spec;
  std::array<BlkCompletion, 256> done;
  bool exhausted = false;
  // Once the measurement started it stays started; before the timed phase
  // nothing is measured.
  bool measuring = false;
  std::chrono::nanoseconds waited{0};
  while (true) {
    if (s_.abandon.load(std::memory_order_acquire)) return;
    bool stopping = exhausted || s_.stop.load(std::memory_order_relaxed);
    if (phase == Phase::kTimed && !stopping) {
      const Clock::time_point now = Clock::now();
      measuring = measuring || now >= s_.measure_from;
      stopping = now >= deadline;
    }
    bool submitted = false;
    while (!stopping && !free_.empty()) {
      Pick pick;
      const Next next = next_request(phase, pick);
      if (next == Next::kDone) {
        exhausted = true;
        break;
      }
      if (next == Next::kBusy) break;  // a completion frees the block
      if (measuring && spec.size != 0 &&
          s_.bytes_budget_used.fetch_add(bs_, std::memory_order_relaxed) >= spec.size) {
        exhausted = true;
        break;
      }
      const uint32_t slot_index = free_.back();
      Slot& slot = slots_[slot_index];
      slot.block = block_of(pick.own);
      slot.op = pick.op;
      slot.counted = measuring;
      const uint64_t lba = lba_of(slot.block);
      if (slot.op == BlkOp::kWrite && spec.verify) {
        // The generation is bumped at submission: no read of this block can
        // be in flight (busy_), so the next read expects the new one.
        const uint32_t gen = ++s_.generation[slot.block];
        fill_block(s_.driver.buffer(q_, slot_index).first(bs_), lba, gen);
      }
      slot.submitted = Clock::now();
      if (auto r = s_.driver.submit(q_, slot_index, slot.op, lba, bs_); !r) {
        fail(fmt::format("queue {}: submit {} of lba {}: {}", q_, to_string(slot.op), lba, r.error().message()));
        break;
      }
      free_.pop_back();
      busy_[pick.own] = 1;
      submitted = true;
    }
    if (submitted) {
      if (auto r = s_.driver.kick(q_); !r) fail(fmt::format("queue {}: kick: {}", q_, r.error().message()));
    }
    if (free_.size() == spec.iodepth) {
      if (stopping || exhausted || s_.stop.load(std::memory_order_relaxed)) return;
      continue;
    }
    auto n = s_.driver.wait(q_, done, kWaitSlice);
    if (!n) {
      if (n.error().is(BaseErrc::kTimeout) && waited + kWaitSlice < kCompletionTimeout) {
        waited += kWaitSlice;
        continue;  // the loop's top notices an abandoned run
      }
      // The driver cannot tell us what became of the requests in flight;
      // give up on this queue without touching them again.
      fail(fmt::format("queue {}: {}", q_, n.error().message()));
      return;
    }
    waited = std::chrono::nanoseconds{0};
    const Clock::time_point now = Clock::now();
    for (size_t i = 0; i < *n; ++i) complete(done[i], phase, now);
  }
}

}  // namespace

Result<WorkloadResult> run_workload(blk::BlkDriver& driver, const WorkloadSpec& spec, const ProgressFn& progress) {
  RunHooks hooks;
  hooks.progress = progress;
  return run_workload(driver, spec, hooks);
}

Result<WorkloadResult> run_workload(blk::BlkDriver& driver, const WorkloadSpec& spec, const RunHooks& hooks) {
  VDMA_TRY(validate(spec, driver));
  const uint64_t span = spec.span == 0 ? driver.capacity_sectors() * blk::kSectorSize : spec.span;
  Shared shared{spec, driver};
  shared.blocks = span / spec.block_size;
  if (spec.verify) shared.generation.assign(shared.blocks, 0);

  std::vector<std::unique_ptr<QueueRunner>> runners;
  for (uint32_t q = 0; q < spec.queues; ++q) runners.push_back(std::make_unique<QueueRunner>(shared, q));

  const bool prefill = spec.verify && (spec.rw == RwMode::kRead || spec.rw == RwMode::kRandRead);
  // Phase boundaries: every queue thread arrives; the completion step (run by
  // one thread) stamps the times the result is measured between.
  std::atomic<int64_t> timed_start{0};
  std::atomic<int64_t> timed_end{0};
  std::atomic<int> stage{static_cast<int>(Stage::kBeforeTimed)};
  const Clock::time_point run_start = Clock::now();
  int boundary = 0;
  auto on_boundary = [&]() noexcept {
    const Clock::time_point now = Clock::now();
    if (boundary == 0) {
      shared.measure_from = now + spec.ramp_time;
      shared.blocks_done.store(0);
      timed_start.store(now.time_since_epoch().count());
      stage.store(static_cast<int>(Stage::kTimed));
    } else if (boundary == 1) {
      timed_end.store(now.time_since_epoch().count());
      shared.blocks_done.store(0);
      stage.store(static_cast<int>(Stage::kVerify));
    }
    ++boundary;
  };
  std::barrier sync(static_cast<std::ptrdiff_t>(spec.queues), on_boundary);
  if (prefill) shared.blocks_total.store(shared.blocks);

  std::mutex done_mutex;
  std::condition_variable done_cv;
  uint32_t threads_done = 0;
  std::vector<std::thread> threads;
  for (uint32_t q = 0; q < spec.queues; ++q) {
    threads.emplace_back([&, q] {
      QueueRunner& r = *runners[q];
      if (prefill) r.run(Phase::kPrefill, {});
      sync.arrive_and_wait();
      const auto deadline =
          spec.runtime.count() > 0 ? shared.measure_from + spec.runtime : Clock::time_point::max();
      r.run(Phase::kTimed, deadline);
      sync.arrive_and_wait();
      if (spec.verify && !shared.stop.load() && !shared.abandon.load()) {
        shared.blocks_total.fetch_add(r.written_blocks());
        r.run(Phase::kVerifyPass, {});
      }
      std::lock_guard lock(done_mutex);
      ++threads_done;
      done_cv.notify_all();
    });
  }

  std::optional<Interruption> interruption;
  {
    std::unique_lock lock(done_mutex);
    Clock::time_point next_progress = Clock::now() + hooks.progress_interval;
    while (threads_done < spec.queues) {
      done_cv.wait_for(lock, kCheckInterval);
      if (threads_done == spec.queues) break;
      lock.unlock();
      if (hooks.check && !interruption) {
        interruption = hooks.check();
        if (interruption) {
          if (interruption->kind == Interruption::Kind::kAbandon) shared.abandon.store(true, std::memory_order_release);
          shared.stop.store(true);
        }
      }
      const Clock::time_point now = Clock::now();
      if (hooks.progress && now >= next_progress) {
        next_progress = now + hooks.progress_interval;
        Progress p;
        switch (static_cast<Stage>(stage.load())) {
          case Stage::kBeforeTimed:
            p.phase = RunPhase::kPrefill;
            p.elapsed = now - run_start;
            break;
          case Stage::kTimed: {
            const Clock::time_point start(Clock::duration(timed_start.load()));
            const bool ramping = now < shared.measure_from;
            p.phase = ramping ? RunPhase::kRamp : RunPhase::kMeasure;
            p.elapsed = ramping ? now - start : now - shared.measure_from;
            break;
          }
          case Stage::kVerify:
            p.phase = RunPhase::kVerify;
            p.elapsed = now - Clock::time_point(Clock::duration(timed_end.load()));
            break;
        }
        for (const auto& r : runners) {
          p.ios += r->ios.load(std::memory_order_relaxed);
          p.bytes += r->bytes.load(std::memory_order_relaxed);
        }
        p.blocks_done = shared.blocks_done.load(std::memory_order_relaxed);
        p.blocks_total = shared.blocks_total.load(std::memory_order_relaxed);
        // Nothing to show before a prefill or after a run without verify.
        if (p.phase != RunPhase::kPrefill || prefill) hooks.progress(p);
      }
      lock.lock();
    }
  }
  for (auto& t : threads) t.join();

  WorkloadResult result;
  // Measured from the measurement's start (a run that ended during the ramp
  // measured nothing) to the end of the drain.
  const Clock::time_point end(Clock::duration(timed_end.load()));
  const bool reached_timed = boundary >= 2;
  result.elapsed = reached_timed && end > shared.measure_from
                       ? std::chrono::duration_cast<std::chrono::nanoseconds>(end - shared.measure_from)
                       : std::chrono::nanoseconds{0};
  for (const auto& r : runners) {
    result.ios += r->ios.load();
    result.bytes += r->bytes.load();
    result.reads += r->reads;
    result.writes += r->writes;
    result.latency.merge(r->latency);
    result.read_latency.merge(r->read_latency);
    result.write_latency.merge(r->write_latency);
    result.verified_blocks += r->verified;
    result.verify_errors += r->verify_errors;
    for (const auto& m : r->mismatches) result.mismatches.push_back(m);
    if (result.error.empty() && !r->error.empty()) result.error = r->error;
  }
  if (interruption) {
    if (interruption->kind == Interruption::Kind::kAbandon) {
      // The device's disappearance explains whatever the queues reported.
      result.error = interruption->reason;
    } else {
      result.interrupted = interruption->reason;
    }
  }
  return result;
}

}  // namespace vdma::workload
