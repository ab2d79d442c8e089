#include "iova_free_tree.h"

#include <algorithm>

#include "vdma/base/check.h"

namespace vdma {

uint32_t IovaFreeTree::new_node(uint64_t start, uint64_t last) {
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 17;
  rng_ ^= rng_ << 5;
  const Node n{.start = start, .last = last, .max_size_m1 = last - start, .left = kNil, .right = kNil, .prio = rng_};
  ++count_;
  if (!unused_.empty()) {
    const uint32_t i = unused_.back();
    unused_.pop_back();
    nodes_[i] = n;
    return i;
  }
  VDMA_CHECK(nodes_.size() < kNil, "IOVA free tree node index overflow");
  nodes_.push_back(n);
  return static_cast<uint32_t>(nodes_.size() - 1);
}

void IovaFreeTree::update(uint32_t n) noexcept {
  Node& x = nodes_[n];
  uint64_t m = x.last - x.start;
  if (x.left != kNil) m = std::max(m, nodes_[x.left].max_size_m1);
  if (x.right != kNil) m = std::max(m, nodes_[x.right].max_size_m1);
  x.max_size_m1 = m;
}

void IovaFreeTree::split(uint32_t t, uint64_t key, uint32_t& lo, uint32_t& hi) {
  if (t == kNil) {
    lo = hi = kNil;
    return;
  }
  if (nodes_[t].start < key) {
    uint32_t r_lo = kNil;
    split(nodes_[t].right, key, r_lo, hi);
    nodes_[t].right = r_lo;
    lo = t;
  } else {
    uint32_t l_hi = kNil;
    split(nodes_[t].left, key, lo, l_hi);
    nodes_[t].left = l_hi;
    hi = t;
  }
  update(t);
}

uint32_t IovaFreeTree::merge(uint32_t a, uint32_t b) {
  if (a == kNil) return b;
  if (b == kNil) return a;
  if (nodes_[a].prio > nodes_[b].prio) {
    const uint32_t r = merge(nodes_[a].right, b);
    nodes_[a].right = r;
    update(a);
    return a;
  }
  const uint32_t l = merge(a, nodes_[b].left);
  nodes_[b].left = l;
  update(b);
  return b;
}

void IovaFreeTree::insert(uint64_t start, uint64_t last) {
  const uint32_t n = new_node(start, last);
  uint32_t lo = kNil;
  uint32_t hi = kNil;
  split(root_, start, lo, hi);
  root_ = merge(merge(lo, n), hi);
}

void IovaFreeTree::erase(uint64_t start) {
  uint32_t lo = kNil;
  uint32_t rest = kNil;
  split(root_, start, lo, rest);
  uint32_t mid = kNil;
  uint32_t hi = kNil;
  // Starts are page aligned, so start + 1 does not wrap.
  split(rest, start + 1, mid, hi);
  VDMA_CHECK(mid != kNil && nodes_[mid].left == kNil && nodes_[mid].right == kNil, "erase of a missing free range");
  unused_.push_back(mid);
  --count_;
  root_ = merge(lo, hi);
}

void IovaFreeTree::reshape(uint32_t t, uint64_t key, uint64_t start, uint64_t last) {
  VDMA_CHECK(t != kNil, "reshape of a missing free range");
  Node& n = nodes_[t];
  if (key < n.start) {
    reshape(n.left, key, start, last);
  } else if (key > n.start) {
    reshape(n.right, key, start, last);
  } else {
    n.start = start;
    n.last = last;
  }
  update(t);
}

void IovaFreeTree::assign(std::span<const Range> ranges) {
  nodes_.clear();
  unused_.clear();
  root_ = kNil;
  count_ = 0;
  for (const Range& r : ranges) insert(r.start, r.last);
}

uint32_t IovaFreeTree::search(uint32_t t, uint64_t size_m1, uint64_t align, uint64_t min_start, uint64_t* at) const {
  if (t == kNil || nodes_[t].max_size_m1 < size_m1) return kNil;
  const Node& n = nodes_[t];
  if (const uint32_t l = search(n.left, size_m1, align, min_start, at); l != kNil) return l;
  const uint64_t lo = std::max(n.start, min_start);
  if (lo <= n.last && lo <= UINT64_MAX - (align - 1)) {
    const uint64_t cand = (lo + align - 1) & ~(align - 1);
    if (cand <= n.last && n.last - cand >= size_m1) {
      *at = cand;
      return t;
    }
  }
  return search(n.right, size_m1, align, min_start, at);
}

std::optional<uint64_t> IovaFreeTree::first_fit(uint64_t size_m1, uint64_t align, uint64_t min_start) const {
  uint64_t at = 0;
  if (search(root_, size_m1, align, min_start, &at) == kNil) return std::nullopt;
  return at;
}

uint32_t IovaFreeTree::floor_node(uint64_t addr) const {
  uint32_t best = kNil;
  for (uint32_t t = root_; t != kNil;) {
    if (nodes_[t].start <= addr) {
      best = t;
      t = nodes_[t].right;
    } else {
      t = nodes_[t].left;
    }
  }
  return best;
}

std::optional<IovaFreeTree::Range> IovaFreeTree::find(uint64_t addr) const {
  const uint32_t n = floor_node(addr);
  if (n == kNil || nodes_[n].last < addr) return std::nullopt;
  return Range{nodes_[n].start, nodes_[n].last};
}

uint32_t IovaFreeTree::take_in(uint32_t t, uint64_t start, uint64_t end, std::optional<Range>* rest) {
  VDMA_CHECK(t != kNil, "take of a range that is not free");
  Node& n = nodes_[t];
  if (start < n.start) {
    n.left = take_in(n.left, start, end, rest);
  } else if (start > n.last) {
    n.right = take_in(n.right, start, end, rest);
  } else {
    VDMA_CHECK(end <= n.last, "take of a range that is not free");
    if (n.start == start && n.last == end) {
      const uint32_t joined = merge(n.left, n.right);
      unused_.push_back(t);
      --count_;
      return joined;
    }
    if (n.start == start) {
      n.start = end + 1;
    } else {
      if (end < n.last) *rest = Range{end + 1, n.last};
      n.last = start - 1;
    }
  }
  update(t);
  return t;
}

void IovaFreeTree::take(uint64_t start, uint64_t size_m1) {
  // One descent to the containing range, trimming it and fixing the
  // augmentation on the way back; a take from the middle leaves a right
  // remainder to insert.
  std::optional<Range> rest;
  root_ = take_in(root_, start, start + size_m1, &rest);
  if (rest) insert(rest->start, rest->last);
}

void IovaFreeTree::give(uint64_t start, uint64_t size_m1) {
  const uint64_t end = start + size_m1;
  // One descent finds both neighbours. The ceiling of `start` lies on this
  // path, so a free range starting inside [start, end] cannot go unnoticed.
  uint32_t p = kNil;
  uint32_t s = kNil;
  for (uint32_t t = root_; t != kNil;) {
    const Node& n = nodes_[t];
    if (n.start < start) {
      p = t;
      t = n.right;
    } else {
      VDMA_CHECK(n.start > end, "give of a range that is partly free");
      s = t;
      t = n.left;
    }
  }
  VDMA_CHECK(p == kNil || nodes_[p].last < start, "give of a range that is partly free");
  const bool join_prev = p != kNil && nodes_[p].last + 1 == start;
  const bool join_next = s != kNil && nodes_[s].start == end + 1;
  if (join_prev && join_next) {
    const uint64_t prev_start = nodes_[p].start;
    const uint64_t next_start = nodes_[s].start;
    const uint64_t next_last = nodes_[s].last;
    erase(next_start);
    reshape(root_, prev_start, prev_start, next_last);
  } else if (join_prev) {
    reshape(root_, nodes_[p].start, nodes_[p].start, end);
  } else if (join_next) {
    reshape(root_, nodes_[s].start, start, nodes_[s].last);
  } else {
    insert(start, end);
  }
}

std::vector<IovaFreeTree::Range> IovaFreeTree::ranges() const {
  std::vector<Range> out;
  out.reserve(count_);
  std::vector<uint32_t> stack;
  uint32_t t = root_;
  while (t != kNil || !stack.empty()) {
    while (t != kNil) {
      stack.push_back(t);
      t = nodes_[t].left;
    }
    t = stack.back();
    stack.pop_back();
    out.push_back(Range{nodes_[t].start, nodes_[t].last});
    t = nodes_[t].right;
  }
  return out;
}

}  // namespace vdma
