// The vring worker with an asynchronous device: many requests in flight,
// completions in any order, used entries in completion order, the in-flight
// limit, GET_VRING_BASE waiting for the I/O in flight, and the inflight
// region recording exactly the requests not completed.
#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <tuple>

#include "backend_test_util.h"
#include "param_printers.h"
#include "vdma/vhost_user/inflight.h"

namespace vdma::vhost_user::testing {
namespace {

using R = FrontendRequest;

constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureMq) |
                               protocol_feature_bit(kProtocolFeatureInflightShmfd);
constexpr BackendOptions kBypass{.offer_access_platform = false};

// Holds every request until the test completes it (by tag, in any order);
// the copy happens at completion, on the worker, through the fragments the
// request got at start: they must still be valid then.
class AsyncEchoDevice final : public BackendDevice {
 public:
  explicit AsyncEchoDevice(uint32_t max_in_flight) : max_(max_in_flight), efd_(make_eventfd()) {}
  uint64_t device_features() const override { return 0; }
  uint32_t num_queues() const override { return 1; }
  Result<uint32_t> handle(uint32_t, const DescriptorChain& chain) override {
    return vdma::testing::copy_readable_to_writable(chain);
  }
  uint32_t max_in_flight(uint32_t) const override { return max_; }
  std::optional<Result<uint32_t>> start(uint32_t, const DescriptorChain& chain, uint32_t tag) override {
    std::lock_guard lock(mutex_);
    EXPECT_LT(tag, max_);
    EXPECT_EQ(started_.count(tag), 0u) << "tag " << tag << " started twice";
    started_[tag] = &chain;
    order_.push_back(tag);
    peak_ = std::max<size_t>(peak_, started_.size());
    cv_.notify_all();
    return std::nullopt;
  }
  void submit(uint32_t) override { submits.fetch_add(1); }
  size_t reap(uint32_t, std::span<Completion> out) override {
    uint64_t v = 0;
    [[maybe_unused]] const ssize_t n = ::read(efd_.get(), &v, sizeof v);
    std::lock_guard lock(mutex_);
    size_t k = 0;
    while (k < out.size() && !ready_.empty()) {
      const uint32_t tag = ready_.front();
      ready_.pop_front();
      const DescriptorChain* chain = started_.at(tag);
      started_.erase(tag);
      out[k++] = Completion{tag, vdma::testing::copy_readable_to_writable(*chain)};
    }
    if (!ready_.empty()) signal();
    return k;
  }
  int completion_fd(uint32_t) const override { return efd_.get(); }

  // Waits until `n` requests are in flight at once; their tags in start order.
  std::vector<uint32_t> wait_started(size_t n) {
    std::unique_lock lock(mutex_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::seconds(5), [&] { return started_.size() >= n; }))
        << started_.size() << " in flight";
    return std::vector<uint32_t>(order_.end() - static_cast<std::ptrdiff_t>(std::min(n, order_.size())), order_.end());
  }
  void complete(uint32_t tag) {
    std::lock_guard lock(mutex_);
    ready_.push_back(tag);
    signal();
  }
  size_t in_flight() {
    std::lock_guard lock(mutex_);
    return started_.size();
  }
  size_t peak() {
    std::lock_guard lock(mutex_);
    return peak_;
  }
  std::atomic<int> submits{0};

 private:
  void signal() {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(efd_.get(), &one, sizeof one);
  }
  uint32_t max_;
  UniqueFd efd_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<uint32_t, const DescriptorChain*> started_;
  std::vector<uint32_t> order_;
  std::deque<uint32_t> ready_;
  size_t peak_ = 0;
};

struct AsyncFlow {
  explicit AsyncFlow(uint32_t max_in_flight, BackendOptions options = kBypass)
      : dev(max_in_flight), fe(std::make_unique<StubFrontend>(dev, options)) {}
  AsyncEchoDevice dev;
  GuestSide guest;
  std::unique_ptr<StubFrontend> fe;
  UniqueFd kick;
  UniqueFd call;
  std::unique_ptr<DriverQueue> q;

  void start(RingFormat format, uint16_t size, uint64_t features) {
    if (format == RingFormat::kPacked) features |= bit(kFeatureRingPacked);
    fe->negotiate(features, kProtocol);
    ASSERT_EQ(fe->set_mem_table(*guest.mem), 0u);
    q = guest.queue(format, size, features | bit(kFeatureProtocolFeatures));
    // A fresh packed ring starts at index 0 with wrap counter 1 (bit 15).
    fe->setup_vring(0, *q, false, kick, call, format == RingFormat::kPacked ? 0x8000 : 0);
  }
  Gpa src(uint64_t i) const { return Gpa{0x10000 + i * 0x1000}; }
  Gpa dst(uint64_t i) const { return Gpa{0x40000 + i * 0x1000}; }
  static uint32_t len(uint64_t i) { return 100 + static_cast<uint32_t>(i) * 11; }
  void add(uint64_t i) {
    guest.fill(src(i), len(i), static_cast<uint8_t>(0x10 + i));
    guest.fill(dst(i), len(i), 0xee);
    add_echo(*q, src(i), dst(i), len(i), i);
  }
};

// Each ring format, served by the ring's own thread or by an I/O thread
// (BackendOptions::iothreads, io_thread.h).
class BackendAsync : public ::testing::TestWithParam<std::tuple<RingFormat, bool>> {
 protected:
  [[nodiscard]] RingFormat format() const { return std::get<0>(GetParam()); }
  [[nodiscard]] BackendOptions options() const {
    BackendOptions o = kBypass;
    o.iothreads = std::get<1>(GetParam()) ? 1 : 0;
    return o;
  }
};

TEST_P(BackendAsync, CompletionsInAnyOrderArePublishedInCompletionOrder) {
  AsyncFlow f(8, options());
  f.start(format(), 16, bit(kFeatureVersion1) | bit(kFeatureEventIdx));
  for (uint64_t i = 0; i < 4; ++i) f.add(i);
  if (f.q->kick_prepare()) kick(f.kick);
  // All four are in flight at once, handed to the device in one batch.
  const std::vector<uint32_t> tags = f.dev.wait_started(4);
  ASSERT_EQ(tags.size(), 4u);
  // submit() follows the last start, once the worker finds the ring empty.
  for (int i = 0; i < 500 && f.dev.submits.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(f.dev.submits.load(), 1);
  // Nothing is used before the device completes it.
  auto none = f.q->get_used();
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value());
  for (const uint64_t i : {2, 0, 3, 1}) {
    f.dev.complete(tags[i]);
    auto used = wait_used(*f.q, f.call);
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->cookie, i);
    EXPECT_EQ(used->len, AsyncFlow::len(i));
    EXPECT_EQ(f.guest.read(f.dst(i), AsyncFlow::len(i)), f.guest.read(f.src(i), AsyncFlow::len(i))) << i;
  }
  f.fe->send(encode_vring_state(R::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(f.fe->recv(), 0);
  ASSERT_TRUE(base.has_value());
  if (format() == RingFormat::kSplit) {
    EXPECT_EQ(base->num, 4u);
  }
}

TEST_P(BackendAsync, NoMoreThanTheDeviceTakesAreInFlight) {
  AsyncFlow f(2, options());
  f.start(format(), 16, bit(kFeatureVersion1));
  for (uint64_t i = 0; i < 5; ++i) f.add(i);
  if (f.q->kick_prepare()) kick(f.kick);
  std::map<uint64_t, int> seen;
  for (int done = 0; done < 5; ++done) {
    const std::vector<uint32_t> tags = f.dev.wait_started(std::min(2, 5 - done));
    ASSERT_FALSE(tags.empty());
    EXPECT_LE(f.dev.in_flight(), 2u);
    f.dev.complete(tags.front());
    auto used = wait_used(*f.q, f.call);
    ASSERT_TRUE(used.has_value());
    ++seen[used->cookie];
    EXPECT_EQ(f.guest.read(f.dst(used->cookie), AsyncFlow::len(used->cookie)),
              f.guest.read(f.src(used->cookie), AsyncFlow::len(used->cookie)));
  }
  EXPECT_EQ(f.dev.peak(), 2u);
  EXPECT_EQ(seen, (std::map<uint64_t, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}}));
}

TEST_P(BackendAsync, GetVringBaseWaitsForTheRequestsInFlight) {
  AsyncFlow f(8, options());
  f.start(format(), 16, bit(kFeatureVersion1));
  for (uint64_t i = 0; i < 3; ++i) f.add(i);
  if (f.q->kick_prepare()) kick(f.kick);
  const std::vector<uint32_t> tags = f.dev.wait_started(3);
  ASSERT_EQ(tags.size(), 3u);
  f.fe->send(encode_vring_state(R::kGetVringBase, {0, 0}));
  // The reply waits: the rings and memory must not change under the I/O.
  EXPECT_FALSE(readable_within(f.fe->sock(), 200));
  f.dev.complete(tags[1]);
  EXPECT_FALSE(readable_within(f.fe->sock(), 100));
  f.dev.complete(tags[0]);
  f.dev.complete(tags[2]);
  auto base = parse_vring_base_reply(f.fe->recv(), 0);
  ASSERT_TRUE(base.has_value());
  if (format() == RingFormat::kSplit) {
    EXPECT_EQ(base->num, 3u);
  }
  // Every request was published before the ring stopped.
  std::map<uint64_t, int> seen;
  for (int k = 0; k < 3; ++k) {
    auto used = f.q->get_used();
    ASSERT_TRUE(used.has_value() && used->has_value()) << k;
    ++seen[(*used)->cookie];
  }
  EXPECT_EQ(seen, (std::map<uint64_t, int>{{0, 1}, {1, 1}, {2, 1}}));
}

INSTANTIATE_TEST_SUITE_P(Formats, BackendAsync,
                         ::testing::Combine(::testing::Values(RingFormat::kSplit, RingFormat::kPacked),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<RingFormat, bool>>& p) {
                           return std::string(std::get<0>(p.param) == RingFormat::kSplit ? "Split" : "Packed") +
                                  (std::get<1>(p.param) ? "_IoThread" : "");
                         });

// Out-of-order completions with an inflight region: the region marks
// exactly the requests whose used entry is not published.
TEST(BackendAsyncInflight, RegionHoldsExactlyTheUncompletedRequests) {
  AsyncFlow f(8);
  const uint64_t features = bit(kFeatureVersion1);
  f.fe->negotiate(features, kProtocol);
  f.fe->send(encode_inflight_request(R::kGetInflightFd, InflightArea{0, 0, 1, 16}, UniqueFd()));
  Message reply = f.fe->recv();
  auto area = parse_inflight_reply(reply);
  ASSERT_TRUE(area.has_value());
  UniqueFd region_fd = reply.take_fd(0);
  UniqueFd keep = *UniqueFd::duplicate(region_fd.get());
  ASSERT_EQ(f.fe->acked(encode_inflight_request(R::kSetInflightFd, *area, std::move(region_fd))), 0u);
  ASSERT_EQ(f.fe->set_mem_table(*f.guest.mem), 0u);
  f.q = f.guest.queue(RingFormat::kSplit, 16, features | bit(kFeatureProtocolFeatures));
  f.fe->setup_vring(0, *f.q, false, f.kick, f.call);
  for (uint64_t i = 0; i < 4; ++i) f.add(i);
  if (f.q->kick_prepare()) kick(f.kick);
  const std::vector<uint32_t> tags = f.dev.wait_started(4);
  ASSERT_EQ(tags.size(), 4u);
  for (const uint64_t i : {3, 1}) {
    f.dev.complete(tags[i]);
    auto used = wait_used(*f.q, f.call);
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->cookie, i);
  }
  // Split heads are the descriptor indexes the driver used: 2 per request
  // (readable + writable), so request i has head 2i.
  std::vector<std::byte> b(inflight::kSplitHeaderSize + 16 * 16);
  ASSERT_EQ(::pread(keep.get(), b.data(), b.size(), 0), static_cast<ssize_t>(b.size()));
  auto inflight_at = [&](size_t head) {
    return static_cast<uint8_t>(b[inflight::kSplitHeaderSize + head * 16 + inflight::kSplitDescInflightOff]);
  };
  uint16_t used_idx = 0;
  std::memcpy(&used_idx, b.data() + inflight::kSplitUsedIdxOff, sizeof used_idx);
  EXPECT_EQ(used_idx, 2u);
  std::map<size_t, uint8_t> flags;
  for (size_t head = 0; head < 16; ++head) {
    if (inflight_at(head) != 0) flags[head] = inflight_at(head);
  }
  // Requests 0 and 2 are in flight; 1 and 3 completed.
  EXPECT_EQ(flags.size(), 2u);
  for (const auto& [head, v] : flags) EXPECT_TRUE(head == 0 || head == 4) << head;
  f.dev.complete(tags[0]);
  f.dev.complete(tags[2]);
  for (int k = 0; k < 2; ++k) ASSERT_TRUE(wait_used(*f.q, f.call).has_value());
}

}  // namespace
}  // namespace vdma::vhost_user::testing
