// IovaRevivalIndex: the lazy flush queue's index of queued runs by what
// they mapped, so map() of the same buffer can find its run in O(1)
// (iova_flush_queue.h, "Revival").
//
//   IovaRevivalIndex idx(/*max_runs=*/256);
//   idx.insert({.gpa = 0x10010, .len = 0x200, .perms = Access::kRead}, /*pos=*/7);
//   if (IovaRevivalIndex::Slot* s = idx.find(key)) { use(s->pos); idx.erase(s); }
//   idx.clear();                                   // the queue was taken into a batch
//
// A FlatTable (base/flat_table.h), as IovaMappingTable. The capacity is
// fixed at construction (a power of two of at least twice max_runs) and the
// table refuses an insert beyond half of it, so probes stay short and
// nothing is allocated after construction; the flush queue simply leaves
// such a run unindexed (it is then flushed like any other). A zero len
// marks an empty slot (map() never has len 0).
//
// Thread safety: none; the flush queue's lock serialises every call.
// Pointers from find() are valid until the next insert(), erase() or clear().
#pragma once

#include <cstddef>
#include <cstdint>

#include "vdma/base/flat_table.h"
#include "vdma/dma/iova_flush_queue.h"

namespace vdma {

class IovaRevivalIndex {
 public:
  struct Slot {
    RevivalKey key;    // key.len == 0: empty
    uint32_t pos = 0;  // the run's position in the flush queue
  };

  explicit IovaRevivalIndex(size_t max_runs);
  IovaRevivalIndex(const IovaRevivalIndex&) = delete;
  IovaRevivalIndex& operator=(const IovaRevivalIndex&) = delete;

  // The slot of `key`, or null.
  [[nodiscard]] Slot* find(const RevivalKey& key) noexcept {
    return table_.find(Traits::mix(key), [&key](const Slot& s) { return s.key == key; });
  }
  // Adds key -> pos; false (nothing changed) when the table is half full.
  // Precondition (VDMA_CHECK): key.len != 0 and `key` is not present.
  [[nodiscard]] bool insert(const RevivalKey& key, uint32_t pos);
  // Precondition: `s` came from find() with no insert()/erase()/clear() since.
  void erase(Slot* s) noexcept { table_.erase(s); }
  void clear() noexcept { table_.clear(); }

  [[nodiscard]] size_t size() const noexcept { return table_.size(); }
  [[nodiscard]] size_t capacity() const noexcept { return table_.capacity(); }

 private:
  struct Traits {
    static bool empty(const Slot& s) noexcept { return s.key.len == 0; }
    // Buffers of one driver sit at page-aligned or small-stride Gpas with a
    // handful of lengths: all three fields are mixed before FlatTable's
    // Fibonacci hashing.
    static uint64_t mix(const RevivalKey& key) noexcept {
      uint64_t h = key.gpa * 0x9e3779b97f4a7c15ull;
      h ^= (key.len + static_cast<uint64_t>(key.perms)) * 0xc2b2ae3d27d4eb4full;
      return h ^ (h >> 29);
    }
    static uint64_t hash(const Slot& s) noexcept { return mix(s.key); }
  };
  FlatTable<Slot, Traits> table_;
};

}  // namespace vdma
