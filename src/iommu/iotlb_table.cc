#include "iotlb_table.h"

#include <algorithm>
#include <bit>
#include <cstdint>

#include "vdma/base/check.h"

namespace vdma::detail {
namespace {

// Whether `r` translates the byte `from` of `e` exactly as `e` does, with at least
// e's permissions. Compared as integers: the pointers need not be related.
bool same_translation(const IotlbEntry& e, const IotlbEntry& r, uint64_t from) noexcept {
  if (!permits(r.perms, e.perms)) return false;
  const uint64_t e_off = from - e.first;
  const uint64_t r_off = from - r.first;
  const uintptr_t e_host = reinterpret_cast<uintptr_t>(e.host) + e_off;
  const uintptr_t r_host = reinterpret_cast<uintptr_t>(r.host) + r_off;
  return e_host == r_host && e.uaddr + e_off == r.uaddr + r_off;
}

// The piece [from, to] of `e` as an entry of its own.
IotlbEntry piece(const IotlbEntry& e, uint64_t from, uint64_t to) noexcept {
  const uint64_t off = from - e.first;
  return IotlbEntry{from, to, e.uaddr + off, e.host + off, e.seq, e.perms};
}

}  // namespace

Removal remove_range(std::vector<IotlbEntry>& entries, uint64_t first, uint64_t last,
                     const IotlbEntry* replacement) {
  Removal out;
  // [lo, hi): the entries that overlap [first, last].
  auto lo = std::lower_bound(entries.begin(), entries.end(), first,
                             [](const IotlbEntry& e, uint64_t a) { return e.last < a; });
  auto hi = std::upper_bound(lo, entries.end(), last, [](uint64_t a, const IotlbEntry& e) { return a < e.first; });
  if (lo == hi) return out;

  out.removed_any = true;
  // At most two pieces survive: the part of the first entry below `first`
  // and the part of the last entry above `last`.
  std::optional<IotlbEntry> below;
  std::optional<IotlbEntry> above;
  for (auto it = lo; it != hi; ++it) {
    // Both translations are linear, so agreeing on the first removed byte
    // means agreeing on the whole removed piece.
    const uint64_t from = std::max(it->first, first);
    if (replacement == nullptr || !same_translation(*it, *replacement, from)) out.changed_any = true;
    out.newest_seq = std::max(out.newest_seq, it->seq);
  }
  if (lo->first < first) below = piece(*lo, lo->first, first - 1);
  const IotlbEntry& tail = *(hi - 1);
  if (tail.last > last) above = piece(tail, last + 1, tail.last);

  auto pos = entries.erase(lo, hi);
  if (above) pos = entries.insert(pos, *above);
  if (below) entries.insert(pos, *below);
  return out;
}

void insert_sorted(std::vector<IotlbEntry>& entries, const IotlbEntry& e) {
  auto pos = std::lower_bound(entries.begin(), entries.end(), e.first,
                              [](const IotlbEntry& x, uint64_t a) { return x.first < a; });
  VDMA_CHECK(pos == entries.end() || pos->first > e.last, "IOTLB insert into a range that was not cleared");
  VDMA_CHECK(pos == entries.begin() || std::prev(pos)->last < e.first, "IOTLB insert into a range that was not cleared");
  entries.insert(pos, e);
}

std::optional<IotlbEntry> evict_oldest(std::vector<IotlbEntry>& entries, uint64_t keep) {
  auto victim = entries.end();
  for (auto it = entries.begin(); it != entries.end(); ++it) {
    if (it->seq == keep) continue;
    if (victim == entries.end() || it->seq < victim->seq) victim = it;
  }
  if (victim == entries.end()) return std::nullopt;
  IotlbEntry e = *victim;
  entries.erase(victim);
  return e;
}

SearchTree::SearchTree(const std::vector<uint64_t>& firsts) {
  std::vector<uint64_t> level = firsts;
  while (!level.empty()) {
    VDMA_CHECK(levels_ < kMaxLevels, "IOTLB search tree too deep");
    offset_[levels_] = keys_.size();
    count_[levels_] = level.size();
    ++levels_;
    keys_.insert(keys_.end(), level.begin(), level.end());
    keys_.resize(keys_.size() + (kFanout - level.size() % kFanout) % kFanout, ~0ull);
    if (level.size() <= kFanout) break;
    std::vector<uint64_t> up;
    for (size_t i = 0; i < level.size(); i += kFanout) up.push_back(level[i]);
    level = std::move(up);
  }
}

size_t IotlbTable::seek(uint64_t iova) const noexcept {
  const size_t above = tree.upper_bound(iova);  // entries whose first byte is <= iova
  if (above > 0 && entries[above - 1].last >= iova) return above - 1;
  return above;
}

PageIndex::PageIndex(const std::vector<IotlbEntry>& entries) {
  size_t pages = 0;
  for (const IotlbEntry& e : entries) {
    const uint64_t n = (e.last >> kPageShift) - (e.first >> kPageShift) + 1;
    if (n <= kMaxEntryPages) pages += n;
  }
  if (pages == 0 || pages > kMaxPages) return;
  const size_t capacity = std::max<size_t>(16, std::bit_ceil(pages * 2));
  slots_.resize(capacity);
  mask_ = capacity - 1;
  shift_ = 64 - static_cast<unsigned>(std::countr_zero(capacity));
  for (size_t i = 0; i < entries.size(); ++i) {
    const uint64_t first = entries[i].first >> kPageShift;
    const uint64_t last = entries[i].last >> kPageShift;
    if (last - first + 1 > kMaxEntryPages) continue;
    for (uint64_t page = first;; ++page) {
      // Entries come in address order: a page already present keeps the
      // lower index, the first entry touching it.
      for (size_t k = home(page);; k = (k + 1) & mask_) {
        if (slots_[k].page == page) break;
        if (slots_[k].page == kEmpty) {
          slots_[k] = Slot{page, i};
          break;
        }
      }
      if (page == last) break;
    }
  }
}

IotlbTable make_table(std::vector<IotlbEntry> entries) {
  IotlbTable t;
  std::vector<uint64_t> firsts;
  firsts.reserve(entries.size());
  for (const IotlbEntry& e : entries) firsts.push_back(e.first);
  t.tree = SearchTree(firsts);
  t.pages = PageIndex(entries);
  t.entries = std::move(entries);
  return t;
}

}  // namespace vdma::detail
