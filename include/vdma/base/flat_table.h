// FlatTable: the open-addressing hash table behind vdma's small hot-path
// indexes (the IOMMU DMA ops' live mappings, the lazy flush queue's
// revival index): slots in one array, linear probing, backward-shift
// deletion (no tombstones, so probes stay short under churn), at most half
// full, so every probe ends at an empty slot.
//
//   struct Traits {
//     static bool empty(const Slot& s) noexcept { return s.key == 0; }   // a Slot{} is empty
//     static uint64_t hash(const Slot& s) noexcept { return s.key; }     // spread by Fibonacci hashing here
//   };
//   FlatTable<Slot, Traits> t(64);
//   auto same = [&](const Slot& s) { return s.key == k; };
//   if (!t.has_room()) t.grow();
//   VDMA_CHECK(t.insert(Slot{k, v}, same) != nullptr, "key present");
//   if (Slot* s = t.find(k, same)) t.erase(s);
//
// The table owns no policy: a caller that may not allocate checks
// has_room() and refuses; one that may, grows. Once warm nothing allocates.
// Pointers from find() and insert() are valid until the next insert(),
// erase(), grow() or clear().
//
// Thread safety: none; the owner's lock serialises every call.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace vdma {

template <class Slot, class Traits>
class FlatTable {
 public:
  // `capacity` is rounded up to a power of two (at least 2).
  explicit FlatTable(size_t capacity) { reset(std::bit_ceil(std::max<size_t>(capacity, 2))); }

  // The slot whose key hashes to `hash` and satisfies `same`, or null.
  template <class Same>
  [[nodiscard]] Slot* find(uint64_t hash, Same&& same) noexcept {
    for (size_t i = home(hash);; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (Traits::empty(s)) return nullptr;
      if (same(s)) return &s;
    }
  }

  // Whether one more slot keeps the table at most half full.
  [[nodiscard]] bool has_room() const noexcept { return (size_ + 1) * 2 <= capacity(); }

  // Stores `slot` at the first free place of its probe sequence and returns
  // it; null (nothing changed) when a slot satisfying `same` (its key) is
  // met first. Precondition: has_room(), !Traits::empty(slot).
  template <class Same>
  Slot* insert(const Slot& slot, Same&& same) noexcept {
    for (size_t i = home(Traits::hash(slot));; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (Traits::empty(s)) {
        s = slot;
        ++size_;
        return &s;
      }
      if (same(s)) return nullptr;
    }
  }

  // Precondition: `s` came from find() or insert() with no change since.
  void erase(Slot* s) noexcept {
    // Move later members of the probe chain into the hole whenever their
    // home does not lie (cyclically) after the hole.
    auto hole = static_cast<size_t>(s - slots_.get());
    for (size_t i = (hole + 1) & mask_;; i = (i + 1) & mask_) {
      Slot& t = slots_[i];
      if (Traits::empty(t)) break;
      const size_t h = home(Traits::hash(t));
      const bool stays = hole <= i ? (hole < h && h <= i) : (hole < h || h <= i);
      if (stays) continue;
      slots_[hole] = t;
      hole = i;
    }
    slots_[hole] = Slot{};
    --size_;
  }

  // Doubles the capacity and places every slot again.
  void grow() {
    const size_t old_capacity = capacity();
    std::unique_ptr<Slot[]> old = std::move(slots_);
    reset(old_capacity * 2);
    for (size_t i = 0; i < old_capacity; ++i) {
      if (Traits::empty(old[i])) continue;
      for (size_t j = home(Traits::hash(old[i]));; j = (j + 1) & mask_) {
        if (Traits::empty(slots_[j])) {
          slots_[j] = old[i];
          ++size_;
          break;
        }
      }
    }
  }

  void clear() noexcept {
    if (size_ == 0) return;
    std::fill(slots_.get(), slots_.get() + capacity(), Slot{});
    size_ = 0;
  }

  [[nodiscard]] size_t size() const noexcept { return size_; }
  [[nodiscard]] size_t capacity() const noexcept { return mask_ + 1; }

  // Calls fn(const Slot&) for every occupied slot, in no particular order.
  template <class Fn>
  void for_each(Fn&& fn) const {
    for (size_t i = 0; i <= mask_; ++i) {
      if (!Traits::empty(slots_[i])) fn(slots_[i]);
    }
  }

 private:
  // Fibonacci hashing: keys that differ only in their high or low bits
  // (size-aligned IOVA runs, page-strided Gpas) still spread.
  [[nodiscard]] size_t home(uint64_t hash) const noexcept {
    return static_cast<size_t>((hash * 0x9e3779b97f4a7c15ull) >> shift_);
  }
  void reset(size_t capacity) {
    slots_ = std::make_unique<Slot[]>(capacity);
    mask_ = capacity - 1;
    shift_ = 64 - static_cast<unsigned>(std::countr_zero(capacity));
    size_ = 0;
  }

  std::unique_ptr<Slot[]> slots_;
  size_t mask_ = 0;
  unsigned shift_ = 63;
  size_t size_ = 0;
};

}  // namespace vdma
