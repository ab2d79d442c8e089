#include "vdma/blk/errors.h"

namespace vdma {

std::string_view ErrcTraits<BlkErrc>::name(BlkErrc e) {
  switch (e) {
    case BlkErrc::kInvalidSpec: return "invalid_spec";
    case BlkErrc::kInvalidOption: return "invalid_option";
    case BlkErrc::kIo: return "io";
    case BlkErrc::kUnsupported: return "unsupported";
    case BlkErrc::kBadChain: return "bad_chain";
    case BlkErrc::kInUse: return "in_use";
  }
  return "unknown";
}

}  // namespace vdma
