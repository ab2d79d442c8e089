#include "vdma/iommu/nested.h"

#include <algorithm>
#include <array>

#include "nested_tlb.h"

namespace vdma {

namespace {

// Keeps the code of a stage-2 fault and says which stage and step it hit.
Error stage2_fault(const Error& inner, std::string context) {
  return Error(inner).with_context(std::move(context));
}

}  // namespace

NestedDomain::NestedDomain(PagingDomain& stage2, const GuestMemory& mem, Iova root)
    : stage2_(stage2), mem_(mem), root_(root), tlb_(std::make_unique<NestedTlb>()) {}

Result<std::unique_ptr<NestedDomain>> NestedDomain::create(PagingDomain& stage2, const GuestMemory& mem,
                                                           Iova stage1_root) {
  if (!stage1_root.is_aligned(pte::kPageSize)) {
    return make_error(IommuErrc::kMisaligned, "stage-1 root {} is not 4 KiB aligned", stage1_root);
  }
  std::unique_ptr<NestedDomain> d(new NestedDomain(stage2, mem, stage1_root));
  stage2.nested_.push_back(d.get());
  return d;
}

NestedDomain::~NestedDomain() {
  detach_all_devices();
  std::erase(stage2_.nested_, this);
}

Result<void> NestedDomain::set_stage1_root(Iova root) {
  if (!root.is_aligned(pte::kPageSize)) {
    return make_error(IommuErrc::kMisaligned, "stage-1 root {} is not 4 KiB aligned", root);
  }
  root_ = root;
  tlb_->clear();
  return ok();
}

Result<NestedTlbEntry> NestedDomain::walk(Iova iova) const {
  const uint64_t a = iova.value();
  if (a >= pte::kInputLimit) {
    return make_error(IommuErrc::kNotPresent, "stage 1: {} is beyond the 48-bit input range", iova);
  }
  NestedTlbEntry out;
  uint64_t table = root_.value();
  uint64_t allowed = pte::kRead | pte::kWrite;
  for (unsigned level = pte::kLevels; level >= 1; --level) {
    const unsigned idx = pte::index(a, level);
    const Iova entry_at(table + uint64_t{idx} * sizeof(uint64_t));
    out.table_pages[pte::kLevels - level] = table;
    // Stage-1 tables live in stage-2 input space: translate the pointer
    // before reading through it.
    Result<PageTranslation> t2 = stage2_.table().translate(entry_at, Access::kRead);
    if (!t2) {
      return stage2_fault(t2.error(), fmt::format("stage 2: reading the stage-1 level {} table at {} for {}", level,
                                                  Iova(table), iova));
    }
    std::array<std::byte, sizeof(uint64_t)> raw{};
    if (Result<void> r = mem_.read(t2->gpa, raw); !r) {
      return make_error(IommuErrc::kNotPresent, "stage 2: stage-1 level {} table at {} maps to {}, not guest memory ({})",
                        level, Iova(table), t2->gpa, r.error().message());
    }
    uint64_t guest_entry = 0;  // guest-controlled; read once, validated below
    for (size_t i = 0; i < raw.size(); ++i) guest_entry |= uint64_t{std::to_integer<uint8_t>(raw[i])} << (8 * i);

    if (!pte::is_present(guest_entry)) {
      return make_error(IommuErrc::kNotPresent, "stage 1: {} not present (level {} entry {} of table {})", iova, level,
                        idx, Iova(table));
    }
    if (std::optional<std::string_view> why = pte::malformed_reason(guest_entry, level)) {
      return make_error(IommuErrc::kMalformedEntry, "stage 1: level {} entry {} of table {} is {:#x}: {}", level, idx,
                        Iova(table), guest_entry, *why);
    }
    allowed &= guest_entry;
    if (!pte::is_leaf(guest_entry)) {
      table = pte::address(guest_entry);
      continue;
    }

    const uint64_t s1_size = pte::entry_span(level);
    const uint64_t s1_in_base = a & ~(s1_size - 1);
    const uint64_t s1_out_base = pte::address(guest_entry);
    const uint64_t x = s1_out_base + (a - s1_in_base);  // stage-1 output of iova
    // Probe only: the access is checked per stage by translate(), so the
    // entry can be cached whatever this access was.
    Result<PageTranslation> o2 = stage2_.table().translate(Iova(x), Access::kNone);
    if (!o2) {
      return stage2_fault(o2.error(), fmt::format("stage 2: translating stage-1 output {} of {}", Iova(x), iova));
    }
    // The largest range around iova that is linear through both leaves.
    const uint64_t s2_base = x - (o2->page_size - o2->contiguous);
    const uint64_t lo = std::max(s1_out_base, s2_base);
    const uint64_t hi = std::min(s1_out_base + s1_size, s2_base + o2->page_size);  // exclusive; no wrap below 2^53
    out.in_start = s1_in_base + (lo - s1_out_base);
    out.in_len = hi - lo;
    out.s2_in = lo;
    out.out_gpa = o2->gpa.value() - (x - lo);
    out.page_size = std::min(s1_size, o2->page_size);
    out.s1_perms = pte::perms(allowed);
    out.s2_perms = o2->perms;
    // Unused table slots (a huge stage-1 leaf ends the walk early) repeat
    // the last table so they invalidate nothing extra.
    for (unsigned l = pte::kLevels - level + 1; l < pte::kLevels; ++l) out.table_pages[l] = table;
    return out;
  }
  return make_error(IommuErrc::kMalformedEntry, "stage 1: walk of {} found no leaf", iova);
}

Result<PageTranslation> NestedDomain::translate(Iova iova, Access access) {
  const NestedTlbEntry* e = tlb_->lookup(iova.value());
  NestedTlbEntry fresh;
  if (e != nullptr) {
    ++hits_;
  } else {
    ++misses_;
    fresh = VDMA_TRY(walk(iova));
    tlb_->insert(fresh);
    e = &fresh;
  }
  if (!permits(e->s1_perms, access)) {
    return make_error(IommuErrc::kPermissionFault, "stage 1: {} access to {}, stage-1 permissions {}",
                      to_string(access), iova, to_string(e->s1_perms));
  }
  if (!permits(e->s2_perms, access)) {
    return make_error(IommuErrc::kPermissionFault, "stage 2: {} access to {} (stage-2 input {}), permissions {}",
                      to_string(access), iova, Iova(e->s2_in + (iova.value() - e->in_start)), to_string(e->s2_perms));
  }
  const uint64_t off = iova.value() - e->in_start;
  return PageTranslation{.gpa = Gpa(e->out_gpa + off), .page_size = e->page_size, .contiguous = e->in_len - off,
                         .perms = e->s1_perms & e->s2_perms};
}

void NestedDomain::invalidate_stage1(Iova iova, uint64_t len) { tlb_->invalidate_input(iova.value(), len); }
void NestedDomain::invalidate_stage2(Iova iova, uint64_t len) { tlb_->invalidate_stage2(iova.value(), len); }
void NestedDomain::invalidate_all() { tlb_->clear(); }

NestedDomain::TlbStats NestedDomain::tlb_stats() const {
  return TlbStats{.hits = hits_, .misses = misses_, .valid_entries = tlb_->valid_entries()};
}

Result<void> NestedDomain::reserve_for_device(DeviceId dev, std::span<const IovaRange> reserved) {
  return stage2_.ioas().add_reserved(ReservationOwner::device(dev), reserved);
}

void NestedDomain::release_device(DeviceId dev) { stage2_.ioas().remove_reserved(ReservationOwner::device(dev)); }

}  // namespace vdma
