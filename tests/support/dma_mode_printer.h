// gtest printer for DmaMode (see param_printers.h); apart because DmaMode
// lives in the frontend module, which only some test binaries link.
#pragma once

#include <ostream>

#include "vdma/frontend/dma_mode.h"

namespace vdma {

inline void PrintTo(DmaMode m, std::ostream* os) { *os << to_string(m); }

}  // namespace vdma
