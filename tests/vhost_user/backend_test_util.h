// Test support for the vhost-user back-end: an echo device, and a stub
// front-end that runs a BackendSession on its own thread over a socketpair
// and drives it with the codec's encoders.
#pragma once

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "chain_copy.h"
#include "result_matchers.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/vhost_user/backend_device.h"
#include "vdma/vhost_user/backend_session.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"

namespace vdma::vhost_user::testing {

using ::vdma::testing::IsError;
using ::vdma::testing::IsOk;

inline constexpr uint64_t kDeviceFeatureBit = 1;  // a device-specific feature the echo device offers
inline constexpr uint64_t kUserBase = 0x7f1200000000;  // where the stub front-end "maps" guest memory
inline constexpr uint64_t kRamSize = 1 << 20;
inline constexpr uint64_t kRingWindow = 0x80000;  // coherent (ring) memory: [0x80000, 0xc0000)

constexpr uint64_t bit(unsigned b) { return uint64_t{1} << b; }

// Copies the readable bytes into the writable ones, up to the shorter length.
class EchoDevice final : public BackendDevice {
 public:
  explicit EchoDevice(uint32_t queues = 2) : queues_(queues) {
    for (size_t i = 0; i < config_.size(); ++i) config_[i] = std::byte(0xa0 + i);
  }
  uint64_t device_features() const override { return bit(kDeviceFeatureBit); }
  uint32_t num_queues() const override { return queues_; }
  uint32_t config_size() const override { return 16; }
  Result<void> read_config(uint32_t offset, std::span<std::byte> out) override {
    std::lock_guard lock(mutex_);
    std::memcpy(out.data(), config_.data() + offset, out.size());
    return ok();
  }
  // Bytes 0-7 are read-only, 8-15 writable.
  Result<void> write_config(uint32_t offset, std::span<const std::byte> data, ConfigFlags) override {
    if (offset < 8) return make_error(VhostUserErrc::kBadField, "config byte {} is read-only", offset);
    std::lock_guard lock(mutex_);
    std::memcpy(config_.data() + offset, data.data(), data.size());
    return ok();
  }
  Result<uint32_t> handle(uint32_t queue, const DescriptorChain& chain) override {
    last_queue.store(queue);
    // A test's hook sees each chain first (set before a ring starts): it may
    // block, or refuse the chain as a device model refuses one it cannot use.
    if (before_handle) {
      if (auto r = before_handle(queue, chain); !r) return std::move(r).error();
    }
    const uint32_t copied = vdma::testing::copy_readable_to_writable(chain);
    handled.fetch_add(1);
    return copied;
  }
  void reset() override { resets.fetch_add(1); }

  std::function<Result<void>(uint32_t queue, const DescriptorChain& chain)> before_handle;
  std::atomic<int> handled{0};
  std::atomic<int> resets{0};
  std::atomic<uint32_t> last_queue{0};

 private:
  uint32_t queues_;
  std::mutex mutex_;
  std::array<std::byte, 16> config_{};
};

inline UniqueFd make_eventfd() { return UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

// Waits up to timeout_ms for `fd` to be readable; reads the eventfd counter.
inline bool wait_eventfd(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) != 1) return false;
  uint64_t v = 0;
  return ::read(fd, &v, sizeof v) == sizeof v;
}

// Clears a notification left over from earlier requests.
inline void drain_eventfd(const UniqueFd& fd) {
  uint64_t v = 0;
  [[maybe_unused]] const ssize_t n = ::read(fd.get(), &v, sizeof v);
}

inline bool readable_within(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

class StubFrontend {
 public:
  explicit StubFrontend(BackendDevice& device, BackendOptions options = {}) {
    auto pair = make_socket_pair();
    EXPECT_TRUE(pair.has_value());
    sock_ = std::move((*pair)[0]);
    auto s = BackendSession::create(std::move((*pair)[1]), device, options);
    EXPECT_TRUE(s.has_value());
    session_ = std::move(*s);
    thread_ = std::thread([this] { end_.emplace(session_->run()); });
  }
  // Front-end only: drives a back-end that runs elsewhere (another process)
  // over `sock`; session() must not be used.
  explicit StubFrontend(UniqueFd sock) : sock_(std::move(sock)) {}
  ~StubFrontend() { finish(); }

  // Closes the front-end socket and waits for the session to end.
  void finish() {
    sock_.reset();
    if (thread_.joinable()) thread_.join();
  }
  // The error run() returned (after finish() or a close by the back-end).
  const std::optional<Error>& end() const { return end_; }
  BackendSession& session() { return *session_; }
  int sock() const { return sock_.get(); }

  void send(const Message& m) { ASSERT_THAT(send_message(sock_.get(), Channel::kMain, m), IsOk()); }
  Message recv() {
    Message m;
    EXPECT_THAT(recv_message(sock_.get(), Channel::kMain, m), IsOk());
    return m;
  }
  // True when the back-end closed the connection (EOF within 5 s).
  bool closed_by_backend() {
    if (!readable_within(sock_.get(), 5000)) return false;
    Message m;
    auto r = recv_message(sock_.get(), Channel::kMain, m);
    return !r && r.error().is(VhostUserErrc::kPeerClosed);
  }

  uint64_t get_u64(FrontendRequest r) {
    send(encode_request(r));
    auto v = parse_u64_reply(recv(), r);
    EXPECT_TRUE(v.has_value());
    return v ? *v : ~uint64_t{0};
  }
  // Sends `m` with NEED_REPLY and returns the REPLY_ACK status.
  uint64_t acked(Message m) {
    m.set_need_reply(true);
    const uint32_t code = m.request();
    send(m);
    Message reply = recv();
    EXPECT_EQ(reply.request(), code);
    EXPECT_EQ(reply.size(), 8u);
    return reply.size() == 8 ? reply.read_payload<uint64_t>() : ~uint64_t{0};
  }
  // The u64 status reply of an IOTLB_MSG.
  uint64_t iotlb(Message m) {
    send(m);
    Message reply = recv();
    EXPECT_EQ(reply.request(), static_cast<uint32_t>(FrontendRequest::kIotlbMsg));
    return reply.size() == 8 ? reply.read_payload<uint64_t>() : ~uint64_t{0};
  }

  // Negotiates features and protocol features (PROTOCOL_FEATURES acked).
  void negotiate(uint64_t features, uint64_t protocol) {
    const uint64_t offered = get_u64(FrontendRequest::kGetFeatures);
    ASSERT_EQ(offered & features, features);
    ASSERT_EQ(get_u64(FrontendRequest::kGetProtocolFeatures) & protocol, protocol);
    send(encode_u64_request(FrontendRequest::kSetProtocolFeatures, protocol));
    ASSERT_EQ(acked(encode_request(FrontendRequest::kSetOwner)), 0u);
    ASSERT_EQ(acked(encode_u64_request(FrontendRequest::kSetFeatures, features | bit(kFeatureProtocolFeatures))), 0u);
  }

  // Shares `mem`'s first region at kUserBase.
  uint64_t set_mem_table(const GuestMemory& mem) {
    const GuestRegion& r = mem.regions()[0];
    MemoryRegion region{DmaAddr(r.base().value()), r.size(), FrontVa(kUserBase + r.base().value()), 0};
    std::array<UniqueFd, 1> fds{*UniqueFd::duplicate(r.fd())};
    return acked(encode_mem_table(std::span<const MemoryRegion>(&region, 1), fds));
  }

  // Configures vring `index` for `q` (ring addresses given as user
  // addresses, or as IOVAs when iova_rings) and starts it.
  void setup_vring(uint32_t index, const DriverQueue& q, bool iova_rings, UniqueFd& kick, UniqueFd& call,
                   uint16_t base = 0, bool set_base = true) {
    ASSERT_EQ(acked(encode_vring_state(FrontendRequest::kSetVringNum, {index, q.size()})), 0u);
    if (set_base) {
      ASSERT_EQ(acked(encode_vring_state(FrontendRequest::kSetVringBase, {index, base})), 0u);
    }
    const RingAddresses ra = q.ring_addresses();
    const uint64_t off = iova_rings ? 0 : kUserBase;
    VringAddress a;
    a.index = index;
    a.desc = RingAddr(ra.desc.value() + off);
    a.avail = RingAddr(ra.driver.value() + off);
    a.used = RingAddr(ra.device.value() + off);
    ASSERT_EQ(acked(encode_vring_addr(a)), 0u);
    kick = make_eventfd();
    call = make_eventfd();
    ASSERT_EQ(acked(encode_vring_file(FrontendRequest::kSetVringCall, index, *UniqueFd::duplicate(call.get()))), 0u);
    ASSERT_EQ(acked(encode_vring_file(FrontendRequest::kSetVringKick, index, *UniqueFd::duplicate(kick.get()))), 0u);
    ASSERT_EQ(acked(encode_vring_state(FrontendRequest::kSetVringEnable, {index, 1})), 0u);
  }

 private:
  UniqueFd sock_;
  std::unique_ptr<BackendSession> session_;
  std::thread thread_;
  std::optional<Error> end_;
};

// Guest memory with a shared RAM region at gpa 0, and bypass DMA ops whose
// coherent window holds the rings.
struct GuestSide {
  std::unique_ptr<GuestMemory> mem;
  std::unique_ptr<IdentityDmaOps> dma;
  GuestSide() {
    auto m = GuestMemory::create({RegionSpec{Gpa{0}, kRamSize, MemAttr::kShared, "ram"}});
    EXPECT_TRUE(m.has_value());
    mem = std::move(*m);
    dma = std::make_unique<IdentityDmaOps>(*mem, AddrRange<Gpa>{Gpa{kRingWindow}, 0x40000});
  }
  std::unique_ptr<DriverQueue> queue(RingFormat f, uint16_t size, uint64_t features) {
    auto q = make_driver_queue(f, *dma, QueueConfig{.size = size, .features = features, .max_indirect = 0});
    EXPECT_TRUE(q.has_value());
    return q ? std::move(*q) : nullptr;
  }
  void fill(Gpa at, size_t len, uint8_t seed) {
    std::vector<std::byte> b(len);
    for (size_t i = 0; i < len; ++i) b[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
    ASSERT_THAT(mem->write(at, b), IsOk());
  }
  std::vector<std::byte> read(Gpa at, size_t len) {
    std::vector<std::byte> b(len);
    EXPECT_THAT(mem->read(at, b), IsOk());
    return b;
  }
};

// Adds one echo request: `len` readable bytes at `src`, `len` writable at `dst`.
inline void add_echo(DriverQueue& q, Gpa src, Gpa dst, uint32_t len, uint64_t cookie) {
  const DriverSegment segs[2] = {{src, len, BufferType::kDeviceReadable, false, DmaAddr{}},
                                 {dst, len, BufferType::kDeviceWritable, false, DmaAddr{}}};
  ASSERT_THAT(q.add(segs, cookie), IsOk());
}

inline void kick(const UniqueFd& fd) {
  const uint64_t one = 1;
  ASSERT_EQ(::write(fd.get(), &one, sizeof one), static_cast<ssize_t>(sizeof one));
}

// Waits for the next used buffer (call eventfd, then the used ring).
inline std::optional<UsedBuffer> wait_used(DriverQueue& q, const UniqueFd& call, int timeout_ms = 5000) {
  for (int waited = 0; waited <= timeout_ms; waited += 10) {
    auto u = q.get_used();
    EXPECT_TRUE(u.has_value());
    if (!u) return std::nullopt;
    if (*u) return **u;
    wait_eventfd(call.get(), 10);
  }
  return std::nullopt;
}

}  // namespace vdma::vhost_user::testing
