#include "vdma/base/unique_fd.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace vdma {

void UniqueFd::reset(int fd) noexcept {
  int old = std::exchange(fd_, fd < 0 ? -1 : fd);
  // close() is not retried on EINTR: on Linux the fd is released either way,
  // and a retry could close an fd another thread has just been given.
  if (old >= 0) ::close(old);
}

Result<UniqueFd> UniqueFd::duplicate(int fd) {
  int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return system_error(fmt::format("duplicating fd {}", fd), errno);
  return UniqueFd(copy);
}

}  // namespace vdma
