// vhost-user wire protocol: request codes, flag and feature bits, payload
// layouts (qemu docs/interop/vhost-user.rst, "Message Specification").
//
//   WireHeader h{};
//   std::memcpy(&h, bytes, sizeof h);                       // native byte order
//   spdlog::info("{}", frontend_request_name(h.request));   // "SET_MEM_TABLE"
//   if (has_protocol_feature(acked, kProtocolFeatureReplyAck)) ...
//
// Everything here is a plain constant or a trivially copyable struct whose
// layout is the one on the wire: every number is in the machine's native byte
// order (vhost-user.rst: "All numbers are in the machine native byte order"),
// because both peers run on the same host. The structs are the C layouts QEMU
// puts in its payload union, including their implicit tail padding
// (WireIotlbMsg is 32 bytes, WireInflight is 24), because the header's size
// field carries sizeof() of those structs.
//
// These structs are for encoding and decoding only. Code outside the codec
// works with the validated views of payload_views.h, which carry strong
// address types instead of raw integers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace vdma::vhost_user {

// --- Header -----------------------------------------------------------------

// vhost-user.rst "Header": flags bits 0-1 are the version, bit 2 marks a
// reply, bit 3 asks for a REPLY_ACK reply. The other bits are reserved; the
// codec rejects them.
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kFlagVersionMask = 0x3;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;
inline constexpr uint32_t kFlagsDefined = kFlagVersionMask | kFlagReply | kFlagNeedReply;

struct WireHeader {
  uint32_t request = 0;
  uint32_t flags = 0;
  uint32_t size = 0;  // payload bytes that follow
};
inline constexpr size_t kHeaderSize = 12;

// --- Limits -----------------------------------------------------------------

// At most 8 regions in SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS) and at
// most 8 fds in any message (vhost-user.rst "Back-end communication").
inline constexpr uint32_t kMaxMemRegions = 8;
inline constexpr size_t kMaxFds = 8;
// The device config space a vhost-user message can address.
inline constexpr uint32_t kMaxConfigSize = 256;
// SET_VRING_KICK/CALL/ERR carry the vring index in 8 bits, so no connection
// can address more than 256 vrings; the codec bounds every vring index by it.
inline constexpr uint32_t kMaxVrings = 256;
// virtio 1.2 §2.6: Queue Size is at most 32768.
inline constexpr uint32_t kMaxQueueSize = 32768;

// --- Request codes ----------------------------------------------------------

// Requests the front-end sends to the back-end on the main socket
// (vhost-user.rst "Front-end message types").
enum class FrontendRequest : uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
  kGetSharedObject = 41,
  kSetDeviceStateFd = 42,
  kCheckDeviceState = 43,
};
inline constexpr uint32_t kFrontendRequestFirst = 1;
inline constexpr uint32_t kFrontendRequestLast = 43;

// Requests the back-end sends to the front-end on the back-end channel (the
// socket handed over by SET_BACKEND_REQ_FD; vhost-user.rst "Back-end message
// types"). The codes overlap the front-end's, so a code means nothing without
// knowing which channel it came from.
enum class BackendRequest : uint32_t {
  kIotlbMsg = 1,
  kConfigChangeMsg = 2,
  kVringHostNotifierMsg = 3,
  kVringCall = 4,
  kVringErr = 5,
  kSharedObjectAdd = 6,
  kSharedObjectRemove = 7,
  kSharedObjectLookup = 8,
};
inline constexpr uint32_t kBackendRequestFirst = 1;
inline constexpr uint32_t kBackendRequestLast = 8;

[[nodiscard]] constexpr bool is_known_frontend_request(uint32_t code) noexcept {
  return code >= kFrontendRequestFirst && code <= kFrontendRequestLast;
}
[[nodiscard]] constexpr bool is_known_backend_request(uint32_t code) noexcept {
  return code >= kBackendRequestFirst && code <= kBackendRequestLast;
}

// Spec names without the VHOST_USER_ prefix, for log lines and errors:
// "SET_MEM_TABLE", "BACKEND_IOTLB_MSG". Unknown codes give "UNKNOWN".
[[nodiscard]] std::string_view frontend_request_name(uint32_t code) noexcept;
[[nodiscard]] std::string_view backend_request_name(uint32_t code) noexcept;
[[nodiscard]] inline std::string_view request_name(FrontendRequest r) noexcept {
  return frontend_request_name(static_cast<uint32_t>(r));
}
[[nodiscard]] inline std::string_view request_name(BackendRequest r) noexcept {
  return backend_request_name(static_cast<uint32_t>(r));
}

// --- Feature bits -----------------------------------------------------------

// Virtio feature bits with a vhost meaning (GET/SET_FEATURES).
inline constexpr unsigned kFeatureLogAll = 26;            // VHOST_F_LOG_ALL
inline constexpr unsigned kFeatureProtocolFeatures = 30;  // VHOST_USER_F_PROTOCOL_FEATURES

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES; vhost-user.rst
// "Protocol features").
inline constexpr unsigned kProtocolFeatureMq = 0;
inline constexpr unsigned kProtocolFeatureLogShmfd = 1;
inline constexpr unsigned kProtocolFeatureRarp = 2;
inline constexpr unsigned kProtocolFeatureReplyAck = 3;
inline constexpr unsigned kProtocolFeatureMtu = 4;
inline constexpr unsigned kProtocolFeatureBackendReq = 5;
inline constexpr unsigned kProtocolFeatureCrossEndian = 6;
inline constexpr unsigned kProtocolFeatureCryptoSession = 7;
inline constexpr unsigned kProtocolFeaturePagefault = 8;
inline constexpr unsigned kProtocolFeatureConfig = 9;
inline constexpr unsigned kProtocolFeatureBackendSendFd = 10;
inline constexpr unsigned kProtocolFeatureHostNotifier = 11;
inline constexpr unsigned kProtocolFeatureInflightShmfd = 12;
inline constexpr unsigned kProtocolFeatureResetDevice = 13;
inline constexpr unsigned kProtocolFeatureInbandNotifications = 14;
inline constexpr unsigned kProtocolFeatureConfigureMemSlots = 15;
inline constexpr unsigned kProtocolFeatureStatus = 16;
inline constexpr unsigned kProtocolFeatureXenMmap = 17;
inline constexpr unsigned kProtocolFeatureSharedObject = 18;
inline constexpr unsigned kProtocolFeatureDeviceState = 19;
inline constexpr unsigned kProtocolFeatureLast = 19;

[[nodiscard]] constexpr uint64_t protocol_feature_bit(unsigned bit) noexcept { return uint64_t{1} << bit; }
[[nodiscard]] constexpr bool has_protocol_feature(uint64_t features, unsigned bit) noexcept {
  return (features & protocol_feature_bit(bit)) != 0;
}
// "REPLY_ACK" for known bits, "bit 40" otherwise.
[[nodiscard]] std::string protocol_feature_name(unsigned bit);
// "MQ|REPLY_ACK|bit 40"; "none" for 0.
[[nodiscard]] std::string describe_protocol_features(uint64_t features);

// --- Payload constants --------------------------------------------------------

// SET_VRING_KICK/CALL/ERR u64 and the host-notifier area's u64: bits 0-7 are
// the vring index, bit 8 says "no fd attached" (poll instead). Bits 9-63 are
// reserved.
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFdFlag = uint64_t{1} << 8;

// vhost_vring_addr.flags bit 0 (VHOST_VRING_F_LOG): log used-ring writes.
inline constexpr uint32_t kVringAddrFlagLog = 1u << 0;

// vhost_iotlb_msg.type (vhost-user.rst "An IOTLB message"). The Linux uapi's
// BATCH_BEGIN/BATCH_END (5, 6) are not part of vhost-user.
enum class IotlbType : uint8_t {
  kMiss = 1,
  kUpdate = 2,
  kInvalidate = 3,
  kAccessFail = 4,
};
// vhost_iotlb_msg.perm: 0 no access, 1 read, 2 write, 3 read/write.
enum class IotlbPerm : uint8_t {
  kNone = 0,
  kRead = 1,
  kWrite = 2,
  kReadWrite = 3,
};

// VhostUserConfig.flags values.
enum class ConfigFlags : uint32_t {
  kWritable = 0,       // the front-end writes guest-writable fields
  kLiveMigration = 1,  // the front-end restores config space on a migration destination
};

// SET_DEVICE_STATE_FD parameters (vhost-user.rst "Device state transfer parameters").
enum class TransferDirection : uint32_t { kSave = 0, kLoad = 1 };
enum class MigrationPhase : uint32_t { kStopped = 0 };

// --- Payload layouts ----------------------------------------------------------

struct WireU64 {
  uint64_t value = 0;
};

// struct vhost_vring_state
struct WireVringState {
  uint32_t index = 0;
  uint32_t num = 0;
};

// struct vhost_vring_addr
struct WireVringAddr {
  uint32_t index = 0;
  uint32_t flags = 0;
  uint64_t desc_user_addr = 0;
  uint64_t used_user_addr = 0;
  uint64_t avail_user_addr = 0;
  uint64_t log_guest_addr = 0;
};

// VhostUserMemoryRegion (without the XEN_MMAP extension, which vdma never
// negotiates).
struct WireMemoryRegion {
  uint64_t guest_phys_addr = 0;
  uint64_t memory_size = 0;
  uint64_t userspace_addr = 0;
  uint64_t mmap_offset = 0;
};

// VhostUserMemory. Only num_regions entries travel: the payload size is
// offsetof(regions) + num_regions * sizeof(WireMemoryRegion).
struct WireMemoryTable {
  uint32_t num_regions = 0;
  uint32_t padding = 0;
  WireMemoryRegion regions[kMaxMemRegions] = {};
};
inline constexpr size_t kMemoryTableHeaderSize = 8;

// VhostUserMemRegMsg: ADD_MEM_REG / REM_MEM_REG.
struct WireSingleMemoryRegion {
  uint64_t padding = 0;
  WireMemoryRegion region;
};

// VhostUserLog: SET_LOG_BASE.
struct WireLog {
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
};

// struct vhost_iotlb_msg; 26 bytes of fields, 32 with the C tail padding.
struct WireIotlbMsg {
  uint64_t iova = 0;
  uint64_t size = 0;
  uint64_t uaddr = 0;
  uint8_t perm = 0;
  uint8_t type = 0;
  uint8_t padding[6] = {};
};

// VhostUserConfig: a 12-byte header and `size` bytes of config space.
struct WireConfigHeader {
  uint32_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;
};
struct WireConfig {
  WireConfigHeader header;
  uint8_t region[kMaxConfigSize] = {};
};

// VhostUserVringArea: BACKEND_VRING_HOST_NOTIFIER_MSG.
struct WireVringArea {
  uint64_t u64 = 0;  // vring index in bits 0-7, kVringNoFdFlag in bit 8
  uint64_t size = 0;
  uint64_t offset = 0;
};

// VhostUserInflight; 20 bytes of fields, 24 with the C tail padding.
struct WireInflight {
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
  uint16_t num_queues = 0;
  uint16_t queue_size = 0;
  uint32_t padding = 0;
};

// VhostUserShared: a UUID naming a shared object.
struct WireShared {
  uint8_t uuid[16] = {};
};

// SET_DEVICE_STATE_FD request payload.
struct WireDeviceStateParams {
  uint32_t direction = 0;
  uint32_t phase = 0;
};

static_assert(sizeof(WireHeader) == kHeaderSize);
static_assert(sizeof(WireU64) == 8);
static_assert(sizeof(WireVringState) == 8);
static_assert(sizeof(WireVringAddr) == 40 && offsetof(WireVringAddr, desc_user_addr) == 8 &&
              offsetof(WireVringAddr, log_guest_addr) == 32);
static_assert(sizeof(WireMemoryRegion) == 32 && offsetof(WireMemoryRegion, mmap_offset) == 24);
static_assert(sizeof(WireMemoryTable) == 264 && offsetof(WireMemoryTable, regions) == kMemoryTableHeaderSize);
static_assert(sizeof(WireSingleMemoryRegion) == 40 && offsetof(WireSingleMemoryRegion, region) == 8);
static_assert(sizeof(WireLog) == 16);
static_assert(sizeof(WireIotlbMsg) == 32 && offsetof(WireIotlbMsg, perm) == 24 && offsetof(WireIotlbMsg, type) == 25);
static_assert(sizeof(WireConfigHeader) == 12 && sizeof(WireConfig) == 12 + kMaxConfigSize);
static_assert(sizeof(WireVringArea) == 24);
static_assert(sizeof(WireInflight) == 24 && offsetof(WireInflight, num_queues) == 16 &&
              offsetof(WireInflight, queue_size) == 18);
static_assert(sizeof(WireShared) == 16);
static_assert(sizeof(WireDeviceStateParams) == 8);
static_assert(std::is_trivially_copyable_v<WireMemoryTable> && std::is_trivially_copyable_v<WireConfig>);

}  // namespace vdma::vhost_user
