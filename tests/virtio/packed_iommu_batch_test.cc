// The packed driver queue behind a strict IOMMU: a used chain is unmapped
// with one DmaOps::unmap_batch(), so the device gets exactly one IOTLB
// invalidation carrying all of the chain's ranges (not one per buffer),
// direct and indirect chains alike, and detach_unused() does the same;
// get_used_batch() unmaps all the buffers of a completion batch with ONE call.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "iommu_dma_fixture.h"
#include "packed_ring_builder.h"
#include "result_matchers.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/packed_driver_queue.h"

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

RingAddresses ring_gpas(const IommuDmaFixture& f, RingAddresses a) {
  auto gpa = [&](DmaAddr d) { return DmaAddr(f.domain->translate(Iova(d.value()), Access::kNone)->gpa.value()); };
  return {gpa(a.desc), gpa(a.driver), gpa(a.device)};
}

const DriverSegment kChain[] = {{.addr = Gpa{0x100000}, .len = 16, .type = BufferType::kDeviceReadable},
                                {.addr = Gpa{0x200000}, .len = 4096, .type = BufferType::kDeviceWritable},
                                {.addr = Gpa{0x300010}, .len = 1, .type = BufferType::kDeviceWritable}};

class PackedIommuBatch : public ::testing::TestWithParam<bool> {};  // param: indirect

TEST_P(PackedIommuBatch, PackedUsedChainIsOneInvalidation) {
  const bool indirect = GetParam();
  IommuDmaFixture f(InvalidationMode::kStrict);
  auto q = std::move(PackedDriverQueue::create(
                         *f.ops, {.size = 16, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0}))
               .value();
  ASSERT_THAT(q->add(kChain, 7), IsOk());
  EXPECT_EQ(f.domain->mapping_count(), (indirect ? 2u : 1u) + 3u);  // ring (+ indirect pool) + the chain
  const size_t calls = f.sink->calls().size();

  PackedRingBuilder dev(*f.mem, q->size(), ring_gpas(f, q->ring_addresses()));
  dev.push_used(0, 1, indirect ? 1 : 3);
  auto u = q->get_used();
  ASSERT_THAT(u, IsOk());
  ASSERT_TRUE(u->has_value());
  EXPECT_EQ((*u)->cookie, 7u);
  ASSERT_EQ(f.sink->calls().size(), calls + 1);
  EXPECT_EQ(pages_of(f.sink->calls().back()).size(), 3u);
  EXPECT_EQ(f.domain->mapping_count(), indirect ? 2u : 1u);
  EXPECT_TRUE(f.sink->still_mapped().empty());

  ASSERT_THAT(q->add(kChain, 8), IsOk());
  EXPECT_EQ(q->detach_unused(), 8u);
  EXPECT_EQ(f.sink->calls().size(), calls + 2);
  EXPECT_EQ(pages_of(f.sink->calls().back()).size(), 3u);
}

// chain i: kChain moved up by i pages, so no two chains share a page.
std::vector<DriverSegment> chain_at(uint32_t i) {
  std::vector<DriverSegment> c(std::begin(kChain), std::end(kChain));
  for (DriverSegment& s : c) s.addr = s.addr.unchecked_add(uint64_t{i} * k4K);
  return c;
}

TEST_P(PackedIommuBatch, PackedUsedBatchIsOneInvalidationForAllItsBuffers) {
  const bool indirect = GetParam();
  IommuDmaFixture f(InvalidationMode::kStrict);
  auto q = std::move(PackedDriverQueue::create(
                         *f.ops, {.size = 16, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0}))
               .value();
  const size_t rings = f.domain->mapping_count();
  for (uint32_t i = 0; i < 4; ++i) ASSERT_THAT(q->add(chain_at(i), 100 + i), IsOk());
  ASSERT_EQ(f.domain->mapping_count(), rings + 12);
  const size_t calls = f.sink->calls().size();

  PackedRingBuilder dev(*f.mem, q->size(), ring_gpas(f, q->ring_addresses()));
  // Completed out of order; buffer ids are 0, 3, 6, 9 (direct) or 0..3 (indirect).
  const uint16_t slots = indirect ? 1 : 3;
  for (uint16_t i : {1, 3, 0, 2}) dev.push_used(static_cast<uint16_t>(i * slots), 1, slots);
  UsedBuffer out[8];
  auto n = q->get_used_batch(out);
  ASSERT_THAT(n, IsOk());
  ASSERT_EQ(*n, 4u);
  const uint64_t want[] = {101, 103, 100, 102};
  for (size_t k = 0; k < 4; ++k) EXPECT_EQ(out[k].cookie, want[k]);
  ASSERT_EQ(f.sink->calls().size(), calls + 1) << "one invalidation for the whole batch";
  EXPECT_EQ(pages_of(f.sink->calls().back()).size(), 12u);
  EXPECT_TRUE(f.sink->still_mapped().empty());
  EXPECT_EQ(f.domain->mapping_count(), rings);
  n = q->get_used_batch(out);
  ASSERT_THAT(n, IsOk());
  EXPECT_EQ(*n, 0u);
  EXPECT_EQ(f.sink->calls().size(), calls + 1);
}

TEST_P(PackedIommuBatch, PackedBatchUnmapsWhatItTookBeforeABadUsedEntry) {
  const bool indirect = GetParam();
  IommuDmaFixture f(InvalidationMode::kStrict);
  auto q = std::move(PackedDriverQueue::create(
                         *f.ops, {.size = 16, .features = indirect ? feature_bit(kFeatureIndirectDesc) : 0}))
               .value();
  const size_t rings = f.domain->mapping_count();
  ASSERT_THAT(q->add(chain_at(0), 1), IsOk());
  ASSERT_THAT(q->add(chain_at(1), 2), IsOk());
  const size_t calls = f.sink->calls().size();
  PackedRingBuilder dev(*f.mem, q->size(), ring_gpas(f, q->ring_addresses()));
  const uint16_t slots = indirect ? 1 : 3;
  dev.push_used(0, 1, slots);
  dev.push_used(0, 1, slots);  // the same buffer twice
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

INSTANTIATE_TEST_SUITE_P(DirectAndIndirect, PackedIommuBatch, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "indirect" : "direct"; });

}  // namespace
}  // namespace vdma
