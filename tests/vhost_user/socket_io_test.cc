// Framing over a unix stream socket: fds from any part of a message, short
// reads, EINTR, non-blocking sockets, EOF at and inside a message, oversized
// payloads, too many fds, and sending to a closed peer.
#include "vdma/vhost_user/socket_io.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "result_matchers.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::vhost_user {
namespace {

using namespace vdma::testing;
using namespace std::chrono_literals;

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};
Pipe make_pipe() {
  int p[2] = {-1, -1};
  EXPECT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  return {UniqueFd(p[0]), UniqueFd(p[1])};
}

bool same_file(int a, int b) {
  struct stat sa {};
  struct stat sb {};
  if (::fstat(a, &sa) != 0 || ::fstat(b, &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// Every write end of `pipes` except ours is closed: the read end sees EOF.
bool only_our_write_ends_remain(std::vector<Pipe>& pipes) {
  for (Pipe& p : pipes) p.write.reset();
  for (Pipe& p : pipes) {
    char c = 0;
    if (::read(p.read.get(), &c, 1) != 0) return false;  // -1/EAGAIN: a writer is still open somewhere
  }
  return true;
}

// One sendmsg of `bytes` with `fds` as SCM_RIGHTS; what a peer can do that
// Message cannot (more than 8 fds, fds on any chunk).
void send_raw(int sock, std::span<const std::byte> bytes, std::span<const int> fds = {}) {
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<unsigned char> control(CMSG_SPACE(sizeof(int) * std::max<size_t>(fds.size(), 1)));
  if (!fds.empty()) {
    mh.msg_control = control.data();
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ASSERT_EQ(::sendmsg(sock, &mh, MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
}

class SocketIo : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = make_socket_pair();
    ASSERT_THAT(p, IsOk());
    a_ = std::move((*p)[0]);
    b_ = std::move((*p)[1]);
  }
  UniqueFd a_;
  UniqueFd b_;
};

Message vring_addr_message() {
  return encode_vring_addr({7, true, RingAddr(0x1000), RingAddr(0x2000), RingAddr(0x3000), Gpa{0x4000}});
}

TEST_F(SocketIo, SocketPairIsCloseOnExec) {
  EXPECT_NE(::fcntl(a_.get(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_NE(::fcntl(b_.get(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST_F(SocketIo, CollectsFdsFromHeaderAndPayloadChunksInOrder) {
  const std::vector<std::byte> wire = to_wire(vring_addr_message());
  std::vector<Pipe> pipes;
  for (int i = 0; i < 5; ++i) pipes.push_back(make_pipe());
  const int first[3] = {pipes[0].write.get(), pipes[1].write.get(), pipes[2].write.get()};
  const int second[2] = {pipes[3].write.get(), pipes[4].write.get()};
  send_raw(a_.get(), std::span(wire).first(6), first);    // half the header
  send_raw(a_.get(), std::span(wire).subspan(6, 20), second);  // rest of header, part of payload
  send_raw(a_.get(), std::span(wire).subspan(26));

  Message in;
  ASSERT_THAT(recv_message(b_.get(), Channel::kMain, in), IsOk());
  EXPECT_EQ(to_wire(in), wire);
  ASSERT_EQ(in.fd_count(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_TRUE(same_file(in.fd(i), pipes[i].write.get())) << i;
    EXPECT_NE(::fcntl(in.fd(i), F_GETFD) & FD_CLOEXEC, 0) << "received fds are close-on-exec";
  }
}

TEST_F(SocketIo, ShortReadsByteByByte) {
  Message out = encode_vring_file(FrontendRequest::kSetVringCall, 3, UniqueFd(::eventfd(0, EFD_CLOEXEC)));
  const std::vector<std::byte> wire = to_wire(out);
  const int fd = out.fd(0);
  std::thread writer([&] {
    for (size_t i = 0; i < wire.size(); ++i) {
      const int only[1] = {fd};
      send_raw(a_.get(), std::span(wire).subspan(i, 1), i == 14 ? std::span<const int>(only) : std::span<const int>());
      std::this_thread::sleep_for(1ms);
    }
  });
  Message in;
  const Result<void> r = recv_message(b_.get(), Channel::kMain, in);
  writer.join();
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(to_wire(in), wire);
  ASSERT_EQ(in.fd_count(), 1u);
  EXPECT_TRUE(same_file(in.fd(0), fd));
}

TEST_F(SocketIo, NonBlockingSocketWaitsForTheRestOfAMessage) {
  ASSERT_EQ(::fcntl(b_.get(), F_SETFL, O_NONBLOCK), 0);
  const std::vector<std::byte> wire = to_wire(vring_addr_message());
  std::thread writer([&] {
    send_raw(a_.get(), std::span(wire).first(8));
    std::this_thread::sleep_for(20ms);
    send_raw(a_.get(), std::span(wire).subspan(8, 10));
    std::this_thread::sleep_for(20ms);
    send_raw(a_.get(), std::span(wire).subspan(18));
  });
  Message in;
  const Result<void> r = recv_message(b_.get(), Channel::kMain, in);
  writer.join();
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(to_wire(in), wire);
}

std::atomic<int> g_signals{0};
void count_signal(int) { g_signals.fetch_add(1, std::memory_order_relaxed); }

TEST_F(SocketIo, RecvRetriesAfterEintr) {
  struct sigaction sa {};
  sa.sa_handler = count_signal;  // no SA_RESTART: a blocked recvmsg fails with EINTR
  sigemptyset(&sa.sa_mask);
  struct sigaction old {};
  ASSERT_EQ(::sigaction(SIGUSR1, &sa, &old), 0);
  g_signals = 0;
  const pthread_t reader = ::pthread_self();
  const std::vector<std::byte> wire = to_wire(vring_addr_message());
  std::thread writer([&] {
    send_raw(a_.get(), std::span(wire).first(4));
    for (int i = 0; i < 5; ++i) {
      std::this_thread::sleep_for(10ms);
      ::pthread_kill(reader, SIGUSR1);
    }
    std::this_thread::sleep_for(10ms);
    send_raw(a_.get(), std::span(wire).subspan(4));
  });
  Message in;
  const Result<void> r = recv_message(b_.get(), Channel::kMain, in);
  writer.join();
  ::sigaction(SIGUSR1, &old, nullptr);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(to_wire(in), wire);
  EXPECT_EQ(g_signals.load(), 5);
}

TEST_F(SocketIo, EofAtAMessageBoundaryIsPeerClosed) {
  ASSERT_THAT(send_message(a_.get(), Channel::kMain, encode_request(FrontendRequest::kGetFeatures)), IsOk());
  a_.reset();
  Message in;
  ASSERT_THAT(recv_message(b_.get(), Channel::kMain, in), IsOk());
  EXPECT_EQ(in.request(), 1u);
  EXPECT_THAT(recv_message(b_.get(), Channel::kMain, in),
              IsErrorWith(VhostUserErrc::kPeerClosed, "peer closed the connection"));
  EXPECT_THAT(recv_message(b_.get(), Channel::kMain, in), IsError(VhostUserErrc::kPeerClosed));
}

TEST_F(SocketIo, EofInsideTheHeaderIsTruncatedAndClosesItsFds) {
  std::vector<Pipe> pipes;
  pipes.push_back(make_pipe());
  const int fd[1] = {pipes[0].write.get()};
  const std::vector<std::byte> wire = to_wire(vring_addr_message());
  send_raw(a_.get(), std::span(wire).first(5), fd);
  a_.reset();
  Message in;
  EXPECT_THAT(recv_message(b_.get(), Channel::kMain, in),
              IsErrorWith(VhostUserErrc::kTruncated, "peer closed the connection after 5 of 12 header bytes"));
  EXPECT_EQ(in.fd_count(), 0u);
  EXPECT_TRUE(only_our_write_ends_remain(pipes));
}

TEST_F(SocketIo, EofInsideThePayloadIsTruncated) {
  const std::vector<std::byte> wire = to_wire(vring_addr_message());
  send_raw(a_.get(), std::span(wire).first(kHeaderSize + 3));
  a_.reset();
  Message in;
  EXPECT_THAT(
      recv_message(b_.get(), Channel::kMain, in),
      IsErrorWith(VhostUserErrc::kTruncated, "SET_VRING_ADDR: peer closed the connection after 3 of 40 payload bytes"));
  EXPECT_EQ(in.request(), static_cast<uint32_t>(FrontendRequest::kSetVringAddr));  // kept for the log line
  EXPECT_EQ(in.size(), 0u);
}

TEST_F(SocketIo, OversizedPayloadIsRejectedWithoutReadingIt) {
  for (uint32_t size : {uint32_t{kMaxPayloadSize + 1}, uint32_t{0x100000}, uint32_t{0xffffffff}}) {
    const WireHeader h{static_cast<uint32_t>(FrontendRequest::kGetFeatures), kVersion, size};
    std::vector<std::byte> bytes(sizeof h + 100, std::byte{0x77});
    std::memcpy(bytes.data(), &h, sizeof h);
    send_raw(a_.get(), bytes);
    Message in;
    EXPECT_THAT(recv_message(b_.get(), Channel::kMain, in),
                IsErrorWith(VhostUserErrc::kPayloadTooLarge,
                            fmt::format("GET_FEATURES: payload size {} exceeds the maximum 4096; the payload was not "
                                        "read, so the stream is out of step and the connection must be closed",
                                        size)));
    // Not one payload byte was consumed.
    std::vector<std::byte> rest(200);
    EXPECT_EQ(::recv(b_.get(), rest.data(), rest.size(), MSG_DONTWAIT), 100);
  }
}

TEST_F(SocketIo, EightFdsAreAccepted) {
  std::vector<Pipe> pipes;
  std::vector<int> fds;
  for (int i = 0; i < 8; ++i) {
    pipes.push_back(make_pipe());
    fds.push_back(pipes.back().write.get());
  }
  send_raw(a_.get(), to_wire(encode_request(FrontendRequest::kSetOwner)), fds);
  Message in;
  ASSERT_THAT(recv_message(b_.get(), Channel::kMain, in), IsOk());
  ASSERT_EQ(in.fd_count(), 8u);
  EXPECT_TRUE(same_file(in.fd(7), fds[7]));
}

TEST_F(SocketIo, TooManyFdsAreAllClosedAndTheStreamStaysInStep) {
  std::vector<Pipe> pipes;
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) {
    pipes.push_back(make_pipe());
    fds.push_back(pipes.back().write.get());
  }
  const std::vector<std::byte> wire = to_wire(vring_addr_message());
  send_raw(a_.get(), std::span(wire).first(kHeaderSize), std::span<const int>(fds).first(6));
  send_raw(a_.get(), std::span(wire).subspan(kHeaderSize), std::span<const int>(fds).subspan(6));
  ASSERT_THAT(send_message(a_.get(), Channel::kMain, encode_request(FrontendRequest::kGetStatus)), IsOk());

  Message in;
  EXPECT_THAT(
      recv_message(b_.get(), Channel::kMain, in),
      IsErrorWith(VhostUserErrc::kTooManyFds, "SET_VRING_ADDR: 10 fds attached, at most 8; all of them were closed"));
  EXPECT_EQ(in.fd_count(), 0u);
  EXPECT_EQ(to_wire(in), wire);  // read whole: an error reply is still possible
  EXPECT_TRUE(only_our_write_ends_remain(pipes));
  ASSERT_THAT(recv_message(b_.get(), Channel::kMain, in), IsOk());
  EXPECT_EQ(in.request(), static_cast<uint32_t>(FrontendRequest::kGetStatus));
}

TEST_F(SocketIo, SendToAClosedPeerIsPeerClosedWithoutSigpipe) {
  b_.reset();
  EXPECT_THAT(send_message(a_.get(), Channel::kMain, encode_request(FrontendRequest::kGetFeatures)),
              IsErrorWith(VhostUserErrc::kPeerClosed,
                          "GET_FEATURES: peer closed the connection after 0 of 12 bytes were sent"));
  EXPECT_THAT(send_message(a_.get(), Channel::kBackend, encode_config_change()),
              IsErrorWith(VhostUserErrc::kPeerClosed, ::testing::HasSubstr("BACKEND_CONFIG_CHANGE_MSG")));
}

TEST_F(SocketIo, NonBlockingSenderWithASmallBufferSendsWholeMessages) {
  ASSERT_EQ(::fcntl(a_.get(), F_SETFL, O_NONBLOCK), 0);
  const int small = 1024;  // the kernel raises it to its minimum, about one message
  ASSERT_EQ(::setsockopt(a_.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  auto make = [](uint8_t seed, size_t size) {
    Message m(99, kVersion);
    std::span<std::byte> p = m.resize_payload(size);
    for (size_t i = 0; i < p.size(); ++i) p[i] = std::byte(static_cast<uint8_t>(seed + i));
    m.add_fd(UniqueFd(::eventfd(0, EFD_CLOEXEC)));
    return m;
  };
  // Sizes chosen so that a later message finds the buffer part full: the
  // kernel takes its first bytes and returns a short count (partial write),
  // or takes nothing (EAGAIN, and the fds must be attached again).
  std::vector<Message> out;
  out.push_back(make(1, 1500));
  out.push_back(make(2, kMaxPayloadSize));
  out.push_back(make(3, kMaxPayloadSize));
  out.push_back(make(4, 700));
  std::thread sender([&] {
    for (const Message& m : out) EXPECT_THAT(send_message(a_.get(), Channel::kMain, m), IsOk());
  });
  std::this_thread::sleep_for(30ms);  // let the sender fill its buffer and wait in poll()
  std::vector<Message> in(out.size());
  for (Message& m : in) ASSERT_THAT(recv_message(b_.get(), Channel::kMain, m), IsOk());
  sender.join();
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(to_wire(in[i]), to_wire(out[i])) << i;
    ASSERT_EQ(in[i].fd_count(), 1u);
    EXPECT_TRUE(same_file(in[i].fd(0), out[i].fd(0))) << i;
  }
}

}  // namespace
}  // namespace vdma::vhost_user
