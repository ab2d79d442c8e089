// FrontendCore at run time: the vIOMMU handler, the invalidation sink,
// shutdown, and VhostUserFrontend's transport calls.
#include "frontend_core.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "vdma/base/event_fd.h"
#include "vdma/frontend/connect.h"
#include "vdma/frontend/errors.h"
#include "vdma/vhost_user/encode.h"

namespace vdma::frontend_detail {

using vhost_user::IotlbPerm;
using vhost_user::Message;

namespace {
// INVALIDATEs in flight at once: bounded so the back-end's replies never
// fill the socket buffer while we are still sending.
constexpr size_t kInvalidateBatch = 64;
}  // namespace

Result<void> IotlbInvalidationSink::invalidate(std::span<const AddrRange<Iova>> ranges) {
  std::vector<Message> msgs;
  msgs.reserve(std::min(ranges.size(), kInvalidateBatch));
  auto ex = channel_->lock();
  for (size_t i = 0; i < ranges.size(); i += kInvalidateBatch) {
    msgs.clear();
    for (size_t j = i; j < std::min(ranges.size(), i + kInvalidateBatch); ++j) {
      msgs.push_back(vhost_user::encode_iotlb_invalidate(ranges[j].start, ranges[j].len));
    }
    counters_->invalidates_sent.fetch_add(msgs.size(), std::memory_order_relaxed);
    counters_->invalidation_round_trips.fetch_add(1, std::memory_order_relaxed);
    VDMA_TRY(ex.iotlb(msgs));
  }
  return ok();
}

void IotlbInvalidationSink::mapped(const MappedPages& pages) {
  const std::vector<TableEntry>* table = table_.load(std::memory_order_acquire);
  if (table == nullptr || pages.perms == Access::kNone) return;
  const TableEntry* entry = find_cpu(*table, pages.gpa);
  if (entry == nullptr || !entry->cpu().contains(pages.gpa, pages.len)) return;
  const FrontVa uaddr = user_address(*entry->region, entry->region->base().distance_to(pages.gpa));
  // Access and the vhost_iotlb_msg perm share their encoding (1 read, 2 write, 3 both).
  const auto perm = static_cast<IotlbPerm>(static_cast<uint8_t>(pages.perms));
  auto posted = channel_->lock().post_iotlb(vhost_user::encode_iotlb_update(pages.iova, pages.len, uaddr, perm));
  if (!posted) {
    // The connection is gone; the driver learns it from its next request.
    spdlog::debug("front-end: IOTLB UPDATE {} + {:#x} not announced: {}", pages.iova, pages.len, posted.error());
    return;
  }
  counters_->updates_announced.fetch_add(1, std::memory_order_relaxed);
}

Result<void> FrontendCore::on_iotlb_miss(Iova iova, IotlbPerm perm) {
  if (!translator_) {
    counters_->misses_refused.fetch_add(1, std::memory_order_relaxed);
    spdlog::error("front-end: IOTLB MISS for {} ({}) but ACCESS_PLATFORM is not negotiated", iova,
                  static_cast<int>(perm));
    return make_error(FrontendErrc::kBadReply, "IOTLB MISS without ACCESS_PLATFORM");
  }
  // The translation and its UPDATE happen under the main-socket mutex: an
  // unmap clears the page table first and then needs the same mutex for its
  // INVALIDATE, so an UPDATE built from a stale translation always reaches
  // the back-end before the INVALIDATE that removes it.
  auto ex = channel_->lock();
  auto grant = translator_->translate(iova);
  if (!grant) {
    counters_->misses_refused.fetch_add(1, std::memory_order_relaxed);
    if (grant.error().is(IommuErrc::kNotPresent)) {
      counters_->misses_unmapped.fetch_add(1, std::memory_order_relaxed);
      // Nothing mapped there (any more): a MISS that crossed its buffer's
      // unmap (new IOVAs are announced, so a back-end that read the
      // ring before the socket asks for what is then already on its way),
      // or a device using an IOVA it was never given.
      spdlog::debug("front-end: IOTLB MISS for {} (perm {}) not answered: {}", iova, static_cast<int>(perm),
                    grant.error());
    } else {
      spdlog::error("front-end: IOTLB MISS for {} (perm {}) not answered: {}", iova, static_cast<int>(perm),
                    grant.error());
    }
    return std::move(grant).error();
  }
  Message update = vhost_user::encode_iotlb_update(grant->iova, grant->size, grant->uaddr, grant->perm);
  counters_->updates_sent.fetch_add(1, std::memory_order_relaxed);
  auto sent = ex.iotlb(std::span<Message>(&update, 1));
  if (!sent) {
    spdlog::error("front-end: IOTLB UPDATE {} + {:#x} for a MISS at {} failed: {}", grant->iova, grant->size, iova,
                  sent.error());
    return sent;
  }
  counters_->misses_served.fetch_add(1, std::memory_order_relaxed);
  return ok();
}

void FrontendCore::on_access_fail(Iova iova, IotlbPerm perm) {
  counters_->access_failures.fetch_add(1, std::memory_order_relaxed);
  spdlog::warn("front-end: the back-end reports IOTLB ACCESS_FAIL at {} (perm {})", iova, static_cast<int>(perm));
}

void FrontendCore::on_tick() {
  IommuDmaDomain* dom = platform_->iommu_domain();
  if (dom == nullptr || channel_->disconnected()) return;
  if (auto r = dom->flush_expired(); !r) spdlog::warn("front-end: lazy IOTLB flush failed: {}", r.error());
}

void FrontendCore::on_main_hangup() {
  spdlog::error("front-end: the back-end hung up");
  channel_->mark_disconnected("the back-end hung up");
  // Wake drivers waiting for a used buffer: they find none, and their next
  // notify() reports the disconnection.
  for (const Queue& q : queues_) (void)eventfd_signal(q.call.get());
}

void FrontendCore::shutdown() {
  if (sink_) sink_->announce_into(nullptr);
  // vhost-user.rst "Starting and stopping rings": GET_VRING_BASE stops a ring.
  for (uint32_t i = 0; i < rings_started_; ++i) {
    if (channel_->disconnected()) break;
    if (auto r = channel_->lock().get_vring_base(i); !r) {
      spdlog::warn("front-end: stopping vring {}: {}", i, r.error());
    }
  }
  server_.reset();
  // The device is stopped: take back chains it never used (unmapping them).
  for (Queue& q : queues_) {
    while (q.ring && q.ring->detach_unused()) {
    }
  }
  queues_.clear();
  if (IommuDmaDomain* dom = platform_ ? platform_->iommu_domain() : nullptr; dom != nullptr) {
    if (auto r = dom->flush(); !r && !channel_->disconnected()) spdlog::warn("front-end: final IOTLB flush: {}", r.error());
  }
  translator_.reset();
  platform_.reset();
}

FrontendCore::~FrontendCore() { shutdown(); }

}  // namespace vdma::frontend_detail

namespace vdma {

using frontend_detail::FrontendCore;

VhostUserFrontend::VhostUserFrontend(std::unique_ptr<FrontendCore> core) : core_(std::move(core)) {}
VhostUserFrontend::~VhostUserFrontend() = default;

Result<std::unique_ptr<VhostUserFrontend>> VhostUserFrontend::create(UniqueFd socket, FrontendOptions options) {
  auto core = VDMA_TRY(FrontendCore::create(std::move(socket), std::move(options)));
  return std::unique_ptr<VhostUserFrontend>(new VhostUserFrontend(std::move(core)));
}

Result<std::unique_ptr<VhostUserFrontend>> VhostUserFrontend::connect(const std::filesystem::path& path,
                                                                      FrontendOptions options) {
  UniqueFd sock = VDMA_TRY(connect_unix_socket(path));
  return create(std::move(sock), std::move(options));
}

uint64_t VhostUserFrontend::features() const noexcept { return core_->features_; }
uint32_t VhostUserFrontend::num_queues() const noexcept { return static_cast<uint32_t>(core_->queues_.size()); }

DriverQueue& VhostUserFrontend::queue(uint32_t index) noexcept {
  VDMA_CHECK(index < core_->queues_.size(), "VhostUserFrontend::queue: index out of range");
  return *core_->queues_[index].ring;
}

Result<void> VhostUserFrontend::notify(uint32_t index) {
  VDMA_CHECK(index < core_->queues_.size(), "VhostUserFrontend::notify: index out of range");
  if (core_->channel_->disconnected()) {
    return make_error(FrontendErrc::kDisconnected, "queue {}: the back-end hung up", index);
  }
  // A saturated counter counts as sent: the back-end has a kick pending anyway.
  if (!eventfd_signal(core_->queues_[index].kick.get())) {
    return system_error(fmt::format("queue {}: kick eventfd write", index), errno);
  }
  core_->counters_->notifies.fetch_add(1, std::memory_order_relaxed);
  return ok();
}

int VhostUserFrontend::interrupt_fd(uint32_t index) const noexcept {
  VDMA_CHECK(index < core_->queues_.size(), "VhostUserFrontend::interrupt_fd: index out of range");
  return core_->queues_[index].call.get();
}

Result<void> VhostUserFrontend::read_config(uint32_t offset, std::span<std::byte> out) {
  if (!vhost_user::has_protocol_feature(core_->protocol_features_, vhost_user::kProtocolFeatureConfig)) {
    return make_error(FrontendErrc::kBackendLacks, "back-end does not offer the CONFIG protocol feature");
  }
  if (out.empty() || offset > vhost_user::kMaxConfigSize || out.size() > vhost_user::kMaxConfigSize - offset) {
    return make_error(BaseErrc::kInvalidArgument, "config bytes [{}, {}) outside the {}-byte config space", offset,
                      uint64_t{offset} + out.size(), vhost_user::kMaxConfigSize);
  }
  const auto c = VDMA_TRY(core_->channel_->lock().get_config(offset, static_cast<uint32_t>(out.size())));
  std::memcpy(out.data(), c.data.data(), out.size());
  return ok();
}

DmaOps& VhostUserFrontend::dma() noexcept { return *core_->ops_; }
bool VhostUserFrontend::premap_buffers() const noexcept { return core_->options_.mode == DmaMode::kIommuPremapped; }
const GuestMemory& VhostUserFrontend::memory() const noexcept { return core_->platform_->memory(); }
Result<Gpa> VhostUserFrontend::alloc_buffer(uint64_t size, uint64_t align) {
  return core_->platform_->alloc_buffer(size, align);
}
Result<void> VhostUserFrontend::free_buffer(Gpa gpa, uint64_t size) { return core_->platform_->free_buffer(gpa, size); }
DmaMode VhostUserFrontend::mode() const noexcept { return core_->options_.mode; }
uint64_t VhostUserFrontend::protocol_features() const noexcept { return core_->protocol_features_; }
const GuestPlatform& VhostUserFrontend::platform() const noexcept { return *core_->platform_; }
bool VhostUserFrontend::disconnected() const noexcept { return core_->channel_->disconnected(); }

std::shared_ptr<DebugDmaOps> VhostUserFrontend::dma_debug() const noexcept { return core_->dma_debug_; }

const PostedWriteFlush* VhostUserFrontend::notify_flush() const noexcept {
  return core_->platform_ ? core_->platform_->dma().notify_flush(core_->platform_->device().id) : nullptr;
}

FrontendStats VhostUserFrontend::stats() const noexcept {
  const auto& c = *core_->counters_;
  return FrontendStats{.misses_served = c.misses_served.load(std::memory_order_relaxed),
                       .misses_refused = c.misses_refused.load(std::memory_order_relaxed),
                       .misses_unmapped = c.misses_unmapped.load(std::memory_order_relaxed),
                       .access_failures = c.access_failures.load(std::memory_order_relaxed),
                       .updates_sent = c.updates_sent.load(std::memory_order_relaxed),
                       .invalidates_sent = c.invalidates_sent.load(std::memory_order_relaxed),
                       .updates_announced = c.updates_announced.load(std::memory_order_relaxed),
                       .updates_refused = core_->channel_->posted_failures(),
                       .invalidation_round_trips = c.invalidation_round_trips.load(std::memory_order_relaxed),
                       .notifies = c.notifies.load(std::memory_order_relaxed)};
}

}  // namespace vdma
