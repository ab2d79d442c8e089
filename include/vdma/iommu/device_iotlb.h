// DeviceIotlb: the vhost-user back-end's cache of IOVA translations (the
// device IOTLB), filled by the front-end's IOTLB UPDATE messages and emptied
// by its INVALIDATEs (vhost-user.rst: "IOMMU support").
//
//   DeviceIotlb iotlb({.max_entries = 2048, .max_readers = 8});
//   // Control thread, on VHOST_IOTLB_UPDATE / VHOST_IOTLB_INVALIDATE:
//   VDMA_TRY(iotlb.insert(Iova{msg.iova}, msg.size, FrontVa{msg.uaddr}, host, Access::kRead));
//   VDMA_TRY(iotlb.invalidate(Iova{msg.iova}, msg.size));   // returns once no reader uses the old translation
//
//   // A worker thread:
//   ReaderHandle reader = *iotlb.register_reader();
//   IotlbLookup found;                                        // reused: no allocation once warm
//   {
//     ReadSection section(reader);
//     auto r = iotlb.lookup(section, Iova{addr}, len, Access::kWrite, found);
//     if (r && *r) { /* found.fragments: write through f.host, until the section ends */ }
//     else if (r) { /* found.misses, found.permission_failures: ask the front-end for exactly these */ }
//   }
//   // DeviceMemory users (the device-side virtqueue) call translate() inside
//   // a section the same way; DmaAddr is read as an Iova.
//
// Entries. An entry maps [iova, iova+size) to [uaddr, uaddr+size) in the
// front-end and [host, host+size) here, with permissions; any size and
// alignment (not only pages). Entries never overlap. An insert that overlaps
// existing entries replaces the overlapped parts: those entries are cut and
// the pieces outside the new range keep their translation (vhost-user gives
// no rule here; the newest UPDATE wins, as in rust-vmm's Iotlb). invalidate()
// removes exactly its range, cutting entries that cross its bounds.
//
// Size limit and eviction. At most max_entries entries. An edit that would
// exceed it (an insert, or an invalidate that cuts an entry in two) evicts
// the least recently inserted entry, never the one being inserted (Linux
// vhost's VHOST_IOTLB_FLAG_RETIRE policy). Pieces of a cut entry keep its
// insertion time. An evicted translation is still valid (the front-end did
// not revoke it); the next lookup of its range misses and the back-end asks
// again.
//
// THE GUARANTEE. When invalidate(), invalidate_all(), or an insert() that
// replaces a different translation, returns, no reader still uses a
// translation of the range it removed: every lookup that returned such a
// translation was made in a ReadSection that has ended, and every pin taken
// in such a section (ReadSection::pin) has been released. Readers must
// therefore use the host pointers inside the ReadSection of the lookup, or
// pin them there and release the pin when done (I/O in flight).
// translate() called outside any section of this IOTLB protects only its own
// lookup: the pointers it returns are not covered once it returns.
//
// How. The table is an immutable snapshot published through an atomic
// pointer. Writers serialise on a mutex, build the next snapshot, publish it,
// bump the epoch of every IotlbQueueView whose ring overlaps the edit, and
// then wait for a grace period of the ReadDomain (read_section.h) before
// returning: every section that could have seen the old snapshot has ended.
// Edits that take no translation away (an insert into a gap, the common
// MISS -> UPDATE case, or one that maps a range exactly as before) do not
// wait; the old snapshot is freed by a later grace period or poll.
//
// Cost model. Lookup: a load of the snapshot pointer; a check of the entry
// this reader hit last and of the one after it (a hot page, a sequential
// walk); otherwise a probe of the snapshot's page index (IOVA page -> the
// first entry touching it, for entries of at most 16 pages); otherwise a
// search of a static 16-ary tree over the entry starts (one block of 16
// independent compares per level: 1 level up to 16 entries, 2 up to 256, 3
// up to 4096); then a walk over the entries the range crosses. No lock, no atomic read-modify-write, no allocation once
// the output vectors have grown (hits and misses are counted in the reader's
// own cache line). A section costs a store and a fence to enter and a store
// to leave (read_section.h); translate() outside a section claims a pool
// slot with one CAS instead. Writers: an O(entries) copy of the table and
// rebuild of its index, plus,
// when they take translations away, one grace period, as long as the longest
// section open at that moment. Never wait for the front-end (e.g. for the
// UPDATE that answers a MISS) inside a section: the UPDATE may have to wait
// for that section (DPDK's deadlock from sending a MISS under its IOTLB lock
// becomes this rule).
//
// Lifetimes: every ReaderHandle and IotlbQueueView of an IOTLB must be
// destroyed before it (checked). Host pointers given to insert() must stay
// valid until the entry is invalidated or evicted and the grace period that
// follows has ended.
//
// Thread safety: all methods may be called concurrently. Writers (insert,
// invalidate, invalidate_all) must not be called by a thread inside any
// ReadSection (checked: it would wait for itself).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/iommu/errors.h"
#include "vdma/iommu/read_section.h"
#include "vdma/mem/device_memory.h"

namespace vdma {

namespace detail {
struct IotlbEntry;
struct IotlbTable;
}  // namespace detail

class IotlbQueueView;

struct DeviceIotlbOptions {
  size_t max_entries = 2048;   // >= 1
  uint32_t max_readers = 64;   // registered ReaderHandles, >= 1
};

// A piece of a looked-up range covered by one entry (also used to list the
// entries themselves, see entries()).
struct IotlbFragment {
  Iova iova;                 // first IOVA byte of the piece
  uint64_t len = 0;
  FrontVa uaddr;             // front-end VA of `iova`
  std::byte* host = nullptr; // host address of `iova`
  Access perms = Access::kNone;
  constexpr bool operator==(const IotlbFragment&) const noexcept = default;
};

// The answer to lookup(). The three vectors are in IOVA order and together
// cover the looked-up range exactly, without overlap.
struct IotlbLookup {
  std::vector<IotlbFragment> fragments;           // one per entry crossed that allows the access
  std::vector<AddrRange<Iova>> misses;            // maximal sub-ranges with no entry
  std::vector<AddrRange<Iova>> permission_failures;  // one per entry crossed that forbids the access
  void clear() noexcept {
    fragments.clear();
    misses.clear();
    permission_failures.clear();
  }
  [[nodiscard]] bool complete() const noexcept { return misses.empty() && permission_failures.empty(); }
};

struct IotlbStats {
  uint64_t hits = 0;                 // lookups/translates fully translated
  uint64_t misses = 0;               // ... that found a byte with no entry
  uint64_t permission_failures = 0;  // ... that found every byte mapped but some forbidding the access
  uint64_t evictions = 0;            // entries removed by the size limit
  uint64_t forgotten = 0;            // entries dropped by forget() (per-request policy)
  uint64_t grace_periods = 0;        // writer waits for readers (synchronize)
  uint64_t entries = 0;              // entries now
};

class DeviceIotlb final : public DeviceMemory {
 public:
  // Precondition (checked): max_entries >= 1, max_readers >= 1.
  explicit DeviceIotlb(DeviceIotlbOptions options = {});
  // Preconditions (checked): no ReaderHandle or IotlbQueueView left.
  ~DeviceIotlb() override;
  DeviceIotlb(const DeviceIotlb&) = delete;
  DeviceIotlb& operator=(const DeviceIotlb&) = delete;

  // A reader for one worker thread. Errors: IommuErrc::kLimitExceeded.
  [[nodiscard]] Result<ReaderHandle> register_reader() { return domain_.register_reader(); }

  // --- Writers (vhost-user IOTLB messages); serialised internally. ---

  // IOTLB UPDATE: maps [iova, iova+size) to uaddr/host with `perms`,
  // replacing the overlapped parts of existing entries (see above). Returns
  // after a grace period when it replaced a different translation, overlapped
  // a translation evicted since the last grace period, or overlapped a ring
  // recorded by an IotlbQueueView (whose epoch it bumps).
  // Errors: IommuErrc::kInvalidArgument (size 0, no permission, null host),
  // BaseErrc::kOverflow (iova+size wraps past 2^64). Nothing changes on error.
  [[nodiscard]] Result<void> insert(Iova iova, uint64_t size, FrontVa uaddr, std::byte* host, Access perms);

  // IOTLB INVALIDATE: removes exactly [iova, iova+size), cutting entries that
  // cross its bounds, and bumps the epoch of overlapping queue views. Returns
  // once no reader uses a translation of the range (THE GUARANTEE).
  // Errors: IommuErrc::kInvalidArgument (size 0), BaseErrc::kOverflow.
  [[nodiscard]] Result<void> invalidate(Iova iova, uint64_t size);

  // Removes every entry and bumps every queue view; returns after a grace period.
  void invalidate_all();

  // Every writer above that takes a translation away (invalidate, an insert
  // that replaces or overlaps an evicted translation, invalidate_all) also
  // waits, after its grace period, for the pins taken before it
  // (ReadSection::pin, ReadDomain::wait_for_pins): a request with I/O in
  // flight on translated host pointers holds a pin until the I/O completes.
  // That is an epoch grace period over requests: the writer waits for every
  // request pinned before it, not only those that overlap its range.

  // Drops, whole, every entry that overlaps one of `ranges` (the translations
  // a completed request used; BackendOptions::iotlb_cache per-request). This
  // is the back-end's own choice, not a revocation: the dropped translations
  // are still valid, so, as for an eviction, it neither waits for readers
  // nor bumps queue views (a ring pointer taken from a dropped entry stays
  // correct); a later insert over a dropped range waits for them instead.
  // Ranges of length 0 are ignored. Returns the number of entries dropped.
  // Precondition (checked): the calling thread is not inside a ReadSection
  // of this IOTLB (a writer may have to finish a grace period).
  size_t forget(std::span<const AddrRange<Iova>> ranges);
  // forget(), unless another writer holds the IOTLB (nullopt: nothing done).
  // A worker that holds pins must use this one: the writer may be waiting
  // for those very pins (an INVALIDATE during its I/O), and a worker blocked
  // on the writer's lock would never reap the I/O that releases them.
  [[nodiscard]] std::optional<size_t> try_forget(std::span<const AddrRange<Iova>> ranges);

  // --- Readers. ---

  // Looks up [iova, iova+len) for `access`. `out` is cleared first and then
  // holds the fragments, misses and permission failures (see IotlbLookup).
  // Returns true when the whole range is translated (out.complete()); len 0
  // returns true with nothing in `out`. Host pointers are valid until
  // `section` ends. Errors: BaseErrc::kOverflow (iova+len wraps), `out` empty.
  // Precondition (checked): `section` is of a reader of this IOTLB.
  [[nodiscard]] Result<bool> lookup(const ReadSection& section, Iova iova, uint64_t len, Access access,
                                    IotlbLookup& out) const;

  // DeviceMemory: `addr` is an Iova. Appends the host fragments of the range,
  // merging pieces that are contiguous in host memory. Errors (nothing
  // appended): MemErrc::kNotMapped naming the first missing iova,
  // MemErrc::kPermissionDenied naming the first forbidden iova, whichever
  // comes first in the range; BaseErrc::kOverflow. Inside a ReadSection of
  // this IOTLB on the calling thread it uses that section; otherwise it opens
  // a transient one, which ends on return (see THE GUARANTEE).
  [[nodiscard]] Result<void> translate(DmaAddr addr, uint64_t len, Access access,
                                       std::vector<Fragment>& out) const override;
  using DeviceMemory::translate;

  // --- Whether an answer may have come and gone. ---
  //
  // Each insert gets the next insertion number. A reader that asks the
  // front-end for a range (a MISS) notes next_insert_seq() before it asks;
  // the answering UPDATE's entry gets that number or a later one. If the
  // range still misses later, removed_since(noted) tells whether an entry
  // inserted since the ask has lost translations since (invalidate,
  // invalidate_all, an eviction, forget): the answer may have arrived and
  // been taken away again, so it is not on its way any more and the range
  // must be asked for again. Conservative: any range counts, so a removal
  // of some other new entry also says yes; false means that no entry
  // inserted since the ask lost anything (an insert that replaces parts of
  // entries leaves those parts translated and does not count). The number
  // is published before the table that lacks the entry, so a reader whose
  // lookup (in a section, or later) missed because of the removal sees it.
  [[nodiscard]] uint64_t next_insert_seq() const noexcept { return next_seq_.load(std::memory_order_acquire); }
  [[nodiscard]] bool removed_since(uint64_t noted_seq) const noexcept {
    return newest_removed_seq_.load(std::memory_order_acquire) >= noted_seq;
  }

  // --- Introspection. ---

  [[nodiscard]] IotlbStats stats() const;
  [[nodiscard]] size_t size() const noexcept { return entry_count_.load(std::memory_order_relaxed); }
  [[nodiscard]] const DeviceIotlbOptions& options() const noexcept { return options_; }
  // A copy of every entry in IOVA order (tests, debugging; allocates).
  [[nodiscard]] std::vector<IotlbFragment> entries() const;
  [[nodiscard]] size_t view_count() const;

  // For IotlbQueueView only (passkey): registration of views.
  class ViewKey {
    friend class IotlbQueueView;
    ViewKey() = default;
  };
  void attach_view(ViewKey, IotlbQueueView* view);
  void detach_view(ViewKey, IotlbQueueView* view);

 private:
  struct Retired;

  // Validated [first, last] of a message range.
  [[nodiscard]] static Result<std::pair<uint64_t, uint64_t>> message_range(std::string_view what, Iova iova,
                                                                            uint64_t size);
  // Publishes `next`, retiring the current snapshot. Caller holds writer_mutex_.
  void publish(std::vector<detail::IotlbEntry> next);
  // Evicts down to max_entries, recording the evicted ranges. Caller holds writer_mutex_.
  void evict_over_limit(std::vector<detail::IotlbEntry>& next, uint64_t keep_seq);
  [[nodiscard]] bool overlaps_recent_eviction(uint64_t first, uint64_t last) const;
  // Bumps views whose rings overlap [first, last]; true if any did.
  bool bump_views(uint64_t first, uint64_t last);
  // Ends a writer operation: a full grace period when `wait` (then frees every
  // retired snapshot), otherwise frees those whose poll completed.
  void finish_write(bool wait);
  size_t forget_locked(std::span<const AddrRange<Iova>> ranges);  // caller holds writer_mutex_

  [[nodiscard]] Result<void> translate_in(detail::ReaderSlot& slot, Iova iova, uint64_t len, Access access,
                                          std::vector<Fragment>& out) const;

  DeviceIotlbOptions options_;
  ReadDomain domain_;
  // The published snapshot. Stored (seq_cst) only under writer_mutex_; loaded
  // (acquire) by readers inside sections.
  std::atomic<const detail::IotlbTable*> table_;

  std::mutex writer_mutex_;  // serialises writers; guards the fields below up to the atomics
  std::vector<Retired> retired_;                    // old snapshots waiting for their grace period
  std::vector<AddrRange<Iova>> evicted_since_sync_; // evicted since the last synchronize()
  bool evicted_overflow_ = false;                   // too many to list: treat every range as evicted
  // Written only under writer_mutex_; atomic for next_insert_seq().
  std::atomic<uint64_t> next_seq_{1};
  // The highest insertion number of an entry that lost translations
  // (removed_since); 0: none yet. Written under writer_mutex_, before the
  // publish() that removes them.
  std::atomic<uint64_t> newest_removed_seq_{0};
  void note_removed(uint64_t seq) noexcept;  // caller holds writer_mutex_

  std::atomic<uint64_t> entry_count_{0};
  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> forgotten_{0};
  std::atomic<uint64_t> grace_periods_{0};

  // Lock order: writer_mutex_, then views_mutex_, then a view's own mutex.
  mutable std::mutex views_mutex_;
  std::vector<IotlbQueueView*> views_;  // guarded by views_mutex_
};

}  // namespace vdma
