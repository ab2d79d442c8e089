// Request codes, names, flag and feature bits against vhost-user.rst.
#include "vdma/vhost_user/protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/message.h"

namespace vdma::vhost_user {
namespace {

TEST(VhostUserProtocol, HeaderFlagBits) {
  EXPECT_EQ(kVersion, 0x1u);
  EXPECT_EQ(kFlagVersionMask, 0x3u);
  EXPECT_EQ(kFlagReply, 0x4u);
  EXPECT_EQ(kFlagNeedReply, 0x8u);
  EXPECT_EQ(kVringNoFdFlag, 0x100u);
  EXPECT_EQ(kVringIndexMask, 0xffu);
  EXPECT_EQ(kVringAddrFlagLog, 0x1u);
}

TEST(VhostUserProtocol, EveryFrontendRequestHasItsSpecCodeAndName) {
  const std::vector<std::pair<FrontendRequest, std::string_view>> table = {
      {FrontendRequest::kGetFeatures, "GET_FEATURES"},
      {FrontendRequest::kSetFeatures, "SET_FEATURES"},
      {FrontendRequest::kSetOwner, "SET_OWNER"},
      {FrontendRequest::kResetOwner, "RESET_OWNER"},
      {FrontendRequest::kSetMemTable, "SET_MEM_TABLE"},
      {FrontendRequest::kSetLogBase, "SET_LOG_BASE"},
      {FrontendRequest::kSetLogFd, "SET_LOG_FD"},
      {FrontendRequest::kSetVringNum, "SET_VRING_NUM"},
      {FrontendRequest::kSetVringAddr, "SET_VRING_ADDR"},
      {FrontendRequest::kSetVringBase, "SET_VRING_BASE"},
      {FrontendRequest::kGetVringBase, "GET_VRING_BASE"},
      {FrontendRequest::kSetVringKick, "SET_VRING_KICK"},
      {FrontendRequest::kSetVringCall, "SET_VRING_CALL"},
      {FrontendRequest::kSetVringErr, "SET_VRING_ERR"},
      {FrontendRequest::kGetProtocolFeatures, "GET_PROTOCOL_FEATURES"},
      {FrontendRequest::kSetProtocolFeatures, "SET_PROTOCOL_FEATURES"},
      {FrontendRequest::kGetQueueNum, "GET_QUEUE_NUM"},
      {FrontendRequest::kSetVringEnable, "SET_VRING_ENABLE"},
      {FrontendRequest::kSendRarp, "SEND_RARP"},
      {FrontendRequest::kNetSetMtu, "NET_SET_MTU"},
      {FrontendRequest::kSetBackendReqFd, "SET_BACKEND_REQ_FD"},
      {FrontendRequest::kIotlbMsg, "IOTLB_MSG"},
      {FrontendRequest::kSetVringEndian, "SET_VRING_ENDIAN"},
      {FrontendRequest::kGetConfig, "GET_CONFIG"},
      {FrontendRequest::kSetConfig, "SET_CONFIG"},
      {FrontendRequest::kCreateCryptoSession, "CREATE_CRYPTO_SESSION"},
      {FrontendRequest::kCloseCryptoSession, "CLOSE_CRYPTO_SESSION"},
      {FrontendRequest::kPostcopyAdvise, "POSTCOPY_ADVISE"},
      {FrontendRequest::kPostcopyListen, "POSTCOPY_LISTEN"},
      {FrontendRequest::kPostcopyEnd, "POSTCOPY_END"},
      {FrontendRequest::kGetInflightFd, "GET_INFLIGHT_FD"},
      {FrontendRequest::kSetInflightFd, "SET_INFLIGHT_FD"},
      {FrontendRequest::kGpuSetSocket, "GPU_SET_SOCKET"},
      {FrontendRequest::kResetDevice, "RESET_DEVICE"},
      {FrontendRequest::kVringKick, "VRING_KICK"},
      {FrontendRequest::kGetMaxMemSlots, "GET_MAX_MEM_SLOTS"},
      {FrontendRequest::kAddMemReg, "ADD_MEM_REG"},
      {FrontendRequest::kRemMemReg, "REM_MEM_REG"},
      {FrontendRequest::kSetStatus, "SET_STATUS"},
      {FrontendRequest::kGetStatus, "GET_STATUS"},
      {FrontendRequest::kGetSharedObject, "GET_SHARED_OBJECT"},
      {FrontendRequest::kSetDeviceStateFd, "SET_DEVICE_STATE_FD"},
      {FrontendRequest::kCheckDeviceState, "CHECK_DEVICE_STATE"},
  };
  ASSERT_EQ(table.size(), kFrontendRequestLast);
  for (size_t i = 0; i < table.size(); ++i) {
    const auto [req, name] = table[i];
    EXPECT_EQ(static_cast<uint32_t>(req), i + 1) << name;  // codes are 1..43 in table order
    EXPECT_EQ(request_name(req), name);
    EXPECT_TRUE(is_known_frontend_request(static_cast<uint32_t>(req)));
  }
  // Spot checks against the numbers in vhost-user.rst.
  EXPECT_EQ(static_cast<uint32_t>(FrontendRequest::kIotlbMsg), 22u);
  EXPECT_EQ(static_cast<uint32_t>(FrontendRequest::kSetBackendReqFd), 21u);
  EXPECT_EQ(static_cast<uint32_t>(FrontendRequest::kAddMemReg), 37u);
  EXPECT_EQ(static_cast<uint32_t>(FrontendRequest::kGetStatus), 40u);
}

TEST(VhostUserProtocol, EveryBackendRequestHasItsSpecCodeAndName) {
  const std::vector<std::pair<BackendRequest, std::string_view>> table = {
      {BackendRequest::kIotlbMsg, "BACKEND_IOTLB_MSG"},
      {BackendRequest::kConfigChangeMsg, "BACKEND_CONFIG_CHANGE_MSG"},
      {BackendRequest::kVringHostNotifierMsg, "BACKEND_VRING_HOST_NOTIFIER_MSG"},
      {BackendRequest::kVringCall, "BACKEND_VRING_CALL"},
      {BackendRequest::kVringErr, "BACKEND_VRING_ERR"},
      {BackendRequest::kSharedObjectAdd, "BACKEND_SHARED_OBJECT_ADD"},
      {BackendRequest::kSharedObjectRemove, "BACKEND_SHARED_OBJECT_REMOVE"},
      {BackendRequest::kSharedObjectLookup, "BACKEND_SHARED_OBJECT_LOOKUP"},
  };
  ASSERT_EQ(table.size(), kBackendRequestLast);
  for (size_t i = 0; i < table.size(); ++i) {
    EXPECT_EQ(static_cast<uint32_t>(table[i].first), i + 1);
    EXPECT_EQ(request_name(table[i].first), table[i].second);
  }
}

TEST(VhostUserProtocol, UnknownCodesAreNamedAsSuch) {
  EXPECT_EQ(frontend_request_name(0), "UNKNOWN");
  EXPECT_EQ(frontend_request_name(44), "UNKNOWN");
  EXPECT_EQ(frontend_request_name(0xffffffff), "UNKNOWN");
  EXPECT_EQ(backend_request_name(0), "UNKNOWN");
  EXPECT_EQ(backend_request_name(9), "UNKNOWN");
  EXPECT_FALSE(is_known_frontend_request(44));
  EXPECT_FALSE(is_known_backend_request(9));
  // The same code means different requests on the two channels.
  EXPECT_EQ(request_name(1, Channel::kMain), "GET_FEATURES");
  EXPECT_EQ(request_name(1, Channel::kBackend), "BACKEND_IOTLB_MSG");
  EXPECT_EQ(fmt::format("{}", RequestLabel{5, Channel::kMain}), "SET_MEM_TABLE");
  EXPECT_EQ(fmt::format("{}", RequestLabel{99, Channel::kMain}), "request 99");
  EXPECT_EQ(fmt::format("{}", RequestLabel{12, Channel::kBackend}), "request 12");
}

TEST(VhostUserProtocol, ProtocolFeatureBitsAndNames) {
  const std::vector<std::pair<unsigned, std::string_view>> table = {
      {kProtocolFeatureMq, "MQ"},
      {kProtocolFeatureLogShmfd, "LOG_SHMFD"},
      {kProtocolFeatureRarp, "RARP"},
      {kProtocolFeatureReplyAck, "REPLY_ACK"},
      {kProtocolFeatureMtu, "MTU"},
      {kProtocolFeatureBackendReq, "BACKEND_REQ"},
      {kProtocolFeatureCrossEndian, "CROSS_ENDIAN"},
      {kProtocolFeatureCryptoSession, "CRYPTO_SESSION"},
      {kProtocolFeaturePagefault, "PAGEFAULT"},
      {kProtocolFeatureConfig, "CONFIG"},
      {kProtocolFeatureBackendSendFd, "BACKEND_SEND_FD"},
      {kProtocolFeatureHostNotifier, "HOST_NOTIFIER"},
      {kProtocolFeatureInflightShmfd, "INFLIGHT_SHMFD"},
      {kProtocolFeatureResetDevice, "RESET_DEVICE"},
      {kProtocolFeatureInbandNotifications, "INBAND_NOTIFICATIONS"},
      {kProtocolFeatureConfigureMemSlots, "CONFIGURE_MEM_SLOTS"},
      {kProtocolFeatureStatus, "STATUS"},
      {kProtocolFeatureXenMmap, "XEN_MMAP"},
      {kProtocolFeatureSharedObject, "SHARED_OBJECT"},
      {kProtocolFeatureDeviceState, "DEVICE_STATE"},
  };
  for (size_t i = 0; i < table.size(); ++i) {
    EXPECT_EQ(table[i].first, i);
    EXPECT_EQ(protocol_feature_name(table[i].first), table[i].second);
  }
  EXPECT_EQ(protocol_feature_name(40), "bit 40");
  EXPECT_EQ(describe_protocol_features(0), "none");
  EXPECT_EQ(describe_protocol_features(protocol_feature_bit(kProtocolFeatureMq) |
                                       protocol_feature_bit(kProtocolFeatureReplyAck) | (uint64_t{1} << 40)),
            "MQ|REPLY_ACK|bit 40");
  EXPECT_TRUE(has_protocol_feature(0x8, kProtocolFeatureReplyAck));
  EXPECT_FALSE(has_protocol_feature(0x8, kProtocolFeatureMq));
  EXPECT_EQ(kFeatureProtocolFeatures, 30u);
}

TEST(VhostUserProtocol, PayloadSizesMatchTheCLayouts) {
  // The header's size field carries sizeof() of QEMU's payload structs,
  // including tail padding; these are the numbers a peer sends.
  EXPECT_EQ(sizeof(WireVringState), 8u);
  EXPECT_EQ(sizeof(WireVringAddr), 40u);
  EXPECT_EQ(sizeof(WireMemoryRegion), 32u);
  EXPECT_EQ(sizeof(WireMemoryTable), 8u + 8 * 32);
  EXPECT_EQ(sizeof(WireSingleMemoryRegion), 40u);
  EXPECT_EQ(sizeof(WireLog), 16u);
  EXPECT_EQ(sizeof(WireIotlbMsg), 32u);
  EXPECT_EQ(sizeof(WireConfig), 12u + 256);
  EXPECT_EQ(sizeof(WireVringArea), 24u);
  EXPECT_EQ(sizeof(WireInflight), 24u);
  EXPECT_EQ(sizeof(WireShared), 16u);
  EXPECT_EQ(sizeof(WireDeviceStateParams), 8u);
}

TEST(VhostUserProtocol, ErrorCodeNames) {
  EXPECT_EQ(ErrcTraits<VhostUserErrc>::domain, "vhost_user");
  EXPECT_EQ(Error(VhostUserErrc::kBadFdCount, "x").to_string(), "vhost_user.bad_fd_count: x");
  EXPECT_EQ(ErrcTraits<VhostUserErrc>::name(VhostUserErrc::kPeerClosed), "peer_closed");
  EXPECT_EQ(ErrcTraits<VhostUserErrc>::name(VhostUserErrc::kPayloadTooLarge), "payload_too_large");
  EXPECT_EQ(ErrcTraits<VhostUserErrc>::name(VhostUserErrc::kRemoteError), "remote_error");
}

}  // namespace
}  // namespace vdma::vhost_user
