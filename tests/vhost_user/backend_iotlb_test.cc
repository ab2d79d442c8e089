// BackendSession in IOMMU mode (ACCESS_PLATFORM): ring and buffer addresses
// are IOVAs translated by the device IOTLB; misses go out on the back-end
// channel, the request is parked without busy-waiting and resumed by the
// covering UPDATE; INVALIDATE is honoured; permission failures give
// ACCESS_FAIL and an error completion; stopping a ring reports a parked
// request as unprocessed and flushes the IOTLB.
//
// The stub front-end acts as an identity vIOMMU: IOVA == guest address, and
// it maps IOVA x to front-end address kUserBase + x.
#include <gtest/gtest.h>

#include "backend_test_util.h"

namespace vdma::vhost_user::testing {
namespace {

using R = FrontendRequest;

constexpr uint64_t kFeatures = bit(kFeatureVersion1) | bit(kFeatureAccessPlatform);
constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureBackendReq) |
                               protocol_feature_bit(kProtocolFeatureMq);

class BackendIotlbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fe_ = std::make_unique<StubFrontend>(dev_);
    fe_->negotiate(kFeatures, kProtocol);
    auto pair = make_socket_pair();
    ASSERT_TRUE(pair.has_value());
    channel_ = std::move((*pair)[0]);
    ASSERT_EQ(fe_->acked(encode_fd_request(R::kSetBackendReqFd, std::move((*pair)[1]))), 0u);
    ASSERT_EQ(fe_->set_mem_table(*guest_.mem), 0u);
    q_ = guest_.queue(RingFormat::kSplit, 8, kFeatures | bit(kFeatureProtocolFeatures));
  }

  uint64_t update(uint64_t iova, uint64_t size, IotlbPerm perm) {
    return fe_->iotlb(encode_iotlb_update(Iova(iova), size, FrontVa(kUserBase + iova), perm));
  }
  void map_rings() { ASSERT_EQ(update(kRingWindow, 0x40000, IotlbPerm::kReadWrite), 0u); }
  void start_ring() { fe_->setup_vring(0, *q_, /*iova_rings=*/true, kick_, call_); }

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
  // Precondition: the call eventfd was drained after the last completion.
  void expect_no_used(int ms = 200) {
    EXPECT_FALSE(wait_eventfd(call_.get(), ms));
    auto u = q_->get_used();
    ASSERT_TRUE(u.has_value());
    EXPECT_FALSE(u->has_value());
  }

  EchoDevice dev_;
  GuestSide guest_;
  std::unique_ptr<StubFrontend> fe_;
  UniqueFd channel_;
  std::unique_ptr<DriverQueue> q_;
  UniqueFd kick_;
  UniqueFd call_;
};

TEST_F(BackendIotlbTest, MissIsSentOnceRequestParkedAndResumedByUpdate) {
  map_rings();
  start_ring();
  guest_.fill(Gpa{0x10000}, 128, 3);
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 128, 42);
  kick(kick_);
  expect_miss(0x10000, IotlbPerm::kRead);
  drain_eventfd(call_);
  expect_no_used();
  // An UPDATE elsewhere wakes the worker, which finds the same range still
  // missing and does not ask again.
  ASSERT_EQ(update(0x30000, 0x1000, IotlbPerm::kReadWrite), 0u);
  EXPECT_FALSE(next_backend_iotlb(300).has_value());
  expect_no_used(50);
  // The covering UPDATE resumes the request, which then misses on its
  // writable buffer.
  ASSERT_EQ(update(0x10000, 0x1000, IotlbPerm::kRead), 0u);
  expect_miss(0x40000, IotlbPerm::kWrite);
  ASSERT_EQ(update(0x40000, 0x1000, IotlbPerm::kWrite), 0u);
  auto used = wait_used(*q_, call_);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 42u);
  EXPECT_EQ(used->len, 128u);
  EXPECT_EQ(guest_.read(Gpa{0x40000}, 128), guest_.read(Gpa{0x10000}, 128));
  EXPECT_EQ(dev_.handled.load(), 1);
}

TEST_F(BackendIotlbTest, RingAreasMissToo) {
  start_ring();  // no ring mapping yet
  const RingAddresses rings = q_->ring_addresses();
  expect_miss(rings.desc.value(), IotlbPerm::kRead);
  map_rings();
  guest_.fill(Gpa{0x11000}, 64, 1);
  ASSERT_EQ(update(0x11000, 0x1000, IotlbPerm::kRead), 0u);
  ASSERT_EQ(update(0x41000, 0x1000, IotlbPerm::kWrite), 0u);
  add_echo(*q_, Gpa{0x11000}, Gpa{0x41000}, 64, 1);
  kick(kick_);
  auto used = wait_used(*q_, call_);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->len, 64u);
  EXPECT_EQ(guest_.read(Gpa{0x41000}, 64), guest_.read(Gpa{0x11000}, 64));
}

TEST_F(BackendIotlbTest, InvalidateIsHonouredAndPermissionFailureGivesAccessFail) {
  map_rings();
  ASSERT_EQ(update(0x10000, 0x1000, IotlbPerm::kRead), 0u);
  ASSERT_EQ(update(0x40000, 0x1000, IotlbPerm::kWrite), 0u);
  start_ring();
  guest_.fill(Gpa{0x10000}, 64, 5);
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 64, 1);
  kick(kick_);
  ASSERT_TRUE(wait_used(*q_, call_).has_value());

  // After INVALIDATE the same buffer misses again: no stale translation.
  ASSERT_EQ(fe_->iotlb(encode_iotlb_invalidate(Iova(0x10000), 0x1000)), 0u);
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 64, 2);
  kick(kick_);
  expect_miss(0x10000, IotlbPerm::kRead);
  ASSERT_EQ(update(0x10000, 0x1000, IotlbPerm::kRead), 0u);
  auto used = wait_used(*q_, call_);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 2u);
  EXPECT_EQ(used->len, 64u);

  // The writable buffer is now mapped read-only: ACCESS_FAIL, and the request
  // completes with nothing written, without reaching the device.
  ASSERT_EQ(update(0x40000, 0x1000, IotlbPerm::kRead), 0u);
  guest_.fill(Gpa{0x40000}, 64, 0x33);
  const auto before = guest_.read(Gpa{0x40000}, 64);
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 64, 3);
  kick(kick_);
  auto fail = next_backend_iotlb();
  ASSERT_TRUE(fail.has_value());
  EXPECT_EQ(fail->type, IotlbType::kAccessFail);
  EXPECT_EQ(fail->iova, Iova(0x40000));
  EXPECT_EQ(fail->perm, IotlbPerm::kWrite);
  used = wait_used(*q_, call_);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 3u);
  EXPECT_EQ(used->len, 0u);
  EXPECT_EQ(guest_.read(Gpa{0x40000}, 64), before);
  EXPECT_EQ(dev_.handled.load(), 2);
}

TEST_F(BackendIotlbTest, StopWhileParkedReportsTheRequestAsUnprocessed) {
  map_rings();
  start_ring();
  add_echo(*q_, Gpa{0x10000}, Gpa{0x40000}, 64, 9);
  kick(kick_);
  expect_miss(0x10000, IotlbPerm::kRead);
  fe_->send(encode_vring_state(R::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(fe_->recv(), 0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 0u);  // the parked chain was not consumed
  EXPECT_EQ(fe_->session().iotlb().size(), 0u);  // flushed on ring stop
  EXPECT_EQ(dev_.handled.load(), 0);

  // Restart from there with everything mapped: the request runs exactly once.
  map_rings();
  ASSERT_EQ(update(0x10000, 0x1000, IotlbPerm::kRead), 0u);
  ASSERT_EQ(update(0x40000, 0x1000, IotlbPerm::kWrite), 0u);
  ASSERT_EQ(fe_->acked(encode_vring_state(R::kSetVringBase, {0, base->num})), 0u);
  kick_ = make_eventfd();
  ASSERT_EQ(fe_->acked(encode_vring_file(R::kSetVringKick, 0, *UniqueFd::duplicate(kick_.get()))), 0u);
  kick(kick_);
  auto used = wait_used(*q_, call_);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 9u);
  EXPECT_EQ(used->len, 64u);
  drain_eventfd(call_);
  expect_no_used(100);
  EXPECT_EQ(dev_.handled.load(), 1);
}

}  // namespace
}  // namespace vdma::vhost_user::testing
