// UniqueFd: a move-only owner of one file descriptor.
//
//   UniqueFd fd(::eventfd(0, EFD_CLOEXEC));
//   if (!fd) return system_error("eventfd", errno);
//   UniqueFd copy = VDMA_TRY(UniqueFd::duplicate(fd.get()));   // to send while keeping ours
//   msg.add_fd(std::move(copy));
//
// Every fd vdma opens or receives (memfds, eventfds, sockets, fds that arrive
// in vhost-user messages, backing files) is wrapped in a UniqueFd the moment
// it exists, so an error path can never leak one.
//
// Thread safety: none; a UniqueFd is a value owned by one thread at a time.
#pragma once

#include <utility>

#include "vdma/base/result.h"

namespace vdma {

class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  // Takes ownership of `fd`; a negative value means "no fd".
  explicit UniqueFd(int fd) noexcept : fd_(fd < 0 ? -1 : fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }

  // Gives up ownership without closing.
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
  // Closes the held fd (if any) and takes `fd`.
  void reset(int fd = -1) noexcept;

  // A close-on-exec duplicate of `fd` (F_DUPFD_CLOEXEC), which the caller
  // owns. Errors: BaseErrc::kSystem (EBADF, EMFILE, ...).
  [[nodiscard]] static Result<UniqueFd> duplicate(int fd);

 private:
  int fd_ = -1;
};

}  // namespace vdma
