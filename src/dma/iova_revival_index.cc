#include "iova_revival_index.h"

#include <algorithm>
#include <bit>

#include "vdma/base/check.h"

namespace vdma {

namespace {

constexpr size_t kMinCapacity = 16;

size_t capacity_for(size_t max_runs) {
  return std::bit_ceil(std::max(kMinCapacity, max_runs * 2));
}

}  // namespace

IovaRevivalIndex::IovaRevivalIndex(size_t max_runs)
    : slots_(std::make_unique<Slot[]>(capacity_for(max_runs))),
      mask_(capacity_for(max_runs) - 1),
      shift_(64 - static_cast<unsigned>(std::countr_zero(capacity_for(max_runs)))) {}

IovaRevivalIndex::~IovaRevivalIndex() = default;

size_t IovaRevivalIndex::home(const RevivalKey& key) const noexcept {
  // Buffers of one driver sit at page-aligned or small-stride Gpas with a
  // handful of lengths: mix all three fields, then Fibonacci-hash the top bits.
  uint64_t h = key.gpa * 0x9e3779b97f4a7c15ull;
  h ^= (key.len + static_cast<uint64_t>(key.perms)) * 0xc2b2ae3d27d4eb4full;
  h ^= h >> 29;
  return static_cast<size_t>((h * 0x9e3779b97f4a7c15ull) >> shift_);
}

IovaRevivalIndex::Slot* IovaRevivalIndex::find(const RevivalKey& key) noexcept {
  for (size_t i = home(key);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key.len == 0) return nullptr;  // at most half full: every probe ends
    if (s.key == key) return &s;
  }
}

bool IovaRevivalIndex::insert(const RevivalKey& key, uint32_t pos) {
  VDMA_CHECK(key.len != 0, "IovaRevivalIndex: a key of len 0");
  if ((size_ + 1) * 2 > mask_ + 1) return false;
  for (size_t i = home(key);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    VDMA_CHECK(s.key.len == 0 || !(s.key == key), "IovaRevivalIndex: key inserted twice");
    if (s.key.len == 0) {
      s = Slot{key, pos};
      ++size_;
      return true;
    }
  }
}

void IovaRevivalIndex::erase(Slot* s) noexcept {
  // Backward-shift deletion: move later members of the probe chain into the
  // hole whenever their home does not lie (cyclically) after the hole.
  auto hole = static_cast<size_t>(s - slots_.get());
  for (size_t i = (hole + 1) & mask_;; i = (i + 1) & mask_) {
    Slot& t = slots_[i];
    if (t.key.len == 0) break;
    const size_t h = home(t.key);
    const bool stays = hole <= i ? (hole < h && h <= i) : (hole < h || h <= i);
    if (stays) continue;
    slots_[hole] = t;
    hole = i;
  }
  slots_[hole] = Slot{};
  --size_;
}

void IovaRevivalIndex::clear() noexcept {
  if (size_ == 0) return;
  std::fill(slots_.get(), slots_.get() + mask_ + 1, Slot{});
  size_ = 0;
}

}  // namespace vdma
