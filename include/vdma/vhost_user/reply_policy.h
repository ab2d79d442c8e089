// Reply policy: which requests are answered, and what happens to a message
// that is malformed, unknown or fails.
//
//   Result<void> r = recv_message(sock, Channel::kMain, msg);
//   if (r) r = handle(msg);                          // validate + act
//   if (!r) {
//     ErrorDisposition d = error_disposition(msg, Channel::kMain, r.error(), features);
//     spdlog::warn("{}", describe_disposition(msg, Channel::kMain, r.error(), d));
//     if (d.action == ErrorAction::kCloseConnection) return close_connection();
//     send_message(sock, Channel::kMain, encode_error_reply(msg, Channel::kMain, features));
//   } else if (needs_ack(msg, Channel::kMain, features)) {
//     send_message(sock, Channel::kMain, encode_status_reply(msg.request(), 0));
//   }
//
// The rule vdma follows, from vhost-user.rst ("Communication", "REPLY_ACK",
// and each request's "reply payload"):
//
//   A malformed or unknown message gets an error reply where the protocol
//   allows one; otherwise the connection is closed, with a log line naming
//   the message and the reason. Never undefined behaviour, never silence.
//
// The protocol allows an error reply when, and only when,
//   1. the message was read whole (the stream is in step: not kPeerClosed,
//      kTruncated, kPayloadTooLarge or a socket error), and
//   2. its header is sound (version 0x1, no reserved bits, REPLY clear) —
//      otherwise its NEED_REPLY bit means nothing, and
//   3. either its spec reply has a failure form — a u64 status (IOTLB_MSG,
//      POSTCOPY_END, CHECK_DEVICE_STATE, SET_DEVICE_STATE_FD,
//      BACKEND_SHARED_OBJECT_LOOKUP) or an empty GET_CONFIG reply — or it
//      has no spec reply and REPLY_ACK is negotiated and NEED_REPLY is set
//      (then a non-zero REPLY_ACK status). Unknown requests count as having
//      no spec reply.
// Requests whose spec reply is a plain value (GET_FEATURES, GET_VRING_BASE,
// GET_INFLIGHT_FD, ...) have no failure form and REPLY_ACK does not change
// that ("brings no behavioural change"), so a failing one closes the
// connection.
//
// The same rule serves the front-end receiving back-end requests
// (Channel::kBackend). Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "vdma/base/error.h"
#include "vdma/vhost_user/message.h"

namespace vdma::vhost_user {

// What the spec makes the receiver send back for a request, REPLY_ACK aside.
enum class SpecReply : uint8_t {
  kNone,       // nothing (a REPLY_ACK status if negotiated and asked for)
  kU64Value,   // a u64 value; no failure form
  kU64Status,  // a u64 status, 0 success (SET_DEVICE_STATE_FD: bits 0-7, bit 8 = no fd)
  kVringState, // GET_VRING_BASE
  kConfig,     // GET_CONFIG; an empty payload is failure
  kInflight,   // GET_INFLIGHT_FD: description plus fd
  kFd,         // POSTCOPY_ADVISE, GET_SHARED_OBJECT: an fd; no failure form vdma implements
  kCryptoSession,  // CREATE_CRYPTO_SESSION
};

// The spec reply of `request` on `channel`. Depends on the negotiated
// protocol features only for SET_LOG_BASE (a u64 reply with LOG_SHMFD).
// SET_MEM_TABLE and ADD_MEM_REG reply only in postcopy mode, which vdma does
// not implement, so they give kNone. Unknown codes give kNone.
[[nodiscard]] SpecReply spec_reply(uint32_t request, Channel channel, uint64_t protocol_features) noexcept;

// Whether a request that succeeded must be followed by a REPLY_ACK reply
// (status 0): REPLY_ACK negotiated, NEED_REPLY set, and no spec reply.
[[nodiscard]] bool needs_ack(const Message& msg, Channel channel, uint64_t protocol_features) noexcept;

// Errors after which no further message can be read or sent on the
// connection: kPeerClosed, kTruncated, kPayloadTooLarge, BaseErrc::kSystem.
[[nodiscard]] bool is_connection_fatal(const Error& err) noexcept;

enum class ErrorAction : uint8_t { kErrorReply, kCloseConnection };

struct ErrorDisposition {
  ErrorAction action = ErrorAction::kCloseConnection;
  std::string_view reason;  // static text for the log line
};

// What to do about `err`, raised while reading, validating or handling
// `msg` (the header fields of a partly read message are enough). See the
// rule above.
[[nodiscard]] ErrorDisposition error_disposition(const Message& msg, Channel channel, const Error& err,
                                                 uint64_t protocol_features) noexcept;

// The failure reply for `msg`, in its spec form: status 1 (SET_DEVICE_STATE_FD:
// 0x101, failure and no fd) or an empty GET_CONFIG reply.
// Precondition: error_disposition() chose kErrorReply for it (VDMA_CHECK on
// the header being sound).
[[nodiscard]] Message encode_error_reply(const Message& msg, Channel channel, uint64_t protocol_features);

// The log line for a rejected message:
// "vhost-user SET_MEM_TABLE (5, flags 0x1): vhost_user.bad_fd_count: SET_MEM_TABLE: 3 regions but 2 fds;
//  closing the connection: <reason>"
[[nodiscard]] std::string describe_disposition(const Message& msg, Channel channel, const Error& err,
                                               const ErrorDisposition& d);

}  // namespace vdma::vhost_user
