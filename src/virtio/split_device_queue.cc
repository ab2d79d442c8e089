#include "vdma/virtio/split_device_queue.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "ring_factories.h"
#include "split_ring_access.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/split_layout.h"

namespace vdma {

namespace {

using split_ring::load_le16;
using split_ring::store_le16;

// "descriptor 17" or "indirect descriptor 3 of head 17", for error messages.
struct DescName {
  bool indirect;
  uint16_t index;
  uint16_t head;
};

// The rules a descriptor can break (virtio 1.2 §2.7.4.2, §2.7.5, §2.7.5.3).
enum class Rule : uint8_t {
  kNone,
  kLoop,
  kIndirectNotNegotiated,
  kNestedIndirect,
  kIndirectWithNext,
  kIndirectLength,
  kIndirectTooLong,
  kIndirectMisaligned,
  kIndirectWraps,
  kReadableAfterWritable,
  kWraps,
  kNextOutside,
};

// The rule a descriptor with INDIRECT set breaks, if any (§2.7.5.3.1, §2.7.5.3.2).
constexpr Rule check_indirect(split_ring::DescCopy d, bool negotiated, bool in_indirect, uint16_t size) {
  if (!negotiated) return Rule::kIndirectNotNegotiated;
  if (in_indirect) return Rule::kNestedIndirect;
  if ((d.flags & split::kDescFNext) != 0) return Rule::kIndirectWithNext;
  if (d.len == 0 || d.len % 16 != 0) return Rule::kIndirectLength;
  if (d.len / 16 > size) return Rule::kIndirectTooLong;
  if (!DmaAddr(d.addr).is_aligned(split::kDescAlign)) return Rule::kIndirectMisaligned;
  if (!fits(DmaAddr(d.addr), d.len)) return Rule::kIndirectWraps;
  return Rule::kNone;
}

// The rule a buffer descriptor breaks, if any (§2.7.4.2; addr + len must not wrap).
constexpr Rule check_buffer(split_ring::DescCopy d, bool writable, bool seen_writable) {
  if (!writable && seen_writable) return Rule::kReadableAfterWritable;
  if (!fits(DmaAddr(d.addr), d.len)) return Rule::kWraps;
  return Rule::kNone;
}

}  // namespace
}  // namespace vdma

template <>
struct fmt::formatter<vdma::DescName> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(const vdma::DescName& d, Ctx& ctx) const {
    if (d.indirect) return fmt::format_to(ctx.out(), "indirect descriptor {} of head {}", d.index, d.head);
    return fmt::format_to(ctx.out(), "descriptor {}", d.index);
  }
};

namespace vdma {

namespace {

// A bad chain is returned unprocessed: none of its fragments may be used.
void fail_chain(DescriptorChain& chain, Error e) {
  chain.readable.clear();
  chain.writable.clear();
  chain.readable_len = chain.writable_len = 0;
  chain.error = std::move(e);
}

// The chain broke `rule` at `where` (descriptor `d`, in a table of
// `table_len` entries, in a queue of `size`). Formats off the data path.
// Everything is passed by value so the walk keeps it in registers.
[[gnu::cold]] [[gnu::noinline]] void reject(DescriptorChain& chain, DescName where, Rule rule, split_ring::DescCopy d,
                                            uint32_t table_len, uint16_t size) {
  // After a miss the walk went on only to list further misses: the first
  // error stands (the chain is walked again once translated), and the
  // fragments translated since are dropped.
  if (chain.error) {
    fail_chain(chain, std::move(*chain.error));
    return;
  }
  const DmaAddr addr(d.addr);
  std::string what;
  switch (rule) {
    case Rule::kNone: break;
    case Rule::kLoop:
      what = fmt::format("chain from head {} does not end within the {} descriptors of its table (a loop)", where.head,
                         table_len);
      break;
    case Rule::kIndirectNotNegotiated: what = "INDIRECT is set but INDIRECT_DESC was not negotiated"; break;
    case Rule::kNestedIndirect: what = "INDIRECT inside an indirect table"; break;
    case Rule::kIndirectWithNext: what = "INDIRECT and NEXT are both set"; break;
    case Rule::kIndirectLength:
      what = fmt::format("indirect table length {:#x} is not a non-zero multiple of 16", d.len);
      break;
    case Rule::kIndirectTooLong:
      what = fmt::format("indirect table of {} descriptors is longer than the queue size {}", d.len / 16, size);
      break;
    case Rule::kIndirectMisaligned: what = fmt::format("indirect table at {} is not 16-byte aligned", addr); break;
    case Rule::kIndirectWraps:
      what = fmt::format("indirect table at {} + len {:#x} wraps past 2^64", addr, d.len);
      break;
    case Rule::kReadableAfterWritable: what = "device-readable after a device-writable descriptor"; break;
    case Rule::kWraps: what = fmt::format("address {} + len {:#x} wraps past 2^64", addr, d.len); break;
    case Rule::kNextOutside:
      what = fmt::format("next {} is outside the table of {} descriptors", d.next, table_len);
      break;
  }
  fail_chain(chain, Error(VirtioErrc::kBadDescriptor, fmt::format("{}: {}", where, what)));
}

// Translating [addr, addr+len) for `access` failed with `e` (a MemErrc from
// DeviceMemory): records the range so an IOTLB back-end can ask for it.
[[gnu::cold]] [[gnu::noinline]] void fault(DescriptorChain& chain, DescName where, Error e, uint64_t addr,
                                           uint64_t len, Access access) {
  chain.fault_addr = DmaAddr(addr);
  chain.fault_len = len;
  chain.fault_access = access;
  fail_chain(chain, std::move(e).with_context(fmt::format("{}", where)));
}

// The walk that went on after a miss ends: the chain carries its first
// error and no fragments (those translated after the miss are dropped).
void end_after_miss(DescriptorChain& chain) noexcept {
  chain.readable.clear();
  chain.writable.clear();
  chain.readable_len = chain.writable_len = 0;
}

}  // namespace

Result<std::unique_ptr<SplitDeviceQueue>> SplitDeviceQueue::create(const DeviceMemory& mem, const QueueConfig& config,
                                                                   RingAddresses rings, uint16_t avail_position) {
  if (config.size == 0 || config.size > split::kMaxQueueSize || !is_pow2(config.size)) {
    return make_error(VirtioErrc::kInvalidConfig, "split queue size {} is not a power of two in 1..{}", config.size,
                      split::kMaxQueueSize);
  }
  // §2.7.1: each ring part starts at its alignment.
  if (!rings.desc.is_aligned(split::kDescAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "descriptor table at {} is not {}-byte aligned", rings.desc,
                      split::kDescAlign);
  }
  if (!rings.driver.is_aligned(split::kAvailAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "available ring at {} is not {}-byte aligned", rings.driver,
                      split::kAvailAlign);
  }
  if (!rings.device.is_aligned(split::kUsedAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "used ring at {} is not {}-byte aligned", rings.device,
                      split::kUsedAlign);
  }
  std::unique_ptr<SplitDeviceQueue> q(new SplitDeviceQueue(mem, config, rings, avail_position));
  VDMA_TRY(q->retranslate());

  // Resume where the previous owner of the ring stopped: the used idx in the
  // ring is the device's own last write (vhost and QEMU do the same). More
  // chains in flight than the queue holds means the position is not ours.
  const uint16_t guest_used_idx = load_le16(q->used_ + split::kUsedIdxOff, std::memory_order_relaxed);
  const uint16_t in_flight = static_cast<uint16_t>(avail_position - guest_used_idx);
  if (in_flight > config.size) {
    return make_error(VirtioErrc::kInvalidConfig,
                      "avail position {} is {} entries ahead of the used idx {} in the ring, more than the queue "
                      "size {}",
                      avail_position, in_flight, guest_used_idx, config.size);
  }
  q->used_idx_ = guest_used_idx;
  q->signalled_used_ = guest_used_idx;
  return q;
}

SplitDeviceQueue::SplitDeviceQueue(const DeviceMemory& mem, const QueueConfig& config, RingAddresses rings,
                                   uint16_t avail_position)
    : mem_(mem),
      size_(config.size),
      mask_(static_cast<uint16_t>(config.size - 1)),
      indirect_(has_feature(config.features, kFeatureIndirectDesc)),
      event_idx_(has_feature(config.features, kFeatureEventIdx)),
      barrier_(has_feature(config.features, kFeatureOrderPlatform) ? BarrierKind::kStrong : BarrierKind::kWeak),
      rings_(rings),
      epoch_(mem.ring_epoch()),
      last_avail_(avail_position) {}

Result<void> SplitDeviceQueue::retranslate() {
  rings_valid_ = false;
  // Loaded before translating: a change racing with the translation moves
  // the epoch past this value, so the next call translates again.
  const uint64_t epoch = epoch_ != nullptr ? epoch_->load(std::memory_order_acquire) : 0;
  auto desc = mem_.translate_ring(rings_.desc, split::desc_table_size(size_), Access::kRead);
  if (!desc) return std::move(desc).error().with_context("descriptor table");
  auto avail = mem_.translate_ring(rings_.driver, split::avail_size(size_), Access::kRead);
  if (!avail) return std::move(avail).error().with_context("available ring");
  auto used = mem_.translate_ring(rings_.device, split::used_size(size_), Access::kReadWrite);
  if (!used) return std::move(used).error().with_context("used ring");
  VDMA_CHECK(desc->size() == split::desc_table_size(size_) && avail->size() == split::avail_size(size_) &&
                 used->size() == split::used_size(size_),
             "translate_ring returned a span of the wrong size");
  // Indices are accessed with std::atomic_ref, which needs natural alignment
  // of the host address too, not only of the bus address checked at create().
  const auto host_misaligned = [](const std::byte* p, size_t align) {
    return (reinterpret_cast<uintptr_t>(p) & (align - 1)) != 0;
  };
  if (host_misaligned(avail->data(), split::kAvailAlign) || host_misaligned(used->data(), split::kUsedAlign)) {
    return make_error(VirtioErrc::kInvalidConfig, "ring areas {} / {} map to misaligned host addresses", rings_.driver,
                      rings_.device);
  }
  desc_ = desc->data();
  avail_ = avail->data();
  used_ = used->data();
  seen_epoch_ = epoch;
  rings_valid_ = true;
  return ok();
}

Error SplitDeviceQueue::enter_needs_reset(std::string message) {
  Error e(VirtioErrc::kNeedsReset, std::move(message));
  spdlog::error("split queue needs reset: {}", e);
  needs_reset_ = e;
  return e;
}

Result<bool> SplitDeviceQueue::pop(DescriptorChain& chain) {
  chain.clear();
  if (needs_reset_) [[unlikely]] return *needs_reset_;
  if (!rings_current()) [[unlikely]] VDMA_TRY(retranslate());
  // §2.7.13.3.1: acquire pairs with the driver's release of avail idx, so the
  // ring entry and descriptors below are read after it.
  const uint16_t guest_avail_idx = load_le16(avail_ + split::kAvailIdxOff, std::memory_order_acquire);
  const uint16_t pending = static_cast<uint16_t>(guest_avail_idx - last_avail_);
  if (pending == 0) return false;
  if (pending > size_) [[unlikely]] {
    // §2.7.6.1: idx never goes back and never runs more than a ring ahead.
    return enter_needs_reset(fmt::format("avail idx jumped to {} with {} next to pop: {} entries in a "
                                                    "queue of {}",
                                                    guest_avail_idx, last_avail_, pending, size_));
  }
  if (barrier_ == BarrierKind::kStrong) {
    // §2.7.13.3.1 with ORDER_PLATFORM (§6): the other side may be hardware,
    // so also the platform's read barrier (dma_rmb) between idx and entry.
    virtio_rmb(barrier_);
  }
  const uint16_t guest_head =  // guest-controlled
      load_le16(avail_ + split_ring::avail_ring_off(last_avail_ & mask_), std::memory_order_relaxed);
  if (guest_head >= size_) [[unlikely]] {
    return enter_needs_reset(
        fmt::format("avail ring entry {} holds head {} but the queue size is {}", last_avail_, guest_head, size_));
  }
  chain.id = guest_head;
  chain.position = static_cast<uint16_t>(last_avail_ & mask_);
  last_avail_ = static_cast<uint16_t>(last_avail_ + 1);
  walk(chain);
  return true;
}

Result<void> SplitDeviceQueue::rewalk(DescriptorChain& chain) {
  VDMA_CHECK(chain.id < size_, "rewalk of a chain this queue did not pop");
  chain.clear();
  if (needs_reset_) return *needs_reset_;
  if (!rings_current()) VDMA_TRY(retranslate());
  walk(chain);
  return ok();
}

inline void SplitDeviceQueue::walk(DescriptorChain& chain) {
  const uint16_t head = chain.id;
  const std::byte* table = desc_;
  uint32_t table_len = size_;
  bool in_indirect = false;
  uint16_t idx = head;
  uint32_t visited = 0;  // descriptors read from the current table
  uint16_t ring_slots = 0;
  bool seen_writable = false;

  while (true) {
    // Bound the walk: a table of n entries cannot hold a chain longer than n
    // without a loop (§2.7.5.2, §2.7.5.3.1).
    if (visited == table_len) [[unlikely]] {
      return reject(chain, {in_indirect, idx, head}, Rule::kLoop, {}, table_len, size_);
    }
    ++visited;
    if (!in_indirect) ++ring_slots;
    const split_ring::DescCopy guest = split_ring::read_desc(table + size_t{16} * idx);  // guest-controlled
    const DescName where{in_indirect, idx, head};

    if ((guest.flags & split::kDescFIndirect) != 0) {
      // §2.7.5.3.2: the WRITE flag of the descriptor pointing at the table is ignored.
      if (const Rule rule = check_indirect(guest, indirect_, in_indirect, size_); rule != Rule::kNone) [[unlikely]] {
        return reject(chain, where, rule, guest, table_len, size_);
      }
      table_frags_.clear();
      if (auto r = mem_.translate(DmaAddr(guest.addr), guest.len, Access::kRead, table_frags_); !r) {
        // The table's entries are unknown: the walk ends here.
        if (!chain.error) return fault(chain, where, std::move(r).error(), guest.addr, guest.len, Access::kRead);
        if (r.error().is(MemErrc::kNotMapped)) chain.add_more_fault(DmaAddr(guest.addr), guest.len, Access::kRead);
        return end_after_miss(chain);
      }
      if (table_frags_.size() == 1) {
        table = table_frags_.front().host;
      } else {
        // A table spread over several host fragments is copied once; each
        // entry is still read exactly once, from the copy.
        table_copy_.resize(guest.len);
        size_t off = 0;
        for (const Fragment& f : table_frags_) {
          std::memcpy(table_copy_.data() + off, f.host, f.len);
          off += f.len;
        }
        table = table_copy_.data();
      }
      table_len = guest.len / 16;
      in_indirect = true;
      idx = 0;
      visited = 0;
      continue;
    }

    const bool writable = (guest.flags & split::kDescFWrite) != 0;
    if (const Rule rule = check_buffer(guest, writable, seen_writable); rule != Rule::kNone) [[unlikely]] {
      return reject(chain, where, rule, guest, table_len, size_);
    }
    seen_writable = seen_writable || writable;
    if (guest.len != 0) {
      const Access access = writable ? Access::kWrite : Access::kRead;
      if (auto r = mem_.translate(DmaAddr(guest.addr), guest.len, access, writable ? chain.writable : chain.readable);
          !r) [[unlikely]] {
        const bool miss = r.error().is(MemErrc::kNotMapped);
        if (!chain.error) {
          fault(chain, where, std::move(r).error(), guest.addr, guest.len, access);
        } else if (miss) {
          chain.add_more_fault(DmaAddr(guest.addr), guest.len, access);
        }
        // A miss: walk on to list the chain's other misses; anything else
        // (a permission failure) ends the walk.
        if (!miss) return end_after_miss(chain);
      } else {
        (writable ? chain.writable_len : chain.readable_len) += guest.len;
      }
    }
    if ((guest.flags & split::kDescFNext) == 0) break;
    if (guest.next >= table_len) [[unlikely]] {
      return reject(chain, where, Rule::kNextOutside, guest, table_len, size_);
    }
    idx = guest.next;
  }
  chain.ring_slots = ring_slots;
  if (chain.error) [[unlikely]] end_after_miss(chain);
}

Result<void> SplitDeviceQueue::push_used(const DescriptorChain& chain, uint32_t written) {
  VDMA_CHECK(chain.id < size_, "push_used of a chain this queue did not pop");
  if (needs_reset_) [[unlikely]] return *needs_reset_;
  if (!rings_current()) [[unlikely]] VDMA_TRY(retranslate());
  const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(written, chain.writable_len));
  split_ring::write_used_elem(used_ + split_ring::used_ring_off(used_idx_ & mask_), chain.id, len);
  used_idx_ = static_cast<uint16_t>(used_idx_ + 1);
  if (barrier_ == BarrierKind::kStrong) {
    // §2.7.8.2 with ORDER_PLATFORM (§6): the platform's write barrier
    // (dma_wmb) too, so the element reaches the driver before the idx.
    virtio_wmb(barrier_);
  }
  // §2.7.8.2: the element (and the buffer data) must be visible before the
  // idx that exposes it; release pairs with the driver's acquire of used idx.
  store_le16(used_ + split::kUsedIdxOff, used_idx_, std::memory_order_release);
  ++pushed_since_signal_;
  return ok();
}

bool SplitDeviceQueue::should_notify() {
  if (pushed_since_signal_ == 0) return false;
  const uint32_t pushed = pushed_since_signal_;
  const uint16_t old_idx = signalled_used_;
  pushed_since_signal_ = 0;
  signalled_used_ = used_idx_;
  // Without a current view of the avail ring the driver's wishes are unknown;
  // a spurious notification is allowed (§2.7.7), a missing one is not.
  if (!rings_current() && !retranslate()) return true;
  // §2.7.7.2: our used idx store must be visible before we read the driver's
  // flags / used_event (store->load), or we could skip a needed notification.
  virtio_mb(barrier_);
  if (event_idx_) {
    if (pushed > 0xffff) return true;  // the 16-bit event index cannot tell
    const uint16_t guest_used_event = load_le16(avail_ + split::used_event_off(size_), std::memory_order_relaxed);
    return vring_need_event(guest_used_event, used_idx_, old_idx);
  }
  const uint16_t guest_flags = load_le16(avail_ + split::kAvailFlagsOff, std::memory_order_relaxed);
  return (guest_flags & split::kAvailFNoInterrupt) == 0;
}

void SplitDeviceQueue::disable_notifications() {
  // A stopped queue no longer writes to the driver's memory; otherwise best
  // effort (§2.7.10).
  if (needs_reset_) return;
  if (!rings_current() && !retranslate()) return;
  if (event_idx_) {
    // §2.7.10: flags stay 0; an event index just behind the next entry is not
    // crossed until the avail idx wraps.
    store_le16(used_ + split::avail_event_off(size_), static_cast<uint16_t>(last_avail_ - 1),
               std::memory_order_relaxed);
  } else {
    store_le16(used_ + split::kUsedFlagsOff, split::kUsedFNoNotify, std::memory_order_relaxed);
  }
}

bool SplitDeviceQueue::enable_notifications() {
  // Sleeping on a stopped or unreachable ring would hide the error: say
  // "poll again" so the caller's next pop() reports it.
  if (needs_reset_) return false;
  if (!rings_current() && !retranslate()) return false;
  if (event_idx_) {
    store_le16(used_ + split::avail_event_off(size_), last_avail_, std::memory_order_relaxed);
  } else {
    store_le16(used_ + split::kUsedFlagsOff, 0, std::memory_order_relaxed);
  }
  // §2.7.10: the re-enable must be visible before we re-read avail idx
  // (store->load); otherwise a chain added in between sends no kick and is
  // not seen here either.
  virtio_mb(barrier_);
  return load_le16(avail_ + split::kAvailIdxOff, std::memory_order_acquire) == last_avail_;
}

Result<std::unique_ptr<DeviceQueue>> make_split_device_queue(const DeviceMemory& mem, const QueueConfig& config,
                                                             RingAddresses rings, uint16_t avail_position) {
  return VDMA_TRY(SplitDeviceQueue::create(mem, config, rings, avail_position));
}

}  // namespace vdma
