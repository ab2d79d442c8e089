// The packed driver queue behind a strict IOMMU: a used chain is unmapped
// with one DmaOps::unmap_batch(), so the device gets exactly one IOTLB
// invalidation carrying all of the chain's ranges (not one per buffer),
// direct and indirect chains alike, and detach_unused() does the same.
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

INSTANTIATE_TEST_SUITE_P(DirectAndIndirect, PackedIommuBatch, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "indirect" : "direct"; });

}  // namespace
}  // namespace vdma
