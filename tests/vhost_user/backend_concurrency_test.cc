// BackendSession under load (label "concurrency", run under ThreadSanitizer):
// two queue workers serve requests at once while the session thread applies
// IOTLB UPDATEs and INVALIDATEs and the front-end answers every MISS like a
// vIOMMU. Checks every byte of every echoed request.
#include <gtest/gtest.h>

#include "backend_test_util.h"

namespace vdma::vhost_user::testing {
namespace {

using R = FrontendRequest;

constexpr uint64_t kFeatures = bit(kFeatureVersion1) | bit(kFeatureAccessPlatform) | bit(kFeatureEventIdx);
constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureBackendReq) |
                               protocol_feature_bit(kProtocolFeatureMq);
constexpr int kRequestsPerQueue = 150;

TEST(BackendConcurrency, TwoQueuesWithMissesUpdatesAndInvalidates) {
  EchoDevice dev;
  GuestSide guest;
  StubFrontend fe(dev);
  fe.negotiate(kFeatures, kProtocol);
  auto pair = make_socket_pair();
  ASSERT_TRUE(pair.has_value());
  UniqueFd channel = std::move((*pair)[0]);
  ASSERT_EQ(fe.acked(encode_fd_request(R::kSetBackendReqFd, std::move((*pair)[1]))), 0u);
  ASSERT_EQ(fe.set_mem_table(*guest.mem), 0u);

  std::unique_ptr<DriverQueue> q[2];
  UniqueFd kicks[2], calls[2];
  for (uint32_t i = 0; i < 2; ++i) {
    q[i] = guest.queue(RingFormat::kSplit, 16, kFeatures | bit(kFeatureProtocolFeatures));
    fe.setup_vring(i, *q[i], /*iova_rings=*/true, kicks[i], calls[i]);
  }
  // Buffers: queue i, slot s: source at 0x10000 + (i*8+s)*0x1000, destination 0x30000 + ...
  auto src = [](uint32_t i, uint64_t s) { return Gpa{0x10000 + (i * 8 + s) * 0x1000}; };
  auto dst = [](uint32_t i, uint64_t s) { return Gpa{0x30000 + (i * 8 + s) * 0x1000}; };
  int submitted[2] = {0, 0}, completed[2] = {0, 0}, outstanding[2] = {0, 0};
  int misses = 0;
  auto submit = [&](uint32_t i) {
    const uint64_t slot = static_cast<uint64_t>(submitted[i]) % 8;
    guest.fill(src(i, slot), 512, static_cast<uint8_t>(submitted[i] + i * 100));
    add_echo(*q[i], src(i, slot), dst(i, slot), 512, slot);
    ++submitted[i];
    ++outstanding[i];
    if (q[i]->kick_prepare()) kick(kicks[i]);
  };
  for (uint32_t i = 0; i < 2; ++i) {
    for (int n = 0; n < 4; ++n) submit(i);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while ((completed[0] < kRequestsPerQueue || completed[1] < kRequestsPerQueue) &&
         std::chrono::steady_clock::now() < deadline) {
    pollfd fds[3] = {{channel.get(), POLLIN, 0}, {calls[0].get(), POLLIN, 0}, {calls[1].get(), POLLIN, 0}};
    ASSERT_GE(::poll(fds, 3, 1000), 0);
    if ((fds[0].revents & POLLIN) != 0) {
      Message m;
      ASSERT_THAT(recv_message(channel.get(), Channel::kBackend, m), IsOk());
      auto req = validate_backend_request(m);
      ASSERT_TRUE(req.has_value());
      const IotlbMessage& miss = req->as<IotlbMessage>();
      ASSERT_EQ(miss.type, IotlbType::kMiss);
      // Identity vIOMMU: map the 4 KiB page read/write.
      const uint64_t page = miss.iova.value() & ~uint64_t{0xfff};
      ASSERT_EQ(fe.iotlb(encode_iotlb_update(Iova(page), 0x1000, FrontVa(kUserBase + page), IotlbPerm::kReadWrite)),
                0u);
      ++misses;
    }
    for (uint32_t i = 0; i < 2; ++i) {
      drain_eventfd(calls[i]);
      for (;;) {
        auto u = q[i]->get_used();
        ASSERT_TRUE(u.has_value());
        if (!u->has_value()) break;
        const uint64_t slot = (*u)->cookie;
        ASSERT_EQ((*u)->len, 512u);
        ASSERT_EQ(guest.read(dst(i, slot), 512), guest.read(src(i, slot), 512));
        ++completed[i];
        --outstanding[i];
        // Unmap the source page now and then, as a strict-mode guest would.
        if (completed[i] % 5 == 0) {
          ASSERT_EQ(fe.iotlb(encode_iotlb_invalidate(Iova(src(i, slot).value()), 0x1000)), 0u);
        }
        if (submitted[i] < kRequestsPerQueue) submit(i);
      }
    }
  }
  EXPECT_EQ(completed[0], kRequestsPerQueue);
  EXPECT_EQ(completed[1], kRequestsPerQueue);
  EXPECT_EQ(dev.handled.load(), 2 * kRequestsPerQueue);
  EXPECT_GT(misses, 0);
  fe.finish();
}

}  // namespace
}  // namespace vdma::vhost_user::testing
