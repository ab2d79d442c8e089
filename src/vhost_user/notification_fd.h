// The kick, call and err fds of SET_VRING_KICK / CALL / ERR come from the
// front-end and are hostile until checked.
#pragma once

#include <cstdint>

#include "vdma/base/result.h"
#include "vdma/vhost_user/protocol.h"

namespace vdma::vhost_user {

// Every kick, call and err fd must be an eventfd, and is made non-blocking.
// Anything else is a way to hurt the daemon: a pipe whose reader is gone
// (EPIPE, SIGPIPE), a full pipe or a blocking eventfd at its maximum count
// (a write that blocks the worker, so stop_worker() and the whole session
// wait forever), /dev/zero or a regular file as kick fd (always readable: a
// worker spinning at 100% CPU), a semaphore eventfd as kick fd (readable
// once per unit of a count the front-end sets to 2^64-2 with one write).
// O_NONBLOCK lives in the open file description, which the front-end shares:
// QEMU's eventfds are non-blocking already, and a front-end cannot expect
// the back-end to wait on a notification anyway.
//
// `req` is SET_VRING_KICK, SET_VRING_CALL or SET_VRING_ERR and names the
// request and the fd kind in messages; `index` is the vring.
// Errors: VhostUserErrc::kBadField ("SET_VRING_CALL: vring 0: the call fd 7
// is pipe:[1234], not an eventfd"; a semaphore eventfd as kick fd),
// BaseErrc::kSystem (fcntl failed).
[[nodiscard]] Result<void> check_notification_fd(int fd, FrontendRequest req, uint32_t index);

}  // namespace vdma::vhost_user
