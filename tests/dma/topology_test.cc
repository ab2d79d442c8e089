// PlatformTopology parsing (good and bad files, each error naming its JSON
// path) and PlatformDma: the DmaOps built from a topology.
#include "vdma/dma/topology.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <string>

#include "result_matchers.h"
#include "vdma/dma/direct_dma_ops.h"
#include "vdma/dma/iommu_platform.h"
#include "vdma/dma/platform_dma.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::filesystem::path example_path() {
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "docs" / "topology-example.json";
}

// The guest memory the example describes.
std::unique_ptr<GuestMemory> example_memory() {
  return *GuestMemory::create({{Gpa{0}, 0x1000000, MemAttr::kPrivate, "ram"},
                               {Gpa{0x1000000}, 0x1200000, MemAttr::kShared, "shared"},
                               {Gpa{0x100000000}, 0x1000000, MemAttr::kPrivate, "ram-high"}});
}

TEST(Topology, ParsesTheExampleFile) {
  auto t = load_topology(example_path());
  ASSERT_THAT(t, IsOk());
  EXPECT_FALSE(t->restricted_memory_access);
  ASSERT_TRUE(t->coherent_pool.has_value());
  EXPECT_EQ(t->coherent_pool->start, Gpa{0x1000000});
  ASSERT_TRUE(t->swiotlb.has_value());
  EXPECT_EQ(t->swiotlb->areas, 2u);
  EXPECT_EQ(t->swiotlb->growth_pool_size, 0x100000u);
  ASSERT_EQ(t->devices.size(), 5u);
  const DeviceTopology* blk = t->find("blk0");
  ASSERT_NE(blk, nullptr);
  EXPECT_EQ(blk->kind, DeviceDmaKind::kDirect);
  ASSERT_EQ(blk->offset_ranges.size(), 2u);
  EXPECT_EQ(blk->offset_ranges[1].dma, DmaAddr{0x20000000000});
  EXPECT_EQ(blk->encryption_bit, 47u);
  EXPECT_EQ(blk->dma_mask, 0xffffffffffffu);
  const DeviceTopology* net = t->find("net0");
  ASSERT_NE(net, nullptr);
  EXPECT_FALSE(net->coherent);
  EXPECT_EQ(net->min_align_mask, 0xfffu);
  EXPECT_EQ(net->notify_flush, NotifyFlushKind::kWriteCombining);
  EXPECT_EQ(blk->notify_flush, NotifyFlushKind::kNone);  // the default
  EXPECT_EQ(t->find("vsock0")->restricted_pool->window.len, 0x200000u);
  EXPECT_EQ(t->find("gpu0")->iommu_domain, 1u);
  EXPECT_EQ(t->find("gpu0")->dma_mask, UINT64_MAX);
  EXPECT_EQ(t->find("console0")->quirk, DmaQuirk::kDeclineAccessPlatform);
  EXPECT_EQ(t->find("console0")->path(), "devices[4] (console0)");
  EXPECT_EQ(t->find("nope"), nullptr);
}

TEST(Topology, MissingFileIsASystemError) {
  EXPECT_THAT(load_topology("/nonexistent/topology.json"),
              IsErrorWith(BaseErrc::kSystem, HasSubstr("/nonexistent/topology.json")));
}

struct BadCase {
  const char* json;
  const char* message;  // must appear in the error
};

class BadTopology : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadTopology, NamesTheFieldAndTheReason) {
  EXPECT_THAT(parse_topology(GetParam().json), IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr(GetParam().message)));
}

// A case is named after the error it expects: "devices[0].id: must not be
// empty" runs as .../devices_0_id_must_not_be_empty.
std::string bad_case_name(const ::testing::TestParamInfo<BadCase>& info) {
  std::string name;
  for (const char* p = info.param.message; *p != '\0'; ++p) {
    if (std::isalnum(static_cast<unsigned char>(*p))) {
      name += *p;
    } else if (!name.empty() && name.back() != '_') {
      name += '_';
    }
  }
  while (!name.empty() && name.back() == '_') name.pop_back();
  return name;
}

#define DEV(x) R"({"coherent_pool": {"base": 0, "size": 4096}, "devices": [)" x "]}"

[[maybe_unused]] void PrintTo(const BadCase& c, std::ostream* os) { *os << bad_case_name({c, 0}); }

INSTANTIATE_TEST_SUITE_P(
    Cases, BadTopology,
    ::testing::Values(
        BadCase{R"({"devices": [})", "JSON syntax error at byte"},
        BadCase{R"([1, 2])", "(top level): expected an object, got array"},
        BadCase{R"({"devices": [], "swiotbl": {}})", "swiotbl: unknown field"},
        BadCase{R"({})", "devices: required field is missing"},
        BadCase{R"({"devices": {}})", "devices: expected an array, got object"},
        BadCase{R"({"restricted_memory_access": "yes", "devices": []})",
                "restricted_memory_access: expected true or false, got string"},
        BadCase{DEV(R"({"id": "a", "kind": "bypass"}, {"id": "b", "kind": "bypass"},
                       {"id": "c", "kind": "direct", "dma_mask": "0x1234"})"),
                "devices[2].dma_mask: 0x1234 is not of the form 2^n-1"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "dma_mask": 255})"), "devices[0].dma_mask: 0xff is not"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "dma_mak": 255})"), "devices[0].dma_mak: unknown field"},
        BadCase{DEV(R"({"kind": "direct"})"), "devices[0].id: required field is missing"},
        BadCase{DEV(R"({"id": "", "kind": "direct"})"), "devices[0].id: must not be empty"},
        BadCase{DEV(R"({"id": "a", "kind": "bypass"}, {"id": "a", "kind": "bypass"})"),
                "devices[1].id: \"a\" is already used by devices[0]"},
        BadCase{DEV(R"({"id": "a", "kind": "dma"})"),
                "devices[0].kind: \"dma\" is not one of bypass, direct, restricted, iommu"},
        BadCase{DEV(R"({"id": "a", "kind": 3})"), "devices[0].kind: expected a string, got number"},
        BadCase{DEV(R"({"id": "a", "kind": "bypass", "encryption_bit": 47})"),
                "devices[0].encryption_bit: not valid for kind \"bypass\""},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "iommu_domain": 1})"),
                "devices[0].iommu_domain: not valid for kind \"direct\""},
        BadCase{DEV(R"({"id": "a", "kind": "iommu"})"), "devices[0].iommu_domain: required field is missing"},
        BadCase{DEV(R"({"id": "a", "kind": "restricted"})"), "devices[0].restricted_pool: required field is missing"},
        BadCase{DEV(R"({"id": "a", "kind": "restricted", "restricted_pool": {"base": 0}})"),
                "devices[0].restricted_pool.size: required field is missing"},
        BadCase{DEV(R"({"id": "a", "kind": "restricted", "restricted_pool": {"base": 0, "size": 0}})"),
                "devices[0].restricted_pool.size: must not be 0"},
        BadCase{DEV(R"({"id": "a", "kind": "restricted", "restricted_pool": {"base": 0, "size": 4096, "x": 1}})"),
                "devices[0].restricted_pool.x: unknown field"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "encryption_bit": 64})"),
                "devices[0].encryption_bit: 64 is outside 1..63"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "dma_mask": -1})"), "devices[0].dma_mask: -1 is negative"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "dma_mask": "0x1ffffffffffffffff"})"),
                "devices[0].dma_mask: \"0x1ffffffffffffffff\" does not fit in 64 bits"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "dma_mask": "0xfffg"})"),
                "devices[0].dma_mask: \"0xfffg\" is not a number"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "dma_mask": 4095.5})"),
                "devices[0].dma_mask: expected an unsigned integer or a \"0x...\" string, got number"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "coherent": 1})"),
                "devices[0].coherent: expected true or false, got number"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "offset_ranges": []})"),
                "devices[0].offset_ranges: must list at least one range"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "offset_ranges": [{"cpu_start": 0, "dma_start": 0}]})"),
                "devices[0].offset_ranges[0].size: required field is missing"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "offset_ranges": [
                         {"cpu_start": 0, "dma_start": 0, "size": "0x100000"},
                         {"cpu_start": "0x80000", "dma_start": "0x800000", "size": "0x100000"}]})"),
                "devices[0].offset_ranges: offset ranges 0 and 1 overlap in CPU space"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "offset_ranges": [{"cpu_start": 1, "dma_start": 0, "size": 4096}]})"),
                "devices[0].offset_ranges: offset range 0: cpu gpa:0x1 dma dma:0x0 size 0x1000 is not 4 KiB aligned"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "quirk": "sometimes"})"),
                "devices[0].quirk: \"sometimes\" is not one of none, use_dma_api, decline_access_platform"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "flush_before_notify": "always"})"),
                "devices[0].flush_before_notify: \"always\" is not one of none, write_combining"},
        BadCase{DEV(R"({"id": "a", "kind": "bypass", "flush_before_notify": true})"),
                "devices[0].flush_before_notify: expected a string, got boolean"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "min_align_mask": "0x1001"})"),
                "devices[0].min_align_mask: 0x1001 is not of the form 2^n-1"},
        BadCase{DEV(R"({"id": "a", "kind": "direct", "force_bounce": true})"),
                "devices[0].force_bounce: needs the top-level \"swiotlb\" pool"},
        BadCase{R"({"devices": [{"id": "a", "kind": "direct"}]})",
                "coherent_pool: required by devices[0] (kind \"direct\") for its rings"},
        BadCase{R"({"restricted_memory_access": true, "devices": [{"id": "a", "kind": "bypass"}]})",
                "devices[0].kind: \"bypass\" is not allowed with restricted_memory_access"},
        BadCase{R"({"restricted_memory_access": true, "coherent_pool": {"base": 0, "size": 4096},
                    "devices": [{"id": "a", "kind": "direct"}]})",
                "devices[0].force_bounce: must be true with restricted_memory_access"},
        BadCase{R"({"swiotlb": {"base": 0, "size": 4096, "growth": {"base": 8192, "size": 4096}}, "devices": []})",
                "swiotlb.growth.pool_size: required field is missing"},
        BadCase{R"({"coherent_pool": {"base": "0xffffffffffffffff", "size": 2}, "devices": []})",
                "coherent_pool: base 0xffffffffffffffff + size 0x2 wraps past 2^64"}),
    bad_case_name);

#undef DEV

TEST(PlatformDma, BuildsEveryKindFromTheExample) {
  auto mem = example_memory();
  auto topo = *load_topology(example_path());
  IommuPlatform iommu;
  auto platform = PlatformDma::create(*mem, topo, {.iommu = iommu.factory()});
  ASSERT_THAT(platform, IsOk());
  auto& p = **platform;
  auto blk = p.platform_ops("blk0");
  ASSERT_THAT(blk, IsOk());
  EXPECT_EQ((*blk)->kind(), "direct");
  // Private RAM through the offset range with the C-bit.
  EXPECT_THAT((*blk)->map(Gpa{0x5000}, 64, DmaDirection::kToDevice),
              HasValue(DmaAddr{(1ull << 47) | ((1ull << 40) + 0x5000)}));
  auto net = p.platform_ops("net0");
  ASSERT_THAT(net, IsOk());
  // High RAM is beyond net0's 32-bit mask: bounced through the platform swiotlb.
  auto d = (*net)->map(Gpa{0x100000000}, 4096, DmaDirection::kFromDevice);
  ASSERT_THAT(d, IsOk());
  EXPECT_TRUE(p.swiotlb()->contains(Gpa{d->value()}));
  EXPECT_TRUE((*net)->need_sync(DmaAddr{0x1000}));  // non-coherent: every address needs syncs
  ASSERT_THAT((*net)->unmap(*d, 4096, DmaDirection::kFromDevice), IsOk());
  auto vsock = p.platform_ops("vsock0");
  ASSERT_THAT(vsock, IsOk());
  EXPECT_EQ((*vsock)->kind(), "restricted");
  auto ring = (*vsock)->alloc_coherent(4096);
  ASSERT_THAT(ring, IsOk());
  EXPECT_TRUE(p.restricted_pool("vsock0")->contains(ring->cpu));
  ASSERT_THAT((*vsock)->free_coherent(*ring), IsOk());
  // gpu0 sits behind IOMMU domain 1: its DMA addresses are IOVAs of that
  // domain's IO address space, which translates them back to the buffer.
  auto gpu = p.platform_ops("gpu0");
  ASSERT_THAT(gpu, IsOk());
  EXPECT_EQ((*gpu)->kind(), "iommu");
  auto iova = (*gpu)->map(Gpa{0x5000}, 64, DmaDirection::kFromDevice);
  ASSERT_THAT(iova, IsOk());
  EXPECT_NE(iova->value(), 0x5000u);
  EXPECT_THAT(iommu.domain(1)->translate(Iova(iova->value()), Access::kWrite),
              HasValue(::testing::Field(&PageTranslation::gpa, Gpa{0x5000})));
  ASSERT_THAT((*gpu)->unmap(*iova, 64, DmaDirection::kFromDevice), IsOk());
  auto console = p.platform_ops("console0");
  ASSERT_THAT(console, IsOk());
  EXPECT_EQ((*console)->kind(), "bypass");
  for (const char* id : {"blk0", "net0", "vsock0", "gpu0", "console0"}) {
    auto b = p.bypass_ops(id);
    ASSERT_THAT(b, IsOk()) << id;
    EXPECT_EQ((*b)->kind(), "bypass");
  }
  EXPECT_THAT(p.platform_ops("nope"), IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("\"nope\" is not in")));
  EXPECT_EQ(p.restricted_pool("blk0"), nullptr);
}

// "flush_before_notify": the device gets its PostedWriteFlush, the hook its
// driver queues run before each notification; other devices get none.
TEST(PlatformDma, ANotifyFlushForEachDeviceThatDeclaresOne) {
  auto mem = example_memory();
  auto platform = PlatformDma::create(*mem, *load_topology(example_path()));
  ASSERT_THAT(platform, IsOk());
  PostedWriteFlush* net = (*platform)->notify_flush("net0");
  ASSERT_NE(net, nullptr);
  EXPECT_EQ(net->kind(), NotifyFlushKind::kWriteCombining);
  EXPECT_EQ(to_string(net->kind()), "write_combining");
  EXPECT_EQ(net->flushes(), 0u);
  net->flush();
  net->flush();
  EXPECT_EQ(net->flushes(), 2u);
  EXPECT_EQ((*platform)->notify_flush("blk0"), nullptr);
  EXPECT_EQ((*platform)->notify_flush("console0"), nullptr);
  EXPECT_EQ((*platform)->notify_flush("nope"), nullptr);
}

TEST(PlatformDma, WithoutAnIommuFactoryIommuDevicesAreUnavailable) {
  auto mem = example_memory();
  auto platform = PlatformDma::create(*mem, *load_topology(example_path()));
  ASSERT_THAT(platform, IsOk());
  EXPECT_THAT((*platform)->platform_ops("gpu0"),
              IsErrorWith(DmaErrc::kUnavailable, AllOf(HasSubstr("devices[3] (gpu0)"),
                                                      HasSubstr("no IommuDmaFactory was given"),
                                                      HasSubstr("IOMMU domain 1"))));
  EXPECT_THAT((*platform)->platform_ops("blk0"), IsOk());  // the others work regardless
}

TEST(PlatformDma, AnIommuFactoryPlugsIn) {
  auto mem = example_memory();
  auto topo = *load_topology(example_path());
  auto coherent = *CoherentPool::create(*mem, {Gpa{0x1000000}, 0x100000});
  uint32_t seen_domain = 0;
  PlatformDmaOptions opts;
  opts.iommu = [&](const DeviceTopology& dev, const IommuDmaEnv& env) -> Result<std::unique_ptr<DmaOps>> {
    seen_domain = *dev.iommu_domain;
    EXPECT_NE(env.coherent, nullptr);  // the platform's pool, for rings
    EXPECT_NE(env.cache, nullptr);
    return std::unique_ptr<DmaOps>(std::make_unique<IdentityDmaOps>(env.mem, coherent));
  };
  auto platform = PlatformDma::create(*mem, topo, opts);
  ASSERT_THAT(platform, IsOk());
  EXPECT_THAT((*platform)->platform_ops("gpu0"), IsOk());
  EXPECT_EQ(seen_domain, 1u);
  opts.iommu = [](const DeviceTopology&, const IommuDmaEnv&) -> Result<std::unique_ptr<DmaOps>> {
    return make_error(DmaErrc::kIovaExhausted, "no IOVA space");
  };
  EXPECT_THAT(PlatformDma::create(*mem, topo, opts),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("devices[3] (gpu0): no IOVA space")));
}

TEST(PlatformDma, MemoryChecksNameTheTopologyPath) {
  auto mem = example_memory();
  auto build = [&](const char* json) -> Result<std::unique_ptr<PlatformDma>> {
    auto t = parse_topology(json);
    if (!t) return t.error();
    return PlatformDma::create(*mem, *t);
  };
  EXPECT_THAT(build(R"({"swiotlb": {"base": 0, "size": "0x100000"}, "devices": []})"),
              IsErrorWith(DmaErrc::kInvalidConfig, AllOf(HasSubstr("swiotlb: "), HasSubstr("private region 'ram'"))));
  EXPECT_THAT(build(R"({"devices": [{"id": "v", "kind": "restricted",
                                     "restricted_pool": {"base": "0x100000000", "size": "0x100000"}}]})"),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("devices[0] (v).restricted_pool: ")));
  EXPECT_THAT(build(R"({"restricted_memory_access": true, "coherent_pool": {"base": 0, "size": 4096},
                        "devices": []})"),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("coherent_pool: gpa:0x0 + len 0x1000 must be shared")));
  EXPECT_THAT(build(R"({"coherent_pool": {"base": "0x1000000", "size": 4096},
                        "devices": [{"id": "x", "kind": "direct",
                                     "offset_ranges": [{"cpu_start": 0, "dma_start": 0, "size": "0x100000"}]}]})"),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("devices[0] (x): coherent window gpa:0x1000000")));
  EXPECT_THAT(build(R"({"coherent_pool": {"base": "0x1000000", "size": 4096},
                        "devices": [{"id": "x", "kind": "direct", "dma_mask": "0xffffff"}]})"),
              IsErrorWith(DmaErrc::kInvalidConfig, HasSubstr("beyond the DMA mask 0xffffff")));
  EXPECT_THAT(build(R"({"coherent_pool": {"base": "0x1000000", "size": 4096}, "devices": []})"), IsOk());
}

}  // namespace
}  // namespace vdma
