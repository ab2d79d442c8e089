// The split driver queue behind a strict IOMMU (packed: packed_iommu_batch_test.cc): a used chain is
// unmapped with one DmaOps::unmap_batch(), so the device gets exactly one
// IOTLB invalidation carrying all of the chain's ranges (not one per
// buffer), direct and indirect chains alike, and detach_unused() after a
// reset does the same; get_used_batch() unmaps every chain of a completion
// batch with ONE call. Premapped segments are never unmapped.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "iommu_dma_fixture.h"
#include "result_matchers.h"
#include "split_ring_builder.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/split_driver_queue.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t k4K = 4096;

std::set<uint64_t> pages_of(const std::vector<AddrRange<Iova>>& call) {
  std::set<uint64_t> out;
  for (const auto& r : call) {
    for (uint64_t p = r.start.value(); p < r.start.value() + r.len; p += k4K) out.insert(p);
  }
  return out;
}

// The rings a queue allocated through the IOMMU, as Gpas (the ring is one
// coherent buffer, contiguous in both spaces).
RingAddresses ring_gpas(const IommuDmaFixture& f, RingAddresses a) {
  auto gpa = [&](DmaAddr d) { return DmaAddr(f.domain->translate(Iova(d.value()), Access::kNone)->gpa.value()); };
  return {gpa(a.desc), gpa(a.driver), gpa(a.device)};
}

// A virtio-blk request: header, data, status; the status page is a fresh
// one so the three runs never share a page.
const DriverSegment kChain[] = {{.addr = Gpa{0x100000}, .len = 16, .type = BufferType::kDeviceReadable},
                                {.addr = Gpa{0x200000}, .len = 4096, .type = BufferType::kDeviceWritable},
                                {.addr = Gpa{0x300010}, .len = 1, .type = BufferType::kDeviceWritable}};

// The IOVA pages the chain's buffers are mapped at, from the page table.
std::set<uint64_t> live_pages_of_chain(const IommuDmaFixture& f, const std::vector<uint64_t>& iovas) {
  std::set<uint64_t> out;
  for (uint64_t i : iovas) {
    if (f.domain->translate(Iova(i), Access::kNone)) out.insert(align_down(i, k4K));
  }
  return out;
}

// The IOVAs the chain's segments were given, read from the ring descriptors
// (test side only; the queue itself never reads them back).
std::vector<uint64_t> split_chain_iovas(const IommuDmaFixture& f, const SplitDriverQueue& q, bool indirect) {
  SplitRingBuilder dev(*f.mem, ring_gpas(f, q.ring_addresses()), q.size());
  std::vector<uint64_t> out;
  if (!indirect) {
    for (uint16_t i = 0; i < 3; ++i) out.push_back(dev.desc(i).addr);
    return out;
  }
  const RawDesc head = dev.desc(0);
  const Gpa table = f.domain->translate(Iova(head.addr), Access::kNone)->gpa;
  for (uint64_t i = 0; i < 3; ++i) {
    uint64_t addr = 0;
    EXPECT_THAT(f.mem->read(table.unchecked_add(16 * i), std::as_writable_bytes(std::span(&addr, 1))), IsOk());
    out.push_back(addr);
  }
  return out;
}

class SplitIommuBatch : public ::testing::TestWithParam<bool> {};  // param: indirect

TEST_P(SplitIommuBatch, SplitUsedChainIsOneInvalidation) {
  const bool indirect = GetParam();
  IommuDmaFixture f(InvalidationMode::kStrict);
  auto q = std::move(SplitDriverQueue::create(
                         *f.ops, {.size = 16, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0}))
               .value();
  ASSERT_THAT(q->add(kChain, 42), IsOk());
  const auto iovas = split_chain_iovas(f, *q, indirect);
  const std::set<uint64_t> chain_pages = live_pages_of_chain(f, iovas);
  ASSERT_EQ(chain_pages.size(), 3u);
  const size_t calls = f.sink->calls().size();

  SplitRingBuilder dev(*f.mem, ring_gpas(f, q->ring_addresses()), q->size());
  dev.push_used(0, 1);
  auto u = q->get_used();
  ASSERT_THAT(u, IsOk());
  ASSERT_TRUE(u->has_value());
  EXPECT_EQ((*u)->cookie, 42u);
  ASSERT_EQ(f.sink->calls().size(), calls + 1);
  EXPECT_EQ(pages_of(f.sink->calls().back()), chain_pages);
  EXPECT_TRUE(live_pages_of_chain(f, iovas).empty());
  EXPECT_TRUE(f.sink->still_mapped().empty());

  // detach_unused() after a reset: one invalidation as well.
  ASSERT_THAT(q->add(kChain, 43), IsOk());
  ASSERT_EQ(f.sink->calls().size(), calls + 1);
  EXPECT_EQ(q->detach_unused(), 43u);
  EXPECT_EQ(f.sink->calls().size(), calls + 2);
  EXPECT_EQ(pages_of(f.sink->calls().back()).size(), 3u);
}

TEST_P(SplitIommuBatch, PremappedSegmentsAreLeftAlone) {
  const bool indirect = GetParam();
  IommuDmaFixture f(InvalidationMode::kStrict);
  auto q = std::move(SplitDriverQueue::create(
                         *f.ops, {.size = 16, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0}))
               .value();
  const DmaAddr pre = *f.ops->map(Gpa{0x400000}, 64, DmaDirection::kToDevice);
  const DriverSegment segs[] = {kChain[0],
                                {.addr = Gpa{0x400000}, .len = 64, .type = BufferType::kDeviceReadable,
                                 .premapped = true, .dma = pre},
                                kChain[2]};
  ASSERT_THAT(q->add(segs, 1), IsOk());
  const size_t calls = f.sink->calls().size();
  EXPECT_EQ(q->detach_unused(), 1u);
  ASSERT_EQ(f.sink->calls().size(), calls + 1);
  EXPECT_EQ(pages_of(f.sink->calls().back()).size(), 2u);
  EXPECT_THAT(f.domain->translate(Iova(pre.value()), Access::kRead), IsOk());
  ASSERT_THAT(f.ops->unmap(pre, 64, DmaDirection::kToDevice), IsOk());
}

// chain i: kChain moved up by i pages, so no two chains share a page.
std::vector<DriverSegment> chain_at(uint32_t i) {
  std::vector<DriverSegment> c(std::begin(kChain), std::end(kChain));
  for (DriverSegment& s : c) s.addr = s.addr.unchecked_add(uint64_t{i} * k4K);
  return c;
}

TEST_P(SplitIommuBatch, SplitUsedBatchIsOneInvalidationForAllItsChains) {
  const bool indirect = GetParam();
  IommuDmaFixture f(InvalidationMode::kStrict);
  auto q = std::move(SplitDriverQueue::create(
                         *f.ops, {.size = 16, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0}))
               .value();
  const size_t rings = f.domain->mapping_count();
  for (uint32_t i = 0; i < 4; ++i) ASSERT_THAT(q->add(chain_at(i), 100 + i), IsOk());
  ASSERT_EQ(f.domain->mapping_count(), rings + 12);
  const size_t calls = f.sink->calls().size();

  SplitRingBuilder dev(*f.mem, ring_gpas(f, q->ring_addresses()), q->size());
  // Completed out of order; heads are 0, 3, 6, 9 (direct) or 0..3 (indirect).
  for (uint32_t i : {2u, 0u, 3u, 1u}) dev.push_used(indirect ? i : 3 * i, 1);
  UsedBuffer out[8];
  auto n = q->get_used_batch(out);
  ASSERT_THAT(n, IsOk());
  ASSERT_EQ(*n, 4u);
  const uint64_t want[] = {102, 100, 103, 101};
  for (size_t k = 0; k < 4; ++k) EXPECT_EQ(out[k].cookie, want[k]);
  ASSERT_EQ(f.sink->calls().size(), calls + 1) << "one invalidation for the whole batch";
  EXPECT_EQ(pages_of(f.sink->calls().back()).size(), 12u);
  EXPECT_TRUE(f.sink->still_mapped().empty());
  EXPECT_EQ(f.domain->mapping_count(), rings);

  // Nothing more: no call, no invalidation.
  n = q->get_used_batch(out);
  ASSERT_THAT(n, IsOk());
  EXPECT_EQ(*n, 0u);
  EXPECT_EQ(f.sink->calls().size(), calls + 1);
}

TEST_P(SplitIommuBatch, SplitBatchUnmapsWhatItTookBeforeABadUsedEntry) {
  const bool indirect = GetParam();
  IommuDmaFixture f(InvalidationMode::kStrict);
  auto q = std::move(SplitDriverQueue::create(
                         *f.ops, {.size = 16, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0}))
               .value();
  const size_t rings = f.domain->mapping_count();
  ASSERT_THAT(q->add(chain_at(0), 1), IsOk());
  ASSERT_THAT(q->add(chain_at(1), 2), IsOk());
  const size_t calls = f.sink->calls().size();
  SplitRingBuilder dev(*f.mem, ring_gpas(f, q->ring_addresses()), q->size());
  dev.push_used(0, 1);
  dev.push_used(300, 0);  // beyond the queue size
  UsedBuffer out[4];
  auto n = q->get_used_batch(out);
  ASSERT_THAT(n, IsOk());
  ASSERT_EQ(*n, 1u);
  EXPECT_EQ(out[0].cookie, 1u);
  ASSERT_EQ(f.sink->calls().size(), calls + 1);
  EXPECT_EQ(pages_of(f.sink->calls().back()).size(), 3u);
  EXPECT_EQ(f.domain->mapping_count(), rings + 3);
  EXPECT_THAT(q->get_used_batch(out), IsError(VirtioErrc::kBroken));
  EXPECT_EQ(q->detach_unused(), 2u);
  EXPECT_EQ(f.domain->mapping_count(), rings);
}

INSTANTIATE_TEST_SUITE_P(DirectAndIndirect, SplitIommuBatch, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "indirect" : "direct"; });

}  // namespace
}  // namespace vdma
