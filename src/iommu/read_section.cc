#include "vdma/iommu/read_section.h"

#include <chrono>
#include <thread>

namespace vdma {
namespace {

// Lets the other hyper-thread (or, on these 2-core machines, the reader we
// wait for) run while we spin.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Waits until `state` no longer holds `seen`. Acquire: the section's exit (or
// the next section's entry, also a release store) happens before our return.
void wait_for_change(const std::atomic<uint64_t>& state, uint64_t seen) noexcept {
  for (uint32_t spins = 0; state.load(std::memory_order_acquire) == seen; ++spins) {
    if (spins < 64) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

// Where this thread last found a free transient slot: transient users on
// different threads then usually claim different slots without a collision.
thread_local uint32_t tls_transient_hint = 0;

}  // namespace

ReadDomain::ReadDomain(uint32_t max_readers)
    : reader_slots_(max_readers), total_slots_(max_readers + kTransientSlots) {
  VDMA_CHECK(max_readers >= 1, "ReadDomain needs room for at least one reader");
  slots_ = std::make_unique<detail::ReaderSlot[]>(total_slots_);
}

ReadDomain::~ReadDomain() {
  VDMA_CHECK(registered_.load(std::memory_order_acquire) == 0, "ReadDomain destroyed while readers are registered");
  for (uint32_t i = 0; i < total_slots_; ++i) {
    VDMA_CHECK((slots_[i].state.load(std::memory_order_acquire) & detail::kSlotInSection) == 0,
               "ReadDomain destroyed while a section is open");
  }
}

Result<ReaderHandle> ReadDomain::register_reader() {
  for (uint32_t i = 0; i < reader_slots_; ++i) {
    std::atomic<uint64_t>& state = slots_[i].state;
    uint64_t s = state.load(std::memory_order_relaxed);
    while ((s & detail::kSlotClaimed) == 0) {
      // acq_rel: the new holder sees the counters the previous holder left.
      if (state.compare_exchange_weak(s, s | detail::kSlotClaimed, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
        registered_.fetch_add(1, std::memory_order_relaxed);
        return ReaderHandle(this, &slots_[i]);
      }
    }
  }
  return make_error(IommuErrc::kLimitExceeded, "all {} reader slots are registered", reader_slots_);
}

void ReadDomain::release_reader(detail::ReaderSlot& slot) noexcept {
  VDMA_CHECK(slot.pins[0].load(std::memory_order_relaxed) == 0 && slot.pins[1].load(std::memory_order_relaxed) == 0,
             "ReaderHandle released while it holds pins");
  // Release: a later holder of the slot sees the counters written so far.
  slot.state.fetch_and(~detail::kSlotClaimed, std::memory_order_release);
  registered_.fetch_sub(1, std::memory_order_relaxed);
}

void ReadDomain::synchronize() const {
  VDMA_CHECK(detail::tls_sections.open == 0,
             "grace-period wait inside a ReadSection: the thread would wait for its own section");
  // Pairs with the fence in every section entry: whatever the caller
  // published before this point is seen by each section this loop does not
  // find open (see read_section.h).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (uint32_t i = 0; i < total_slots_; ++i) {
    const uint64_t s = slots_[i].state.load(std::memory_order_seq_cst);
    if ((s & detail::kSlotInSection) != 0) wait_for_change(slots_[i].state, s);
  }
}

void ReadDomain::wait_for_pins() const {
  VDMA_CHECK(detail::tls_sections.open == 0, "wait_for_pins() inside a ReadSection");
  std::lock_guard lock(pin_waiters_);
  for (int round = 0; round < 2; ++round) {
    // seq_cst: ordered after the caller's publish and grace period.
    const uint32_t old = pin_phase_.fetch_add(1, std::memory_order_seq_cst) & 1u;
    for (uint32_t i = 0; i < total_slots_; ++i) {
      // Acquire: pairs with ReadPin::release().
      for (uint32_t spins = 0; slots_[i].pins[old].load(std::memory_order_acquire) != 0; ++spins) {
        if (spins < 64) {
          cpu_relax();
        } else if (spins < 256) {
          std::this_thread::yield();
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(20));
        }
      }
    }
  }
}

GracePoll ReadDomain::start_poll() const {
  GracePoll poll;
  // Same ordering argument as synchronize().
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (uint32_t i = 0; i < total_slots_; ++i) {
    const uint64_t s = slots_[i].state.load(std::memory_order_seq_cst);
    if ((s & detail::kSlotInSection) != 0) poll.open.emplace_back(i, s);
  }
  return poll;
}

bool ReadDomain::poll_done(GracePoll& poll) const {
  std::erase_if(poll.open, [this](const std::pair<uint32_t, uint64_t>& p) {
    // Acquire, as in wait_for_change().
    return slots_[p.first].state.load(std::memory_order_acquire) != p.second;
  });
  return poll.open.empty();
}

detail::ReaderSlot& ReadDomain::enter_transient() const {
  const uint32_t first = reader_slots_;
  for (uint32_t attempt = 0;; ++attempt) {
    const uint32_t i = first + (tls_transient_hint + attempt) % kTransientSlots;
    std::atomic<uint64_t>& state = slots_[i].state;
    uint64_t s = state.load(std::memory_order_relaxed);
    if ((s & detail::kSlotClaimed) == 0 &&
        state.compare_exchange_strong(
            s, (s + detail::kSlotSectionStep) | detail::kSlotClaimed | detail::kSlotInSection,
            // acq_rel: we see the counters of the previous holder, and a writer
            // that sees this section sees everything before it (as in enter()).
            std::memory_order_acq_rel, std::memory_order_relaxed)) {
      tls_transient_hint = i - first;
      // Orders the claim before the section's loads, as in ReaderHandle::enter().
      std::atomic_thread_fence(std::memory_order_seq_cst);
      return slots_[i];
    }
    if (attempt % kTransientSlots == kTransientSlots - 1) std::this_thread::yield();
  }
}

void ReadDomain::exit_transient(detail::ReaderSlot& slot) const noexcept {
  const uint64_t s = slot.state.load(std::memory_order_relaxed);
  // Release, as in ReaderHandle::exit(); frees the slot for the next user.
  slot.state.store(s & ~(detail::kSlotInSection | detail::kSlotClaimed), std::memory_order_release);
}

}  // namespace vdma
