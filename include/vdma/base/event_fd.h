// EventFd: an eventfd(2) this process owns, used to wake a thread that
// polls it (a stop request, an UPDATE for a parked ring, a new ring for an
// I/O thread), and the two eventfd operations on fds a peer handed over
// (vhost-user kick, call and err fds, checked by notification_fd.h).
//
//   EventFd stop = VDMA_TRY(EventFd::create());   // non-blocking, close-on-exec
//   stop.signal();                                 // from any thread
//   pollfd p{stop.fd(), POLLIN, 0};  ...  stop.drain();
//   eventfd_signal(call.get());                    // a peer's fd
//
// signal() never blocks on a non-blocking eventfd: a counter at its maximum
// fails with EAGAIN, and then the reader sees the fd readable anyway. A
// failed notification has no one to report to, so it is not an error.
//
// Thread safety: signal() and drain() may be called from any thread; the
// EventFd itself is owned as a UniqueFd is.
#pragma once

#include <cstdint>

#include "vdma/base/result.h"
#include "vdma/base/unique_fd.h"

namespace vdma {

// Adds 1 to eventfd `fd`'s counter. False when the write failed for any
// reason but a saturated counter (a closed or foreign fd). fd < 0: false.
bool eventfd_signal(int fd) noexcept;
// Reads eventfd `fd`'s counter, which resets it (a semaphore eventfd: by
// one). 0 when nothing was pending on a non-blocking fd, or on an error.
uint64_t eventfd_drain(int fd) noexcept;

class EventFd {
 public:
  // Errors: BaseErrc::kSystem ("eventfd: Too many open files").
  [[nodiscard]] static Result<EventFd> create(bool nonblocking = true);
  EventFd() noexcept = default;

  bool signal() const noexcept { return eventfd_signal(fd_.get()); }
  uint64_t drain() const noexcept { return eventfd_drain(fd_.get()); }
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] bool valid() const noexcept { return fd_.valid(); }

 private:
  explicit EventFd(UniqueFd fd) noexcept : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace vdma
