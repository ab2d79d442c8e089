#include "vdma/iommu/device_iotlb.h"

#include <algorithm>
#include <memory>
#include <optional>

#include "iotlb_table.h"
#include "vdma/iommu/ring_cache.h"

namespace vdma {
namespace {

using detail::IotlbEntry;
using detail::IotlbTable;

// Snapshots retired without a grace period wait for a poll; past this many
// the next writer waits for a full grace period instead, so memory stays bounded.
constexpr size_t kMaxRetired = 64;
// Evicted ranges remembered until the next grace period; past this many every
// range counts as recently evicted.
constexpr size_t kMaxEvictedRanges = 64;

// Collects a lookup into IotlbLookup.
struct LookupVisitor {
  Access access;
  IotlbLookup& out;
  bool mapped(const IotlbEntry& e, uint64_t from, uint64_t to) {
    const uint64_t off = from - e.first;
    if (permits(e.perms, access)) {
      out.fragments.push_back(IotlbFragment{Iova(from), to - from + 1, FrontVa(e.uaddr + off), e.host + off, e.perms});
    } else {
      out.permission_failures.push_back(AddrRange<Iova>{Iova(from), to - from + 1});
    }
    return true;
  }
  bool missing(uint64_t from, uint64_t to) {
    out.misses.push_back(AddrRange<Iova>{Iova(from), to - from + 1});
    return true;
  }
};

// Appends host fragments for translate(), merging host-contiguous pieces, and
// stops at the first failure.
struct TranslateVisitor {
  Access access;
  bool append;                 // false for len 0: check only
  std::vector<Fragment>& out;
  size_t first_out;            // fragments before this index belong to the caller
  enum class Failure : uint8_t { kNone, kMissing, kDenied } failure = Failure::kNone;
  uint64_t fail_at = 0;
  Access fail_perms = Access::kNone;

  bool mapped(const IotlbEntry& e, uint64_t from, uint64_t to) {
    if (!permits(e.perms, access)) {
      failure = Failure::kDenied;
      fail_at = from;
      fail_perms = e.perms;
      return false;
    }
    if (!append) return true;
    std::byte* host = e.host + (from - e.first);
    const uint64_t len = to - from + 1;
    if (out.size() > first_out && out.back().host + out.back().len == host) {
      out.back().len += len;
    } else {
      out.push_back(Fragment{host, len});
    }
    return true;
  }
  bool missing(uint64_t from, uint64_t) {
    failure = Failure::kMissing;
    fail_at = from;
    return false;
  }
};

// push_back with everything it calls inlined (flatten), small enough for
// g++ to inline into lookup(): g++ otherwise keeps vector::push_back out of
// line there, and that call was a quarter of a hit's cost.
template <class T>
[[gnu::flatten]] inline void push_inline(std::vector<T>& v, const T& x) {
  v.push_back(x);
}

[[gnu::cold]] [[gnu::noinline]] Error lookup_wraps(Iova iova, uint64_t len) {
  return make_error(BaseErrc::kOverflow, "IOTLB lookup {} + len {:#x} wraps past 2^64", iova, len);
}

// lookup() beyond its one-entry fast path: every fragment, miss and
// permission failure of [first, last]. Out of line so the fast path stays small.
[[gnu::noinline]] bool lookup_walk(const IotlbTable& t, detail::ReaderSlot& slot, uint64_t first, uint64_t last,
                                   Access access, IotlbLookup& out) {
  LookupVisitor v{access, out};
  detail::walk(t, first, last, v);
  if (!out.misses.empty()) {
    detail::count(slot.misses);
  } else if (!out.permission_failures.empty()) {
    detail::count(slot.permission_failures);
  } else {
    detail::count(slot.hits);
    return true;
  }
  return false;
}

// A transient section (ReadDomain::enter_transient) for one call.
class TransientSection {
 public:
  explicit TransientSection(const ReadDomain& domain) : domain_(domain), slot_(domain.enter_transient()) {}
  ~TransientSection() { domain_.exit_transient(slot_); }
  TransientSection(const TransientSection&) = delete;
  TransientSection& operator=(const TransientSection&) = delete;
  [[nodiscard]] detail::ReaderSlot& slot() const noexcept { return slot_; }

 private:
  const ReadDomain& domain_;
  detail::ReaderSlot& slot_;
};

void check_not_in_section() {
  VDMA_CHECK(detail::tls_sections.open == 0,
             "DeviceIotlb writer called inside a ReadSection: it may have to wait for that section");
}

}  // namespace

struct DeviceIotlb::Retired {
  std::unique_ptr<const IotlbTable> table;
  GracePoll poll;  // the sections open when `table` was replaced
};

DeviceIotlb::DeviceIotlb(DeviceIotlbOptions options)
    : options_(options), domain_(options.max_readers), table_(new IotlbTable()) {
  VDMA_CHECK(options.max_entries >= 1, "DeviceIotlb needs max_entries >= 1");
}

DeviceIotlb::~DeviceIotlb() {
  {
    std::lock_guard lock(views_mutex_);
    VDMA_CHECK(views_.empty(), "DeviceIotlb destroyed while an IotlbQueueView still uses it");
  }
  VDMA_CHECK(domain_.registered_readers() == 0, "DeviceIotlb destroyed while a ReaderHandle still uses it");
  delete table_.load(std::memory_order_acquire);
}

Result<std::pair<uint64_t, uint64_t>> DeviceIotlb::message_range(std::string_view what, Iova iova, uint64_t size) {
  if (size == 0) return make_error(IommuErrc::kInvalidArgument, "IOTLB {} {} + size 0: empty range", what, iova);
  if (!fits(iova, size)) {
    return make_error(BaseErrc::kOverflow, "IOTLB {} {} + size {:#x} wraps past 2^64", what, iova, size);
  }
  return std::pair<uint64_t, uint64_t>(iova.value(), iova.value() + (size - 1));
}

Result<void> DeviceIotlb::insert(Iova iova, uint64_t size, FrontVa uaddr, std::byte* host, Access perms) {
  check_not_in_section();
  auto [first, last] = VDMA_TRY(message_range("update", iova, size));
  if (perms == Access::kNone) {
    return make_error(IommuErrc::kInvalidArgument, "IOTLB update {} + size {:#x}: no access permitted", iova, size);
  }
  if (host == nullptr) {
    return make_error(IommuErrc::kInvalidArgument, "IOTLB update {} + size {:#x} ({}): no host mapping", iova, size,
                      uaddr);
  }
  if (!fits(uaddr, size)) {
    return make_error(BaseErrc::kOverflow, "IOTLB update {}: {} + size {:#x} wraps past 2^64", iova, uaddr, size);
  }

  std::lock_guard lock(writer_mutex_);
  std::vector<IotlbEntry> next = table_.load(std::memory_order_relaxed)->entries;  // only writers store, under the lock
  const uint64_t seq = next_seq_.load(std::memory_order_relaxed);
  next_seq_.store(seq + 1, std::memory_order_release);
  const IotlbEntry entry{first, last, uaddr.value(), host, seq, perms};
  const detail::Removal removal = detail::remove_range(next, first, last, &entry);
  detail::insert_sorted(next, entry);
  // Checked before this insert's own evictions, which never overlap [first, last].
  bool wait = removal.changed_any || overlaps_recent_eviction(first, last);
  evict_over_limit(next, entry.seq);
  publish(std::move(next));
  wait |= bump_views(first, last);
  finish_write(wait);
  return ok();
}

Result<void> DeviceIotlb::invalidate(Iova iova, uint64_t size) {
  check_not_in_section();
  auto [first, last] = VDMA_TRY(message_range("invalidate", iova, size));

  std::lock_guard lock(writer_mutex_);
  std::vector<IotlbEntry> next = table_.load(std::memory_order_relaxed)->entries;
  const detail::Removal removal = detail::remove_range(next, first, last, nullptr);
  bool wait = removal.removed_any || overlaps_recent_eviction(first, last);
  if (removal.removed_any) {
    note_removed(removal.newest_seq);
    evict_over_limit(next, 0);  // cutting an entry in two may exceed the limit
    publish(std::move(next));
  }
  wait |= bump_views(first, last);
  finish_write(wait);
  return ok();
}

void DeviceIotlb::invalidate_all() {
  check_not_in_section();
  std::lock_guard lock(writer_mutex_);
  // Every entry there is was inserted before the next number.
  note_removed(next_seq_.load(std::memory_order_relaxed) - 1);
  publish({});
  {
    std::lock_guard views_lock(views_mutex_);
    for (IotlbQueueView* v : views_) v->bump_epoch(IotlbQueueView::WriterKey());
  }
  finish_write(true);
}

size_t DeviceIotlb::forget(std::span<const AddrRange<Iova>> ranges) {
  check_not_in_section();
  std::lock_guard lock(writer_mutex_);
  return forget_locked(ranges);
}

std::optional<size_t> DeviceIotlb::try_forget(std::span<const AddrRange<Iova>> ranges) {
  check_not_in_section();
  std::unique_lock lock(writer_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return std::nullopt;
  return forget_locked(ranges);
}

size_t DeviceIotlb::forget_locked(std::span<const AddrRange<Iova>> ranges) {
  const std::vector<IotlbEntry>& current = table_.load(std::memory_order_relaxed)->entries;
  // Most completions touch entries already dropped by an earlier forget (or
  // never inserted, on a miss): find out before copying the table.
  auto overlaps = [&](const IotlbEntry& e) {
    return std::any_of(ranges.begin(), ranges.end(), [&](const AddrRange<Iova>& r) {
      return r.len != 0 && r.start.value() <= e.last && e.first <= r.last().value();
    });
  };
  if (std::none_of(current.begin(), current.end(), overlaps)) return 0;
  std::vector<IotlbEntry> next;
  next.reserve(current.size());
  size_t dropped = 0;
  for (const IotlbEntry& e : current) {
    if (!overlaps(e)) {
      next.push_back(e);
      continue;
    }
    ++dropped;
    note_removed(e.seq);
    // Like an eviction: readers may still use this translation, so an
    // insert over its range must wait for them as if it replaced it.
    if (evicted_since_sync_.size() < kMaxEvictedRanges) {
      evicted_since_sync_.push_back(AddrRange<Iova>{Iova(e.first), e.last - e.first + 1});
    } else {
      evicted_overflow_ = true;
    }
  }
  forgotten_.fetch_add(dropped, std::memory_order_relaxed);
  publish(std::move(next));
  finish_write(false);
  return dropped;
}

void DeviceIotlb::publish(std::vector<IotlbEntry> next) {
  entry_count_.store(next.size(), std::memory_order_relaxed);
  auto* table = new IotlbTable(detail::make_table(std::move(next)));
  // seq_cst: the store must precede the views' epoch bumps and the
  // grace-period scan in the single total order (read_section.h); it is also
  // a release, so a reader that loads the pointer sees the whole table.
  const IotlbTable* old = table_.exchange(table, std::memory_order_seq_cst);
  retired_.push_back(Retired{std::unique_ptr<const IotlbTable>(old), domain_.start_poll()});
}

void DeviceIotlb::evict_over_limit(std::vector<IotlbEntry>& next, uint64_t keep_seq) {
  while (next.size() > options_.max_entries) {
    std::optional<IotlbEntry> victim = detail::evict_oldest(next, keep_seq);
    VDMA_CHECK(victim.has_value(), "IOTLB over its limit with nothing to evict");
    evictions_.fetch_add(1, std::memory_order_relaxed);
    note_removed(victim->seq);
    // Readers may still use the evicted translation; an insert over its range
    // must then wait for them as if it replaced it.
    if (evicted_since_sync_.size() < kMaxEvictedRanges) {
      evicted_since_sync_.push_back(AddrRange<Iova>{Iova(victim->first), victim->last - victim->first + 1});
    } else {
      evicted_overflow_ = true;
    }
  }
}

void DeviceIotlb::note_removed(uint64_t seq) noexcept {
  // Release, and before the publish() whose seq_cst exchange removes the
  // entries: a reader that sees the new table sees this too.
  if (seq > newest_removed_seq_.load(std::memory_order_relaxed)) {
    newest_removed_seq_.store(seq, std::memory_order_release);
  }
}

bool DeviceIotlb::overlaps_recent_eviction(uint64_t first, uint64_t last) const {
  if (evicted_overflow_) return true;
  return std::any_of(evicted_since_sync_.begin(), evicted_since_sync_.end(), [&](const AddrRange<Iova>& r) {
    return r.start.value() <= last && first <= r.last().value();
  });
}

bool DeviceIotlb::bump_views(uint64_t first, uint64_t last) {
  std::lock_guard lock(views_mutex_);
  bool any = false;
  for (IotlbQueueView* v : views_) {
    if (v->overlaps_ring(IotlbQueueView::WriterKey(), first, last)) {
      v->bump_epoch(IotlbQueueView::WriterKey());
      any = true;
    }
  }
  return any;
}

void DeviceIotlb::finish_write(bool wait) {
  if (wait) {
    domain_.synchronize();
    // Requests with I/O in flight keep using what they translated after
    // their section ended (ReadSection::pin): wait for those too.
    domain_.wait_for_pins();
    grace_periods_.fetch_add(1, std::memory_order_relaxed);
    retired_.clear();
    evicted_since_sync_.clear();
    evicted_overflow_ = false;
    return;
  }
  if (retired_.size() > kMaxRetired) {
    // Only the snapshots are freed here. This may run on a worker that holds
    // pins (forget), so no pin wait: the recorded evictions stay, and an
    // insert over them still waits for the pins.
    domain_.synchronize();
    retired_.clear();
    return;
  }
  std::erase_if(retired_, [this](Retired& r) { return domain_.poll_done(r.poll); });
}

Result<bool> DeviceIotlb::lookup(const ReadSection& section, Iova iova, uint64_t len, Access access,
                                 IotlbLookup& out) const {
  // A section of another IOTLB would protect nothing here.
  VDMA_CHECK(&section.domain() == &domain_, "DeviceIotlb::lookup with a ReadSection of another IOTLB");
  out.clear();
  if (!fits(iova, len)) return lookup_wraps(iova, len);
  if (len == 0) return true;
  // Acquire: pairs with publish(); the section entry's fence makes this load
  // see any table published before a grace period that does not wait for us.
  const IotlbTable& t = *table_.load(std::memory_order_acquire);
  const uint64_t first = iova.value();
  const uint64_t last = first + (len - 1);
  detail::ReaderSlot& slot = section.slot();
  // Fast path: one entry covers the whole range and allows the access.
  if (const size_t i = t.seek(first, slot.hint); i < t.entries.size()) {
    const IotlbEntry& e = t.entries[i];
    if (e.first <= first && last <= e.last && permits(e.perms, access)) [[likely]] {
      const uint64_t off = first - e.first;
      const IotlbFragment f{iova, len, FrontVa(e.uaddr + off), e.host + off, e.perms};
      push_inline(out.fragments, f);  // the caller reuses `out`: no allocation once it has room
      detail::count(slot.hits);
      slot.hint = i;
      return true;
    }
  }
  return lookup_walk(t, slot, first, last, access, out);
}

Result<void> DeviceIotlb::translate(DmaAddr addr, uint64_t len, Access access, std::vector<Fragment>& out) const {
  if (detail::ReaderSlot* slot = domain_.current_thread_slot()) {
    return translate_in(*slot, Iova(addr.value()), len, access, out);
  }
  TransientSection section(domain_);
  return translate_in(section.slot(), Iova(addr.value()), len, access, out);
}

Result<void> DeviceIotlb::translate_in(detail::ReaderSlot& slot, Iova iova, uint64_t len, Access access,
                                       std::vector<Fragment>& out) const {
  if (!fits(iova, len)) {
    return make_error(BaseErrc::kOverflow, "{} + len {:#x} wraps past 2^64", iova, len);
  }
  const IotlbTable& t = *table_.load(std::memory_order_acquire);  // as in lookup()
  const uint64_t first = iova.value();
  // len 0: the address itself must be mapped (DeviceMemory's contract).
  const uint64_t last = first + (len == 0 ? 0 : len - 1);
  if (const size_t i = t.seek(first, slot.hint); i < t.entries.size() && len != 0) {  // fast path, as in lookup()
    const IotlbEntry& e = t.entries[i];
    if (e.first <= first && last <= e.last && permits(e.perms, access)) {
      push_inline(out, Fragment{e.host + (first - e.first), len});
      detail::count(slot.hits);
      slot.hint = i;
      return ok();
    }
  }
  TranslateVisitor v{access, len != 0, out, out.size()};
  detail::walk(t, first, last, v);
  switch (v.failure) {
    case TranslateVisitor::Failure::kNone:
      detail::count(slot.hits);
      return ok();
    case TranslateVisitor::Failure::kMissing:
      detail::count(slot.misses);
      out.resize(v.first_out);
      return make_error(MemErrc::kNotMapped, "{} + len {:#x}: {} is not mapped", iova, len, Iova(v.fail_at));
    case TranslateVisitor::Failure::kDenied:
      detail::count(slot.permission_failures);
      out.resize(v.first_out);
      return make_error(MemErrc::kPermissionDenied, "{} + len {:#x}: {} allows {}, not {}", iova, len,
                        Iova(v.fail_at), to_string(v.fail_perms), to_string(access));
  }
  return ok();
}

IotlbStats DeviceIotlb::stats() const {
  IotlbStats s;
  domain_.for_each_slot([&s](const detail::ReaderSlot& slot) {
    s.hits += slot.hits.load(std::memory_order_relaxed);
    s.misses += slot.misses.load(std::memory_order_relaxed);
    s.permission_failures += slot.permission_failures.load(std::memory_order_relaxed);
  });
  s.evictions = evictions_.load(std::memory_order_relaxed);
  s.forgotten = forgotten_.load(std::memory_order_relaxed);
  s.grace_periods = grace_periods_.load(std::memory_order_relaxed);
  s.entries = entry_count_.load(std::memory_order_relaxed);
  return s;
}

std::vector<IotlbFragment> DeviceIotlb::entries() const {
  std::vector<IotlbFragment> out;
  std::optional<TransientSection> section;
  if (domain_.current_thread_slot() == nullptr) section.emplace(domain_);
  const IotlbTable& t = *table_.load(std::memory_order_acquire);
  out.reserve(t.entries.size());
  for (const IotlbEntry& e : t.entries) {
    out.push_back(IotlbFragment{Iova(e.first), e.last - e.first + 1, FrontVa(e.uaddr), e.host, e.perms});
  }
  return out;
}

size_t DeviceIotlb::view_count() const {
  std::lock_guard lock(views_mutex_);
  return views_.size();
}

void DeviceIotlb::attach_view(ViewKey, IotlbQueueView* view) {
  std::lock_guard lock(views_mutex_);
  views_.push_back(view);
}

void DeviceIotlb::detach_view(ViewKey, IotlbQueueView* view) {
  std::lock_guard lock(views_mutex_);
  auto it = std::find(views_.begin(), views_.end(), view);
  VDMA_CHECK(it != views_.end(), "IotlbQueueView detached twice");
  views_.erase(it);
}

}  // namespace vdma
