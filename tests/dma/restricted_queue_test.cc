// Restricted memory access end to end (a confidential guest): the device
// side's DeviceMemory covers only the shared regions, the policy hands the
// driver the restricted pool's DmaOps, rings and every buffer live in the
// pool, data arrives intact both ways, and no private guest address ever
// reaches the device. As a control, the legacy bypass on the same device
// view fails exactly where private memory would be touched.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <mutex>
#include <random>

#include "result_matchers.h"
#include "vdma/dma/debug_dma_ops.h"
#include "vdma/dma/platform_dma.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/dma_policy.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"
#include "param_printers.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::HasSubstr;

constexpr uint64_t kRam = 0;
constexpr uint64_t kRamSize = 32 << 20;
constexpr uint64_t kShared = 32 << 20;
constexpr uint64_t kSharedSize = 8 << 20;
constexpr int kChains = 5000;

constexpr const char* kTopology = R"({
  "restricted_memory_access": true,
  "coherent_pool": {"base": "0x2000000", "size": "0x100000"},
  "devices": [{"id": "vsock0", "kind": "restricted",
               "restricted_pool": {"base": "0x2400000", "size": "0x400000", "areas": 2}}]})";

// The device side's memory: only what the guest shared, and a log of every
// address the device was asked to reach.
class RecordingMemory final : public DeviceMemory {
 public:
  explicit RecordingMemory(const GuestMemory& guest) : guest_(guest), table_(RegionTable::bypass(guest, MemAttr::kShared)) {}
  Result<void> translate(DmaAddr addr, uint64_t len, Access access, std::vector<Fragment>& out) const override {
    {
      std::lock_guard lock(mu_);
      ++calls_;
      // Bus addresses equal guest addresses here (no offsets): anything not
      // shared is a private address handed to the device.
      if (!guest_.is_all(Gpa{addr.value()}, std::max<uint64_t>(len, 1), MemAttr::kShared)) {
        private_seen_.push_back(addr);
      }
    }
    return table_.translate(addr, len, access, out);
  }
  using DeviceMemory::translate;
  size_t calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  std::vector<DmaAddr> private_seen() const {
    std::lock_guard lock(mu_);
    return private_seen_;
  }

 private:
  const GuestMemory& guest_;
  RegionTable table_;
  mutable std::mutex mu_;
  mutable size_t calls_ = 0;
  mutable std::vector<DmaAddr> private_seen_;
};

// The device: reads the request, answers with each byte XOR 0xff.
uint32_t device_answer(const DescriptorChain& chain) {
  std::vector<std::byte> in;
  for (const Fragment& f : chain.readable) in.insert(in.end(), f.host, f.host + f.len);
  uint64_t k = 0;
  for (const Fragment& f : chain.writable) {
    for (uint64_t i = 0; i < f.len && k < in.size(); ++i, ++k) f.host[i] = in[k] ^ std::byte{0xff};
  }
  return static_cast<uint32_t>(k);
}

class RestrictedQueue : public ::testing::TestWithParam<RingFormat> {
 protected:
  void SetUp() override {
    mem_ = *GuestMemory::create({{Gpa{kRam}, kRamSize, MemAttr::kPrivate, "ram"},
                                 {Gpa{kShared}, kSharedSize, MemAttr::kShared, "shared"}});
    topo_ = *parse_topology(kTopology);
    platform_ = *PlatformDma::create(*mem_, topo_);
  }
  std::unique_ptr<GuestMemory> mem_;
  PlatformTopology topo_;
  std::unique_ptr<PlatformDma> platform_;
};

TEST_P(RestrictedQueue, DataMovesBothWaysThroughSharedMemoryOnly) {
  const DmaPolicy policy = DmaPolicy::from_topology(topo_);
  const uint64_t offered = feature_bit(kFeatureVersion1) | feature_bit(kFeatureAccessPlatform) |
                           feature_bit(kFeatureIndirectDesc) | feature_bit(kFeatureEventIdx);
  const uint64_t wanted = feature_bit(kFeatureVersion1) | feature_bit(kFeatureIndirectDesc);
  // A device that does not offer ACCESS_PLATFORM is refused before FEATURES_OK.
  EXPECT_THAT(policy.features_ok("vsock0", wanted),
              IsErrorWith(DmaErrc::kPlatformRefused, HasSubstr("VIRTIO_F_ACCESS_PLATFORM")));
  auto f = negotiate_features(offered, wanted | policy.transport_features("vsock0", offered));
  ASSERT_THAT(f, IsOk());
  auto decision = policy.decide("vsock0", *f);
  ASSERT_THAT(decision, IsOk());
  ASSERT_EQ(decision->path, DmaPath::kPlatform);
  auto ops = select_dma_ops(*platform_, "vsock0", *decision);
  ASSERT_THAT(ops, IsOk());
  ASSERT_EQ((*ops)->kind(), "restricted");
  DebugDmaOps dma(**ops, "vsock0");
  BouncePool& pool = *platform_->restricted_pool("vsock0");
  RecordingMemory dev_mem(*mem_);

  const QueueConfig cfg{.size = 64, .features = *f, .max_indirect = 8};
  auto drv_r = make_driver_queue(GetParam(), dma, cfg);
  ASSERT_THAT(drv_r, IsOk());
  auto drv = std::move(drv_r).value();
  const RingAddresses rings = drv->ring_addresses();
  for (DmaAddr a : {rings.desc, rings.driver, rings.device}) {
    EXPECT_TRUE(pool.contains(Gpa{a.value()})) << fmt::format("ring at {} is not in the restricted pool", a);
  }
  auto dev_r = make_device_queue(GetParam(), dev_mem, cfg, rings);
  ASSERT_THAT(dev_r, IsOk());
  auto dev = std::move(dev_r).value();

  std::mt19937_64 rng(static_cast<uint64_t>(GetParam()) + 7);
  uint64_t bytes = 0;
  for (int c = 0; c < kChains; ++c) {
    // A request (private memory) and a response buffer (private memory).
    const uint32_t req_len = 1 + static_cast<uint32_t>(rng() % 6000);
    const uint32_t resp_len = 1 + static_cast<uint32_t>(rng() % 6000);
    const Gpa req{0x100000 + (rng() % 4096)};
    const Gpa resp{0x800000 + (rng() % 4096)};
    std::vector<std::byte> request(req_len);
    for (auto& b : request) b = std::byte(static_cast<uint8_t>(rng()));
    ASSERT_THAT(mem_->write(req, request), IsOk());
    ASSERT_THAT(mem_->fill(resp, resp_len, std::byte{0x77}), IsOk());
    const DriverSegment segs[] = {{.addr = req, .len = req_len, .type = BufferType::kDeviceReadable},
                                  {.addr = resp, .len = resp_len, .type = BufferType::kDeviceWritable}};
    ASSERT_THAT(drv->add(segs, c), IsOk());
    (void)drv->kick_prepare();
    DescriptorChain chain;
    auto got = dev->pop(chain);
    ASSERT_THAT(got, HasValue(true));
    ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
    ASSERT_THAT(dev->push_used(chain, device_answer(chain)), IsOk());
    auto used = drv->get_used();
    ASSERT_THAT(used, IsOk());
    ASSERT_TRUE(used->has_value());
    ASSERT_EQ((*used)->cookie, static_cast<uint64_t>(c));
    ASSERT_EQ((*used)->len, std::min(req_len, resp_len));
    ASSERT_THAT(dma.cpu_access(resp, resp_len, CpuAccess::kRead), IsOk());
    std::vector<std::byte> answer(resp_len);
    ASSERT_THAT(mem_->read(resp, answer), IsOk());
    for (uint32_t i = 0; i < resp_len; ++i) {
      const std::byte want = i < req_len ? (request[i] ^ std::byte{0xff}) : std::byte{0x77};
      ASSERT_EQ(answer[i], want) << "chain " << c << " byte " << i;
    }
    bytes += req_len + resp_len;
  }
  EXPECT_GT(dev_mem.calls(), static_cast<size_t>(kChains));
  EXPECT_TRUE(dev_mem.private_seen().empty())
      << fmt::format("the device was given private address {}", dev_mem.private_seen().front());
  EXPECT_GT(pool.stats().high_water, 0u);
  EXPECT_EQ(platform_->coherent_pool()->bytes_free(), 1u << 20);  // the rings came from the pool, not here
  dev.reset();
  drv.reset();
  EXPECT_EQ(pool.stats().used_slots, 0u);
  EXPECT_THAT(dma.check_teardown(), IsOk());
  EXPECT_TRUE(dma.reports().empty());
  RecordProperty("bytes", std::to_string(bytes));
}

// The device-writable buffers are not copied into their bounce slots
// (DmaAttrs::kNoCopyIn), and only the bytes the used length claims are
// copied back, across the writable buffers in chain order. A device that
// writes more than it claims changes nothing beyond the claim, and a slot's
// stale bytes (the previous chain's) never reach an unclaimed byte.
TEST_P(RestrictedQueue, OnlyTheClaimedBytesComeBackAndStaleSlotBytesNever) {
  const DmaPolicy policy = DmaPolicy::from_topology(topo_);
  const uint64_t offered = feature_bit(kFeatureVersion1) | feature_bit(kFeatureAccessPlatform) |
                           feature_bit(kFeatureIndirectDesc);
  auto f = negotiate_features(offered, offered);
  ASSERT_THAT(f, IsOk());
  auto decision = policy.decide("vsock0", *f);
  ASSERT_THAT(decision, IsOk());
  auto ops = select_dma_ops(*platform_, "vsock0", *decision);
  ASSERT_THAT(ops, IsOk());
  DebugDmaOps dma(**ops, "vsock0");
  BouncePool& pool = *platform_->restricted_pool("vsock0");
  RecordingMemory dev_mem(*mem_);
  const QueueConfig cfg{.size = 8, .features = *f, .max_indirect = 8};
  auto drv = std::move(make_driver_queue(GetParam(), dma, cfg)).value();
  auto dev = std::move(make_device_queue(GetParam(), dev_mem, cfg, drv->ring_addresses())).value();

  constexpr uint32_t kA = 3000, kB = 700;  // two writable buffers: the claim splits across them
  const Gpa req{0x100000}, a{0x200000}, b{0x300000};
  struct Case {
    uint32_t claim;        // the used length the device reports
    std::byte written;     // what the device writes into EVERY writable byte
  };
  // 1: claims everything (fills the slots with 0x55); 2: writes 0xaa
  // everywhere but claims part of the first buffer; 3: claims a prefix
  // reaching into the second; 4: writes nothing and claims nothing: the
  // pool holds the earlier chains' bytes, none of which may appear; 5: a
  // claim past both buffers is clamped to them.
  const Case cases[] = {{kA + kB, std::byte{0x55}}, {1234, std::byte{0xaa}}, {kA + 9, std::byte{0x3c}},
                        {0, std::byte{0}},          {kA + kB + 4096, std::byte{0x96}}};
  int c = 0;
  for (const Case& k : cases) {
    SCOPED_TRACE(::testing::Message() << "case " << c);
    ASSERT_THAT(mem_->fill(req, 16, std::byte{0x01}), IsOk());
    ASSERT_THAT(mem_->fill(a, kA, std::byte{0x77}), IsOk());
    ASSERT_THAT(mem_->fill(b, kB, std::byte{0x78}), IsOk());
    const DriverSegment segs[] = {{.addr = req, .len = 16, .type = BufferType::kDeviceReadable},
                                  {.addr = a, .len = kA, .type = BufferType::kDeviceWritable},
                                  {.addr = b, .len = kB, .type = BufferType::kDeviceWritable}};
    ASSERT_THAT(drv->add(segs, c), IsOk());
    DescriptorChain chain;
    ASSERT_THAT(dev->pop(chain), HasValue(true));
    ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
    if (k.written != std::byte{0}) {
      for (const Fragment& fr : chain.writable) std::fill_n(fr.host, fr.len, k.written);
    }
    ASSERT_THAT(dev->push_used(chain, k.claim), IsOk());
    auto used = drv->get_used();
    ASSERT_THAT(used, IsOk());
    ASSERT_TRUE(used->has_value());
    const uint32_t claim = std::min(k.claim, kA + kB);
    EXPECT_EQ((*used)->len, claim);
    ASSERT_THAT(dma.cpu_access(a, kA, CpuAccess::kRead), IsOk());
    ASSERT_THAT(dma.cpu_access(b, kB, CpuAccess::kRead), IsOk());
    std::vector<std::byte> got(kA + kB);
    ASSERT_THAT(mem_->read(a, std::span(got).first(kA)), IsOk());
    ASSERT_THAT(mem_->read(b, std::span(got).subspan(kA)), IsOk());
    for (uint32_t i = 0; i < kA + kB; ++i) {
      const std::byte original = i < kA ? std::byte{0x77} : std::byte{0x78};
      ASSERT_EQ(got[i], i < claim ? k.written : original) << "byte " << i << " of the writable buffers";
    }
    ++c;
  }
  dev.reset();
  drv.reset();
  EXPECT_EQ(pool.stats().used_slots, 0u);
  EXPECT_THAT(dma.check_teardown(), IsOk());
  EXPECT_TRUE(dma.reports().empty());
}

// get_used_batch() gathers the unmaps of a whole completion batch, yet each
// chain's writable buffers still get back exactly that chain's own claim:
// three chains completed together, each device-written everywhere, with
// claims of everything, a prefix and nothing.
TEST_P(RestrictedQueue, ABatchCopiesBackEachChainsOwnClaim) {
  const DmaPolicy policy = DmaPolicy::from_topology(topo_);
  const uint64_t offered = feature_bit(kFeatureVersion1) | feature_bit(kFeatureAccessPlatform) |
                           feature_bit(kFeatureIndirectDesc);
  auto f = negotiate_features(offered, offered);
  ASSERT_THAT(f, IsOk());
  auto decision = policy.decide("vsock0", *f);
  ASSERT_THAT(decision, IsOk());
  auto ops = select_dma_ops(*platform_, "vsock0", *decision);
  ASSERT_THAT(ops, IsOk());
  DebugDmaOps dma(**ops, "vsock0");
  BouncePool& pool = *platform_->restricted_pool("vsock0");
  RecordingMemory dev_mem(*mem_);
  const QueueConfig cfg{.size = 16, .features = *f, .max_indirect = 8};
  auto drv = std::move(make_driver_queue(GetParam(), dma, cfg)).value();
  auto dev = std::move(make_device_queue(GetParam(), dev_mem, cfg, drv->ring_addresses())).value();

  constexpr uint32_t kA = 3000, kB = 700;
  constexpr uint32_t kClaims[] = {kA + kB, kA + 100, 0};
  constexpr int kN = 3;
  for (int round = 0; round < 2; ++round) {  // the second round reuses slots the first filled
    SCOPED_TRACE(::testing::Message() << "round " << round);
    for (int c = 0; c < kN; ++c) {
      const Gpa req{0x100000 + uint64_t{0x10000} * c}, a{0x200000 + uint64_t{0x10000} * c},
          b{0x300000 + uint64_t{0x10000} * c};
      ASSERT_THAT(mem_->fill(req, 16, std::byte{0x01}), IsOk());
      ASSERT_THAT(mem_->fill(a, kA, std::byte{0x77}), IsOk());
      ASSERT_THAT(mem_->fill(b, kB, std::byte{0x78}), IsOk());
      const DriverSegment segs[] = {{.addr = req, .len = 16, .type = BufferType::kDeviceReadable},
                                    {.addr = a, .len = kA, .type = BufferType::kDeviceWritable},
                                    {.addr = b, .len = kB, .type = BufferType::kDeviceWritable}};
      ASSERT_THAT(drv->add(segs, c), IsOk());
    }
    for (int c = 0; c < kN; ++c) {
      DescriptorChain chain;
      ASSERT_THAT(dev->pop(chain), HasValue(true));
      ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
      const auto fill = std::byte(static_cast<uint8_t>(0x50 + 16 * round + c));
      for (const Fragment& fr : chain.writable) std::fill_n(fr.host, fr.len, fill);
      ASSERT_THAT(dev->push_used(chain, kClaims[c]), IsOk());
    }
    UsedBuffer out[8];
    auto n = drv->get_used_batch(out);
    ASSERT_THAT(n, IsOk());
    ASSERT_EQ(*n, static_cast<size_t>(kN));
    for (size_t k = 0; k < *n; ++k) {
      const auto c = static_cast<int>(out[k].cookie);
      ASSERT_LT(c, kN);
      SCOPED_TRACE(::testing::Message() << "chain " << c);
      EXPECT_EQ(out[k].len, kClaims[c]);
      const Gpa a{0x200000 + uint64_t{0x10000} * c}, b{0x300000 + uint64_t{0x10000} * c};
      ASSERT_THAT(dma.cpu_access(a, kA, CpuAccess::kRead), IsOk());
      ASSERT_THAT(dma.cpu_access(b, kB, CpuAccess::kRead), IsOk());
      std::vector<std::byte> got(kA + kB);
      ASSERT_THAT(mem_->read(a, std::span(got).first(kA)), IsOk());
      ASSERT_THAT(mem_->read(b, std::span(got).subspan(kA)), IsOk());
      const auto fill = std::byte(static_cast<uint8_t>(0x50 + 16 * round + c));
      for (uint32_t i = 0; i < kA + kB; ++i) {
        const std::byte original = i < kA ? std::byte{0x77} : std::byte{0x78};
        ASSERT_EQ(got[i], i < kClaims[c] ? fill : original) << "byte " << i << " of the writable buffers";
      }
    }
  }
  dev.reset();
  drv.reset();
  EXPECT_EQ(pool.stats().used_slots, 0u);
  EXPECT_THAT(dma.check_teardown(), IsOk());
  EXPECT_TRUE(dma.reports().empty());
}

// The control: the legacy bypass would hand the device private addresses,
// which its shared-only view cannot reach. The policy never selects it here.
TEST_P(RestrictedQueue, TheBypassWouldHandPrivateAddressesToTheDevice) {
  const DmaPolicy policy = DmaPolicy::from_topology(topo_);
  EXPECT_THAT(policy.decide("vsock0", feature_bit(kFeatureVersion1)), IsError(DmaErrc::kPlatformRefused));
  auto bypass = platform_->bypass_ops("vsock0");  // rings in the shared coherent pool
  ASSERT_THAT(bypass, IsOk());
  RecordingMemory dev_mem(*mem_);
  const QueueConfig cfg{.size = 8, .features = feature_bit(kFeatureVersion1)};
  auto drv = std::move(make_driver_queue(GetParam(), **bypass, cfg)).value();
  auto dev = std::move(make_device_queue(GetParam(), dev_mem, cfg, drv->ring_addresses())).value();
  const DriverSegment seg{.addr = Gpa{0x100000}, .len = 64, .type = BufferType::kDeviceReadable};
  ASSERT_THAT(drv->add({&seg, 1}, 1), IsOk());
  DescriptorChain chain;
  ASSERT_THAT(dev->pop(chain), HasValue(true));
  ASSERT_TRUE(chain.error.has_value());
  EXPECT_TRUE(chain.error->is(MemErrc::kNotMapped)) << chain.error->to_string();
  ASSERT_EQ(dev_mem.private_seen().size(), 1u);
  EXPECT_EQ(dev_mem.private_seen()[0], DmaAddr{0x100000});
  ASSERT_THAT(dev->push_used(chain, 0), IsOk());
  auto used = drv->get_used();
  ASSERT_THAT(used, IsOk());
}

INSTANTIATE_TEST_SUITE_P(Formats, RestrictedQueue, ::testing::Values(RingFormat::kSplit, RingFormat::kPacked),
                         [](const ::testing::TestParamInfo<RingFormat>& i) { return std::string(to_string(i.param)); });

}  // namespace
}  // namespace vdma
