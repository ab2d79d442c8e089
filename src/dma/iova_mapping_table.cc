#include "iova_mapping_table.h"

#include <bit>

#include "vdma/base/check.h"

namespace vdma {

namespace {
constexpr size_t kInitialCapacity = 64;
}  // namespace

IovaMappingTable::IovaMappingTable()
    : slots_(std::make_unique<Entry[]>(kInitialCapacity)),
      mask_(kInitialCapacity - 1),
      shift_(64 - static_cast<unsigned>(std::countr_zero(kInitialCapacity))) {}

IovaMappingTable::~IovaMappingTable() = default;

IovaMappingTable::Entry* IovaMappingTable::find(uint64_t iova) noexcept {
  const uint64_t page = iova >> kPageShift;
  if (page == 0) return nullptr;
  for (size_t i = home(iova);; i = (i + 1) & mask_) {
    Entry& s = slots_[i];
    if (s.iova == 0) return nullptr;  // the table is never full: every probe ends
    if ((s.iova >> kPageShift) == page) return &s;
  }
}

void IovaMappingTable::insert(const Entry& e) {
  VDMA_CHECK((e.iova >> kPageShift) != 0, "IovaMappingTable: a mapping on IOVA page 0");
  if ((size_ + 1) * 2 > mask_ + 1) grow();
  const uint64_t page = e.iova >> kPageShift;
  for (size_t i = home(e.iova);; i = (i + 1) & mask_) {
    Entry& s = slots_[i];
    VDMA_CHECK(s.iova == 0 || (s.iova >> kPageShift) != page, "IovaMappingTable: two live mappings start on one page");
    if (s.iova == 0) {
      s = e;
      ++size_;
      return;
    }
  }
}

void IovaMappingTable::erase(Entry* e) noexcept {
  // Backward-shift deletion: move later members of the probe chain into the
  // hole whenever their home does not lie (cyclically) after the hole.
  auto hole = static_cast<size_t>(e - slots_.get());
  for (size_t i = (hole + 1) & mask_;; i = (i + 1) & mask_) {
    Entry& s = slots_[i];
    if (s.iova == 0) break;
    const size_t h = home(s.iova);
    const bool stays = hole <= i ? (hole < h && h <= i) : (hole < h || h <= i);
    if (stays) continue;
    slots_[hole] = s;
    hole = i;
  }
  slots_[hole] = Entry{};
  --size_;
}

void IovaMappingTable::grow() {
  const size_t old_capacity = mask_ + 1;
  std::unique_ptr<Entry[]> old = std::move(slots_);
  slots_ = std::make_unique<Entry[]>(old_capacity * 2);
  mask_ = old_capacity * 2 - 1;
  --shift_;
  size_ = 0;
  for (size_t i = 0; i < old_capacity; ++i) {
    if (old[i].iova != 0) insert(old[i]);
  }
}

}  // namespace vdma
