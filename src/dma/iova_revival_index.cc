#include "iova_revival_index.h"

#include <algorithm>

#include "vdma/base/check.h"

namespace vdma {

IovaRevivalIndex::IovaRevivalIndex(size_t max_runs) : table_(std::max<size_t>(16, max_runs * 2)) {}

bool IovaRevivalIndex::insert(const RevivalKey& key, uint32_t pos) {
  VDMA_CHECK(key.len != 0, "IovaRevivalIndex: a key of len 0");
  if (!table_.has_room()) return false;
  const Slot* placed = table_.insert(Slot{key, pos}, [&key](const Slot& s) { return s.key == key; });
  VDMA_CHECK(placed != nullptr, "IovaRevivalIndex: key inserted twice");
  return true;
}

}  // namespace vdma
