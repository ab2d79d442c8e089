#include "vdma/vhost_user/reply_policy.h"

#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::vhost_user {

namespace {

SpecReply frontend_spec_reply(FrontendRequest r, uint64_t protocol_features) noexcept {
  using R = FrontendRequest;
  switch (r) {
    case R::kGetFeatures:
    case R::kGetProtocolFeatures:
    case R::kGetQueueNum:
    case R::kGetMaxMemSlots:
    case R::kGetStatus:
      return SpecReply::kU64Value;
    case R::kSetLogBase:
      return has_protocol_feature(protocol_features, kProtocolFeatureLogShmfd) ? SpecReply::kU64Value
                                                                               : SpecReply::kNone;
    case R::kIotlbMsg:
    case R::kPostcopyEnd:
    case R::kCheckDeviceState:
    case R::kSetDeviceStateFd:
      return SpecReply::kU64Status;
    case R::kGetVringBase:
      return SpecReply::kVringState;
    case R::kGetConfig:
      return SpecReply::kConfig;
    case R::kGetInflightFd:
      return SpecReply::kInflight;
    case R::kPostcopyAdvise:
    case R::kGetSharedObject:
      return SpecReply::kFd;
    case R::kCreateCryptoSession:
      return SpecReply::kCryptoSession;
    default:
      return SpecReply::kNone;
  }
}

SpecReply backend_spec_reply(BackendRequest r) noexcept {
  // "Frontend will reply passing the fd and a zero when the operation is
  // successful, or non-zero otherwise."
  return r == BackendRequest::kSharedObjectLookup ? SpecReply::kU64Status : SpecReply::kNone;
}

bool has_failure_form(SpecReply s) noexcept { return s == SpecReply::kU64Status || s == SpecReply::kConfig; }

}  // namespace

SpecReply spec_reply(uint32_t request, Channel channel, uint64_t protocol_features) noexcept {
  if (channel == Channel::kMain) {
    if (!is_known_frontend_request(request)) return SpecReply::kNone;
    return frontend_spec_reply(static_cast<FrontendRequest>(request), protocol_features);
  }
  if (!is_known_backend_request(request)) return SpecReply::kNone;
  return backend_spec_reply(static_cast<BackendRequest>(request));
}

bool needs_ack(const Message& msg, Channel channel, uint64_t protocol_features) noexcept {
  return has_protocol_feature(protocol_features, kProtocolFeatureReplyAck) && msg.needs_reply() &&
         spec_reply(msg.request(), channel, protocol_features) == SpecReply::kNone;
}

bool is_connection_fatal(const Error& err) noexcept {
  return err.is(VhostUserErrc::kPeerClosed) || err.is(VhostUserErrc::kTruncated) ||
         err.is(VhostUserErrc::kPayloadTooLarge) || err.is(BaseErrc::kSystem);
}

ErrorDisposition error_disposition(const Message& msg, Channel channel, const Error& err,
                                   uint64_t protocol_features) noexcept {
  if (is_connection_fatal(err)) {
    return {ErrorAction::kCloseConnection, "the stream is ended or out of step"};
  }
  if (!check_header(msg, channel, false)) {
    return {ErrorAction::kCloseConnection, "the header is malformed, so its NEED_REPLY bit cannot be trusted"};
  }
  const SpecReply spec = spec_reply(msg.request(), channel, protocol_features);
  if (has_failure_form(spec)) {
    return {ErrorAction::kErrorReply, "the request's reply carries a failure status"};
  }
  if (spec != SpecReply::kNone) {
    return {ErrorAction::kCloseConnection, "the request's reply has no failure form"};
  }
  if (!has_protocol_feature(protocol_features, kProtocolFeatureReplyAck)) {
    return {ErrorAction::kCloseConnection, "REPLY_ACK is not negotiated, so failure cannot be reported"};
  }
  if (!msg.needs_reply()) {
    return {ErrorAction::kCloseConnection, "NEED_REPLY is not set, so failure cannot be reported"};
  }
  return {ErrorAction::kErrorReply, "REPLY_ACK is negotiated and NEED_REPLY is set"};
}

Message encode_error_reply(const Message& msg, Channel channel, uint64_t protocol_features) {
  VDMA_CHECK(check_header(msg, channel, false).has_value(), "encode_error_reply for a message with a bad header");
  const uint32_t request = msg.request();
  if (spec_reply(request, channel, protocol_features) == SpecReply::kConfig) return encode_config_error_reply();
  if (channel == Channel::kMain && request == static_cast<uint32_t>(FrontendRequest::kSetDeviceStateFd)) {
    // Bits 0-7 non-zero: failure; bit 8: no fd returned ("The back-end must
    // not both indicate an error and return a file descriptor").
    return encode_status_reply(request, 1 | kVringNoFdFlag);
  }
  return encode_status_reply(request, 1);
}

std::string describe_disposition(const Message& msg, Channel channel, const Error& err, const ErrorDisposition& d) {
  return fmt::format("vhost-user {} ({}, flags {:#x}): {}; {}: {}", RequestLabel{msg.request(), channel},
                     msg.request(), msg.flags(), err,
                     d.action == ErrorAction::kErrorReply ? "sending an error reply" : "closing the connection",
                     d.reason);
}

}  // namespace vdma::vhost_user
