// BackendSession: GET_INFLIGHT_FD and SET_INFLIGHT_FD (vhost-user.rst
// "Inflight I/O tracking"). The per-ring bookkeeping is in vring_inflight.cc,
// inflight_split.cc and inflight_packed.cc.
#include <spdlog/spdlog.h>

#include "vdma/vhost_user/backend_session.h"
#include "vdma/vhost_user/encode.h"
#include "vring.h"

namespace vdma::vhost_user {

Result<void> BackendSession::get_inflight_fd(const InflightArea& req) {
  // The codec bounded num_queues (1..256) and queue_size (1..32768); the
  // device bounds the queues further, so an area costs at most the device's
  // queues x 1 MiB (packed, 32768 entries).
  if (req.num_queues > vrings_.size()) {
    return make_error(VhostUserErrc::kBadField, "GET_INFLIGHT_FD: {} queues, the device has {}", req.num_queues,
                      vrings_.size());
  }
  InflightMemory area = VDMA_TRY(InflightMemory::allocate(ring_format(), req.num_queues, req.queue_size));
  UniqueFd fd = VDMA_TRY(UniqueFd::duplicate(area.fd()));
  // The reply carries the area; nothing reads it until SET_INFLIGHT_FD names
  // the area to use. A front-end may keep every fd it got, but only the
  // latest offer keeps its memory: the previous one is emptied unless it is
  // the area in use (its pages stay allocated only while someone maps them).
  if (offered_inflight_ && !(inflight_ && inflight_->same_file(offered_inflight_->fd()))) {
    offered_inflight_->discard_contents();
  }
  offered_inflight_ = std::move(area);
  return send_reply(encode_inflight_reply(offered_inflight_->description(), std::move(fd)));
}

Result<void> BackendSession::set_inflight_fd(const InflightArea& area) {
  if (any_ring_started()) {
    return make_error(VhostUserErrc::kBadState, "SET_INFLIGHT_FD: while a vring is started");
  }
  InflightMemory mem = VDMA_TRY(InflightMemory::map(msg_.fd(0), area, ring_format()));
  for (auto& v : vrings_) {
    // Stopped rings may still hold a queue (SET_VRING_ENABLE 0 keeps it); it
    // is rebuilt, and recovered from the new area, at the next start.
    v->stop_worker();
    v->drop_queue();
    const bool tracked = v->index < mem.num_queues();
    v->inflight_region = tracked ? mem.queue_region(v->index) : nullptr;
    v->inflight_queue_size = tracked ? mem.queue_size() : 0;
    v->inflight_format = mem.format();
  }
  if (mem.num_queues() < vrings_.size()) {
    spdlog::info("vhost-user: inflight area for {} of {} queues; the others are not tracked", mem.num_queues(),
                 vrings_.size());
  }
  inflight_ = std::move(mem);
  return ok();
}

}  // namespace vdma::vhost_user
