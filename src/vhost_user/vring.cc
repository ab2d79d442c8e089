#include "vring.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <system_error>
#include <thread>

#include <spdlog/spdlog.h>

#include "vdma/vhost_user/encode.h"
#include "vdma/virtio/packed_device_queue.h"

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

void signal_eventfd(const UniqueFd& fd) noexcept {
  if (!fd.valid()) return;
  const uint64_t one = 1;
  // EAGAIN means the counter is saturated, so the peer will see it readable
  // anyway; nothing else is worth reporting from a notification.
  [[maybe_unused]] const ssize_t n = ::write(fd.get(), &one, sizeof one);
}

void drain_eventfd(int fd) noexcept {
  uint64_t value = 0;
  [[maybe_unused]] const ssize_t n = ::read(fd, &value, sizeof value);
}

}  // namespace

Result<std::unique_ptr<Vring>> Vring::create(uint32_t index) {
  UniqueFd control(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!control) return Unexpected(system_error("eventfd for a vring worker", errno));
  std::unique_ptr<Vring> v(new Vring(std::move(control)));
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
  if (services.iotlb != nullptr) {
    if (!view_) view_ = std::make_unique<IotlbQueueView>(*services.iotlb);
    if (!reader_) reader_.emplace(VDMA_TRY(services.iotlb->register_reader()));
  } else if (!queue_) {
    queue_ = VDMA_TRY(make_queue(*services.memory));
  }
  stop_.store(false, std::memory_order_relaxed);
  try {
    thread_ = std::thread([this] { worker_main(); });
  } catch (const std::system_error& e) {
    return make_error(BaseErrc::kSystem, "vring {}: cannot start its worker thread: {}", index, e.what());
  }
  return ok();
}

void Vring::stop_worker() {
  if (!running()) return;
  // Release pairs with the worker's acquire load: once it sees the flag it
  // also sees everything the session did before asking it to stop.
  stop_.store(true, std::memory_order_release);
  wake();
  thread_.join();
  stop_.store(false, std::memory_order_relaxed);
  drain_eventfd(control_.get());
}

void Vring::drop_queue() {
  VDMA_CHECK(!running(), "drop_queue() while the worker runs");
  if (queue_) base = position();
  queue_.reset();
  chain_.clear();
  parked_ = false;
  broken_ = false;
  outstanding_miss_.reset();
  // Recovered again from the region when the queue is next created.
  forget_inflight();
  // The view goes with the queue: its recorded ring ranges (the ring
  // translation cache) must not survive a stopped ring.
  view_.reset();
  reader_.reset();
}

uint16_t Vring::position() const noexcept {
  if (!queue_) return base.value_or(format_ == RingFormat::kPacked ? PackedDeviceQueue::kFreshPosition : 0);
  // A parked chain resubmitted from the inflight region stays in flight
  // there, and the next owner recovers it from the region.
  if (!parked_ || resubmitted_) return queue_->avail_position();
  // The parked chain was popped but not processed: report it as available
  // so the next owner of the ring processes it (vhost-user.rst
  // GET_VRING_BASE: the index of the next descriptor to process).
  if (format_ == RingFormat::kSplit) return static_cast<uint16_t>(queue_->avail_position() - 1);
  return static_cast<uint16_t>(chain_.position | (chain_.wrap ? 0x8000u : 0u));
}

void Vring::wake() noexcept { signal_eventfd(control_); }

// --- Worker thread -------------------------------------------------------------

void Vring::worker_main() {
  while (!stop_.load(std::memory_order_acquire)) {
    const Next next = step();
    if (next == Next::kAgain) continue;
    if (stop_.load(std::memory_order_acquire)) break;
    wait(next);
  }
}

Vring::Next Vring::step() {
  if (broken_) return Next::kWaitControl;
  if (!queue_) {
    const Next n = create_queue_iommu();
    if (!queue_) return n;
  }
  if (parked_) {
    const Next n = resume_parked();
    if (parked_ || broken_) return n;
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
  if (queue_) outstanding_miss_.reset();
  return Next::kAgain;
}

std::optional<Vring::Fault> Vring::find_ring_fault(const ReadSection& section) {
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
  auto r = services_.iotlb->lookup(section, Iova(chain_.fault_addr.value()), chain_.fault_len, chain_.fault_access,
                                   lookup_);
  if (!r) return std::nullopt;
  if (!lookup_.misses.empty()) return Fault{lookup_.misses.front().start, chain_.fault_access, false};
  if (!lookup_.permission_failures.empty()) {
    return Fault{lookup_.permission_failures.front().start, chain_.fault_access, true};
  }
  return std::nullopt;
}

void Vring::report_fault(const Fault& fault) {
  if (!fault.permission) {
    // One MISS per missing range: the front-end answers each with an
    // UPDATE, and asking again while the first is outstanding only adds load.
    const std::pair<Iova, Access> key{fault.iova, fault.access};
    if (outstanding_miss_ == key) return;
    outstanding_miss_ = key;
  }
  const Message msg = fault.permission ? encode_iotlb_access_fail(fault.iova, to_perm(fault.access))
                                       : encode_iotlb_miss(fault.iova, to_perm(fault.access));
  if (auto r = services_.channel->send(msg); !r) {
    spdlog::warn("vhost-user vring {}: cannot send IOTLB {} for {}: {}", index,
                 fault.permission ? "ACCESS_FAIL" : "MISS", fault.iova, r.error());
  }
}

void Vring::enter_broken(const Error& why) {
  spdlog::warn("vhost-user vring {}: stopped until the front-end resets it: {}", index, why);
  broken_ = true;
  signal_eventfd(err);
}

void Vring::notify_driver() {
  bool notify = false;
  {
    SectionGuard section(reader_);
    notify = queue_->should_notify();
  }
  if (notify) signal_eventfd(call);
}

Vring::Next Vring::resume_parked() {
  std::optional<Fault> fault;
  std::optional<Error> failure;
  bool still_parked = false;
  {
    SectionGuard section(reader_);
    if (auto r = rewalk_current(); !r) {
      if (is_translation_error(r.error())) {
        fault = find_ring_fault(*section.get());
        still_parked = true;
      } else {
        failure = std::move(r).error();
      }
    } else if (chain_.error) {
      if (is_translation_error(*chain_.error)) fault = find_chain_fault(*section.get());
      if (fault && !fault->permission) {
        still_parked = true;
      } else if (!fault && is_translation_error(*chain_.error)) {
        still_parked = true;  // mapped meanwhile: walk again
      } else if (auto p = push(0); !p) {
        failure = std::move(p).error();
      }
    } else {
      const uint32_t written = services_.device->handle(index, chain_);
      if (auto p = push(written); !p) failure = std::move(p).error();
    }
  }
  if (fault) report_fault(*fault);
  if (failure) {
    enter_broken(*failure);
    return Next::kWaitControl;
  }
  if (still_parked) return fault ? Next::kWaitControl : Next::kAgain;
  parked_ = false;
  outstanding_miss_.reset();
  notify_driver();
  return Next::kAgain;
}

Vring::Next Vring::drain() {
  // Bounded by the queue size per call, so a driver that keeps the ring full
  // cannot keep the worker from seeing a stop request.
  uint32_t processed = 0;
  const uint32_t budget = num;
  for (;;) {
    // A plain time point and flag: g++ -O2 takes an optional<time_point> here
    // for maybe-uninitialized.
    std::chrono::steady_clock::time_point poll_deadline{};
    bool polling = false;
    {
      SectionGuard section(reader_);
      queue_->disable_notifications();
    }
    for (;;) {
      if (processed >= budget || stop_.load(std::memory_order_relaxed)) {
        notify_driver();
        return Next::kAgain;
      }
      std::optional<Fault> fault;
      std::optional<Error> failure;
      bool got_chain = false;
      bool park = false;
      bool ring_fault = false;
      {
        SectionGuard section(reader_);
        auto got = next_chain();
        if (!got) {
          if (services_.iotlb != nullptr && is_translation_error(got.error())) {
            // A ring area lost its mapping (INVALIDATE): ask for it and wait.
            fault = find_ring_fault(*section.get());
            if (!fault) return Next::kAgain;
            ring_fault = true;
          } else {
            failure = std::move(got).error();
          }
        } else if (*got) {
          got_chain = true;
          if (!chain_.error) {
            const uint32_t written = services_.device->handle(index, chain_);
            if (auto p = push(written); !p) failure = std::move(p).error();
          } else {
            if (services_.iotlb != nullptr && is_translation_error(*chain_.error)) {
              fault = find_chain_fault(*section.get());
            }
            if (fault && !fault->permission) {
              park = true;
            } else if (!fault && services_.iotlb != nullptr && is_translation_error(*chain_.error)) {
              park = true;  // mapped since the walk: resume_parked() walks it again
            } else {
              spdlog::debug("vhost-user vring {}: returning chain {} unprocessed: {}", index, chain_.id,
                            *chain_.error);
              if (auto p = push(0); !p) failure = std::move(p).error();
            }
          }
        }
      }
      if (fault) report_fault(*fault);
      if (failure) {
        enter_broken(*failure);
        return Next::kWaitControl;
      }
      if (park) {
        parked_ = true;
        notify_driver();
        return fault ? Next::kWaitControl : Next::kAgain;
      }
      if (ring_fault) {  // ring-area miss or permission failure: the queue waits for an UPDATE
        notify_driver();
        return Next::kWaitControl;
      }
      if (!got_chain) {
        // BackendOptions::poll: keep looking at the ring (notifications still
        // off) for a while before paying for a kick and a wake-up.
        if (services_.poll.count() == 0) break;
        const auto now = std::chrono::steady_clock::now();
        if (!polling) {
          notify_driver();  // what was completed must not wait for the poll to end
          poll_deadline = now + services_.poll;
          polling = true;
        }
        if (now >= poll_deadline) break;
        std::this_thread::yield();
        continue;
      }
      polling = false;
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

void Vring::wait(Next next) {
  pollfd fds[2] = {{control_.get(), POLLIN, 0}, {kick.get(), POLLIN, 0}};
  const nfds_t count = next == Next::kWaitKick ? 2 : 1;
  int r = 0;
  do {
    r = ::poll(fds, count, -1);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    enter_broken(system_error("poll on the kick eventfd", errno));
    return;
  }
  if ((fds[0].revents & POLLIN) != 0) drain_eventfd(control_.get());
  if (count == 2) {
    if ((fds[1].revents & POLLIN) != 0) drain_eventfd(kick.get());
    if ((fds[1].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
      enter_broken(Error(VhostUserErrc::kBadState, fmt::format("kick fd reports an error (revents 0x{:x})",
                                                                static_cast<unsigned>(fds[1].revents))));
    }
  }
}

}  // namespace vdma::vhost_user
