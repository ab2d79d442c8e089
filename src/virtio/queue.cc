#include "vdma/virtio/queue.h"

#include "vdma/virtio/packed_layout.h"
#include "vdma/virtio/split_layout.h"

namespace vdma {

std::string_view to_string(RingFormat f) noexcept { return f == RingFormat::kSplit ? "split" : "packed"; }

RingLayout ring_layout(RingFormat f, uint16_t size) noexcept {
  if (f == RingFormat::kSplit) {
    return {split::desc_table_size(size), split::kDescAlign, split::avail_size(size), split::kAvailAlign,
            split::used_size(size),       split::kUsedAlign};
  }
  return {packed::desc_ring_size(size), packed::kDescAlign, packed::kEventSize, packed::kEventAlign,
          packed::kEventSize,           packed::kEventAlign};
}

}  // namespace vdma
