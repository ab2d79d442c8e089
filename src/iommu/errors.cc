#include "vdma/iommu/errors.h"

namespace vdma {

std::string_view ErrcTraits<IommuErrc>::name(IommuErrc e) {
  switch (e) {
    case IommuErrc::kMisaligned: return "misaligned";
    case IommuErrc::kReserved: return "reserved";
    case IommuErrc::kAlreadyMapped: return "already_mapped";
    case IommuErrc::kNoSpace: return "no_space";
    case IommuErrc::kNotMapped: return "not_mapped";
    case IommuErrc::kWouldSplit: return "would_split";
    case IommuErrc::kPermissionFault: return "permission_fault";
    case IommuErrc::kNotPresent: return "not_present";
    case IommuErrc::kConflict: return "conflict";
    case IommuErrc::kInvalidArgument: return "invalid_argument";
    case IommuErrc::kLimitExceeded: return "limit_exceeded";
    case IommuErrc::kMalformedEntry: return "malformed_entry";
  }
  return "unknown";
}

}  // namespace vdma
