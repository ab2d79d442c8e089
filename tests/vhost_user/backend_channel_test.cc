// BackendChannel against a front-end that does not read the back-end
// channel: send() returns at once, the pending buffer stays bounded, the
// reader only ever sees whole messages, in order, and what was accepted is
// delivered once the reader catches up and the channel is flushed.
#include "../../src/vhost_user/backend_channel.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "result_matchers.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::vhost_user {
namespace {

using namespace vdma::testing;
using namespace std::chrono_literals;

// The back-end end of a socketpair with the smallest send buffer the kernel
// allows, and the front-end end.
struct Pair {
  UniqueFd backend;
  UniqueFd frontend;
};
Pair make_small_pair() {
  auto p = make_socket_pair();
  EXPECT_TRUE(p.has_value());
  Pair out{std::move((*p)[0]), std::move((*p)[1])};
  const int small = 1;  // rounded up to the kernel's minimum
  EXPECT_EQ(::setsockopt(out.backend.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  EXPECT_EQ(::setsockopt(out.frontend.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
  return out;
}

// A message of `len` payload bytes whose payload is derived from `seq`, so a
// torn or reordered stream cannot pass the check.
Message numbered(uint64_t seq, size_t len) {
  Message m;
  m.set_request(99);
  std::span<std::byte> p = m.resize_payload(len);
  for (size_t i = 0; i < len; ++i) p[i] = std::byte(static_cast<uint8_t>(seq * 31 + i));
  if (len >= 8) std::memcpy(p.data(), &seq, 8);
  return m;
}

bool is_numbered(const Message& m, uint64_t seq, size_t len) {
  if (m.request() != 99 || m.size() != len) return false;
  const std::span<const std::byte> p = m.payload();
  uint64_t got = 0;
  std::memcpy(&got, p.data(), 8);
  if (got != seq) return false;
  for (size_t i = 8; i < len; ++i) {
    if (p[i] != std::byte(static_cast<uint8_t>(seq * 31 + i))) return false;
  }
  return true;
}

// Flushes the channel every millisecond while it lives, as a worker
// waiting for POLLOUT would: a reader blocked on the second half of a
// message gets it.
class Flusher {
 public:
  explicit Flusher(BackendChannel& ch) : thread_([this, &ch] {
    while (!stop_.load()) {
      ch.flush();
      std::this_thread::sleep_for(1ms);
    }
  }) {}
  ~Flusher() {
    stop_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Reads every whole message available within `idle_ms` of silence.
std::vector<Message> read_available(int fd, int idle_ms, BackendChannel* flush_me = nullptr) {
  std::vector<Message> out;
  std::optional<Flusher> flusher;
  if (flush_me != nullptr) flusher.emplace(*flush_me);
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, idle_ms) != 1) break;
    Message m;
    auto r = recv_message(fd, Channel::kBackend, m);
    EXPECT_THAT(r, IsOk());
    if (!r) break;
    out.push_back(std::move(m));
  }
  return out;
}

TEST(BackendChannel, WithoutAChannelSendFailsWithBadState) {
  BackendChannel ch;
  EXPECT_FALSE(ch.connected());
  EXPECT_EQ(ch.poll_fd(), -1);
  EXPECT_THAT(ch.send(encode_iotlb_miss(Iova{0x1000}, IotlbPerm::kRead)), IsError(VhostUserErrc::kBadState));
  EXPECT_FALSE(ch.has_pending());
}

TEST(BackendChannel, PollFdIsTheChannelSocket) {
  Pair p = make_small_pair();
  const int raw = p.backend.get();
  BackendChannel ch;
  ch.set(std::move(p.backend));
  EXPECT_EQ(ch.poll_fd(), raw);
  ch.set(UniqueFd());
  EXPECT_EQ(ch.poll_fd(), -1);
}

// The hostile case of issue 11: ~280 ACCESS_FAIL messages used to fill the
// socket and block the worker in sendmsg, holding the channel lock.
TEST(BackendChannel, AFrontendThatNeverReadsCannotBlockSend) {
  Pair p = make_small_pair();
  BackendChannel ch;
  ch.set(std::move(p.backend));
  constexpr int kMessages = 5000;
  int accepted = 0;
  int dropped = 0;
  std::vector<uint64_t> accepted_iovas;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kMessages; ++i) {
    const uint64_t iova = 0x1000 * static_cast<uint64_t>(i + 1);
    auto r = ch.send(encode_iotlb_access_fail(Iova{iova}, IotlbPerm::kWrite));
    if (r) {
      ++accepted;
      accepted_iovas.push_back(iova);
    } else {
      ASSERT_THAT(r, IsError(VhostUserErrc::kWouldBlock));
      EXPECT_THAT(r.error().message(), ::testing::HasSubstr("not reading the back-end channel"));
      ++dropped;
    }
    EXPECT_LE(ch.pending_bytes(), BackendChannel::kPendingCapacity);
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, 2s) << "send() waited for the front-end";
  EXPECT_GT(dropped, 0) << "the socket never filled up: the test proves nothing";
  EXPECT_GT(accepted, 0);
  EXPECT_TRUE(ch.has_pending()) << "a full socket leaves the last accepted messages pending";

  // The front-end catches up: it gets exactly the accepted messages, whole
  // and in order, once the channel is flushed.
  std::vector<Message> got = read_available(p.frontend.get(), 200, &ch);
  EXPECT_FALSE(ch.has_pending());
  ASSERT_EQ(got.size(), accepted_iovas.size());
  for (size_t i = 0; i < got.size(); ++i) {
    auto v = validate_backend_request(got[i]);
    ASSERT_THAT(v, IsOk()) << "message " << i;
    ASSERT_EQ(v->request, BackendRequest::kIotlbMsg);
    const auto& m = v->as<IotlbMessage>();
    EXPECT_EQ(m.type, IotlbType::kAccessFail);
    EXPECT_EQ(m.iova, Iova{accepted_iovas[i]}) << "message " << i;
  }
}

// Messages larger than what the socket takes in one go leave in pieces; the
// unsent tail must follow before anything else.
TEST(BackendChannel, PartlySentMessagesAreCompletedNeverTorn) {
  Pair p = make_small_pair();
  BackendChannel ch;
  ch.set(std::move(p.backend));
  std::vector<uint64_t> accepted;
  bool saw_tail = false;
  for (uint64_t seq = 0; seq < 200; ++seq) {
    const size_t len = seq % 2 == 0 ? kMaxPayloadSize : 1000 + seq;
    auto r = ch.send(numbered(seq, len));
    if (r) {
      accepted.push_back(seq);
    } else {
      ASSERT_THAT(r, IsError(VhostUserErrc::kWouldBlock));
    }
    if (ch.has_pending()) saw_tail = true;
    EXPECT_LE(ch.pending_bytes(), kMaxPayloadSize + kHeaderSize);
  }
  EXPECT_TRUE(saw_tail);
  ASSERT_LT(accepted.size(), 200u) << "the socket never filled up: the test proves nothing";
  std::vector<Message> got = read_available(p.frontend.get(), 200, &ch);
  ASSERT_EQ(got.size(), accepted.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const uint64_t seq = accepted[i];
    EXPECT_TRUE(is_numbered(got[i], seq, seq % 2 == 0 ? kMaxPayloadSize : 1000 + seq)) << "message " << i;
  }
}

// Several workers send at once while the front-end reads slowly: every
// message arrives whole, each sender's in its own order.
TEST(BackendChannel, ConcurrentSendersWithASlowReaderSeeOnlyWholeMessages) {
  Pair p = make_small_pair();
  BackendChannel ch;
  ch.set(std::move(p.backend));
  constexpr int kThreads = 4;
  constexpr uint64_t kPerThread = 2000;
  std::mutex mu;
  std::set<uint64_t> accepted;
  std::atomic<bool> done{false};
  std::vector<Message> got;
  std::thread reader([&] {
    while (!done.load()) {
      auto batch = read_available(p.frontend.get(), 1, &ch);
      for (auto& m : batch) got.push_back(std::move(m));
      std::this_thread::sleep_for(1ms);
    }
  });
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([&, t] {
      for (uint64_t i = 0; i < kPerThread; ++i) {
        const uint64_t seq = static_cast<uint64_t>(t) << 32 | i;
        const size_t len = 8 + (i % 5) * 700;
        if (ch.send(numbered(seq, len))) {
          std::lock_guard lock(mu);
          accepted.insert(seq);
        }
      }
    });
  }
  for (auto& s : senders) s.join();
  done.store(true);
  reader.join();
  auto rest = read_available(p.frontend.get(), 200, &ch);
  for (auto& m : rest) got.push_back(std::move(m));

  ASSERT_EQ(got.size(), accepted.size());
  std::vector<uint64_t> last(kThreads, 0);
  std::vector<bool> seen_any(kThreads, false);
  for (const Message& m : got) {
    ASSERT_GE(m.size(), 8u);
    uint64_t seq = 0;
    std::memcpy(&seq, m.payload().data(), 8);
    const size_t len = 8 + ((seq & 0xffffffff) % 5) * 700;
    ASSERT_TRUE(is_numbered(m, seq, len)) << "torn message " << std::hex << seq;
    ASSERT_TRUE(accepted.count(seq) == 1) << "a dropped message arrived: " << std::hex << seq;
    const auto t = static_cast<size_t>(seq >> 32);
    ASSERT_LT(t, last.size());
    if (seen_any[t]) {
      EXPECT_GT(seq, last[t]) << "reordered";
    }
    last[t] = seq;
    seen_any[t] = true;
  }
}

TEST(BackendChannel, AMessageWithFdsThatCannotLeaveAtOnceIsDropped) {
  Pair p = make_small_pair();
  BackendChannel ch;
  ch.set(std::move(p.backend));
  // Fill the socket and the pending buffer.
  for (int i = 0; i < 5000 && ch.send(encode_iotlb_miss(Iova{0x1000}, IotlbPerm::kRead)); ++i) {
  }
  ASSERT_TRUE(ch.has_pending());
  auto fd = UniqueFd::duplicate(p.frontend.get());
  ASSERT_THAT(fd, IsOk());
  EXPECT_THAT(ch.send(encode_host_notifier(0, 4096, 0, std::move(*fd))), IsError(VhostUserErrc::kWouldBlock));
}

TEST(BackendChannel, AClosedFrontendGivesPeerClosedNotSigpipe) {
  Pair p = make_small_pair();
  BackendChannel ch;
  ch.set(std::move(p.backend));
  p.frontend.reset();
  // The test process would die of SIGPIPE without MSG_NOSIGNAL.
  EXPECT_THAT(ch.send(encode_iotlb_miss(Iova{0x1000}, IotlbPerm::kRead)), IsError(VhostUserErrc::kPeerClosed));
  EXPECT_FALSE(ch.has_pending());
}

TEST(BackendChannel, ANewChannelDropsThePendingBytesOfTheOldOne) {
  Pair p = make_small_pair();
  BackendChannel ch;
  ch.set(std::move(p.backend));
  for (int i = 0; i < 5000 && ch.send(encode_iotlb_miss(Iova{0x1000}, IotlbPerm::kRead)); ++i) {
  }
  ASSERT_TRUE(ch.has_pending());
  Pair q = make_small_pair();
  ch.set(std::move(q.backend));
  EXPECT_FALSE(ch.has_pending());
  ASSERT_THAT(ch.send(encode_iotlb_miss(Iova{0x2000}, IotlbPerm::kRead)), IsOk());
  std::vector<Message> got = read_available(q.frontend.get(), 100);
  ASSERT_EQ(got.size(), 1u);
  auto v = validate_backend_request(got[0]);
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(v->as<IotlbMessage>().iova, Iova{0x2000});
}

}  // namespace
}  // namespace vdma::vhost_user
