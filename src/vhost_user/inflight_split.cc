#include "inflight_split.h"

#include <algorithm>
#include <utility>

#include "inflight_fields.h"
#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/inflight.h"

namespace vdma::vhost_user {

using inflight::load_field;
using inflight::store_field;

std::byte* SplitInflight::desc(uint16_t i) const noexcept {
  return region_ + inflight::kSplitHeaderSize + size_t{i} * inflight::kSplitDescSize;
}

Result<SplitInflight::Recovery> SplitInflight::recover(uint16_t ring_used_idx) {
  Recovery rec;
  const uint16_t guest_version = load_field<uint16_t>(region_ + inflight::kSplitVersionOff);  // front-end-controlled
  if (guest_version == 0) {
    // Never used: start from a clean region of our size.
    for (uint16_t i = 0; i < num_; ++i) {
      store_field<uint8_t>(desc(i) + inflight::kSplitDescInflightOff, 0);
      store_field<uint16_t>(desc(i) + inflight::kSplitDescNextOff, 0);
      store_field<uint64_t>(desc(i) + inflight::kSplitDescCounterOff, 0);
    }
    store_field<uint16_t>(region_ + inflight::kSplitDescNumOff, num_);
    store_field<uint16_t>(region_ + inflight::kSplitLastBatchHeadOff, 0);
    store_field<uint16_t>(region_ + inflight::kSplitUsedIdxOff, ring_used_idx);
    store_field<uint16_t>(region_ + inflight::kSplitVersionOff, inflight::kVersion);
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
  const uint16_t guest_desc_num = load_field<uint16_t>(region_ + inflight::kSplitDescNumOff);
  if (guest_desc_num != num_) {
    return make_error(VhostUserErrc::kBadField, "inflight region: desc_num {} but the vring has {} descriptors",
                      guest_desc_num, num_);
  }
  const uint16_t guest_used_idx = load_field<uint16_t>(region_ + inflight::kSplitUsedIdxOff);
  if (guest_used_idx != ring_used_idx) {
    // Step 1: the used idx of the last batch reached the ring but the region
    // was not updated after it: those heads are complete, not inflight.
    const uint16_t batch = static_cast<uint16_t>(ring_used_idx - guest_used_idx);
    if (batch > num_) {
      return make_error(VhostUserErrc::kBadField,
                        "inflight region: used_idx {} is {} entries behind the used ring's idx {} (queue of {})",
                        guest_used_idx, batch, ring_used_idx, num_);
    }
    uint16_t guest_head = load_field<uint16_t>(region_ + inflight::kSplitLastBatchHeadOff);
    for (uint16_t k = 0; k < batch; ++k) {
      if (guest_head >= num_) {
        return make_error(VhostUserErrc::kBadField, "inflight region: last batch entry {} is head {} (queue of {})",
                          k, guest_head, num_);
      }
      store_field<uint8_t>(desc(guest_head) + inflight::kSplitDescInflightOff, 0);
      guest_head = load_field<uint16_t>(desc(guest_head) + inflight::kSplitDescNextOff);
    }
    store_field<uint16_t>(region_ + inflight::kSplitUsedIdxOff, ring_used_idx);
  }
  used_idx_ = ring_used_idx;
  // Step 2: resubmit in the order the heads were fetched.
  std::vector<std::pair<uint64_t, uint16_t>> inflight_heads;
  for (uint16_t i = 0; i < num_; ++i) {
    if (load_field<uint8_t>(desc(i) + inflight::kSplitDescInflightOff) != 0) {
      inflight_heads.emplace_back(load_field<uint64_t>(desc(i) + inflight::kSplitDescCounterOff), i);
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
  store_field<uint64_t>(desc(head) + inflight::kSplitDescCounterOff, counter_++);
  store_field<uint8_t>(desc(head) + inflight::kSplitDescInflightOff, 1);
}

void SplitInflight::before_push(uint16_t head) noexcept {
  store_field<uint16_t>(desc(head) + inflight::kSplitDescNextOff, load_field<uint16_t>(region_ + inflight::kSplitLastBatchHeadOff));
  store_field<uint16_t>(region_ + inflight::kSplitLastBatchHeadOff, head);
}

void SplitInflight::after_push(uint16_t head) noexcept {
  store_field<uint8_t>(desc(head) + inflight::kSplitDescInflightOff, 0);
  used_idx_ = static_cast<uint16_t>(used_idx_ + 1);
  store_field<uint16_t>(region_ + inflight::kSplitUsedIdxOff, used_idx_);
}

}  // namespace vdma::vhost_user
