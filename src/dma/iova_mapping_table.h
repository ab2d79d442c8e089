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
// A FlatTable (base/flat_table.h: open addressing, backward-shift
// deletion) doubled when half full, never shrunk: once warm, insert and
// erase allocate nothing. IOVA page 0 is never handed out, so a zero key
// marks an empty slot.
//
// Thread safety: none; the domain lock serialises every call. Pointers from
// find() are valid until the next insert() or erase().
#pragma once

#include <cstdint>
#include <utility>

#include "vdma/base/flat_table.h"
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

  IovaMappingTable() : table_(64) {}
  IovaMappingTable(const IovaMappingTable&) = delete;
  IovaMappingTable& operator=(const IovaMappingTable&) = delete;

  // The entry whose run starts on the page of `iova`, or null.
  [[nodiscard]] Entry* find(uint64_t iova) noexcept {
    const uint64_t page = iova >> kPageShift;
    if (page == 0) return nullptr;
    return table_.find(page, [page](const Entry& e) { return (e.iova >> kPageShift) == page; });
  }
  // Precondition (VDMA_CHECK): no entry starts on e.iova's page, and that page is not 0.
  void insert(const Entry& e);
  // Precondition: `e` came from find() with no insert()/erase() since.
  void erase(Entry* e) noexcept { table_.erase(e); }

  [[nodiscard]] size_t size() const noexcept { return table_.size(); }
  // Calls fn(const Entry&) for every entry, in no particular order.
  template <class Fn>
  void for_each(Fn&& fn) const {
    table_.for_each(std::forward<Fn>(fn));
  }

 private:
  static constexpr uint64_t kPageShift = 12;
  struct Traits {
    static bool empty(const Entry& e) noexcept { return e.iova == 0; }
    // The page number: runs are size-aligned, so FlatTable's Fibonacci
    // hashing spreads them.
    static uint64_t hash(const Entry& e) noexcept { return e.iova >> kPageShift; }
  };
  FlatTable<Entry, Traits> table_;
};

}  // namespace vdma
