// Vring: queue creation with inflight recovery, and the inflight bookkeeping
// around pop and push (vhost-user.rst "Inflight I/O tracking"). The region
// formats are in inflight_split.cc and inflight_packed.cc.
#include <spdlog/spdlog.h>

#include "vdma/virtio/packed_device_queue.h"
#include "vdma/virtio/split_device_queue.h"
#include "vring.h"

namespace vdma::vhost_user {

Result<std::unique_ptr<DeviceQueue>> Vring::make_queue_at(const DeviceMemory& mem, uint16_t position) const {
  const RingAddresses rings = VDMA_TRY(ring_addresses());
  const QueueConfig config{.size = num, .features = features_, .max_indirect = 0};
  if (format_ == RingFormat::kSplit) {
    auto q = VDMA_TRY(SplitDeviceQueue::create(mem, config, rings, position));
    return std::unique_ptr<DeviceQueue>(std::move(q));
  }
  auto q = VDMA_TRY(PackedDeviceQueue::create(mem, config, rings, position));
  return std::unique_ptr<DeviceQueue>(std::move(q));
}

Result<std::unique_ptr<DeviceQueue>> Vring::make_queue(const DeviceMemory& mem) {
  auto q = VDMA_TRY(make_queue_inner(mem));
  // A ring that does not start where a new driver's would was used by an
  // earlier owner, which may have published used entries and died (or been
  // stopped) before it signalled them. The driver, waiting for that
  // interrupt, adds nothing and never kicks: one call now, a spurious one at
  // worst (the driver finds nothing new), is what lets it go on. SPDK's
  // vhost signals every queue when a device starts (rte_vhost_user.c,
  // start_device) for the same reason; a fresh ring needs no signal.
  const uint16_t fresh = format_ == RingFormat::kPacked ? PackedDeviceQueue::kFreshPosition : 0;
  bool resumed = base.value_or(fresh) != fresh || q->avail_position() != fresh;
  if (format_ == RingFormat::kSplit) resumed = resumed || static_cast<const SplitDeviceQueue&>(*q).used_index() != 0;
  signal_resumed_ = resumed;
  return q;
}

Result<std::unique_ptr<DeviceQueue>> Vring::make_queue_inner(const DeviceMemory& mem) {
  const uint16_t start = base.value_or(format_ == RingFormat::kPacked ? PackedDeviceQueue::kFreshPosition : 0);
  auto q = VDMA_TRY(make_queue_at(mem, start));
  forget_inflight();
  if (inflight_region == nullptr) return q;
  if (inflight_format != format_) {
    // SET_INFLIGHT_FD mapped the area in the format acked then; RING_PACKED
    // changed since.
    return make_error(VhostUserErrc::kBadState, "vring {}: inflight area of a {} ring, but the ring is {}", index,
                      inflight_format == RingFormat::kSplit ? "split" : "packed",
                      format_ == RingFormat::kSplit ? "split" : "packed");
  }
  if (inflight_queue_size != num) {
    return make_error(VhostUserErrc::kBadState, "vring {}: {} descriptors, but the inflight area holds queues of {}",
                      index, num, inflight_queue_size);
  }
  if (format_ == RingFormat::kSplit) return recover_split(mem, std::move(q), start);
  return recover_packed(mem, std::move(q), start);
}

Result<std::unique_ptr<DeviceQueue>> Vring::recover_split(const DeviceMemory& mem, std::unique_ptr<DeviceQueue> q,
                                                          uint16_t start) {
  SplitInflight tracker(inflight_region, num);
  auto rec = tracker.recover(static_cast<const SplitDeviceQueue&>(*q).used_index());
  if (!rec) return std::move(rec).error().with_context(fmt::format("vring {}", index));
  if (!rec->fresh && rec->next_avail != start) {
    // Every entry before the used idx was completed and every popped one
    // after it is inflight, so the next entry to pop is used idx + inflight
    // (what libvhost-user and DPDK do); a front-end restoring the ring after
    // a crash sends the used idx as the base.
    spdlog::info("vhost-user vring {}: resuming at avail index {} ({} requests in flight), not at base {}", index,
                 rec->next_avail, rec->heads.size(), start);
    q = VDMA_TRY(make_queue_at(mem, rec->next_avail));
  }
  inflight_.emplace(tracker);
  resubmit_ = std::move(rec->heads);
  return q;
}

Result<std::unique_ptr<DeviceQueue>> Vring::recover_packed(const DeviceMemory& mem, std::unique_ptr<DeviceQueue> q,
                                                           uint16_t start) {
  PackedInflight tracker(inflight_region, num);
  auto rec = tracker.recover(start, static_cast<PackedDeviceQueue&>(*q));
  if (!rec) return std::move(rec).error().with_context(fmt::format("vring {}", index));
  if (!rec->fresh) {
    // A packed ring keeps no index in memory, and QEMU cannot ask a dead
    // back-end for its position, so the region is the authority: the used
    // position it recorded, and the descriptors of the chains in flight
    // after it (vhost-user.rst "When reconnecting").
    const RingAddresses rings = VDMA_TRY(ring_addresses());
    const QueueConfig config{.size = num, .features = features_, .max_indirect = 0};
    auto resumed = VDMA_TRY(
        PackedDeviceQueue::create_resumed(mem, config, rings, rec->used_position, rec->inflight_slots));
    const uint16_t avail = resumed->avail_position();
    if (avail != start || !rec->chains.empty()) {
      spdlog::info(
          "vhost-user vring {}: resuming at avail index {} ({} requests in flight), wrap counter {}, used position "
          "{:#x}, not at base {:#x}",
          index, avail & 0x7fff, rec->chains.size(), avail >> 15, rec->used_position, start);
    }
    q = std::move(resumed);
  }
  packed_inflight_.emplace(std::move(tracker));
  packed_resubmit_ = std::move(rec->chains);
  return q;
}

void Vring::forget_inflight() noexcept {
  inflight_.reset();
  packed_inflight_.reset();
  resubmit_.clear();
  packed_resubmit_.clear();
  resubmit_next_ = 0;
  resubmitted_ = false;
}

Result<bool> Vring::next_chain() {
  const size_t pending = format_ == RingFormat::kSplit ? resubmit_.size() : packed_resubmit_.size();
  if (resubmit_next_ < pending) {
    // vhost-user.rst "Inflight I/O tracking": requests a previous owner
    // popped and never completed go first, in the order it fetched them.
    // Their descriptors still belong to the device (no used entry names
    // them), so the driver has not changed them.
    chain_.clear();
    if (format_ == RingFormat::kSplit) {
      chain_.id = resubmit_[resubmit_next_];
      VDMA_TRY(queue_->rewalk(chain_));
    } else {
      // Packed: their ring slots may hold used elements of chains completed
      // after them, so they are walked from the region's copies.
      const PackedInflight::Chain& c = packed_resubmit_[resubmit_next_];
      VDMA_TRY(static_cast<PackedDeviceQueue&>(*queue_).walk_copy(c.descs, chain_));
      packed_entry_ = c.entry;
    }
    ++resubmit_next_;
    resubmitted_ = true;
    ++pops_;
    return true;
  }
  resubmitted_ = false;
  const bool got = VDMA_TRY(queue_->pop(chain_));
  if (!got) return false;
  ++pops_;
  if (inflight_) inflight_->popped(chain_.id);
  // Within the pop's read section: copies the chain's descriptors through
  // the ring mapping pop() used.
  if (packed_inflight_) packed_entry_ = packed_inflight_->popped(static_cast<PackedDeviceQueue&>(*queue_), chain_);
  return true;
}

Result<void> Vring::rewalk_current() {
  if (resubmitted_ && packed_inflight_) {
    VDMA_CHECK(resubmit_next_ >= 1 && resubmit_next_ <= packed_resubmit_.size(), "no resubmitted chain to walk");
    const uint16_t entry = packed_entry_;
    VDMA_TRY(static_cast<PackedDeviceQueue&>(*queue_).walk_copy(packed_resubmit_[resubmit_next_ - 1].descs, chain_));
    packed_entry_ = entry;
    return ok();
  }
  return queue_->rewalk(chain_);
}

Result<void> Vring::push(Request& r) {
  // vhost-user.rst "When supplying used buffers": the region is updated
  // before the used element is published and finished after it, so a
  // back-end dying in between leaves a state the next one can roll back or
  // commit; each step is a release store (inflight_fields.h). Requests
  // complete in any order; each is recorded by its own head (split) or
  // entry (packed).
  // A push that failed (the used ring lost its translation) is retried
  // without repeating the first step: before_push is not idempotent.
  if (!r.push_prepared) {
    if (inflight_) inflight_->before_push(r.chain.id);
    if (packed_inflight_) packed_inflight_->before_push(r.packed_entry);
    r.push_prepared = true;
  }
  VDMA_TRY(queue_->push_used(r.chain, r.used));
  r.push_prepared = false;
  if (inflight_) inflight_->after_push(r.chain.id);
  if (packed_inflight_) packed_inflight_->after_push(r.packed_entry);
  return ok();
}

}  // namespace vdma::vhost_user
