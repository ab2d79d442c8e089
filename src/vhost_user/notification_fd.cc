#include "notification_fd.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <fstream>
#include <string>

#include "vdma/vhost_user/errors.h"

namespace vdma::vhost_user {

namespace {

// What /proc says `fd` is ("anon_inode:[eventfd]", "pipe:[123]", "/dev/zero"),
// or an empty string.
std::string describe_fd(int fd) {
  char target[PATH_MAX] = {};
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string();
}

bool is_semaphore_eventfd(int fd) {
  std::ifstream info("/proc/self/fdinfo/" + std::to_string(fd));
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("eventfd-semaphore:", 0) == 0) return line.find('1') != std::string::npos;
  }
  return false;
}

}  // namespace

Result<void> check_notification_fd(int fd, FrontendRequest req, uint32_t index) {
  const char* kind = req == FrontendRequest::kSetVringKick   ? "kick"
                     : req == FrontendRequest::kSetVringCall ? "call"
                                                             : "err";
  const std::string what = describe_fd(fd);
  if (what != "anon_inode:[eventfd]") {
    return make_error(VhostUserErrc::kBadField, "{}: vring {}: the {} fd {} is {}, not an eventfd", request_name(req),
                      index, kind, fd, what.empty() ? std::string("of unknown type (no /proc?)") : what);
  }
  if (req == FrontendRequest::kSetVringKick && is_semaphore_eventfd(fd)) {
    return make_error(VhostUserErrc::kBadField,
                      "{}: vring {}: the kick fd {} is a semaphore eventfd (EFD_SEMAPHORE), which stays readable "
                      "after a read",
                      request_name(req), index, fd);
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ((flags & O_NONBLOCK) == 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)) {
    return system_error(fmt::format("{}: vring {}: making the {} fd non-blocking", request_name(req),
                                               index, kind),
                                   errno);
  }
  return ok();
}

}  // namespace vdma::vhost_user
