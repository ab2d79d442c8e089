// IotlbTranslator: the front-end acting as vIOMMU — what it answers to a
// back-end's IOTLB MISS (vhost-user.rst "IOMMU support"). Private to the
// frontend module.
//
//   IotlbTranslator t(table, platform.iommu_domain(), nullptr);      // iommu modes
//   IotlbGrant g = VDMA_TRY(t.translate(miss.iova));
//   send(encode_iotlb_update(g.iova, g.size, g.uaddr, g.perm));
//
// Two sources of translations:
//   - an IommuDmaDomain (iommu devices): the domain's page table, walked
//     from the page of the missing IOVA while the leaves stay contiguous in
//     guest memory with the same permissions, inside one memory-table
//     entry, up to kMaxGrant bytes. The permission is the mapping's.
//   - a BusTranslation (any other device that negotiated ACCESS_PLATFORM,
//     e.g. a confidential guest's bounce-only device): IOVA = bus address,
//     granted read/write from the missing page to the end of its
//     memory-table entry. identity_grants() gives one grant per entry, sent
//     right after negotiation.
// Only memory the back-end was given can be granted: a translation to a
// gpa in no memory-table entry (a confidential guest's private memory) is
// refused.
//
// Thread safety: const; the domain serialises its own page-table walks.
#pragma once

#include <span>
#include <vector>

#include "memory_table.h"
#include "vdma/dma/bus_translation.h"
#include "vdma/dma/iommu_dma_ops.h"
#include "vdma/vhost_user/protocol.h"

namespace vdma::frontend_detail {

inline constexpr uint64_t kMaxGrant = uint64_t{4} << 20;

struct IotlbGrant {
  Iova iova;
  uint64_t size = 0;
  FrontVa uaddr;
  vhost_user::IotlbPerm perm = vhost_user::IotlbPerm::kNone;
};

class IotlbTranslator {
 public:
  // Exactly one of `domain` and `bus` is non-null; both must outlive the
  // translator, as must the regions `table` points into.
  IotlbTranslator(std::vector<TableEntry> table, IommuDmaDomain* domain, const BusTranslation* bus);

  // Errors: IommuErrc::kNotPresent (nothing mapped at iova),
  // MemErrc::kNotMapped (the translation leads outside the memory table:
  // memory the back-end must not reach), DmaErrc::kNotCovered (no bus range).
  [[nodiscard]] Result<IotlbGrant> translate(Iova iova) const;

  // Bus translations only: one read/write grant per memory-table entry the
  // bus translation covers whole; empty for a domain.
  [[nodiscard]] std::vector<IotlbGrant> identity_grants() const;

 private:
  [[nodiscard]] Result<IotlbGrant> translate_domain(Iova iova) const;
  [[nodiscard]] Result<IotlbGrant> translate_bus(Iova iova) const;

  const std::vector<TableEntry> table_;
  IommuDmaDomain* const domain_;
  const BusTranslation* const bus_;
};

}  // namespace vdma::frontend_detail
