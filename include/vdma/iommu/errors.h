#pragma once

#include "vdma/base/error.h"

namespace vdma {

enum class IommuErrc {
  kMisaligned = 1,     // an IOVA, length or source not aligned as required
  kReserved,           // the range touches a reserved or not-allowed IOVA range
  kAlreadyMapped,      // a fixed IOVA range overlaps an existing mapping
  kNoSpace,            // no free IOVA range fits ("don't care" allocation)
  kNotMapped,          // unmap/copy/translate of a range with no mapping
  kWouldSplit,         // unmap would cut an existing mapping in two
  kPermissionFault,    // a translation exists but forbids the access
  kNotPresent,         // page-table walk found no entry
  kConflict,           // a device attach conflicts with existing mappings
  kInvalidArgument,    // zero length, no permissions, unknown id, ...
  kLimitExceeded,      // a size limit (entries, levels) would be exceeded
  kMalformedEntry,     // an untrusted (guest-owned) page-table entry is malformed
};

template <>
struct ErrcTraits<IommuErrc> {
  static constexpr std::string_view domain = "iommu";
  static std::string_view name(IommuErrc e);
};

}  // namespace vdma
