// Validation of back-end requests (vhost-user.rst "Back-end message types")
// and of replies on both channels.
#include <cstring>

#include "field_checks.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::vhost_user {

using detail::expect_fds;
using detail::expect_size;

namespace {

Result<BackendPayload> payload_of(BackendRequest req, const Message& msg) {
  const std::string_view name = request_name(req);
  switch (req) {
    case BackendRequest::kIotlbMsg:
      VDMA_TRY(expect_size(msg, name, sizeof(WireIotlbMsg)));
      VDMA_TRY(expect_fds(msg, name, 0));
      return BackendPayload(VDMA_TRY(detail::parse_iotlb(name, msg.read_payload<WireIotlbMsg>(), false)));
    case BackendRequest::kConfigChangeMsg:
      VDMA_TRY(expect_size(msg, name, 0));
      VDMA_TRY(expect_fds(msg, name, 0));
      return BackendPayload(NoPayload{});
    case BackendRequest::kVringHostNotifierMsg: {
      VDMA_TRY(expect_size(msg, name, sizeof(WireVringArea)));
      const WireVringArea w = msg.read_payload<WireVringArea>();  // peer-controlled copy
      const detail::VringFdWord word = VDMA_TRY(detail::parse_vring_fd_word(name, w.u64));
      const size_t want = word.no_fd ? 0 : 1;
      if (msg.fd_count() != want) {
        return make_error(VhostUserErrc::kBadFdCount, "{}: fd count {}, expected {} ({})", name, msg.fd_count(), want,
                          word.no_fd ? "no-fd flag set" : "no-fd flag clear");
      }
      VringArea a{word.index, !word.no_fd, 0, 0};
      if (a.has_fd) {
        VDMA_TRY(detail::check_fd_area(name, "notifier area", w.size, w.offset));
        a.size = w.size;
        a.offset = w.offset;
      }
      return BackendPayload(a);
    }
    case BackendRequest::kVringCall:
    case BackendRequest::kVringErr: {
      VDMA_TRY(expect_size(msg, name, sizeof(WireVringState)));
      VDMA_TRY(expect_fds(msg, name, 0));
      const WireVringState w = msg.read_payload<WireVringState>();
      VDMA_TRY(detail::check_vring_index(name, w.index));
      VDMA_TRY(detail::check_reserved_num(name, w.num));
      return BackendPayload(VringState{w.index, w.num});
    }
    case BackendRequest::kSharedObjectAdd:
    case BackendRequest::kSharedObjectRemove:
    case BackendRequest::kSharedObjectLookup: {
      VDMA_TRY(expect_size(msg, name, sizeof(WireShared)));
      VDMA_TRY(expect_fds(msg, name, 0));
      const WireShared w = msg.read_payload<WireShared>();
      SharedObject s;
      std::memcpy(s.uuid.data(), w.uuid, sizeof w.uuid);
      return BackendPayload(s);
    }
  }
  return make_error(VhostUserErrc::kUnknownRequest, "unknown back-end request {}", static_cast<uint32_t>(req));
}

// Header with REPLY set, answering `request`.
Result<void> check_reply_to(const Message& msg, uint32_t request, Channel channel) {
  VDMA_TRY(check_header(msg, channel, true));
  if (msg.request() != request) {
    return make_error(VhostUserErrc::kBadReply, "reply to {} expected, got a reply to {}",
                      RequestLabel{request, channel}, RequestLabel{msg.request(), channel});
  }
  return ok();
}

}  // namespace

Result<BackendRequestView> validate_backend_request(const Message& msg) {
  VDMA_TRY(check_header(msg, Channel::kBackend, false));
  const uint32_t code = msg.request();  // peer-controlled
  if (!is_known_backend_request(code)) {
    return make_error(VhostUserErrc::kUnknownRequest, "unknown back-end request {}", code);
  }
  const auto req = static_cast<BackendRequest>(code);
  BackendRequestView view;
  view.request = req;
  view.need_reply = msg.needs_reply();
  view.payload = VDMA_TRY(payload_of(req, msg));
  return view;
}

Result<uint64_t> parse_u64_reply(const Message& msg, FrontendRequest request) {
  const auto code = static_cast<uint32_t>(request);
  VDMA_TRY(check_reply_to(msg, code, Channel::kMain));
  const std::string_view name = request_name(request);
  VDMA_TRY(expect_size(msg, name, sizeof(WireU64)));
  VDMA_TRY(expect_fds(msg, name, 0));
  return msg.read_payload<WireU64>().value;
}

Result<void> parse_status_reply(const Message& msg, uint32_t request, Channel channel) {
  VDMA_TRY(check_reply_to(msg, request, channel));
  const std::string_view name = request_name(request, channel);
  VDMA_TRY(expect_size(msg, name, sizeof(WireU64)));
  VDMA_TRY(expect_fds(msg, name, 0));
  const uint64_t status = msg.read_payload<WireU64>().value;
  if (status != 0) {
    return make_error(VhostUserErrc::kRemoteError, "{}: {} reported failure (status {:#x})",
                      RequestLabel{request, channel}, channel == Channel::kMain ? "back-end" : "front-end", status);
  }
  return ok();
}

Result<VringState> parse_vring_base_reply(const Message& msg, uint32_t vring_index) {
  const std::string_view name = request_name(FrontendRequest::kGetVringBase);
  VDMA_TRY(check_reply_to(msg, static_cast<uint32_t>(FrontendRequest::kGetVringBase), Channel::kMain));
  VDMA_TRY(expect_size(msg, name, sizeof(WireVringState)));
  VDMA_TRY(expect_fds(msg, name, 0));
  const WireVringState w = msg.read_payload<WireVringState>();
  if (w.index != vring_index) {
    return make_error(VhostUserErrc::kBadReply, "{}: reply for vring {}, expected vring {}", name, w.index,
                      vring_index);
  }
  return VringState{w.index, w.num};
}

Result<ConfigSpace> parse_config_reply(const Message& msg, uint32_t offset, uint32_t size) {
  const std::string_view name = request_name(FrontendRequest::kGetConfig);
  VDMA_TRY(check_reply_to(msg, static_cast<uint32_t>(FrontendRequest::kGetConfig), Channel::kMain));
  VDMA_TRY(expect_fds(msg, name, 0));
  if (msg.size() == 0) {
    return make_error(VhostUserErrc::kRemoteError, "{}: back-end reported failure (empty reply)", name);
  }
  ConfigSpace c = VDMA_TRY(detail::parse_config(msg, name));
  if (c.offset != offset || c.size != size) {
    return make_error(VhostUserErrc::kBadReply, "{}: reply covers offset {} size {}, asked for offset {} size {}", name,
                      c.offset, c.size, offset, size);
  }
  return c;
}

Result<InflightArea> parse_inflight_reply(const Message& msg) {
  const std::string_view name = request_name(FrontendRequest::kGetInflightFd);
  VDMA_TRY(check_reply_to(msg, static_cast<uint32_t>(FrontendRequest::kGetInflightFd), Channel::kMain));
  VDMA_TRY(expect_size(msg, name, sizeof(WireInflight)));
  VDMA_TRY(expect_fds(msg, name, 1));
  return detail::parse_inflight(name, msg.read_payload<WireInflight>(), true);
}

}  // namespace vdma::vhost_user
