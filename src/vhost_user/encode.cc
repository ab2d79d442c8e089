#include "vdma/vhost_user/encode.h"

#include <cstring>
#include <initializer_list>

namespace vdma::vhost_user {

namespace {

constexpr uint32_t kRequestFlags = kVersion;
constexpr uint32_t kReplyFlags = kVersion | kFlagReply;

constexpr uint32_t code(FrontendRequest r) noexcept { return static_cast<uint32_t>(r); }
constexpr uint32_t code(BackendRequest r) noexcept { return static_cast<uint32_t>(r); }

bool one_of(FrontendRequest r, std::initializer_list<FrontendRequest> allowed) noexcept {
  for (FrontendRequest a : allowed) {
    if (a == r) return true;
  }
  return false;
}

template <class T>
Message with_payload(uint32_t request, uint32_t flags, const T& payload) {
  Message m(request, flags);
  m.set_payload_struct(payload);
  return m;
}

WireMemoryRegion to_wire(const MemoryRegion& r) noexcept {
  return {r.guest_addr.value(), r.size, r.user_addr.value(), r.mmap_offset};
}

WireInflight to_wire(const InflightArea& a) noexcept {
  WireInflight w;
  w.mmap_size = a.mmap_size;
  w.mmap_offset = a.mmap_offset;
  w.num_queues = a.num_queues;
  w.queue_size = a.queue_size;
  return w;
}

Message config_message(uint32_t request, uint32_t flags, const ConfigSpace& c) {
  VDMA_CHECK(c.size >= 1 && c.size <= kMaxConfigSize, "config size outside 1..256");
  Message m(request, flags);
  std::span<std::byte> out = m.resize_payload(sizeof(WireConfigHeader) + c.size);
  const WireConfigHeader h{c.offset, c.size, static_cast<uint32_t>(c.flags)};
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + sizeof h, c.data.data(), c.size);
  return m;
}

Message iotlb_message(uint32_t request, IotlbType type, Iova iova, uint64_t size, FrontVa uaddr, IotlbPerm perm) {
  WireIotlbMsg w;
  w.iova = iova.value();
  w.size = size;
  w.uaddr = uaddr.value();
  w.perm = static_cast<uint8_t>(perm);
  w.type = static_cast<uint8_t>(type);
  return with_payload(request, kRequestFlags, w);
}

}  // namespace

// --- Replies ------------------------------------------------------------------

Message encode_u64_reply(FrontendRequest request, uint64_t value) {
  return with_payload(code(request), kReplyFlags, WireU64{value});
}

Message encode_status_reply(uint32_t request, uint64_t status) {
  return with_payload(request, kReplyFlags, WireU64{status});
}

Message encode_vring_base_reply(VringState state) {
  return with_payload(code(FrontendRequest::kGetVringBase), kReplyFlags, WireVringState{state.index, state.num});
}

Message encode_config_reply(const ConfigSpace& config) {
  return config_message(code(FrontendRequest::kGetConfig), kReplyFlags, config);
}

Message encode_config_error_reply() { return Message(code(FrontendRequest::kGetConfig), kReplyFlags); }

Message encode_inflight_reply(const InflightArea& area, UniqueFd fd) {
  VDMA_CHECK(fd.valid(), "GET_INFLIGHT_FD reply needs an fd");
  Message m = with_payload(code(FrontendRequest::kGetInflightFd), kReplyFlags, to_wire(area));
  m.add_fd(std::move(fd));
  return m;
}

// --- Back-end requests ----------------------------------------------------------

Message encode_iotlb_miss(Iova iova, IotlbPerm perm) {
  return iotlb_message(code(BackendRequest::kIotlbMsg), IotlbType::kMiss, iova, 0, FrontVa{0}, perm);
}

Message encode_iotlb_access_fail(Iova iova, IotlbPerm perm) {
  return iotlb_message(code(BackendRequest::kIotlbMsg), IotlbType::kAccessFail, iova, 0, FrontVa{0}, perm);
}

Message encode_config_change() { return Message(code(BackendRequest::kConfigChangeMsg), kRequestFlags); }

Message encode_backend_vring_call(uint32_t vring_index) {
  return with_payload(code(BackendRequest::kVringCall), kRequestFlags, WireVringState{vring_index, 0});
}

Message encode_backend_vring_err(uint32_t vring_index) {
  return with_payload(code(BackendRequest::kVringErr), kRequestFlags, WireVringState{vring_index, 0});
}

Message encode_host_notifier(uint32_t vring_index, uint64_t size, uint64_t offset, UniqueFd fd) {
  VDMA_CHECK(vring_index < kMaxVrings, "vring index above 255");
  WireVringArea w{vring_index, size, offset};
  if (!fd.valid()) w = {vring_index | kVringNoFdFlag, 0, 0};
  Message m = with_payload(code(BackendRequest::kVringHostNotifierMsg), kRequestFlags, w);
  if (fd.valid()) m.add_fd(std::move(fd));
  return m;
}

Message encode_shared_object(BackendRequest request, const SharedObject& object) {
  VDMA_CHECK(request == BackendRequest::kSharedObjectAdd || request == BackendRequest::kSharedObjectRemove ||
                 request == BackendRequest::kSharedObjectLookup,
             "encode_shared_object: not a shared-object request");
  WireShared w;
  std::memcpy(w.uuid, object.uuid.data(), sizeof w.uuid);
  return with_payload(code(request), kRequestFlags, w);
}

// --- Front-end requests ---------------------------------------------------------

Message encode_request(FrontendRequest request) {
  using R = FrontendRequest;
  VDMA_CHECK(one_of(request, {R::kGetFeatures, R::kSetOwner, R::kResetOwner, R::kGetProtocolFeatures,
                              R::kGetQueueNum, R::kPostcopyAdvise, R::kPostcopyListen, R::kPostcopyEnd,
                              R::kResetDevice, R::kGetMaxMemSlots, R::kGetStatus, R::kCheckDeviceState}),
             "encode_request: request has a payload");
  return Message(code(request), kRequestFlags);
}

Message encode_u64_request(FrontendRequest request, uint64_t value) {
  using R = FrontendRequest;
  VDMA_CHECK(one_of(request, {R::kSetFeatures, R::kSetProtocolFeatures, R::kSendRarp, R::kNetSetMtu, R::kSetStatus,
                              R::kCloseCryptoSession}),
             "encode_u64_request: request does not carry a plain u64");
  return with_payload(code(request), kRequestFlags, WireU64{value});
}

Message encode_vring_state(FrontendRequest request, VringState state) {
  using R = FrontendRequest;
  VDMA_CHECK(one_of(request, {R::kSetVringNum, R::kSetVringBase, R::kGetVringBase, R::kSetVringEnable,
                              R::kSetVringEndian, R::kVringKick}),
             "encode_vring_state: request does not carry a vring state");
  return with_payload(code(request), kRequestFlags, WireVringState{state.index, state.num});
}

Message encode_vring_addr(const VringAddress& addr) {
  WireVringAddr w;
  w.index = addr.index;
  w.flags = addr.log_used ? kVringAddrFlagLog : 0;
  w.desc_user_addr = addr.desc.wire_value();
  w.used_user_addr = addr.used.wire_value();
  w.avail_user_addr = addr.avail.wire_value();
  w.log_guest_addr = addr.log_guest_addr.value();
  return with_payload(code(FrontendRequest::kSetVringAddr), kRequestFlags, w);
}

Message encode_vring_file(FrontendRequest request, uint32_t vring_index, UniqueFd fd) {
  using R = FrontendRequest;
  VDMA_CHECK(one_of(request, {R::kSetVringKick, R::kSetVringCall, R::kSetVringErr}),
             "encode_vring_file: not SET_VRING_KICK/CALL/ERR");
  VDMA_CHECK(vring_index < kMaxVrings, "vring index above 255");
  const uint64_t word = vring_index | (fd.valid() ? 0 : kVringNoFdFlag);
  Message m = with_payload(code(request), kRequestFlags, WireU64{word});
  if (fd.valid()) m.add_fd(std::move(fd));
  return m;
}

Message encode_mem_table(std::span<const MemoryRegion> regions, std::span<UniqueFd> fds) {
  VDMA_CHECK(!regions.empty() && regions.size() <= kMaxMemRegions, "SET_MEM_TABLE needs 1..8 regions");
  VDMA_CHECK(fds.size() == regions.size(), "SET_MEM_TABLE needs one fd per region");
  Message m(code(FrontendRequest::kSetMemTable), kRequestFlags);
  std::span<std::byte> out = m.resize_payload(kMemoryTableHeaderSize + regions.size() * sizeof(WireMemoryRegion));
  const uint32_t header[2] = {static_cast<uint32_t>(regions.size()), 0};
  std::memcpy(out.data(), header, sizeof header);
  for (size_t i = 0; i < regions.size(); ++i) {
    VDMA_CHECK(fds[i].valid(), "SET_MEM_TABLE: region without an fd");
    const WireMemoryRegion w = to_wire(regions[i]);
    std::memcpy(out.data() + kMemoryTableHeaderSize + i * sizeof w, &w, sizeof w);
    m.add_fd(std::move(fds[i]));
  }
  return m;
}

Message encode_mem_region(FrontendRequest request, const MemoryRegion& region, UniqueFd fd) {
  VDMA_CHECK(request == FrontendRequest::kAddMemReg || request == FrontendRequest::kRemMemReg,
             "encode_mem_region: not ADD_MEM_REG/REM_MEM_REG");
  VDMA_CHECK(fd.valid() == (request == FrontendRequest::kAddMemReg),
             "ADD_MEM_REG carries exactly one fd, REM_MEM_REG none");
  WireSingleMemoryRegion w;
  w.region = to_wire(region);
  Message m = with_payload(code(request), kRequestFlags, w);
  if (fd.valid()) m.add_fd(std::move(fd));
  return m;
}

Message encode_log_base(const LogArea& log, UniqueFd fd) {
  VDMA_CHECK(fd.valid(), "SET_LOG_BASE needs the log fd");
  Message m = with_payload(code(FrontendRequest::kSetLogBase), kRequestFlags, WireLog{log.mmap_size, log.mmap_offset});
  m.add_fd(std::move(fd));
  return m;
}

Message encode_fd_request(FrontendRequest request, UniqueFd fd) {
  using R = FrontendRequest;
  VDMA_CHECK(one_of(request, {R::kSetLogFd, R::kSetBackendReqFd, R::kGpuSetSocket}),
             "encode_fd_request: not SET_LOG_FD/SET_BACKEND_REQ_FD/GPU_SET_SOCKET");
  VDMA_CHECK(fd.valid(), "encode_fd_request needs an fd");
  Message m(code(request), kRequestFlags);
  m.add_fd(std::move(fd));
  return m;
}

Message encode_iotlb_update(Iova iova, uint64_t size, FrontVa uaddr, IotlbPerm perm) {
  return iotlb_message(code(FrontendRequest::kIotlbMsg), IotlbType::kUpdate, iova, size, uaddr, perm);
}

Message encode_iotlb_invalidate(Iova iova, uint64_t size) {
  return iotlb_message(code(FrontendRequest::kIotlbMsg), IotlbType::kInvalidate, iova, size, FrontVa{0},
                       IotlbPerm::kNone);
}

Message encode_config_request(FrontendRequest request, const ConfigSpace& config) {
  VDMA_CHECK(request == FrontendRequest::kGetConfig || request == FrontendRequest::kSetConfig,
             "encode_config_request: not GET_CONFIG/SET_CONFIG");
  return config_message(code(request), kRequestFlags, config);
}

Message encode_inflight_request(FrontendRequest request, const InflightArea& area, UniqueFd fd) {
  VDMA_CHECK(request == FrontendRequest::kGetInflightFd || request == FrontendRequest::kSetInflightFd,
             "encode_inflight_request: not GET_INFLIGHT_FD/SET_INFLIGHT_FD");
  VDMA_CHECK(fd.valid() == (request == FrontendRequest::kSetInflightFd),
             "SET_INFLIGHT_FD carries exactly one fd, GET_INFLIGHT_FD none");
  Message m = with_payload(code(request), kRequestFlags, to_wire(area));
  if (fd.valid()) m.add_fd(std::move(fd));
  return m;
}

Message encode_get_shared_object(const SharedObject& object) {
  WireShared w;
  std::memcpy(w.uuid, object.uuid.data(), sizeof w.uuid);
  return with_payload(code(FrontendRequest::kGetSharedObject), kRequestFlags, w);
}

Message encode_device_state_fd(const DeviceStateTransfer& transfer, UniqueFd fd) {
  VDMA_CHECK(fd.valid(), "SET_DEVICE_STATE_FD needs the transfer fd");
  const WireDeviceStateParams w{static_cast<uint32_t>(transfer.direction), static_cast<uint32_t>(transfer.phase)};
  Message m = with_payload(code(FrontendRequest::kSetDeviceStateFd), kRequestFlags, w);
  m.add_fd(std::move(fd));
  return m;
}

}  // namespace vdma::vhost_user
