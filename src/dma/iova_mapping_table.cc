#include "iova_mapping_table.h"

#include "vdma/base/check.h"

namespace vdma {

void IovaMappingTable::insert(const Entry& e) {
  const uint64_t page = e.iova >> kPageShift;
  VDMA_CHECK(page != 0, "IovaMappingTable: a mapping on IOVA page 0");
  if (!table_.has_room()) table_.grow();
  const Entry* placed = table_.insert(e, [page](const Entry& s) { return (s.iova >> kPageShift) == page; });
  VDMA_CHECK(placed != nullptr, "IovaMappingTable: two live mappings start on one page");
}

}  // namespace vdma
