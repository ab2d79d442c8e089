// FrontendCore set-up: negotiation, the memory table and the vrings
// (vhost-user.rst "Starting and stopping rings"; virtio 1.2 §3.1.1).
#include <sys/eventfd.h>

#include <cerrno>

#include <spdlog/spdlog.h>

#include "frontend_core.h"
#include "vdma/dma/direct_dma_ops.h"
#include "vdma/frontend/errors.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/status.h"

namespace vdma::frontend_detail {

using vhost_user::FrontendRequest;
using vhost_user::Message;

namespace {

constexpr uint64_t kWantedProtocol =
    vhost_user::protocol_feature_bit(vhost_user::kProtocolFeatureMq) |
    vhost_user::protocol_feature_bit(vhost_user::kProtocolFeatureReplyAck) |
    vhost_user::protocol_feature_bit(vhost_user::kProtocolFeatureBackendReq) |
    vhost_user::protocol_feature_bit(vhost_user::kProtocolFeatureConfig) |
    vhost_user::protocol_feature_bit(vhost_user::kProtocolFeatureConfigureMemSlots) |
    vhost_user::protocol_feature_bit(vhost_user::kProtocolFeatureStatus);

// Device-specific feature bits are 0..23 (virtio 1.2 §6).
constexpr uint64_t kDeviceFeatureMask = (uint64_t{1} << 24) - 1;

}  // namespace

bool FrontendCore::has_protocol(unsigned bit) const noexcept {
  return vhost_user::has_protocol_feature(protocol_features_, bit);
}

bool FrontendCore::iotlb_mode() const noexcept { return has_feature(features_, kFeatureAccessPlatform); }

Result<void> FrontendCore::set_status(uint8_t status) {
  if (!has_protocol(vhost_user::kProtocolFeatureStatus)) return ok();
  return channel_->lock().request(vhost_user::encode_u64_request(FrontendRequest::kSetStatus, status));
}

Result<void> FrontendCore::negotiate() {
  auto ex = channel_->lock();
  offered_features_ = VDMA_TRY(ex.get_u64(FrontendRequest::kGetFeatures));
  const uint64_t offered = offered_features_;
  if (!has_feature(offered, kFeatureVersion1)) {
    return make_error(FrontendErrc::kBackendLacks, "back-end does not offer VERSION_1 (offered features {:#x})",
                      offered);
  }
  if (platform_->needs_access_platform() && !has_feature(offered, kFeatureAccessPlatform)) {
    return make_error(FrontendErrc::kBackendLacks,
                      "back-end does not offer ACCESS_PLATFORM; the iommu and restricted modes need it "
                      "(offered features {:#x})",
                      offered);
  }
  if (options_.ring_format == RingFormat::kPacked && !has_feature(offered, kFeatureRingPacked)) {
    return make_error(FrontendErrc::kBackendLacks,
                      "back-end does not offer RING_PACKED; packed rings need it (offered features {:#x})", offered);
  }

  if (has_feature(offered, vhost_user::kFeatureProtocolFeatures)) {
    const uint64_t offered_protocol = VDMA_TRY(ex.get_u64(FrontendRequest::kGetProtocolFeatures));
    protocol_features_ = offered_protocol & kWantedProtocol;
    VDMA_TRY(ex.send_only(vhost_user::encode_u64_request(FrontendRequest::kSetProtocolFeatures, protocol_features_)));
    if (has_protocol(vhost_user::kProtocolFeatureReplyAck)) channel_->enable_reply_ack();
  }

  uint64_t transport = platform_->transport_features(offered);
  const bool iotlb_ready =
      has_protocol(vhost_user::kProtocolFeatureReplyAck) && has_protocol(vhost_user::kProtocolFeatureBackendReq);
  if (has_feature(transport, kFeatureAccessPlatform) && !iotlb_ready) {
    // vhost-user.rst "IOMMU support": IOTLB messages need both.
    if (platform_->needs_access_platform()) {
      return make_error(FrontendErrc::kBackendLacks,
                        "back-end does not offer the REPLY_ACK and BACKEND_REQ protocol features; the iommu and "
                        "restricted modes need them for IOTLB messages (offered protocol features {})",
                        vhost_user::describe_protocol_features(protocol_features_));
    }
    transport &= ~feature_bit(kFeatureAccessPlatform);
  }

  VDMA_TRY(ex.request(vhost_user::encode_request(FrontendRequest::kSetOwner)));
  if (has_protocol(vhost_user::kProtocolFeatureMq)) {
    const uint64_t queues = VDMA_TRY(ex.get_u64(FrontendRequest::kGetQueueNum));
    if (queues < options_.num_queues) {
      return make_error(FrontendErrc::kBackendLacks, "back-end has {} queues; {} requested", queues,
                        options_.num_queues);
    }
  }
  if (has_protocol(vhost_user::kProtocolFeatureBackendReq)) {
    auto pair = VDMA_TRY(vhost_user::make_socket_pair());
    backend_channel_ = std::move(pair[0]);
    VDMA_TRY(ex.request(vhost_user::encode_fd_request(FrontendRequest::kSetBackendReqFd, std::move(pair[1]))));
  }

  uint64_t wanted = (options_.device_features & kDeviceFeatureMask) | feature_bit(kFeatureVersion1) |
                    feature_bit(vhost_user::kFeatureProtocolFeatures);
  if (options_.indirect) wanted |= feature_bit(kFeatureIndirectDesc);
  if (options_.event_idx) wanted |= feature_bit(kFeatureEventIdx);
  if (options_.ring_format == RingFormat::kPacked) wanted |= feature_bit(kFeatureRingPacked);
  features_ = VDMA_TRY(negotiate_features(offered, (wanted & offered) | transport));
  VDMA_TRY(platform_->policy().features_ok(platform_->device().id, features_));
  return ok();
}

Result<void> FrontendCore::share_memory() {
  // virtio 1.2 §3.1.1 steps 1-6 (the STATUS protocol feature carries them).
  VDMA_TRY(set_status(kStatusAcknowledge | kStatusDriver));
  VDMA_TRY(channel_->lock().request(vhost_user::encode_u64_request(FrontendRequest::kSetFeatures, features_)));
  VDMA_TRY(set_status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk));
  if (has_protocol(vhost_user::kProtocolFeatureStatus)) {
    const uint64_t status = VDMA_TRY(channel_->lock().get_u64(FrontendRequest::kGetStatus));
    if ((status & kStatusFeaturesOk) == 0) {
      return make_error(FrontendErrc::kBackendLacks,
                        "back-end did not accept features {:#x}: FEATURES_OK is clear in status {:#x}", features_,
                        status);
    }
  }

  const DmaDecision decision = VDMA_TRY(platform_->policy().decide(platform_->device().id, features_));
  ops_ = VDMA_TRY(select_dma_ops(platform_->dma(), platform_->device().id, decision));
  spdlog::debug("front-end: {} mode, DMA path {} ({}), ops {}", to_string(platform_->mode()), to_string(decision.path),
                decision.reason, ops_->kind());

  const auto* direct = dynamic_cast<const DirectDmaOps*>(ops_);
  TableOptions table_options{.shared_only = platform_->dma().topology().restricted_memory_access};
  // Without an IOTLB the back-end reads descriptor addresses through the
  // table, so it is given in the addresses the ops produce.
  if (!iotlb_mode() && direct != nullptr) table_options.bus = &direct->bus();
  table_ = VDMA_TRY(build_memory_table(platform_->memory(), table_options));

  std::vector<vhost_user::MemoryRegion> wire;
  std::vector<UniqueFd> fds;
  for (const TableEntry& e : table_) {
    wire.push_back(e.wire);
    fds.push_back(VDMA_TRY(UniqueFd::duplicate(e.region->fd())));
  }
  VDMA_TRY(channel_->lock().request(vhost_user::encode_mem_table(wire, fds)));

  if (iotlb_mode()) {
    auto* iommu = dynamic_cast<IommuDmaOps*>(ops_);
    if (iommu != nullptr) {
      translator_.emplace(table_, &iommu->domain(), nullptr);
      // The back-end has the memory table and ACCESS_PLATFORM: mappings
      // from now on (the rings' first) can be announced.
      sink_->announce_into(&table_);
    } else {
      if (direct == nullptr) identity_bus_.emplace(VDMA_TRY(BusTranslation::create({})));
      translator_.emplace(table_, nullptr, direct != nullptr ? &direct->bus() : &*identity_bus_);
    }
  }
  return ok();
}

Result<void> FrontendCore::create_queues() {
  // After share_memory(), which looks at the concrete ops: from here on the
  // queues and the driver map through the checker.
  if (options_.dma_debug) {
    dma_debug_ = std::make_shared<DebugDmaOps>(*ops_, platform_->device().id);
    ops_ = dma_debug_.get();
  }
  // The topology's "flush_before_notify" hook: each queue runs it before
  // every notification it asks for.
  PostedWriteFlush* const flush = platform_->dma().notify_flush(platform_->device().id);
  for (uint32_t i = 0; i < options_.num_queues; ++i) {
    Queue q;
    auto ring = make_driver_queue(
        options_.ring_format, *ops_,
        QueueConfig{.size = options_.queue_size, .features = features_, .notify_flush = flush});
    if (!ring) return std::move(ring).error().with_context(fmt::format("queue {}", i));
    q.ring = std::move(*ring);
    q.kick = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!q.kick) return system_error("eventfd", errno);
    if (!options_.polling) {
      q.call = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!q.call) return system_error("eventfd", errno);
    }
    queues_.push_back(std::move(q));
  }
  return ok();
}

Result<void> FrontendCore::grant_identity() {
  if (!translator_) return ok();
  std::vector<Message> msgs;
  for (const IotlbGrant& g : translator_->identity_grants()) {
    msgs.push_back(vhost_user::encode_iotlb_update(g.iova, g.size, g.uaddr, g.perm));
  }
  if (msgs.empty()) return ok();
  VDMA_TRY(channel_->lock().iotlb(msgs));
  counters_->updates_sent.fetch_add(msgs.size(), std::memory_order_relaxed);
  return ok();
}

Result<void> FrontendCore::start_vring(uint32_t index) {
  const Queue& q = queues_[index];
  const DriverQueue& ring = *q.ring;
  auto ex = channel_->lock();
  VDMA_TRY(ex.request(vhost_user::encode_vring_state(FrontendRequest::kSetVringNum, {index, ring.size()})));
  // vhost-user.rst SET_VRING_BASE: split rings give the next avail index;
  // packed rings also its wrap counter in bit 15, which starts at 1
  // (virtio 1.2 §2.8.1).
  const uint32_t base = ring.format() == RingFormat::kPacked ? 1u << 15 : 0u;
  VDMA_TRY(ex.request(vhost_user::encode_vring_state(FrontendRequest::kSetVringBase, {index, base})));

  const RingAddresses dma = ring.ring_addresses();
  vhost_user::VringAddress a;
  a.index = index;
  if (iotlb_mode()) {
    // vhost-user.rst: with ACCESS_PLATFORM the ring addresses are IOVAs.
    a.desc = vhost_user::RingAddr(dma.desc.value());
    a.avail = vhost_user::RingAddr(dma.driver.value());
    a.used = vhost_user::RingAddr(dma.device.value());
  } else {
    // Otherwise user addresses: where the memory table puts those DMA addresses.
    const RingLayout l = ring_layout(ring.format(), ring.size());
    a.desc = vhost_user::RingAddr(VDMA_TRY(to_user(table_, dma.desc, l.desc_size)).value());
    a.avail = vhost_user::RingAddr(VDMA_TRY(to_user(table_, dma.driver, l.driver_size)).value());
    a.used = vhost_user::RingAddr(VDMA_TRY(to_user(table_, dma.device, l.device_size)).value());
  }
  VDMA_TRY(ex.request(vhost_user::encode_vring_addr(a)));
  UniqueFd call = q.call ? VDMA_TRY(UniqueFd::duplicate(q.call.get())) : UniqueFd();
  VDMA_TRY(ex.request(vhost_user::encode_vring_file(FrontendRequest::kSetVringCall, index, std::move(call))));
  UniqueFd kick = VDMA_TRY(UniqueFd::duplicate(q.kick.get()));
  VDMA_TRY(ex.request(vhost_user::encode_vring_file(FrontendRequest::kSetVringKick, index, std::move(kick))));
  // vhost-user.rst "Ring states": with PROTOCOL_FEATURES rings start disabled.
  if (has_feature(features_, vhost_user::kFeatureProtocolFeatures)) {
    VDMA_TRY(ex.request(vhost_user::encode_vring_state(FrontendRequest::kSetVringEnable, {index, 1})));
  }
  return ok();
}

Result<std::unique_ptr<FrontendCore>> FrontendCore::create(UniqueFd socket, FrontendOptions options) {
  if (!socket) return make_error(BaseErrc::kInvalidArgument, "VhostUserFrontend needs a connected socket");
  if (options.num_queues == 0 || options.num_queues > vhost_user::kMaxVrings) {
    return make_error(FrontendErrc::kInvalidOption, "num_queues {} outside 1..{}", options.num_queues,
                      vhost_user::kMaxVrings);
  }
  std::unique_ptr<FrontendCore> core(new FrontendCore(std::move(options)));
  const FrontendOptions& o = core->options_;
  core->channel_ = std::make_shared<MainChannel>(std::move(socket), o.reply_timeout);
  core->sink_ = std::make_shared<IotlbInvalidationSink>(core->channel_, core->counters_);
  core->platform_ = VDMA_TRY(GuestPlatform::create(GuestPlatformConfig{
      .mode = o.mode,
      .topology = o.topology,
      .device_id = o.device_id,
      .ram_size = o.ram_size,
      .coherent_size = o.coherent_size,
      .bounce_size = o.bounce_size,
      .sink = core->sink_,
      // A new IOVA is new to the back-end: announce it instead of waiting
      // for its miss. Strict invalidation makes every request's IOVAs new;
      // lazy ones are new after a flush took their runs (a revived run is
      // not announced: the back-end still holds its translation).
      .announce_maps = o.announce_maps}));
  VDMA_TRY(core->negotiate());
  VDMA_TRY(core->share_memory());
  VDMA_TRY(core->create_queues());
  // Lazy invalidation has no timer of its own (iova_flush_queue.h): the
  // server thread enforces the flush queue's age limit.
  std::optional<std::chrono::milliseconds> tick;
  if (core->platform_->iommu_domain() != nullptr && invalidation_mode(o.mode) == InvalidationMode::kLazy) {
    tick = std::chrono::milliseconds(5);
  }
  core->server_ =
      VDMA_TRY(BackendChannelServer::start(std::move(core->backend_channel_), core->channel_->fd(), *core, tick));
  VDMA_TRY(core->grant_identity());
  for (uint32_t i = 0; i < o.num_queues; ++i) {
    auto r = core->start_vring(i);
    if (!r) return std::move(r).error().with_context(fmt::format("vring {}", i));
    core->rings_started_ = i + 1;
  }
  VDMA_TRY(core->set_status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk));
  return core;
}

}  // namespace vdma::frontend_detail
