// SplitDeviceQueue against a hostile driver: every malformed ring gives its
// specific error, a bad chain is returned with length 0 and the queue goes on
// serving, a corrupt ring enters NEEDS_RESET for good without touching the
// ring again, and no byte of guest memory changes except the used entry the
// device writes. Memory the device must not reach is mprotect()ed PROT_NONE
// while the device works, so any stray access would fault.
//
// (The driver side facing a hostile device is in split_driver_queue_test.cc,
// suite SplitDriverHostileDevice.)
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "result_matchers.h"
#include "split_ring_builder.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/features.h"
#include "vdma/virtio/split_device_queue.h"

namespace vdma {
namespace {

using namespace vdma::testing;
using ::testing::HasSubstr;

constexpr Gpa kRingBase{0x1000};
constexpr uint16_t kSize = 16;
constexpr std::byte kGuard{0xa5};
constexpr uint64_t kPrivate = 0x200000;

// Makes a region inaccessible for the lifetime of the object.
class NoAccess {
 public:
  explicit NoAccess(const GuestRegion& r) : r_(r) {
    EXPECT_EQ(::mprotect(r_.host().data(), r_.size(), PROT_NONE), 0);
  }
  ~NoAccess() { EXPECT_EQ(::mprotect(r_.host().data(), r_.size(), PROT_READ | PROT_WRITE), 0); }
  NoAccess(const NoAccess&) = delete;
  NoAccess& operator=(const NoAccess&) = delete;

 private:
  const GuestRegion& r_;
};

class SplitHostileRing : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = GuestMemory::create({{Gpa{0}, 0x10000, MemAttr::kShared, "rings"},
                                  {Gpa{0x100000}, 0x40000, MemAttr::kShared, "data"},
                                  {Gpa{0x140000}, 0x10000, MemAttr::kShared, "data2"},
                                  {Gpa{kPrivate}, 0x10000, MemAttr::kPrivate, "private"}});
    ASSERT_THAT(m, IsOk());
    mem_ = std::move(m).value();
    for (const GuestRegion& r : mem_->regions()) ASSERT_THAT(mem_->fill(r.base(), r.size(), kGuard), IsOk());
    table_ = RegionTable::bypass(*mem_, MemAttr::kShared);
    ring_ = std::make_unique<SplitRingBuilder>(*mem_, kRingBase, kSize);  // zeroes the ring itself
  }

  std::unique_ptr<SplitDeviceQueue> make(uint64_t features = 0) {
    auto q = SplitDeviceQueue::create(table_, {.size = kSize, .features = features}, ring_->addresses());
    EXPECT_THAT(q, IsOk());
    if (!q) return nullptr;
    return std::move(q).value();
  }
  const GuestRegion& region(const char* name) const {
    for (const GuestRegion& r : mem_->regions()) {
      if (r.name() == name) return r;
    }
    ADD_FAILURE() << "no region " << name;
    return mem_->regions().front();
  }
  std::vector<std::vector<std::byte>> snapshot() const {
    std::vector<std::vector<std::byte>> out;
    for (const GuestRegion& r : mem_->regions()) out.emplace_back(r.host().begin(), r.host().end());
    return out;
  }
  // Every byte equals `before`, except `skip` (in the rings region).
  void expect_unchanged(const std::vector<std::vector<std::byte>>& before, AddrRange<Gpa> skip = {}) const {
    for (size_t i = 0; i < mem_->regions().size(); ++i) {
      const GuestRegion& r = mem_->regions()[i];
      if (std::memcmp(r.host().data(), before[i].data(), r.size()) == 0) continue;
      for (uint64_t off = 0; off < r.size(); ++off) {
        const Gpa at = r.base().unchecked_add(off);
        if (!skip.contains(at) && r.host()[off] != before[i][off]) {
          ADD_FAILURE() << fmt::format("byte at {} changed", at);
          return;
        }
      }
    }
  }

  // Pops the next chain with private memory inaccessible, checks it carries
  // an error and no fragment, returns it with push_used(chain, 0x1234) and
  // checks the only bytes that changed are the used element (id = head, len
  // 0) and the used idx.
  DescriptorChain pop_bad_chain(SplitDeviceQueue& q, uint16_t expected_head) {
    const auto before = snapshot();
    const uint16_t used_idx = ring_->used_idx();
    DescriptorChain chain;
    {
      NoAccess guard(region("private"));
      EXPECT_THAT(q.pop(chain), HasValue(true));
      if (!chain.error) {
        // Fail here, and give callers an error to compare instead of a crash.
        ADD_FAILURE() << "chain " << chain.id << " was accepted";
        chain.error = Error(BaseErrc::kInvalidArgument, "accepted");
      }
      EXPECT_EQ(chain.id, expected_head);
      EXPECT_TRUE(chain.readable.empty());
      EXPECT_TRUE(chain.writable.empty());
      EXPECT_EQ(chain.readable_len + chain.writable_len, 0u);
      EXPECT_THAT(q.push_used(chain, 0x1234), IsOk());
    }
    EXPECT_EQ(q.state(), DeviceQueueState::kRunning);
    EXPECT_EQ(ring_->used_idx(), static_cast<uint16_t>(used_idx + 1));
    EXPECT_EQ(ring_->used_entry(used_idx), (RawUsedElem{expected_head, 0}));
    const Gpa used_idx_field = ring_->used_gpa().unchecked_add(split::kUsedIdxOff);
    const Gpa elem = ring_->used_gpa().unchecked_add(split::kUsedRingOff + 8 * (used_idx % kSize));
    // Skip from the idx field through this element (the entries in between
    // were written by earlier pushes of the same test).
    const AddrRange<Gpa> skip{used_idx_field, elem.value() + 8 - used_idx_field.value()};
    expect_unchanged(before, skip);
    return chain;
  }

  // After a bad chain, a good one is served normally.
  void expect_queue_still_serves(SplitDeviceQueue& q) {
    const uint16_t head = 15;
    ring_->set_desc(head, {0x100000, 8, split::kDescFWrite, 0});
    ring_->make_available(head);
    DescriptorChain chain;
    ASSERT_THAT(q.pop(chain), HasValue(true));
    ASSERT_FALSE(chain.error.has_value()) << chain.error->to_string();
    EXPECT_EQ(chain.id, head);
    EXPECT_EQ(chain.writable_len, 8u);
  }

  std::unique_ptr<GuestMemory> mem_;
  RegionTable table_;
  std::unique_ptr<SplitRingBuilder> ring_;
};

// ---- Per-chain errors: the chain comes back with its error, the queue runs on.

TEST_F(SplitHostileRing, DescriptorLoop) {
  auto q = make();
  ring_->set_desc(0, {0x100000, 8, split::kDescFNext, 1});
  ring_->set_desc(1, {0x100100, 8, split::kDescFNext, 0});
  ring_->make_available(0);
  const DescriptorChain c = pop_bad_chain(*q, 0);
  EXPECT_EQ(c.error->to_string(),
            "virtio.bad_descriptor: descriptor 0: chain from head 0 does not end within the 16 descriptors of its "
            "table (a loop)");
  expect_queue_still_serves(*q);
}

TEST_F(SplitHostileRing, DescriptorPointingAtItself) {
  auto q = make();
  ring_->set_desc(3, {0x100000, 8, split::kDescFNext | split::kDescFWrite, 3});
  ring_->make_available(3);
  const DescriptorChain c = pop_bad_chain(*q, 3);
  EXPECT_EQ(c.error->message(),
            "descriptor 3: chain from head 3 does not end within the 16 descriptors of its table (a loop)");
  expect_queue_still_serves(*q);
}

TEST_F(SplitHostileRing, LoopInsideAnIndirectTable) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const RawDesc table[] = {{0x100000, 8, split::kDescFNext, 1}, {0x100100, 8, split::kDescFNext, 0}};
  ring_->write_table(Gpa{0x110000}, table);
  ring_->set_desc(0, {0x110000, 32, split::kDescFIndirect, 0});
  ring_->make_available(0);
  const DescriptorChain c = pop_bad_chain(*q, 0);
  EXPECT_EQ(c.error->to_string(),
            "virtio.bad_descriptor: indirect descriptor 0 of head 0: chain from head 0 does not end within the 2 "
            "descriptors of its table (a loop)");
}

TEST_F(SplitHostileRing, AddressOutsideGuestMemory) {
  auto q = make();
  ring_->set_desc(0, {0x100000, 8, split::kDescFNext, 1});
  ring_->set_desc(1, {0x7000'0000'0000, 16, 0, 0});
  ring_->make_available(0);
  const DescriptorChain c = pop_bad_chain(*q, 0);
  EXPECT_TRUE(c.error->is(MemErrc::kNotMapped)) << c.error->to_string();
  EXPECT_THAT(c.error->message(), HasSubstr("descriptor 1: dma:0x700000000000 + len 0x10"));
  EXPECT_EQ(c.fault_addr, DmaAddr{0x7000'0000'0000});
  EXPECT_EQ(c.fault_len, 16u);
  EXPECT_EQ(c.fault_access, Access::kRead);
  expect_queue_still_serves(*q);
}

TEST_F(SplitHostileRing, AddressInMemoryTheDeviceMayNotReach) {
  auto q = make();
  ring_->set_desc(0, {kPrivate + 0x100, 64, split::kDescFWrite, 0});
  ring_->make_available(0);
  const DescriptorChain c = pop_bad_chain(*q, 0);
  EXPECT_TRUE(c.error->is(MemErrc::kNotMapped)) << c.error->to_string();
  EXPECT_EQ(c.fault_addr, DmaAddr{kPrivate + 0x100});
  EXPECT_EQ(c.fault_len, 64u);
  EXPECT_EQ(c.fault_access, Access::kWrite);
}

TEST_F(SplitHostileRing, RangeRunningPastTheEndOfMemory) {
  auto q = make();
  // data2 ends at 0x150000, followed by a hole.
  ring_->set_desc(0, {0x100000, 8, split::kDescFNext, 1});
  ring_->set_desc(1, {0x14fff0, 0x20, split::kDescFWrite, 0});
  ring_->make_available(0);
  const DescriptorChain c = pop_bad_chain(*q, 0);
  EXPECT_TRUE(c.error->is(MemErrc::kNotMapped)) << c.error->to_string();
  EXPECT_THAT(c.error->message(), HasSubstr("dma:0x150000 is not mapped"));
  EXPECT_EQ(c.fault_addr, DmaAddr{0x14fff0});
  EXPECT_EQ(c.fault_len, 0x20u);
}

TEST_F(SplitHostileRing, AddressPlusLengthWraps) {
  auto q = make();
  ring_->set_desc(0, {0xffff'ffff'ffff'fff0, 0x20, 0, 0});
  ring_->make_available(0);
  const DescriptorChain c = pop_bad_chain(*q, 0);
  EXPECT_EQ(c.error->to_string(),
            "virtio.bad_descriptor: descriptor 0: address dma:0xfffffffffffffff0 + len 0x20 wraps past 2^64");
  EXPECT_EQ(c.fault_access, Access::kNone);  // a rule violation, not a translation fault
}

TEST_F(SplitHostileRing, IndirectInsideIndirect) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const RawDesc inner[] = {{0x100000, 8, 0, 0}};
  ring_->write_table(Gpa{0x120000}, inner);
  const RawDesc outer[] = {{0x100000, 8, split::kDescFNext, 1}, {0x120000, 16, split::kDescFIndirect, 0}};
  ring_->write_table(Gpa{0x110000}, outer);
  ring_->set_desc(0, {0x110000, 32, split::kDescFIndirect, 0});
  ring_->make_available(0);
  const DescriptorChain c = pop_bad_chain(*q, 0);
  EXPECT_EQ(c.error->to_string(),
            "virtio.bad_descriptor: indirect descriptor 1 of head 0: INDIRECT inside an indirect table");
  expect_queue_still_serves(*q);
}

struct BadIndirectCase {
  const char* name;
  bool negotiated;
  RawDesc desc;
  std::string message;  // exact, for kBadDescriptor; a substring for MemErrc
  bool mem_error = false;
};

class SplitHostileIndirect : public SplitHostileRing, public ::testing::WithParamInterface<BadIndirectCase> {};

TEST_P(SplitHostileIndirect, IsABadChain) {
  const BadIndirectCase& p = GetParam();
  auto q = make(p.negotiated ? feature_bit(kFeatureIndirectDesc) : 0);
  const RawDesc table[] = {{0x100000, 8, split::kDescFNext, 1}, {0x100100, 8, split::kDescFWrite, 0}};
  ring_->write_table(Gpa{0x110000}, table);
  ring_->set_desc(4, p.desc);
  ring_->make_available(4);
  const DescriptorChain c = pop_bad_chain(*q, 4);
  if (p.mem_error) {
    EXPECT_TRUE(c.error->is(MemErrc::kNotMapped)) << c.error->to_string();
    EXPECT_THAT(c.error->message(), HasSubstr(p.message));
    EXPECT_EQ(c.fault_addr, DmaAddr{p.desc.addr});
    EXPECT_EQ(c.fault_len, p.desc.len);
    EXPECT_EQ(c.fault_access, Access::kRead);
  } else {
    EXPECT_TRUE(c.error->is(VirtioErrc::kBadDescriptor)) << c.error->to_string();
    EXPECT_EQ(c.error->message(), p.message);
  }
  expect_queue_still_serves(*q);
}

[[maybe_unused]] void PrintTo(const BadIndirectCase& c, std::ostream* os) { *os << c.name; }

INSTANTIATE_TEST_SUITE_P(
    Tables, SplitHostileIndirect,
    ::testing::Values(
        BadIndirectCase{"NotNegotiated", false, {0x110000, 32, split::kDescFIndirect, 0},
                        "descriptor 4: INDIRECT is set but INDIRECT_DESC was not negotiated"},
        BadIndirectCase{"WithNext", true, {0x110000, 32, split::kDescFIndirect | split::kDescFNext, 5},
                        "descriptor 4: INDIRECT and NEXT are both set"},
        BadIndirectCase{"ZeroLength", true, {0x110000, 0, split::kDescFIndirect, 0},
                        "descriptor 4: indirect table length 0x0 is not a non-zero multiple of 16"},
        BadIndirectCase{"LengthNotMultipleOf16", true, {0x110000, 24, split::kDescFIndirect, 0},
                        "descriptor 4: indirect table length 0x18 is not a non-zero multiple of 16"},
        BadIndirectCase{"LongerThanTheQueue", true, {0x110000, 17 * 16, split::kDescFIndirect, 0},
                        "descriptor 4: indirect table of 17 descriptors is longer than the queue size 16"},
        BadIndirectCase{"Misaligned", true, {0x110008, 32, split::kDescFIndirect, 0},
                        "descriptor 4: indirect table at dma:0x110008 is not 16-byte aligned"},
        BadIndirectCase{"Wraps", true, {0xffff'ffff'ffff'fff0, 32, split::kDescFIndirect, 0},
                        "descriptor 4: indirect table at dma:0xfffffffffffffff0 + len 0x20 wraps past 2^64"},
        BadIndirectCase{"InUnreachableMemory", true, {kPrivate, 32, split::kDescFIndirect, 0},
                        "descriptor 4: dma:0x200000 + len 0x20", true}),
    [](const ::testing::TestParamInfo<BadIndirectCase>& case_info) { return std::string(case_info.param.name); });

TEST_F(SplitHostileRing, ReadableAfterWritable) {
  auto q = make();
  ring_->set_desc(0, {0x100000, 8, split::kDescFWrite | split::kDescFNext, 1});
  ring_->set_desc(1, {0x100100, 8, 0, 0});
  ring_->make_available(0);
  EXPECT_EQ(pop_bad_chain(*q, 0).error->to_string(),
            "virtio.bad_descriptor: descriptor 1: device-readable after a device-writable descriptor");
  expect_queue_still_serves(*q);
}

TEST_F(SplitHostileRing, ReadableAfterWritableAcrossAnIndirectTable) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  const RawDesc table[] = {{0x100100, 8, 0, 0}};
  ring_->write_table(Gpa{0x110000}, table);
  ring_->set_desc(0, {0x100000, 8, split::kDescFWrite | split::kDescFNext, 1});
  ring_->set_desc(1, {0x110000, 16, split::kDescFIndirect, 0});
  ring_->make_available(0);
  EXPECT_EQ(pop_bad_chain(*q, 0).error->message(),
            "indirect descriptor 0 of head 0: device-readable after a device-writable descriptor");
}

TEST_F(SplitHostileRing, NextOutsideTheTable) {
  auto q = make(feature_bit(kFeatureIndirectDesc));
  ring_->set_desc(0, {0x100000, 8, split::kDescFNext, 16});
  ring_->make_available(0);
  EXPECT_EQ(pop_bad_chain(*q, 0).error->message(), "descriptor 0: next 16 is outside the table of 16 descriptors");

  const RawDesc table[] = {{0x100000, 8, split::kDescFNext, 1}, {0x100100, 8, split::kDescFNext, 2}};
  ring_->write_table(Gpa{0x110000}, table);
  ring_->set_desc(1, {0x110000, 32, split::kDescFIndirect, 0});
  ring_->make_available(1);
  EXPECT_EQ(pop_bad_chain(*q, 1).error->message(),
            "indirect descriptor 1 of head 1: next 2 is outside the table of 2 descriptors");
}

TEST_F(SplitHostileRing, AFullRingOfBadChainsIsDrainedAndThePopLoopEnds) {
  auto q = make();
  // Every descriptor links to the next, so every head starts a loop.
  for (uint16_t i = 0; i < kSize; ++i) {
    ring_->set_desc(i, {0x100000, 8, split::kDescFNext, static_cast<uint16_t>((i + 1) % kSize)});
    ring_->make_available(i);
  }
  DescriptorChain chain;
  int popped = 0;
  for (int guard = 0; guard < 100; ++guard) {
    auto got = q->pop(chain);
    ASSERT_THAT(got, IsOk());
    if (!*got) break;
    ASSERT_TRUE(chain.error.has_value());
    EXPECT_TRUE(chain.error->is(VirtioErrc::kBadDescriptor));
    ASSERT_THAT(q->push_used(chain, 0), IsOk());
    ++popped;
  }
  EXPECT_EQ(popped, kSize);
  for (uint16_t i = 0; i < kSize; ++i) EXPECT_EQ(ring_->used_entry(i), (RawUsedElem{i, 0}));
  EXPECT_EQ(ring_->used_idx(), kSize);
}

// Random ring images (a deterministic, quick cousin of fuzz/chain_walker_fuzz):
// whatever the descriptors say, every fragment lies inside memory the device
// may reach, lengths add up, errors come with no fragments, NEEDS_RESET is
// sticky, and only the used ring is written.
TEST_F(SplitHostileRing, RandomRingsNeverEscapeReachableMemory) {
  std::mt19937_64 rng(0x5911'7e57);
  const auto pick = [&](uint64_t n) { return rng() % n; };
  const auto random_addr = [&]() -> uint64_t {
    switch (pick(6)) {
      case 0: return kPrivate + pick(0x10000);
      case 1: return rng();
      case 2: return ~uint64_t{0} - pick(64);
      case 3: return 0x110000 + 16 * pick(4);  // where the indirect tables are
      default: return 0x100000 + pick(0x50000);  // data, data2 and the hole after them
    }
  };
  const auto random_desc = [&]() -> RawDesc {
    const uint32_t len = pick(8) == 0 ? static_cast<uint32_t>(rng()) : static_cast<uint32_t>(pick(0x3000));
    const uint16_t flags = pick(3) == 0 ? static_cast<uint16_t>(rng()) : static_cast<uint16_t>(pick(8));
    return {random_addr(), len, flags, static_cast<uint16_t>(pick(20))};
  };
  const auto inside_reachable = [&](const Fragment& f) {
    for (const GuestRegion& r : mem_->regions()) {
      if (!r.is_shared()) continue;
      const std::byte* lo = r.host().data();
      if (f.host >= lo && f.len <= r.size() && f.host + f.len <= lo + r.size()) return true;
    }
    return false;
  };

  int chains = 0, errors = 0, resets = 0;
  for (int iter = 0; iter < 1000; ++iter) {
    SplitRingBuilder ring(*mem_, kRingBase, kSize);
    for (uint16_t i = 0; i < kSize; ++i) ring.set_desc(i, random_desc());
    for (uint16_t i = 0; i < 4 * 8; ++i) {
      const RawDesc d = random_desc();
      ring.write_table(Gpa{0x110000 + 16u * i}, std::span(&d, 1));
    }
    const uint16_t count = static_cast<uint16_t>(pick(20));
    for (uint16_t i = 0; i < count; ++i) {
      ring.set_avail_entry(i, pick(10) == 0 ? static_cast<uint16_t>(rng()) : static_cast<uint16_t>(pick(kSize)));
    }
    ring.set_avail_idx(pick(10) == 0 ? static_cast<uint16_t>(rng()) : count);
    const uint64_t features = (pick(2) ? feature_bit(kFeatureIndirectDesc) : 0) |
                              (pick(2) ? feature_bit(kFeatureEventIdx) : 0);
    auto q = SplitDeviceQueue::create(table_, {.size = kSize, .features = features}, ring.addresses());
    ASSERT_THAT(q, IsOk());

    const auto before = snapshot();
    {
      NoAccess guard(region("private"));
      DescriptorChain chain;
      for (int n = 0; n < 3 * kSize; ++n) {
        auto got = (*q)->pop(chain);
        if (!got) {
          ASSERT_TRUE(got.error().is(VirtioErrc::kNeedsReset)) << got.error().to_string();
          ASSERT_EQ((*q)->state(), DeviceQueueState::kNeedsReset);
          ASSERT_THAT((*q)->pop(chain), IsErrorWith(VirtioErrc::kNeedsReset, got.error().message()));
          ++resets;
          break;
        }
        if (!*got) break;
        ++chains;
        ASSERT_LT(chain.id, kSize);
        if (chain.error) {
          ++errors;
          ASSERT_TRUE(chain.readable.empty() && chain.writable.empty());
        } else {
          uint64_t readable = 0, writable = 0;
          for (const Fragment& f : chain.readable) {
            ASSERT_TRUE(inside_reachable(f));
            readable += f.len;
          }
          for (const Fragment& f : chain.writable) {
            ASSERT_TRUE(inside_reachable(f));
            writable += f.len;
          }
          ASSERT_EQ(readable, chain.readable_len);
          ASSERT_EQ(writable, chain.writable_len);
        }
        ASSERT_THAT((*q)->push_used(chain, static_cast<uint32_t>(rng())), IsOk());
        (void)(*q)->should_notify();
      }
      (void)(*q)->enable_notifications();
    }
    expect_unchanged(before, ring.used_range());
  }
  // The generator reaches every outcome.
  EXPECT_GT(chains - errors, 100);
  EXPECT_GT(errors, 100);
  EXPECT_GT(resets, 50);
}

// ---- Ring-level corruption: NEEDS_RESET, sticky, and the ring is not touched again.

class SplitHostileRingReset : public SplitHostileRing {
 protected:
  // Checks that the queue stays stopped with exactly `what`, and that no call
  // reads or writes ring memory any more (the rings region is PROT_NONE).
  void expect_stopped(SplitDeviceQueue& q, const std::string& what) {
    EXPECT_EQ(q.state(), DeviceQueueState::kNeedsReset);
    ASSERT_NE(q.needs_reset_reason(), nullptr);
    EXPECT_EQ(q.needs_reset_reason()->message(), what);
    // A sane ring afterwards does not revive the queue.
    ring_->set_avail_idx(0);
    const auto before = snapshot();
    {
      NoAccess rings(region("rings"));
      NoAccess priv(region("private"));
      DescriptorChain chain;
      for (int i = 0; i < 1000; ++i) ASSERT_THAT(q.pop(chain), IsErrorWith(VirtioErrc::kNeedsReset, what));
      chain.id = 0;
      EXPECT_THAT(q.rewalk(chain), IsErrorWith(VirtioErrc::kNeedsReset, what));
      EXPECT_THAT(q.push_used(chain, 0), IsErrorWith(VirtioErrc::kNeedsReset, what));
      EXPECT_FALSE(q.enable_notifications());
      q.disable_notifications();
      EXPECT_FALSE(q.should_notify());
    }
    expect_unchanged(before);
  }
};

TEST_F(SplitHostileRingReset, AvailIdxJumpsAheadByMoreThanTheQueueSize) {
  auto q = make();
  ring_->set_avail_idx(kSize + 1);
  const auto before = snapshot();
  DescriptorChain chain;
  EXPECT_THAT(q->pop(chain),
              IsErrorWith(VirtioErrc::kNeedsReset, "avail idx jumped to 17 with 0 next to pop: 17 entries in a queue "
                                                   "of 16"));
  expect_unchanged(before);
  expect_stopped(*q, "avail idx jumped to 17 with 0 next to pop: 17 entries in a queue of 16");
}

TEST_F(SplitHostileRingReset, AvailIdxMovingBackwards) {
  auto q = make();
  ring_->set_desc(0, {0x100000, 8, 0, 0});
  ring_->make_available(0);
  ring_->make_available(0);
  DescriptorChain chain;
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ASSERT_THAT(q->pop(chain), HasValue(true));
  ring_->set_avail_idx(1);  // "un-exposing" a buffer, forbidden by §2.7.6.1
  EXPECT_THAT(q->pop(chain), IsError(VirtioErrc::kNeedsReset));
  expect_stopped(*q, "avail idx jumped to 1 with 2 next to pop: 65535 entries in a queue of 16");
}

TEST_F(SplitHostileRingReset, HeadOutsideTheQueue) {
  auto q = make();
  ring_->set_avail_entry(0, 300);
  ring_->set_avail_idx(1);
  DescriptorChain chain;
  EXPECT_THAT(q->pop(chain), IsError(VirtioErrc::kNeedsReset));
  expect_stopped(*q, "avail ring entry 0 holds head 300 but the queue size is 16");
}

}  // namespace
}  // namespace vdma
