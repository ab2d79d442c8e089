// IotlbTable: one immutable snapshot of the device IOTLB, and the edits a
// writer makes while building the next one (private to DeviceIotlb).
//
// A snapshot is never modified once published: readers walk it without any
// lock, and a writer copies the entries, edits the copy and publishes a new
// snapshot (copy-on-write; updates are rare, lookups are not).
//
// Ranges are kept as inclusive [first, last] so an entry may end at 2^64
// without the arithmetic wrapping.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/mem/device_memory.h"

namespace vdma::detail {

struct IotlbEntry {
  uint64_t first = 0;          // first IOVA byte
  uint64_t last = 0;           // last IOVA byte (inclusive)
  uint64_t uaddr = 0;          // front-end VA of `first`
  std::byte* host = nullptr;   // host address of `first`
  uint64_t seq = 0;            // insertion order (eviction); the pieces of a cut entry keep it
  Access perms = Access::kNone;
};

// A static search tree over the entries' first bytes (an "S-tree"): level 0
// holds every first byte, each level above every 16th key of the one below,
// up to a top level of at most 16 keys. A search reads one block of 16 keys
// per level and counts the keys <= iova: 16 independent compares instead of
// a chain of dependent ones (a binary search over 256 entries is 8 dependent
// loads; this is 2 levels). Blocks are padded with ~0.
class SearchTree {
 public:
  static constexpr size_t kFanout = 16;

  SearchTree() = default;
  explicit SearchTree(const std::vector<uint64_t>& firsts);

  // The number of keys <= iova (std::upper_bound's index).
  [[nodiscard]] size_t upper_bound(uint64_t iova) const noexcept {
    if (levels_ == 0) return 0;
    size_t block = 0;
    for (size_t level = levels_ - 1;; --level) {
      const uint64_t* keys = keys_.data() + offset_[level] + block * kFanout;
      // Four partial sums: the compares are independent, and so are the adds.
      size_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
      for (size_t k = 0; k < kFanout; k += 4) {
        c0 += keys[k] <= iova ? 1 : 0;
        c1 += keys[k + 1] <= iova ? 1 : 0;
        c2 += keys[k + 2] <= iova ? 1 : 0;
        c3 += keys[k + 3] <= iova ? 1 : 0;
      }
      size_t c = (c0 + c1) + (c2 + c3);
      // Padding (~0) counts only when iova is ~0 too: clamp to the real keys.
      c = std::min(c, count_[level] - block * kFanout);
      if (level == 0) return block * kFanout + c;
      if (c == 0) return 0;  // only at the top: every key is above iova
      block = block * kFanout + c - 1;
    }
  }

 private:
  static constexpr size_t kMaxLevels = 16;
  std::vector<uint64_t> keys_;        // all levels, each padded to whole blocks
  size_t offset_[kMaxLevels] = {};    // where each level starts in keys_
  size_t count_[kMaxLevels] = {};     // real keys per level
  size_t levels_ = 0;
};

// A hash from IOVA page number (iova >> 12) to the lowest index of an entry
// that touches the page, for entries of at most kMaxEntryPages pages (an
// IOTLB UPDATE usually covers one page or one small buffer). A random hit
// then costs one slot load and one entry load, where the search tree costs
// one dependent block of 16 compares per level (3 levels from 257 entries).
// Answers are candidates: the caller checks that the entry contains the
// address and otherwise searches the tree, so a page of a larger entry, a
// missing page or an overfull index only costs the tree search.
// Open addressing, linear probing, at most half full; built once per
// snapshot and never modified.
class PageIndex {
 public:
  static constexpr uint64_t kPageShift = 12;
  static constexpr uint64_t kMaxEntryPages = 16;
  static constexpr size_t kMaxPages = size_t{1} << 20;  // beyond this many indexed pages, stop indexing
  static constexpr size_t kNone = SIZE_MAX;

  PageIndex() = default;
  explicit PageIndex(const std::vector<IotlbEntry>& entries);

  // The lowest index of an indexed entry touching iova's page, or kNone.
  [[nodiscard]] size_t candidate(uint64_t iova) const noexcept {
    if (slots_.empty()) return kNone;
    const uint64_t page = iova >> kPageShift;
    for (size_t i = home(page);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.page == page) return s.index;
      if (s.page == kEmpty) return kNone;  // at most half full: every probe ends
    }
  }

 private:
  static constexpr uint64_t kEmpty = UINT64_MAX;  // no page number is this large
  struct Slot {
    uint64_t page = kEmpty;
    size_t index = 0;
  };
  [[nodiscard]] size_t home(uint64_t page) const noexcept {
    return static_cast<size_t>((page * 0x9e3779b97f4a7c15ull) >> shift_);  // Fibonacci hashing
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  unsigned shift_ = 63;
};

struct IotlbTable {
  std::vector<IotlbEntry> entries;  // sorted by first, never overlapping
  SearchTree tree;                  // over entries[i].first
  PageIndex pages;                  // small entries by page

  // Whether entry i exists and contains iova.
  [[nodiscard]] bool contains(size_t i, uint64_t iova) const noexcept {
    return i < entries.size() && entries[i].first <= iova && iova <= entries[i].last;
  }

  // The index of the entry that contains `iova`, or else of the first entry
  // above it (entries.size() when there is none). `hint` is a guess (the
  // entry this reader hit last); it is checked, so any value is safe.
  [[nodiscard]] [[gnu::always_inline]] size_t seek(uint64_t iova, size_t hint) const noexcept {
    if (contains(hint, iova)) return hint;
    if (contains(hint + 1, iova)) return hint + 1;  // the next entry: sequential access
    if (const size_t c = pages.candidate(iova); c != PageIndex::kNone) {
      // Entries touching one page have consecutive indices from c.
      if (contains(c, iova)) return c;
      if (contains(c + 1, iova)) return c + 1;
    }
    return seek(iova);
  }
  // The tree search alone (out of line: the hot path above stays small enough to inline).
  [[nodiscard]] size_t seek(uint64_t iova) const noexcept;
};

// Calls, in address order, v.mapped(entry, from, to) for each piece of
// [first, last] that an entry covers and v.missing(from, to) for each gap
// (bounds inclusive). Either returns false to stop the walk. The loop runs
// at most once per entry plus once per gap.
template <class Visitor>
void walk(const IotlbTable& t, uint64_t first, uint64_t last, Visitor& v) {
  const size_t n = t.entries.size();
  size_t i = t.seek(first);
  uint64_t cur = first;
  while (true) {
    if (i == n || t.entries[i].first > last) {
      v.missing(cur, last);
      return;
    }
    const IotlbEntry& e = t.entries[i];
    if (e.first > cur) {
      if (!v.missing(cur, e.first - 1)) return;
      cur = e.first;
    }
    const uint64_t piece_last = std::min(e.last, last);
    if (!v.mapped(e, cur, piece_last)) return;
    if (piece_last == last) return;
    cur = piece_last + 1;
    ++i;
  }
}

// What remove_range() took out.
struct Removal {
  bool removed_any = false;     // some byte lost its translation
  bool changed_any = false;     // some removed byte is not translated identically by `replacement`
  uint64_t newest_seq = 0;      // the highest seq among the entries that lost bytes (0: none)
};

// Removes [first, last] from the sorted entries, cutting entries that cross
// either bound (the pieces outside keep their translation and seq). When
// `replacement` is given (an insert), a removed piece that `replacement`
// maps to the same uaddr and host with at least the same permissions does not
// count as changed: a reader still using the old translation is harmless.
Removal remove_range(std::vector<IotlbEntry>& entries, uint64_t first, uint64_t last,
                     const IotlbEntry* replacement);

// Inserts `e` at its sorted position; [e.first, e.last] must be free.
void insert_sorted(std::vector<IotlbEntry>& entries, const IotlbEntry& e);

// Removes the least recently inserted entry (smallest seq; the lowest
// address among equal seqs) other than one with seq `keep`, and returns it;
// nullopt when there is no other entry.
std::optional<IotlbEntry> evict_oldest(std::vector<IotlbEntry>& entries, uint64_t keep);

// A snapshot of `entries` (sorted, non-overlapping).
IotlbTable make_table(std::vector<IotlbEntry> entries);

}  // namespace vdma::detail
