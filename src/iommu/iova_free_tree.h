// IovaFreeTree: the free IOVA ranges of an IoAddressSpace, with a first-fit
// search that skips every subtree too small to hold the request.
//
//   IovaFreeTree t;
//   t.assign({{0x0, 0xffff'ffff}});
//   std::optional<uint64_t> p = t.first_fit(/*size_m1=*/0xfff, /*align=*/0x1000, /*min_start=*/0x1000);
//   t.take(*p, 0xfff);     // [p, p+0xfff] is no longer free
//   t.give(*p, 0xfff);     // free again, merged with its neighbours
//
// Ranges are inclusive ([start, last]) so the top of the 64-bit space is
// representable; sizes are passed as "size minus one" for the same reason.
// Ranges never overlap and adjacent ranges are always merged.
//
// The structure is a treap keyed by start, each node augmented with the
// largest size in its subtree. first_fit descends left-first and prunes any
// subtree whose largest range is smaller than the request, so a search costs
// O(log n) unless many ranges are large enough by size but fail only because
// of alignment. Nodes live in a vector and are recycled through a free list:
// steady-state take/give cycles do not allocate.
//
// Thread safety: none (owned by one IoAddressSpace).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace vdma {

class IovaFreeTree {
 public:
  struct Range {
    uint64_t start = 0;
    uint64_t last = 0;  // inclusive
    bool operator==(const Range&) const = default;
  };

  // Replaces the content. Precondition: sorted, disjoint, non-adjacent.
  void assign(std::span<const Range> ranges);

  // The lowest p with p % align == 0, p >= min_start and [p, p+size_m1]
  // inside one free range. align is a power of two.
  [[nodiscard]] std::optional<uint64_t> first_fit(uint64_t size_m1, uint64_t align, uint64_t min_start) const;

  // The free range containing addr, if any.
  [[nodiscard]] std::optional<Range> find(uint64_t addr) const;

  // Marks [start, start+size_m1] used. Precondition: it lies inside one free range.
  void take(uint64_t start, uint64_t size_m1);
  // Marks [start, start+size_m1] free. Precondition: no byte of it is free.
  void give(uint64_t start, uint64_t size_m1);

  [[nodiscard]] std::vector<Range> ranges() const;
  [[nodiscard]] size_t size() const noexcept { return count_; }

 private:
  static constexpr uint32_t kNil = UINT32_MAX;
  struct Node {
    uint64_t start = 0;
    uint64_t last = 0;
    uint64_t max_size_m1 = 0;  // largest last - start in this subtree
    uint32_t left = kNil;
    uint32_t right = kNil;
    uint32_t prio = 0;
  };

  [[nodiscard]] uint32_t new_node(uint64_t start, uint64_t last);
  void update(uint32_t n) noexcept;
  void split(uint32_t t, uint64_t key, uint32_t& lo, uint32_t& hi);  // lo: start < key
  [[nodiscard]] uint32_t merge(uint32_t a, uint32_t b);
  void insert(uint64_t start, uint64_t last);
  void erase(uint64_t start);
  // Sets the bounds of the node whose start is `key`; the new start must keep
  // the node between its neighbours.
  void reshape(uint32_t t, uint64_t key, uint64_t start, uint64_t last);
  [[nodiscard]] uint32_t search(uint32_t t, uint64_t size_m1, uint64_t align, uint64_t min_start,
                                uint64_t* at) const;
  [[nodiscard]] uint32_t floor_node(uint64_t addr) const;  // greatest start <= addr
  // Removes [start, end] from the range of subtree t that contains it;
  // returns the subtree's new root. A cut from the middle stores the right
  // remainder in *rest for the caller to insert.
  [[nodiscard]] uint32_t take_in(uint32_t t, uint64_t start, uint64_t end, std::optional<Range>* rest);

  std::vector<Node> nodes_;
  std::vector<uint32_t> unused_;
  uint32_t root_ = kNil;
  size_t count_ = 0;
  uint32_t rng_ = 0x9e3779b9u;  // xorshift state for priorities; deterministic
};

}  // namespace vdma
