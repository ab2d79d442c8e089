#include "backend_channel.h"

#include "vdma/vhost_user/socket_io.h"

namespace vdma::vhost_user {

Result<void> BackendChannel::send(const Message& msg) {
  std::lock_guard lock(mutex_);
  if (!fd_.valid()) {
    return make_error(VhostUserErrc::kBadState, "no back-end channel (SET_BACKEND_REQ_FD) to send {} on",
                      RequestLabel{msg.request(), Channel::kBackend});
  }
  return send_message(fd_.get(), Channel::kBackend, msg);
}

}  // namespace vdma::vhost_user
