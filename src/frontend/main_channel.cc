#include "main_channel.h"

#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <optional>

#include <spdlog/spdlog.h>

#include "vdma/frontend/errors.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::frontend_detail {

using vhost_user::Channel;
using vhost_user::FrontendRequest;
using vhost_user::Message;
using vhost_user::RequestLabel;

MainChannel::MainChannel(UniqueFd sock, std::chrono::milliseconds reply_timeout)
    : sock_(std::move(sock)), reply_timeout_(reply_timeout) {}

void MainChannel::mark_disconnected(std::string why) {
  {
    std::lock_guard lock(reason_mu_);
    if (!reason_.empty()) return;
    reason_ = std::move(why);
  }
  disconnected_.store(true, std::memory_order_release);
}

Result<void> MainChannel::Exchange::check_open() const {
  if (!ch_.disconnected()) return ok();
  std::lock_guard lock(ch_.reason_mu_);
  return make_error(FrontendErrc::kDisconnected, "the back-end connection is closed: {}", ch_.reason_);
}

Error MainChannel::Exchange::fail(uint32_t request, const Error& e) {
  const std::string why = fmt::format("{}: {}", RequestLabel{request, Channel::kMain}, e.to_string());
  ch_.mark_disconnected(why);
  return make_error(FrontendErrc::kDisconnected, "the back-end connection is closed: {}", why);
}

Result<void> MainChannel::Exchange::send(const Message& msg) {
  VDMA_TRY(check_open());
  auto r = vhost_user::send_message(ch_.sock_.get(), Channel::kMain, msg);
  if (!r) return fail(msg.request(), r.error());
  return ok();
}

Result<void> MainChannel::Exchange::recv(Message& out, uint32_t request) {
  // Replies come in request order: those of posted requests are ahead.
  if (ch_.unread_posted_ != 0) VDMA_TRY(drain_posted());
  return recv_next(out, request);
}

// The replies of posted requests are u64 statuses, 20 bytes each: read as
// many as are owed in one go (a syscall or two for a whole batch instead of
// three per reply), then check each as parse_status_reply does. A reply of
// another size means the stream is not what we think it is.
Result<void> MainChannel::Exchange::drain_posted() {
  constexpr uint32_t kCode = static_cast<uint32_t>(FrontendRequest::kIotlbMsg);
  constexpr size_t kReply = vhost_user::kHeaderSize + sizeof(uint64_t);
  constexpr size_t kChunk = 64;
  std::array<std::byte, kReply * kChunk> buf;
  while (ch_.unread_posted_ != 0) {
    VDMA_TRY(check_open());
    const size_t want = kReply * std::min<size_t>(ch_.unread_posted_, kChunk);
    size_t got = 0;
    while (got < want) {
      // Usually there already: poll only when it is not.
      const ssize_t r = ::recv(ch_.sock_.get(), buf.data() + got, want - got, MSG_DONTWAIT);
      if (r > 0) {
        got += static_cast<size_t>(r);
        continue;
      }
      if (r == 0) return fail(kCode, Error(VhostUserErrc::kPeerClosed, "peer closed the connection"));
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return fail(kCode, system_error("recv on vhost-user socket", errno));
      pollfd p{ch_.sock_.get(), POLLIN, 0};
      int n = 0;
      do {
        n = ::poll(&p, 1, static_cast<int>(ch_.reply_timeout_.count()));
      } while (n < 0 && errno == EINTR);
      if (n < 0) return fail(kCode, system_error("poll", errno));
      if (n == 0) {
        return fail(kCode,
                    Error(BaseErrc::kTimeout, fmt::format("no reply within {} ms", ch_.reply_timeout_.count())));
      }
    }
    for (size_t off = 0; off < want; off += kReply) {
      vhost_user::WireHeader h;
      std::memcpy(&h, buf.data() + off, sizeof h);
      if (h.size != sizeof(uint64_t)) {
        return fail(kCode, Error(VhostUserErrc::kBadReply,
                                 fmt::format("reply of {} payload bytes to a posted IOTLB_MSG, expected 8", h.size)));
      }
      Message& m = ch_.reply_;
      m.clear();
      m.set_request(h.request);
      m.set_flags(h.flags);
      m.set_payload(std::span<const std::byte>(buf.data() + off + sizeof h, sizeof(uint64_t)));
      --ch_.unread_posted_;
      auto r = vhost_user::parse_status_reply(m, kCode, Channel::kMain);
      if (!r && !r.error().is(VhostUserErrc::kRemoteError)) return fail(kCode, r.error());
      if (!r) {
        // The back-end refused an IOTLB_MSG nobody waits for (an UPDATE of
        // a mapping): it will miss on that IOVA and ask.
        const uint64_t n = ch_.posted_failures_.fetch_add(1, std::memory_order_relaxed) + 1;
        if ((n & (n - 1)) == 0) spdlog::warn("front-end: posted IOTLB_MSG refused ({} so far): {}", n, r.error());
      }
    }
  }
  return ok();
}

Result<void> MainChannel::Exchange::post_iotlb(Message msg) {
  if (ch_.unread_posted_ >= kMaxPostedReplies) VDMA_TRY(drain_posted());
  msg.set_need_reply(true);
  VDMA_TRY(send(msg));
  ++ch_.unread_posted_;
  return ok();
}

Result<void> MainChannel::Exchange::recv_next(Message& out, uint32_t request) {
  VDMA_TRY(check_open());
  pollfd p{ch_.sock_.get(), POLLIN, 0};
  int n = 0;
  do {
    n = ::poll(&p, 1, static_cast<int>(ch_.reply_timeout_.count()));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return fail(request, system_error("poll", errno));
  if (n == 0) {
    return fail(request, Error(BaseErrc::kTimeout, fmt::format("no reply within {} ms", ch_.reply_timeout_.count())));
  }
  auto r = vhost_user::recv_message(ch_.sock_.get(), Channel::kMain, out);
  if (!r) return fail(request, r.error());
  return ok();
}

Result<uint64_t> MainChannel::Exchange::get_u64(FrontendRequest request) {
  VDMA_TRY(send(vhost_user::encode_request(request)));
  VDMA_TRY(recv(ch_.reply_, static_cast<uint32_t>(request)));
  auto v = vhost_user::parse_u64_reply(ch_.reply_, request);
  // A reply that does not parse means the stream is not what we think it is.
  if (!v) return fail(static_cast<uint32_t>(request), v.error());
  return *v;
}

Result<void> MainChannel::Exchange::request(Message msg) {
  if (!ch_.reply_ack()) return send(msg);
  msg.set_need_reply(true);
  const uint32_t code = msg.request();
  VDMA_TRY(send(msg));
  VDMA_TRY(recv(ch_.reply_, code));
  auto r = vhost_user::parse_status_reply(ch_.reply_, code, Channel::kMain);
  if (!r && !r.error().is(VhostUserErrc::kRemoteError)) return fail(code, r.error());
  if (!r) return std::move(r).error().with_context(fmt::format("{}", RequestLabel{code, Channel::kMain}));
  return ok();
}

Result<void> MainChannel::Exchange::send_only(const Message& msg) { return send(msg); }

Result<void> MainChannel::Exchange::iotlb(std::span<Message> msgs) {
  constexpr uint32_t kCode = static_cast<uint32_t>(FrontendRequest::kIotlbMsg);
  for (Message& m : msgs) {
    m.set_need_reply(true);
    VDMA_TRY(send(m));
  }
  std::optional<Error> first;
  for (size_t i = 0; i < msgs.size(); ++i) {
    VDMA_TRY(recv(ch_.reply_, kCode));
    auto r = vhost_user::parse_status_reply(ch_.reply_, kCode, Channel::kMain);
    if (!r && !r.error().is(VhostUserErrc::kRemoteError)) return fail(kCode, r.error());
    if (!r && !first) first = std::move(r).error().with_context(fmt::format("IOTLB_MSG {} of {}", i + 1, msgs.size()));
  }
  if (first) return std::move(*first);
  return ok();
}

Result<vhost_user::VringState> MainChannel::Exchange::get_vring_base(uint32_t index) {
  VDMA_TRY(send(vhost_user::encode_vring_state(FrontendRequest::kGetVringBase, {index, 0})));
  VDMA_TRY(recv(ch_.reply_, static_cast<uint32_t>(FrontendRequest::kGetVringBase)));
  auto v = vhost_user::parse_vring_base_reply(ch_.reply_, index);
  if (!v) return fail(static_cast<uint32_t>(FrontendRequest::kGetVringBase), v.error());
  return *v;
}

Result<vhost_user::ConfigSpace> MainChannel::Exchange::get_config(uint32_t offset, uint32_t size) {
  vhost_user::ConfigSpace req;
  req.offset = offset;
  req.size = size;
  VDMA_TRY(send(vhost_user::encode_config_request(FrontendRequest::kGetConfig, req)));
  VDMA_TRY(recv(ch_.reply_, static_cast<uint32_t>(FrontendRequest::kGetConfig)));
  auto c = vhost_user::parse_config_reply(ch_.reply_, offset, size);
  if (!c && !c.error().is(VhostUserErrc::kRemoteError)) {
    return fail(static_cast<uint32_t>(FrontendRequest::kGetConfig), c.error());
  }
  if (!c) return std::move(c).error().with_context("GET_CONFIG");
  return *c;
}

}  // namespace vdma::frontend_detail
