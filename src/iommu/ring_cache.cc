#include "vdma/iommu/ring_cache.h"

#include <algorithm>

namespace vdma {

IotlbQueueView::IotlbQueueView(DeviceIotlb& iotlb) : iotlb_(iotlb) {
  iotlb_.attach_view(DeviceIotlb::ViewKey(), this);
}

IotlbQueueView::~IotlbQueueView() { iotlb_.detach_view(DeviceIotlb::ViewKey(), this); }

Result<void> IotlbQueueView::translate(DmaAddr addr, uint64_t len, Access access, std::vector<Fragment>& out) const {
  if (tracking_ && len != 0) tracked_.push_back(AddrRange<Iova>{Iova(addr.value()), len});
  return iotlb_.translate(addr, len, access, out);
}

Result<std::span<std::byte>> IotlbQueueView::translate_ring(DmaAddr addr, uint64_t len, Access access) const {
  if (!fits(addr, len)) {
    return make_error(BaseErrc::kOverflow, "ring {} + len {:#x} wraps past 2^64", addr, len);
  }
  if (len > 0) {
    const RingRange range{Iova(addr.value()), Iova(addr.value() + (len - 1))};
    std::lock_guard lock(ranges_mutex_);
    if (std::find(ranges_.begin(), ranges_.end(), range) == ranges_.end()) {
      if (ranges_.size() < kMaxRanges) {
        ranges_.push_back(range);
      } else {
        // Merge everything into one covering range: a superset only causes
        // extra bumps, while dropping a range could hide a revocation.
        RingRange hull = range;
        for (const RingRange& r : ranges_) {
          hull.first = std::min(hull.first, r.first);
          hull.last = std::max(hull.last, r.last);
        }
        ranges_.assign(1, hull);
      }
    }
  }
  // Recorded before translating: a writer that publishes after our lookup
  // took the old snapshot checks the views after publishing, and so finds
  // this range and bumps the epoch; a writer that checked before the range
  // was recorded had published before it, and our lookup sees its table.
  // Through the IOTLB itself: a ring is not a request's buffer, so it is
  // never in tracked().
  return iotlb_.translate_contiguous(addr, len, access);
}

void IotlbQueueView::forget_rings() {
  {
    std::lock_guard lock(ranges_mutex_);
    ranges_.clear();
  }
  bump();
}

std::vector<IotlbQueueView::RingRange> IotlbQueueView::ring_ranges() const {
  std::lock_guard lock(ranges_mutex_);
  return ranges_;
}

bool IotlbQueueView::overlaps_ring(WriterKey, uint64_t first, uint64_t last) const {
  std::lock_guard lock(ranges_mutex_);
  return std::any_of(ranges_.begin(), ranges_.end(),
                     [&](const RingRange& r) { return r.first.value() <= last && first <= r.last.value(); });
}

void IotlbQueueView::bump() noexcept {
  // seq_cst: ordered after the writer's publication of the new table and
  // before its grace-period scan (see DeviceIotlb::bump_views). A queue that
  // loads the new value (acquire) also sees the new table.
  epoch_.fetch_add(1, std::memory_order_seq_cst);
}

}  // namespace vdma
