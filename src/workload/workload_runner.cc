// run_workload: one thread per queue, each keeping iodepth requests in flight.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "vdma/workload/workload.h"

namespace vdma::workload {
namespace {

using Clock = std::chrono::steady_clock;
using blk::BlkCompletion;
using blk::BlkOp;

constexpr size_t kMaxMismatchesPerQueue = 8;
// A request that takes this long means the back-end is gone or stuck.
constexpr auto kCompletionTimeout = std::chrono::seconds(30);

enum class Phase : uint8_t { kPrefill, kTimed, kVerifyPass };

// State the queue threads share. Each block's generation is written only by
// the thread that owns the block (b % queues), so the vector needs no lock.
struct Shared {
  const WorkloadSpec& spec;
  blk::BlkDriver& driver;
  uint64_t blocks = 0;
  std::vector<uint32_t> generation;  // per block; 0: never written by this run
  std::atomic<uint64_t> bytes_budget_used{0};  // --size accounting, timed phase
  std::atomic<bool> stop{false};               // a queue failed: everyone drains
};

struct Slot {
  uint64_t block = 0;
  BlkOp op = BlkOp::kRead;
  Clock::time_point submitted;
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

  std::atomic<uint64_t> ios{0};    // timed phase, for progress
  std::atomic<uint64_t> bytes{0};  // timed phase, for progress
  uint64_t reads = 0, writes = 0;
  LatencyHistogram latency;
  uint64_t verified = 0, verify_errors = 0;
  std::vector<VerifyMismatch> mismatches;
  std::string error;

 private:
  uint64_t block_of(uint64_t own_index) const noexcept { return own_index * s_.spec.queues + q_; }
  uint64_t lba_of(uint64_t block) const noexcept { return block * (bs_ / blk::kSectorSize); }
  // The next own block index for `phase`, skipping blocks in flight, or
  // nullopt when the phase has no more blocks.
  std::optional<uint64_t> next_index(Phase phase);
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
  uint64_t cursor_ = 0;  // sequential phases
};

std::optional<uint64_t> QueueRunner::next_index(Phase phase) {
  const RwMode rw = s_.spec.rw;
  const bool sequential = phase != Phase::kTimed || rw == RwMode::kRead || rw == RwMode::kWrite;
  if (sequential) {
    // Prefill and the verify pass visit each own block once; a timed
    // sequential run wraps around.
    for (uint64_t tries = 0; tries < own_blocks_; ++tries) {
      if (phase != Phase::kTimed && cursor_ >= own_blocks_) return std::nullopt;
      const uint64_t i = cursor_ % own_blocks_;
      ++cursor_;
      if (phase == Phase::kVerifyPass && s_.generation[block_of(i)] == 0) continue;
      if (!busy_[i]) return i;
    }
    return std::nullopt;
  }
  std::uniform_int_distribution<uint64_t> pick(0, own_blocks_ - 1);
  uint64_t i = pick(rng_);
  // validate() guarantees own_blocks_ >= iodepth, so a free block exists.
  while (busy_[i]) i = (i + 1) % own_blocks_;
  return i;
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
  if (phase == Phase::kTimed) {
    latency.record(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - slot.submitted).count()));
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
  const WorkloadSpec& spec = s_.spec;
  std::array<BlkCompletion, 256> done;
  bool exhausted = false;
  while (true) {
    const bool stopping = exhausted || s_.stop.load(std::memory_order_relaxed) ||
                          (phase == Phase::kTimed && Clock::now() >= deadline);
    bool submitted = false;
    while (!stopping && !free_.empty()) {
      if (phase == Phase::kTimed && spec.size != 0 &&
          s_.bytes_budget_used.fetch_add(bs_, std::memory_order_relaxed) >= spec.size) {
        exhausted = true;
        break;
      }
      const std::optional<uint64_t> own = next_index(phase);
      if (!own) {
        exhausted = true;
        break;
      }
      const uint32_t slot_index = free_.back();
      Slot& slot = slots_[slot_index];
      slot.block = block_of(*own);
      slot.op = pick_read(phase) ? BlkOp::kRead : BlkOp::kWrite;
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
      busy_[*own] = 1;
      submitted = true;
    }
    if (submitted) {
      if (auto r = s_.driver.kick(q_); !r) fail(fmt::format("queue {}: kick: {}", q_, r.error().message()));
    }
    if (free_.size() == spec.iodepth) {
      if (stopping || exhausted || s_.stop.load(std::memory_order_relaxed)) return;
      continue;
    }
    auto n = s_.driver.wait(q_, done, kCompletionTimeout);
    if (!n) {
      // The driver cannot tell us what became of the requests in flight;
      // give up on this queue without touching them again.
      fail(fmt::format("queue {}: {}", q_, n.error().message()));
      return;
    }
    const Clock::time_point now = Clock::now();
    for (size_t i = 0; i < *n; ++i) complete(done[i], phase, now);
  }
}

}  // namespace

Result<WorkloadResult> run_workload(blk::BlkDriver& driver, const WorkloadSpec& spec, const ProgressFn& progress) {
  VDMA_TRY(validate(spec, driver));
  const uint64_t span = spec.span == 0 ? driver.capacity_sectors() * blk::kSectorSize : spec.span;
  Shared shared{spec, driver, 0, {}};
  shared.blocks = span / spec.block_size;
  if (spec.verify) shared.generation.assign(shared.blocks, 0);

  std::vector<std::unique_ptr<QueueRunner>> runners;
  for (uint32_t q = 0; q < spec.queues; ++q) runners.push_back(std::make_unique<QueueRunner>(shared, q));

  const bool read_only_load = spec.rw == RwMode::kRead || spec.rw == RwMode::kRandRead;
  // Phase boundaries: every queue thread arrives; the completion step (run by
  // one thread) stamps the times the result is measured between.
  std::atomic<int64_t> timed_start{0};
  std::atomic<int64_t> timed_end{0};
  std::atomic<bool> timed_running{false};
  int boundary = 0;
  auto on_boundary = [&]() noexcept {
    const int64_t now = Clock::now().time_since_epoch().count();
    if (boundary == 0) {
      timed_start.store(now);
      timed_running.store(true);
    } else if (boundary == 1) {
      timed_end.store(now);
      timed_running.store(false);
    }
    ++boundary;
  };
  std::barrier sync(static_cast<std::ptrdiff_t>(spec.queues), on_boundary);

  std::mutex done_mutex;
  std::condition_variable done_cv;
  uint32_t threads_done = 0;
  std::vector<std::thread> threads;
  for (uint32_t q = 0; q < spec.queues; ++q) {
    threads.emplace_back([&, q] {
      QueueRunner& r = *runners[q];
      if (spec.verify && read_only_load) r.run(Phase::kPrefill, {});
      sync.arrive_and_wait();
      const auto start = Clock::time_point(Clock::duration(timed_start.load()));
      const auto deadline = spec.runtime.count() > 0 ? start + spec.runtime : Clock::time_point::max();
      r.run(Phase::kTimed, deadline);
      sync.arrive_and_wait();
      if (spec.verify) r.run(Phase::kVerifyPass, {});
      std::lock_guard lock(done_mutex);
      ++threads_done;
      done_cv.notify_all();
    });
  }
  {
    std::unique_lock lock(done_mutex);
    while (threads_done < spec.queues) {
      done_cv.wait_for(lock, std::chrono::milliseconds(500));
      if (progress && timed_running.load()) {
        Progress p;
        p.elapsed = Clock::now().time_since_epoch() - Clock::duration(timed_start.load());
        for (const auto& r : runners) {
          p.ios += r->ios.load(std::memory_order_relaxed);
          p.bytes += r->bytes.load(std::memory_order_relaxed);
        }
        lock.unlock();
        progress(p);
        lock.lock();
      }
    }
  }
  for (auto& t : threads) t.join();

  WorkloadResult result;
  result.elapsed = Clock::duration(timed_end.load() - timed_start.load());
  for (const auto& r : runners) {
    result.ios += r->ios.load();
    result.bytes += r->bytes.load();
    result.reads += r->reads;
    result.writes += r->writes;
    result.latency.merge(r->latency);
    result.verified_blocks += r->verified;
    result.verify_errors += r->verify_errors;
    for (const auto& m : r->mismatches) result.mismatches.push_back(m);
    if (result.error.empty() && !r->error.empty()) result.error = r->error;
  }
  return result;
}

}  // namespace vdma::workload
