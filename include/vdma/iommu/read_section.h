// ReadDomain, ReaderHandle, ReadSection: read-side critical sections that
// cost a store and a fence, and writer-side grace periods (QSBR/SRCU-like).
// DeviceIotlb is built on them; they know nothing about IOTLBs.
//
//   ReadDomain domain(/*max_readers=*/8);
//   ReaderHandle reader = *domain.register_reader();   // one per worker thread
//   {
//     ReadSection section(reader);             // enter: one store, one full fence
//     const Table* t = published.load(std::memory_order_acquire);
//     ... use t and everything it points to ...
//   }                                          // exit: one release store
//
//   // A writer (writers serialise among themselves):
//   const Table* old = published.exchange(next);   // seq_cst
//   domain.synchronize();   // every section that could have loaded `old` has ended
//   delete old;
//
// How it works. Each reader owns a slot: a 64-bit state word alone on its
// cache line. Bit 0 says "inside a section", bit 1 "claimed", and the upper
// bits count the sections entered so far, so a writer can tell a new section
// from the one it saw (no ABA). Entering stores the new state and issues a
// seq_cst fence; this orders the store before every load the reader makes in
// the section (a plain store may otherwise pass a later load: store
// buffering). synchronize() issues a seq_cst fence, then reads each slot and
// waits for every slot that was inside a section to change. Either the
// writer's read saw the reader's entry (and waits for its exit), or the
// reader's fence comes later in the single total order of seq_cst operations,
// and then every load in the section sees what the writer published before
// its fence. The exit is a release store and the writer's wait an acquire
// load, so everything a reader did in its section happens before the writer
// frees what it retired.
//
// Costs. Enter: a relaxed load, a release store and a full fence (a locked
// `or` to the stack with g++ on x86, about 20 cycles); exit: one release store; nested sections of the same reader
// cost a counter increment. No reader ever writes a line another reader
// writes. synchronize(): one cache-line read per slot, plus the time until
// the longest section open at the call ends. Keep sections short: a section
// must never wait for something a writer of the same domain may be doing
// (the writer would wait for it in turn).
//
// Thread safety: ReadDomain is thread-safe. A ReaderHandle is used by one
// thread at a time; it may move to another thread while no section is open.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "vdma/base/check.h"
#include "vdma/base/result.h"
#include "vdma/iommu/errors.h"

namespace vdma {

class ReadDomain;
class ReaderHandle;

namespace detail {

inline constexpr uint64_t kSlotInSection = 1;    // the holder is inside a section
inline constexpr uint64_t kSlotClaimed = 2;      // held by a ReaderHandle or a transient user
inline constexpr uint64_t kSlotSectionStep = 4;  // the section counter lives in bits 2..63

// One reader's slot, alone on its cache line. Only the slot's current holder
// writes it (a ReaderHandle, or a transient user that claimed it with a CAS),
// so the counters are bumped with a plain load and store, not a locked RMW;
// holders follow each other through the acq_rel claim and release exit.
struct alignas(64) ReaderSlot {
  std::atomic<uint64_t> state{0};
  std::atomic<uint64_t> hits{0};
  std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> permission_failures{0};
  // A word the domain's user keeps per reader, read and written only by the
  // slot's current holder (DeviceIotlb: the entry this reader hit last).
  size_t hint = 0;
  // Pins (ReadPin) taken by the holder in each pin phase and not yet
  // released. Written only by the holder (load + store), read by
  // ReadDomain::wait_for_pins().
  std::atomic<uint64_t> pins[2] = {0, 0};
};

// Single-writer increment of a slot counter (readers of the value use relaxed loads).
inline void count(std::atomic<uint64_t>& c) noexcept { c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }

// The innermost section this thread holds, so code below a section (for
// example DeviceMemory::translate, which takes no section argument) can tell
// that it is already protected; and how many sections of any domain the
// thread holds, so a writer called inside one fails loudly instead of
// waiting for itself.
struct ThreadSections {
  const ReadDomain* innermost_domain = nullptr;
  ReaderSlot* innermost_slot = nullptr;
  uint32_t open = 0;
};
inline thread_local constinit ThreadSections tls_sections{};

}  // namespace detail

// Sections that were open when a poll started; see ReadDomain::start_poll().
struct GracePoll {
  std::vector<std::pair<uint32_t, uint64_t>> open;  // (slot index, state seen)
};

class ReadDomain {
 public:
  // Room for `max_readers` registered readers plus a small pool of transient
  // slots (enter_transient). Precondition: max_readers >= 1.
  explicit ReadDomain(uint32_t max_readers);
  // Preconditions (checked): every ReaderHandle has been destroyed and no
  // transient section is open.
  ~ReadDomain();
  ReadDomain(const ReadDomain&) = delete;
  ReadDomain& operator=(const ReadDomain&) = delete;

  // A reader of its own. Errors: IommuErrc::kLimitExceeded when max_readers
  // handles are alive (the message names the limit).
  [[nodiscard]] Result<ReaderHandle> register_reader();

  // Returns once every section that was open when it was called has ended.
  // Sections entered later may still be open. Precondition (checked): the
  // calling thread holds no section of any domain; it would wait for itself,
  // or for a thread that waits for it.
  void synchronize() const;

  // Non-blocking grace period: start_poll() records the sections open now;
  // poll_done() drops those that have ended since and is true once none is
  // left. A true result gives the same guarantee as synchronize().
  [[nodiscard]] GracePoll start_poll() const;
  [[nodiscard]] bool poll_done(GracePoll& poll) const;

  // Returns once every pin (ReadSection::pin) taken before the call has been
  // released. Pins taken meanwhile may still be held. Call it after a writer's
  // synchronize(): every section that could see what the writer retired has
  // ended, so each pin that covers it is counted in one of the two phases.
  // Two rounds, each flipping the phase new pins go to and then waiting for
  // the old phase to drain (SRCU's scheme): a pin taken in a section that
  // read the phase just before a flip is drained by the other round, and new
  // pins never hold a round back. Waits by spinning, then sleeping 20 us.
  // Preconditions (checked): the caller holds no section of any domain and
  // no pin it would wait for (a thread that holds pins must not call it).
  // Thread-safe; concurrent callers serialise.
  void wait_for_pins() const;

  // A section for one short use by a thread without a ReaderHandle: claims a
  // free pool slot and enters in one CAS (then the fence). Waits (yields)
  // while every pool slot is busy. Must be paired with exit_transient().
  [[nodiscard]] detail::ReaderSlot& enter_transient() const;
  void exit_transient(detail::ReaderSlot& slot) const noexcept;

  // Whether the calling thread's innermost section belongs to this domain,
  // and its slot (for counters) when it does.
  [[nodiscard]] detail::ReaderSlot* current_thread_slot() const noexcept {
    return detail::tls_sections.innermost_domain == this ? detail::tls_sections.innermost_slot : nullptr;
  }

  // Calls fn(const ReaderSlot&) for every slot (statistics).
  template <class Fn>
  void for_each_slot(Fn&& fn) const {
    for (uint32_t i = 0; i < total_slots_; ++i) fn(static_cast<const detail::ReaderSlot&>(slots_[i]));
  }

  [[nodiscard]] uint32_t max_readers() const noexcept { return reader_slots_; }
  [[nodiscard]] uint32_t registered_readers() const noexcept { return registered_.load(std::memory_order_relaxed); }

 private:
  friend class ReaderHandle;
  friend class ReadSection;

  static constexpr uint32_t kTransientSlots = 16;

  void release_reader(detail::ReaderSlot& slot) noexcept;

  // Slots [0, reader_slots_) go to ReaderHandles, the rest to transient users.
  std::unique_ptr<detail::ReaderSlot[]> slots_;
  uint32_t reader_slots_ = 0;
  uint32_t total_slots_ = 0;
  std::atomic<uint32_t> registered_{0};
  // Bit 0: the phase new pins count in (wait_for_pins flips it).
  mutable std::atomic<uint32_t> pin_phase_{0};
  mutable std::mutex pin_waiters_;
};

// A registered reader: owns one slot of its domain until destroyed. Move-only.
class ReaderHandle {
 public:
  ReaderHandle() = default;
  ReaderHandle(ReaderHandle&& o) noexcept
      : domain_(std::exchange(o.domain_, nullptr)), slot_(std::exchange(o.slot_, nullptr)) {
    VDMA_CHECK(o.depth_ == 0, "ReaderHandle moved while a section is open");
  }
  ReaderHandle& operator=(ReaderHandle&& o) noexcept {
    if (this != &o) {
      VDMA_CHECK(depth_ == 0 && o.depth_ == 0, "ReaderHandle moved while a section is open");
      reset();
      domain_ = std::exchange(o.domain_, nullptr);
      slot_ = std::exchange(o.slot_, nullptr);
    }
    return *this;
  }
  ReaderHandle(const ReaderHandle&) = delete;
  ReaderHandle& operator=(const ReaderHandle&) = delete;
  // Precondition (checked): no section of this reader is open.
  ~ReaderHandle() { reset(); }

  [[nodiscard]] bool valid() const noexcept { return slot_ != nullptr; }
  [[nodiscard]] const ReadDomain* domain() const noexcept { return domain_; }
  [[nodiscard]] bool in_section() const noexcept { return depth_ != 0; }

 private:
  friend class ReadDomain;
  friend class ReadSection;

  ReaderHandle(ReadDomain* domain, detail::ReaderSlot* slot) noexcept : domain_(domain), slot_(slot) {}

  void reset() noexcept {
    if (slot_ == nullptr) return;
    VDMA_CHECK(depth_ == 0, "ReaderHandle destroyed inside a ReadSection");
    domain_->release_reader(*slot_);
    domain_ = nullptr;
    slot_ = nullptr;
  }

  void enter() noexcept {
    const uint64_t s =
        (slot_->state.load(std::memory_order_relaxed) + detail::kSlotSectionStep) | detail::kSlotInSection;
    // Release: a writer that sees this new section (and so stops waiting for
    // the previous one) also sees everything the previous section did.
    slot_->state.store(s, std::memory_order_release);
    // The store above must be visible before any load in the section (the
    // published table, a ring epoch): without this fence the loads may be
    // satisfied while the store still sits in the store buffer, a concurrent
    // synchronize() would read "not in a section" and return while this
    // section uses what the writer retired. See the header comment.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    saved_ = detail::tls_sections;
    detail::tls_sections = {domain_, slot_, saved_.open + 1};
  }

  void exit() noexcept {
    const uint64_t s = slot_->state.load(std::memory_order_relaxed) & ~detail::kSlotInSection;
    // Release: everything done in the section happens before a writer's
    // acquire load that sees this store, and so before it frees anything.
    slot_->state.store(s, std::memory_order_release);
    detail::tls_sections = saved_;
  }

  ReadDomain* domain_ = nullptr;
  detail::ReaderSlot* slot_ = nullptr;
  uint32_t depth_ = 0;                // open sections of this reader (nesting)
  detail::ThreadSections saved_{};    // the thread's state before the outermost section
};

// A pin keeps what a section found usable after the section ends: a request
// whose I/O runs on host pointers translated in a section holds a pin until
// the I/O completes, and writers that take translations away wait for it
// (ReadDomain::wait_for_pins) after their grace period. Taken and released by
// the thread that holds the ReaderHandle; must be released before the
// handle is destroyed (checked). Move-only; release() is idempotent.
class ReadPin {
 public:
  ReadPin() = default;
  ReadPin(ReadPin&& o) noexcept : slot_(std::exchange(o.slot_, nullptr)), phase_(o.phase_) {}
  ReadPin& operator=(ReadPin&& o) noexcept {
    if (this != &o) {
      release();
      slot_ = std::exchange(o.slot_, nullptr);
      phase_ = o.phase_;
    }
    return *this;
  }
  ReadPin(const ReadPin&) = delete;
  ReadPin& operator=(const ReadPin&) = delete;
  ~ReadPin() { release(); }

  [[nodiscard]] bool held() const noexcept { return slot_ != nullptr; }
  void release() noexcept {
    if (slot_ == nullptr) return;
    std::atomic<uint64_t>& c = slot_->pins[phase_];
    // Release: every access through the pinned translations happens before
    // a waiter's acquire load that sees the count drop.
    c.store(c.load(std::memory_order_relaxed) - 1, std::memory_order_release);
    slot_ = nullptr;
  }

 private:
  friend class ReadSection;
  ReadPin(detail::ReaderSlot* slot, uint32_t phase) noexcept : slot_(slot), phase_(phase) {}

  detail::ReaderSlot* slot_ = nullptr;
  uint32_t phase_ = 0;
};

// RAII read-side section. Everything read from a structure the domain
// protects (and every pointer found there) may be used until the section
// ends. Sections of one reader nest; only the outermost one costs anything.
class ReadSection {
 public:
  explicit ReadSection(ReaderHandle& reader) noexcept : reader_(&reader) {
    VDMA_CHECK(reader.valid(), "ReadSection on an empty ReaderHandle");
    if (reader.depth_++ == 0) reader.enter();
  }
  ~ReadSection() {
    if (--reader_->depth_ == 0) reader_->exit();
  }
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;

  [[nodiscard]] const ReadDomain& domain() const noexcept { return *reader_->domain_; }
  [[nodiscard]] detail::ReaderSlot& slot() const noexcept { return *reader_->slot_; }

  // Pins what this section found (see ReadPin). Inside the section, so a
  // writer's grace period orders the count before its wait_for_pins().
  [[nodiscard]] ReadPin pin() const noexcept {
    detail::ReaderSlot& s = *reader_->slot_;
    const uint32_t phase = reader_->domain_->pin_phase_.load(std::memory_order_acquire) & 1u;
    s.pins[phase].store(s.pins[phase].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return ReadPin(&s, phase);
  }

 private:
  ReaderHandle* reader_;
};

}  // namespace vdma
