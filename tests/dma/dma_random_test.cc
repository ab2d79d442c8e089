// Randomized test: >= 100,000 map / unmap / sync / device-write / CPU-write
// operations (25,000 under a sanitizer, see iterations.h) per configuration against a simple reference model of what
// every byte must hold, with the debug checker wrapped around the ops.
//
// The model keeps a shadow of the driver's buffers and, for each bounced
// mapping, of the bytes the device sees. Bounce semantics in the model:
// map copies in (every direction, except kFromDevice with kNoCopyIn, whose
// slots keep what they held); sync_for_device copies in what the device
// reads; sync_for_cpu and unmap (without kSkipCpuSync) copy back what the
// device writes, and unmap_batch only the `written` prefix it is given.
// A direct mapping aliases the buffer. It also keeps its own
// bitmap of bounce slots, so every placement is checked (inside one segment,
// no overlap, alignment) and every kPoolFull is checked against an
// exhaustive search for a legal placement.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "result_matchers.h"
#include "vdma/dma/debug_dma_ops.h"
#include "vdma/dma/direct_dma_ops.h"
#include "vdma/dma/iommu_dma_ops.h"
#include "iterations.h"

namespace vdma {
namespace {

using namespace vdma::testing;

constexpr uint64_t kLowArena = 1 << 20;          // private
constexpr uint64_t kArenaSize = 16 << 20;
constexpr uint64_t kShared = 32 << 20;           // shared: coherent window, then the pool
constexpr uint64_t kPoolBase = kShared + (1 << 20);
constexpr uint64_t kPoolSize = 2 << 20;
constexpr uint64_t kHighArena = 1ull << 32;      // private, beyond 32 bits
constexpr uint64_t kSlot = BouncePool::kSlotSize;
constexpr uint32_t kPoolSlots = kPoolSize / kSlot;
const int kOps = testing::test_iterations(100'000);  // see iterations.h

enum class Mode { kForce, kForceMinAlign, kMaskBounce, kIommuStrict, kIommuLazy };

std::string name(const ::testing::TestParamInfo<Mode>& i) {
  switch (i.param) {
    case Mode::kForce: return "ForceBounceWithOffsetsAndCBit";
    case Mode::kForceMinAlign: return "ForceBounceMinAlignMask";
    case Mode::kMaskBounce: return "MaskBounce32Bit";
    case Mode::kIommuStrict: return "IommuStrict";
    case Mode::kIommuLazy: return "IommuLazy";
  }
  return "unknown";
}

struct Live {
  Gpa gpa;
  uint64_t len;
  DmaDirection dir;
  DmaAddr dma;
  bool bounced;
  Gpa dev_gpa;                 // where the device's bytes are
  std::vector<std::byte> dev;  // bounced: what the device sees
  uint32_t first_slot = 0, nslots = 0;
};

class DmaRandom : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    mem_ = *GuestMemory::create({{Gpa{0}, 32 << 20, MemAttr::kPrivate, "ram-low"},
                                 {Gpa{kShared}, 8 << 20, MemAttr::kShared, "shared"},
                                 {Gpa{kHighArena}, kArenaSize, MemAttr::kPrivate, "ram-high"}});
    pool_ = *BouncePool::create(*mem_, {.window = {Gpa{kPoolBase}, kPoolSize}, .min_areas = 4});
    DirectDmaConfig c;
    c.bounce_pool = pool_;
    c.coherent = *CoherentPool::create(*mem_, {Gpa{kShared}, 1 << 20});
    mode_ = GetParam();
    if (iommu()) {
      // The IOMMU ops alias the buffer like a direct mapping; the DMA address
      // is an IOVA the page table must translate back to it.
      ioas_ = IoAddressSpace::create();
      paging_ = std::move(PagingDomain::create(*ioas_)).value();
      dom_ = std::move(IommuDmaDomain::create(
                           *ioas_, *paging_,
                           {.mode = mode_ == Mode::kIommuLazy ? InvalidationMode::kLazy : InvalidationMode::kStrict}))
                 .value();
      iommu_ = std::move(IommuDmaOps::create(*mem_, dom_, {.coherent = c.coherent})).value();
      ops_ = std::make_unique<DebugDmaOps>(*iommu_, "random");
    } else if (mode_ == Mode::kMaskBounce) {
      c.bus.dma_mask = 0xffffffff;
    } else {
      c.bounce_mode = BounceMode::kForce;
      c.bus.ranges = {{Gpa{0}, DmaAddr{1ull << 40}, 64 << 20}, {Gpa{kHighArena}, DmaAddr{1ull << 41}, kArenaSize}};
      c.bus.encryption_bit = 47;
      if (mode_ == Mode::kForceMinAlign) c.min_align_mask = min_align_ = 0xfff;
    }
    if (!iommu()) {
      direct_ = *DirectDmaOps::create(*mem_, std::move(c));
      ops_ = std::make_unique<DebugDmaOps>(*direct_, "random");
    }
    for (int a = 0; a < 2; ++a) {
      shadow_[a].resize(kArenaSize);
      for (auto& b : shadow_[a]) b = std::byte(static_cast<uint8_t>(rng_()));
      ASSERT_THAT(mem_->write(Gpa{arena_base(a)}, shadow_[a]), IsOk());
    }
    used_.assign(kPoolSlots, false);
  }

  bool iommu() const { return mode_ == Mode::kIommuStrict || mode_ == Mode::kIommuLazy; }
  static uint64_t arena_base(int a) { return a == 0 ? kLowArena : kHighArena; }
  std::byte* shadow_at(Gpa g) {
    const int a = g.value() >= kHighArena ? 1 : 0;
    return shadow_[a].data() + (g.value() - arena_base(a));
  }
  uint64_t random_len() {
    const uint64_t max = pool_->max_mapping_size(min_align_);
    switch (rng_() % 20) {
      case 0: return 32768 + rng_() % (max - 32768 + 1);
      case 1: case 2: case 3: case 4: return 4097 + rng_() % (32768 - 4096);
      case 5: case 6: case 7: case 8: case 9: case 10: return 257 + rng_() % (4096 - 256);
      default: return 1 + rng_() % 256;
    }
  }
  std::vector<std::byte> random_bytes(size_t n) {
    std::vector<std::byte> v(n);
    for (auto& b : v) b = std::byte(static_cast<uint8_t>(rng_()));
    return v;
  }
  std::vector<std::byte> read(Gpa g, uint64_t n) {
    std::vector<std::byte> v(n);
    VDMA_CHECK(mem_->read(g, v).has_value(), "read");
    return v;
  }

  // Whether any legal placement for (gpa, len) exists in the model's bitmap.
  bool placement_exists(Gpa gpa, uint64_t len, uint32_t* where) const {
    const uint64_t offset = gpa.value() & min_align_ & (kSlot - 1);
    const auto n = static_cast<uint32_t>((offset + len + kSlot - 1) / kSlot);
    const uint64_t high_mask = min_align_ & ~(kSlot - 1);
    for (uint32_t s = 0; s + n <= kPoolSlots; ++s) {
      if ((s % 128) + n > 128) continue;
      const uint64_t addr = kPoolBase + uint64_t{s} * kSlot;
      if (min_align_ == 0 && len >= 4096 && addr % 4096 != 0) continue;
      if ((addr & high_mask) != (gpa.value() & high_mask)) continue;
      bool free = true;
      for (uint32_t i = s; i < s + n && free; ++i) free = !used_[i];
      if (free) {
        *where = s;
        return true;
      }
    }
    return false;
  }

  uint64_t expected_bus(Gpa g, bool shared) const {
    if (mode_ == Mode::kMaskBounce) return g.value();
    const uint64_t off = g.value() >= kHighArena ? (1ull << 41) + (g.value() - kHighArena) : (1ull << 40) + g.value();
    return shared ? off : off | (1ull << 47);
  }

  void do_map() {
    const int arena = static_cast<int>(rng_() % 2);
    GpaAllocator& alloc = arena == 0 ? low_ : high_;
    const uint64_t len = random_len();
    auto g = alloc.allocate(len, 1);
    if (!g) return;  // arena fragmented: try another op
    const auto dir = static_cast<DmaDirection>(rng_() % 3);
    DmaAttrs attrs = rng_() % 10 == 0 ? DmaAttrs::kSkipCpuSync : DmaAttrs::kNone;
    // A virtqueue's device-writable buffer: no copy-in (ignored for a
    // direction the device reads).
    const bool no_copy_in = rng_() % 3 == 0;
    if (no_copy_in) attrs = attrs | DmaAttrs::kNoCopyIn;
    const bool bounced = !iommu() && (mode_ != Mode::kMaskBounce || arena == 1);
    auto d = ops_->map(*g, len, dir, attrs);
    if (!d) {
      ASSERT_TRUE(bounced) << d.error().to_string();
      ASSERT_TRUE(d.error().is(DmaErrc::kPoolFull)) << d.error().to_string();
      uint32_t s = 0;
      ASSERT_FALSE(placement_exists(*g, len, &s))
          << "pool full for " << len << " bytes at " << fmt::format("{}", *g) << " yet slot " << s << " fits";
      ++pool_full_;
      ASSERT_THAT(alloc.free(*g, len), IsOk());
      return;
    }
    Live m{*g, len, dir, *d, bounced, *g, {}, 0, 0};
    if (bounced) {
      auto dev_gpa = direct_->bus().to_cpu(*d);
      ASSERT_THAT(dev_gpa, IsOk());
      m.dev_gpa = *dev_gpa;
      ASSERT_GE(m.dev_gpa.value(), kPoolBase);
      ASSERT_LE(m.dev_gpa.value() + len, kPoolBase + kPoolSize);
      ASSERT_EQ(d->value(), expected_bus(m.dev_gpa, true));
      const uint64_t offset = g->value() & min_align_ & (kSlot - 1);
      ASSERT_EQ((m.dev_gpa.value() - offset) % kSlot, 0u);
      ASSERT_EQ(m.dev_gpa.value() & min_align_, g->value() & min_align_);
      if (min_align_ == 0 && len >= 4096) {
        ASSERT_EQ(m.dev_gpa.value() % 4096, 0u);
      }
      m.first_slot = static_cast<uint32_t>((m.dev_gpa.value() - offset - kPoolBase) / kSlot);
      m.nslots = static_cast<uint32_t>((offset + len + kSlot - 1) / kSlot);
      ASSERT_LE(m.first_slot % 128 + m.nslots, 128u) << "mapping crosses a segment";
      for (uint32_t i = m.first_slot; i < m.first_slot + m.nslots; ++i) {
        ASSERT_FALSE(used_[i]) << "slot " << i << " handed out twice";
        used_[i] = true;
      }
      used_slots_ += m.nslots;
      if (no_copy_in && dir == DmaDirection::kFromDevice) {
        m.dev = read(m.dev_gpa, len);  // the slots keep whatever they held
      } else {
        m.dev.assign(shadow_at(*g), shadow_at(*g) + len);  // copy-in
        ASSERT_EQ(read(m.dev_gpa, len), m.dev);
      }
    } else if (iommu()) {
      const Access want = dir == DmaDirection::kToDevice     ? Access::kRead
                          : dir == DmaDirection::kFromDevice ? Access::kWrite
                                                             : Access::kReadWrite;
      for (uint64_t off : {uint64_t{0}, len - 1}) {
        auto t = dom_->translate(Iova(d->value() + off), Access::kNone);
        ASSERT_THAT(t, IsOk());
        ASSERT_EQ(t->gpa, g->unchecked_add(off));
        ASSERT_EQ(t->perms, want);
      }
    } else {
      ASSERT_EQ(d->value(), g->value());
    }
    live_.push_back(std::move(m));
  }

  // A random sub-range [off, off+n) of m.
  std::pair<uint64_t, uint64_t> sub(const Live& m) {
    const uint64_t off = rng_() % m.len;
    return {off, 1 + rng_() % (m.len - off)};
  }

  void do_device_write(Live& m) {
    if (!device_writes(m.dir)) return;
    auto [off, n] = sub(m);
    const auto bytes = random_bytes(n);
    ASSERT_THAT(mem_->write(m.dev_gpa.unchecked_add(off), bytes), IsOk());
    if (m.bounced) {
      std::memcpy(m.dev.data() + off, bytes.data(), n);
    } else {
      std::memcpy(shadow_at(m.gpa) + off, bytes.data(), n);
    }
  }

  void do_cpu_write(Live& m) {
    auto [off, n] = sub(m);
    const auto bytes = random_bytes(n);
    ASSERT_THAT(mem_->write(m.gpa.unchecked_add(off), bytes), IsOk());
    std::memcpy(shadow_at(m.gpa) + off, bytes.data(), n);
  }

  DmaDirection sync_dir(const Live& m) {
    return m.dir == DmaDirection::kBidirectional ? static_cast<DmaDirection>(rng_() % 3) : m.dir;
  }

  void do_sync_for_cpu(Live& m) {
    auto [off, n] = sub(m);
    const DmaDirection dir = sync_dir(m);
    ASSERT_THAT(ops_->sync_for_cpu(DmaAddr{m.dma.value() + off}, n, dir), IsOk());
    if (m.bounced && device_writes(dir)) std::memcpy(shadow_at(m.gpa) + off, m.dev.data() + off, n);
  }

  void do_sync_for_device(Live& m) {
    auto [off, n] = sub(m);
    const DmaDirection dir = sync_dir(m);
    ASSERT_THAT(ops_->sync_for_device(DmaAddr{m.dma.value() + off}, n, dir), IsOk());
    if (m.bounced && device_reads(dir)) std::memcpy(m.dev.data() + off, shadow_at(m.gpa) + off, n);
  }

  void do_unmap(size_t i) {
    Live& m = live_[i];
    const bool skip = rng_() % 5 == 0;
    const DmaAttrs attrs = skip ? DmaAttrs::kSkipCpuSync : DmaAttrs::kNone;
    // Half through unmap_batch with the bytes the device claims (a prefix,
    // sometimes all, sometimes none, sometimes past the end): only those
    // come back from a bounce.
    uint64_t written = m.len;
    if (rng_() % 2 == 0) {
      const uint64_t pick = rng_() % 4;
      written = pick == 0 ? 0 : pick == 1 ? m.len + 1 + rng_() % 100 : rng_() % (m.len + 1);
      const DmaUnmapRequest req{.addr = m.dma, .len = m.len, .dir = m.dir, .attrs = attrs, .written = written};
      ASSERT_THAT(ops_->unmap_batch({&req, 1}), IsOk());
    } else {
      ASSERT_THAT(ops_->unmap(m.dma, m.len, m.dir, attrs), IsOk());
    }
    if (iommu()) {
      ASSERT_THAT(dom_->translate(Iova(m.dma.value()), Access::kNone), IsError(IommuErrc::kNotPresent));
    }
    if (m.bounced && device_writes(m.dir) && !skip) {
      std::memcpy(shadow_at(m.gpa), m.dev.data(), std::min(written, m.len));
    }
    ASSERT_EQ(read(m.gpa, m.len), std::vector<std::byte>(shadow_at(m.gpa), shadow_at(m.gpa) + m.len));
    if (m.bounced) {
      for (uint32_t s = m.first_slot; s < m.first_slot + m.nslots; ++s) used_[s] = false;
      used_slots_ -= m.nslots;
    }
    ASSERT_THAT((m.gpa.value() >= kHighArena ? high_ : low_).free(m.gpa, m.len), IsOk());
    live_[i] = std::move(live_.back());
    live_.pop_back();
  }

  void verify(const Live& m) {
    ASSERT_EQ(read(m.gpa, m.len), std::vector<std::byte>(shadow_at(m.gpa), shadow_at(m.gpa) + m.len));
    if (m.bounced) {
      ASSERT_EQ(read(m.dev_gpa, m.len), m.dev);
    }
  }

  void verify_all() {
    for (int a = 0; a < 2; ++a) {
      ASSERT_EQ(read(Gpa{arena_base(a)}, kArenaSize), shadow_[a]) << "arena " << a;
    }
    ASSERT_THAT(pool_->validate(), IsOk());
    ASSERT_EQ(pool_->stats().used_slots, used_slots_);
  }

  Mode mode_ = Mode::kForce;
  uint64_t min_align_ = 0;
  // IOMMU modes (declared before ops_ so the ops go first).
  std::unique_ptr<IoAddressSpace> ioas_;
  std::unique_ptr<PagingDomain> paging_;
  std::shared_ptr<IommuDmaDomain> dom_;
  std::unique_ptr<IommuDmaOps> iommu_;
  std::mt19937_64 rng_{0xd11a};
  std::unique_ptr<GuestMemory> mem_;
  std::shared_ptr<BouncePool> pool_;
  std::unique_ptr<DirectDmaOps> direct_;
  std::unique_ptr<DebugDmaOps> ops_;
  std::vector<std::byte> shadow_[2];
  GpaAllocator low_{{Gpa{kLowArena}, kArenaSize}};
  GpaAllocator high_{{Gpa{kHighArena}, kArenaSize}};
  std::vector<Live> live_;
  std::vector<bool> used_;
  uint64_t used_slots_ = 0;
  int pool_full_ = 0;
};

TEST_P(DmaRandom, EveryByteMatchesTheModel) {
  // Operation weights: map 3, device write, CPU write, sync_for_cpu,
  // sync_for_device and verify 1 each, unmap 2; at most 160 live mappings.
  static constexpr int kWeights[] = {3, 1, 1, 1, 1, 1, 2};
  int counts[7] = {};
  for (int op = 0; op < kOps; ++op) {
    int pick = static_cast<int>(rng_() % 10);
    int kind = 0;
    while (pick >= kWeights[kind]) pick -= kWeights[kind++];
    if (live_.empty()) kind = 0;
    ++counts[kind];
    if (kind == 0) {
      if (live_.size() < 160) {
        ASSERT_NO_FATAL_FAILURE(do_map());
      }
      continue;
    }
    const size_t i = rng_() % live_.size();
    switch (kind) {
      case 1: ASSERT_NO_FATAL_FAILURE(do_device_write(live_[i])); break;
      case 2: ASSERT_NO_FATAL_FAILURE(do_cpu_write(live_[i])); break;
      case 3: ASSERT_NO_FATAL_FAILURE(do_sync_for_cpu(live_[i])); break;
      case 4: ASSERT_NO_FATAL_FAILURE(do_sync_for_device(live_[i])); break;
      case 5: ASSERT_NO_FATAL_FAILURE(verify(live_[i])); break;
      default: ASSERT_NO_FATAL_FAILURE(do_unmap(i)); break;
    }
    if (op % 1000 == 999) {
      ASSERT_THAT(pool_->validate(), IsOk()) << "op " << op;
      ASSERT_EQ(pool_->stats().used_slots, used_slots_) << "op " << op;
    }
    if (op % (kOps / 4) == kOps / 4 - 1) {  // four full checks along the way
      ASSERT_NO_FATAL_FAILURE(verify_all());
    }
  }
  while (!live_.empty()) ASSERT_NO_FATAL_FAILURE(do_unmap(live_.size() - 1));
  ASSERT_NO_FATAL_FAILURE(verify_all());
  EXPECT_EQ(pool_->stats().used_slots, 0u);
  EXPECT_THAT(ops_->check_teardown(), IsOk());
  EXPECT_TRUE(ops_->reports().empty()) << ops_->reports().front().message;
  // Every kind of operation ran many times.
  for (int k = 0; k < 7; ++k) EXPECT_GT(counts[k], kOps / 20) << "op kind " << k;
  if (mode_ == Mode::kForce || mode_ == Mode::kForceMinAlign) {
    EXPECT_GT(pool_->stats().high_water, kPoolSlots / 2);
  }
  if (iommu()) {
    ASSERT_THAT(dom_->flush(), IsOk());
    EXPECT_EQ(dom_->mapping_count(), 0u);
    EXPECT_EQ(dom_->flush_queue()->stats().pending, 0u);
  }
  RecordProperty("pool_full", pool_full_);
  RecordProperty("high_water", static_cast<int>(pool_->stats().high_water));
}

[[maybe_unused]] void PrintTo(Mode m, std::ostream* os) { *os << name({m, 0}); }

INSTANTIATE_TEST_SUITE_P(Modes, DmaRandom, ::testing::Values(Mode::kForce, Mode::kForceMinAlign, Mode::kMaskBounce,
                                                               Mode::kIommuStrict, Mode::kIommuLazy),
                         name);

}  // namespace
}  // namespace vdma
