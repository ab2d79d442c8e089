// Encoders: build vhost-user messages from typed values.
//
//   // Back-end, answering GET_FEATURES and acknowledging a SET_MEM_TABLE:
//   VDMA_TRY(send_message(sock, Channel::kMain, encode_u64_reply(FrontendRequest::kGetFeatures, features)));
//   VDMA_TRY(send_message(sock, Channel::kMain, encode_status_reply(req_code, 0)));
//
//   // Back-end, asking the front-end (acting as vIOMMU) for a translation:
//   Message miss = encode_iotlb_miss(Iova{0x1000}, IotlbPerm::kRead);
//   miss.set_need_reply(true);   // with REPLY_ACK negotiated
//   VDMA_TRY(send_message(backend_channel, Channel::kBackend, miss));
//
//   // Front-end, handing over a kick eventfd:
//   Message kick = encode_vring_file(FrontendRequest::kSetVringKick, 0, std::move(eventfd));
//
// Every encoder produces a message with the version bit set, the REPLY flag
// exactly on replies, and the payload layout and size the validators of
// validate.h accept (tests round-trip each one). Fds passed in are moved into
// the message; pass UniqueFd::duplicate() of an fd you keep. Encoders do not
// allocate.
//
// Preconditions (VDMA_CHECK, bugs in the caller rather than peer input): the
// request code matches the encoder, counts are within the protocol limits
// (regions and fds <= 8, config size 1..256), and an fd is present where the
// message requires one.
#pragma once

#include <cstdint>
#include <span>

#include "vdma/base/address.h"
#include "vdma/vhost_user/message.h"
#include "vdma/vhost_user/payload_views.h"
#include "vdma/base/unique_fd.h"

namespace vdma::vhost_user {

// --- Replies ------------------------------------------------------------------

// The u64 reply of GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
// GET_MAX_MEM_SLOTS, GET_STATUS and SET_LOG_BASE.
[[nodiscard]] Message encode_u64_reply(FrontendRequest request, uint64_t value);
// A u64 status reply (0 success, non-zero failure) to `request` on either
// channel: the REPLY_ACK reply, and the spec reply of IOTLB_MSG,
// POSTCOPY_END and CHECK_DEVICE_STATE. `request` is a raw code so an
// unknown request can be answered too.
[[nodiscard]] Message encode_status_reply(uint32_t request, uint64_t status);
[[nodiscard]] Message encode_vring_base_reply(VringState state);
// GET_CONFIG success (`config` as read) and failure (empty payload).
[[nodiscard]] Message encode_config_reply(const ConfigSpace& config);
[[nodiscard]] Message encode_config_error_reply();
// GET_INFLIGHT_FD: the area and the fd it lives in.
[[nodiscard]] Message encode_inflight_reply(const InflightArea& area, UniqueFd fd);

// --- Back-end requests (back-end channel) --------------------------------------

// IOTLB miss for `iova` needing `perm` (MISS), and a permission failure
// (ACCESS_FAIL); size and uaddr are zero on the wire.
[[nodiscard]] Message encode_iotlb_miss(Iova iova, IotlbPerm perm);
[[nodiscard]] Message encode_iotlb_access_fail(Iova iova, IotlbPerm perm);
[[nodiscard]] Message encode_config_change();
[[nodiscard]] Message encode_backend_vring_call(uint32_t vring_index);
[[nodiscard]] Message encode_backend_vring_err(uint32_t vring_index);
// Registers size bytes at offset of `fd` as vring `vring_index`'s notify
// area, or (fd invalid) drops the queue's notifier.
[[nodiscard]] Message encode_host_notifier(uint32_t vring_index, uint64_t size, uint64_t offset, UniqueFd fd);
// BACKEND_SHARED_OBJECT_ADD / _REMOVE / _LOOKUP.
[[nodiscard]] Message encode_shared_object(BackendRequest request, const SharedObject& object);

// --- Front-end requests (main socket) ------------------------------------------

// A request without payload: GET_FEATURES, SET_OWNER, RESET_OWNER,
// GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, POSTCOPY_*, RESET_DEVICE,
// GET_MAX_MEM_SLOTS, GET_STATUS, CHECK_DEVICE_STATE.
[[nodiscard]] Message encode_request(FrontendRequest request);
// SET_FEATURES, SET_PROTOCOL_FEATURES, SEND_RARP, NET_SET_MTU, SET_STATUS,
// CLOSE_CRYPTO_SESSION.
[[nodiscard]] Message encode_u64_request(FrontendRequest request, uint64_t value);
// SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE,
// SET_VRING_ENDIAN, VRING_KICK.
[[nodiscard]] Message encode_vring_state(FrontendRequest request, VringState state);
[[nodiscard]] Message encode_vring_addr(const VringAddress& addr);
// SET_VRING_KICK / CALL / ERR; an invalid `fd` sets the no-fd flag (poll).
[[nodiscard]] Message encode_vring_file(FrontendRequest request, uint32_t vring_index, UniqueFd fd);
// SET_MEM_TABLE: regions.size() in 1..8, one fd per region (moved out of `fds`).
[[nodiscard]] Message encode_mem_table(std::span<const MemoryRegion> regions, std::span<UniqueFd> fds);
// ADD_MEM_REG (fd required) / REM_MEM_REG (fd must be invalid).
[[nodiscard]] Message encode_mem_region(FrontendRequest request, const MemoryRegion& region, UniqueFd fd);
[[nodiscard]] Message encode_log_base(const LogArea& log, UniqueFd fd);
// SET_LOG_FD, SET_BACKEND_REQ_FD, GPU_SET_SOCKET: no payload, one fd.
[[nodiscard]] Message encode_fd_request(FrontendRequest request, UniqueFd fd);
[[nodiscard]] Message encode_iotlb_update(Iova iova, uint64_t size, FrontVa uaddr, IotlbPerm perm);
// size 0 at iova 0 invalidates the whole space (see IotlbMessage).
[[nodiscard]] Message encode_iotlb_invalidate(Iova iova, uint64_t size);
// GET_CONFIG (config.data is sent as is; zeros are customary) / SET_CONFIG.
[[nodiscard]] Message encode_config_request(FrontendRequest request, const ConfigSpace& config);
// GET_INFLIGHT_FD (fd invalid; only num_queues and queue_size matter) /
// SET_INFLIGHT_FD (fd required).
[[nodiscard]] Message encode_inflight_request(FrontendRequest request, const InflightArea& area, UniqueFd fd);
[[nodiscard]] Message encode_get_shared_object(const SharedObject& object);
[[nodiscard]] Message encode_device_state_fd(const DeviceStateTransfer& transfer, UniqueFd fd);

}  // namespace vdma::vhost_user
