// The front-end as vIOMMU: IOTLB MISS answered from the IOMMU domain,
// strict INVALIDATE acknowledged before unmap returns, and a back-end
// access to an unmapped IOVA that fails instead of reaching memory.
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
  EXPECT_GT(before.misses_served, 0u);
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
