// Errors of the vhost-user module.
//
//   if (r.error().is(VhostUserErrc::kPeerClosed)) return;   // orderly end of a session
//   if (is_connection_fatal(r.error())) close(...);         // reply_policy.h
//
// The codes split into two groups. Framing errors (kPeerClosed, kTruncated,
// kPayloadTooLarge) leave the byte stream out of step or ended: the connection
// cannot carry another message. Every other code is raised for a message that
// was read whole, so the stream is still in step and the protocol may allow an
// error reply (reply_policy.h decides).
#pragma once

#include "vdma/base/error.h"

namespace vdma {

enum class VhostUserErrc {
  kPeerClosed = 1,      // the peer closed the connection at a message boundary
  kTruncated,           // the peer closed the connection in the middle of a message
  kPayloadTooLarge,     // header size above the codec's maximum; the stream is now out of step
  kTooManyFds,          // more than 8 fds came with one message; the extra fds were closed
  kBadHeader,           // version not 0x1, reserved flag bits, REPLY/NEED_REPLY misused
  kUnknownRequest,      // a request code the protocol does not define
  kUnsupportedRequest,  // a defined request whose payload layout vdma does not implement
  kBadSize,             // payload size wrong for the request
  kBadFdCount,          // number of fds wrong for the request
  kBadField,            // a payload field outside its allowed values
  kBadReply,            // a reply to the wrong request, or without the REPLY flag
  kRemoteError,         // the peer reported failure (non-zero status, empty GET_CONFIG reply)
  kBadState,            // a well-formed request the connection's state or negotiated features do not allow
  kWouldBlock,          // a send that could only complete by waiting for the peer; nothing of it was sent
};

template <>
struct ErrcTraits<VhostUserErrc> {
  static constexpr std::string_view domain = "vhost_user";
  static std::string_view name(VhostUserErrc e);
};

}  // namespace vdma
