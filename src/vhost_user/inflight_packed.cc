#include "inflight_packed.h"

#include <algorithm>
#include <utility>

#include "inflight_fields.h"
#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/inflight.h"

namespace vdma::vhost_user {

using inflight::load_field;
using inflight::store_field;

namespace {

constexpr uint16_t kWrapBit = 0x8000;   // bit 15 of a packed ring position
constexpr uint16_t kDescFNext = 1;      // virtio 1.2 §2.8.13

uint16_t encode_position(uint16_t index, bool wrap) noexcept {
  return static_cast<uint16_t>(index | (wrap ? kWrapBit : 0));
}

}  // namespace

std::byte* PackedInflight::desc(uint16_t i) const noexcept {
  return region_ + inflight::kPackedHeaderSize + size_t{i} * inflight::kPackedDescSize;
}

void PackedInflight::initialise(uint16_t base) {
  for (uint16_t i = 0; i < num_; ++i) {
    std::byte* d = desc(i);
    store_field<uint8_t>(d + inflight::kPackedDescInflightOff, 0);
    store_field<uint16_t>(d + inflight::kPackedDescNextOff, static_cast<uint16_t>(i + 1));
    store_field<uint16_t>(d + inflight::kPackedDescLastOff, 0);
    store_field<uint16_t>(d + inflight::kPackedDescChainNumOff, 0);
    store_field<uint64_t>(d + inflight::kPackedDescCounterOff, 0);
    next_[i] = static_cast<uint16_t>(i + 1);
  }
  free_head_ = 0;
  used_idx_ = base & (kWrapBit - 1);
  used_wrap_ = (base & kWrapBit) != 0;
  counter_ = 0;
  store_field<uint16_t>(region_ + inflight::kPackedDescNumOff, num_);
  store_field<uint16_t>(region_ + inflight::kPackedFreeHeadOff, 0);
  store_field<uint16_t>(region_ + inflight::kPackedOldFreeHeadOff, 0);
  store_field<uint16_t>(region_ + inflight::kPackedUsedIdxOff, used_idx_);
  store_field<uint16_t>(region_ + inflight::kPackedOldUsedIdxOff, used_idx_);
  store_field<uint8_t>(region_ + inflight::kPackedUsedWrapOff, used_wrap_ ? 1 : 0);
  store_field<uint8_t>(region_ + inflight::kPackedOldUsedWrapOff, used_wrap_ ? 1 : 0);
  // Last: a region with a version is one the next back-end recovers.
  store_field<uint16_t>(region_ + inflight::kPackedVersionOff, inflight::kVersion);
}

void PackedInflight::rebuild_free_list(const std::vector<bool>& in_chain) {
  uint16_t first = num_;
  uint16_t prev = num_;
  for (uint16_t i = 0; i < num_; ++i) {
    if (in_chain[i]) continue;
    if (prev == num_) {
      first = i;
    } else {
      next_[prev] = i;
      store_field<uint16_t>(desc(prev) + inflight::kPackedDescNextOff, i);
    }
    prev = i;
  }
  if (prev != num_) {
    next_[prev] = num_;
    store_field<uint16_t>(desc(prev) + inflight::kPackedDescNextOff, num_);
  }
  free_head_ = first;
  store_field<uint16_t>(region_ + inflight::kPackedFreeHeadOff, first);
  store_field<uint16_t>(region_ + inflight::kPackedOldFreeHeadOff, first);
}

Result<PackedInflight::Recovery> PackedInflight::recover(uint16_t base, PackedDeviceQueue& ring) {
  next_.assign(num_, 0);
  last_.assign(num_, 0);
  count_.assign(num_, 0);
  scratch_.assign(num_, PackedDescCopy{});
  Recovery rec;
  const uint16_t guest_version = load_field<uint16_t>(region_ + inflight::kPackedVersionOff);  // front-end-controlled
  if (guest_version == 0) {
    initialise(base);
    rec.fresh = true;
    rec.used_position = base;
    return rec;
  }
  if (guest_version != inflight::kVersion) {
    return make_error(VhostUserErrc::kBadField, "inflight region: version {}, expected {}", guest_version,
                      inflight::kVersion);
  }
  const uint16_t guest_desc_num = load_field<uint16_t>(region_ + inflight::kPackedDescNumOff);
  if (guest_desc_num != num_) {
    return make_error(VhostUserErrc::kBadField, "inflight region: desc_num {} but the vring has {} descriptors",
                      guest_desc_num, num_);
  }
  const uint16_t guest_free_head = load_field<uint16_t>(region_ + inflight::kPackedFreeHeadOff);
  const uint16_t guest_old_free_head = load_field<uint16_t>(region_ + inflight::kPackedOldFreeHeadOff);
  const uint16_t guest_used_idx = load_field<uint16_t>(region_ + inflight::kPackedUsedIdxOff);
  const uint16_t guest_old_used_idx = load_field<uint16_t>(region_ + inflight::kPackedOldUsedIdxOff);
  const uint8_t guest_used_wrap = load_field<uint8_t>(region_ + inflight::kPackedUsedWrapOff);
  const uint8_t guest_old_used_wrap = load_field<uint8_t>(region_ + inflight::kPackedOldUsedWrapOff);
  if (guest_used_idx >= num_ || guest_old_used_idx >= num_ || guest_used_wrap > 1 || guest_old_used_wrap > 1) {
    return make_error(VhostUserErrc::kBadField,
                      "inflight region: used_idx {} / old_used_idx {} (queue of {}), wrap counters {} / {}",
                      guest_used_idx, guest_old_used_idx, num_, guest_used_wrap, guest_old_used_wrap);
  }
  // Step 2 by default: roll back whatever update was in progress.
  uint16_t free_head = guest_old_free_head;
  uint16_t used_idx = guest_old_used_idx;
  bool used_wrap = guest_old_used_wrap != 0;
  if (guest_used_idx != guest_old_used_idx || guest_used_wrap != guest_old_used_wrap) {
    // Step 1: the used index moved but the old_* fields did not follow. If
    // the descriptor at the old used position is no longer the one the
    // driver made available there, the used element reached the ring before
    // the crash: commit the update instead of rolling it back.
    const bool still_available = VDMA_TRY(ring.is_available_at(encode_position(guest_old_used_idx, used_wrap)));
    if (!still_available) {
      free_head = guest_free_head;
      used_idx = guest_used_idx;
      used_wrap = guest_used_wrap != 0;
    }
  }
  // Step 3: entries on the free list are not in flight, whatever their mark
  // says (a chain whose logging was cut short). The list ends at an index
  // beyond the table (desc_num, as initialised); each step takes a new entry,
  // so the walk ends within desc_num steps or finds a loop.
  std::vector<bool> on_free_list(num_, false);
  for (uint16_t e = free_head; e < num_;) {
    if (on_free_list[e]) {
      return make_error(VhostUserErrc::kBadField, "inflight region: the free list from entry {} loops back to entry {}",
                        free_head, e);
    }
    on_free_list[e] = true;
    if (load_field<uint8_t>(desc(e) + inflight::kPackedDescInflightOff) != 0) {
      store_field<uint8_t>(desc(e) + inflight::kPackedDescInflightOff, 0);
    }
    next_[e] = load_field<uint16_t>(desc(e) + inflight::kPackedDescNextOff);
    e = next_[e];
  }
  // Step 4: every other entry marked in flight heads a chain still in
  // flight; resubmit in counter order (ties by entry, so the order is total).
  std::vector<std::pair<uint64_t, uint16_t>> heads;
  for (uint16_t i = 0; i < num_; ++i) {
    if (!on_free_list[i] && load_field<uint8_t>(desc(i) + inflight::kPackedDescInflightOff) != 0) {
      heads.emplace_back(load_field<uint64_t>(desc(i) + inflight::kPackedDescCounterOff), i);
    }
  }
  std::sort(heads.begin(), heads.end());
  std::vector<bool> in_chain(num_, false);
  uint32_t slots = 0;
  for (const auto& [counter, head] : heads) {
    const uint16_t guest_count = load_field<uint16_t>(desc(head) + inflight::kPackedDescChainNumOff);
    const uint16_t guest_last = load_field<uint16_t>(desc(head) + inflight::kPackedDescLastOff);
    if (guest_count == 0 || guest_count > num_) {
      return make_error(VhostUserErrc::kBadField, "inflight region: entry {} is in flight with num {} (queue of {})",
                        head, guest_count, num_);
    }
    Chain chain{head, {}};
    chain.descs.reserve(guest_count);
    uint16_t e = head;
    for (uint16_t k = 0;; ++k) {
      if (e >= num_ || on_free_list[e] || in_chain[e]) {
        return make_error(VhostUserErrc::kBadField,
                          "inflight region: descriptor {} of the chain at entry {} is entry {}, {}", k, head, e,
                          e >= num_ ? "beyond the table" : on_free_list[e] ? "on the free list" : "in another chain");
      }
      in_chain[e] = true;
      const std::byte* d = desc(e);
      const PackedDescCopy copy{load_field<uint64_t>(d + inflight::kPackedDescAddrOff),
                                load_field<uint32_t>(d + inflight::kPackedDescLenOff),
                                load_field<uint16_t>(d + inflight::kPackedDescIdOff),
                                load_field<uint16_t>(d + inflight::kPackedDescFlagsOff)};  // front-end-controlled
      const bool last = k + 1 == guest_count;
      // The copies must form one ring chain (§2.8.6): NEXT on all but the
      // last, whose buffer id (§2.8.6: in the last descriptor) names a slot.
      if (((copy.flags & kDescFNext) != 0) == last || (last && copy.id >= num_)) {
        return make_error(VhostUserErrc::kBadField,
                          "inflight region: descriptor {} of {} of the chain at entry {} has flags {:#x} and id {}", k,
                          guest_count, head, copy.flags, copy.id);
      }
      chain.descs.push_back(copy);
      if (last) break;
      next_[e] = load_field<uint16_t>(desc(e) + inflight::kPackedDescNextOff);
      e = next_[e];
    }
    if (e != guest_last) {
      return make_error(VhostUserErrc::kBadField, "inflight region: the chain at entry {} ends at entry {}, last says {}",
                        head, e, guest_last);
    }
    last_[head] = guest_last;
    count_[head] = guest_count;
    slots += guest_count;  // the chains are disjoint, so at most num_
    rec.chains.push_back(std::move(chain));
  }
  // Step 2: the values chosen above become both the current and the old ones.
  store_field<uint16_t>(region_ + inflight::kPackedFreeHeadOff, free_head);
  store_field<uint16_t>(region_ + inflight::kPackedUsedIdxOff, used_idx);
  store_field<uint8_t>(region_ + inflight::kPackedUsedWrapOff, used_wrap ? 1 : 0);
  store_field<uint16_t>(region_ + inflight::kPackedOldFreeHeadOff, free_head);
  store_field<uint16_t>(region_ + inflight::kPackedOldUsedIdxOff, used_idx);
  store_field<uint8_t>(region_ + inflight::kPackedOldUsedWrapOff, used_wrap ? 1 : 0);
  free_head_ = free_head;
  // Entries neither free nor in a chain cannot happen with a region written
  // as the spec says; rather than leak them, start a new free list.
  size_t accounted = slots;
  for (uint16_t i = 0; i < num_; ++i) accounted += on_free_list[i] ? 1 : 0;
  if (accounted != num_) rebuild_free_list(in_chain);
  used_idx_ = used_idx;
  used_wrap_ = used_wrap;
  counter_ = heads.empty() ? 0 : heads.back().first + 1;
  rec.used_position = encode_position(used_idx, used_wrap);
  rec.inflight_slots = static_cast<uint16_t>(slots);
  return rec;
}

uint16_t PackedInflight::popped(const PackedDeviceQueue& queue, const DescriptorChain& chain) {
  const uint16_t n = chain.ring_slots;
  VDMA_CHECK(n >= 1 && n <= num_, "inflight log of a chain the queue did not pop");
  queue.copy_descriptors(chain, std::span<PackedDescCopy>(scratch_).first(n));
  const uint16_t head = free_head_;  // == old_free_head between chains
  VDMA_CHECK(head < num_, "inflight free list empty while the queue has descriptors to pop");
  store_field<uint16_t>(desc(head) + inflight::kPackedDescChainNumOff, 0);
  store_field<uint64_t>(desc(head) + inflight::kPackedDescCounterOff, counter_++);
  store_field<uint8_t>(desc(head) + inflight::kPackedDescInflightOff, 1);
  uint16_t e = head;
  for (uint16_t k = 0; k < n; ++k) {
    // The queue holds at most num_ descriptors in flight and the shadow free
    // list has an entry for every one it does not hold.
    VDMA_CHECK(e < num_, "inflight free list shorter than the descriptors the queue popped");
    if (k + 1 == n) {
      store_field<uint16_t>(desc(head) + inflight::kPackedDescLastOff, e);
      last_[head] = e;
    }
    store_field<uint16_t>(desc(head) + inflight::kPackedDescChainNumOff, static_cast<uint16_t>(k + 1));
    std::byte* d = desc(e);
    store_field<uint64_t>(d + inflight::kPackedDescAddrOff, scratch_[k].addr);
    store_field<uint32_t>(d + inflight::kPackedDescLenOff, scratch_[k].len);
    store_field<uint16_t>(d + inflight::kPackedDescIdOff, scratch_[k].id);
    store_field<uint16_t>(d + inflight::kPackedDescFlagsOff, scratch_[k].flags);
    e = next_[e];
    store_field<uint16_t>(region_ + inflight::kPackedFreeHeadOff, e);
  }
  // The chain is logged completely only once old_free_head moves past it; a
  // back-end that dies before that rolls back to the old free head, whose
  // list still holds these entries.
  store_field<uint16_t>(region_ + inflight::kPackedOldFreeHeadOff, e);
  free_head_ = e;
  count_[head] = n;
  return head;
}

void PackedInflight::before_push(uint16_t entry) noexcept {
  const uint16_t last = last_[entry];
  next_[last] = free_head_;
  store_field<uint16_t>(desc(last) + inflight::kPackedDescNextOff, free_head_);
  free_head_ = entry;
  store_field<uint16_t>(region_ + inflight::kPackedFreeHeadOff, entry);
  // virtio 1.2 §2.8.6: the used position moves by the chain's descriptors.
  const uint32_t used = uint32_t{used_idx_} + count_[entry];
  if (used >= num_) {
    used_idx_ = static_cast<uint16_t>(used - num_);
    used_wrap_ = !used_wrap_;
  } else {
    used_idx_ = static_cast<uint16_t>(used);
  }
  store_field<uint16_t>(region_ + inflight::kPackedUsedIdxOff, used_idx_);
  store_field<uint8_t>(region_ + inflight::kPackedUsedWrapOff, used_wrap_ ? 1 : 0);
}

void PackedInflight::after_push(uint16_t entry) noexcept {
  store_field<uint8_t>(desc(entry) + inflight::kPackedDescInflightOff, 0);
  // The update is complete: a back-end dying from here on needs no step 1.
  store_field<uint16_t>(region_ + inflight::kPackedOldFreeHeadOff, free_head_);
  store_field<uint16_t>(region_ + inflight::kPackedOldUsedIdxOff, used_idx_);
  store_field<uint8_t>(region_ + inflight::kPackedOldUsedWrapOff, used_wrap_ ? 1 : 0);
}

}  // namespace vdma::vhost_user
