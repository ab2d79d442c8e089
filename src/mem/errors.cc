#include "vdma/mem/errors.h"

namespace vdma {

std::string_view ErrcTraits<MemErrc>::name(MemErrc e) {
  switch (e) {
    case MemErrc::kNotMapped: return "not_mapped";
    case MemErrc::kPermissionDenied: return "permission_denied";
    case MemErrc::kOverlap: return "overlap";
    case MemErrc::kInvalidRegion: return "invalid_region";
    case MemErrc::kNoSpace: return "no_space";
    case MemErrc::kTooManyFragments: return "too_many_fragments";
  }
  return "unknown";
}

}  // namespace vdma
