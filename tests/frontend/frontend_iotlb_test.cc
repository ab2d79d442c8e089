// The front-end as vIOMMU: IOTLB MISS answered from the IOMMU domain,
// strict INVALIDATE acknowledged before unmap returns, and a back-end
// access to an unmapped IOVA that fails instead of reaching memory; strict
// mode announces each mapping (no miss once the back-end has read it) and
// a reap of many chains costs one INVALIDATE round trip.
#include "frontend_test_util.h"
#include "vdma/dma/iommu_dma_ops.h"

namespace vdma::frontend_testing {
namespace {

// Whether the back-end's IOTLB holds a translation of `iova`.
bool backend_translates(const BackendSession& s, Iova iova) {
  for (const IotlbFragment& f : s.iotlb().entries()) {
    if (AddrRange<Iova>{f.iova, f.len}.contains(iova)) return true;
  }
  return false;
}

void submit(VirtioTransport& t, uint32_t q, std::span<const DriverSegment> segs, uint64_t cookie) {
  ASSERT_THAT(t.queue(q).add(segs, cookie), IsOk());
  if (t.queue(q).kick_prepare()) {
    ASSERT_THAT(t.notify(q), IsOk());
  }
}

TEST(FrontendIotlb, StrictUnmapInvalidatesBeforeReturningAndTheOldIovaFails) {
  // Persistent: the back-end keeps the translation until the INVALIDATE this
  // test is about (per-request would drop it when the request completes).
  InProcessBackend backend({.iotlb_cache = BackendOptions::IotlbCache::kPersistent});
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kIommuStrict));
  ASSERT_THAT(fe, IsOk());
  VirtioTransport& t = **fe;

  const Gpa src = *t.alloc_buffer(4096, 4096);
  const Gpa dst = *t.alloc_buffer(4096, 4096);
  ASSERT_THAT(t.memory().write(src, pattern(4096, 9)), IsOk());
  const DmaAddr iova = *t.dma().map(src, 4096, DmaDirection::kToDevice);
  const DriverSegment segs[2] = {{src, 4096, BufferType::kDeviceReadable, true, iova},
                                 {dst, 4096, BufferType::kDeviceWritable, false, DmaAddr{}}};
  submit(t, 0, segs, 1);
  auto used = wait_used(t, 0);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->len, 4096u);
  const FrontendStats before = (*fe)->stats();
  // Announced when mapped, or asked for by a MISS: the back-end got it.
  EXPECT_GT(before.misses_served + before.updates_announced, 0u);
  ASSERT_TRUE(backend_translates(backend.session(), Iova(iova.value())));

  // Strict: when unmap returns, the back-end has acknowledged the INVALIDATE.
  ASSERT_THAT(t.dma().unmap(iova, 4096, DmaDirection::kToDevice), IsOk());
  EXPECT_EQ((*fe)->stats().invalidates_sent, before.invalidates_sent + 1);
  EXPECT_FALSE(backend_translates(backend.session(), Iova(iova.value())));

  // A chain still naming the old IOVA: the back-end misses, the vIOMMU has
  // no mapping to give, and the request never completes.
  const DriverSegment stale[1] = {{src, 4096, BufferType::kDeviceReadable, true, iova}};
  submit(t, 1, stale, 2);
  for (int i = 0; i < 500 && (*fe)->stats().misses_refused == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ((*fe)->stats().misses_refused, 1u);
  EXPECT_EQ((*fe)->stats().misses_unmapped, 1u);
  EXPECT_FALSE(wait_used(t, 1, 200).has_value());
  EXPECT_EQ(backend.device().handled.load(), 1);
  EXPECT_FALSE(backend_translates(backend.session(), Iova(iova.value())));
}

TEST(FrontendIotlb, MissGrantsTheMappingsRunWithItsPermission) {
  // Persistent, so the entry the MISS created is still there to inspect.
  InProcessBackend backend({.iotlb_cache = BackendOptions::IotlbCache::kPersistent});
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kIommuStrict));
  ASSERT_THAT(fe, IsOk());
  VirtioTransport& t = **fe;
  // A 3-page buffer the device may only read: one UPDATE covers all of it, read-only.
  const Gpa src = *t.alloc_buffer(3 * 4096, 4096);
  const Gpa dst = *t.alloc_buffer(3 * 4096, 4096);
  ASSERT_THAT(t.memory().write(src, pattern(3 * 4096, 4)), IsOk());
  const DmaAddr iova = *t.dma().map(src, 3 * 4096, DmaDirection::kToDevice);
  const DriverSegment segs[2] = {{src, 3 * 4096, BufferType::kDeviceReadable, true, iova},
                                 {dst, 3 * 4096, BufferType::kDeviceWritable, false, DmaAddr{}}};
  submit(t, 0, segs, 1);
  ASSERT_TRUE(wait_used(t, 0).has_value());
  bool found = false;
  for (const IotlbFragment& f : backend.session().iotlb().entries()) {
    if (f.iova != Iova(iova.value())) continue;
    found = true;
    EXPECT_EQ(f.len, 3u * 4096);
    EXPECT_EQ(f.perms, Access::kRead);
    EXPECT_EQ(f.uaddr.value(), reinterpret_cast<uintptr_t>(t.memory().span(src, 1)->data()));
  }
  EXPECT_TRUE(found);
  std::vector<std::byte> got(3 * 4096);
  ASSERT_THAT(t.memory().read(dst, got), IsOk());
  EXPECT_TRUE(got == pattern(3 * 4096, 4));
  ASSERT_THAT(t.dma().unmap(iova, 3 * 4096, DmaDirection::kToDevice), IsOk());
}

// Waits until the back-end's IOTLB translates every page of [iova, iova+len).
bool await_translation(const BackendSession& s, DmaAddr iova, uint64_t len) {
  for (int i = 0; i < 2500; ++i) {
    bool all = true;
    for (uint64_t p = align_down(iova.value(), 4096); all && p < iova.value() + len; p += 4096) {
      all = backend_translates(s, Iova(p));
    }
    if (all) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

TEST(FrontendIotlb, StrictAnnouncesEachMappingSoTheBackEndNeverMisses) {
  InProcessBackend backend({.iotlb_cache = BackendOptions::IotlbCache::kPersistent});
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kIommuStrict));
  ASSERT_THAT(fe, IsOk());
  VirtioTransport& t = **fe;
  // The rings and the indirect tables were announced when they were
  // allocated, before SET_VRING_ADDR: creating the queues cost no miss.
  EXPECT_GT((*fe)->stats().updates_announced, 0u);

  // The driver maps (the UPDATE is posted then), the back-end applies the
  // UPDATE, and only then does a descriptor name the buffer: whenever the
  // worker walks the chain, its translations are there.
  for (uint8_t round = 0; round < 6; ++round) {
    const uint32_t len = 3000 + 1000u * round;
    const Gpa src = *t.alloc_buffer(len, 4096);
    const Gpa dst = *t.alloc_buffer(len, 4096);
    ASSERT_THAT(t.memory().write(src, pattern(len, round)), IsOk());
    const DmaAddr s = *t.dma().map(src, len, DmaDirection::kToDevice);
    const DmaAddr d = *t.dma().map(dst, len, DmaDirection::kFromDevice);
    ASSERT_TRUE(await_translation(backend.session(), s, len));
    ASSERT_TRUE(await_translation(backend.session(), d, len));
    const DriverSegment segs[2] = {{src, len, BufferType::kDeviceReadable, true, s},
                                   {dst, len, BufferType::kDeviceWritable, true, d}};
    submit(t, round % 2, segs, round);
    auto used = wait_used(t, round % 2);
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->len, len);
    ASSERT_THAT(t.dma().unmap(s, len, DmaDirection::kToDevice), IsOk());
    ASSERT_THAT(t.dma().unmap(d, len, DmaDirection::kFromDevice), IsOk());
    // Strict: acknowledged before unmap returned.
    EXPECT_FALSE(backend_translates(backend.session(), Iova(s.value())));
    EXPECT_FALSE(backend_translates(backend.session(), Iova(d.value())));
    std::vector<std::byte> got(len);
    ASSERT_THAT(t.memory().read(dst, got), IsOk());
    EXPECT_TRUE(got == pattern(len, round));
  }
  const FrontendStats st = (*fe)->stats();
  EXPECT_EQ(st.misses_served, 0u) << "the back-end missed a translation it had been given";
  EXPECT_EQ(st.misses_refused, 0u);
  EXPECT_EQ(st.updates_refused, 0u);
  EXPECT_EQ(st.updates_sent, 0u);  // no UPDATE needed a MISS to be sent
  EXPECT_EQ(backend.session().stats().iotlb.misses, 0u);

  // The queue's own mappings: announced too. The worker may read the ring
  // before the session thread has read the UPDATEs (the kick is an eventfd,
  // not the socket); then it misses and asks, and stays correct.
  for (uint8_t i = 0; i < 8; ++i) echo_round_trip(t, i % 2, 512 + 700u * i, static_cast<uint8_t>(50 + i), false);
  const FrontendStats after = (*fe)->stats();
  EXPECT_GE(after.updates_announced, st.updates_announced + 16);
  EXPECT_EQ(after.misses_refused, 0u);
  EXPECT_EQ(after.updates_refused, 0u);
}

TEST(FrontendIotlb, StrictWithoutAnnouncementsLearnsEveryTranslationByMiss) {
  InProcessBackend backend({.iotlb_cache = BackendOptions::IotlbCache::kPersistent});
  FrontendOptions o = small_options(DmaMode::kIommuStrict);
  o.announce_maps = false;
  auto fe = VhostUserFrontend::create(backend.take_socket(), o);
  ASSERT_THAT(fe, IsOk());
  for (uint8_t i = 0; i < 4; ++i) echo_round_trip(**fe, i % 2, 4096, i, false);
  const FrontendStats st = (*fe)->stats();
  EXPECT_EQ(st.updates_announced, 0u);
  EXPECT_GT(st.misses_served, 0u);
  EXPECT_EQ(st.misses_refused, 0u);
}

TEST(FrontendIotlb, StrictReapOfManyChainsIsOneInvalidationRoundTrip) {
  InProcessBackend backend({.iotlb_cache = BackendOptions::IotlbCache::kPersistent});
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kIommuStrict));
  ASSERT_THAT(fe, IsOk());
  VirtioTransport& t = **fe;
  const auto before = backend.session().iotlb().entries();

  constexpr uint32_t kChains = 8;
  std::vector<Gpa> src(kChains), dst(kChains);
  for (uint32_t i = 0; i < kChains; ++i) {
    src[i] = *t.alloc_buffer(4096, 4096);
    dst[i] = *t.alloc_buffer(4096, 4096);
    ASSERT_THAT(t.memory().write(src[i], pattern(4096, static_cast<uint8_t>(i))), IsOk());
    const DriverSegment segs[2] = {{src[i], 4096, BufferType::kDeviceReadable, false, DmaAddr{}},
                                   {dst[i], 4096, BufferType::kDeviceWritable, false, DmaAddr{}}};
    ASSERT_THAT(t.queue(0).add(segs, i), IsOk());
  }
  if (t.queue(0).kick_prepare()) {
    ASSERT_THAT(t.notify(0), IsOk());
  }
  // Every used entry is published before the reap looks.
  for (int i = 0; i < 2500 && backend.session().stats().queues[0].requests < kChains; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(backend.session().stats().queues[0].requests, kChains);

  const FrontendStats st = (*fe)->stats();
  UsedBuffer out[2 * kChains];
  auto n = t.queue(0).get_used_batch(out);
  ASSERT_THAT(n, IsOk());
  ASSERT_EQ(*n, kChains);
  const FrontendStats after = (*fe)->stats();
  EXPECT_EQ(after.invalidation_round_trips, st.invalidation_round_trips + 1) << "one round trip for the whole reap";
  EXPECT_GE(after.invalidates_sent, st.invalidates_sent + 1);
  EXPECT_LE(after.invalidates_sent, st.invalidates_sent + 2 * kChains);
  // Strict: every buffer's translation is gone once the reap returned; only
  // the rings' (and indirect tables') remain.
  const auto left = backend.session().iotlb().entries();
  EXPECT_EQ(left.size(), before.size());
  for (const IotlbFragment& f : left) {
    const bool was_there = std::any_of(before.begin(), before.end(),
                                       [&](const IotlbFragment& b) { return b.iova == f.iova && b.len == f.len; });
    EXPECT_TRUE(was_there) << "a buffer's translation survived its unmap: " << f.iova.value();
  }
  for (uint32_t k = 0; k < kChains; ++k) {
    const auto i = static_cast<uint32_t>(out[k].cookie);
    std::vector<std::byte> got(4096);
    ASSERT_THAT(t.memory().read(dst[i], got), IsOk());
    EXPECT_TRUE(got == pattern(4096, static_cast<uint8_t>(i))) << "chain " << i;
  }
}

TEST(FrontendIotlb, LazyUnmapIsInvalidatedByTheFrontendsFlushTick) {
  InProcessBackend backend;
  auto fe = VhostUserFrontend::create(backend.take_socket(), small_options(DmaMode::kIommuLazy));
  ASSERT_THAT(fe, IsOk());
  VirtioTransport& t = **fe;
  const Gpa buf = *t.alloc_buffer(4096, 4096);
  const DmaAddr iova = *t.dma().map(buf, 4096, DmaDirection::kToDevice);
  const uint64_t sent = (*fe)->stats().invalidates_sent;
  ASSERT_THAT(t.dma().unmap(iova, 4096, DmaDirection::kToDevice), IsOk());
  auto& dom = dynamic_cast<IommuDmaOps&>(t.dma()).domain();
  // Queued, then flushed by the front-end's tick within about the age limit.
  // The tick takes the batch off the queue before it sends the INVALIDATE,
  // so wait for the message, not for the queue to look empty.
  for (int i = 0; i < 500 && (*fe)->stats().invalidates_sent == sent; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_GT((*fe)->stats().invalidates_sent, sent);
  EXPECT_EQ(dom.flush_queue()->stats().pending, 0u);
}

}  // namespace
}  // namespace vdma::frontend_testing
