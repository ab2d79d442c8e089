#include "vdma/vhost_user/protocol.h"

#include <array>

#include <fmt/format.h>

namespace vdma::vhost_user {

namespace {

// Indexed by request code; entry 0 is unused (no request has code 0).
constexpr std::array<std::string_view, kFrontendRequestLast + 1> kFrontendNames = {
    "UNKNOWN",
    "GET_FEATURES",
    "SET_FEATURES",
    "SET_OWNER",
    "RESET_OWNER",
    "SET_MEM_TABLE",
    "SET_LOG_BASE",
    "SET_LOG_FD",
    "SET_VRING_NUM",
    "SET_VRING_ADDR",
    "SET_VRING_BASE",
    "GET_VRING_BASE",
    "SET_VRING_KICK",
    "SET_VRING_CALL",
    "SET_VRING_ERR",
    "GET_PROTOCOL_FEATURES",
    "SET_PROTOCOL_FEATURES",
    "GET_QUEUE_NUM",
    "SET_VRING_ENABLE",
    "SEND_RARP",
    "NET_SET_MTU",
    "SET_BACKEND_REQ_FD",
    "IOTLB_MSG",
    "SET_VRING_ENDIAN",
    "GET_CONFIG",
    "SET_CONFIG",
    "CREATE_CRYPTO_SESSION",
    "CLOSE_CRYPTO_SESSION",
    "POSTCOPY_ADVISE",
    "POSTCOPY_LISTEN",
    "POSTCOPY_END",
    "GET_INFLIGHT_FD",
    "SET_INFLIGHT_FD",
    "GPU_SET_SOCKET",
    "RESET_DEVICE",
    "VRING_KICK",
    "GET_MAX_MEM_SLOTS",
    "ADD_MEM_REG",
    "REM_MEM_REG",
    "SET_STATUS",
    "GET_STATUS",
    "GET_SHARED_OBJECT",
    "SET_DEVICE_STATE_FD",
    "CHECK_DEVICE_STATE",
};

constexpr std::array<std::string_view, kBackendRequestLast + 1> kBackendNames = {
    "UNKNOWN",
    "BACKEND_IOTLB_MSG",
    "BACKEND_CONFIG_CHANGE_MSG",
    "BACKEND_VRING_HOST_NOTIFIER_MSG",
    "BACKEND_VRING_CALL",
    "BACKEND_VRING_ERR",
    "BACKEND_SHARED_OBJECT_ADD",
    "BACKEND_SHARED_OBJECT_REMOVE",
    "BACKEND_SHARED_OBJECT_LOOKUP",
};

constexpr std::array<std::string_view, kProtocolFeatureLast + 1> kProtocolFeatureNames = {
    "MQ",
    "LOG_SHMFD",
    "RARP",
    "REPLY_ACK",
    "MTU",
    "BACKEND_REQ",
    "CROSS_ENDIAN",
    "CRYPTO_SESSION",
    "PAGEFAULT",
    "CONFIG",
    "BACKEND_SEND_FD",
    "HOST_NOTIFIER",
    "INFLIGHT_SHMFD",
    "RESET_DEVICE",
    "INBAND_NOTIFICATIONS",
    "CONFIGURE_MEM_SLOTS",
    "STATUS",
    "XEN_MMAP",
    "SHARED_OBJECT",
    "DEVICE_STATE",
};

}  // namespace

std::string_view frontend_request_name(uint32_t code) noexcept {
  return is_known_frontend_request(code) ? kFrontendNames[code] : kFrontendNames[0];
}

std::string_view backend_request_name(uint32_t code) noexcept {
  return is_known_backend_request(code) ? kBackendNames[code] : kBackendNames[0];
}

std::string protocol_feature_name(unsigned bit) {
  if (bit <= kProtocolFeatureLast) return std::string(kProtocolFeatureNames[bit]);
  return fmt::format("bit {}", bit);
}

std::string describe_protocol_features(uint64_t features) {
  if (features == 0) return "none";
  std::string out;
  for (unsigned bit = 0; bit < 64; ++bit) {
    if (!has_protocol_feature(features, bit)) continue;
    if (!out.empty()) out += '|';
    out += protocol_feature_name(bit);
  }
  return out;
}

}  // namespace vdma::vhost_user
