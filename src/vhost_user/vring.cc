#include "vring.h"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <system_error>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "vdma/vhost_user/encode.h"
#include "vdma/virtio/packed_device_queue.h"
#include "io_thread.h"

namespace vdma::vhost_user {

namespace {

// An IOTLB read section in IOMMU mode, nothing in bypass (the memory table
// does not change while a worker runs).
class SectionGuard {
 public:
  explicit SectionGuard(std::optional<ReaderHandle>& reader) noexcept {
    if (reader) section_.emplace(*reader);
  }
  [[nodiscard]] const ReadSection* get() const noexcept { return section_ ? &*section_ : nullptr; }

 private:
  std::optional<ReadSection> section_;
};

IotlbPerm to_perm(Access a) noexcept { return static_cast<IotlbPerm>(static_cast<uint8_t>(a) & 3u); }

bool is_translation_error(const Error& e) noexcept {
  return e.is(MemErrc::kNotMapped) || e.is(MemErrc::kPermissionDenied);
}

}  // namespace

Result<std::unique_ptr<Vring>> Vring::create(uint32_t index) {
  auto control = EventFd::create();
  if (!control) return std::move(control).error().with_context("vring worker");
  std::unique_ptr<Vring> v(new Vring(std::move(*control)));
  v->index = index;
  return v;
}

Vring::~Vring() {
  stop_worker();
  queue_.reset();
  view_.reset();
  reader_.reset();
}

Result<RingAddresses> Vring::ring_addresses() const {
  VDMA_CHECK(addr.has_value(), "ring addresses used before SET_VRING_ADDR");
  if (services_.iotlb != nullptr) {
    // vhost-user.rst SET_VRING_ADDR: with ACCESS_PLATFORM the ring addresses are IOVAs.
    return RingAddresses{DmaAddr(addr->desc.as_iova().value()), DmaAddr(addr->avail.as_iova().value()),
                         DmaAddr(addr->used.as_iova().value())};
  }
  // Without it they are front-end user addresses; the queue works in guest
  // addresses (what descriptors carry), so translate through the table.
  const RingLayout l = ring_layout(format_, num);
  const BackendMemoryTable& m = *services_.memory;
  RingAddresses rings;
  rings.desc = VDMA_TRY(m.user_to_guest(addr->desc.as_user(), l.desc_size));
  rings.driver = VDMA_TRY(m.user_to_guest(addr->avail.as_user(), l.driver_size));
  rings.device = VDMA_TRY(m.user_to_guest(addr->used.as_user(), l.device_size));
  return rings;
}

Result<void> Vring::start(const WorkerServices& services, RingFormat format, uint64_t features) {
  VDMA_CHECK(!running() && num != 0 && addr.has_value() && kick.valid(), "vring started before it is configured");
  if (queue_ && (format != format_ || features != features_ || (services.iotlb != nullptr) != (view_ != nullptr))) {
    drop_queue();
  }
  services_ = services;
  format_ = format;
  features_ = features;
  broken_ = false;
  stat_broken_.store(false, std::memory_order_relaxed);
  if (services.iotlb != nullptr) {
    if (!view_) view_ = std::make_unique<IotlbQueueView>(*services.iotlb);
    view_->set_tracking(services.per_request_iotlb);
    if (!reader_) reader_.emplace(VDMA_TRY(services.iotlb->register_reader()));
  } else if (!queue_) {
    queue_ = VDMA_TRY(make_queue(*services.memory));
  }
  size_requests();
  stop_.store(false, std::memory_order_relaxed);
  polling_ = false;
  if (services.io_thread != nullptr) {
    attached_ = true;
    services.io_thread->attach(*this);
    return ok();
  }
  try {
    thread_ = std::thread([this] { worker_main(); });
  } catch (const std::system_error& e) {
    return make_error(BaseErrc::kSystem, "vring {}: cannot start its worker thread: {}", index, e.what());
  }
  // Named after its queue (top, perf, gdb); 15 characters at most.
  const std::string name = fmt::format("vdma-vq{}", index);
  (void)::pthread_setname_np(thread_.native_handle(), name.c_str());
  return ok();
}

void Vring::stop_worker() {
  if (!running()) return;
  // Release pairs with the worker's acquire load: once it sees the flag it
  // also sees everything the session did before asking it to stop.
  stop_.store(true, std::memory_order_release);
  wake();
  if (attached_) {
    // The IoThread quiesces the ring (as worker_main's end does) and lets
    // it go; its mutex orders the ring's state before what follows here.
    services_.io_thread->detach(*this);
    attached_ = false;
  } else {
    thread_.join();
  }
  stop_.store(false, std::memory_order_relaxed);
  control_.drain();
}

void Vring::drop_queue() {
  VDMA_CHECK(!running(), "drop_queue() while the worker runs");
  if (queue_) base = position();
  queue_.reset();
  chain_.clear();
  parked_ = false;
  broken_ = false;
  stat_broken_.store(false, std::memory_order_relaxed);
  clear_misses();
  // stop_worker() waited for every request in flight; unpublished ones are
  // in position() (or the inflight region) and run again.
  VDMA_CHECK(in_flight_ == 0, "drop_queue() with requests in flight");
  done_.clear();
  free_tags_.clear();
  for (uint32_t t = static_cast<uint32_t>(requests_.size()); t-- > 0;) {
    Request& r = requests_[t];
    r.chain.clear();
    r.translated.clear();
    r.push_prepared = false;
    free_tags_.push_back(t);
  }
  // Recovered again from the region when the queue is next created.
  forget_inflight();
  // The view goes with the queue: its recorded ring ranges (the ring
  // translation cache) must not survive a stopped ring.
  view_.reset();
  reader_.reset();
}

void Vring::size_requests() {
  if (!done_.empty() || requests_in_use() != 0) return;  // kept across stop/start
  const uint32_t device_max = services_.device->max_in_flight(index);
  // A synchronous device finishes each request in start(), and its used
  // entry is pushed before the next is popped (a device that blocks in
  // handle() must not hold finished requests back); one notification per
  // batch still covers them all.
  const uint32_t want = std::max<uint32_t>(1, std::min<uint32_t>(num, device_max));
  if (requests_.size() == want) return;
  requests_.clear();
  requests_.resize(want);
  free_tags_.clear();
  // Lowest tag on top: a shallow queue keeps reusing the same few requests.
  for (uint32_t t = want; t-- > 0;) free_tags_.push_back(t);
  reaped_.resize(std::min<uint32_t>(want, 64));
}

uint16_t Vring::position() const noexcept {
  if (!queue_) return base.value_or(format_ == RingFormat::kPacked ? PackedDeviceQueue::kFreshPosition : 0);
  // Requests popped but without a used entry: a parked chain (popped, not
  // processed) and requests processed whose used entry could not be
  // published (the used ring lost its translation). They count as available
  // so the next owner of the ring processes them (vhost-user.rst
  // GET_VRING_BASE: the index of the next descriptor to process); running a
  // block request twice is harmless, as the driver still owns nothing of
  // it. With an inflight region they stay in flight there instead, and the
  // next owner recovers them from it.
  const bool tracked = inflight_ || packed_inflight_;
  uint32_t unpublished = 0;
  uint64_t oldest_seq = ~uint64_t{0};
  const DescriptorChain* oldest = nullptr;
  if (parked_ && !resubmitted_) {
    ++unpublished;
    oldest_seq = pops_;
    oldest = &chain_;
  }
  if (!tracked) {
    for (const uint32_t t : done_) {
      const Request& r = requests_[t];
      if (r.resubmitted) continue;
      ++unpublished;
      if (r.pop_seq < oldest_seq) {
        oldest_seq = r.pop_seq;
        oldest = &r.chain;
      }
    }
  }
  if (unpublished == 0) return queue_->avail_position();
  if (format_ == RingFormat::kSplit) return static_cast<uint16_t>(queue_->avail_position() - unpublished);
  return static_cast<uint16_t>(oldest->position | (oldest->wrap ? 0x8000u : 0u));
}

void Vring::wake() noexcept { (void)control_.signal(); }

void Vring::update_arrived() noexcept {
  if (awaiting_update_.load(std::memory_order_relaxed)) (void)control_.signal();
}

QueueStats Vring::stats() const noexcept {
  QueueStats s;
  s.index = index;
  s.running = stat_running_.load(std::memory_order_relaxed);
  s.needs_reset = stat_broken_.load(std::memory_order_relaxed);
  s.requests = stat_requests_.load(std::memory_order_relaxed);
  s.bytes = stat_bytes_.load(std::memory_order_relaxed);
  s.in_flight = stat_in_flight_.load(std::memory_order_relaxed);
  s.access_fails = stat_access_fails_.load(std::memory_order_relaxed);
  s.misses_sent = stat_misses_sent_.load(std::memory_order_relaxed);
  s.misses_deferred = stat_misses_deferred_.load(std::memory_order_relaxed);
  return s;
}

// --- Worker thread -------------------------------------------------------------

Vring::Next Vring::turn() {
  // Before any walk of this step: an UPDATE counted after this load may
  // have come too late for the walk (wait() then does not sleep).
  if (services_.iotlb_inserted != nullptr) seen_inserted_ = services_.iotlb_inserted->load(std::memory_order_acquire);
  return step();
}

void Vring::worker_main() {
  stat_running_.store(true, std::memory_order_relaxed);
  while (!stop_.load(std::memory_order_acquire)) {
    const Next next = turn();
    if (next == Next::kAgain) continue;
    if (stop_.load(std::memory_order_acquire)) break;
    wait(next);
  }
  quiesce();
  stat_running_.store(false, std::memory_order_relaxed);
}

void Vring::quiesce() {
  // The session changes the memory table, the rings or the IOTLB once this
  // returns: no request may still use them.
  while (in_flight_ > 0) {
    reap();
    if (in_flight_ == 0) break;
    pollfd pfd{services_.device->completion_fd(index), POLLIN, 0};
    const int r = ::poll(&pfd, 1, pfd.fd >= 0 ? 1000 : 1);
    if (r < 0 && errno != EINTR) {
      spdlog::error("vhost-user vring {}: poll on the device's completions: {}", index, std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  if (!broken_ && queue_ && !done_.empty()) {
    std::optional<Next> n = publish_done();
    for (int tries = 0; n == Next::kRetrySoon && tries < 1000; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      n = publish_done();
    }
    if (n) {
      spdlog::warn("vhost-user vring {}: {} completed requests could not be published before the ring stopped", index,
                   done_.size());
    }
    notify_driver();
  }
}

Vring::Next Vring::step() {
  if (broken_) {
    // Requests in flight still finish (their pins go); nothing is published
    // on a queue that needs a reset.
    reap();
    return Next::kWaitControl;
  }
  if (!queue_) {
    const Next n = create_queue_iommu();
    if (!queue_) return n;
  }
  if (signal_resumed_) {
    signal_resumed_ = false;
    spdlog::debug("vhost-user vring {}: resumed at avail position {:#x}: signalling the driver once", index,
                  queue_->avail_position());
    (void)eventfd_signal(call.get());
  }
  reap();
  if (!done_.empty()) {
    // Completed requests go out before anything else, oldest first.
    const std::optional<Next> n = publish_done();
    notify_driver();
    if (n) return *n;
  }
  if (parked_) {
    if (free_tags_.empty()) return Next::kWaitControl;  // a completion frees one
    if (const std::optional<Next> n = resume_parked()) return *n;
    services_.device->submit(index);
  }
  return drain();
}

Vring::Next Vring::create_queue_iommu() {
  std::optional<Fault> fault;
  std::optional<Error> failure;
  {
    SectionGuard section(reader_);
    fault = find_ring_fault(*section.get());
    if (!fault) {
      // Inside the section: create() reads the used index through the ring
      // pointers it just translated.
      auto q = make_queue(*view_);
      if (q) {
        queue_ = std::move(*q);
      } else if (!is_translation_error(q.error())) {
        failure = std::move(q).error();
      }
    }
  }
  if (fault) {
    report_fault(*fault);
    return Next::kWaitControl;
  }
  if (failure) {
    enter_broken(*failure);
    return Next::kWaitControl;
  }
  // Either created, or a concurrent INVALIDATE removed a ring mapping
  // between the lookup and create(): look again.
  if (queue_) clear_misses();
  return Next::kAgain;
}

void Vring::clear_misses() noexcept {
  outstanding_miss_.reset();
  also_sent_.clear();
}

std::optional<Vring::Fault> Vring::find_ring_fault(const ReadSection& section) {
  more_faults_.clear();
  const Result<RingAddresses> rings = ring_addresses();
  if (!rings) return std::nullopt;
  const RingLayout l = ring_layout(format_, num);
  struct Area {
    DmaAddr addr;
    uint64_t len;
    Access access;
  };
  // The accesses the queues ask for in translate_ring(): split reads the
  // table and avail ring and writes the used ring; packed writes used
  // descriptors back into the descriptor ring and its device event area.
  const bool split = format_ == RingFormat::kSplit;
  const Area areas[3] = {
      {rings->desc, l.desc_size, split ? Access::kRead : Access::kReadWrite},
      {rings->driver, l.driver_size, Access::kRead},
      {rings->device, l.device_size, split ? Access::kReadWrite : Access::kWrite},
  };
  for (const Area& a : areas) {
    auto r = services_.iotlb->lookup(section, Iova(a.addr.value()), a.len, a.access, lookup_);
    // An error is an IOVA range that wraps: create() rejects it with a clear message.
    if (!r) return std::nullopt;
    if (!lookup_.misses.empty()) return Fault{lookup_.misses.front().start, a.access, false};
    if (!lookup_.permission_failures.empty()) return Fault{lookup_.permission_failures.front().start, a.access, true};
  }
  return std::nullopt;
}

std::optional<Vring::Fault> Vring::find_chain_fault(const ReadSection& section) {
  more_faults_.clear();
  auto r = services_.iotlb->lookup(section, Iova(chain_.fault_addr.value()), chain_.fault_len, chain_.fault_access,
                                   lookup_);
  if (!r) return std::nullopt;
  if (lookup_.misses.empty()) {
    if (!lookup_.permission_failures.empty()) {
      return Fault{lookup_.permission_failures.front().start, chain_.fault_access, true};
    }
    return std::nullopt;
  }
  const Fault first{lookup_.misses.front().start, chain_.fault_access, false};
  // Every other range the chain misses, asked for with the first: the rest
  // of this descriptor's, then those of the descriptors the walk listed
  // after it (DescriptorChain::more_faults).
  const auto add = [this](Access access) {
    for (const AddrRange<Iova>& m : lookup_.misses) {
      if (more_faults_.size() == kMaxMoreMisses) return;
      more_faults_.push_back(Fault{m.start, access, false});
    }
  };
  lookup_.misses.erase(lookup_.misses.begin());
  add(chain_.fault_access);
  for (const DescriptorChain::FaultRange& f : chain_.more_faults) {
    if (!services_.iotlb->lookup(section, Iova(f.addr.value()), f.len, f.access, lookup_)) continue;
    add(f.access);
  }
  return first;
}

bool Vring::frontend_pending() const noexcept {
  if (services_.frontend_handling == nullptr || services_.frontend_socket < 0) return false;
  if (services_.frontend_handling->load(std::memory_order_seq_cst)) return true;
  pollfd p{services_.frontend_socket, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN) != 0;
}

bool Vring::answer_taken_away(uint64_t asked_seq) const noexcept {
  return services_.iotlb->removed_since(asked_seq);
}

void Vring::report_fault(const Fault& fault) {
  const auto now = std::chrono::steady_clock::now();
  // Before anything is sent: the UPDATE that answers gets this insertion
  // number or a later one (DeviceIotlb::removed_since).
  const uint64_t asked_seq = services_.iotlb->next_insert_seq();
  if (!fault.permission) {
    // Asks that are no longer on their way: those past their resend delay,
    // and those whose answer may have come and been taken away again (an
    // INVALIDATE, e.g. QEMU's whole-space one for a lazy guest's flush, an
    // eviction, a forget): the walk misses them again, and waiting for an
    // answer that already came would stall the chain until the delay.
    std::erase_if(also_sent_, [&](const SentMiss& m) {
      return now >= m.at + kMissResendDelay || answer_taken_away(m.asked_seq);
    });
  }
  if (!fault.permission && outstanding_miss_ && outstanding_miss_->iova == fault.iova &&
      outstanding_miss_->access == fault.access) {
    if (outstanding_miss_->deferred) {
      // Held back while front-end messages were unread: asked for once they
      // are all applied and it still misses, or when the deferral is over.
      if (now < outstanding_miss_->resend_at && frontend_pending()) return;
      outstanding_miss_->deferred = false;
    } else if (answer_taken_away(outstanding_miss_->asked_seq)) {
      // Answered, perhaps, and taken away again before this walk: nothing
      // is on its way, ask again now (same delay: nothing was lost).
      spdlog::trace("vhost-user vring {}: IOTLB MISS {} may have been answered and invalidated: asking again", index,
                    fault.iova);
    } else {
      // One MISS per missing range while its answer may still be on the
      // way; asking again at once only adds load. After the retransmission
      // delay it is sent again (a dropped MISS), with the delay doubled.
      if (now < outstanding_miss_->resend_at) {
        spdlog::trace("vhost-user vring {}: IOTLB MISS {} outstanding: not sent again", index, fault.iova);
        return;
      }
      outstanding_miss_->delay = std::min(outstanding_miss_->delay * 2, kMaxMissResendDelay);
    }
  } else if (!fault.permission) {
    // Asked for with an earlier miss of this chain, and still on its way:
    // wait for that answer, resending when its delay is over.
    const auto sent = std::find_if(also_sent_.begin(), also_sent_.end(),
                                   [&](const SentMiss& m) { return m.iova == fault.iova && m.access == fault.access; });
    if (sent != also_sent_.end()) {
      spdlog::trace("vhost-user vring {}: IOTLB MISS {} asked with an earlier one: not sent again", index, fault.iova);
      outstanding_miss_ = OutstandingMiss{.iova = fault.iova,
                                          .access = fault.access,
                                          .resend_at = sent->at + kMissResendDelay,
                                          .delay = kMissResendDelay,
                                          .asked_seq = sent->asked_seq};
      also_sent_.erase(sent);
      return;
    }
    outstanding_miss_ = OutstandingMiss{
        .iova = fault.iova, .access = fault.access, .resend_at = now, .delay = kMissResendDelay, .asked_seq = asked_seq};
    // The kick is an eventfd, the UPDATEs come on the socket: a worker can
    // read the ring before the session has read an UPDATE announced before
    // the descriptor was published. Wait for those messages (every insert
    // wakes us) instead of asking for what is on its way.
    if (frontend_pending()) {
      outstanding_miss_->deferred = true;
      outstanding_miss_->resend_at = now + kMissDeferral;
      stat_misses_deferred_.store(stat_misses_deferred_.load(std::memory_order_relaxed) + 1,
                                  std::memory_order_relaxed);
      return;
    }
  }
  const Message msg = fault.permission ? encode_iotlb_access_fail(fault.iova, to_perm(fault.access))
                                       : encode_iotlb_miss(fault.iova, to_perm(fault.access));
  spdlog::trace("vhost-user vring {}: -> IOTLB {} {}", index, fault.permission ? "ACCESS_FAIL" : "MISS", fault.iova);
  if (fault.permission) {
    stat_access_fails_.store(stat_access_fails_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  } else {
    stat_misses_sent_.store(stat_misses_sent_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  if (auto r = services_.channel->send(msg); !r) {
    // Never waited for: the channel does not block. An unsent MISS is sent
    // again after the delay; an unsent ACCESS_FAIL is only a report (the
    // queue stops either way).
    if (!fault.permission && outstanding_miss_->delay == kMissResendDelay) {
      spdlog::warn("vhost-user vring {}: cannot send IOTLB MISS for {} now (retrying): {}", index, fault.iova,
                   r.error());
    } else if (fault.permission) {
      spdlog::warn("vhost-user vring {}: cannot send IOTLB ACCESS_FAIL for {}: {}", index, fault.iova, r.error());
    }
  }
  if (fault.permission) return;
  outstanding_miss_->resend_at = now + outstanding_miss_->delay;
  outstanding_miss_->asked_seq = asked_seq;
  // The chain's other misses go out now too, one MISS each, so its walk
  // waits for one round of answers instead of one round trip per range.
  // also_sent_ holds only asks still on their way (pruned above).
  for (const Fault& m : more_faults_) {
    if ((m.iova == fault.iova && m.access == fault.access) ||
        std::any_of(also_sent_.begin(), also_sent_.end(),
                    [&](const SentMiss& a) { return a.iova == m.iova && a.access == m.access; })) {
      continue;
    }
    if (also_sent_.size() == kMaxMoreMisses) break;
    spdlog::trace("vhost-user vring {}: -> IOTLB MISS {} (with {})", index, m.iova, fault.iova);
    if (!services_.channel->send(encode_iotlb_miss(m.iova, to_perm(m.access)))) break;  // asked again on a re-walk
    also_sent_.push_back(SentMiss{m.iova, m.access, now, asked_seq});
    stat_misses_sent_.store(stat_misses_sent_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  more_faults_.clear();
}

void Vring::enter_broken(const Error& why) {
  spdlog::warn("vhost-user vring {}: stopped until the front-end resets it: {}", index, why);
  broken_ = true;
  stat_broken_.store(true, std::memory_order_relaxed);
  clear_misses();
  (void)eventfd_signal(err.get());
}

void Vring::notify_driver() {
  bool notify = false;
  {
    SectionGuard section(reader_);
    notify = queue_->should_notify();
  }
  if (notify) (void)eventfd_signal(call.get());
}

std::optional<Vring::Next> Vring::start_request(const ReadSection* section) {
  VDMA_CHECK(!free_tags_.empty(), "a request started without a free tag");
  const uint32_t tag = free_tags_.back();
  Request& r = requests_[tag];
  std::swap(r.chain, chain_);
  r.resubmitted = resubmitted_;
  r.packed_entry = packed_entry_;
  r.push_prepared = false;
  r.pop_seq = pops_;
  r.translated.clear();
  if (view_ && services_.per_request_iotlb) view_->take_tracked(r.translated);
  // In the section of the walk: the fragments are host pointers taken from
  // translations an INVALIDATE could revoke once it ends, so the request
  // pins them here until its I/O completes.
  if (section != nullptr) r.pin = section->pin();
  std::optional<Result<uint32_t>> now = services_.device->start(index, r.chain, tag);
  free_tags_.pop_back();
  spdlog::trace("vhost-user vring {}: chain {} ({} readable, {} writable bytes{}) started as tag {}: {}", index,
                r.chain.id, r.chain.readable_len, r.chain.writable_len, r.resubmitted ? ", resubmitted" : "", tag,
                now ? "done at once" : "in flight");
  stat_in_flight_.store(requests_in_use(), std::memory_order_relaxed);
  if (!now) {
    ++in_flight_;
    return std::nullopt;
  }
  r.pin.release();
  if (!*now) {
    // The device found no request in the chain (virtio-blk: no status
    // byte). A used length of 0 would read as success: stop the queue.
    free_tags_.push_back(tag);
    enter_broken(std::move(*now).error());
    return Next::kWaitControl;
  }
  r.used = **now;
  done_.push_back(tag);
  return std::nullopt;
}

void Vring::reap() {
  while (in_flight_ > 0) {
    const size_t n = services_.device->reap(index, reaped_);
    for (size_t i = 0; i < n; ++i) {
      const BackendDevice::Completion& c = reaped_[i];
      VDMA_CHECK(c.tag < requests_.size() && in_flight_ > 0, "the device reaped a tag that is not in flight");
      Request& r = requests_[c.tag];
      r.pin.release();
      r.used = c.used;
      spdlog::trace("vhost-user vring {}: tag {} (chain {}) completed, used length {}", index, c.tag, r.chain.id,
                    c.used);
      --in_flight_;
      if (broken_) {
        free_tags_.push_back(c.tag);  // never published: the driver resets the queue
      } else {
        done_.push_back(c.tag);
      }
    }
    if (n < reaped_.size()) return;
  }
}

std::optional<Vring::Next> Vring::publish_done() {
  if (view_ && services_.per_request_iotlb) {
    forget_batch_.clear();
    for (const uint32_t t : done_) {
      const std::vector<AddrRange<Iova>>& tr = requests_[t].translated;
      forget_batch_.insert(forget_batch_.end(), tr.begin(), tr.end());
    }
    if (!forget_batch_.empty()) {
      // Outside any section (a writer), before the used entries are
      // published: from then on the driver may unmap these buffers and reuse
      // their IOVAs, and an invalidation of that may never reach us (QEMU
      // 7.2's lazy domain flush without ATS). One table edit per batch.
      // Never blocking: a writer holding the table may be waiting for the
      // pins of this worker's requests in flight, which only this worker
      // reaps; it retries in a moment, reaping meanwhile.
      if (!services_.iotlb->try_forget(forget_batch_)) return Next::kRetrySoon;
      for (const uint32_t t : done_) requests_[t].translated.clear();
    }
  }
  std::optional<Fault> fault;
  std::optional<Error> failure;
  bool retry = false;
  size_t published = 0;
  {
    SectionGuard section(reader_);
    for (; published < done_.size(); ++published) {
      Request& r = requests_[done_[published]];
      if (auto p = push(r); !p) {
        if (services_.iotlb != nullptr && is_translation_error(p.error())) {
          // An INVALIDATE took the used ring's translation after the request
          // was handled: the completion waits for the UPDATE, it is not lost.
          fault = find_ring_fault(*section.get());
          retry = !fault;  // mapped again meanwhile
        } else {
          failure = std::move(p).error();
        }
        break;
      }
      last_published_seq_ = r.pop_seq;
      free_tags_.push_back(done_[published]);
      stat_requests_.store(stat_requests_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      stat_bytes_.store(stat_bytes_.load(std::memory_order_relaxed) + r.chain.readable_len + r.used,
                        std::memory_order_relaxed);
    }
  }
  done_.erase(done_.begin(), done_.begin() + static_cast<std::ptrdiff_t>(published));
  stat_in_flight_.store(requests_in_use(), std::memory_order_relaxed);
  if (published > 0) {
    spdlog::trace("vhost-user vring {}: {} used entries published, {} in flight", index, published, in_flight_);
  }
  if (failure) {
    enter_broken(*failure);
    return Next::kWaitControl;
  }
  if (fault) {
    report_fault(*fault);
    if (!fault->permission) return Next::kWaitControl;
    enter_broken(Error(MemErrc::kPermissionDenied,
                       fmt::format("the front-end forbids the access the used ring needs at {}", fault->iova)));
    return Next::kWaitControl;
  }
  if (retry) return Next::kAgain;
  if (published > 0) clear_misses();
  return std::nullopt;
}

std::optional<Vring::Next> Vring::dispose_chain_error(const std::optional<Fault>& fault) {
  const Error& why = *chain_.error;
  if (services_.iotlb != nullptr && is_translation_error(why)) {
    if (!fault) {
      parked_ = true;  // mapped since the walk: walk it again
      return Next::kAgain;
    }
    report_fault(*fault);
    if (!fault->permission) {
      parked_ = true;
      return Next::kWaitControl;
    }
  }
  // A bad descriptor, an address outside the memory table, or an access the
  // front-end forbids (ACCESS_FAIL sent above): a driver error. Returning
  // the chain with used length 0 would read as a completed request, so the
  // queue stops (NEEDS_RESET), as for any other ring corruption.
  enter_broken(Error(why).with_context(fmt::format("chain {}", chain_.id)));
  return Next::kWaitControl;
}

std::optional<Vring::Next> Vring::resume_parked() {
  std::optional<Fault> fault;
  std::optional<Error> failure;
  std::optional<std::optional<Next>> outcome;
  bool ring_fault = false;
  {
    SectionGuard section(reader_);
    if (view_) view_->clear_tracked();
    if (auto r = rewalk_current(); !r) {
      if (is_translation_error(r.error())) {
        fault = find_ring_fault(*section.get());
        ring_fault = true;
      } else {
        failure = std::move(r).error();
      }
    } else if (!chain_.error) {
      parked_ = false;
      outcome.emplace(start_request(section.get()));
    } else if (services_.iotlb != nullptr && is_translation_error(*chain_.error)) {
      fault = find_chain_fault(*section.get());
    }
  }
  if (failure) {
    enter_broken(*failure);
    return Next::kWaitControl;
  }
  if (ring_fault) {
    if (!fault) return Next::kAgain;
    report_fault(*fault);
    return Next::kWaitControl;
  }
  if (outcome) {
    clear_misses();
    return *outcome;
  }
  parked_ = false;
  return dispose_chain_error(fault);
}

Vring::Next Vring::drain() {
  // Bounded by the queue size per call, so a driver that keeps the ring full
  // cannot keep the worker from seeing a stop request.
  uint32_t processed = 0;
  const uint32_t budget = num;
  // An IoThread's ring continues the poll window it returned kPoll in.
  bool resume_polling = std::exchange(polling_, false);
  for (;;) {
    // A plain time point and flag: g++ -O2 takes an optional<time_point> here
    // for maybe-uninitialized.
    std::chrono::steady_clock::time_point poll_deadline = poll_deadline_;
    bool polling = std::exchange(resume_polling, false);
    {
      SectionGuard section(reader_);
      queue_->disable_notifications();
    }
    for (;;) {
      if (processed >= budget || stop_.load(std::memory_order_relaxed)) {
        services_.device->submit(index);
        if (publish_done()) {
          notify_driver();
          return Next::kWaitControl;
        }
        notify_driver();
        return Next::kAgain;
      }
      if (free_tags_.empty()) {
        // Every request is in flight or waits for publication: hand the
        // batch to the device, publish what is done, and wait for a
        // completion before popping more.
        services_.device->submit(index);
        reap();
        if (const std::optional<Next> n = publish_done()) {
          notify_driver();
          return *n;
        }
        if (free_tags_.empty()) {
          notify_driver();
          return Next::kWaitControl;
        }
        continue;
      }
      std::optional<Fault> fault;
      std::optional<Error> failure;
      std::optional<std::optional<Next>> outcome;
      bool got_chain = false;
      bool ring_fault = false;
      {
        SectionGuard section(reader_);
        if (view_) view_->clear_tracked();
        auto got = next_chain();
        if (!got) {
          if (services_.iotlb != nullptr && is_translation_error(got.error())) {
            // A ring area lost its mapping (INVALIDATE): ask for it and wait.
            fault = find_ring_fault(*section.get());
            ring_fault = true;
          } else {
            failure = std::move(got).error();
          }
        } else if (*got) {
          got_chain = true;
          if (!chain_.error) {
            outcome.emplace(start_request(section.get()));
          } else if (services_.iotlb != nullptr && is_translation_error(*chain_.error)) {
            fault = find_chain_fault(*section.get());
          }
        }
      }
      if (failure) {
        enter_broken(*failure);
        return Next::kWaitControl;
      }
      if (ring_fault) {
        services_.device->submit(index);
        (void)publish_done();
        notify_driver();
        if (!fault) return Next::kAgain;  // mapped again meanwhile
        report_fault(*fault);
        // A ring-area miss waits for an UPDATE; a permission failure on a
        // ring waits for the front-end to fix it or reset the ring.
        return Next::kWaitControl;
      }
      if (!got_chain) {
        // The ring is empty: the batch goes to the device in one call, and
        // what completed goes back to the driver with one notification.
        services_.device->submit(index);
        reap();
        const bool completed = !done_.empty();
        if (const std::optional<Next> n = publish_done()) {
          notify_driver();
          return *n;
        }
        // What was completed must not wait for a poll to end.
        if (completed) notify_driver();
        // BackendOptions::poll / poll_max: keep looking at the ring (and the
        // device's completions; notifications still off) for a while before
        // paying for a kick and a wake-up.
        const auto window = poll_window();
        if (window.count() == 0 && services_.poll_max.count() == 0) break;
        const auto now = std::chrono::steady_clock::now();
        if (!empty_) {
          empty_ = true;
          empty_since_ = now;
        }
        if (window.count() == 0) break;
        if (!polling) {
          poll_deadline = now + window;
          polling = true;
        }
        if (now >= poll_deadline) break;
        if (services_.io_thread != nullptr) {
          // The thread serves other rings too: it polls them (without
          // sleeping) and steps this one again, notifications still off.
          polling_ = true;
          poll_deadline_ = poll_deadline;
          return Next::kPoll;
        }
        std::this_thread::yield();
        continue;
      }
      polling = false;
      if (empty_) {
        empty_ = false;
        adapt_poll_window(std::chrono::steady_clock::now() - empty_since_);
      }
      std::optional<Next> stop;
      if (outcome) {
        clear_misses();
        stop = *outcome;
      } else {
        stop = dispose_chain_error(fault);
      }
      if (stop) {
        services_.device->submit(index);
        (void)publish_done();
        notify_driver();
        return *stop;
      }
      ++processed;
    }
    notify_driver();
    bool idle = false;
    {
      SectionGuard section(reader_);
      idle = queue_->enable_notifications();
    }
    if (idle) return Next::kWaitKick;
    // Chains arrived while notifications were off: drain them before sleeping
    // (virtio 1.2 §2.7.10: re-check after re-enabling).
  }
}

void Vring::adapt_poll_window(std::chrono::nanoseconds gap) noexcept {
  const std::chrono::nanoseconds max = services_.poll_max;
  if (services_.poll.count() != 0 || max.count() == 0) return;
  constexpr std::chrono::nanoseconds kStart = std::chrono::microseconds(4);
  if (gap <= adaptive_window_) return;  // the poll caught it
  if (gap <= max) {
    // A longer poll would have caught it without a sleep and a kick.
    adaptive_window_ = std::min(max, std::max(kStart, adaptive_window_ * 2));
  } else {
    adaptive_window_ /= 2;
    if (adaptive_window_ < kStart) adaptive_window_ = std::chrono::nanoseconds(0);
  }
  spdlog::trace("vhost-user vring {}: gap {} ns, poll window now {} ns", index, gap.count(), adaptive_window_.count());
}

bool Vring::prepare_wait(Next next, WaitSet& w) {
  w = WaitSet{};
  w.fds[0] = {control_.fd(), POLLIN, 0};
  w.fds[1] = {kick.get(), POLLIN, 0};
  w.fds[2] = {-1, POLLOUT, 0};
  w.fds[3] = {-1, POLLIN, 0};
  w.want_kick = next == Next::kWaitKick;
  if (!w.want_kick) w.fds[1].fd = -1;  // poll ignores negative fds
  // A MISS queued in the back-end channel reaches the front-end only when
  // someone flushes it.
  if (services_.channel != nullptr && services_.channel->has_pending()) w.fds[2].fd = services_.channel->poll_fd();
  if (in_flight_ > 0) w.fds[3].fd = services_.device->completion_fd(index);
  // A MISS waiting for its answer is sent again after its delay (see
  // report_fault), so the wait ends then at the latest.
  if (outstanding_miss_ && next == Next::kWaitControl) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(outstanding_miss_->resend_at -
                                                                    std::chrono::steady_clock::now());
    w.timeout_ms = static_cast<int>(std::clamp<int64_t>(left.count(), 1, kMaxMissResendDelay.count()));
  }
  if (in_flight_ > 0 && w.fds[3].fd < 0) w.timeout_ms = 1;  // a device without a completion fd: poll it
  if (next == Next::kRetrySoon) w.timeout_ms = 1;
  // Waiting on control and not broken: for the answer to a MISS, for an
  // UPDATE that fixes a ring's permission, or for a completion. The session
  // wakes us for an UPDATE only while awaiting_update_ is set
  // (update_arrived), never while we wait for a kick. Dekker with the
  // session's fence: either it sees the flag, or we see its count move past
  // what it was before our walk and look again instead of sleeping.
  w.awaits_update = next == Next::kWaitControl && !broken_ && services_.iotlb_inserted != nullptr;
  if (w.awaits_update) {
    awaiting_update_.store(true, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (services_.iotlb_inserted->load(std::memory_order_relaxed) != seen_inserted_) {
      awaiting_update_.store(false, std::memory_order_relaxed);
      return false;
    }
  }
  return true;
}

void Vring::finish_wait(WaitSet& w, int poll_result) {
  if (w.awaits_update) awaiting_update_.store(false, std::memory_order_relaxed);
  if (poll_result < 0) {
    enter_broken(system_error("poll on the kick eventfd", errno));
    return;
  }
  if ((w.fds[0].revents & POLLIN) != 0) control_.drain();
  if (w.fds[2].fd >= 0 && w.fds[2].revents != 0) services_.channel->flush();
  if (w.want_kick) {
    if ((w.fds[1].revents & POLLIN) != 0) (void)eventfd_drain(kick.get());
    if ((w.fds[1].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
      enter_broken(Error(VhostUserErrc::kBadState, fmt::format("kick fd reports an error (revents 0x{:x})",
                                                                static_cast<unsigned>(w.fds[1].revents))));
    }
  }
}

void Vring::wait(Next next) {
  WaitSet w;
  if (!prepare_wait(next, w)) return;
  int r = 0;
  do {
    r = ::poll(w.fds, 4, w.timeout_ms);
  } while (r < 0 && errno == EINTR);
  finish_wait(w, r);
}

}  // namespace vdma::vhost_user
