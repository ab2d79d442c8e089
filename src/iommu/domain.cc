#include "vdma/iommu/domain.h"

#include <algorithm>

#include "vdma/iommu/nested.h"

namespace vdma {

Result<void> Domain::attach_device(DeviceId dev, std::span<const IovaRange> reserved) {
  if (has_device(dev)) {
    return make_error(IommuErrc::kInvalidArgument, "device {} is already attached to this domain", dev.value);
  }
  VDMA_TRY(reserve_for_device(dev, reserved));
  devices_.push_back(dev);
  return ok();
}

Result<void> Domain::detach_device(DeviceId dev) {
  auto it = std::find(devices_.begin(), devices_.end(), dev);
  if (it == devices_.end()) {
    return make_error(IommuErrc::kInvalidArgument, "device {} is not attached to this domain", dev.value);
  }
  release_device(dev);
  devices_.erase(it);
  return ok();
}

bool Domain::has_device(DeviceId dev) const noexcept {
  return std::find(devices_.begin(), devices_.end(), dev) != devices_.end();
}

void Domain::detach_all_devices() {
  for (DeviceId dev : devices_) release_device(dev);
  devices_.clear();
}

// --- PagingDomain ---

Result<std::unique_ptr<PagingDomain>> PagingDomain::create(IoAddressSpace& ioas) {
  std::unique_ptr<PagingDomain> d(new PagingDomain(ioas));
  // The aperture: a 48-bit table cannot hold IOVAs at or above 2^48.
  const IovaRange beyond{Iova(pte::kInputLimit), Iova(UINT64_MAX)};
  IoasMirror& mirror = *d;
  if (auto r = ioas.attach_mirror(mirror, {&beyond, 1}); !r) return std::move(r).error();
  d->attached_ = true;
  return d;
}

PagingDomain::~PagingDomain() {
  VDMA_CHECK(nested_.empty(), "PagingDomain destroyed while nested domains use it as stage 2");
  detach_all_devices();
  if (attached_) ioas_.detach_mirror(*this);
}

void PagingDomain::mirror_map(const IoasMapping& m) {
  const IovaRange pages = m.pages();
  const uint64_t bytes = pages.last.value() - pages.start.value() + 1;
  const Result<void> r = table_.map(pages.start, m.source_page(), bytes, m.perms);
  // The IOAS keeps mappings inside the aperture, page-disjoint and below the
  // 52-bit output limit, so the table cannot refuse.
  VDMA_CHECK(r.has_value(), "page table refused a mapping the IOAS validated");
}

void PagingDomain::mirror_unmap(const IoasMapping& m) {
  const IovaRange pages = m.pages();
  const uint64_t bytes = pages.last.value() - pages.start.value() + 1;
  const Result<uint64_t> r = table_.unmap(pages.start, bytes);
  VDMA_CHECK(r.has_value() && *r == bytes, "page table out of sync with its IOAS");
  // Stage 2 changed under the nested domains: drop what they derived from it.
  for (NestedDomain* n : nested_) n->invalidate_stage2(pages.start, bytes);
}

Result<uint64_t> PagingDomain::unmap_pages(Iova iova, uint64_t len) {
  const uint64_t bytes = VDMA_TRY(table_.unmap(iova, len));
  if (bytes != 0) {
    for (NestedDomain* n : nested_) n->invalidate_stage2(iova, len);
  }
  return bytes;
}

Result<void> PagingDomain::reserve_for_device(DeviceId dev, std::span<const IovaRange> reserved) {
  return ioas_.add_reserved(ReservationOwner::device(dev), reserved);
}

void PagingDomain::release_device(DeviceId dev) { ioas_.remove_reserved(ReservationOwner::device(dev)); }

// --- IdentityDomain ---

IdentityDomain::IdentityDomain(IovaRange window) : window_(window) {
  VDMA_CHECK(window.start <= window.last && window.last.value() < UINT64_MAX, "identity window must be a proper range");
}

IdentityDomain::~IdentityDomain() { detach_all_devices(); }

Result<PageTranslation> IdentityDomain::translate(Iova iova, Access access) {
  if (!window_.contains(iova)) {
    return make_error(IommuErrc::kNotPresent, "{} is outside the identity window {}", iova, window_);
  }
  uint64_t end = window_.last.value();
  for (const Reserved& r : reserved_) {
    if (r.range.contains(iova)) {
      return make_error(IommuErrc::kReserved, "{} is in device {}'s reserved region {}", iova, r.dev.value, r.range);
    }
    if (r.range.start > iova) end = std::min(end, r.range.start.value() - 1);
  }
  (void)access;  // read and write are both granted
  return PageTranslation{.gpa = Gpa(iova.value()), .page_size = kIovaGranule, .contiguous = end - iova.value() + 1,
                         .perms = Access::kReadWrite};
}

Result<void> IdentityDomain::reserve_for_device(DeviceId dev, std::span<const IovaRange> reserved) {
  for (const IovaRange& r : reserved) {
    if (r.start > r.last) {
      return make_error(IommuErrc::kInvalidArgument, "device {} reserves {}: start above last", dev.value, r);
    }
  }
  for (const IovaRange& r : reserved) reserved_.push_back(Reserved{dev, r});
  return ok();
}

void IdentityDomain::release_device(DeviceId dev) {
  std::erase_if(reserved_, [&](const Reserved& r) { return r.dev == dev; });
}

}  // namespace vdma
