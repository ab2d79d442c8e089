// Syntax validation of vhost-user messages: everything about a message that
// can be checked without connection state.
//
//   Message msg;
//   VDMA_TRY(recv_message(sock, Channel::kMain, msg));
//   Result<FrontendRequestView> req = validate_frontend_request(msg);
//   if (!req) {
//     // "SET_MEM_TABLE: 3 regions but 2 fds" — reply_policy.h says whether
//     // to send an error reply or to close the connection.
//   }
//
//   // Front-end side, after sending GET_FEATURES:
//   uint64_t features = VDMA_TRY(parse_u64_reply(reply, FrontendRequest::kGetFeatures));
//
// What is checked, for every request of both tables in vhost-user.rst:
//   - the header: version 0x1, reserved flag bits 4-31 clear, REPLY clear on
//     a request and set on a reply, NEED_REPLY never on a reply;
//   - the request code is defined for the channel;
//   - the payload size: exact for fixed layouts, 8 + 32 * num_regions for
//     SET_MEM_TABLE, 12 + config size for GET/SET_CONFIG;
//   - the fd count: SET_MEM_TABLE one per region; SET_VRING_KICK/CALL/ERR one
//     unless the no-fd bit 8 is set, then none; ADD_MEM_REG, SET_LOG_BASE,
//     SET_LOG_FD, SET_BACKEND_REQ_FD, SET_INFLIGHT_FD, GPU_SET_SOCKET,
//     SET_DEVICE_STATE_FD one; REM_MEM_REG none or one (vhost-user.rst lets
//     the back-end accept and close one for old front-ends); all others none;
//   - field ranges: vring index < 256; reserved bits and reserved num fields
//     zero; num_regions 1..8; region size non-zero and no address + size
//     wrap; config size 1..256 with offset + size <= 256 and flags 0/1; IOTLB
//     type valid for the direction and perm 0..3; enable/endian 0/1; queue
//     size 1..32768; device status fits 8 bits.
// What is not checked here, because it needs connection state: whether a
// request is legal given the negotiated features, whether regions overlap
// each other or existing ones, whether a vring index names an existing queue.
// The back-end does that.
//
// Deliberate limits: SET_LOG_BASE must carry its fd (vdma requires
// LOG_SHMFD for logging); XEN_MMAP's longer region layout, postcopy's empty
// SET_MEM_TABLE acknowledgement and CREATE_CRYPTO_SESSION's payload are not
// implemented (kBadSize for the first two, kUnsupportedRequest for the last).
//
// Every error message names the request and the field, e.g.
// "SET_VRING_NUM: queue size 0, expected 1..32768". Validation never changes
// the Message: fds stay in it, and a rejected message's fds are closed when
// the Message is cleared or destroyed.
#pragma once

#include <cstdint>

#include "vdma/base/result.h"
#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/message.h"
#include "vdma/vhost_user/payload_views.h"

namespace vdma::vhost_user {

// The header rules above. `expect_reply` says whether `msg` must be a reply.
// Errors: kBadHeader.
[[nodiscard]] Result<void> check_header(const Message& msg, Channel channel, bool expect_reply);

// A request received on the main socket (back-end side).
// Errors: kBadHeader, kUnknownRequest, kUnsupportedRequest, kBadSize,
// kBadFdCount, kBadField.
[[nodiscard]] Result<FrontendRequestView> validate_frontend_request(const Message& msg);

// A request received on the back-end channel (front-end side).
// Errors: as validate_frontend_request().
[[nodiscard]] Result<BackendRequestView> validate_backend_request(const Message& msg);

// --- Replies ------------------------------------------------------------------
// Each reply parser checks the header (REPLY set), that the reply answers
// `request`, its size and its fd count. Errors: kBadHeader, kBadReply (reply
// to another request, or not matching what was asked), kBadSize, kBadFdCount,
// kBadField, and kRemoteError where the reply form can carry a failure.

// The u64 reply of GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
// GET_MAX_MEM_SLOTS, GET_STATUS, SET_LOG_BASE: the value as sent.
[[nodiscard]] Result<uint64_t> parse_u64_reply(const Message& msg, FrontendRequest request);

// A u64 status reply: a REPLY_ACK reply on either channel, or the spec reply
// of IOTLB_MSG, POSTCOPY_END and CHECK_DEVICE_STATE. Zero is success;
// non-zero gives kRemoteError carrying the value.
[[nodiscard]] Result<void> parse_status_reply(const Message& msg, uint32_t request, Channel channel);

// The GET_VRING_BASE reply for vring `vring_index` (num: the split or packed
// indices, see vhost-user.rst).
[[nodiscard]] Result<VringState> parse_vring_base_reply(const Message& msg, uint32_t vring_index);

// The GET_CONFIG reply to a request for `size` bytes at `offset`. An empty
// payload is the back-end's way to report failure (kRemoteError).
[[nodiscard]] Result<ConfigSpace> parse_config_reply(const Message& msg, uint32_t offset, uint32_t size);

// The GET_INFLIGHT_FD reply: the area is mmap_size (non-zero) bytes at
// mmap_offset of msg.fd(0).
[[nodiscard]] Result<InflightArea> parse_inflight_reply(const Message& msg);

}  // namespace vdma::vhost_user
