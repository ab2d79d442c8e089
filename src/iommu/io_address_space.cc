#include "vdma/iommu/io_address_space.h"

#include <algorithm>
#include <bit>

#include "iova_free_tree.h"

namespace vdma {

namespace {

constexpr uint64_t kLastIova = UINT64_MAX;

// The "don't care" alignment: min(roundup_pow2(length), lowest set bit of
// source), clamped to [4 KiB, 1 GiB]. Keeping the source's alignment in the
// IOVA is what lets a huge source land on huge leaves (iommufd does the same
// with the user VA).
uint64_t auto_alignment(Gpa source, uint64_t length) {
  uint64_t a = length >= kMaxAutoIovaAlignment ? kMaxAutoIovaAlignment : std::bit_ceil(length);
  const uint64_t s = source.value();
  if (s != 0) a = std::min(a, s & (~s + 1));
  return std::clamp(a, kIovaGranule, kMaxAutoIovaAlignment);
}

// Sorts and merges overlapping and adjacent ranges.
std::vector<IovaRange> normalise(std::vector<IovaRange> v) {
  std::sort(v.begin(), v.end(), [](const IovaRange& a, const IovaRange& b) { return a.start < b.start; });
  std::vector<IovaRange> out;
  for (const IovaRange& r : v) {
    if (!out.empty() && (out.back().last == Iova(kLastIova) || r.start.value() <= out.back().last.value() + 1)) {
      out.back().last = std::max(out.back().last, r.last);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

// a minus b, both normalised; the result is normalised.
std::vector<IovaRange> subtract(const std::vector<IovaRange>& a, const std::vector<IovaRange>& b) {
  std::vector<IovaRange> out;
  size_t j = 0;
  for (const IovaRange& r : a) {
    while (j < b.size() && b[j].last < r.start) ++j;
    uint64_t cur = r.start.value();
    bool covered_to_end = false;
    for (size_t k = j; k < b.size() && b[k].start <= r.last; ++k) {
      if (b[k].start.value() > cur) out.push_back({Iova(cur), Iova(b[k].start.value() - 1)});
      if (b[k].last >= r.last) {
        covered_to_end = true;
        break;
      }
      cur = std::max(cur, b[k].last.value() + 1);
    }
    if (!covered_to_end) out.push_back({Iova(cur), r.last});
  }
  return out;
}

// The page span of a run of `length` bytes starting `offset` into its first page.
uint64_t page_span_m1(uint64_t offset, uint64_t length) {
  return align_down(offset + (length - 1), kIovaGranule) + (kIovaGranule - 1);
}

Error wraps(std::string_view what, Iova iova, uint64_t length) {
  return make_error(BaseErrc::kOverflow, "{} {} + len {:#x} wraps past 2^64", what, iova, length);
}

}  // namespace

std::unique_ptr<IoAddressSpace> IoAddressSpace::create() { return std::make_unique<IoAddressSpace>(); }

IoAddressSpace::IoAddressSpace() : free_(std::make_unique<IovaFreeTree>()) { rebuild_usable(); }

IoAddressSpace::~IoAddressSpace() {
  VDMA_CHECK(mirrors_.empty(), "IoAddressSpace destroyed while domains are attached");
}

IoasMapping IoAddressSpace::mapping_of(AreaMap::const_iterator it) noexcept {
  return IoasMapping{.iova = Iova(it->first), .length = it->second.length, .source = it->second.source,
                     .perms = it->second.perms};
}

IovaRanges IoAddressSpace::iova_ranges() const { return IovaRanges{.ranges = usable_, .alignment = kIovaGranule}; }

void IoAddressSpace::rebuild_usable() {
  std::vector<IovaRange> base = allowed_.empty() ? std::vector<IovaRange>{{Iova(0), Iova(kLastIova)}} : normalise(allowed_);
  std::vector<IovaRange> holes;
  holes.reserve(reserved_.size());
  for (const Reservation& r : reserved_) holes.push_back(r.range);
  usable_ = subtract(base, normalise(std::move(holes)));

  std::vector<IovaRange> used;
  used.reserve(areas_.size());
  for (auto it = areas_.begin(); it != areas_.end(); ++it) used.push_back(mapping_of(it).pages());
  const std::vector<IovaRange> free_ranges = subtract(usable_, normalise(std::move(used)));
  std::vector<IovaFreeTree::Range> tree_ranges;
  tree_ranges.reserve(free_ranges.size());
  for (const IovaRange& r : free_ranges) tree_ranges.push_back({r.start.value(), r.last.value()});
  free_->assign(tree_ranges);
}

IoAddressSpace::AreaMap::const_iterator IoAddressSpace::first_intersecting(uint64_t first, uint64_t last) const {
  auto it = areas_.lower_bound(first);
  if (it != areas_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + (prev->second.length - 1) >= first) return prev;
  }
  if (it != areas_.end() && it->first <= last) return it;
  return areas_.end();
}

IoAddressSpace::AreaMap::const_iterator IoAddressSpace::first_in_pages(const IovaRange& pages) const {
  auto it = areas_.lower_bound(pages.start.value());
  if (it != areas_.begin()) {
    auto prev = std::prev(it);
    if (mapping_of(prev).pages().last >= pages.start) return prev;
  }
  if (it != areas_.end() && it->first <= pages.last.value()) return it;
  return areas_.end();
}

std::optional<IoasMapping> IoAddressSpace::find(Iova iova) const {
  const uint64_t page_last = align_down(iova.value(), kIovaGranule) + (kIovaGranule - 1);
  auto it = areas_.upper_bound(page_last);
  if (it == areas_.begin()) return std::nullopt;
  const IoasMapping m = mapping_of(std::prev(it));
  if (!m.pages().contains(iova)) return std::nullopt;
  return m;
}

std::vector<IoasMapping> IoAddressSpace::mappings() const {
  std::vector<IoasMapping> out;
  out.reserve(areas_.size());
  for (auto it = areas_.begin(); it != areas_.end(); ++it) out.push_back(mapping_of(it));
  return out;
}

Result<void> IoAddressSpace::allow_iovas(std::span<const IovaRange> ranges) {
  std::vector<IovaRange> v(ranges.begin(), ranges.end());
  for (const IovaRange& r : v) {
    if (r.start > r.last) {
      return make_error(IommuErrc::kInvalidArgument, "allowed range {}: start above last", r);
    }
    if (!r.start.is_aligned(kIovaGranule) || (r.last.value() != kLastIova && !Iova(r.last.value() + 1).is_aligned(kIovaGranule))) {
      return make_error(IommuErrc::kMisaligned, "allowed range {}: start and last + 1 must be 4 KiB aligned", r);
    }
  }
  std::sort(v.begin(), v.end(), [](const IovaRange& a, const IovaRange& b) { return a.start < b.start; });
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i].start <= v[i - 1].last) {
      return make_error(IommuErrc::kInvalidArgument, "allowed ranges {} and {} overlap", v[i - 1], v[i]);
    }
  }
  if (!v.empty()) {
    const std::vector<IovaRange> merged = normalise(v);
    for (auto it = areas_.begin(); it != areas_.end(); ++it) {
      const IovaRange pages = mapping_of(it).pages();
      auto r = std::upper_bound(merged.begin(), merged.end(), pages.start,
                                [](Iova a, const IovaRange& x) { return a < x.start; });
      if (r == merged.begin() || !std::prev(r)->contains(pages)) {
        return make_error(IommuErrc::kConflict, "{} would lie outside the new allowed ranges", mapping_of(it));
      }
    }
  }
  allowed_ = std::move(v);
  rebuild_usable();
  return ok();
}

Result<void> IoAddressSpace::add_reserved(ReservationOwner owner, std::span<const IovaRange> ranges) {
  std::vector<Reservation> add;
  add.reserve(ranges.size());
  for (const IovaRange& r : ranges) {
    if (r.start > r.last) {
      return make_error(IommuErrc::kInvalidArgument, "{} reserves {}: start above last", owner, r);
    }
    const IovaRange rounded{Iova(align_down(r.start.value(), kIovaGranule)),
                            Iova(align_down(r.last.value(), kIovaGranule) + (kIovaGranule - 1))};
    if (auto it = first_in_pages(rounded); it != areas_.end()) {
      return make_error(IommuErrc::kConflict, "{} reserves {}, which overlaps {}", owner, r, mapping_of(it));
    }
    add.push_back(Reservation{owner, rounded});
  }
  if (add.empty()) return ok();
  reserved_.insert(reserved_.end(), add.begin(), add.end());
  rebuild_usable();
  return ok();
}

void IoAddressSpace::remove_reserved(ReservationOwner owner) {
  if (std::erase_if(reserved_, [&](const Reservation& r) { return r.owner == owner; }) > 0) rebuild_usable();
}

Result<void> IoAddressSpace::check_fixed(Iova iova, uint64_t length, uint64_t offset) const {
  if (!fits(iova, length)) return wraps("fixed iova", iova, length);
  if (iova.value() % kIovaGranule != offset) {
    return make_error(IommuErrc::kMisaligned, "fixed {}: in-page offset {:#x} differs from the source's {:#x}", iova,
                      iova.value() % kIovaGranule, offset);
  }
  const IovaRange pages{Iova(align_down(iova.value(), kIovaGranule)),
                        Iova(align_down(iova.value() + (length - 1), kIovaGranule) + (kIovaGranule - 1))};
  if (auto f = free_->find(pages.start.value()); f && f->last >= pages.last.value()) return ok();

  auto u = std::upper_bound(usable_.begin(), usable_.end(), pages.start,
                            [](Iova a, const IovaRange& x) { return a < x.start; });
  if (u == usable_.begin() || !std::prev(u)->contains(pages.start)) {
    return make_error(IommuErrc::kReserved, "fixed {} + len {:#x}: {} is reserved or not allowed", iova, length,
                      pages.start);
  }
  if (!std::prev(u)->contains(pages)) {
    return make_error(IommuErrc::kReserved, "fixed {} + len {:#x}: {} is reserved or not allowed", iova, length,
                      Iova(std::prev(u)->last.value() + 1));
  }
  auto it = first_in_pages(pages);
  VDMA_CHECK(it != areas_.end(), "usable pages neither free nor mapped");
  return make_error(IommuErrc::kAlreadyMapped, "fixed {} + len {:#x} overlaps {}", iova, length, mapping_of(it));
}

Result<Iova> IoAddressSpace::place(Gpa align_source, uint64_t in_page_offset, uint64_t length,
                                   std::optional<Iova> fixed) {
  if (fixed) {
    VDMA_TRY(check_fixed(*fixed, length, in_page_offset));
    return *fixed;
  }
  const uint64_t align = auto_alignment(align_source, length);
  const uint64_t span_m1 = page_span_m1(in_page_offset, length);
  // Page 0 is never handed out: IOVA 0 looks like a null DMA address.
  std::optional<uint64_t> page = free_->first_fit(span_m1, align, kIovaGranule);
  if (!page) {
    return make_error(IommuErrc::kNoSpace, "no free IOVA run of {:#x} bytes aligned to {:#x} (length {:#x})",
                      span_m1 + 1, align, length);
  }
  return Iova(*page + in_page_offset);
}

void IoAddressSpace::insert_area(const IoasMapping& m) {
  const IovaRange pages = m.pages();
  free_->take(pages.start.value(), pages.last.value() - pages.start.value());
  areas_.emplace(m.iova.value(), Area{.length = m.length, .source = m.source, .perms = m.perms});
  for (const MirrorEntry& e : mirrors_) e.mirror->mirror_map(m);
}

IoAddressSpace::AreaMap::iterator IoAddressSpace::erase_area(AreaMap::iterator it) {
  const IoasMapping m = mapping_of(it);
  const IovaRange pages = m.pages();
  it = areas_.erase(it);
  free_->give(pages.start.value(), pages.last.value() - pages.start.value());
  for (const MirrorEntry& e : mirrors_) e.mirror->mirror_unmap(m);
  return it;
}

Result<Iova> IoAddressSpace::map(Gpa source, uint64_t length, Access perms, std::optional<Iova> fixed) {
  if (perms == Access::kNone || length == 0) {
    return make_error(IommuErrc::kInvalidArgument, "map {} len {:#x} perms {}: empty length or no permissions", source,
                      length, to_string(perms));
  }
  if (!fits(source, length)) {
    return make_error(BaseErrc::kOverflow, "map source {} + len {:#x} wraps past 2^64", source, length);
  }
  if (source.value() + (length - 1) >= kSourceLimit) {
    return make_error(IommuErrc::kInvalidArgument, "map source {} + len {:#x} ends beyond the 52-bit output range",
                      source, length);
  }
  const Iova iova = VDMA_TRY(place(source, source.value() % kIovaGranule, length, fixed));
  insert_area(IoasMapping{.iova = iova, .length = length, .source = source, .perms = perms});
  return iova;
}

Result<uint64_t> IoAddressSpace::unmap(Iova iova, uint64_t length) {
  if (length == 0) return make_error(IommuErrc::kInvalidArgument, "unmap {} with length 0", iova);
  if (!fits(iova, length)) return wraps("unmap", iova, length);
  const uint64_t last = iova.value() + (length - 1);
  auto first = first_intersecting(iova.value(), last);
  if (first == areas_.end()) {
    return make_error(IommuErrc::kNotMapped, "unmap {} + len {:#x}: nothing mapped there", iova, length);
  }
  for (auto it = first; it != areas_.end() && it->first <= last; ++it) {
    const IoasMapping m = mapping_of(it);
    if (m.iova < iova || m.last().value() > last) {
      return make_error(IommuErrc::kWouldSplit, "unmap {} + len {:#x} would split {}", iova, length, m);
    }
  }
  uint64_t bytes = 0;
  auto it = areas_.erase(first, first);  // a mutable iterator to the same element
  while (it != areas_.end() && it->first <= last) {
    bytes += it->second.length;
    it = erase_area(it);
  }
  return bytes;
}

uint64_t IoAddressSpace::unmap_all() {
  uint64_t bytes = 0;
  for (auto it = areas_.begin(); it != areas_.end();) {
    bytes += it->second.length;
    it = erase_area(it);
  }
  return bytes;
}

Result<Iova> IoAddressSpace::copy(const IoAddressSpace& from, Iova src_iova, uint64_t length, std::optional<Iova> dst) {
  if (length == 0) return make_error(IommuErrc::kInvalidArgument, "copy {} with length 0", src_iova);
  if (!fits(src_iova, length)) return wraps("copy source", src_iova, length);
  const uint64_t last = src_iova.value() + (length - 1);
  std::vector<IoasMapping> parts;
  uint64_t cursor = src_iova.value();
  bool complete = false;
  for (auto it = from.first_intersecting(cursor, last); it != from.areas_.end() && it->first <= last; ++it) {
    const IoasMapping m = mapping_of(it);
    if (m.iova.value() < cursor || m.last().value() > last) {
      return make_error(IommuErrc::kWouldSplit, "copy {} + len {:#x} would split {}", src_iova, length, m);
    }
    if (m.iova.value() > cursor) {
      return make_error(IommuErrc::kNotMapped, "copy {} + len {:#x}: {} is not mapped", src_iova, length, Iova(cursor));
    }
    parts.push_back(m);
    if (m.last().value() == last) {
      complete = true;
      break;
    }
    cursor = m.last().value() + 1;
  }
  if (!complete) {
    return make_error(IommuErrc::kNotMapped, "copy {} + len {:#x}: {} is not mapped", src_iova, length, Iova(cursor));
  }
  const Iova dst_iova = VDMA_TRY(place(parts.front().source, src_iova.value() % kIovaGranule, length, dst));
  for (const IoasMapping& p : parts) {
    insert_area(IoasMapping{.iova = dst_iova.unchecked_add(p.iova.value() - src_iova.value()), .length = p.length,
                            .source = p.source, .perms = p.perms});
  }
  return dst_iova;
}

Result<ReservationOwner> IoAddressSpace::attach_mirror(IoasMirror& mirror, std::span<const IovaRange> reserve) {
  for (const MirrorEntry& e : mirrors_) {
    if (e.mirror == &mirror) return make_error(IommuErrc::kInvalidArgument, "domain already attached to this IOAS");
  }
  const ReservationOwner owner = ReservationOwner::domain(next_domain_id_);
  VDMA_TRY(add_reserved(owner, reserve));
  ++next_domain_id_;
  mirrors_.push_back(MirrorEntry{&mirror, owner});
  for (auto it = areas_.begin(); it != areas_.end(); ++it) mirror.mirror_map(mapping_of(it));
  return owner;
}

void IoAddressSpace::detach_mirror(IoasMirror& mirror) {
  auto it = std::find_if(mirrors_.begin(), mirrors_.end(), [&](const MirrorEntry& e) { return e.mirror == &mirror; });
  if (it == mirrors_.end()) return;
  const ReservationOwner owner = it->owner;
  mirrors_.erase(it);
  remove_reserved(owner);
}

}  // namespace vdma
