#include "iotlb_translator.h"

#include <algorithm>

#include "vdma/base/check.h"

namespace vdma::frontend_detail {
namespace {

constexpr uint64_t kPage = 4096;

vhost_user::IotlbPerm to_perm(Access a) noexcept {
  // Access and the vhost_iotlb_msg perm share their encoding (1 read, 2 write, 3 both).
  return static_cast<vhost_user::IotlbPerm>(static_cast<uint8_t>(a));
}

}  // namespace

IotlbTranslator::IotlbTranslator(std::vector<TableEntry> table, IommuDmaDomain* domain, const BusTranslation* bus)
    : table_(std::move(table)), domain_(domain), bus_(bus) {
  VDMA_CHECK((domain_ == nullptr) != (bus_ == nullptr), "IotlbTranslator needs exactly one translation source");
}

Result<IotlbGrant> IotlbTranslator::translate(Iova iova) const {
  return domain_ != nullptr ? translate_domain(iova) : translate_bus(iova);
}

Result<IotlbGrant> IotlbTranslator::translate_domain(Iova iova) const {
  const Iova page(align_down(iova.value(), kPage));
  const PageTranslation first = VDMA_TRY(domain_->translate(page, Access::kNone));
  const TableEntry* entry = find_cpu(table_, first.gpa);
  if (entry == nullptr) {
    return make_error(MemErrc::kNotMapped, "{} translates to {}, which the back-end was not given", iova, first.gpa);
  }
  const uint64_t limit = std::min(kMaxGrant, first.gpa.distance_to(entry->cpu().last()) + 1);
  uint64_t len = std::min(first.contiguous, limit);
  // Extend over following leaves that continue the same guest run; the walk
  // is bounded by `limit`, so it ends even on a huge contiguous mapping.
  while (len < limit) {
    auto next = domain_->translate(page.unchecked_add(len), Access::kNone);
    if (!next || next->gpa != first.gpa.unchecked_add(len) || next->perms != first.perms) break;
    len = std::min(limit, len + next->contiguous);
  }
  const uint64_t offset = entry->region->base().distance_to(first.gpa);
  return IotlbGrant{page, len, user_address(*entry->region, offset), to_perm(first.perms)};
}

Result<IotlbGrant> IotlbTranslator::translate_bus(Iova iova) const {
  const DmaAddr page(align_down(iova.value(), kPage));
  const Gpa gpa = VDMA_TRY(bus_->to_cpu(page));
  const TableEntry* entry = find_cpu(table_, gpa);
  if (entry == nullptr) {
    return make_error(MemErrc::kNotMapped, "{} is {}, which the back-end was not given (private memory?)", iova, gpa);
  }
  const uint64_t to_end = gpa.distance_to(entry->cpu().last()) + 1;
  uint64_t len = std::min(to_end, kMaxGrant);
  // The run must map to one contiguous bus range; else grant the page alone.
  auto bus = bus_->to_dma(gpa, len, entry->region->attr());
  if (!bus || *bus != page) len = kPage;
  const uint64_t offset = entry->region->base().distance_to(gpa);
  return IotlbGrant{Iova(page.value()), len, user_address(*entry->region, offset), vhost_user::IotlbPerm::kReadWrite};
}

std::vector<IotlbGrant> IotlbTranslator::identity_grants() const {
  std::vector<IotlbGrant> out;
  if (bus_ == nullptr) return out;
  for (const TableEntry& e : table_) {
    auto bus = bus_->to_dma(e.cpu().start, e.cpu().len, e.region->attr());
    if (!bus) continue;  // left to misses, page by page
    out.push_back(IotlbGrant{Iova(bus->value()), e.wire.size, e.wire.user_addr, vhost_user::IotlbPerm::kReadWrite});
  }
  return out;
}

}  // namespace vdma::frontend_detail
