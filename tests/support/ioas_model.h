// IoasModel: a deliberately naive reference model of IoAddressSpace, for the
// randomized model test and the ioas fuzzer.
//
//   IoasModel model;
//   Result<Iova> want = model.map(src, len, perms, fixed);
//   Result<Iova> got = ioas->map(src, len, perms, fixed);
//   // same value, or errors with the same domain and code
//   std::optional<IoasModel::Hit> h = model.lookup(iova);   // what a page walk must return
//
// It follows the contract in vdma/iommu/io_address_space.h with the
// plainest data structures: a sorted vector of mappings, lists of allowed
// and reserved ranges, usable ranges recomputed on every call, and a
// first-fit search that steps candidate by candidate past each obstacle.
// Nothing is shared with the implementation. Everything is O(n) or worse,
// which is fine for a model.
//
// Header-only so that the fuzzer (which does not link the test-support
// library) can use it as well.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <optional>
#include <vector>

#include "vdma/iommu/io_address_space.h"

namespace vdma::testing {

class IoasModel {
 public:
  static constexpr uint64_t kPage = 4096;
  static constexpr uint64_t kMax = UINT64_MAX;

  struct Area {
    uint64_t iova = 0;
    uint64_t length = 0;
    uint64_t source = 0;
    Access perms = Access::kNone;

    [[nodiscard]] uint64_t last() const { return iova + (length - 1); }
    [[nodiscard]] uint64_t first_page() const { return iova / kPage * kPage; }
    [[nodiscard]] uint64_t page_last() const { return last() / kPage * kPage + (kPage - 1); }
    [[nodiscard]] uint64_t source_page() const { return source / kPage * kPage; }
  };
  struct Span {
    uint64_t first = 0;
    uint64_t last = 0;  // inclusive
  };
  struct Hit {
    Gpa gpa;
    Access perms = Access::kNone;
  };

  [[nodiscard]] const std::vector<Area>& areas() const { return areas_; }

  // Allowed minus reserved, merged.
  [[nodiscard]] std::vector<IovaRange> usable() const {
    std::vector<Span> cur;
    if (allowed_.empty()) {
      cur.push_back({0, kMax});
    } else {
      cur = allowed_;
    }
    for (const Reserved& r : reserved_) {
      std::vector<Span> next;
      for (const Span& c : cur) {
        if (c.last < r.span.first || r.span.last < c.first) {
          next.push_back(c);
          continue;
        }
        if (c.first < r.span.first) next.push_back({c.first, r.span.first - 1});
        if (r.span.last < c.last) next.push_back({r.span.last + 1, c.last});
      }
      cur = std::move(next);
    }
    std::sort(cur.begin(), cur.end(), [](const Span& a, const Span& b) { return a.first < b.first; });
    std::vector<IovaRange> out;
    for (const Span& s : cur) {
      if (!out.empty() && out.back().last.value() != kMax && out.back().last.value() + 1 == s.first) {
        out.back().last = Iova(s.last);
      } else {
        out.push_back({Iova(s.first), Iova(s.last)});
      }
    }
    return out;
  }

  [[nodiscard]] std::optional<Hit> lookup(uint64_t iova) const {
    const Area* a = overlapping(iova, iova);
    if (a == nullptr) return std::nullopt;
    return Hit{Gpa(a->source_page() + (iova - a->first_page())), a->perms};
  }

  Result<void> allow_iovas(const std::vector<IovaRange>& ranges) {
    std::vector<Span> v;
    for (const IovaRange& r : ranges) {
      if (r.start > r.last) return make_error(IommuErrc::kInvalidArgument, "model: start > last");
      const bool last_ok = r.last.value() == kMax || (r.last.value() + 1) % kPage == 0;
      if (r.start.value() % kPage != 0 || !last_ok) return make_error(IommuErrc::kMisaligned, "model: misaligned");
      v.push_back({r.start.value(), r.last.value()});
    }
    std::sort(v.begin(), v.end(), [](const Span& a, const Span& b) { return a.first < b.first; });
    for (size_t i = 1; i < v.size(); ++i) {
      if (v[i].first <= v[i - 1].last) return make_error(IommuErrc::kInvalidArgument, "model: overlap");
    }
    if (!v.empty()) {
      for (const Area& a : areas_) {
        if (!inside(v, a.first_page(), a.page_last())) return make_error(IommuErrc::kConflict, "model: outside");
      }
    }
    allowed_ = std::move(v);
    return ok();
  }

  Result<void> add_reserved(ReservationOwner owner, const std::vector<IovaRange>& ranges) {
    std::vector<Reserved> add;
    for (const IovaRange& r : ranges) {
      if (r.start > r.last) return make_error(IommuErrc::kInvalidArgument, "model: start > last");
      const Span s{r.start.value() / kPage * kPage, r.last.value() / kPage * kPage + (kPage - 1)};
      for (const Area& a : areas_) {
        if (a.first_page() <= s.last && s.first <= a.page_last()) {
          return make_error(IommuErrc::kConflict, "model: reserved overlaps a mapping");
        }
      }
      add.push_back({owner, s});
    }
    reserved_.insert(reserved_.end(), add.begin(), add.end());
    return ok();
  }

  void remove_reserved(ReservationOwner owner) {
    std::erase_if(reserved_, [&](const Reserved& r) { return r.owner == owner; });
  }

  Result<Iova> map(Gpa source, uint64_t length, Access perms, std::optional<Iova> fixed) {
    if (perms == Access::kNone || length == 0) return make_error(IommuErrc::kInvalidArgument, "model: args");
    uint64_t src_last = 0;
    if (__builtin_add_overflow(source.value(), length - 1, &src_last)) {
      return make_error(BaseErrc::kOverflow, "model: source wraps");
    }
    if (src_last >= (uint64_t{1} << 52)) return make_error(IommuErrc::kInvalidArgument, "model: beyond 2^52");
    const uint64_t offset = source.value() % kPage;
    Result<uint64_t> iova = place(source.value(), offset, length, fixed);
    if (!iova) return std::move(iova).error();
    insert(Area{*iova, length, source.value(), perms});
    return Iova(*iova);
  }

  Result<uint64_t> unmap(Iova iova, uint64_t length) {
    if (length == 0) return make_error(IommuErrc::kInvalidArgument, "model: length 0");
    uint64_t last = 0;
    if (__builtin_add_overflow(iova.value(), length - 1, &last)) return make_error(BaseErrc::kOverflow, "model: wraps");
    bool any = false;
    for (const Area& a : areas_) {
      if (a.iova > last || a.last() < iova.value()) continue;
      any = true;
      if (a.iova < iova.value() || a.last() > last) return make_error(IommuErrc::kWouldSplit, "model: split");
    }
    if (!any) return make_error(IommuErrc::kNotMapped, "model: nothing");
    uint64_t bytes = 0;
    std::erase_if(areas_, [&](const Area& a) {
      if (a.iova > last || a.last() < iova.value()) return false;
      bytes += a.length;
      return true;
    });
    return bytes;
  }

  uint64_t unmap_all() {
    uint64_t bytes = 0;
    for (const Area& a : areas_) bytes += a.length;
    areas_.clear();
    return bytes;
  }

  Result<Iova> copy(const IoasModel& from, Iova src, uint64_t length, std::optional<Iova> dst) {
    if (length == 0) return make_error(IommuErrc::kInvalidArgument, "model: length 0");
    uint64_t last = 0;
    if (__builtin_add_overflow(src.value(), length - 1, &last)) return make_error(BaseErrc::kOverflow, "model: wraps");
    std::vector<Area> parts;
    uint64_t cursor = src.value();
    bool complete = false;
    for (const Area& a : from.areas_) {
      if (a.iova > last || a.last() < cursor) continue;
      if (a.iova < cursor || a.last() > last) return make_error(IommuErrc::kWouldSplit, "model: split");
      if (a.iova > cursor) return make_error(IommuErrc::kNotMapped, "model: gap");
      parts.push_back(a);
      if (a.last() == last) {
        complete = true;
        break;
      }
      cursor = a.last() + 1;
    }
    if (!complete) return make_error(IommuErrc::kNotMapped, "model: short");
    Result<uint64_t> at = place(parts.front().source, src.value() % kPage, length, dst);
    if (!at) return std::move(at).error();
    for (const Area& p : parts) insert(Area{*at + (p.iova - src.value()), p.length, p.source, p.perms});
    return Iova(*at);
  }

 private:
  struct Reserved {
    ReservationOwner owner;
    Span span;
  };

  // Whether [first, last] lies inside the union of sorted, disjoint spans.
  static bool inside(const std::vector<Span>& spans, uint64_t first, uint64_t last) {
    uint64_t cur = first;
    for (const Span& s : spans) {
      if (s.first <= cur && cur <= s.last) {
        if (s.last >= last) return true;
        cur = s.last + 1;
      }
    }
    return false;
  }

  [[nodiscard]] bool pages_usable(uint64_t first, uint64_t last) const {
    std::vector<Span> spans;
    for (const IovaRange& r : usable()) spans.push_back({r.start.value(), r.last.value()});
    return inside(spans, first, last);
  }

  // The lowest mapping whose pages overlap [first, last]. Mappings are
  // sorted and page-disjoint, so page_last() ascends with iova.
  [[nodiscard]] const Area* overlapping(uint64_t first, uint64_t last) const {
    auto it = std::lower_bound(areas_.begin(), areas_.end(), first,
                               [](const Area& a, uint64_t v) { return a.page_last() < v; });
    if (it != areas_.end() && it->first_page() <= last) return &*it;
    return nullptr;
  }

  Result<uint64_t> place(uint64_t align_source, uint64_t offset, uint64_t length, std::optional<Iova> fixed) const {
    if (fixed) {
      uint64_t last = 0;
      if (__builtin_add_overflow(fixed->value(), length - 1, &last)) {
        return make_error(BaseErrc::kOverflow, "model: fixed wraps");
      }
      if (fixed->value() % kPage != offset) return make_error(IommuErrc::kMisaligned, "model: offset");
      const uint64_t first = fixed->value() / kPage * kPage;
      const uint64_t page_last = last / kPage * kPage + (kPage - 1);
      if (!pages_usable(first, page_last)) return make_error(IommuErrc::kReserved, "model: reserved");
      if (overlapping(first, page_last) != nullptr) return make_error(IommuErrc::kAlreadyMapped, "model: mapped");
      return fixed->value();
    }
    uint64_t align = length >= (uint64_t{1} << 30) ? (uint64_t{1} << 30) : std::bit_ceil(length);
    if (align_source != 0) align = std::min(align, uint64_t{1} << std::countr_zero(align_source));
    align = std::clamp(align, kPage, uint64_t{1} << 30);
    const uint64_t span_m1 = (offset + length - 1) / kPage * kPage + (kPage - 1);
    for (const IovaRange& r : usable()) {
      uint64_t lo = std::max(r.start.value(), kPage);
      while (lo <= r.last.value() && lo <= kMax - (align - 1)) {
        const uint64_t p = (lo + align - 1) / align * align;
        if (p > r.last.value() || r.last.value() - p < span_m1) break;
        const Area* hit = overlapping(p, p + span_m1);
        if (hit == nullptr) return p + offset;
        if (hit->page_last() == kMax) break;
        lo = hit->page_last() + 1;
      }
    }
    return make_error(IommuErrc::kNoSpace, "model: no space");
  }

  void insert(const Area& a) {
    auto at = std::upper_bound(areas_.begin(), areas_.end(), a.iova, [](uint64_t v, const Area& x) { return v < x.iova; });
    areas_.insert(at, a);
  }

  std::vector<Area> areas_;  // sorted by iova
  std::vector<Span> allowed_;
  std::vector<Reserved> reserved_;
};

}  // namespace vdma::testing
