// IoasModelHarness: drives two IoAddressSpaces (each mirrored into a
// PagingDomain) and two IoasModels with the same random operations, and
// compares every result and page-table translation.
//
//   IoasModelHarness h;
//   RngChoices rng(seed);
//   for (int i = 0; i < n; ++i) {
//     if (auto bad = h.step(rng)) FAIL() << "op " << i << ": " << *bad;
//     if (auto bad = h.sample(rng, 6)) FAIL() << *bad;
//   }
//   if (auto bad = h.check_full()) FAIL() << *bad;
//
// Operations: fixed and "don't care" maps (page-aligned and unaligned
// sources, sub-page to 1 GiB lengths), unmaps that must succeed or fail
// (exact, several mappings, cutting one, random, empty, wrapping), copies
// between and within the two IOASes, device attach/detach with reserved
// regions (through the domain), allow_iovas (succeeding, conflicting and
// invalid), and unmap_all. A choice source supplies every decision, so the
// gtest (a seeded PRNG) and the fuzzer (its input bytes) share the code.
//
// Header-only: the fuzzer does not link the test-support library.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "ioas_model.h"
#include "vdma/iommu/domain.h"

namespace vdma::testing {

// Choices from a seeded PRNG.
class RngChoices {
 public:
  explicit RngChoices(uint64_t seed) : rng_(seed) {}
  // Uniform in [0, n); n > 0.
  uint64_t below(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng_); }

 private:
  std::mt19937_64 rng_;
};

// Choices read from fuzzer input, 0 once it runs out.
class ByteChoices {
 public:
  explicit ByteChoices(std::span<const uint8_t> data) : data_(data) {}
  uint64_t below(uint64_t n) {
    uint64_t v = 0;
    // Read as few bytes as the bound needs, so each byte steers one decision.
    for (uint64_t cap = n - 1; cap != 0; cap >>= 8) v = (v << 8) | next_byte();
    return v % n;
  }
  [[nodiscard]] bool exhausted() const { return pos_ >= data_.size(); }

 private:
  uint8_t next_byte() { return pos_ < data_.size() ? data_[pos_++] : 0; }
  std::span<const uint8_t> data_;
  size_t pos_ = 0;
};

class IoasModelHarness {
 public:
  static constexpr uint64_t kPage = 4096;
  static constexpr uint64_t k2M = uint64_t{2} << 20;
  static constexpr uint64_t k1G = uint64_t{1} << 30;
  static constexpr uint64_t kArena = uint64_t{1} << 36;  // fixed IOVAs and allowed ranges mostly fall below

  IoasModelHarness() {
    for (int i = 0; i < 2; ++i) {
      ioas_[i] = IoAddressSpace::create();
      domain_[i] = std::move(PagingDomain::create(*ioas_[i])).value();
      const IovaRange aperture[] = {{Iova(uint64_t{1} << 48), Iova(UINT64_MAX)}};
      (void)model_[i].add_reserved(ReservationOwner::domain(1), {aperture[0]});
    }
  }
  ~IoasModelHarness() {
    for (auto& d : domain_) d.reset();
  }

  IoAddressSpace& ioas(int i) { return *ioas_[i]; }
  PagingDomain& domain(int i) { return *domain_[i]; }
  const IoasModel& model(int i) const { return model_[i]; }
  // How often each "op:outcome" happened (outcome "ok" or the error code name).
  const std::map<std::string, uint64_t>& outcomes() const { return outcomes_; }
  const std::string& last_op() const { return last_op_; }

  // One random operation on both the implementation and the model.
  template <class Src>
  std::optional<std::string> step(Src& src) {
    const int w = static_cast<int>(src.below(2));
    const bool crowded = model_[w].areas().size() > 300;
    const uint64_t roll = src.below(1000);
    if (roll < (crowded ? 200u : 330u)) return do_auto_map(src, w);
    if (roll < 480) return do_fixed_map(src, w);
    if (roll < 800) return do_unmap(src, w);
    if (roll < 880) return do_copy(src, w);
    if (roll < 925) return do_attach(src, w);
    if (roll < 955) return do_detach(src, w);
    if (roll < 999) return do_allow(src, w);
    last_op_ = fmt::format("ioas{}.unmap_all()", w);
    const uint64_t got = ioas_[w]->unmap_all();
    const uint64_t want = model_[w].unmap_all();
    record("unmap_all", Result<void>());
    if (got != want) return fmt::format("{}: {:#x} bytes, model {:#x}", last_op_, got, want);
    return std::nullopt;
  }

  // n translations per IOAS at IOVAs near mappings or anywhere in the arena.
  template <class Src>
  std::optional<std::string> sample(Src& src, int n) {
    for (int w = 0; w < 2; ++w) {
      for (int k = 0; k < n; ++k) {
        uint64_t iova = 0;
        const auto& areas = model_[w].areas();
        if (!areas.empty() && src.below(3) != 0) {
          const auto& a = areas[src.below(areas.size())];
          const uint64_t span = a.page_last() - a.first_page() + 1;
          iova = a.first_page() + src.below(span + 2 * kPage) - std::min(a.first_page(), kPage);
        } else {
          iova = src.below(kArena);
        }
        if (auto bad = check_translation(w, iova)) return bad;
      }
    }
    return std::nullopt;
  }

  // Compares mappings, usable ranges and every page-table leaf, and checks
  // that no full table was left unpromoted.
  std::optional<std::string> check_full() {
    for (int w = 0; w < 2; ++w) {
      const auto got = ioas_[w]->mappings();
      const auto& want = model_[w].areas();
      if (got.size() != want.size()) {
        return fmt::format("ioas{}: {} mappings, model {}", w, got.size(), want.size());
      }
      for (size_t i = 0; i < got.size(); ++i) {
        const auto& m = want[i];
        if (got[i] != IoasMapping{Iova(m.iova), m.length, Gpa(m.source), m.perms}) {
          return fmt::format("ioas{}: mapping {} is {}, model {:#x}+{:#x}", w, i, got[i], m.iova, m.length);
        }
      }
      if (ioas_[w]->iova_ranges().ranges != model_[w].usable()) {
        return fmt::format("ioas{}: usable ranges differ from the model", w);
      }
      if (auto bad = check_leaves(w)) return bad;
    }
    return std::nullopt;
  }

 private:
  struct Run {
    uint64_t iova = 0;
    uint64_t gpa = 0;
    uint64_t len = 0;
    Access perms = Access::kNone;
    bool operator==(const Run&) const = default;
  };

  static void append_run(std::vector<Run>& runs, const Run& r) {
    if (!runs.empty()) {
      Run& b = runs.back();
      if (b.iova + b.len == r.iova && b.gpa + b.len == r.gpa && b.perms == r.perms) {
        b.len += r.len;
        return;
      }
    }
    runs.push_back(r);
  }

  // Watches leaves of one size go by in IOVA order and reports a region of
  // the next size up made of 512 contiguous, aligned, equal-permission
  // leaves: map() must have promoted it.
  struct PromotionWatch {
    uint64_t leaf_size = 0;
    uint64_t region = UINT64_MAX;
    uint64_t count = 0;
    uint64_t first_gpa = 0;
    Access perms = Access::kNone;
    bool linear = false;

    // True when `l` completes an unpromoted region.
    bool add(const PageLeaf& l) {
      if (l.size != leaf_size) return false;
      const uint64_t size = leaf_size * 512;
      const uint64_t r = l.iova.value() / size;
      const uint64_t k = (l.iova.value() % size) / leaf_size;
      if (r != region || k != count) {
        region = r;
        count = 0;
        linear = k == 0 && l.gpa.value() % size == 0;
        first_gpa = l.gpa.value();
        perms = l.perms;
        if (k != 0) return false;
      }
      linear = linear && l.gpa.value() == first_gpa + count * leaf_size && l.perms == perms;
      ++count;
      return count == 512 && linear;
    }
  };

  std::optional<std::string> check_leaves(int w) {
    std::vector<Run> got;
    PromotionWatch small{.leaf_size = kPage};
    PromotionWatch mid{.leaf_size = k2M};
    std::optional<uint64_t> unpromoted;
    domain_[w]->table().for_each_leaf([&](const PageLeaf& l) {
      append_run(got, Run{l.iova.value(), l.gpa.value(), l.size, l.perms});
      if ((small.add(l) || mid.add(l)) && !unpromoted) unpromoted = l.iova.value();
    });
    std::vector<Run> want;
    for (const auto& a : model_[w].areas()) {
      append_run(want, Run{a.first_page(), a.source_page(), a.page_last() - a.first_page() + 1, a.perms});
    }
    if (got != want) return fmt::format("ioas{}: page-table leaves differ from the model's mappings", w);
    if (unpromoted) return fmt::format("ioas{}: a full table ending at iova:{:#x} was not promoted", w, *unpromoted);
    return std::nullopt;
  }

  std::optional<std::string> check_translation(int w, uint64_t iova) {
    const auto hit = model_[w].lookup(iova);
    const Result<PageTranslation> t = domain_[w]->translate(Iova(iova), Access::kNone);
    if (!hit) {
      if (t.has_value() || !t.error().is(IommuErrc::kNotPresent)) {
        return fmt::format("ioas{}: translate iova:{:#x} should be not present", w, iova);
      }
      return std::nullopt;
    }
    if (!t || t->gpa != hit->gpa || t->perms != hit->perms) {
      return fmt::format("ioas{}: translate iova:{:#x}: {} vs model {} {}", w, iova,
                         t ? fmt::format("{} {}", t->gpa, to_string(t->perms)) : t.error().to_string(), hit->gpa,
                         to_string(hit->perms));
    }
    const bool size_ok = t->page_size == kPage || t->page_size == k2M || t->page_size == k1G;
    if (!size_ok || t->contiguous == 0 || t->contiguous > t->page_size) {
      return fmt::format("ioas{}: translate iova:{:#x}: page size {:#x} contiguous {:#x}", w, iova, t->page_size,
                         t->contiguous);
    }
    // The whole leaf must be the model's too: check its last byte.
    const auto end = model_[w].lookup(iova + t->contiguous - 1);
    if (!end || end->gpa.value() != t->gpa.value() + t->contiguous - 1 || end->perms != t->perms) {
      return fmt::format("ioas{}: leaf at iova:{:#x} (+{:#x}) extends beyond the model's mappings", w, iova,
                         t->contiguous);
    }
    const Access missing = t->perms == Access::kRead ? Access::kWrite : t->perms == Access::kWrite ? Access::kRead : Access::kNone;
    if (missing == Access::kNone) return std::nullopt;
    const Result<PageTranslation> denied = domain_[w]->translate(Iova(iova), missing);
    if (denied || !denied.error().is(IommuErrc::kPermissionFault)) {
      return fmt::format("ioas{}: iova:{:#x} {} access should fault", w, iova, to_string(missing));
    }
    return std::nullopt;
  }

  template <class T>
  void record(std::string_view op, const Result<T>& r) {
    ++outcomes_[fmt::format("{}:{}", op, r ? std::string_view("ok") : r.error().code_name())];
  }

  template <class T>
  std::optional<std::string> compare(std::string_view op, const Result<T>& got, const Result<T>& want) {
    record(op, got);
    if (want.has_value() != got.has_value()) {
      return fmt::format("{}: got {}, model {}", last_op_, got ? "a value" : got.error().to_string(),
                         want ? "a value" : want.error().to_string());
    }
    if (!want) {
      if (got.error().domain() != want.error().domain() || got.error().code() != want.error().code()) {
        return fmt::format("{}: got {}, model {}", last_op_, got.error().to_string(), want.error().to_string());
      }
      return std::nullopt;
    }
    if constexpr (!std::is_void_v<T>) {
      if (*got != *want) return fmt::format("{}: got {}, model {}", last_op_, *got, *want);
    }
    return std::nullopt;
  }

  template <class Src>
  Access pick_perms(Src& src) {
    static constexpr Access kPerms[] = {Access::kRead, Access::kWrite, Access::kReadWrite, Access::kReadWrite};
    return src.below(200) == 0 ? Access::kNone : kPerms[src.below(4)];
  }

  template <class Src>
  uint64_t pick_length(Src& src) {
    const uint64_t r = src.below(100);
    if (r < 55) return (1 + src.below(16)) * kPage;
    if (r < 72) return 1 + src.below(3 * kPage);
    if (r < 92) return (1 + src.below(3)) * k2M;
    if (r < 94) return k1G;
    if (r < 96) return k2M * 512 + kPage * (1 + src.below(4));
    if (r < 98) return 0;
    // Past the 52-bit output range for every source (kInvalidArgument or
    // kOverflow). Successful maps stay small: a huge unaligned one would
    // need gigabytes of 4 KiB leaves.
    return (uint64_t{1} << 52) + src.below(uint64_t{1} << 40) * kPage;
  }

  template <class Src>
  Gpa pick_source(Src& src, uint64_t length) {
    const uint64_t r = src.below(100);
    if (r < 3) return Gpa(UINT64_MAX - src.below(3 * kPage));                   // wraps or passes 2^52
    if (r < 5) return Gpa((uint64_t{1} << 52) - src.below(4) * kPage);           // at the output limit
    uint64_t base = src.below(uint64_t{1} << 28) * kPage;                         // below 2^40
    if (length >= k1G && r < 90) base = base / k1G * k1G;
    if (length >= k2M && r < 90) base = base / k2M * k2M;
    if (r >= 85) base += src.below(kPage);                                        // unaligned
    return Gpa(base);
  }

  template <class Src>
  Iova pick_fixed(Src& src, int w, Gpa source, uint64_t length) {
    const uint64_t offset = source.value() % kPage;
    const uint64_t r = src.below(100);
    const auto& areas = model_[w].areas();
    uint64_t page = 0;
    if (r < 40 && !areas.empty()) {
      // Next to, or over, an existing mapping.
      const auto& a = areas[src.below(areas.size())];
      const uint64_t pages = (length + offset + kPage - 1) / kPage;
      page = src.below(2) ? a.page_last() + 1 : a.first_page() - std::min(a.first_page(), pages * kPage);
      page += (src.below(3) - 1) * kPage;
    } else if (r < 80) {
      page = src.below(kArena / kPage) * kPage;
      // Big maps mostly land aligned so they use huge leaves; unaligned ones
      // cost 262,144 small leaves per GiB and slow the sanitizer builds.
      if (length >= k2M && src.below(10) != 0) page = page / k2M * k2M;
      if (length >= k1G && src.below(10) != 0) page = page / k1G * k1G;
    } else if (r < 85) {
      page = 0xfee00000 + src.below(0x100) * kPage;   // the MSI window when a device reserved it
    } else if (r < 90) {
      page = (uint64_t{1} << 48) - src.below(4) * kPage;   // the domain aperture edge
    } else if (r < 94) {
      page = UINT64_MAX - kPage + 1 - src.below(4) * kPage;   // wraps
    } else {
      page = src.below(kArena / kPage) * kPage;
      return Iova(page + (offset + 1 + src.below(kPage - 1)) % kPage);   // congruence broken
    }
    return Iova(page + offset);
  }

  template <class Src>
  std::optional<std::string> do_auto_map(Src& src, int w) {
    const uint64_t length = pick_length(src);
    const Gpa source = pick_source(src, length);
    const Access perms = pick_perms(src);
    last_op_ = fmt::format("ioas{}.map({}, {:#x}, {})", w, source, length, to_string(perms));
    return compare("map_auto", ioas_[w]->map(source, length, perms), model_[w].map(source, length, perms, std::nullopt));
  }

  template <class Src>
  std::optional<std::string> do_fixed_map(Src& src, int w) {
    const uint64_t length = pick_length(src);
    const Gpa source = pick_source(src, length);
    const Access perms = pick_perms(src);
    const Iova fixed = pick_fixed(src, w, source, length);
    last_op_ = fmt::format("ioas{}.map({}, {:#x}, {}, fixed {})", w, source, length, to_string(perms), fixed);
    return compare("map_fixed", ioas_[w]->map(source, length, perms, fixed), model_[w].map(source, length, perms, fixed));
  }

  // A range over existing mappings of model w: exact, several, cut, random...
  template <class Src>
  std::pair<Iova, uint64_t> pick_range(Src& src, int w) {
    const auto& areas = model_[w].areas();
    const uint64_t r = src.below(100);
    if (areas.empty() || r >= 90) {
      if (r >= 98) return {Iova(UINT64_MAX - src.below(kPage)), kPage + src.below(kPage)};   // wraps
      if (r >= 96) return {Iova(src.below(kArena)), 0};
      return {Iova(src.below(kArena)), 1 + src.below(64 * kPage)};
    }
    const size_t i = src.below(areas.size());
    const auto& a = areas[i];
    if (r < 45) return {Iova(a.iova), a.length};
    if (r < 60) {
      const size_t j = std::min(areas.size() - 1, i + src.below(3));
      return {Iova(a.iova), areas[j].last() - a.iova + 1};
    }
    if (r < 70) return {Iova(a.first_page()), a.page_last() - a.first_page() + 1};   // whole pages: covers it
    if (r < 80) {
      if (a.length == 1) return {Iova(a.iova), 2};
      return src.below(2) ? std::pair{Iova(a.iova + 1), a.length - 1} : std::pair{Iova(a.iova), a.length - 1};
    }
    return {Iova(a.iova - std::min(a.iova, src.below(2 * kPage))), a.length + src.below(4 * kPage)};
  }

  template <class Src>
  std::optional<std::string> do_unmap(Src& src, int w) {
    const auto [iova, len] = pick_range(src, w);
    last_op_ = fmt::format("ioas{}.unmap({}, {:#x})", w, iova, len);
    return compare("unmap", ioas_[w]->unmap(iova, len), model_[w].unmap(iova, len));
  }

  template <class Src>
  std::optional<std::string> do_copy(Src& src, int to) {
    const int from = static_cast<int>(src.below(2));
    const auto [iova, len] = pick_range(src, from);
    std::optional<Iova> dst;
    if (src.below(3) == 0) {
      // A fixed destination, congruent with the source most of the time.
      dst = pick_fixed(src, to, Gpa(iova.value()), len == 0 ? kPage : len);
    }
    last_op_ = fmt::format("ioas{}.copy(ioas{}, {}, {:#x}, {})", to, from, iova, len,
                           dst ? fmt::format("{}", *dst) : std::string("auto"));
    return compare("copy", ioas_[to]->copy(*ioas_[from], iova, len, dst), model_[to].copy(model_[from], iova, len, dst));
  }

  template <class Src>
  std::vector<IovaRange> pick_reserved(Src& src, int w) {
    std::vector<IovaRange> v;
    const uint64_t n = src.below(3);
    for (uint64_t k = 0; k < n; ++k) {
      const uint64_t r = src.below(100);
      if (r < 40) {
        v.push_back({Iova(0xfee00000), Iova(0xfeefffff)});
      } else if (r < 70 && !model_[w].areas().empty()) {
        const auto& areas = model_[w].areas();
        const auto& a = areas[src.below(areas.size())];
        const uint64_t start = a.page_last() + 1 + src.below(4) * kPage - (src.below(4) == 0 ? kPage : 0);
        v.push_back({Iova(start), Iova(start + src.below(8 * kPage))});   // unaligned last: rounded up
      } else if (r < 95) {
        const uint64_t start = src.below(kArena);
        v.push_back({Iova(start), Iova(start + src.below(k2M))});
      } else {
        v.push_back({Iova(0x5000), Iova(0x4000)});   // start > last
      }
    }
    return v;
  }

  template <class Src>
  std::optional<std::string> do_attach(Src& src, int w) {
    const DeviceId dev{static_cast<uint32_t>(1 + src.below(6))};
    const std::vector<IovaRange> ranges = pick_reserved(src, w);
    last_op_ = fmt::format("domain{}.attach_device({}, {} ranges)", w, dev.value, ranges.size());
    const Result<void> got = domain_[w]->attach_device(dev, ranges);
    Result<void> want;
    if (attached_[w].count(dev.value) != 0) {
      want = make_error(IommuErrc::kInvalidArgument, "harness: already attached");
    } else {
      want = model_[w].add_reserved(ReservationOwner::device(dev), ranges);
      if (want) attached_[w].insert(dev.value);
    }
    return compare("attach", got, want);
  }

  template <class Src>
  std::optional<std::string> do_detach(Src& src, int w) {
    const DeviceId dev{static_cast<uint32_t>(1 + src.below(6))};
    last_op_ = fmt::format("domain{}.detach_device({})", w, dev.value);
    const Result<void> got = domain_[w]->detach_device(dev);
    Result<void> want;
    if (attached_[w].erase(dev.value) == 0) {
      want = make_error(IommuErrc::kInvalidArgument, "harness: not attached");
    } else {
      model_[w].remove_reserved(ReservationOwner::device(dev));
    }
    return compare("detach", got, want);
  }

  template <class Src>
  std::optional<std::string> do_allow(Src& src, int w) {
    std::vector<IovaRange> v;
    const uint64_t r = src.below(100);
    if (r < 25) {
      // Everything: always succeeds.
    } else if (r < 65) {
      static constexpr uint64_t kLimits[] = {uint64_t{16} << 20, uint64_t{64} << 20, uint64_t{256} << 20,
                                             uint64_t{4} << 30, kArena};
      v.push_back({Iova(0), Iova(kLimits[src.below(5)] - 1)});
      if (src.below(2)) v.push_back({Iova(uint64_t{1} << 40), Iova((uint64_t{1} << 40) + k1G - 1)});
    } else if (r < 90) {
      for (uint64_t k = 1 + src.below(3); k > 0; --k) {
        const uint64_t start = src.below(kArena / k2M) * k2M;
        v.push_back({Iova(start), Iova(start + (1 + src.below(64)) * k2M - 1)});
      }
    } else if (r < 95) {
      v.push_back({Iova(0x1000), Iova(0x1fff + src.below(2) * 0x800)});   // maybe misaligned
    } else {
      v.push_back({Iova(0x200000), Iova(0x1fffff)});   // start > last
    }
    last_op_ = fmt::format("ioas{}.allow_iovas({} ranges)", w, v.size());
    return compare("allow", ioas_[w]->allow_iovas(v), model_[w].allow_iovas(v));
  }

  std::array<std::unique_ptr<IoAddressSpace>, 2> ioas_;
  std::array<std::unique_ptr<PagingDomain>, 2> domain_;
  std::array<IoasModel, 2> model_;
  std::array<std::set<uint32_t>, 2> attached_;
  std::map<std::string, uint64_t> outcomes_;
  std::string last_op_;
};

}  // namespace vdma::testing
