// A small IOMMU DMA set-up for tests: guest memory, an IOAS with a
// PagingDomain (one device attached with the MSI window reserved), an
// IommuDmaDomain in the mode asked for, and IommuDmaOps for the device,
// with a RecordingSink that keeps every invalidation.
//
//   IommuDmaFixture f(InvalidationMode::kStrict);
//   DmaAddr d = *f.ops->map(Gpa{0x10000}, 4096, DmaDirection::kToDevice);
//   (void)f.ops->unmap(d, 4096, DmaDirection::kToDevice);
//   EXPECT_EQ(f.sink->calls().size(), 1u);
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "vdma/base/check.h"
#include "vdma/dma/iommu_dma_ops.h"
#include "vdma/dma/iommu_platform.h"

namespace vdma::testing {

// Records every sink call (thread-safe) and, at the time of the call, every
// page of it that the domain's page table still translates (unmap must
// clear first, so that list must stay empty). fail(true) makes calls fail.
class RecordingSink final : public InvalidationSink {
 public:
  Result<void> invalidate(std::span<const AddrRange<Iova>> ranges) override {
    std::lock_guard lock(mu_);
    if (fail_) return make_error(DmaErrc::kUnavailable, "back-end did not acknowledge");
    calls_.emplace_back(ranges.begin(), ranges.end());
    if (domain_ != nullptr) {
      for (const auto& r : ranges) {
        for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += kIovaGranule) {
          if (domain_->translate(Iova(p), Access::kNone)) still_mapped_.push_back(p);
        }
      }
    }
    return ok();
  }
  // Announced maps (IommuDomainConfig::announce_maps), each with whether
  // the page table already translated all of it when it was announced.
  void mapped(const MappedPages& pages) override {
    std::lock_guard lock(mu_);
    bool present = domain_ != nullptr;
    for (uint64_t off = 0; present && off < pages.len; off += kIovaGranule) {
      auto t = domain_->translate(pages.iova.unchecked_add(off), pages.perms);
      present = t.has_value() && t->gpa == pages.gpa.unchecked_add(off);
    }
    mapped_.push_back({pages, present});
  }
  struct Announced {
    MappedPages pages;
    bool present = false;
  };
  [[nodiscard]] std::vector<Announced> announced() const {
    std::lock_guard lock(mu_);
    return mapped_;
  }
  void fail(bool f) {
    std::lock_guard lock(mu_);
    fail_ = f;
  }
  void watch(const IommuDmaDomain* d) {
    std::lock_guard lock(mu_);
    domain_ = d;
  }
  [[nodiscard]] std::vector<std::vector<AddrRange<Iova>>> calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  [[nodiscard]] std::vector<uint64_t> still_mapped() const {
    std::lock_guard lock(mu_);
    return still_mapped_;
  }

 private:
  mutable std::mutex mu_;
  bool fail_ = false;
  const IommuDmaDomain* domain_ = nullptr;
  std::vector<std::vector<AddrRange<Iova>>> calls_;
  std::vector<uint64_t> still_mapped_;
  std::vector<Announced> mapped_;
};

struct IommuDmaFixtureOptions {
  size_t flush_queue_entries = 256;
  bool revive = true;
  uint64_t dma_mask = UINT64_MAX;
  std::shared_ptr<InvalidationSink> sink;  // null: the fixture's RecordingSink
  bool announce_maps = false;
};

struct IommuDmaFixture {
  static constexpr uint64_t kRamSize = 16 << 20;
  static constexpr uint64_t kShared = 16 << 20;  // the coherent pool's region

  explicit IommuDmaFixture(InvalidationMode mode, IommuDmaFixtureOptions o = {}) {
    mem = std::move(GuestMemory::create({{Gpa{0}, kRamSize, MemAttr::kPrivate, "ram"},
                                         {Gpa{kShared}, 4 << 20, MemAttr::kShared, "shared"}}))
              .value();
    coherent = std::move(CoherentPool::create(*mem, {Gpa{kShared}, 1 << 20})).value();
    ioas = IoAddressSpace::create();
    paging = std::move(PagingDomain::create(*ioas)).value();
    VDMA_CHECK(paging->attach_device(DeviceId{1}, std::vector<IovaRange>{kMsiWindow}).has_value(), "attach");
    domain = std::move(IommuDmaDomain::create(
                           *ioas, *paging,
                           {.mode = mode,
                            .sink = o.sink != nullptr ? o.sink : std::shared_ptr<InvalidationSink>(sink),
                            .flush_queue_entries = o.flush_queue_entries,
                            .flush_queue_delay = std::chrono::milliseconds(10),
                            .clock = [this] { return now; },
                            .revive_lazy_unmaps = o.revive,
                            .announce_maps = o.announce_maps,
                            .magazine_shards = 1}))
                 .value();
    sink->watch(domain.get());
    ops = std::move(IommuDmaOps::create(*mem, domain, {.dma_mask = o.dma_mask, .coherent = coherent})).value();
  }
  ~IommuDmaFixture() {
    ops.reset();
    domain.reset();
    paging.reset();
  }
  IommuDmaFixture(const IommuDmaFixture&) = delete;
  IommuDmaFixture& operator=(const IommuDmaFixture&) = delete;

  [[nodiscard]] FlushQueueStats fq() const { return domain->flush_queue()->stats(); }

  std::chrono::steady_clock::time_point now{};
  std::shared_ptr<RecordingSink> sink = std::make_shared<RecordingSink>();
  std::unique_ptr<GuestMemory> mem;
  std::shared_ptr<CoherentPool> coherent;
  std::unique_ptr<IoAddressSpace> ioas;
  std::unique_ptr<PagingDomain> paging;
  std::shared_ptr<IommuDmaDomain> domain;
  std::unique_ptr<IommuDmaOps> ops;
};

}  // namespace vdma::testing
