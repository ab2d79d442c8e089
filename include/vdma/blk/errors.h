// Errors of the blk module.
#pragma once

#include "vdma/base/error.h"

namespace vdma {

enum class BlkErrc {
  kInvalidSpec = 1,  // a --blk-file spec or size that cannot be parsed
  kInvalidOption,    // a device option outside its range (names it)
  kIo,               // the storage failed an operation (names it and errno)
  kUnsupported,      // the storage cannot do this operation
  kBadChain,         // a chain that cannot carry a request (no status byte): a driver error
  kInUse,            // another process holds a conflicting lock on the image
};

template <>
struct ErrcTraits<BlkErrc> {
  static constexpr std::string_view domain = "blk";
  static std::string_view name(BlkErrc e);
};

}  // namespace vdma
