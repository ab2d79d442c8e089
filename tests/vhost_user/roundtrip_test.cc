// Every message type, encoded, sent through a socketpair with its fds,
// received, validated and compared with what was sent. Passed fds are checked
// to be the same open file by writing through the received copy and reading
// through the sender's.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <vector>

#include "result_matchers.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::vhost_user {
namespace {

using namespace vdma::testing;

UniqueFd make_memfd() {
  UniqueFd fd(::memfd_create("vdma-roundtrip", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), 4096), 0);
  return fd;
}
UniqueFd make_eventfd() { return UniqueFd(::eventfd(0, EFD_CLOEXEC)); }
UniqueFd dup_of(const UniqueFd& fd) { return std::move(UniqueFd::duplicate(fd.get())).value(); }

// Bytes written through `received` are read back through `kept`.
void expect_same_memfd(int received, int kept) {
  static uint8_t seed = 0;
  std::array<uint8_t, 16> out{};
  for (auto& b : out) b = ++seed;
  ASSERT_EQ(::pwrite(received, out.data(), out.size(), 100), 16);
  std::array<uint8_t, 16> in{};
  ASSERT_EQ(::pread(kept, in.data(), in.size(), 100), 16);
  EXPECT_EQ(in, out);
}
// A count added through `received` is read through `kept`.
void expect_same_eventfd(int received, int kept) {
  const uint64_t add = 41;
  ASSERT_EQ(::write(received, &add, sizeof add), 8);
  uint64_t got = 0;
  ASSERT_EQ(::read(kept, &got, sizeof got), 8);
  EXPECT_EQ(got, 41u);
}
// Bytes written to the received socket arrive at the other end of the
// socket the sender kept.
void expect_same_socket(int received, int peer) {
  ASSERT_EQ(::send(received, "ping", 4, MSG_NOSIGNAL), 4);
  char buf[4] = {};
  ASSERT_EQ(::recv(peer, buf, sizeof buf, 0), 4);
  EXPECT_EQ(std::memcmp(buf, "ping", 4), 0);
}

class RoundTrip : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = make_socket_pair();
    ASSERT_THAT(p, IsOk());
    a_ = std::move((*p)[0]);
    b_ = std::move((*p)[1]);
  }
  // Sends `m` from one end and receives it at the other; the bytes must
  // arrive unchanged and with as many fds.
  Message through(const Message& m, Channel channel = Channel::kMain) {
    Message in;
    EXPECT_THAT(send_message(a_.get(), channel, m), IsOk());
    EXPECT_THAT(recv_message(b_.get(), channel, in), IsOk());
    EXPECT_EQ(to_wire(in), to_wire(m));
    EXPECT_EQ(in.fd_count(), m.fd_count());
    return in;
  }
  FrontendRequestView frontend(const Message& m) {
    Message in = through(m);
    auto v = validate_frontend_request(in);
    EXPECT_THAT(v, IsOk());
    last_ = std::move(in);
    return v ? std::move(v).value() : FrontendRequestView{};
  }
  BackendRequestView backend(const Message& m) {
    Message in = through(m, Channel::kBackend);
    auto v = validate_backend_request(in);
    EXPECT_THAT(v, IsOk());
    last_ = std::move(in);
    return v ? std::move(v).value() : BackendRequestView{};
  }

  UniqueFd a_;
  UniqueFd b_;
  Message last_;  // the last received message, whose fds the views refer to
};

TEST_F(RoundTrip, RequestsWithoutPayload) {
  using R = FrontendRequest;
  for (R r : {R::kGetFeatures, R::kSetOwner, R::kResetOwner, R::kGetProtocolFeatures, R::kGetQueueNum,
              R::kPostcopyAdvise, R::kPostcopyListen, R::kPostcopyEnd, R::kResetDevice, R::kGetMaxMemSlots,
              R::kGetStatus, R::kCheckDeviceState}) {
    Message m = encode_request(r);
    m.set_need_reply(true);
    const FrontendRequestView v = frontend(m);
    EXPECT_EQ(v.request, r);
    EXPECT_TRUE(v.need_reply);
    EXPECT_TRUE(std::holds_alternative<NoPayload>(v.payload)) << request_name(r);
  }
}

TEST_F(RoundTrip, U64Requests) {
  using R = FrontendRequest;
  const std::vector<std::pair<R, uint64_t>> cases = {
      {R::kSetFeatures, 0x1'4000'0000ull}, {R::kSetProtocolFeatures, 0x8209}, {R::kSendRarp, 0x5254'0012'3456},
      {R::kNetSetMtu, 9000},               {R::kSetStatus, 0x0f},            {R::kCloseCryptoSession, 17}};
  for (const auto& [r, value] : cases) {
    const FrontendRequestView v = frontend(encode_u64_request(r, value));
    EXPECT_EQ(v.request, r);
    EXPECT_FALSE(v.need_reply);
    EXPECT_EQ(v.as<U64Value>().value, value) << request_name(r);
  }
}

TEST_F(RoundTrip, VringStateRequests) {
  using R = FrontendRequest;
  const std::vector<std::pair<R, VringState>> cases = {
      {R::kSetVringNum, {1, 256}},   {R::kSetVringBase, {2, 0x8005'8003}}, {R::kGetVringBase, {255, 0}},
      {R::kSetVringEnable, {0, 1}},  {R::kSetVringEndian, {3, 1}},         {R::kVringKick, {4, 0}}};
  for (const auto& [r, state] : cases) {
    const FrontendRequestView v = frontend(encode_vring_state(r, state));
    EXPECT_EQ(v.request, r);
    EXPECT_EQ(v.as<VringState>(), state) << request_name(r);
  }
}

TEST_F(RoundTrip, VringAddr) {
  const VringAddress addr{5, true, RingAddr(0x7f00'0000'1000), RingAddr(0x7f00'0000'2000),
                          RingAddr(0x7f00'0000'3000), Gpa{0x12'3000}};
  EXPECT_EQ(frontend(encode_vring_addr(addr)).as<VringAddress>(), addr);
  const VringAddress no_log{0, false, RingAddr(1), RingAddr(2), RingAddr(3), Gpa{0}};
  EXPECT_EQ(frontend(encode_vring_addr(no_log)).as<VringAddress>(), no_log);
}

TEST_F(RoundTrip, VringFilesWithAndWithoutFd) {
  using R = FrontendRequest;
  for (R r : {R::kSetVringKick, R::kSetVringCall, R::kSetVringErr}) {
    UniqueFd ev = make_eventfd();
    const FrontendRequestView v = frontend(encode_vring_file(r, 9, dup_of(ev)));
    EXPECT_EQ(v.request, r);
    EXPECT_EQ(v.as<VringFile>(), (VringFile{9, true}));
    expect_same_eventfd(last_.fd(0), ev.get());

    const FrontendRequestView poll = frontend(encode_vring_file(r, 10, UniqueFd()));
    EXPECT_EQ(poll.as<VringFile>(), (VringFile{10, false}));
    EXPECT_EQ(last_.fd_count(), 0u);
  }
}

TEST_F(RoundTrip, MemTableWithOneMemfdPerRegion) {
  std::vector<UniqueFd> kept;
  std::vector<UniqueFd> sent;
  std::vector<MemoryRegion> regions;
  for (uint64_t i = 0; i < 3; ++i) {
    kept.push_back(make_memfd());
    sent.push_back(dup_of(kept.back()));
    regions.push_back({DmaAddr{i << 32}, 0x1000 * (i + 1), FrontVa{0x7f00'0000'0000 + (i << 32)}, i * 0x1000});
  }
  const FrontendRequestView v = frontend(encode_mem_table(regions, sent));
  const MemoryTable& t = v.as<MemoryTable>();
  ASSERT_EQ(t.list().size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(t.list()[i], regions[i]);
    expect_same_memfd(last_.fd(i), kept[i].get());  // region i is mapped from fd i
  }
}

TEST_F(RoundTrip, AddAndRemoveOneRegion) {
  const MemoryRegion r{DmaAddr{0x1'0000'0000}, 0x20'0000, FrontVa{0x7f12'3400'0000}, 0x1000};
  UniqueFd mem = make_memfd();
  const FrontendRequestView add = frontend(encode_mem_region(FrontendRequest::kAddMemReg, r, dup_of(mem)));
  EXPECT_EQ(add.as<MemoryRegion>(), r);
  expect_same_memfd(last_.fd(0), mem.get());
  const FrontendRequestView rem = frontend(encode_mem_region(FrontendRequest::kRemMemReg, r, UniqueFd()));
  EXPECT_EQ(rem.request, FrontendRequest::kRemMemReg);
  EXPECT_EQ(rem.as<MemoryRegion>(), r);
}

TEST_F(RoundTrip, LogBaseAndFdOnlyRequests) {
  UniqueFd log = make_memfd();
  const FrontendRequestView v = frontend(encode_log_base({0x2000, 0x100}, dup_of(log)));
  EXPECT_EQ(v.as<LogArea>(), (LogArea{0x2000, 0x100}));
  expect_same_memfd(last_.fd(0), log.get());

  UniqueFd ev = make_eventfd();
  EXPECT_EQ(frontend(encode_fd_request(FrontendRequest::kSetLogFd, dup_of(ev))).request, FrontendRequest::kSetLogFd);
  expect_same_eventfd(last_.fd(0), ev.get());

  for (FrontendRequest r : {FrontendRequest::kSetBackendReqFd, FrontendRequest::kGpuSetSocket}) {
    auto pair = make_socket_pair();
    ASSERT_THAT(pair, IsOk());
    const FrontendRequestView s = frontend(encode_fd_request(r, std::move((*pair)[0])));
    EXPECT_EQ(s.request, r);
    EXPECT_TRUE(std::holds_alternative<NoPayload>(s.payload));
    expect_same_socket(last_.fd(0), (*pair)[1].get());
  }
}

TEST_F(RoundTrip, IotlbUpdateAndInvalidate) {
  const FrontendRequestView upd =
      frontend(encode_iotlb_update(Iova{0xfee0'0000}, 0x20'0000, FrontVa{0x7f00'1000'0000}, IotlbPerm::kWrite));
  EXPECT_EQ(upd.as<IotlbMessage>(), (IotlbMessage{IotlbType::kUpdate, IotlbPerm::kWrite, Iova{0xfee0'0000}, 0x20'0000,
                                                  FrontVa{0x7f00'1000'0000}}));
  const FrontendRequestView inv = frontend(encode_iotlb_invalidate(Iova{0x4000}, 0x1000));
  EXPECT_EQ(inv.as<IotlbMessage>(),
            (IotlbMessage{IotlbType::kInvalidate, IotlbPerm::kNone, Iova{0x4000}, 0x1000, FrontVa{0}}));
  const FrontendRequestView all = frontend(encode_iotlb_invalidate(Iova{0}, 0));
  EXPECT_EQ(all.as<IotlbMessage>().last(), Iova{~0ull});
}

TEST_F(RoundTrip, ConfigGetAndSet) {
  ConfigSpace get;
  get.offset = 0;
  get.size = 60;  // sizeof(struct virtio_blk_config)
  const FrontendRequestView g = frontend(encode_config_request(FrontendRequest::kGetConfig, get));
  EXPECT_EQ(g.as<ConfigSpace>().size, 60u);
  EXPECT_EQ(g.as<ConfigSpace>().flags, ConfigFlags::kWritable);

  ConfigSpace set;
  set.offset = 20;
  set.size = 4;
  set.flags = ConfigFlags::kLiveMigration;
  set.data[0] = std::byte{1};
  set.data[3] = std::byte{4};
  const FrontendRequestView s = frontend(encode_config_request(FrontendRequest::kSetConfig, set));
  const ConfigSpace& c = s.as<ConfigSpace>();
  EXPECT_EQ(c.offset, 20u);
  EXPECT_EQ(c.flags, ConfigFlags::kLiveMigration);
  EXPECT_THAT(c.bytes(), ::testing::ElementsAre(std::byte{1}, std::byte{0}, std::byte{0}, std::byte{4}));
}

TEST_F(RoundTrip, InflightGetAndSet) {
  const FrontendRequestView g =
      frontend(encode_inflight_request(FrontendRequest::kGetInflightFd, {0, 0, 2, 256}, UniqueFd()));
  EXPECT_EQ(g.as<InflightArea>(), (InflightArea{0, 0, 2, 256}));
  UniqueFd area = make_memfd();
  const FrontendRequestView s =
      frontend(encode_inflight_request(FrontendRequest::kSetInflightFd, {0x3000, 0x40, 2, 256}, dup_of(area)));
  EXPECT_EQ(s.as<InflightArea>(), (InflightArea{0x3000, 0x40, 2, 256}));
  expect_same_memfd(last_.fd(0), area.get());
}

TEST_F(RoundTrip, SharedObjectAndDeviceState) {
  SharedObject obj;
  for (size_t i = 0; i < obj.uuid.size(); ++i) obj.uuid[i] = static_cast<uint8_t>(0xa0 + i);
  EXPECT_EQ(frontend(encode_get_shared_object(obj)).as<SharedObject>(), obj);

  int p[2] = {-1, -1};
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]);
  const DeviceStateTransfer t{TransferDirection::kLoad, MigrationPhase::kStopped};
  EXPECT_EQ(frontend(encode_device_state_fd(t, UniqueFd(p[1]))).as<DeviceStateTransfer>(), t);
  ASSERT_EQ(::write(last_.fd(0), "state", 5), 5);
  char buf[5] = {};
  ASSERT_EQ(::read(rd.get(), buf, 5), 5);
  EXPECT_EQ(std::memcmp(buf, "state", 5), 0);
}

// --- Back-end requests ---------------------------------------------------------

TEST_F(RoundTrip, BackendIotlbMissAndAccessFail) {
  Message miss = encode_iotlb_miss(Iova{0xfee0'1000}, IotlbPerm::kRead);
  miss.set_need_reply(true);
  const BackendRequestView m = backend(miss);
  EXPECT_EQ(m.request, BackendRequest::kIotlbMsg);
  EXPECT_TRUE(m.need_reply);
  EXPECT_EQ(m.as<IotlbMessage>(), (IotlbMessage{IotlbType::kMiss, IotlbPerm::kRead, Iova{0xfee0'1000}, 0, FrontVa{0}}));
  const BackendRequestView f = backend(encode_iotlb_access_fail(Iova{0x2000}, IotlbPerm::kWrite));
  EXPECT_EQ(f.as<IotlbMessage>(),
            (IotlbMessage{IotlbType::kAccessFail, IotlbPerm::kWrite, Iova{0x2000}, 0, FrontVa{0}}));
}

TEST_F(RoundTrip, BackendNotificationsAndHostNotifier) {
  EXPECT_EQ(backend(encode_config_change()).request, BackendRequest::kConfigChangeMsg);
  EXPECT_EQ(backend(encode_backend_vring_call(3)).as<VringState>(), (VringState{3, 0}));
  const BackendRequestView err = backend(encode_backend_vring_err(4));
  EXPECT_EQ(err.request, BackendRequest::kVringErr);
  EXPECT_EQ(err.as<VringState>(), (VringState{4, 0}));

  UniqueFd area = make_memfd();
  EXPECT_EQ(backend(encode_host_notifier(2, 0x1000, 0, dup_of(area))).as<VringArea>(), (VringArea{2, true, 0x1000, 0}));
  expect_same_memfd(last_.fd(0), area.get());
  EXPECT_EQ(backend(encode_host_notifier(2, 0, 0, UniqueFd())).as<VringArea>(), (VringArea{2, false, 0, 0}));
}

TEST_F(RoundTrip, BackendSharedObjects) {
  SharedObject obj;
  obj.uuid[15] = 0x42;
  for (BackendRequest r :
       {BackendRequest::kSharedObjectAdd, BackendRequest::kSharedObjectRemove, BackendRequest::kSharedObjectLookup}) {
    const BackendRequestView v = backend(encode_shared_object(r, obj));
    EXPECT_EQ(v.request, r);
    EXPECT_EQ(v.as<SharedObject>(), obj);
  }
}

// --- Replies -------------------------------------------------------------------

TEST_F(RoundTrip, U64AndStatusReplies) {
  using R = FrontendRequest;
  for (R r : {R::kGetFeatures, R::kGetProtocolFeatures, R::kGetQueueNum, R::kGetMaxMemSlots, R::kGetStatus,
              R::kSetLogBase}) {
    const Message in = through(encode_u64_reply(r, 0xabcdef));
    EXPECT_THAT(parse_u64_reply(in, r), HasValue(0xabcdefull)) << request_name(r);
  }
  EXPECT_THAT(parse_status_reply(through(encode_status_reply(22, 0)), 22, Channel::kMain), IsOk());
  EXPECT_THAT(parse_status_reply(through(encode_status_reply(5, 3)), 5, Channel::kMain),
              IsError(VhostUserErrc::kRemoteError));
  EXPECT_THAT(parse_status_reply(through(encode_status_reply(1, 0), Channel::kBackend), 1, Channel::kBackend), IsOk());
}

TEST_F(RoundTrip, VringBaseConfigAndInflightReplies) {
  EXPECT_THAT(parse_vring_base_reply(through(encode_vring_base_reply({6, 0x1234})), 6),
              HasValue(VringState{6, 0x1234}));

  ConfigSpace c;
  c.offset = 0;
  c.size = 8;
  c.data[7] = std::byte{0x99};
  auto cfg = parse_config_reply(through(encode_config_reply(c)), 0, 8);
  ASSERT_THAT(cfg, IsOk());
  EXPECT_EQ(cfg->bytes()[7], std::byte{0x99});
  EXPECT_THAT(parse_config_reply(through(encode_config_error_reply()), 0, 8), IsError(VhostUserErrc::kRemoteError));

  UniqueFd area = make_memfd();
  const Message in = through(encode_inflight_reply({0x4000, 0, 1, 128}, dup_of(area)));
  EXPECT_THAT(parse_inflight_reply(in), HasValue(InflightArea{0x4000, 0, 1, 128}));
  expect_same_memfd(in.fd(0), area.get());
}

}  // namespace
}  // namespace vdma::vhost_user
