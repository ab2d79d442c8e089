#include "vdma/base/event_fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

namespace vdma {

bool eventfd_signal(int fd) noexcept {
  if (fd < 0) return false;
  const uint64_t one = 1;
  ssize_t n = 0;
  do {
    n = ::write(fd, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(sizeof one) || (n < 0 && errno == EAGAIN);
}

uint64_t eventfd_drain(int fd) noexcept {
  if (fd < 0) return 0;
  uint64_t value = 0;
  ssize_t n = 0;
  do {
    n = ::read(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(sizeof value) ? value : 0;
}

Result<EventFd> EventFd::create(bool nonblocking) {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0)));
  if (!fd) return system_error("eventfd", errno);
  return EventFd(std::move(fd));
}

}  // namespace vdma
