#include "vdma/iommu/io_page_table.h"

#include <algorithm>
#include <cstring>

namespace vdma {

namespace {

constexpr size_t kMaxSpare = 64;
constexpr unsigned kFull = pte::kEntriesPerTable;

}  // namespace

// One 4 KiB table. Value-initialisation zeroes it (every entry not present).
struct alignas(pte::kPageSize) IoPageTable::Table {
  std::array<uint64_t, pte::kEntriesPerTable> e;
};
static_assert(sizeof(std::array<uint64_t, pte::kEntriesPerTable>) == pte::kPageSize);

// Table entries hold the host address of the next table (pte_format.h).
IoPageTable::Table* IoPageTable::child_of(uint64_t entry) noexcept {
  return reinterpret_cast<Table*>(static_cast<uintptr_t>(pte::address(entry)));
}

IoPageTable::IoPageTable() : root_(new Table{}) {}

IoPageTable::~IoPageTable() {
  clear_table(root_, pte::kLevels);
  delete root_;
  for (Table* t : spare_) delete t;
}

IoPageTable::Table* IoPageTable::alloc_table() {
  if (!spare_.empty()) {
    Table* t = spare_.back();
    spare_.pop_back();
    return t;
  }
  Table* t = new Table{};
  const auto addr = reinterpret_cast<uintptr_t>(t);
  VDMA_CHECK((addr & ~pte::kAddrMask) == 0, "page-table page not encodable in an entry's address field");
  return t;
}

// Precondition: every entry of t is zero.
void IoPageTable::free_table(Table* t) {
  if (spare_.size() < kMaxSpare) {
    spare_.push_back(t);
  } else {
    delete t;
  }
}

Result<void> IoPageTable::map(Iova iova, Gpa out, uint64_t len, Access perms) {
  if (len == 0 || perms == Access::kNone) {
    return make_error(IommuErrc::kInvalidArgument, "page-table map {} -> {} len {:#x} perms {}: empty length or no permissions",
                      iova, out, len, to_string(perms));
  }
  if (!iova.is_aligned(pte::kPageSize) || !out.is_aligned(pte::kPageSize) || (len & (pte::kPageSize - 1)) != 0) {
    return make_error(IommuErrc::kMisaligned, "page-table map {} -> {} len {:#x}: not 4 KiB aligned", iova, out, len);
  }
  if (iova.value() >= pte::kInputLimit || len > pte::kInputLimit - iova.value()) {
    return make_error(IommuErrc::kInvalidArgument, "page-table map {} len {:#x}: beyond the 48-bit input range", iova, len);
  }
  if (out.value() >= pte::kOutputLimit || len > pte::kOutputLimit - out.value()) {
    return make_error(IommuErrc::kInvalidArgument, "page-table map -> {} len {:#x}: beyond the 52-bit output range", out,
                      len);
  }
  if (len == pte::kPageSize) {
    if (map_page(iova.value(), out.value(), perms)) return ok();
    return make_error(IommuErrc::kAlreadyMapped, "page-table map {} len {:#x}: {} is already mapped", iova, len, iova);
  }
  uint64_t found = 0;
  if (first_present(root_, pte::kLevels, iova.value(), len, &found)) {
    return make_error(IommuErrc::kAlreadyMapped, "page-table map {} len {:#x}: {} is already mapped", iova, len,
                      Iova(found));
  }
  map_range(root_, pte::kLevels, iova.value(), out.value(), len, perms);
  return ok();
}

bool IoPageTable::map_page(uint64_t iova, uint64_t out, Access perms) {
  // Walk down, creating tables. A conflict can only lie on a path that
  // already existed, so returning false never leaves an empty table behind.
  uint64_t* parent = nullptr;  // the entry that holds the current table's live count
  Table* t = root_;
  for (unsigned level = pte::kLevels; level > 1; --level) {
    uint64_t& e = t->e[pte::index(iova, level)];
    if (!pte::is_present(e)) {
      e = pte::make_table(reinterpret_cast<uintptr_t>(alloc_table()));
      if (parent != nullptr) *parent = pte::with_sw_bits(*parent, pte::sw_bits(*parent) + 1);
    } else if (pte::is_leaf(e)) {
      return false;
    }
    parent = &e;
    t = child_of(e);
  }
  uint64_t& leaf = t->e[pte::index(iova, 1)];
  if (pte::is_present(leaf)) return false;
  leaf = pte::make_leaf(out, perms);
  *parent = pte::with_sw_bits(*parent, pte::sw_bits(*parent) + 1);
  if (pte::sw_bits(*parent) == kFull) {
    // The page completed a level-1 table, and perhaps with it a level-2 one.
    uint64_t& l3 = child_of(root_->e[pte::index(iova, 4)])->e[pte::index(iova, 3)];
    try_promote(*parent, 2);
    if (pte::is_leaf(*parent) && pte::sw_bits(l3) == kFull) try_promote(l3, 3);
  }
  return true;
}

std::optional<uint64_t> IoPageTable::unmap_page(uint64_t iova) {
  std::array<uint64_t*, pte::kLevels + 1> path{};  // path[level]: the entry used at that level
  Table* t = root_;
  for (unsigned level = pte::kLevels; level >= 1; --level) {
    uint64_t& e = t->e[pte::index(iova, level)];
    if (!pte::is_present(e)) return 0;
    if (pte::is_leaf(e) && level > 1) return std::nullopt;
    path[level] = &e;
    if (level > 1) t = child_of(e);
  }
  *path[1] = 0;
  // Drop one live entry from each table on the way up; free tables that empty.
  for (unsigned level = 2; level <= pte::kLevels; ++level) {
    uint64_t& e = *path[level];
    const unsigned live = pte::sw_bits(e) - 1;
    if (live > 0) {
      e = pte::with_sw_bits(e, live);
      break;
    }
    free_table(child_of(e));
    e = 0;
  }
  return pte::kPageSize;
}

// Finds the lowest mapped address in [iova, iova+len) below table t.
bool IoPageTable::first_present(const Table* t, unsigned level, uint64_t iova, uint64_t len, uint64_t* found) const {
  const uint64_t span = pte::entry_span(level);
  while (len > 0) {
    const uint64_t entry_end = (iova & ~(span - 1)) + span;
    const uint64_t chunk = std::min(len, entry_end - iova);
    const uint64_t e = t->e[pte::index(iova, level)];
    if (pte::is_present(e)) {
      if (pte::is_leaf(e)) {
        *found = iova;
        return true;
      }
      if (first_present(child_of(e), level - 1, iova, chunk, found)) return true;
    }
    iova += chunk;
    len -= chunk;
  }
  return false;
}

// Maps [iova, iova+len) below t (all of it unmapped). Returns how many
// entries of t became present.
unsigned IoPageTable::map_range(Table* t, unsigned level, uint64_t iova, uint64_t out, uint64_t len, Access perms) {
  const uint64_t span = pte::entry_span(level);
  unsigned added = 0;
  while (len > 0) {
    uint64_t& e = t->e[pte::index(iova, level)];
    const uint64_t entry_end = (iova & ~(span - 1)) + span;
    const uint64_t chunk = std::min(len, entry_end - iova);
    if (pte::leaf_allowed(level) && chunk == span && (out & (span - 1)) == 0) {
      // chunk == span implies iova is span-aligned: one leaf covers it.
      VDMA_CHECK(!pte::is_present(e), "map over a present entry");
      e = pte::make_leaf(out, perms);
      ++added;
    } else {
      VDMA_CHECK(level > 1, "level-1 chunk is always a whole aligned page");
      if (!pte::is_present(e)) {
        e = pte::make_table(reinterpret_cast<uintptr_t>(alloc_table()));
        ++added;
      }
      VDMA_CHECK(!pte::is_leaf(e), "map below a present leaf");
      const unsigned n = map_range(child_of(e), level - 1, iova, out, chunk, perms);
      e = pte::with_sw_bits(e, pte::sw_bits(e) + n);
      if (pte::sw_bits(e) == kFull && pte::leaf_allowed(level)) try_promote(e, level);
    }
    iova += chunk;
    out += chunk;
    len -= chunk;
  }
  return added;
}

// `entry` (at `level`) points to a full table. When that table's 512 leaves
// map one contiguous, suitably aligned output range with equal permissions,
// replace the table by one leaf of this level.
void IoPageTable::try_promote(uint64_t& entry, unsigned level) {
  Table* c = child_of(entry);
  const uint64_t first = c->e[0];
  if (!pte::is_leaf(first) || (pte::address(first) & (pte::entry_span(level) - 1)) != 0) return;
  const uint64_t step = pte::entry_span(level - 1);
  // Leaves carry no SW bits, so an entry equal to first + k * step has the
  // same flags and the address k pages further on.
  for (unsigned k = 1; k < kFull; ++k) {
    if (c->e[k] != first + k * step) return;
  }
  entry = pte::make_leaf(pte::address(first), pte::perms(first));
  c->e.fill(0);
  free_table(c);
}

// Replaces the huge leaf `entry` at `level` by a full table of 512 leaves of
// the level below that map the same range with the same permissions.
void IoPageTable::demote(uint64_t& entry, unsigned level) {
  VDMA_CHECK(level >= 2 && pte::is_leaf(entry), "demote of a 4 KiB leaf or a table");
  Table* c = alloc_table();
  const uint64_t step = pte::entry_span(level - 1);
  const uint64_t leaf = pte::make_leaf(pte::address(entry), pte::perms(entry));
  for (unsigned k = 0; k < kFull; ++k) c->e[k] = leaf + k * step;
  entry = pte::with_sw_bits(pte::make_table(reinterpret_cast<uintptr_t>(c)), kFull);
}

Result<uint64_t> IoPageTable::unmap(Iova iova, uint64_t len) {
  if (len == 0) {
    return make_error(IommuErrc::kInvalidArgument, "page-table unmap {} with length 0", iova);
  }
  if (!iova.is_aligned(pte::kPageSize) || (len & (pte::kPageSize - 1)) != 0) {
    return make_error(IommuErrc::kMisaligned, "page-table unmap {} len {:#x}: not 4 KiB aligned", iova, len);
  }
  if (iova.value() >= pte::kInputLimit || len > pte::kInputLimit - iova.value()) {
    return make_error(IommuErrc::kInvalidArgument, "page-table unmap {} len {:#x}: beyond the 48-bit input range", iova,
                      len);
  }
  if (len == pte::kPageSize) {
    if (std::optional<uint64_t> bytes = unmap_page(iova.value())) return *bytes;
  }
  return unmap_range(root_, pte::kLevels, iova.value(), len).bytes;
}

IoPageTable::UnmapCount IoPageTable::unmap_range(Table* t, unsigned level, uint64_t iova, uint64_t len) {
  const uint64_t span = pte::entry_span(level);
  UnmapCount r;
  while (len > 0) {
    uint64_t& e = t->e[pte::index(iova, level)];
    const uint64_t entry_end = (iova & ~(span - 1)) + span;
    const uint64_t chunk = std::min(len, entry_end - iova);
    if (pte::is_present(e)) {
      if (pte::is_leaf(e) && chunk == span) {
        e = 0;
        ++r.entries_cleared;
        r.bytes += span;
      } else {
        if (pte::is_leaf(e)) demote(e, level);
        Table* c = child_of(e);
        const UnmapCount below = unmap_range(c, level - 1, iova, chunk);
        r.bytes += below.bytes;
        const unsigned live = pte::sw_bits(e) - below.entries_cleared;
        if (live == 0) {
          free_table(c);
          e = 0;
          ++r.entries_cleared;
        } else {
          e = pte::with_sw_bits(e, live);
        }
      }
    }
    iova += chunk;
    len -= chunk;
  }
  return r;
}

Result<PageTranslation> IoPageTable::translate(Iova iova, Access access) const {
  const uint64_t a = iova.value();
  if (a >= pte::kInputLimit) {
    return make_error(IommuErrc::kNotPresent, "{} is beyond the 48-bit input range", iova);
  }
  const Table* t = root_;
  uint64_t allowed = pte::kRead | pte::kWrite;
  for (unsigned level = pte::kLevels; level >= 1; --level) {
    const uint64_t e = t->e[pte::index(a, level)];
    if (!pte::is_present(e)) {
      return make_error(IommuErrc::kNotPresent, "{} not present (level {} entry {})", iova, level, pte::index(a, level));
    }
    allowed &= e;
    if (pte::is_leaf(e)) {
      const uint64_t size = pte::entry_span(level);
      const uint64_t off = a & (size - 1);
      const Access perms = pte::perms(allowed);
      if (!permits(perms, access)) {
        return make_error(IommuErrc::kPermissionFault, "{}: {} access to a {} page", iova, to_string(access),
                          to_string(perms));
      }
      return PageTranslation{.gpa = Gpa(pte::address(e) + off), .page_size = size, .contiguous = size - off,
                             .perms = perms};
    }
    t = child_of(e);
  }
  VDMA_CHECK(false, "host page table with a table entry at level 1");
  return make_error(IommuErrc::kNotPresent, "{} unreachable", iova);
}

void IoPageTable::clear_table(Table* t, unsigned level) {
  for (uint64_t& e : t->e) {
    if (pte::is_present(e) && !pte::is_leaf(e)) {
      Table* c = child_of(e);
      clear_table(c, level - 1);
      free_table(c);
    }
    e = 0;
  }
}

void IoPageTable::clear() { clear_table(root_, pte::kLevels); }

void IoPageTable::walk_leaves(const Table* t, unsigned level, uint64_t base,
                              const std::function<void(const PageLeaf&, unsigned)>& fn) const {
  for (unsigned i = 0; i < kFull; ++i) {
    const uint64_t e = t->e[i];
    if (!pte::is_present(e)) continue;
    const uint64_t at = base + uint64_t{i} * pte::entry_span(level);
    if (pte::is_leaf(e)) {
      fn(PageLeaf{.iova = Iova(at), .gpa = Gpa(pte::address(e)), .size = pte::entry_span(level), .perms = pte::perms(e)},
         level);
    } else {
      walk_leaves(child_of(e), level - 1, at, fn);
    }
  }
}

void IoPageTable::for_each_leaf(const std::function<void(const PageLeaf&)>& fn) const {
  walk_leaves(root_, pte::kLevels, 0, [&](const PageLeaf& leaf, unsigned) { fn(leaf); });
}

PageTableStats IoPageTable::stats() const {
  PageTableStats s;
  s.tables[pte::kLevels] = 1;
  // Count tables by walking table entries level by level.
  std::vector<const Table*> level_tables{root_};
  for (unsigned level = pte::kLevels; level > 1; --level) {
    std::vector<const Table*> next;
    for (const Table* t : level_tables) {
      for (uint64_t e : t->e) {
        if (!pte::is_present(e)) continue;
        if (pte::is_leaf(e)) {
          ++s.leaves[level];
        } else {
          next.push_back(child_of(e));
        }
      }
    }
    s.tables[level - 1] = next.size();
    level_tables = std::move(next);
  }
  for (const Table* t : level_tables) {
    for (uint64_t e : t->e) {
      if (pte::is_present(e)) ++s.leaves[1];
    }
  }
  return s;
}

}  // namespace vdma
