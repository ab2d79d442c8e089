// The IOMMU-mode fixture of the back-end session tests: a StubFrontend that
// negotiated ACCESS_PLATFORM, a back-end channel socket, guest memory shared
// at kUserBase, and one split driver queue. The stub front-end acts as an
// identity vIOMMU: IOVA == guest address, and it maps IOVA x to front-end
// address kUserBase + x.
#pragma once

#include <chrono>

#include <gtest/gtest.h>

#include "backend_test_util.h"

namespace vdma::vhost_user::testing {

inline constexpr uint64_t kIotlbFeatures = bit(kFeatureVersion1) | bit(kFeatureAccessPlatform);
inline constexpr uint64_t kIotlbProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                                          protocol_feature_bit(kProtocolFeatureBackendReq) |
                                          protocol_feature_bit(kProtocolFeatureMq);

class BackendIotlbTest : public ::testing::Test {
 protected:
  // The IOTLB cache policy the session runs with; the INVALIDATE tests keep
  // translations until invalidated (persistent), the policy tests choose.
  explicit BackendIotlbTest(BackendOptions::IotlbCache policy = BackendOptions::IotlbCache::kPersistent)
      : options_{.iotlb_cache = policy} {}

  void SetUp() override {
    fe_ = std::make_unique<StubFrontend>(dev_, options_);
    fe_->negotiate(kIotlbFeatures, kIotlbProtocol);
    auto pair = make_socket_pair();
    ASSERT_TRUE(pair.has_value());
    channel_ = std::move((*pair)[0]);
    ASSERT_EQ(fe_->acked(encode_fd_request(FrontendRequest::kSetBackendReqFd, std::move((*pair)[1]))), 0u);
    ASSERT_EQ(fe_->set_mem_table(*guest_.mem), 0u);
    q_ = guest_.queue(RingFormat::kSplit, 8, kIotlbFeatures | bit(kFeatureProtocolFeatures));
  }

  uint64_t update(uint64_t iova, uint64_t size, IotlbPerm perm) {
    return fe_->iotlb(encode_iotlb_update(Iova(iova), size, FrontVa(kUserBase + iova), perm));
  }
  void map_rings() { ASSERT_EQ(update(kRingWindow, 0x40000, IotlbPerm::kReadWrite), 0u); }
  void start_ring() {
    // The err eventfd first: a queue that stops (NEEDS_RESET) signals it.
    err_ = make_eventfd();
    ASSERT_EQ(fe_->acked(encode_vring_file(FrontendRequest::kSetVringErr, 0, *UniqueFd::duplicate(err_.get()))), 0u);
    fe_->setup_vring(0, *q_, /*iova_rings=*/true, kick_, call_);
  }

  // The next back-end request on the channel, which must be an IOTLB message.
  std::optional<IotlbMessage> next_backend_iotlb(int timeout_ms = 5000) {
    if (!readable_within(channel_.get(), timeout_ms)) return std::nullopt;
    Message m;
    EXPECT_THAT(recv_message(channel_.get(), Channel::kBackend, m), IsOk());
    auto req = validate_backend_request(m);
    EXPECT_TRUE(req.has_value());
    if (!req || req->request != BackendRequest::kIotlbMsg) return std::nullopt;
    EXPECT_FALSE(req->need_reply);
    return req->as<IotlbMessage>();
  }
  void expect_miss(uint64_t iova, IotlbPerm perm) {
    auto m = next_backend_iotlb();
    ASSERT_TRUE(m.has_value()) << "no MISS for iova 0x" << std::hex << iova;
    EXPECT_EQ(m->type, IotlbType::kMiss);
    EXPECT_EQ(m->iova, Iova(iova));
    EXPECT_EQ(m->perm, perm);
  }
  // Within `ms` in all, a MISS for (iova, perm). Other MISSes may come
  // first: a worker cannot tell which entry a removal took
  // (DeviceIotlb::removed_since), so it may also ask again for a range whose
  // answer is still on its way, which costs a duplicate UPDATE, nothing else.
  void expect_asked_again(uint64_t iova, IotlbPerm perm, int ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      auto m = left > 0 ? next_backend_iotlb(static_cast<int>(left)) : std::nullopt;
      ASSERT_TRUE(m.has_value()) << "no MISS for iova 0x" << std::hex << iova << " within " << std::dec << ms << " ms";
      ASSERT_EQ(m->type, IotlbType::kMiss);
      if (m->iova == Iova(iova) && m->perm == perm) return;
    }
  }
  // Precondition: the call eventfd was drained after the last completion.
  void expect_no_used(int ms = 200) {
    EXPECT_FALSE(wait_eventfd(call_.get(), ms));
    auto u = q_->get_used();
    ASSERT_TRUE(u.has_value());
    EXPECT_FALSE(u->has_value());
  }

  BackendOptions options_;
  EchoDevice dev_;
  GuestSide guest_;
  std::unique_ptr<StubFrontend> fe_;
  UniqueFd channel_;
  std::unique_ptr<DriverQueue> q_;
  UniqueFd kick_;
  UniqueFd call_;
  UniqueFd err_;
};

}  // namespace vdma::vhost_user::testing
