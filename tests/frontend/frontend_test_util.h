// Test support for the front-end: our BackendSession with an EchoDevice on
// its own thread over a socketpair, and helpers to push echo chains through
// a VhostUserFrontend and check every byte.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "../vhost_user/backend_test_util.h"
#include "result_matchers.h"
#include "vdma/frontend/errors.h"
#include "vdma/frontend/vhost_user_frontend.h"

namespace vdma::frontend_testing {

using ::vdma::testing::IsError;
using ::vdma::testing::IsErrorWith;
using ::vdma::testing::IsOk;
using vhost_user::BackendOptions;
using vhost_user::BackendSession;
using vhost_user::testing::EchoDevice;

// A BackendSession serving one end of a socketpair on its own thread; the
// session is created, run and destroyed on that thread.
class InProcessBackend {
 public:
  explicit InProcessBackend(BackendOptions options = {}, uint32_t queues = 2) : device_(queues) {
    auto pair = vhost_user::make_socket_pair();
    EXPECT_TRUE(pair.has_value());
    frontend_end_ = std::move((*pair)[0]);
    auto s = BackendSession::create(std::move((*pair)[1]), device_, options);
    EXPECT_TRUE(s.has_value());
    session_ = std::move(*s);
    thread_ = std::thread([this] {
      end_.emplace(session_->run());
      session_.reset();
    });
  }
  ~InProcessBackend() { join(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

  // The socket for the front-end (once).
  UniqueFd take_socket() { return std::move(frontend_end_); }
  // The session, for assertions while it runs (between requests).
  BackendSession& session() { return *session_; }
  EchoDevice& device() { return device_; }
  const std::optional<Error>& end() const { return end_; }

 private:
  EchoDevice device_;
  UniqueFd frontend_end_;
  std::unique_ptr<BackendSession> session_;
  std::thread thread_;
  std::optional<Error> end_;
};

inline FrontendOptions small_options(DmaMode mode) {
  FrontendOptions o;
  o.mode = mode;
  o.num_queues = 2;
  o.queue_size = 64;
  o.ram_size = 4 << 20;
  o.coherent_size = 1 << 20;
  o.bounce_size = 2 << 20;
  o.device_features = uint64_t{1} << vhost_user::testing::kDeviceFeatureBit;
  o.reply_timeout = std::chrono::milliseconds(5000);
  return o;
}

inline std::vector<std::byte> pattern(size_t len, uint8_t seed) {
  std::vector<std::byte> b(len);
  for (size_t i = 0; i < len; ++i) b[i] = std::byte(static_cast<uint8_t>(seed + i * 13 + (i >> 8)));
  return b;
}

// Waits for the next used buffer of queue `q` (interrupt eventfd or polling).
inline std::optional<UsedBuffer> wait_used(VirtioTransport& t, uint32_t q, int timeout_ms = 5000) {
  for (int waited = 0; waited <= timeout_ms; waited += 5) {
    auto u = t.queue(q).get_used();
    EXPECT_THAT(u, IsOk());
    if (!u) return std::nullopt;
    if (*u) return **u;
    if (t.interrupt_fd(q) >= 0) {
      pollfd p{t.interrupt_fd(q), POLLIN, 0};
      if (::poll(&p, 1, 5) == 1) {
        uint64_t v = 0;
        [[maybe_unused]] const ssize_t n = ::read(t.interrupt_fd(q), &v, sizeof v);
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  return std::nullopt;
}

// One echo request of `len` bytes on queue `q`: a readable buffer with a
// pattern, a writable one that must come back with the same bytes. With
// premap, the buffers are mapped through t.dma() first (premapped segments).
inline void echo_round_trip(VirtioTransport& t, uint32_t q, uint32_t len, uint8_t seed, bool premap) {
  const Gpa src = *t.alloc_buffer(len, 4096);
  const Gpa dst = *t.alloc_buffer(len, 4096);
  const std::vector<std::byte> want = pattern(len, seed);
  ASSERT_THAT(t.memory().write(src, want), IsOk());
  DriverSegment segs[2] = {{src, len, BufferType::kDeviceReadable, false, DmaAddr{}},
                           {dst, len, BufferType::kDeviceWritable, false, DmaAddr{}}};
  if (premap) {
    auto s = t.dma().map(src, len, DmaDirection::kToDevice);
    auto d = t.dma().map(dst, len, DmaDirection::kFromDevice);
    ASSERT_THAT(s, IsOk());
    ASSERT_THAT(d, IsOk());
    segs[0].premapped = segs[1].premapped = true;
    segs[0].dma = *s;
    segs[1].dma = *d;
  }
  const uint64_t cookie = (uint64_t{q} << 32) | seed;
  ASSERT_THAT(t.queue(q).add(segs, cookie), IsOk());
  if (t.queue(q).kick_prepare()) {
    ASSERT_THAT(t.notify(q), IsOk());
  }
  const std::optional<UsedBuffer> used = wait_used(t, q);
  ASSERT_TRUE(used.has_value()) << "no used buffer on queue " << q;
  EXPECT_EQ(used->cookie, cookie);
  EXPECT_EQ(used->len, len);
  if (premap) {
    ASSERT_THAT(t.dma().unmap(segs[0].dma, len, DmaDirection::kToDevice), IsOk());
    ASSERT_THAT(t.dma().unmap(segs[1].dma, len, DmaDirection::kFromDevice), IsOk());
  }
  std::vector<std::byte> got(len);
  ASSERT_THAT(t.memory().read(dst, got), IsOk());
  EXPECT_TRUE(got == want) << "echo of " << len << " bytes on queue " << q << " differs";
  ASSERT_THAT(t.free_buffer(src, len), IsOk());
  ASSERT_THAT(t.free_buffer(dst, len), IsOk());
}

// How many mappings of the memfd "vdma-<region>" this process has.
inline size_t count_mappings(const std::vector<std::string>& names, std::string_view region) {
  const std::string want = "vdma-" + std::string(region);
  return static_cast<size_t>(std::count(names.begin(), names.end(), want));
}

}  // namespace vdma::frontend_testing
