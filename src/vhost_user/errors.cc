#include "vdma/vhost_user/errors.h"

namespace vdma {

std::string_view ErrcTraits<VhostUserErrc>::name(VhostUserErrc e) {
  switch (e) {
    case VhostUserErrc::kPeerClosed: return "peer_closed";
    case VhostUserErrc::kTruncated: return "truncated";
    case VhostUserErrc::kPayloadTooLarge: return "payload_too_large";
    case VhostUserErrc::kTooManyFds: return "too_many_fds";
    case VhostUserErrc::kBadHeader: return "bad_header";
    case VhostUserErrc::kUnknownRequest: return "unknown_request";
    case VhostUserErrc::kUnsupportedRequest: return "unsupported_request";
    case VhostUserErrc::kBadSize: return "bad_size";
    case VhostUserErrc::kBadFdCount: return "bad_fd_count";
    case VhostUserErrc::kBadField: return "bad_field";
    case VhostUserErrc::kBadReply: return "bad_reply";
    case VhostUserErrc::kRemoteError: return "remote_error";
    case VhostUserErrc::kBadState: return "bad_state";
    case VhostUserErrc::kWouldBlock: return "would_block";
  }
  return "unknown";
}

}  // namespace vdma
