#include "packed_chain_walker.h"

#include <algorithm>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "packed_ring_access.h"
#include "vdma/virtio/errors.h"
#include "vdma/virtio/packed_layout.h"

namespace vdma {

namespace {

// "descriptor 5" or "descriptor 5 indirect entry 2": built only on error paths.
std::string describe(uint16_t ring_index, int32_t entry) {
  if (entry < 0) return fmt::format("descriptor {}", ring_index);
  return fmt::format("descriptor {} indirect entry {}", ring_index, entry);
}

}  // namespace

PackedChainWalker::PackedChainWalker(const DeviceMemory& mem, uint16_t size, bool indirect_negotiated)
    : mem_(mem), size_(size), indirect_(indirect_negotiated) {}

ChainWalk PackedChainWalker::walk(std::byte* ring, uint16_t position, uint16_t head_flags, DescriptorChain& chain) {
  seen_writable_ = false;
  miss_.reset();
  uint16_t slot = position;
  // §2.8.6: a chain occupies consecutive slots (wrapping) until a descriptor
  // without NEXT; a driver cannot make more than `size` descriptors
  // available, so that bounds the walk.
  for (uint32_t n = 0; n < size_; ++n) {
    const packed::DescValue d = packed::read_desc(packed::desc_at(ring, slot));  // guest-controlled
    // The head's flags were read once by the caller (the acquire load that
    // saw it available); re-reading them could see another value.
    const uint16_t guest_flags = n == 0 ? head_flags : d.flags;
    const uint16_t index = slot;
    slot = static_cast<uint16_t>(slot + 1 == size_ ? 0 : slot + 1);
    if (!chain.error) add_ring_descriptor({index, -1}, d.addr, d.len, guest_flags, chain);
    if ((guest_flags & packed::kDescFNext) == 0) {
      // The first error stands: a miss, after which the walk went on only to
      // list further misses, comes before anything found after it.
      if (miss_) chain.error = std::move(*miss_);
      // A chain returned with an error must not be written through.
      if (chain.error) drop_buffers(chain);
      // §2.8.6: the buffer id is in the last descriptor of the chain.
      chain.ring_slots = static_cast<uint16_t>(n + 1);
      chain.id = d.id;
      return d.id < size_ ? ChainWalk::kComplete : ChainWalk::kIdOutOfRange;
    }
  }
  drop_buffers(chain);
  chain.ring_slots = size_;
  chain.id = 0;
  return ChainWalk::kNoEnd;
}

void PackedChainWalker::drop_buffers(DescriptorChain& chain) noexcept {
  chain.readable.clear();
  chain.writable.clear();
  chain.readable_len = chain.writable_len = 0;
}

void PackedChainWalker::add_ring_descriptor(Where at, uint64_t guest_addr, uint32_t guest_len, uint16_t guest_flags,
                                            DescriptorChain& chain) {
  if ((guest_flags & packed::kDescFIndirect) == 0) {
    add_buffer(at, guest_addr, guest_len, (guest_flags & packed::kDescFWrite) != 0, chain);
    return;
  }
  if (!indirect_) {
    chain.error = Error(VirtioErrc::kBadDescriptor,
                        fmt::format("{}: INDIRECT set but VIRTIO_F_INDIRECT_DESC was not negotiated",
                                    describe(at.ring_index, at.entry)));
    return;
  }
  // §2.8.19: INDIRECT and NEXT together are forbidden.
  if ((guest_flags & packed::kDescFNext) != 0) {
    chain.error = Error(VirtioErrc::kBadDescriptor,
                        fmt::format("{}: INDIRECT together with NEXT", describe(at.ring_index, at.entry)));
    return;
  }
  add_indirect_table(at, guest_addr, guest_len, chain);
}

void PackedChainWalker::add_indirect_table(Where at, uint64_t guest_addr, uint32_t guest_len, DescriptorChain& chain) {
  const DmaAddr table(guest_addr);
  if (guest_len == 0 || guest_len % sizeof(packed::Desc) != 0) {
    chain.error = Error(VirtioErrc::kBadDescriptor,
                        fmt::format("{}: indirect table length {:#x} is not a non-zero multiple of 16",
                                    describe(at.ring_index, at.entry), guest_len));
    return;
  }
  const uint32_t entries = guest_len / sizeof(packed::Desc);
  if (entries > size_) {
    chain.error = Error(VirtioErrc::kBadDescriptor,
                        fmt::format("{}: indirect table of {} entries exceeds the queue size {}",
                                    describe(at.ring_index, at.entry), entries, size_));
    return;
  }
  if (!table.is_aligned(sizeof(packed::Desc))) {
    chain.error = Error(VirtioErrc::kBadDescriptor, fmt::format("{}: indirect table address {} is not 16-byte aligned",
                                                                describe(at.ring_index, at.entry), table));
    return;
  }
  if (!fits(table, guest_len)) {
    chain.error = Error(VirtioErrc::kBadDescriptor, fmt::format("{}: indirect table {} + len {:#x} wraps past 2^64",
                                                                describe(at.ring_index, at.entry), table, guest_len));
    return;
  }
  table_frags_.clear();
  if (auto t = mem_.translate(table, guest_len, Access::kRead, table_frags_); !t) {
    // The table's entries are unknown: nothing more to walk in it.
    if (miss_) {
      if (t.error().is(MemErrc::kNotMapped)) chain.add_more_fault(table, guest_len, Access::kRead);
      return;
    }
    chain.error = std::move(t).error().with_context(describe(at.ring_index, at.entry) + " indirect table");
    chain.fault_addr = table;
    chain.fault_len = guest_len;
    chain.fault_access = Access::kRead;
    return;
  }
  // The table may come in several host fragments whose edges need not fall
  // on descriptor boundaries: copy each entry out piecewise.
  size_t frag = 0;
  uint64_t off = 0;
  for (uint32_t k = 0; k < entries && !chain.error; ++k) {
    std::byte raw[sizeof(packed::Desc)];
    size_t have = 0;
    while (have < sizeof raw) {
      // DeviceMemory::translate covers exactly guest_len bytes.
      VDMA_CHECK(frag < table_frags_.size(), "indirect table fragments shorter than the table");
      const Fragment& f = table_frags_[frag];
      const size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof raw - have, f.len - off));
      std::memcpy(raw + have, f.host + off, n);
      have += n;
      off += n;
      if (off == f.len) {
        ++frag;
        off = 0;
      }
    }
    const packed::DescValue e = packed::read_desc(raw);  // guest-controlled
    const Where entry_at{at.ring_index, static_cast<int32_t>(k)};
    // §2.8.19: a table entry cannot point at another table.
    if ((e.flags & packed::kDescFIndirect) != 0) {
      chain.error = Error(VirtioErrc::kBadDescriptor, fmt::format("{}: INDIRECT inside an indirect table",
                                                                  describe(entry_at.ring_index, entry_at.entry)));
      return;
    }
    // §2.8.7: WRITE is the only flag that counts inside a table; NEXT is ignored.
    add_buffer(entry_at, e.addr, e.len, (e.flags & packed::kDescFWrite) != 0, chain);
  }
}

void PackedChainWalker::add_buffer(Where at, uint64_t guest_addr, uint32_t guest_len, bool writable,
                                   DescriptorChain& chain) {
  const DmaAddr addr(guest_addr);
  // §2.8.18: all device-readable buffers come before the device-writable ones.
  if (!writable && seen_writable_) {
    chain.error = Error(VirtioErrc::kBadDescriptor, fmt::format("{}: device-readable after a device-writable buffer",
                                                                describe(at.ring_index, at.entry)));
    return;
  }
  if (!fits(addr, guest_len)) {
    chain.error = Error(VirtioErrc::kBadDescriptor, fmt::format("{}: address {} + len {:#x} wraps past 2^64",
                                                                describe(at.ring_index, at.entry), addr, guest_len));
    return;
  }
  const Access access = writable ? Access::kWrite : Access::kRead;
  if (auto t = mem_.translate(addr, guest_len, access, writable ? chain.writable : chain.readable); !t) {
    const bool miss = t.error().is(MemErrc::kNotMapped);
    if (miss_) {
      // After the first miss: list further misses; anything else ends the
      // walk (the first error stands either way).
      if (miss) {
        chain.add_more_fault(addr, guest_len, access);
      } else {
        chain.error = std::move(*miss_);
        miss_.reset();
      }
      return;
    }
    Error e = std::move(t).error().with_context(describe(at.ring_index, at.entry));
    chain.fault_addr = addr;
    chain.fault_len = guest_len;
    chain.fault_access = access;
    // A miss: the walk goes on to list the chain's other misses
    // (DescriptorChain::more_faults); the error is set when it ends.
    if (miss) {
      miss_ = std::move(e);
    } else {
      chain.error = std::move(e);
    }
    return;
  }
  if (writable) {
    chain.writable_len += guest_len;
    seen_writable_ = true;
  } else {
    chain.readable_len += guest_len;
  }
}

}  // namespace vdma
