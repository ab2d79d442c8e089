// Message container, UniqueFd, decode_message and to_wire.
#include "vdma/vhost_user/message.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "result_matchers.h"
#include "vdma/vhost_user/encode.h"

namespace vdma::vhost_user {
namespace {

using ::testing::ElementsAreArray;
using namespace vdma::testing;

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

UniqueFd make_eventfd() {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  return fd;
}

std::vector<std::byte> bytes(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int b : v) out.push_back(std::byte(static_cast<uint8_t>(b)));
  return out;
}

TEST(UniqueFd, ClosesOnDestructionResetAndMove) {
  int raw = -1;
  {
    UniqueFd fd = make_eventfd();
    raw = fd.get();
    EXPECT_TRUE(is_open(raw));
  }
  EXPECT_FALSE(is_open(raw));

  UniqueFd a = make_eventfd();
  raw = a.get();
  UniqueFd b = std::move(a);
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(b.get(), raw);
  UniqueFd c = make_eventfd();
  const int raw_c = c.get();
  c = std::move(b);  // closes c's old fd
  EXPECT_FALSE(is_open(raw_c));
  EXPECT_EQ(c.get(), raw);
  c.reset();
  EXPECT_FALSE(is_open(raw));
  EXPECT_EQ(UniqueFd(-5).get(), -1);
}

TEST(UniqueFd, ReleaseAndDuplicate) {
  UniqueFd a = make_eventfd();
  auto dup = UniqueFd::duplicate(a.get());
  ASSERT_THAT(dup, IsOk());
  EXPECT_NE(dup->get(), a.get());
  EXPECT_NE(::fcntl(dup->get(), F_GETFD) & FD_CLOEXEC, 0);
  const uint64_t one = 1;
  ASSERT_EQ(::write(dup->get(), &one, sizeof one), 8);
  uint64_t got = 0;
  ASSERT_EQ(::read(a.get(), &got, sizeof got), 8);  // same eventfd
  EXPECT_EQ(got, 1u);

  const int raw = a.release();
  EXPECT_FALSE(a.valid());
  EXPECT_TRUE(is_open(raw));
  ::close(raw);
  EXPECT_THAT(UniqueFd::duplicate(raw), IsErrorWith(BaseErrc::kSystem, ::testing::HasSubstr("duplicating fd")));
}

TEST(Message, DefaultIsEmptyVersion1Request) {
  Message m;
  EXPECT_EQ(m.request(), 0u);
  EXPECT_EQ(m.flags(), kVersion);
  EXPECT_EQ(m.version(), 1u);
  EXPECT_FALSE(m.is_reply());
  EXPECT_FALSE(m.needs_reply());
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.fd_count(), 0u);
  m.set_need_reply(true);
  EXPECT_EQ(m.flags(), kVersion | kFlagNeedReply);
  m.set_need_reply(false);
  EXPECT_EQ(m.flags(), kVersion);
}

TEST(Message, MoveTransfersPayloadAndFdsAndEmptiesTheSource) {
  Message a(7, kVersion | kFlagNeedReply);
  a.set_payload_struct(WireVringState{3, 256});
  UniqueFd e = make_eventfd();
  const int raw = e.get();
  a.add_fd(std::move(e));

  Message b(std::move(a));
  EXPECT_EQ(b.request(), 7u);
  EXPECT_TRUE(b.needs_reply());
  ASSERT_EQ(b.size(), 8u);
  EXPECT_EQ(b.read_payload<WireVringState>().num, 256u);
  ASSERT_EQ(b.fd_count(), 1u);
  EXPECT_EQ(b.fd(0), raw);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(a.fd_count(), 0u);

  Message c;
  UniqueFd other = make_eventfd();
  const int raw_other = other.get();
  c.add_fd(std::move(other));
  c = std::move(b);  // c's old fd is closed, b's fd moves over
  EXPECT_FALSE(is_open(raw_other));
  EXPECT_EQ(c.fd(0), raw);
  EXPECT_TRUE(is_open(raw));
  c.clear();
  EXPECT_FALSE(is_open(raw));
  EXPECT_EQ(c.request(), 0u);
}

TEST(Message, TakeFdLeavesAnEmptySlot) {
  Message m;
  m.add_fd(make_eventfd());
  m.add_fd(make_eventfd());
  const int raw1 = m.fd(1);
  UniqueFd taken = m.take_fd(1);
  EXPECT_EQ(taken.get(), raw1);
  EXPECT_EQ(m.fd_count(), 2u);
  EXPECT_EQ(m.fd(1), -1);
  m.clear_fds();
  EXPECT_TRUE(is_open(raw1));  // owned by `taken` now
}

TEST(Message, HoldsUpToEightFds) {
  Message m;
  for (size_t i = 0; i < kMaxFds; ++i) m.add_fd(make_eventfd());
  EXPECT_EQ(m.fd_count(), kMaxFds);
  EXPECT_DEATH(m.add_fd(make_eventfd()), "more than kMaxFds");
}

TEST(Message, ReadPastThePayloadIsABug) {
  Message m;
  m.set_payload_struct(WireU64{1});
  EXPECT_DEATH((void)m.read_payload<WireVringAddr>(), "payload read past size");
}

TEST(Message, ToWireIsHeaderThenPayloadInNativeOrder) {
  const Message m = encode_u64_request(FrontendRequest::kSetFeatures, 0x1122334455667788ull);
  EXPECT_THAT(to_wire(m), ElementsAreArray(bytes({2, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0,  //
                                                  0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11})));
  const Message r = encode_status_reply(22, 0);
  EXPECT_THAT(to_wire(r), ElementsAreArray(bytes({22, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})));
}

TEST(DecodeMessage, ParsesHeaderAndPayload) {
  const auto wire = bytes({11, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0});
  Message m;
  m.add_fd(make_eventfd());  // cleared by decode
  ASSERT_THAT(decode_message(wire, Channel::kMain, m), IsOk());
  EXPECT_EQ(m.request(), 11u);
  EXPECT_EQ(m.flags(), 9u);
  EXPECT_TRUE(m.needs_reply());
  EXPECT_EQ(m.read_payload<WireVringState>().index, 2u);
  EXPECT_EQ(m.fd_count(), 0u);
  EXPECT_EQ(to_wire(m), wire);
}

TEST(DecodeMessage, RejectsBrokenFraming) {
  Message m;
  EXPECT_THAT(decode_message(bytes({1, 0, 0, 0, 1}), Channel::kMain, m),
              IsErrorWith(VhostUserErrc::kTruncated, "message of 5 bytes is shorter than the 12-byte header"));
  EXPECT_THAT(decode_message(bytes({9, 0, 0, 0, 1, 0, 0, 0, 40, 0, 0, 0, 1, 2, 3}), Channel::kMain, m),
              IsErrorWith(VhostUserErrc::kTruncated, "SET_VRING_ADDR: header announces 40 payload bytes, 3 present"));
  EXPECT_THAT(decode_message(bytes({1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7}), Channel::kMain, m),
              IsErrorWith(VhostUserErrc::kBadSize, "GET_FEATURES: 1 bytes follow the 0-byte payload"));
  EXPECT_THAT(decode_message(bytes({1, 0, 0, 0, 1, 0, 0, 0, 0x01, 0x10, 0, 0}), Channel::kBackend, m),
              IsErrorWith(VhostUserErrc::kPayloadTooLarge,
                          "BACKEND_IOTLB_MSG: payload size 4097 exceeds the maximum 4096"));
  EXPECT_THAT(
      decode_message(bytes({99, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}), Channel::kMain, m),
      IsErrorWith(VhostUserErrc::kPayloadTooLarge, "request 99: payload size 4294967295 exceeds the maximum 4096"));
}

TEST(DecodeMessage, AcceptsTheLargestPayload) {
  std::vector<std::byte> wire(kHeaderSize + kMaxPayloadSize, std::byte{0x5a});
  const WireHeader h{99, kVersion, static_cast<uint32_t>(kMaxPayloadSize)};
  std::memcpy(wire.data(), &h, sizeof h);
  Message m;
  ASSERT_THAT(decode_message(wire, Channel::kMain, m), IsOk());
  EXPECT_EQ(m.size(), kMaxPayloadSize);
  EXPECT_EQ(m.payload()[kMaxPayloadSize - 1], std::byte{0x5a});
}

}  // namespace
}  // namespace vdma::vhost_user
