// BackendSession: construction, the request loop, dispatch, negotiation,
// config space, status and reset. Memory and IOTLB requests are in
// backend_session_memory.cc, vring requests in backend_session_vring.cc.
#include "vdma/vhost_user/backend_session.h"

#include <spdlog/spdlog.h>

#include "backend_channel.h"
#include "io_thread.h"
#include "vring.h"
#include "vdma/virtio/features.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/reply_policy.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::vhost_user {

namespace {

constexpr uint64_t bit(unsigned b) noexcept { return uint64_t{1} << b; }

// Transport features the device queues implement (virtio 1.2 §6).
constexpr uint64_t kQueueFeatures =
    bit(kFeatureVersion1) | bit(kFeatureIndirectDesc) | bit(kFeatureEventIdx) | bit(kFeatureRingPacked);

constexpr uint64_t kBaseProtocolFeatures =
    protocol_feature_bit(kProtocolFeatureMq) | protocol_feature_bit(kProtocolFeatureReplyAck) |
    protocol_feature_bit(kProtocolFeatureBackendReq) | protocol_feature_bit(kProtocolFeatureBackendSendFd) |
    protocol_feature_bit(kProtocolFeatureConfigureMemSlots) | protocol_feature_bit(kProtocolFeatureResetDevice) |
    protocol_feature_bit(kProtocolFeatureStatus) | protocol_feature_bit(kProtocolFeatureInflightShmfd);

// The name of I/O thread `t` of `n`, after the queues it serves (t, t + n,
// ...): "vdma-q0,2,4", or "vdma-q0..14/2" (first..last/step) when the list
// would pass the kernel's 15 characters.
std::string iothread_name(uint32_t t, uint32_t n, uint32_t queues) {
  std::string list = fmt::format("vdma-q{}", t);
  uint32_t last = t;
  for (uint32_t q = t + n; q < queues; q += n) {
    list += fmt::format(",{}", q);
    last = q;
  }
  if (list.size() <= 15) return list;
  return fmt::format("vdma-q{}..{}/{}", t, last, n);
}

}  // namespace

BackendSession::BackendSession(UniqueFd socket, BackendDevice& device, const BackendOptions& options)
    : device_(device),
      options_(options),
      socket_(std::move(socket)),
      memory_(options.max_mem_slots),
      iotlb_(DeviceIotlbOptions{.max_entries = options.iotlb_max_entries,
                                .max_readers = device.num_queues() + 1}),
      channel_(std::make_unique<BackendChannel>()) {}

Result<std::unique_ptr<BackendSession>> BackendSession::create(UniqueFd socket, BackendDevice& device,
                                                               BackendOptions options) {
  if (!socket.valid()) return make_error(BaseErrc::kInvalidArgument, "vhost-user back-end without a socket");
  const uint32_t queues = device.num_queues();
  if (queues == 0 || queues > kMaxVrings) {
    return make_error(BaseErrc::kInvalidArgument, "device has {} queues, expected 1..{}", queues, kMaxVrings);
  }
  if (options.max_mem_slots < kMaxMemRegions || options.iotlb_max_entries == 0) {
    return make_error(BaseErrc::kInvalidArgument, "max_mem_slots {} (>= {}) / iotlb_max_entries {} (>= 1)",
                      options.max_mem_slots, kMaxMemRegions, options.iotlb_max_entries);
  }
  if (device.config_size() > kMaxConfigSize) {
    return make_error(BaseErrc::kInvalidArgument, "device config space of {} bytes, at most {}",
                      device.config_size(), kMaxConfigSize);
  }
  std::unique_ptr<BackendSession> s(new BackendSession(std::move(socket), device, options));
  s->offered_features_ = device.device_features() | kQueueFeatures | bit(kFeatureProtocolFeatures) |
                         (options.offer_access_platform ? bit(kFeatureAccessPlatform) : 0);
  s->offered_protocol_features_ =
      kBaseProtocolFeatures | (device.config_size() > 0 ? protocol_feature_bit(kProtocolFeatureConfig) : 0);
  if (options.iothreads > queues) {
    return make_error(BaseErrc::kInvalidArgument, "{} I/O threads for {} queues: at most one per queue",
                      options.iothreads, queues);
  }
  for (uint32_t t = 0; t < options.iothreads; ++t) {
    s->iothreads_.push_back(VDMA_TRY(IoThread::create(iothread_name(t, options.iothreads, queues))));
  }
  s->vrings_.reserve(queues);
  for (uint32_t i = 0; i < queues; ++i) s->vrings_.push_back(VDMA_TRY(Vring::create(i)));
  return s;
}

BackendSession::~BackendSession() {
  for (auto& v : vrings_) v->stop_worker();
}

bool BackendSession::iommu_mode() const noexcept {
  return (acked_features_ & bit(kFeatureAccessPlatform)) != 0;
}

RingFormat BackendSession::ring_format() const noexcept {
  return (acked_features_ & bit(kFeatureRingPacked)) != 0 ? RingFormat::kPacked : RingFormat::kSplit;
}

// --- The request loop ------------------------------------------------------------

Error BackendSession::run() {
  for (;;) {
    if (auto r = handle_next(); !r) {
      if (iommu_used_) {
        // One stable line (scripts/guest parses it).
        const IotlbStats st = iotlb_.stats();
        spdlog::info(
            "vhost-user IOTLB stats: hits={} misses={} permission_failures={} evictions={} grace_periods={} "
            "entries={}",
            st.hits, st.misses, st.permission_failures, st.evictions, st.grace_periods, st.entries);
      }
      return std::move(r).error();
    }
  }
}

void BackendSession::close(const Error& why) {
  (void)why;
  for (auto& v : vrings_) v->stop_worker();
  socket_.reset();
}

SessionStats BackendSession::stats() const {
  SessionStats s;
  s.iommu = iommu_mode();
  if (s.iommu) s.iotlb = iotlb_.stats();
  s.iotlb_updates = iotlb_updates_.load(std::memory_order_relaxed);
  s.iotlb_invalidations = iotlb_invalidations_.load(std::memory_order_relaxed);
  s.queues.reserve(vrings_.size());
  for (const auto& v : vrings_) s.queues.push_back(v->stats());
  return s;
}

Result<void> BackendSession::send_reply(const Message& reply) { return send_message(socket_.get(), Channel::kMain, reply); }

Result<void> BackendSession::handle_next() {
  if (!socket_.valid()) return make_error(VhostUserErrc::kPeerClosed, "vhost-user session already closed");
  Result<void> r = recv_message(socket_.get(), Channel::kMain, msg_);
  handling_.store(true, std::memory_order_seq_cst);
  struct Handled {
    std::atomic<bool>& flag;
    ~Handled() { flag.store(false, std::memory_order_release); }
  } handled{handling_};
  if (r) {
    Result<FrontendRequestView> req = validate_frontend_request(msg_);
    if (req) {
      spdlog::trace("vhost-user: <- {} ({} payload bytes, {} fds{})", request_name(req->request), msg_.size(),
                    msg_.fd_count(), req->need_reply ? ", need reply" : "");
    }
    r = req ? dispatch(*req) : Result<void>(std::move(req).error());
  }
  if (!r) {
    const Error& err = r.error();
    if (err.is(VhostUserErrc::kPeerClosed)) {
      spdlog::info("vhost-user: front-end closed the connection");
      close(err);
      return r;
    }
    const ErrorDisposition d = error_disposition(msg_, Channel::kMain, err, protocol_features_);
    spdlog::warn("{}", describe_disposition(msg_, Channel::kMain, err, d));
    if (d.action == ErrorAction::kCloseConnection) {
      close(err);
      return r;
    }
    if (auto s = send_reply(encode_error_reply(msg_, Channel::kMain, protocol_features_)); !s) {
      close(s.error());
      return s;
    }
    return ok();
  }
  if (needs_ack(msg_, Channel::kMain, protocol_features_)) {
    if (auto s = send_reply(encode_status_reply(msg_.request(), 0)); !s) {
      close(s.error());
      return s;
    }
  }
  return ok();
}

Result<void> BackendSession::require_protocol_feature(unsigned feature, FrontendRequest req) const {
  if (has_protocol_feature(protocol_features_, feature)) return ok();
  return make_error(VhostUserErrc::kBadState, "{}: protocol feature {} not negotiated", request_name(req),
                    protocol_feature_name(feature));
}

Result<void> BackendSession::dispatch(const FrontendRequestView& req) {
  using R = FrontendRequest;
  switch (req.request) {
    case R::kGetFeatures:
      return send_reply(encode_u64_reply(R::kGetFeatures, offered_features_));
    case R::kSetFeatures:
      return set_features(req.as<U64Value>().value);
    case R::kGetProtocolFeatures:
      return send_reply(encode_u64_reply(R::kGetProtocolFeatures, offered_protocol_features_));
    case R::kSetProtocolFeatures:
      return set_protocol_features(req.as<U64Value>().value);
    case R::kSetOwner:
      if (owner_set_) return make_error(VhostUserErrc::kBadState, "SET_OWNER: the session already has its owner");
      owner_set_ = true;
      return ok();
    case R::kResetOwner:
      reset_device();
      owner_set_ = false;
      return ok();
    case R::kResetDevice:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureResetDevice, req.request));
      reset_device();
      return ok();
    case R::kSetMemTable:
      return set_mem_table(req.as<MemoryTable>());
    case R::kAddMemReg:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureConfigureMemSlots, req.request));
      return add_mem_region(req.as<MemoryRegion>());
    case R::kRemMemReg:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureConfigureMemSlots, req.request));
      return remove_mem_region(req.as<MemoryRegion>());
    case R::kGetMaxMemSlots:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureConfigureMemSlots, req.request));
      return send_reply(encode_u64_reply(R::kGetMaxMemSlots, memory_.max_regions()));
    case R::kGetQueueNum:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureMq, req.request));
      return send_reply(encode_u64_reply(R::kGetQueueNum, vrings_.size()));
    case R::kSetVringNum:
      return set_vring_num(req.as<VringState>());
    case R::kSetVringAddr:
      return set_vring_addr(req.as<VringAddress>());
    case R::kSetVringBase:
      return set_vring_base(req.as<VringState>());
    case R::kGetVringBase:
      return get_vring_base(req.as<VringState>());
    case R::kSetVringKick:
    case R::kSetVringCall:
    case R::kSetVringErr:
      return set_vring_file(req.request, req.as<VringFile>());
    case R::kSetVringEnable:
      return set_vring_enable(req.as<VringState>());
    case R::kSetBackendReqFd:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureBackendReq, req.request));
      channel_->set(msg_.take_fd(0));
      return ok();
    case R::kGetConfig:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureConfig, req.request));
      return get_config(req.as<ConfigSpace>());
    case R::kSetConfig:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureConfig, req.request));
      return set_config(req.as<ConfigSpace>());
    case R::kSetStatus:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureStatus, req.request));
      // vhost-user.rst SET_STATUS: the device status byte. Stopping the rings
      // is GET_VRING_BASE's job (QEMU writes 0 before it asks for the ring
      // positions), so the status is recorded, not acted upon.
      status_ = static_cast<uint8_t>(req.as<U64Value>().value);
      return ok();
    case R::kGetStatus:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureStatus, req.request));
      return send_reply(encode_u64_reply(R::kGetStatus, status_));
    case R::kIotlbMsg:
      return iotlb_message(req.as<IotlbMessage>());
    case R::kGetInflightFd:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureInflightShmfd, req.request));
      return get_inflight_fd(req.as<InflightArea>());
    case R::kSetInflightFd:
      VDMA_TRY(require_protocol_feature(kProtocolFeatureInflightShmfd, req.request));
      return set_inflight_fd(req.as<InflightArea>());
    default:
      break;
  }
  return make_error(VhostUserErrc::kBadState, "{}: not supported by this back-end (its feature is not offered)",
                    request_name(req.request));
}

// --- Negotiation ---------------------------------------------------------------------

Result<void> BackendSession::set_features(uint64_t guest_features) {  // front-end-controlled
  if ((guest_features & ~offered_features_) != 0) {
    return make_error(VhostUserErrc::kBadField, "SET_FEATURES: 0x{:x} acks bits 0x{:x} that were not offered",
                      guest_features, guest_features & ~offered_features_);
  }
  const bool wants_iommu = (guest_features & bit(kFeatureAccessPlatform)) != 0;
  if (wants_iommu && (!has_protocol_feature(protocol_features_, kProtocolFeatureReplyAck) ||
                      !has_protocol_feature(protocol_features_, kProtocolFeatureBackendReq))) {
    return make_error(VhostUserErrc::kBadState,
                      "SET_FEATURES: ACCESS_PLATFORM needs the REPLY_ACK and BACKEND_REQ protocol features (have {})",
                      describe_protocol_features(protocol_features_));
  }
  if (any_ring_started() && guest_features != acked_features_) {
    return make_error(VhostUserErrc::kBadState, "SET_FEATURES: 0x{:x} while rings are started with 0x{:x}",
                      guest_features, acked_features_);
  }
  VDMA_TRY(device_.set_features(guest_features));
  if (((acked_features_ ^ guest_features) & (bit(kFeatureAccessPlatform) | bit(kFeatureRingPacked))) != 0) {
    // The address space or ring format of every queue changes: nothing
    // cached for the old one may survive.
    for (auto& v : vrings_) v->drop_queue();
    iotlb_.invalidate_all();
  }
  acked_features_ = guest_features;
  features_set_ = true;
  if (wants_iommu) iommu_used_ = true;
  // vhost-user.rst "Ring states": without PROTOCOL_FEATURES a ring is enabled
  // as soon as it starts.
  return ok();
}

Result<void> BackendSession::set_protocol_features(uint64_t guest_features) {  // front-end-controlled
  if ((guest_features & ~offered_protocol_features_) != 0) {
    return make_error(VhostUserErrc::kBadField, "SET_PROTOCOL_FEATURES: {} were not offered",
                      describe_protocol_features(guest_features & ~offered_protocol_features_));
  }
  protocol_features_ = guest_features;
  return ok();
}

// --- Config space (vhost-user.rst GET_CONFIG / SET_CONFIG) ----------------------------

Result<void> BackendSession::get_config(const ConfigSpace& req) {
  const uint64_t end = uint64_t{req.offset} + req.size;
  if (end > device_.config_size()) {
    return make_error(VhostUserErrc::kBadField, "GET_CONFIG: {} bytes at offset {} beyond the {}-byte config space",
                      req.size, req.offset, device_.config_size());
  }
  ConfigSpace out;
  out.offset = req.offset;
  out.size = req.size;
  out.flags = req.flags;
  VDMA_TRY(device_.read_config(req.offset, std::span<std::byte>(out.data.data(), out.size)));
  return send_reply(encode_config_reply(out));
}

Result<void> BackendSession::set_config(const ConfigSpace& req) {
  const uint64_t end = uint64_t{req.offset} + req.size;
  if (end > device_.config_size()) {
    return make_error(VhostUserErrc::kBadField, "SET_CONFIG: {} bytes at offset {} beyond the {}-byte config space",
                      req.size, req.offset, device_.config_size());
  }
  return device_.write_config(req.offset, req.bytes(), req.flags);
}

// --- Reset ---------------------------------------------------------------------------

void BackendSession::reset_device() {
  // vhost-user.rst RESET_DEVICE: back to the state right after connection
  // setup; the memory table, the back-end channel and the protocol features
  // stay.
  for (auto& v : vrings_) {
    v->stop_worker();
    v->drop_queue();
    v->num = 0;
    v->addr.reset();
    v->base.reset();
    v->kick.reset();
    v->call.reset();
    v->err.reset();
    v->started = false;
    v->enabled = false;
    v->inflight_region = nullptr;
    v->inflight_queue_size = 0;
  }
  // vhost-user.rst GET_INFLIGHT_FD: the front-end gets a new area after a reset.
  inflight_.reset();
  iotlb_.invalidate_all();
  acked_features_ = 0;
  features_set_ = false;
  status_ = 0;
  device_.reset();
}

}  // namespace vdma::vhost_user
