#pragma once

#include "vdma/base/error.h"

namespace vdma {

enum class MemErrc {
  kNotMapped = 1,     // no region/translation covers (part of) the range
  kPermissionDenied,  // a translation exists but forbids this access
  kOverlap,           // a new region overlaps an existing one
  kInvalidRegion,     // zero size, wrap, misalignment in a region spec
  kNoSpace,           // an allocator cannot satisfy a request
  kTooManyFragments,  // a translation would exceed the caller's fragment budget
};

template <>
struct ErrcTraits<MemErrc> {
  static constexpr std::string_view domain = "mem";
  static std::string_view name(MemErrc e);
};

}  // namespace vdma
