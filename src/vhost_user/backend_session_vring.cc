// BackendSession: the vring requests (vhost-user.rst "Ring states").
#include "vdma/base/address.h"
#include "vdma/vhost_user/backend_session.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/virtio/features.h"
#include "notification_fd.h"
#include "vring.h"

namespace vdma::vhost_user {

Result<Vring*> BackendSession::vring(uint32_t index, FrontendRequest req) {  // index is front-end-controlled
  if (index >= vrings_.size()) {
    return make_error(VhostUserErrc::kBadField, "{}: vring {} but the device has {} queues", request_name(req), index,
                      vrings_.size());
  }
  return vrings_[index].get();
}

bool BackendSession::any_ring_started() const noexcept {
  for (const auto& v : vrings_) {
    if (v->started) return true;
  }
  return false;
}

Result<void> BackendSession::maybe_start(Vring& v) {
  if (v.running() || !v.started || !v.enabled) return ok();
  WorkerServices services;
  services.device = &device_;
  services.channel = channel_.get();
  services.memory = &memory_;
  services.iotlb = iommu_mode() ? &iotlb_ : nullptr;
  services.iotlb_inserted = &iotlb_inserted_;
  services.frontend_socket = socket_.get();
  services.frontend_handling = &handling_;
  services.poll = options_.poll;
  services.poll_max = options_.poll_max;
  services.per_request_iotlb = options_.iotlb_cache == BackendOptions::IotlbCache::kPerRequest;
  if (!iothreads_.empty()) services.io_thread = iothreads_[v.index % iothreads_.size()].get();
  if (auto r = v.start(services, ring_format(), acked_features_); !r) {
    return Error(std::move(r).error()).with_context(fmt::format("vring {}", v.index));
  }
  return ok();
}

void BackendSession::stop_ring(Vring& v) {
  v.stop_worker();
  v.drop_queue();
  v.started = false;
  v.kick.reset();
  // The front-end stops forwarding the guest's invalidations once it stops
  // the device, so IOTLB entries kept past this point could go stale.
  if (iommu_mode()) iotlb_.invalidate_all();
}

Result<void> BackendSession::set_vring_num(const VringState& s) {
  Vring* v = VDMA_TRY(vring(s.index, FrontendRequest::kSetVringNum));
  if (v->started) return make_error(VhostUserErrc::kBadState, "SET_VRING_NUM: vring {} is started", s.index);
  // virtio 1.2 §2.7: a split queue size is a power of two (the codec already
  // bounded it to 1..32768).
  if (ring_format() == RingFormat::kSplit && !is_pow2(s.num)) {
    return make_error(VhostUserErrc::kBadField, "SET_VRING_NUM: vring {}: split queue size {} is not a power of two",
                      s.index, s.num);
  }
  v->drop_queue();
  v->num = static_cast<uint16_t>(s.num);  // 1..32768 (codec), fits 16 bits
  return ok();
}

Result<void> BackendSession::set_vring_addr(const VringAddress& a) {
  Vring* v = VDMA_TRY(vring(a.index, FrontendRequest::kSetVringAddr));
  if (a.log_used) {
    return make_error(VhostUserErrc::kBadField, "SET_VRING_ADDR: vring {}: used-ring logging without LOG_ALL",
                      a.index);
  }
  if (v->started) {
    if (v->addr == a) return ok();
    return make_error(VhostUserErrc::kBadState, "SET_VRING_ADDR: vring {} is started", a.index);
  }
  if (!iommu_mode()) {
    // Bypass: the addresses are the front-end's user addresses and must lie
    // in the memory table (whole areas when the size is known).
    const RingLayout l = ring_layout(ring_format(), v->num == 0 ? uint16_t{1} : v->num);
    const uint64_t known = v->num == 0 ? 0 : 1;
    struct Area {
      const char* name;
      FrontVa addr;
      uint64_t len;
    };
    const Area areas[3] = {{"descriptor table", a.desc.as_user(), known != 0 ? l.desc_size : 1},
                           {"driver area", a.avail.as_user(), known != 0 ? l.driver_size : 1},
                           {"device area", a.used.as_user(), known != 0 ? l.device_size : 1}};
    for (const Area& area : areas) {
      if (auto r = memory_.user_to_guest(area.addr, area.len); !r) {
        return Error(std::move(r).error())
                              .with_context(fmt::format("SET_VRING_ADDR: vring {}: {}", a.index, area.name));
      }
    }
  }
  v->drop_queue();
  v->addr = a;
  return ok();
}

Result<void> BackendSession::set_vring_base(const VringState& s) {
  Vring* v = VDMA_TRY(vring(s.index, FrontendRequest::kSetVringBase));
  if (v->started) return make_error(VhostUserErrc::kBadState, "SET_VRING_BASE: vring {} is started", s.index);
  uint32_t guest_num = s.num;  // front-end-controlled
  if (ring_format() == RingFormat::kPacked) {
    // vhost-user.rst "vring descriptor indices for packed virtqueues": bits
    // 0-15 the avail index and wrap counter, bits 16-31 the used ones (QEMU
    // 7.2 sends both, e.g. 0x80008000 for a fresh ring). Processing stopped
    // at the last GET_VRING_BASE, so the used position equals the avail one;
    // after a crash the inflight region, not the front-end, knows the used
    // position. Like DPDK, keep the avail half.
    guest_num &= 0xffff;
  }
  if (guest_num > 0xffff) {
    return make_error(VhostUserErrc::kBadField, "SET_VRING_BASE: vring {}: base 0x{:x} above 16 bits", s.index,
                      guest_num);
  }
  v->drop_queue();
  v->base = static_cast<uint16_t>(guest_num);
  return ok();
}

Result<void> BackendSession::get_vring_base(const VringState& s) {
  Vring* v = VDMA_TRY(vring(s.index, FrontendRequest::kGetVringBase));
  // vhost-user.rst GET_VRING_BASE: stop the ring, then report the next
  // descriptor to process (packed: bits 0-14 the index, bit 15 the avail
  // wrap counter). stop_ring() joins the worker first, so nothing moves after
  // the value is read.
  v->stop_worker();
  const uint16_t position = v->position();
  stop_ring(*v);
  v->base = position;
  return send_reply(encode_vring_base_reply(VringState{s.index, position}));
}

Result<void> BackendSession::set_vring_file(FrontendRequest req, const VringFile& f) {
  Vring* v = VDMA_TRY(vring(f.index, req));
  UniqueFd fd = f.has_fd ? msg_.take_fd(0) : UniqueFd();
  if (fd.valid()) VDMA_TRY(check_notification_fd(fd.get(), req, f.index));
  const bool was_running = v->running();
  switch (req) {
    case FrontendRequest::kSetVringKick: {
      if (!fd.valid()) {
        return make_error(VhostUserErrc::kBadField,
                          "SET_VRING_KICK: vring {}: no kick fd (polling) is not supported by this back-end", f.index);
      }
      if (v->num == 0 || !v->addr) {
        return make_error(VhostUserErrc::kBadState, "SET_VRING_KICK: vring {}: {} not set", f.index,
                          v->num == 0 ? "SET_VRING_NUM" : "SET_VRING_ADDR");
      }
      v->stop_worker();
      v->kick = std::move(fd);
      v->started = true;
      // vhost-user.rst "Ring states": without PROTOCOL_FEATURES the ring is
      // enabled when it starts.
      if ((acked_features_ & (uint64_t{1} << kFeatureProtocolFeatures)) == 0) v->enabled = true;
      return maybe_start(*v);
    }
    case FrontendRequest::kSetVringCall:
      v->stop_worker();
      v->call = std::move(fd);
      break;
    default:
      v->stop_worker();
      v->err = std::move(fd);
      break;
  }
  return was_running ? maybe_start(*v) : ok();
}

Result<void> BackendSession::set_vring_enable(const VringState& s) {
  Vring* v = VDMA_TRY(vring(s.index, FrontendRequest::kSetVringEnable));
  if ((acked_features_ & (uint64_t{1} << kFeatureProtocolFeatures)) == 0) {
    return make_error(VhostUserErrc::kBadState, "SET_VRING_ENABLE: PROTOCOL_FEATURES (feature bit 30) not acked");
  }
  v->enabled = s.num != 0;
  if (!v->enabled) {
    v->stop_worker();  // the queue and its position stay: enable continues where it stopped
    return ok();
  }
  return maybe_start(*v);
}

}  // namespace vdma::vhost_user
