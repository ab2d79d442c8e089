// BackendSession: SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG and IOTLB_MSG.
#include <unistd.h>

#include <array>

#include <spdlog/spdlog.h>

#include "vdma/base/event_fd.h"
#include "vring.h"
#include "vdma/vhost_user/backend_session.h"
#include "vdma/vhost_user/encode.h"

namespace vdma::vhost_user {

namespace {

Access to_access(IotlbPerm p) noexcept { return static_cast<Access>(static_cast<uint8_t>(p)); }

}  // namespace

void BackendSession::quiesce_rings() {
  // Workers read the memory table without a lock (it only changes here), so
  // every one of them stops before the table changes; their queues hold host
  // pointers into the old mappings and go too (positions are kept).
  for (auto& v : vrings_) {
    v->stop_worker();
    v->drop_queue();
  }
}

void BackendSession::resume_rings() {
  for (auto& v : vrings_) {
    if (auto r = maybe_start(*v); !r) {
      // The memory change itself succeeded; this ring's addresses are no
      // longer backed. It stays stopped until the front-end fixes it.
      spdlog::warn("vhost-user vring {}: not restarted after a memory table change: {}", v->index, r.error());
      if (v->err.valid()) {
        (void)eventfd_signal(v->err.get());
      }
    }
  }
}

Result<void> BackendSession::set_mem_table(const MemoryTable& table) {
  std::array<int, kMaxMemRegions> fds{};
  for (uint32_t i = 0; i < table.count; ++i) fds[i] = msg_.fd(i);
  quiesce_rings();
  // Mapped into a fresh table first, so a rejected table leaves the old one
  // (and the rings) as they were.
  BackendMemoryTable next(memory_.max_regions());
  Result<void> r = next.replace(table.list(), std::span<const int>(fds.data(), table.count));
  if (r) {
    // IOTLB entries point into the old mappings: flush them before those go.
    iotlb_.invalidate_all();
    memory_ = std::move(next);
  }
  resume_rings();
  if (!r) return Error(std::move(r).error()).with_context("SET_MEM_TABLE");
  return ok();
}

Result<void> BackendSession::add_mem_region(const MemoryRegion& region) {
  quiesce_rings();
  Result<void> r = memory_.add(region, msg_.fd(0));
  resume_rings();
  if (!r) return Error(std::move(r).error()).with_context("ADD_MEM_REG");
  return ok();
}

Result<void> BackendSession::remove_mem_region(const MemoryRegion& region) {
  quiesce_rings();
  // IOTLB entries may point into the region that goes away.
  iotlb_.invalidate_all();
  Result<void> r = memory_.remove(region);
  resume_rings();
  if (!r) return Error(std::move(r).error()).with_context("REM_MEM_REG");
  return ok();
}

Result<void> BackendSession::iotlb_message(const IotlbMessage& m) {
  if (!iommu_mode()) {
    return make_error(VhostUserErrc::kBadState, "IOTLB_MSG: ACCESS_PLATFORM is not negotiated");
  }
  spdlog::trace("vhost-user: IOTLB {} {} + {:#x}{}", m.type == IotlbType::kInvalidate ? "INVALIDATE" : "UPDATE",
                m.iova, m.size, m.type == IotlbType::kInvalidate ? "" : fmt::format(" perm {}", static_cast<int>(m.perm)));
  if (m.type == IotlbType::kInvalidate) {
    iotlb_invalidations_.fetch_add(1, std::memory_order_relaxed);
    if (m.size == 0) {
      iotlb_.invalidate_all();  // iova 0, size 0: the whole space (payload_views.h IotlbMessage)
    } else {
      VDMA_TRY(iotlb_.invalidate(m.iova, m.size));
    }
    return send_reply(encode_status_reply(msg_.request(), 0));
  }
  VDMA_CHECK(m.type == IotlbType::kUpdate, "validator passed a front-end IOTLB type other than UPDATE/INVALIDATE");
  iotlb_updates_.fetch_add(1, std::memory_order_relaxed);
  if (m.perm == IotlbPerm::kNone) {
    return make_error(VhostUserErrc::kBadField, "IOTLB_MSG UPDATE: {} + 0x{:x} with no access permission", m.iova,
                      m.size);
  }
  // The front-end range must be memory it shared with us; split it at
  // region boundaries, because regions are mapped separately here.
  // Check first (for_each_user_piece validates before calling back), so an
  // UPDATE is applied whole or not at all.
  Result<void> inserted = ok();
  VDMA_TRY(memory_.for_each_user_piece(m.uaddr, m.size, [&](FrontVa piece, std::byte* host, uint64_t len) {
    if (!inserted) return;
    const Iova iova = m.iova.unchecked_add(m.uaddr.distance_to(piece));
    inserted = iotlb_.insert(iova, len, piece, host, to_access(m.perm));
  }));
  if (!inserted) {
    // Do not leave part of the UPDATE behind.
    (void)iotlb_.invalidate(m.iova, m.size);
    return std::move(inserted).error();
  }
  // Workers waiting for an UPDATE walk their request again. Only those:
  // a front-end that announces its mappings sends an UPDATE per buffer, and
  // waking every worker for each would make it look at its ring before
  // the rest of the chain's UPDATEs are in. The fence pairs with the one
  // in Vring::wait(): a worker either is seen waiting here, or sees the
  // count move there and does not sleep.
  iotlb_inserted_.fetch_add(1, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (auto& v : vrings_) {
    if (v->running()) v->update_arrived();
  }
  return send_reply(encode_status_reply(msg_.request(), 0));
}

}  // namespace vdma::vhost_user
