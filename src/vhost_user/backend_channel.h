// BackendChannel: the back-end's side of the socket handed over by
// SET_BACKEND_REQ_FD, shared by the session thread (which installs it) and
// the queue workers (which send IOTLB MISS and ACCESS_FAIL on it).
//
// The mutex serialises whole messages on the socket and guards the fd. It is
// never held by the message handler while it processes a request other than
// SET_BACKEND_REQ_FD, so a worker blocked in send() cannot stall the IOTLB
// UPDATE that would resume it (DPDK sent MISS while holding the lock its
// UPDATE handler needed).
#pragma once

#include <mutex>

#include "vdma/base/result.h"
#include "vdma/vhost_user/message.h"
#include "vdma/base/unique_fd.h"

namespace vdma::vhost_user {

class BackendChannel {
 public:
  // Installs (or, with an invalid fd, drops) the channel socket.
  void set(UniqueFd fd) {
    std::lock_guard lock(mutex_);
    fd_ = std::move(fd);
  }
  [[nodiscard]] bool connected() const {
    std::lock_guard lock(mutex_);
    return fd_.valid();
  }
  // Sends one back-end request. Errors: VhostUserErrc::kBadState (no
  // channel), errors of send_message().
  [[nodiscard]] Result<void> send(const Message& msg);

 private:
  mutable std::mutex mutex_;
  UniqueFd fd_;  // guarded by mutex_
};

}  // namespace vdma::vhost_user
