// BackendSession in IOMMU mode against a front-end whose invalidations do
// not all arrive (QEMU 7.2's lazy domain flush without ATS), and the worker
// bugs that front-end exposed:
//   - the per-request IOTLB policy drops a request's buffer translations when
//     it completes, so an IOVA the guest re-mapped without an INVALIDATE is
//     asked for again; the persistent policy keeps using the old one;
//   - an INVALIDATE while a request is being handled delays its completion
//     until the used ring is mapped again, it never stops the ring;
//   - a ring MISS is asked again after every flush, on every queue;
//   - a chain the device refuses (virtio-blk: no status byte) stops the queue
//     (NEEDS_RESET) instead of completing with used length 0.
#include <future>
#include <set>

#include <gtest/gtest.h>

#include "backend_iotlb_fixture.h"
#include "param_printers.h"

namespace vdma::vhost_user::testing {
namespace {

using ::testing::ElementsAre;
using Policy = BackendOptions::IotlbCache;

std::string policy_name(const ::testing::TestParamInfo<Policy>& info) {
  return info.param == Policy::kPerRequest ? "PerRequest" : "Persistent";
}

class IotlbPolicyTest : public BackendIotlbTest, public ::testing::WithParamInterface<Policy> {
 protected:
  IotlbPolicyTest() : BackendIotlbTest(GetParam()) {}

  // Answers every MISS on the channel with an identity UPDATE of its page
  // until a used element arrives on `q`; returns it and the pages that
  // missed (a MISS may be sent again after its retransmission delay).
  std::pair<std::optional<UsedBuffer>, std::set<uint64_t>> serve_until_used(DriverQueue& q) {
    std::set<uint64_t> pages;
    for (int i = 0; i < 100; ++i) {
      auto used = q.get_used();
      EXPECT_TRUE(used.has_value());
      if (used && used->has_value()) return {**used, pages};
      if (auto m = next_backend_iotlb(50)) {
        EXPECT_EQ(m->type, IotlbType::kMiss);
        const uint64_t page = m->iova.value() & ~uint64_t{0xfff};
        EXPECT_EQ(update(page, 0x1000, IotlbPerm::kReadWrite), 0u);
        pages.insert(page);
      }
    }
    return {std::nullopt, pages};
  }
};

// The guest maps IOVA 0x10000 to one page, the request completes, the guest
// unmaps it and maps the same IOVA to another page with no INVALIDATE
// reaching the back-end (QEMU 7.2, lazy mode, no ATS). The next request
// must read the new page: per-request asks for the translation again.
TEST_P(IotlbPolicyTest, RemapWithoutInvalidate) {
  map_rings();
  start_ring();
  ASSERT_EQ(update(0x10000, 0x1000, IotlbPerm::kRead), 0u);
  ASSERT_EQ(update(0x40000, 0x1000, IotlbPerm::kWrite), 0u);
  guest_.fill(Gpa{0x10000}, 64, 1);
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 64, 1);
  kick(kick_);
  auto used = wait_used(*q_, call_);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->len, 64u);
  EXPECT_EQ(guest_.read(Gpa{0x40000}, 64), guest_.read(Gpa{0x10000}, 64));

  // Only the rings stay cached under per-request.
  const size_t entries = fe_->session().iotlb().size();
  if (GetParam() == Policy::kPerRequest) {
    EXPECT_EQ(entries, 1u);
    EXPECT_EQ(fe_->session().iotlb().stats().forgotten, 2u);
  } else {
    EXPECT_EQ(entries, 3u);
  }

  // IOVA 0x10000 now means guest page 0x20000 (the vIOMMU answers with that).
  guest_.fill(Gpa{0x20000}, 64, 9);
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 64, 2);
  kick(kick_);
  if (GetParam() == Policy::kPerRequest) {
    auto miss = next_backend_iotlb();
    ASSERT_TRUE(miss.has_value());
    EXPECT_EQ(miss->type, IotlbType::kMiss);
    EXPECT_EQ(miss->iova, Iova(0x10000));
    ASSERT_EQ(fe_->iotlb(encode_iotlb_update(Iova(0x10000), 0x1000, FrontVa(kUserBase + 0x20000), IotlbPerm::kRead)),
              0u);
    expect_miss(0x40000, IotlbPerm::kWrite);
    ASSERT_EQ(update(0x40000, 0x1000, IotlbPerm::kWrite), 0u);
  }
  used = wait_used(*q_, call_);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 2u);
  if (GetParam() == Policy::kPerRequest) {
    EXPECT_EQ(guest_.read(Gpa{0x40000}, 64), guest_.read(Gpa{0x20000}, 64));
  } else {
    // The hazard the per-request policy exists for: the retired translation
    // is used, and the request reads the page the guest no longer meant.
    EXPECT_EQ(guest_.read(Gpa{0x40000}, 64), guest_.read(Gpa{0x10000}, 64));
  }
}

// Bug: push_used re-translated the rings after the INVALIDATE, found them
// unmapped and stopped the ring for good; the completion was never posted.
TEST_P(IotlbPolicyTest, InvalidateWhileARequestRunsDelaysItsCompletion) {
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> calls{0};
  dev_.before_handle = [&](uint32_t, const DescriptorChain&) -> Result<void> {
    if (calls.fetch_add(1) == 0) {
      entered.set_value();
      released.wait();
    }
    return ok();
  };
  map_rings();
  start_ring();
  ASSERT_EQ(update(0x10000, 0x1000, IotlbPerm::kRead), 0u);
  ASSERT_EQ(update(0x40000, 0x1000, IotlbPerm::kWrite), 0u);
  guest_.fill(Gpa{0x10000}, 4096, 4);
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 4096, 7);
  kick(kick_);
  entered.get_future().wait();

  // iova 0 size 0: the whole space. It waits for the handler's read section,
  // so it runs on its own thread; the table without the rings is published
  // before that wait.
  std::thread flush([this] { EXPECT_EQ(fe_->iotlb(encode_iotlb_invalidate(Iova(0), 0)), 0u); });
  for (int i = 0; i < 500 && fe_->session().iotlb().size() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(fe_->session().iotlb().size(), 0u);
  release.set_value();
  flush.join();

  // The completion waits for a ring translation: a MISS in the ring window.
  auto miss = next_backend_iotlb();
  ASSERT_TRUE(miss.has_value());
  EXPECT_EQ(miss->type, IotlbType::kMiss);
  EXPECT_GE(miss->iova.value(), kRingWindow);
  EXPECT_LT(miss->iova.value(), kRingWindow + 0x40000);
  drain_eventfd(call_);
  expect_no_used(50);

  map_rings();
  auto used = wait_used(*q_, call_);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 7u);
  EXPECT_EQ(used->len, 4096u);
  EXPECT_EQ(guest_.read(Gpa{0x40000}, 4096), guest_.read(Gpa{0x10000}, 4096));
  EXPECT_FALSE(wait_eventfd(err_.get(), 0));  // the ring did not stop

  // And it keeps serving.
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 4096, 8);
  kick(kick_);
  auto [next, pages] = serve_until_used(*q_);
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->cookie, 8u);
  EXPECT_THAT(pages, ElementsAre(0x10000u, 0x40000u));  // both buffers: the flush took everything
  EXPECT_EQ(dev_.handled.load(), 2);
}

// Bug: the key of an outstanding ring MISS was never cleared once the ring
// was mapped, so after the next flush the same MISS was never sent again.
TEST_P(IotlbPolicyTest, RingMissIsAskedAgainAfterEveryFlushOnEveryQueue) {
  auto q1 = guest_.queue(RingFormat::kSplit, 8, kIotlbFeatures | bit(kFeatureProtocolFeatures));
  ASSERT_NE(q1, nullptr);
  map_rings();
  start_ring();
  UniqueFd kick1;
  UniqueFd call1;
  fe_->setup_vring(1, *q1, /*iova_rings=*/true, kick1, call1);
  DriverQueue* queues[2] = {q_.get(), q1.get()};
  const UniqueFd* kicks[2] = {&kick_, &kick1};
  uint64_t cookie = 1;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    for (int q = 0; q < 2; ++q) {
      SCOPED_TRACE(q);
      // A flush before each request, so that each queue has to ask for its
      // own rings (two queues' rings may share a page).
      if (round > 0) {
        ASSERT_EQ(fe_->iotlb(encode_iotlb_invalidate(Iova(kRingWindow), 0x40000)), 0u);
      }
      const uint64_t src = 0x10000 + q * 0x1000;
      const uint64_t dst = 0x40000 + q * 0x1000;
      guest_.fill(Gpa{src}, 256, static_cast<uint8_t>(round * 2 + q));
      add_echo(*queues[q], Gpa{src}, Gpa{dst}, 256, cookie);
      kick(*kicks[q]);
      // Every MISS (ring after a flush, buffers) is answered with its page.
      auto [used, pages] = serve_until_used(*queues[q]);
      ASSERT_TRUE(used.has_value()) << "queue " << q << " hangs after flush " << round;
      EXPECT_EQ(used->cookie, cookie);
      EXPECT_EQ(guest_.read(Gpa{dst}, 256), guest_.read(Gpa{src}, 256));
      if (round > 0) {
        EXPECT_FALSE(pages.empty());  // its rings, at least
      }
      ++cookie;
    }
  }
}

// Bug: a chain without a status byte (here: a stale translation read as a
// header) completed with used length 0, which the guest took for success.
TEST_P(IotlbPolicyTest, ARefusedChainStopsTheQueueInsteadOfCompleting) {
  dev_.before_handle = [](uint32_t, const DescriptorChain& chain) -> Result<void> {
    if (chain.writable_len == 0) return make_error(VhostUserErrc::kBadField, "no writable status byte");
    return ok();
  };
  map_rings();
  start_ring();
  ASSERT_EQ(update(0x10000, 0x1000, IotlbPerm::kRead), 0u);
  ASSERT_EQ(update(0x40000, 0x1000, IotlbPerm::kWrite), 0u);
  const DriverSegment only_readable[1] = {{Gpa{0x10000}, 64, BufferType::kDeviceReadable, false, DmaAddr{}}};
  ASSERT_THAT(q_->add(only_readable, 1), IsOk());
  kick(kick_);
  EXPECT_TRUE(wait_eventfd(err_.get(), 5000));
  drain_eventfd(call_);
  expect_no_used(100);
  // The queue stays stopped: a good request behind it is not served either.
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 64, 2);
  kick(kick_);
  expect_no_used(100);
  EXPECT_EQ(dev_.handled.load(), 0);
  // The session still answers: GET_VRING_BASE reports the refused chain as consumed.
  fe_->send(encode_vring_state(FrontendRequest::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(fe_->recv(), 0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 1u);
}

INSTANTIATE_TEST_SUITE_P(Policies, IotlbPolicyTest, ::testing::Values(Policy::kPerRequest, Policy::kPersistent),
                         policy_name);

}  // namespace
}  // namespace vdma::vhost_user::testing
