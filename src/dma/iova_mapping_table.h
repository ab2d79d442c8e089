// IovaMappingTable: the live mappings of an IommuDmaDomain, keyed by the
// IOVA page their run starts on. unmap() needs the exact (dma, len) of a
// live mapping and its Gpa (for cache maintenance); a flat hash of small
// entries answers that in one or two cache lines, where a std::map costs a
// node allocation per map and a tree walk per unmap.
//
//   IovaMappingTable t;
//   t.insert({.iova = 0x5010, .len = 0x200, .source = 0x10010});   // key: page 0x5
//   if (IovaMappingTable::Entry* e = t.find(0x5000)) { ...; t.erase(e); }
//
// Open addressing with linear probing and backward-shift deletion (no
// tombstones, so lookups stay short under churn). The capacity is a power
// of two, doubled when the table is half full, never shrunk: once warm,
// insert and erase allocate nothing. IOVA page 0 is never handed out, so a
// zero key marks an empty slot.
//
// Thread safety: none; the domain lock serialises every call. Pointers from
// find() are valid until the next insert() or erase().
#pragma once

#include <cstdint>
#include <memory>

#include "vdma/mem/device_memory.h"

namespace vdma {

class IovaMappingTable {
 public:
  struct Entry {
    uint64_t iova = 0;    // first byte of the mapping; its page (iova >> 12) is the key, never 0
    uint64_t len = 0;     // bytes as passed to map, or the whole run of a scatter list
    uint64_t source = 0;  // the Gpa behind iova (0 for a scatter list)
    bool sg = false;      // a scatter-list run: ended only by unmap_sg
    Access perms = Access::kNone;  // what the page table grants (a single mapping's revival key)
  };

  IovaMappingTable();
  ~IovaMappingTable();
  IovaMappingTable(const IovaMappingTable&) = delete;
  IovaMappingTable& operator=(const IovaMappingTable&) = delete;

  // The entry whose run starts on the page of `iova`, or null.
  [[nodiscard]] Entry* find(uint64_t iova) noexcept;
  // Precondition (VDMA_CHECK): no entry starts on e.iova's page, and that page is not 0.
  void insert(const Entry& e);
  // Precondition: `e` came from find() with no insert()/erase() since.
  void erase(Entry* e) noexcept;

  [[nodiscard]] size_t size() const noexcept { return size_; }
  // Calls fn(const Entry&) for every entry, in no particular order.
  template <class Fn>
  void for_each(Fn&& fn) const {
    for (size_t i = 0; i <= mask_; ++i) {
      if (slots_[i].iova != 0) fn(slots_[i]);
    }
  }

 private:
  static constexpr uint64_t kPageShift = 12;
  [[nodiscard]] size_t home(uint64_t iova) const noexcept {
    // Fibonacci hashing of the page number: runs are size-aligned, so the
    // low bits of page numbers alone would collide.
    return static_cast<size_t>(((iova >> kPageShift) * 0x9e3779b97f4a7c15ull) >> shift_);
  }
  void grow();

  std::unique_ptr<Entry[]> slots_;
  size_t mask_ = 0;      // capacity - 1
  unsigned shift_ = 0;   // 64 - log2(capacity)
  size_t size_ = 0;
};

}  // namespace vdma
