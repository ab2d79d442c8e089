// IoAddressSpace (IOAS): an iommufd-style IO address space. It maps IOVA
// ranges to guest-physical sources and keeps every attached domain's page
// table in sync.
//
//   auto ioas = IoAddressSpace::create();
//   Iova a = *ioas->map(Gpa{0x10000}, 0x3000, Access::kRead);            // "don't care": iova:0x4000... picked
//   Iova b = *ioas->map(Gpa{0x20000}, 0x1000, Access::kReadWrite, Iova{0x100000});   // fixed
//   ioas->unmap(b, 0x1000);                                             // -> 0x1000 bytes
//   IovaRanges r = ioas->iova_ranges();                                 // usable ranges, alignment 4 KiB
//   ioas->add_reserved(ReservationOwner::device(DeviceId{1}),
//                      {{IovaRange{Iova{0xfee00000}, Iova{0xfeefffff}}}});   // MSI window
//
// Vocabulary (iommufd's): a *mapping* (iommufd "area") is what one map() or
// copy() created. *Allowed* ranges restrict where mappings may go (empty:
// the whole 64-bit space); *reserved* ranges belong to an owner (an attached
// device's MSI window and IO holes, a domain's addresses beyond its page
// table's reach) and are never mapped. The *usable* ranges are the allowed
// ranges minus every reserved range. Invariant: every mapping lies inside the
// usable ranges, and no two mappings share a 4 KiB IOVA page.
//
// Sources and page granularity. The granule is 4 KiB. A source need not be
// page aligned and a length need not be a page multiple: as in iommufd, the
// in-page offset is preserved (iova % 4 KiB == source % 4 KiB) and the
// mapping occupies the whole pages around it, [align_down(iova),
// align_up(iova + length)). The device can therefore reach the rest of the
// first and last page, exactly as with Linux's dma-iommu; callers that must
// not expose neighbouring bytes map page-aligned buffers. Unmap and copy
// work on the byte ranges that map() returned. Sources must end below 2^52,
// the output width of the page-table format.
//
// How map() picks an IOVA ("don't care"): alignment = min(roundup_pow2(length),
// lowest set bit of source) (source 0: roundup_pow2(length)), clamped to
// [4 KiB, 1 GiB], which lets a 2 MiB- or 1 GiB-aligned source land on huge
// leaves; then the lowest aligned page that starts a free run of usable
// pages big enough, never IOVA page 0. The in-page offset is added to it.
//
// Differences from iommufd, on purpose: fixed maps must also lie inside the
// allowed ranges (iommufd checks only reserved ranges there); allow_iovas()
// fails when an existing mapping would fall outside the new set; allowed and
// reserved ranges may overlap (usable = allowed minus reserved) instead of
// refusing each other; unmap() checks the whole request before removing
// anything, so a failed unmap changes nothing.
//
// Lifetime: domains attached to an IOAS (attach_mirror) must be detached
// before it is destroyed; destroying it with mirrors attached is a bug
// (VDMA_CHECK).
// Thread safety: none. The owner serialises every call (IommuDma holds its
// lock around them); mirrors are called synchronously from map/unmap/copy.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/iommu/errors.h"
#include "vdma/mem/device_memory.h"

namespace vdma {

class IovaFreeTree;

inline constexpr uint64_t kIovaGranule = 4096;                // IOVA_RANGES alignment
inline constexpr uint64_t kMaxAutoIovaAlignment = 1ull << 30;  // the largest huge-leaf size
inline constexpr uint64_t kSourceLimit = 1ull << 52;           // sources end below this

// An inclusive IOVA range [start, last], as iommufd's struct iommu_iova_range,
// so that the top of the 64-bit space is expressible.
struct IovaRange {
  Iova start;
  Iova last;

  // Precondition: len > 0 and start + len - 1 does not wrap.
  [[nodiscard]] static constexpr IovaRange of(Iova start, uint64_t len) noexcept {
    return {start, Iova(start.value() + (len - 1))};
  }
  [[nodiscard]] constexpr bool contains(Iova a) const noexcept { return start <= a && a <= last; }
  [[nodiscard]] constexpr bool contains(const IovaRange& o) const noexcept { return start <= o.start && o.last <= last; }
  [[nodiscard]] constexpr bool overlaps(const IovaRange& o) const noexcept { return start <= o.last && o.start <= last; }
  constexpr bool operator==(const IovaRange&) const noexcept = default;
};

// IOMMU_IOAS_IOVA_RANGES: where map() may place mappings right now.
struct IovaRanges {
  std::vector<IovaRange> ranges;       // sorted, disjoint, non-adjacent
  uint64_t alignment = kIovaGranule;  // IOVA granule; a fixed iova is congruent to its source modulo this
};

// A device behind the IOMMU (a PCI requester id, a stream id, ...).
struct DeviceId {
  uint32_t value = 0;
  constexpr auto operator<=>(const DeviceId&) const noexcept = default;
};

// Who holds a reserved range: an attached device, a domain (its aperture),
// or the DMA API of a domain (the IOVA window whose page-table entries the
// IOMMU DMA ops manage themselves, PagingDomain::map_pages).
struct ReservationOwner {
  enum class Kind : uint8_t { kDevice, kDomain, kDmaApi };
  Kind kind = Kind::kDevice;
  uint64_t id = 0;

  [[nodiscard]] static constexpr ReservationOwner device(DeviceId d) noexcept { return {Kind::kDevice, d.value}; }
  [[nodiscard]] static constexpr ReservationOwner domain(uint64_t id) noexcept { return {Kind::kDomain, id}; }
  [[nodiscard]] static constexpr ReservationOwner dma_api(uint64_t id) noexcept { return {Kind::kDmaApi, id}; }
  constexpr bool operator==(const ReservationOwner&) const noexcept = default;
};

// One mapping, as created by map() or copy().
struct IoasMapping {
  Iova iova;            // first byte; congruent to source modulo kIovaGranule
  uint64_t length = 0;  // bytes, > 0
  Gpa source;
  Access perms = Access::kNone;

  // The whole IOVA pages the mapping occupies.
  [[nodiscard]] constexpr IovaRange pages() const noexcept {
    return {Iova(align_down(iova.value(), kIovaGranule)),
            Iova(align_down(iova.value() + (length - 1), kIovaGranule) + (kIovaGranule - 1))};
  }
  // The source page that backs pages().start.
  [[nodiscard]] constexpr Gpa source_page() const noexcept { return Gpa(align_down(source.value(), kIovaGranule)); }
  [[nodiscard]] constexpr Iova last() const noexcept { return Iova(iova.value() + (length - 1)); }
  constexpr bool operator==(const IoasMapping&) const noexcept = default;
};

// Receives every mapping change of an IOAS (implemented by PagingDomain).
// The IOAS validates everything first, so a mirror has no way to refuse.
class IoasMirror {
 public:
  virtual ~IoasMirror() = default;
  virtual void mirror_map(const IoasMapping& m) = 0;
  virtual void mirror_unmap(const IoasMapping& m) = 0;
};

class IoAddressSpace {
 public:
  // IOMMU_IOAS_ALLOC: an empty IOAS, everything allowed, nothing reserved.
  [[nodiscard]] static std::unique_ptr<IoAddressSpace> create();
  IoAddressSpace();
  ~IoAddressSpace();
  IoAddressSpace(const IoAddressSpace&) = delete;
  IoAddressSpace& operator=(const IoAddressSpace&) = delete;

  // IOMMU_IOAS_IOVA_RANGES.
  [[nodiscard]] IovaRanges iova_ranges() const;

  // IOMMU_IOAS_ALLOW_IOVAS: replaces the allowed set (empty: everything).
  // Each range's start and last + 1 are 4 KiB aligned; ranges may come in
  // any order but must not overlap.
  // Errors: IommuErrc::kInvalidArgument (start > last, overlapping ranges),
  // kMisaligned, kConflict (an existing mapping would lie outside; names it).
  [[nodiscard]] Result<void> allow_iovas(std::span<const IovaRange> ranges);
  [[nodiscard]] const std::vector<IovaRange>& allowed_iovas() const noexcept { return allowed_; }

  // Reserves ranges for `owner`, rounded outwards to 4 KiB pages. Ranges of
  // several owners may overlap. All or nothing.
  // Errors: IommuErrc::kInvalidArgument (start > last), kConflict (a range
  // overlaps an existing mapping; names both).
  [[nodiscard]] Result<void> add_reserved(ReservationOwner owner, std::span<const IovaRange> ranges);
  // Drops every range `owner` reserved (none: no effect).
  void remove_reserved(ReservationOwner owner);

  // IOMMU_IOAS_MAP: maps [source, source+length) with `perms` at `fixed`, or
  // at an IOVA chosen as described above. Returns the IOVA of `source`.
  // Errors, checked in this order:
  //   IommuErrc::kInvalidArgument  perms kNone; length 0
  //   BaseErrc::kOverflow          source + length wraps
  //   IommuErrc::kInvalidArgument  source + length beyond 2^52
  //   BaseErrc::kOverflow          fixed + length wraps
  //   IommuErrc::kMisaligned       fixed % 4 KiB != source % 4 KiB
  //   IommuErrc::kReserved         a page of the fixed range is not usable (names it)
  //   IommuErrc::kAlreadyMapped    a page of the fixed range is mapped (names the mapping)
  //   IommuErrc::kNoSpace          "don't care" found no aligned free run
  [[nodiscard]] Result<Iova> map(Gpa source, uint64_t length, Access perms, std::optional<Iova> fixed = std::nullopt);

  // IOMMU_IOAS_UNMAP: removes every mapping inside [iova, iova+length); the
  // range must cover each mapping it touches entirely (mappings are never
  // split). Returns the bytes unmapped (the sum of their lengths).
  // Errors: IommuErrc::kInvalidArgument (length 0), BaseErrc::kOverflow,
  // IommuErrc::kNotMapped (no mapping touched), kWouldSplit (names the
  // lowest mapping the range cuts). On error nothing is unmapped.
  [[nodiscard]] Result<uint64_t> unmap(Iova iova, uint64_t length);
  // Removes every mapping; returns the bytes unmapped (0 when empty).
  uint64_t unmap_all();

  // IOMMU_IOAS_COPY: maps again, into this IOAS, the mappings that exactly
  // tile [src_iova, src_iova+length) of `from` (one or several whole,
  // byte-contiguous mappings), with the same sources and permissions, at
  // `dst` or at a "don't care" IOVA (aligned for the first mapping's source
  // and the whole length). `from` may be this IOAS. Returns the IOVA of src_iova.
  // Errors: IommuErrc::kInvalidArgument (length 0), BaseErrc::kOverflow;
  // from `from`, walking up from src_iova: kWouldSplit (a mapping sticks
  // out of the range), kNotMapped (a byte of the range is not mapped); then
  // the placement errors of map() (kOverflow, kMisaligned, kReserved,
  // kAlreadyMapped, kNoSpace).
  [[nodiscard]] Result<Iova> copy(const IoAddressSpace& from, Iova src_iova, uint64_t length,
                                  std::optional<Iova> dst = std::nullopt);

  // The mapping whose pages contain `iova`.
  [[nodiscard]] std::optional<IoasMapping> find(Iova iova) const;
  // Every mapping in IOVA order.
  [[nodiscard]] std::vector<IoasMapping> mappings() const;
  [[nodiscard]] size_t mapping_count() const noexcept { return areas_.size(); }

  // For domains. Reserves `reserve` for the mirror (a domain aperture: the
  // IOVAs its page table cannot hold), then replays every mapping into it;
  // from then on the mirror sees every map and unmap. Returns the owner under
  // which `reserve` was recorded.
  // Errors: IommuErrc::kConflict (a reserved range overlaps a mapping),
  // kInvalidArgument (mirror already attached).
  [[nodiscard]] Result<ReservationOwner> attach_mirror(IoasMirror& mirror, std::span<const IovaRange> reserve);
  // Drops the mirror's reservation; the mirror keeps whatever it mirrored.
  void detach_mirror(IoasMirror& mirror);

 private:
  struct Area {
    uint64_t length = 0;
    Gpa source;
    Access perms = Access::kNone;
  };
  using AreaMap = std::map<uint64_t, Area>;  // key: first byte (IOVA)

  struct Reservation {
    ReservationOwner owner;
    IovaRange range;  // page-rounded
  };

  [[nodiscard]] static IoasMapping mapping_of(AreaMap::const_iterator it) noexcept;
  // The lowest mapping whose bytes intersect [first, last], or end().
  [[nodiscard]] AreaMap::const_iterator first_intersecting(uint64_t first, uint64_t last) const;
  // The lowest mapping whose pages intersect `pages`, or end().
  [[nodiscard]] AreaMap::const_iterator first_in_pages(const IovaRange& pages) const;
  [[nodiscard]] Result<void> check_fixed(Iova iova, uint64_t length, uint64_t offset) const;
  [[nodiscard]] Result<Iova> place(Gpa align_source, uint64_t in_page_offset, uint64_t length,
                                   std::optional<Iova> fixed);
  void insert_area(const IoasMapping& m);
  // Removes a mapping, frees its pages and tells the mirrors; returns the next one.
  AreaMap::iterator erase_area(AreaMap::iterator it);
  void rebuild_usable();

  AreaMap areas_;
  std::vector<IovaRange> allowed_;        // empty: everything
  std::vector<Reservation> reserved_;
  std::vector<IovaRange> usable_;         // allowed minus reserved, merged
  std::unique_ptr<IovaFreeTree> free_;    // usable minus the pages of areas_
  struct MirrorEntry {
    IoasMirror* mirror;
    ReservationOwner owner;
  };
  std::vector<MirrorEntry> mirrors_;
  uint64_t next_domain_id_ = 1;
};

}  // namespace vdma

template <>
struct fmt::formatter<vdma::IovaRange> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(const vdma::IovaRange& r, Ctx& ctx) const {
    return fmt::format_to(ctx.out(), "[{}, {}]", r.start, r.last);
  }
};

template <>
struct fmt::formatter<vdma::ReservationOwner> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(const vdma::ReservationOwner& o, Ctx& ctx) const {
    switch (o.kind) {
      case vdma::ReservationOwner::Kind::kDevice: return fmt::format_to(ctx.out(), "device {}", o.id);
      case vdma::ReservationOwner::Kind::kDomain: return fmt::format_to(ctx.out(), "domain {} aperture", o.id);
      case vdma::ReservationOwner::Kind::kDmaApi: return fmt::format_to(ctx.out(), "DMA API window {}", o.id);
    }
    return fmt::format_to(ctx.out(), "owner {}", o.id);
  }
};

template <>
struct fmt::formatter<vdma::IoasMapping> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(const vdma::IoasMapping& m, Ctx& ctx) const {
    return fmt::format_to(ctx.out(), "mapping {} + {:#x} -> {} ({})", m.iova, m.length, m.source, vdma::to_string(m.perms));
  }
};
