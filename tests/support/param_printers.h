// gtest printers for the library enums tests are parameterized over, so
// that "GetParam() = ..." (in --gtest_list_tests and failure messages) reads
// "split", "iommu-lazy", "from-device" instead of "1-byte object <01>".
// gtest finds PrintTo by argument-dependent lookup: each sits in its enum's
// namespace, and a test file includes this header before it instantiates.
#pragma once

#include <ostream>

#include "vdma/dma/dma_ops.h"
#include "vdma/dma/iova_flush_queue.h"
#include "vdma/vhost_user/backend_session.h"
#include "vdma/virtio/queue.h"

namespace vdma {

inline void PrintTo(RingFormat f, std::ostream* os) { *os << to_string(f); }
inline void PrintTo(InvalidationMode m, std::ostream* os) { *os << to_string(m); }
inline void PrintTo(DmaDirection d, std::ostream* os) { *os << to_string(d); }

namespace vhost_user {

inline void PrintTo(BackendOptions::IotlbCache c, std::ostream* os) {
  *os << (c == BackendOptions::IotlbCache::kPerRequest ? "per-request" : "persistent");
}

}  // namespace vhost_user
}  // namespace vdma
