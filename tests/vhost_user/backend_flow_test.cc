// BackendSession data path in bypass mode: negotiate, share memory, set up
// vrings from a driver-side queue, kick, the echo device copies, the driver
// checks the bytes; GET_VRING_BASE stop semantics for split and packed rings.
#include <gtest/gtest.h>

#include "backend_test_util.h"

namespace vdma::vhost_user::testing {
namespace {

using R = FrontendRequest;

constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureMq) |
                               protocol_feature_bit(kProtocolFeatureBackendReq);

struct Flow {
  EchoDevice dev;
  GuestSide guest;
  std::unique_ptr<StubFrontend> fe = std::make_unique<StubFrontend>(dev);
  UniqueFd kick;
  UniqueFd call;
};

void echo_and_check(Flow& f, DriverQueue& q, uint64_t cookie, uint32_t len, uint8_t seed) {
  const Gpa src{0x10000 + cookie * 0x1000};
  const Gpa dst{0x40000 + cookie * 0x1000};
  f.guest.fill(src, len, seed);
  f.guest.fill(dst, len, static_cast<uint8_t>(seed + 1));  // different, so a missed copy shows
  add_echo(q, src, dst, len, cookie);
  if (q.kick_prepare()) kick(f.kick);
  auto used = wait_used(q, f.call);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, cookie);
  EXPECT_EQ(used->len, len);
  EXPECT_EQ(f.guest.read(dst, len), f.guest.read(src, len));
}

TEST(BackendFlow, SplitRingEchoesData) {
  Flow f;
  const uint64_t features = bit(kFeatureVersion1) | bit(kFeatureEventIdx) | bit(kFeatureIndirectDesc);
  f.fe->negotiate(features, kProtocol);
  ASSERT_EQ(f.fe->set_mem_table(*f.guest.mem), 0u);
  auto q = f.guest.queue(RingFormat::kSplit, 64, features | bit(kFeatureProtocolFeatures));
  f.fe->setup_vring(1, *q, false, f.kick, f.call);
  for (uint64_t i = 0; i < 20; ++i) echo_and_check(f, *q, i % 8, static_cast<uint32_t>(100 + i * 37), uint8_t(i));
  EXPECT_EQ(f.dev.handled.load(), 20);
  EXPECT_EQ(f.dev.last_queue.load(), 1u);
  // GET_VRING_BASE stops the ring and reports the next avail index.
  f.fe->send(encode_vring_state(R::kGetVringBase, {1, 0}));
  auto base = parse_vring_base_reply(f.fe->recv(), 1);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 20u);
}

TEST(BackendFlow, StoppedRingIsNotProcessedUntilRestarted) {
  Flow f;
  const uint64_t features = bit(kFeatureVersion1);
  f.fe->negotiate(features, kProtocol);
  ASSERT_EQ(f.fe->set_mem_table(*f.guest.mem), 0u);
  auto q = f.guest.queue(RingFormat::kSplit, 8, features | bit(kFeatureProtocolFeatures));
  f.fe->setup_vring(0, *q, false, f.kick, f.call);
  for (uint64_t i = 0; i < 3; ++i) echo_and_check(f, *q, i, 64, uint8_t(i));
  f.fe->send(encode_vring_state(R::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(f.fe->recv(), 0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 3u);

  // A request added now stays unprocessed: the ring is stopped.
  f.guest.fill(Gpa{0x20000}, 64, 9);
  drain_eventfd(f.call);
  add_echo(*q, Gpa{0x20000}, Gpa{0x50000}, 64, 7);
  kick(f.kick);
  EXPECT_FALSE(wait_eventfd(f.call.get(), 200));
  auto none = q->get_used();
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(f.dev.handled.load(), 3);

  // Restart where it stopped: SET_VRING_BASE 3, a new kick fd.
  ASSERT_EQ(f.fe->acked(encode_vring_state(R::kSetVringBase, {0, 3})), 0u);
  f.kick = make_eventfd();
  ASSERT_EQ(f.fe->acked(encode_vring_file(R::kSetVringKick, 0, *UniqueFd::duplicate(f.kick.get()))), 0u);
  kick(f.kick);
  auto used = wait_used(*q, f.call);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 7u);
  EXPECT_EQ(f.guest.read(Gpa{0x50000}, 64), f.guest.read(Gpa{0x20000}, 64));
  EXPECT_EQ(f.dev.handled.load(), 4);
}

TEST(BackendFlow, DisabledRingKeepsItsPosition) {
  Flow f;
  const uint64_t features = bit(kFeatureVersion1);
  f.fe->negotiate(features, kProtocol);
  ASSERT_EQ(f.fe->set_mem_table(*f.guest.mem), 0u);
  auto q = f.guest.queue(RingFormat::kSplit, 8, features | bit(kFeatureProtocolFeatures));
  f.fe->setup_vring(0, *q, false, f.kick, f.call);
  echo_and_check(f, *q, 0, 64, 1);
  ASSERT_EQ(f.fe->acked(encode_vring_state(R::kSetVringEnable, {0, 0})), 0u);
  drain_eventfd(f.call);
  add_echo(*q, Gpa{0x10000}, Gpa{0x40000}, 64, 1);
  kick(f.kick);
  EXPECT_FALSE(wait_eventfd(f.call.get(), 200));
  ASSERT_EQ(f.fe->acked(encode_vring_state(R::kSetVringEnable, {0, 1})), 0u);
  auto used = wait_used(*q, f.call);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 1u);
  EXPECT_EQ(f.dev.handled.load(), 2);
}

TEST(BackendFlow, PackedRingEchoesAndReportsTheWrapCounter) {
  Flow f;
  const uint64_t features = bit(kFeatureVersion1) | bit(kFeatureRingPacked);
  f.fe->negotiate(features, kProtocol);
  ASSERT_EQ(f.fe->set_mem_table(*f.guest.mem), 0u);
  auto q = f.guest.queue(RingFormat::kPacked, 4, features | bit(kFeatureProtocolFeatures));
  // No SET_VRING_BASE: a fresh packed ring (index 0, wrap counter 1).
  f.fe->setup_vring(0, *q, false, f.kick, f.call, 0, /*set_base=*/false);
  // Each echo chain takes 2 descriptors of the 4-entry ring.
  for (uint64_t i = 0; i < 3; ++i) echo_and_check(f, *q, i, 256, uint8_t(i * 3));
  f.fe->send(encode_vring_state(R::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(f.fe->recv(), 0);
  ASSERT_TRUE(base.has_value());
  // 6 descriptors consumed: index 2, wrap counter flipped once to 0.
  EXPECT_EQ(base->num, 0x0002u);
  // Restore it verbatim and continue: the fourth chain wraps again.
  ASSERT_EQ(f.fe->acked(encode_vring_state(R::kSetVringBase, {0, base->num})), 0u);
  f.kick = make_eventfd();
  ASSERT_EQ(f.fe->acked(encode_vring_file(R::kSetVringKick, 0, *UniqueFd::duplicate(f.kick.get()))), 0u);
  echo_and_check(f, *q, 3, 256, 77);
  f.fe->send(encode_vring_state(R::kGetVringBase, {0, 0}));
  base = parse_vring_base_reply(f.fe->recv(), 0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 0x8000u);
}

TEST(BackendFlow, NewMemoryTableWhileRunningKeepsServing) {
  Flow f;
  const uint64_t features = bit(kFeatureVersion1);
  f.fe->negotiate(features, kProtocol);
  ASSERT_EQ(f.fe->set_mem_table(*f.guest.mem), 0u);
  auto q = f.guest.queue(RingFormat::kSplit, 16, features | bit(kFeatureProtocolFeatures));
  f.fe->setup_vring(0, *q, false, f.kick, f.call);
  echo_and_check(f, *q, 0, 64, 1);
  ASSERT_EQ(f.fe->set_mem_table(*f.guest.mem), 0u);  // same layout, new mapping
  echo_and_check(f, *q, 1, 64, 2);
  EXPECT_EQ(f.dev.handled.load(), 2);
}

// A descriptor outside the memory table is a driver error. Returning the
// chain with used length 0 would read as a completed request (virtio-blk's
// status byte is never written), so the queue stops: NEEDS_RESET, signalled
// on the err eventfd. The front-end resets the ring and goes on.
TEST(BackendFlow, UnmappedDescriptorStopsTheQueue) {
  Flow f;
  const uint64_t features = bit(kFeatureVersion1);
  f.fe->negotiate(features, kProtocol);
  ASSERT_EQ(f.fe->set_mem_table(*f.guest.mem), 0u);
  auto q = f.guest.queue(RingFormat::kSplit, 8, features | bit(kFeatureProtocolFeatures));
  UniqueFd err = make_eventfd();
  ASSERT_EQ(f.fe->acked(encode_vring_file(FrontendRequest::kSetVringErr, 0, *UniqueFd::duplicate(err.get()))), 0u);
  f.fe->setup_vring(0, *q, false, f.kick, f.call);
  // A premapped buffer at a DMA address the memory table does not cover.
  const DriverSegment segs[2] = {{Gpa{0x10000}, 64, BufferType::kDeviceReadable, true, DmaAddr{0x4000'0000}},
                                 {Gpa{0x40000}, 64, BufferType::kDeviceWritable, false, DmaAddr{}}};
  ASSERT_THAT(q->add(segs, 5), IsOk());
  kick(f.kick);
  EXPECT_TRUE(wait_eventfd(err.get(), 5000));
  auto used = q->get_used();
  ASSERT_TRUE(used.has_value());
  EXPECT_FALSE(used->has_value());
  EXPECT_EQ(f.dev.handled.load(), 0);

  // Ring reset: GET_VRING_BASE answers (the bad chain counts as consumed),
  // and a new ring on the same vring works.
  f.fe->send(encode_vring_state(FrontendRequest::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(f.fe->recv(), 0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 1u);
  auto fresh = f.guest.queue(RingFormat::kSplit, 8, features | bit(kFeatureProtocolFeatures));
  f.fe->setup_vring(0, *fresh, false, f.kick, f.call);
  echo_and_check(f, *fresh, 1, 64, 3);
}

}  // namespace
}  // namespace vdma::vhost_user::testing

namespace vdma::vhost_user::testing {
namespace {

// BackendOptions::poll: the worker spins on the avail ring after draining it;
// requests added while it spins (no kick) and after it went back to sleep
// (kick) are both served, every byte checked, for split and packed rings.
void poll_echo(RingFormat format) {
  EchoDevice dev;
  GuestSide guest;
  StubFrontend fe(dev, BackendOptions{.offer_access_platform = false, .poll = std::chrono::microseconds(20000)});
  const uint64_t features =
      bit(kFeatureVersion1) | bit(kFeatureEventIdx) | (format == RingFormat::kPacked ? bit(kFeatureRingPacked) : 0);
  fe.negotiate(features, kProtocol);
  ASSERT_EQ(fe.set_mem_table(*guest.mem), 0u);
  auto q = guest.queue(format, 16, features | bit(kFeatureProtocolFeatures));
  UniqueFd kick_fd, call_fd;
  // A fresh packed ring starts at descriptor 0 with wrap counter 1.
  fe.setup_vring(0, *q, false, kick_fd, call_fd, format == RingFormat::kPacked ? 0x8000 : 0);
  for (uint64_t i = 0; i < 12; ++i) {
    const Gpa src{0x10000 + (i % 4) * 0x1000};
    const Gpa dst{0x40000 + (i % 4) * 0x1000};
    const uint32_t len = 64 + uint32_t(i) * 29;
    guest.fill(src, len, uint8_t(i));
    guest.fill(dst, len, uint8_t(i + 1));
    add_echo(*q, src, dst, len, i);
    // The first six right after each other (the worker is polling and needs
    // no kick); then one per 40 ms, after the poll window closed.
    if (q->kick_prepare()) kick(kick_fd);
    auto used = wait_used(*q, call_fd);
    ASSERT_TRUE(used.has_value()) << "request " << i;
    EXPECT_EQ(used->cookie, i);
    EXPECT_EQ(used->len, len);
    EXPECT_EQ(guest.read(dst, len), guest.read(src, len));
    if (i >= 6) std::this_thread::sleep_for(std::chrono::milliseconds(40));
  }
  EXPECT_EQ(dev.handled.load(), 12);
}

TEST(BackendFlow, BusyPollServesSplitRing) { poll_echo(RingFormat::kSplit); }
TEST(BackendFlow, BusyPollServesPackedRing) { poll_echo(RingFormat::kPacked); }

}  // namespace
}  // namespace vdma::vhost_user::testing
