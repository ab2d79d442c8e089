// copy_readable_to_writable(): what a test device does with a chain — the
// readable bytes, in order, into the writable buffers, as far as both reach.
// Returns the bytes written (the used length to report).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "vdma/virtio/device_queue.h"

namespace vdma::testing {

inline uint32_t copy_readable_to_writable(const DescriptorChain& chain) {
  size_t wi = 0, woff = 0;
  uint64_t written = 0;
  for (const Fragment& r : chain.readable) {
    size_t roff = 0;
    while (roff < r.len && wi < chain.writable.size()) {
      const Fragment& w = chain.writable[wi];
      const size_t n = std::min<size_t>(r.len - roff, w.len - woff);
      std::memcpy(w.host + woff, r.host + roff, n);
      roff += n;
      woff += n;
      written += n;
      if (woff == w.len) {
        ++wi;
        woff = 0;
      }
    }
  }
  return static_cast<uint32_t>(written);
}

}  // namespace vdma::testing
