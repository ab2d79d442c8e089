// BackendOptions::iothreads: event-loop threads, each serving a set of
// queues (queue q on thread q % N). Every queue is served, each byte
// checked; one ring stops (GET_VRING_BASE, SET_VRING_ENABLE 0) while the
// others on its thread keep serving; busy polling on a shared thread serves
// all of its rings; the threads are named after their queues; more threads
// than queues is refused. A concurrency suite, so the tsan preset runs it.
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <string>

#include "backend_test_util.h"
#include "result_matchers.h"

namespace vdma::vhost_user::testing {
namespace {

using R = FrontendRequest;
using ::testing::IsSupersetOf;

constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureMq) |
                               protocol_feature_bit(kProtocolFeatureBackendReq);

// The names of this process's threads.
std::set<std::string> thread_names() {
  std::set<std::string> out;
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return out;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream comm(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::string name;
    if (std::getline(comm, name)) out.insert(name);
  }
  ::closedir(d);
  return out;
}

struct Rings {
  explicit Rings(uint32_t queues, BackendOptions options) : dev(queues) {
    fe = std::make_unique<StubFrontend>(dev, options);
    kick.resize(queues);
    call.resize(queues);
  }
  EchoDevice dev;
  GuestSide guest;
  std::unique_ptr<StubFrontend> fe;
  std::vector<std::unique_ptr<DriverQueue>> q;
  std::vector<UniqueFd> kick;
  std::vector<UniqueFd> call;

  void start(RingFormat format, uint64_t features) {
    if (format == RingFormat::kPacked) features |= bit(kFeatureRingPacked);
    fe->negotiate(features, kProtocol);
    ASSERT_EQ(fe->set_mem_table(*guest.mem), 0u);
    for (uint32_t i = 0; i < kick.size(); ++i) {
      q.push_back(guest.queue(format, 16, features | bit(kFeatureProtocolFeatures)));
      fe->setup_vring(i, *q.back(), false, kick[i], call[i], format == RingFormat::kPacked ? 0x8000 : 0);
    }
  }
  // Each queue copies within its own 32 KiB of guest memory (below the rings).
  static Gpa src(uint32_t queue, uint64_t i) { return Gpa{0x10000 + queue * 0x8000 + (i % 4) * 0x1000}; }
  static Gpa dst(uint32_t queue, uint64_t i) { return Gpa{0x40000 + queue * 0x8000 + (i % 4) * 0x1000}; }
  void add(uint32_t queue, uint64_t i, uint32_t len) {
    guest.fill(src(queue, i), len, static_cast<uint8_t>(queue * 16 + i));
    guest.fill(dst(queue, i), len, 0xee);
    add_echo(*q[queue], src(queue, i), dst(queue, i), len, i);
  }
  void echo(uint32_t queue, uint64_t i, uint32_t len) {
    add(queue, i, len);
    if (q[queue]->kick_prepare()) vdma::vhost_user::testing::kick(kick[queue]);
    auto used = wait_used(*q[queue], call[queue]);
    ASSERT_TRUE(used.has_value()) << "queue " << queue << " request " << i;
    EXPECT_EQ(used->cookie, i);
    EXPECT_EQ(used->len, len);
    EXPECT_EQ(guest.read(dst(queue, i), len), guest.read(src(queue, i), len)) << "queue " << queue;
  }
};

class IoThreads : public ::testing::TestWithParam<RingFormat> {};

TEST_P(IoThreads, TwoThreadsServeFourQueuesNamedAfterThem) {
  Rings r(4, BackendOptions{.offer_access_platform = false, .iothreads = 2});
  r.start(GetParam(), bit(kFeatureVersion1) | bit(kFeatureEventIdx));
  // Interleaved over the queues, so both threads serve both of theirs.
  for (uint64_t i = 0; i < 12; ++i) {
    for (uint32_t queue = 0; queue < 4; ++queue) r.echo(queue, i, 64 + static_cast<uint32_t>(i * 37 + queue));
  }
  EXPECT_EQ(r.dev.handled.load(), 48);
  const std::set<std::string> names = thread_names();
  EXPECT_THAT(names, IsSupersetOf({"vdma-q0,2", "vdma-q1,3"}));
  for (const std::string& n : names) EXPECT_NE(n.rfind("vdma-vq", 0), 0u) << n << ": a ring got a thread of its own";
}

TEST_P(IoThreads, OneRingStopsAndRestartsWhileItsThreadKeepsServingTheOther) {
  Rings r(2, BackendOptions{.offer_access_platform = false, .iothreads = 1});
  r.start(GetParam(), bit(kFeatureVersion1));
  r.echo(0, 0, 100);
  r.echo(1, 0, 200);
  // GET_VRING_BASE stops ring 0 only.
  r.fe->send(encode_vring_state(R::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(r.fe->recv(), 0);
  ASSERT_TRUE(base.has_value());
  drain_eventfd(r.call[0]);
  r.add(0, 1, 300);
  kick(r.kick[0]);
  for (uint64_t i = 1; i < 6; ++i) r.echo(1, i, 50 + static_cast<uint32_t>(i));
  EXPECT_FALSE(wait_eventfd(r.call[0].get(), 100)) << "a stopped ring was served";
  // Restarted where it stopped, it serves the request waiting there.
  ASSERT_EQ(r.fe->acked(encode_vring_state(R::kSetVringBase, {0, base->num})), 0u);
  r.kick[0] = make_eventfd();
  ASSERT_EQ(r.fe->acked(encode_vring_file(R::kSetVringKick, 0, *UniqueFd::duplicate(r.kick[0].get()))), 0u);
  kick(r.kick[0]);
  auto used = wait_used(*r.q[0], r.call[0]);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 1u);
  EXPECT_EQ(r.guest.read(Rings::dst(0, 1), 300), r.guest.read(Rings::src(0, 1), 300));
  // SET_VRING_ENABLE 0 on ring 1: ring 0 goes on.
  ASSERT_EQ(r.fe->acked(encode_vring_state(R::kSetVringEnable, {1, 0})), 0u);
  drain_eventfd(r.call[1]);
  r.add(1, 6, 70);
  kick(r.kick[1]);
  r.echo(0, 2, 400);
  EXPECT_FALSE(wait_eventfd(r.call[1].get(), 100)) << "a disabled ring was served";
  ASSERT_EQ(r.fe->acked(encode_vring_state(R::kSetVringEnable, {1, 1})), 0u);
  used = wait_used(*r.q[1], r.call[1]);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->cookie, 6u);
  EXPECT_EQ(r.dev.handled.load(), 10);
}

// Busy polling on a shared thread: a ring in its poll window returns to the
// loop instead of spinning, so the other ring, requests added while both
// poll (no kick needed) and after the windows closed (kick), are all served.
TEST_P(IoThreads, BusyPollingServesEveryRingOfTheThread) {
  Rings r(2, BackendOptions{.offer_access_platform = false, .poll = std::chrono::microseconds(20000),
                            .iothreads = 1});
  r.start(GetParam(), bit(kFeatureVersion1) | bit(kFeatureEventIdx));
  for (uint64_t i = 0; i < 10; ++i) {
    for (uint32_t queue = 0; queue < 2; ++queue) r.echo(queue, i, 64 + static_cast<uint32_t>(i * 29));
    if (i >= 6) std::this_thread::sleep_for(std::chrono::milliseconds(40));
  }
  EXPECT_EQ(r.dev.handled.load(), 20);
}

INSTANTIATE_TEST_SUITE_P(Formats, IoThreads, ::testing::Values(RingFormat::kSplit, RingFormat::kPacked),
                         [](const ::testing::TestParamInfo<RingFormat>& p) {
                           return p.param == RingFormat::kSplit ? std::string("Split") : std::string("Packed");
                         });

TEST(IoThreadsOptions, MoreThreadsThanQueuesIsRefused) {
  EchoDevice dev(2);
  auto pair = make_socket_pair();
  ASSERT_TRUE(pair.has_value());
  EXPECT_THAT(BackendSession::create(std::move((*pair)[1]), dev, BackendOptions{.iothreads = 3}),
              vdma::testing::IsErrorWith(BaseErrc::kInvalidArgument, ::testing::HasSubstr("3 I/O threads for 2 queues")));
}

}  // namespace
}  // namespace vdma::vhost_user::testing
