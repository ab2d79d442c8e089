#include "nested_tlb.h"

namespace vdma {

namespace {

// Whether [a, a+a_len) and [b, b+b_len) overlap; lengths > 0, ranges may
// reach the top of the address space (the last byte is computed, not the end).
bool overlaps(uint64_t a, uint64_t a_len, uint64_t b, uint64_t b_len) noexcept {
  const uint64_t a_last = a_len - 1 > UINT64_MAX - a ? UINT64_MAX : a + (a_len - 1);
  const uint64_t b_last = b_len - 1 > UINT64_MAX - b ? UINT64_MAX : b + (b_len - 1);
  return a <= b_last && b <= a_last;
}

}  // namespace

const NestedTlbEntry* NestedTlb::lookup(uint64_t iova) const noexcept {
  for (size_t i = 0; i < entries_.size(); ++i) {
    const NestedTlbEntry& e = entries_[i];
    if (valid_[i] && iova >= e.in_start && iova - e.in_start < e.in_len) return &e;
  }
  return nullptr;
}

void NestedTlb::insert(const NestedTlbEntry& e) noexcept {
  entries_[next_] = e;
  valid_[next_] = true;
  next_ = (next_ + 1) % entries_.size();
}

void NestedTlb::invalidate_input(uint64_t start, uint64_t len) noexcept {
  if (len == 0) return;
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (valid_[i] && overlaps(entries_[i].in_start, entries_[i].in_len, start, len)) valid_[i] = false;
  }
}

void NestedTlb::invalidate_stage2(uint64_t start, uint64_t len) noexcept {
  if (len == 0) return;
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (!valid_[i]) continue;
    const NestedTlbEntry& e = entries_[i];
    bool hit = overlaps(e.s2_in, e.in_len, start, len);
    for (uint64_t table : e.table_pages) hit = hit || overlaps(table, pte::kPageSize, start, len);
    if (hit) valid_[i] = false;
  }
}

void NestedTlb::clear() noexcept { valid_.fill(false); }

size_t NestedTlb::valid_entries() const noexcept {
  size_t n = 0;
  for (bool v : valid_) n += v ? 1 : 0;
  return n;
}

}  // namespace vdma
