// BackendSession, message by message: negotiation, every handled request's
// reply, and each malformed or illegal request's exact error reply or close.
#include <gtest/gtest.h>

#include "backend_test_util.h"

namespace vdma::vhost_user::testing {
namespace {

using R = FrontendRequest;

constexpr uint64_t kAllProtocol =
    protocol_feature_bit(kProtocolFeatureMq) | protocol_feature_bit(kProtocolFeatureReplyAck) |
    protocol_feature_bit(kProtocolFeatureBackendReq) | protocol_feature_bit(kProtocolFeatureBackendSendFd) |
    protocol_feature_bit(kProtocolFeatureConfig) | protocol_feature_bit(kProtocolFeatureConfigureMemSlots) |
    protocol_feature_bit(kProtocolFeatureResetDevice) | protocol_feature_bit(kProtocolFeatureStatus);

class BackendSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fe_ = std::make_unique<StubFrontend>(dev_);
  }
  void negotiate() { fe_->negotiate(bit(kFeatureVersion1), kAllProtocol); }

  EchoDevice dev_;
  std::unique_ptr<StubFrontend> fe_;
};

TEST_F(BackendSessionTest, OffersFeaturesAndProtocolFeatures) {
  EXPECT_EQ(fe_->get_u64(R::kGetFeatures), bit(kDeviceFeatureBit) | bit(kFeatureVersion1) |
                                                 bit(kFeatureIndirectDesc) | bit(kFeatureEventIdx) |
                                                 bit(kFeatureRingPacked) | bit(kFeatureProtocolFeatures) |
                                                 bit(kFeatureAccessPlatform));
  EXPECT_EQ(fe_->get_u64(R::kGetProtocolFeatures),
            kAllProtocol | protocol_feature_bit(kProtocolFeatureInflightShmfd));
}

TEST_F(BackendSessionTest, ValueRequestsAfterNegotiation) {
  negotiate();
  EXPECT_EQ(fe_->get_u64(R::kGetQueueNum), 2u);
  EXPECT_EQ(fe_->get_u64(R::kGetMaxMemSlots), 32u);
  EXPECT_EQ(fe_->acked(encode_u64_request(R::kSetStatus, 0x0f)), 0u);
  EXPECT_EQ(fe_->get_u64(R::kGetStatus), 0x0fu);
  // A second SET_OWNER is refused.
  EXPECT_EQ(fe_->acked(encode_request(R::kSetOwner)), 1u);
  auto pair = make_socket_pair();
  ASSERT_TRUE(pair.has_value());
  EXPECT_EQ(fe_->acked(encode_fd_request(R::kSetBackendReqFd, std::move((*pair)[1]))), 0u);
}

TEST_F(BackendSessionTest, SetFeaturesRejectsBitsNotOffered) {
  fe_->send(encode_u64_request(R::kSetProtocolFeatures, kAllProtocol));
  EXPECT_EQ(fe_->acked(encode_u64_request(R::kSetFeatures, bit(40))), 1u);
  // ACCESS_PLATFORM needs REPLY_ACK and BACKEND_REQ: fine here.
  EXPECT_EQ(fe_->acked(encode_u64_request(R::kSetFeatures, bit(kFeatureAccessPlatform) | bit(kFeatureVersion1))), 0u);
  EXPECT_EQ(fe_->acked(encode_u64_request(R::kSetProtocolFeatures, bit(25))), 1u);
}

TEST_F(BackendSessionTest, AccessPlatformWithoutBackendChannelFeatureCloses) {
  fe_->send(encode_u64_request(R::kSetProtocolFeatures, 0));
  fe_->send(encode_u64_request(R::kSetFeatures, bit(kFeatureAccessPlatform)));
  EXPECT_TRUE(fe_->closed_by_backend());
  fe_->finish();
  ASSERT_TRUE(fe_->end().has_value());
  EXPECT_TRUE(fe_->end()->is(VhostUserErrc::kBadState)) << fmt::format("{}", *fe_->end());
}

TEST_F(BackendSessionTest, ConfigSpaceReadWriteAndBounds) {
  negotiate();
  ConfigSpace get;
  get.offset = 4;
  get.size = 8;
  fe_->send(encode_config_request(R::kGetConfig, get));
  auto cfg = parse_config_reply(fe_->recv(), 4, 8);
  ASSERT_TRUE(cfg.has_value());
  for (uint32_t i = 0; i < 8; ++i) EXPECT_EQ(cfg->data[i], std::byte(0xa4 + i));
  // Beyond the 16-byte space: the empty GET_CONFIG failure reply.
  get.offset = 12;
  fe_->send(encode_config_request(R::kGetConfig, get));
  Message reply = fe_->recv();
  EXPECT_EQ(reply.size(), 0u);
  // Writable bytes 8-15; byte 0 is read-only (device error -> status 1).
  ConfigSpace set;
  set.offset = 10;
  set.size = 2;
  set.data[0] = std::byte{0x11};
  set.data[1] = std::byte{0x22};
  EXPECT_EQ(fe_->acked(encode_config_request(R::kSetConfig, set)), 0u);
  set.offset = 0;
  EXPECT_EQ(fe_->acked(encode_config_request(R::kSetConfig, set)), 1u);
  get.offset = 10;
  get.size = 2;
  fe_->send(encode_config_request(R::kGetConfig, get));
  cfg = parse_config_reply(fe_->recv(), 10, 2);
  ASSERT_TRUE(cfg.has_value());
  EXPECT_EQ(cfg->data[0], std::byte{0x11});
  EXPECT_EQ(cfg->data[1], std::byte{0x22});
}

TEST_F(BackendSessionTest, ShortPayloadGetsErrorReplyWithReplyAck) {
  negotiate();
  Message m(static_cast<uint32_t>(R::kSetFeatures), kVersion);
  const uint32_t four = 0;
  m.set_payload_struct(four);
  EXPECT_EQ(fe_->acked(std::move(m)), 1u);
  EXPECT_EQ(fe_->get_u64(R::kGetQueueNum), 2u);  // the session goes on
}

TEST_F(BackendSessionTest, ShortPayloadWithoutReplyAckCloses) {
  Message m(static_cast<uint32_t>(R::kSetFeatures), kVersion);
  const uint32_t four = 0;
  m.set_payload_struct(four);
  fe_->send(m);
  EXPECT_TRUE(fe_->closed_by_backend());
  fe_->finish();
  ASSERT_TRUE(fe_->end().has_value());
  EXPECT_TRUE(fe_->end()->is(VhostUserErrc::kBadSize)) << fmt::format("{}", *fe_->end());
}

TEST_F(BackendSessionTest, WrongFdCountGetsErrorReply) {
  negotiate();
  // SET_VRING_CALL without the no-fd bit but without an fd.
  Message m(static_cast<uint32_t>(R::kSetVringCall), kVersion);
  m.set_payload_struct(uint64_t{0});
  EXPECT_EQ(fe_->acked(std::move(m)), 1u);
  // SET_MEM_TABLE announcing one region, carrying two fds.
  GuestSide g;
  const MemoryRegion region{DmaAddr(0), kRamSize, FrontVa(kUserBase), 0};
  std::array<UniqueFd, 1> fds{*UniqueFd::duplicate(g.mem->regions()[0].fd())};
  Message table = encode_mem_table(std::span<const MemoryRegion>(&region, 1), fds);
  table.add_fd(*UniqueFd::duplicate(g.mem->regions()[0].fd()));
  EXPECT_EQ(fe_->acked(std::move(table)), 1u);
  fe_->finish();
  EXPECT_EQ(fe_->session().memory().region_count(), 0u);
}

TEST_F(BackendSessionTest, OverlappingRegionsAreRejectedAndTheTableKept) {
  negotiate();
  GuestSide g;
  ASSERT_EQ(fe_->set_mem_table(*g.mem), 0u);
  const int fd = g.mem->regions()[0].fd();
  const MemoryRegion rs[2] = {{DmaAddr(0), 0x10000, FrontVa(0x100000), 0},
                              {DmaAddr(0x8000), 0x10000, FrontVa(0x200000), 0}};
  std::array<UniqueFd, 2> fds{*UniqueFd::duplicate(fd), *UniqueFd::duplicate(fd)};
  EXPECT_EQ(fe_->acked(encode_mem_table(rs, fds)), 1u);
  // ADD_MEM_REG overlapping the existing region in user space.
  const MemoryRegion add{DmaAddr(0x4000'0000), 0x1000, FrontVa(kUserBase + 0x1000), 0};
  EXPECT_EQ(fe_->acked(encode_mem_region(R::kAddMemReg, add, *UniqueFd::duplicate(fd))), 1u);
  fe_->finish();
  ASSERT_EQ(fe_->session().memory().region_count(), 1u);
  EXPECT_EQ(fe_->session().memory().regions()[0].spec().user_addr, FrontVa(kUserBase));
}

TEST_F(BackendSessionTest, AddAndRemoveMemoryRegions) {
  negotiate();
  GuestSide g;
  const int fd = g.mem->regions()[0].fd();
  const MemoryRegion a{DmaAddr(0), 0x10000, FrontVa(0x100000), 0};
  const MemoryRegion b{DmaAddr(0x10000), 0x10000, FrontVa(0x300000), 0x10000};
  EXPECT_EQ(fe_->acked(encode_mem_region(R::kAddMemReg, a, *UniqueFd::duplicate(fd))), 0u);
  EXPECT_EQ(fe_->acked(encode_mem_region(R::kAddMemReg, b, *UniqueFd::duplicate(fd))), 0u);
  EXPECT_EQ(fe_->acked(encode_mem_region(R::kRemMemReg, a, UniqueFd())), 0u);
  EXPECT_EQ(fe_->acked(encode_mem_region(R::kRemMemReg, a, UniqueFd())), 1u);  // already gone
  fe_->finish();
  ASSERT_EQ(fe_->session().memory().region_count(), 1u);
  EXPECT_EQ(fe_->session().memory().regions()[0].spec(), b);
}

TEST_F(BackendSessionTest, VringNumRules) {
  negotiate();
  EXPECT_EQ(fe_->acked(encode_vring_state(R::kSetVringNum, {0, 0})), 1u);      // codec: 1..32768
  EXPECT_EQ(fe_->acked(encode_vring_state(R::kSetVringNum, {0, 40000})), 1u);  // codec
  EXPECT_EQ(fe_->acked(encode_vring_state(R::kSetVringNum, {0, 100})), 1u);    // split: not a power of two
  EXPECT_EQ(fe_->acked(encode_vring_state(R::kSetVringNum, {2, 64})), 1u);     // no vring 2
  EXPECT_EQ(fe_->acked(encode_vring_state(R::kSetVringNum, {1, 32768})), 0u);
  EXPECT_EQ(fe_->acked(encode_vring_state(R::kSetVringBase, {1, 0x10000})), 1u);  // above 16 bits
}

TEST_F(BackendSessionTest, VringAddressOutsideMemoryIsRejected) {
  negotiate();
  GuestSide g;
  ASSERT_EQ(fe_->set_mem_table(*g.mem), 0u);
  ASSERT_EQ(fe_->acked(encode_vring_state(R::kSetVringNum, {0, 64})), 0u);
  VringAddress a;
  a.index = 0;
  a.desc = RingAddr(kUserBase + 0x1000);
  a.avail = RingAddr(kUserBase + 0x2000);
  a.used = RingAddr(kUserBase + kRamSize - 0x10);  // used ring runs past the region
  EXPECT_EQ(fe_->acked(encode_vring_addr(a)), 1u);
  a.used = RingAddr(0x1000);  // not front-end memory at all
  EXPECT_EQ(fe_->acked(encode_vring_addr(a)), 1u);
  a.used = RingAddr(kUserBase + 0x3000);
  EXPECT_EQ(fe_->acked(encode_vring_addr(a)), 0u);
  // Kick before the ring is configured.
  EXPECT_EQ(fe_->acked(encode_vring_file(R::kSetVringKick, 1, make_eventfd())), 1u);
  // Polling (no kick fd) is not supported.
  EXPECT_EQ(fe_->acked(encode_vring_file(R::kSetVringKick, 0, UniqueFd())), 1u);
}

TEST_F(BackendSessionTest, UnknownRequestGetsErrorReplyCarryingItsCode) {
  negotiate();
  Message m(99, kVersion | kFlagNeedReply);
  fe_->send(m);
  Message reply = fe_->recv();
  EXPECT_EQ(reply.request(), 99u);
  ASSERT_EQ(reply.size(), 8u);
  EXPECT_EQ(reply.read_payload<uint64_t>(), 1u);
  EXPECT_EQ(fe_->get_u64(R::kGetQueueNum), 2u);
}

TEST_F(BackendSessionTest, UnknownRequestWithoutReplyAckCloses) {
  fe_->send(Message(99, kVersion));
  EXPECT_TRUE(fe_->closed_by_backend());
  fe_->finish();
  EXPECT_TRUE(fe_->end()->is(VhostUserErrc::kUnknownRequest)) << fmt::format("{}", *fe_->end());
}

TEST_F(BackendSessionTest, FailingValueRequestClosesEvenWithReplyAck) {
  negotiate();
  // GET_VRING_BASE has no failure form: a bad vring index closes.
  fe_->send(encode_vring_state(R::kGetVringBase, {5, 0}));
  EXPECT_TRUE(fe_->closed_by_backend());
  fe_->finish();
  EXPECT_TRUE(fe_->end()->is(VhostUserErrc::kBadField)) << fmt::format("{}", *fe_->end());
}

TEST_F(BackendSessionTest, InflightRequestsNeedTheirProtocolFeature) {
  negotiate();  // INFLIGHT_SHMFD offered but not acked
  InflightArea area;
  area.mmap_size = 4096;
  EXPECT_EQ(fe_->acked(encode_inflight_request(R::kSetInflightFd, area, make_eventfd())), 1u);
  area.num_queues = 2;
  area.queue_size = 64;
  fe_->send(encode_inflight_request(R::kGetInflightFd, area, UniqueFd()));
  EXPECT_TRUE(fe_->closed_by_backend());  // a value reply without failure form
  fe_->finish();
  EXPECT_TRUE(fe_->end()->is(VhostUserErrc::kBadState)) << fmt::format("{}", *fe_->end());
}

TEST_F(BackendSessionTest, GatedRequestsNeedTheirProtocolFeature) {
  fe_->send(encode_u64_request(R::kSetProtocolFeatures, protocol_feature_bit(kProtocolFeatureReplyAck)));
  EXPECT_EQ(fe_->acked(encode_u64_request(R::kSetStatus, 1)), 1u);  // STATUS not negotiated
  EXPECT_EQ(fe_->acked(encode_request(R::kResetDevice)), 1u);
  auto pair = make_socket_pair();
  EXPECT_EQ(fe_->acked(encode_fd_request(R::kSetBackendReqFd, std::move((*pair)[1]))), 1u);
  EXPECT_EQ(fe_->acked(encode_vring_state(R::kSetVringEnable, {0, 1})), 1u);  // PROTOCOL_FEATURES not acked
  // IOTLB_MSG without ACCESS_PLATFORM: its spec reply carries the failure.
  EXPECT_EQ(fe_->iotlb(encode_iotlb_invalidate(Iova(0), 0)), 1u);
}

TEST_F(BackendSessionTest, IotlbUpdateMustLieInsideTheMemoryTable) {
  fe_->negotiate(bit(kFeatureVersion1) | bit(kFeatureAccessPlatform), kAllProtocol);
  GuestSide g;
  ASSERT_EQ(fe_->set_mem_table(*g.mem), 0u);
  EXPECT_EQ(fe_->iotlb(encode_iotlb_update(Iova(0x1000), 0x1000, FrontVa(kUserBase + kRamSize - 0x800),
                                           IotlbPerm::kRead)),
            1u);
  EXPECT_EQ(fe_->iotlb(encode_iotlb_update(Iova(0x1000), 0x1000, FrontVa(0x1000), IotlbPerm::kRead)), 1u);
  EXPECT_EQ(fe_->iotlb(encode_iotlb_update(Iova(0x1000), 0x1000, FrontVa(kUserBase), IotlbPerm::kNone)), 1u);
  EXPECT_EQ(fe_->iotlb(encode_iotlb_update(Iova(0x1000), 0x2000, FrontVa(kUserBase + 0x4000), IotlbPerm::kRead)),
            0u);
  EXPECT_EQ(fe_->iotlb(encode_iotlb_invalidate(Iova(0x2000), 0x1000)), 0u);
  const auto entries = fe_->session().iotlb().entries();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].iova, Iova(0x1000));
  EXPECT_EQ(entries[0].len, 0x1000u);
  EXPECT_EQ(entries[0].uaddr, FrontVa(kUserBase + 0x4000));
  // The entry's host pointer is the back-end's own mapping of uaddr.
  const std::byte marker[1] = {std::byte{0x6b}};
  ASSERT_THAT(g.mem->write(Gpa(0x4000), marker), IsOk());
  EXPECT_EQ(entries[0].host[0], std::byte{0x6b});
  EXPECT_EQ(fe_->iotlb(encode_iotlb_invalidate(Iova(0), 0)), 0u);  // global flush
  EXPECT_EQ(fe_->session().iotlb().size(), 0u);
  // A new memory table flushes the IOTLB too.
  EXPECT_EQ(fe_->iotlb(encode_iotlb_update(Iova(0x1000), 0x1000, FrontVa(kUserBase), IotlbPerm::kRead)), 0u);
  EXPECT_EQ(fe_->session().iotlb().size(), 1u);
  ASSERT_EQ(fe_->set_mem_table(*g.mem), 0u);
  EXPECT_EQ(fe_->session().iotlb().size(), 0u);
}

TEST_F(BackendSessionTest, ResetDeviceForgetsFeaturesAndRings) {
  negotiate();
  ASSERT_EQ(fe_->acked(encode_vring_state(R::kSetVringNum, {0, 64})), 0u);
  EXPECT_EQ(fe_->acked(encode_request(R::kResetDevice)), 0u);
  EXPECT_EQ(dev_.resets.load(), 1);
  // Features are gone: SET_VRING_ENABLE needs PROTOCOL_FEATURES acked again.
  EXPECT_EQ(fe_->acked(encode_vring_state(R::kSetVringEnable, {0, 1})), 1u);
  EXPECT_EQ(fe_->acked(encode_request(R::kResetOwner)), 0u);
  EXPECT_EQ(dev_.resets.load(), 2);
  EXPECT_EQ(fe_->acked(encode_request(R::kSetOwner)), 0u);  // ownership can be taken again
}

TEST_F(BackendSessionTest, OrderlyCloseEndsWithPeerClosed) {
  negotiate();
  fe_->finish();
  ASSERT_TRUE(fe_->end().has_value());
  EXPECT_TRUE(fe_->end()->is(VhostUserErrc::kPeerClosed));
  EXPECT_TRUE(fe_->session().closed());
}

}  // namespace
}  // namespace vdma::vhost_user::testing
