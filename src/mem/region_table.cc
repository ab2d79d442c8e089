#include "vdma/mem/region_table.h"

#include <algorithm>

namespace vdma {

RegionTable RegionTable::bypass(const GuestMemory& mem) {
  RegionTable t;
  for (const GuestRegion& r : mem.regions()) {
    t.entries_.push_back({DmaAddr(r.base().value()), r.size(), r.host().data(), Access::kReadWrite});
  }
  return t;
}

RegionTable RegionTable::bypass(const GuestMemory& mem, MemAttr only) {
  RegionTable t;
  for (const GuestRegion& r : mem.regions()) {
    if (r.attr() != only) continue;
    t.entries_.push_back({DmaAddr(r.base().value()), r.size(), r.host().data(), Access::kReadWrite});
  }
  return t;
}

Result<RegionTable> RegionTable::with_offsets(const GuestMemory& mem, std::span<const OffsetRange> ranges) {
  RegionTable t;
  for (const OffsetRange& o : ranges) {
    if (o.size == 0 || !fits(o.cpu, o.size) || !fits(o.dma, o.size)) {
      return make_error(MemErrc::kInvalidRegion, "offset range cpu {} dma {} size {:#x} is empty or wraps", o.cpu, o.dma,
                        o.size);
    }
    bool covered = false;
    // Intersect the window with each guest region.
    for (const GuestRegion& r : mem.regions()) {
      uint64_t lo = std::max(o.cpu.value(), r.base().value());
      uint64_t hi_last = std::min(o.cpu.value() + (o.size - 1), r.base().value() + (r.size() - 1));
      if (lo > hi_last) continue;
      covered = true;
      uint64_t delta = lo - o.cpu.value();
      VDMA_TRY(t.add(DmaAddr(o.dma.value() + delta),
                     r.host().subspan(lo - r.base().value(), hi_last - lo + 1), Access::kReadWrite));
    }
    if (!covered) {
      return make_error(MemErrc::kNotMapped, "offset range cpu {} size {:#x} covers no guest memory", o.cpu, o.size);
    }
  }
  return t;
}

Result<void> RegionTable::add(DmaAddr dma, std::span<std::byte> host, Access perms) {
  if (host.empty() || !fits(dma, host.size())) {
    return make_error(MemErrc::kInvalidRegion, "entry {} + len {:#x} is empty or wraps", dma, host.size());
  }
  AddrRange<DmaAddr> nr{dma, host.size()};
  auto it = std::lower_bound(entries_.begin(), entries_.end(), dma,
                             [](const Entry& e, DmaAddr a) { return e.dma < a; });
  if (it != entries_.end() && AddrRange<DmaAddr>{it->dma, it->len}.overlaps(nr)) {
    return make_error(MemErrc::kOverlap, "entry {} + len {:#x} overlaps {} + len {:#x}", dma, host.size(), it->dma, it->len);
  }
  if (it != entries_.begin() && AddrRange<DmaAddr>{std::prev(it)->dma, std::prev(it)->len}.overlaps(nr)) {
    return make_error(MemErrc::kOverlap, "entry {} + len {:#x} overlaps {} + len {:#x}", dma, host.size(),
                      std::prev(it)->dma, std::prev(it)->len);
  }
  entries_.insert(it, Entry{dma, host.size(), host.data(), perms});
  return ok();
}

Result<void> RegionTable::translate(DmaAddr addr, uint64_t len, Access access, std::vector<Fragment>& out) const {
  if (!fits(addr, len)) {
    return make_error(BaseErrc::kOverflow, "{} + len {:#x} wraps past 2^64", addr, len);
  }
  const size_t first_out = out.size();
  uint64_t done = 0;
  // One lookup, then walk forward: adjacent entries continue the range.
  auto it = std::upper_bound(entries_.begin(), entries_.end(), addr,
                             [](DmaAddr a, const Entry& e) { return a < e.dma; });
  if (it == entries_.begin()) {
    return make_error(MemErrc::kNotMapped, "{} + len {:#x}: {} is not mapped", addr, len, addr);
  }
  --it;
  do {
    DmaAddr cur = addr.unchecked_add(done);
    if (it == entries_.end() || !AddrRange<DmaAddr>{it->dma, it->len}.contains(cur)) {
      out.resize(first_out);
      return make_error(MemErrc::kNotMapped, "{} + len {:#x}: {} is not mapped", addr, len, cur);
    }
    if (!permits(it->perms, access)) {
      out.resize(first_out);
      return make_error(MemErrc::kPermissionDenied, "{} + len {:#x}: {} allows {}, not {}", addr, len, cur,
                        to_string(it->perms), to_string(access));
    }
    uint64_t off = it->dma.distance_to(cur);
    uint64_t n = std::min(len - done, it->len - off);
    if (n > 0) out.push_back(Fragment{it->host + off, n});
    done += n;
    ++it;
  } while (done < len);
  return ok();
}

}  // namespace vdma
