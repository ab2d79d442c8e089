#include "backend_channel_server.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <spdlog/spdlog.h>

#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::frontend_detail {

using vhost_user::BackendRequest;
using vhost_user::Channel;
using vhost_user::IotlbMessage;
using vhost_user::IotlbType;
using vhost_user::Message;
using vhost_user::RequestLabel;

Result<std::unique_ptr<BackendChannelServer>> BackendChannelServer::start(
    UniqueFd channel, int main_fd, BackendRequestHandler& handler, std::optional<std::chrono::milliseconds> tick) {
  EventFd stop = VDMA_TRY(EventFd::create());
  std::unique_ptr<BackendChannelServer> s(
      new BackendChannelServer(std::move(channel), std::move(stop), main_fd, handler, tick));
  s->thread_ = std::thread([p = s.get()] { p->run(); });
  return s;
}

BackendChannelServer::BackendChannelServer(UniqueFd channel, EventFd stop, int main_fd,
                                           BackendRequestHandler& handler,
                                           std::optional<std::chrono::milliseconds> tick)
    : channel_(std::move(channel)), stop_(std::move(stop)), main_fd_(main_fd), handler_(handler), tick_(tick) {}

BackendChannelServer::~BackendChannelServer() {
  (void)stop_.signal();
  if (thread_.joinable()) thread_.join();
}

void BackendChannelServer::run() {
  bool watch_main = true;
  const int timeout = tick_ ? static_cast<int>(std::max<int64_t>(1, tick_->count())) : -1;
  for (;;) {
    pollfd fds[3] = {{stop_.fd(), POLLIN, 0}, {channel_.get(), POLLIN, 0}, {watch_main ? main_fd_ : -1, POLLRDHUP, 0}};
    const int n = ::poll(fds, 3, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::error("front-end: back-end channel poll failed: {}", system_error("poll", errno));
      return;
    }
    if (fds[0].revents != 0) return;
    if (n == 0) {
      handler_.on_tick();
      continue;
    }
    if ((fds[2].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
      watch_main = false;
      handler_.on_main_hangup();
    }
    if (fds[1].revents != 0 && !serve_one()) channel_.reset();
  }
}

void BackendChannelServer::reply(uint32_t request, bool need_reply, bool success) {
  if (!need_reply) return;
  auto r = vhost_user::send_message(channel_.get(), Channel::kBackend,
                                     vhost_user::encode_status_reply(request, success ? 0 : 1));
  if (!r) spdlog::warn("front-end: reply to {} failed: {}", RequestLabel{request, Channel::kBackend}, r.error());
}

bool BackendChannelServer::serve_one() {
  Message msg;
  auto got = vhost_user::recv_message(channel_.get(), Channel::kBackend, msg);
  if (!got) {
    if (got.error().is(VhostUserErrc::kPeerClosed)) {
      spdlog::info("front-end: the back-end closed its back-end channel");
      return false;
    }
    spdlog::warn("front-end: back-end channel: {}", got.error());
    // Too many fds: the message was read whole, the stream is still in step.
    if (!got.error().is(VhostUserErrc::kTooManyFds)) return false;
    reply(msg.request(), msg.needs_reply(), false);
    return true;
  }
  requests_.fetch_add(1, std::memory_order_relaxed);
  auto req = vhost_user::validate_backend_request(msg);
  if (!req) {
    spdlog::warn("front-end: malformed back-end request: {}", req.error());
    // Only a sound header lets us address a reply to the request.
    if (vhost_user::check_header(msg, Channel::kBackend, false)) reply(msg.request(), msg.needs_reply(), false);
    return true;
  }
  if (req->request == BackendRequest::kIotlbMsg) {
    const IotlbMessage& m = req->as<IotlbMessage>();
    if (m.type == IotlbType::kMiss) {
      const bool served = handler_.on_iotlb_miss(m.iova, m.perm).has_value();
      reply(msg.request(), req->need_reply, served);
      return true;
    }
    if (m.type == IotlbType::kAccessFail) {
      handler_.on_access_fail(m.iova, m.perm);
      reply(msg.request(), req->need_reply, false);
      return true;
    }
  }
  spdlog::warn("front-end: back-end request {} is not supported; ignored", RequestLabel{msg.request(), Channel::kBackend});
  reply(msg.request(), req->need_reply, false);
  return true;
}

}  // namespace vdma::frontend_detail
