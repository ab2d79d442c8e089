#include "inflight_split.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/inflight.h"
#include "vdma/virtio/le.h"

namespace vdma::vhost_user {

namespace {

// Every field is naturally aligned (the region is 64-aligned in a mapping,
// the offsets are multiples of the field sizes).
template <class T>
T load(const std::byte* p) noexcept {
  auto* field = static_cast<T*>(static_cast<void*>(const_cast<std::byte*>(p)));
  return from_le(std::atomic_ref<T>(*field).load(std::memory_order_acquire));
}

template <class T>
void store(std::byte* p, T v) noexcept {
  auto* field = static_cast<T*>(static_cast<void*>(p));
  std::atomic_ref<T>(*field).store(to_le(v), std::memory_order_release);
}

}  // namespace

std::byte* SplitInflight::desc(uint16_t i) const noexcept {
  return region_ + inflight::kSplitHeaderSize + size_t{i} * inflight::kSplitDescSize;
}

Result<SplitInflight::Recovery> SplitInflight::recover(uint16_t ring_used_idx) {
  Recovery rec;
  const uint16_t guest_version = load<uint16_t>(region_ + inflight::kSplitVersionOff);  // front-end-controlled
  if (guest_version == 0) {
    // Never used: start from a clean region of our size.
    for (uint16_t i = 0; i < num_; ++i) {
      store<uint8_t>(desc(i) + inflight::kSplitDescInflightOff, 0);
      store<uint16_t>(desc(i) + inflight::kSplitDescNextOff, 0);
      store<uint64_t>(desc(i) + inflight::kSplitDescCounterOff, 0);
    }
    store<uint16_t>(region_ + inflight::kSplitDescNumOff, num_);
    store<uint16_t>(region_ + inflight::kSplitLastBatchHeadOff, 0);
    store<uint16_t>(region_ + inflight::kSplitUsedIdxOff, ring_used_idx);
    store<uint16_t>(region_ + inflight::kSplitVersionOff, inflight::kVersion);
    counter_ = 0;
    used_idx_ = ring_used_idx;
    rec.fresh = true;
    rec.next_avail = ring_used_idx;
    return rec;
  }
  if (guest_version != inflight::kVersion) {
    return make_error(VhostUserErrc::kBadField, "inflight region: version {}, expected {}", guest_version,
                      inflight::kVersion);
  }
  const uint16_t guest_desc_num = load<uint16_t>(region_ + inflight::kSplitDescNumOff);
  if (guest_desc_num != num_) {
    return make_error(VhostUserErrc::kBadField, "inflight region: desc_num {} but the vring has {} descriptors",
                      guest_desc_num, num_);
  }
  const uint16_t guest_used_idx = load<uint16_t>(region_ + inflight::kSplitUsedIdxOff);
  if (guest_used_idx != ring_used_idx) {
    // Step 1: the used idx of the last batch reached the ring but the region
    // was not updated after it: those heads are complete, not inflight.
    const uint16_t batch = static_cast<uint16_t>(ring_used_idx - guest_used_idx);
    if (batch > num_) {
      return make_error(VhostUserErrc::kBadField,
                        "inflight region: used_idx {} is {} entries behind the used ring's idx {} (queue of {})",
                        guest_used_idx, batch, ring_used_idx, num_);
    }
    uint16_t guest_head = load<uint16_t>(region_ + inflight::kSplitLastBatchHeadOff);
    for (uint16_t k = 0; k < batch; ++k) {
      if (guest_head >= num_) {
        return make_error(VhostUserErrc::kBadField, "inflight region: last batch entry {} is head {} (queue of {})",
                          k, guest_head, num_);
      }
      store<uint8_t>(desc(guest_head) + inflight::kSplitDescInflightOff, 0);
      guest_head = load<uint16_t>(desc(guest_head) + inflight::kSplitDescNextOff);
    }
    store<uint16_t>(region_ + inflight::kSplitUsedIdxOff, ring_used_idx);
  }
  used_idx_ = ring_used_idx;
  // Step 2: resubmit in the order the heads were fetched.
  std::vector<std::pair<uint64_t, uint16_t>> inflight_heads;
  for (uint16_t i = 0; i < num_; ++i) {
    if (load<uint8_t>(desc(i) + inflight::kSplitDescInflightOff) != 0) {
      inflight_heads.emplace_back(load<uint64_t>(desc(i) + inflight::kSplitDescCounterOff), i);
    }
  }
  std::sort(inflight_heads.begin(), inflight_heads.end());
  rec.heads.reserve(inflight_heads.size());
  for (const auto& [counter, head] : inflight_heads) rec.heads.push_back(head);
  counter_ = inflight_heads.empty() ? 0 : inflight_heads.back().first + 1;
  rec.next_avail = static_cast<uint16_t>(ring_used_idx + inflight_heads.size());
  return rec;
}

void SplitInflight::popped(uint16_t head) noexcept {
  store<uint64_t>(desc(head) + inflight::kSplitDescCounterOff, counter_++);
  store<uint8_t>(desc(head) + inflight::kSplitDescInflightOff, 1);
}

void SplitInflight::before_push(uint16_t head) noexcept {
  store<uint16_t>(desc(head) + inflight::kSplitDescNextOff, load<uint16_t>(region_ + inflight::kSplitLastBatchHeadOff));
  store<uint16_t>(region_ + inflight::kSplitLastBatchHeadOff, head);
}

void SplitInflight::after_push(uint16_t head) noexcept {
  store<uint8_t>(desc(head) + inflight::kSplitDescInflightOff, 0);
  used_idx_ = static_cast<uint16_t>(used_idx_ + 1);
  store<uint16_t>(region_ + inflight::kSplitUsedIdxOff, used_idx_);
}

}  // namespace vdma::vhost_user
