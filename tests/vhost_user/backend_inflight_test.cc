// Inflight I/O tracking (vhost-user.rst "Inflight I/O tracking"): the area
// GET_INFLIGHT_FD allocates, byte by byte; a back-end killed while it holds a
// popped request, and the next back-end resuming exactly that request from
// the same area; recovery order by counter and the last-batch fix-up from a
// region written by hand.
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <map>

#include <gtest/gtest.h>

#include "backend_test_util.h"
#include "vdma/vhost_user/inflight.h"

namespace vdma::vhost_user::testing {
namespace {

using R = FrontendRequest;

constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureMq) |
                               protocol_feature_bit(kProtocolFeatureInflightShmfd);
constexpr uint64_t kSplitFeatures = bit(kFeatureVersion1);
constexpr BackendOptions kBypass{.offer_access_platform = false};

// The GET_INFLIGHT_FD reply: its description and fd.
std::pair<InflightArea, UniqueFd> get_inflight(StubFrontend& fe, uint16_t queues, uint16_t size) {
  fe.send(encode_inflight_request(R::kGetInflightFd, InflightArea{0, 0, queues, size}, UniqueFd()));
  Message reply = fe.recv();
  auto area = parse_inflight_reply(reply);
  EXPECT_TRUE(area.has_value());
  if (!area) return {};
  return {*area, reply.take_fd(0)};
}

std::vector<std::byte> file_bytes(int fd) {
  struct stat st{};
  EXPECT_EQ(::fstat(fd, &st), 0);
  std::vector<std::byte> b(static_cast<size_t>(st.st_size));
  EXPECT_EQ(::pread(fd, b.data(), b.size(), 0), static_cast<ssize_t>(b.size()));
  return b;
}

template <class T>
T get(const std::vector<std::byte>& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

TEST(BackendInflight, SplitAreaLayout) {
  EchoDevice dev(2);
  StubFrontend fe(dev, kBypass);
  fe.negotiate(kSplitFeatures, kProtocol);
  auto [area, fd] = get_inflight(fe, 2, 64);
  // Region: 16-byte header + 64 x 16-byte DescStateSplit = 1040, padded to 1088.
  EXPECT_EQ(inflight_queue_region_size(RingFormat::kSplit, 64), 1088u);
  EXPECT_EQ(area, (InflightArea{2 * 1088, 0, 2, 64}));
  const auto bytes = file_bytes(fd.get());
  ASSERT_EQ(bytes.size(), 2u * 1088);
  for (size_t i = 0; i < bytes.size(); ++i) ASSERT_EQ(bytes[i], std::byte{0}) << "byte " << i;
  // The layout constants are the spec's C structs.
  static_assert(inflight::kSplitUsedIdxOff == 14 && inflight::kSplitDescCounterOff == 8);
}

TEST(BackendInflight, PackedAreaLayoutHasItsFreeList) {
  EchoDevice dev(1);
  StubFrontend fe(dev, kBypass);
  fe.negotiate(kSplitFeatures | bit(kFeatureRingPacked), kProtocol);
  auto [area, fd] = get_inflight(fe, 1, 16);
  // 32-byte header + 16 x 32-byte DescStatePacked = 544, padded to 576.
  EXPECT_EQ(area, (InflightArea{576, 0, 1, 16}));
  const auto bytes = file_bytes(fd.get());
  ASSERT_EQ(bytes.size(), 576u);
  for (size_t i = 0; i < bytes.size(); ++i) {
    uint8_t want = 0;
    if (i == inflight::kPackedUsedWrapOff || i == inflight::kPackedOldUsedWrapOff) want = 1;
    if (i >= 32 && (i - 32) % 32 == inflight::kPackedDescNextOff && i < 32 + 16 * 32) {
      want = static_cast<uint8_t>((i - 32) / 32 + 1);  // desc[j].next = j + 1 (low byte; all < 256)
    }
    ASSERT_EQ(bytes[i], std::byte{want}) << "byte " << i;
  }
  // The area is accepted for a packed ring (backend_inflight_packed_test.cc).
  EXPECT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, area, std::move(fd))), 0u);
}

TEST(BackendInflight, ShortAreaIsRefused) {
  EchoDevice dev(1);
  StubFrontend fe(dev, kBypass);
  fe.negotiate(kSplitFeatures, kProtocol);
  auto [area, fd] = get_inflight(fe, 1, 64);
  InflightArea small = area;
  small.queue_size = 128;  // needs 2112 bytes, the area has 1088
  EXPECT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, small, *UniqueFd::duplicate(fd.get()))), 1u);
  InflightArea beyond = area;
  beyond.mmap_offset = 4096;  // the fd is 1088 bytes long
  EXPECT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, beyond, std::move(fd))), 1u);
}

// Echo device that records each request's first source byte and, in the
// "crashing" role, hangs inside handle() for the request numbered block_at.
class RecordingDevice final : public BackendDevice {
 public:
  uint64_t device_features() const override { return 0; }
  uint32_t num_queues() const override { return 1; }
  Result<uint32_t> handle(uint32_t queue, const DescriptorChain& chain) override {
    const int n = calls.fetch_add(1);
    if (n == block_at) {
      const char c = 'x';
      [[maybe_unused]] const ssize_t w = ::write(signal_fd, &c, 1);
      for (;;) ::pause();  // the test kills this process here
    }
    return echo.handle(queue, chain);
  }
  EchoDevice echo{1};
  std::atomic<int> calls{0};
  int block_at = -1;
  int signal_fd = -1;
};

struct Request {
  Gpa src;
  Gpa dst;
  uint32_t len;
};

Request request(uint64_t i) { return {Gpa{0x10000 + i * 0x1000}, Gpa{0x40000 + i * 0x1000}, 200 + uint32_t(i) * 13}; }

TEST(BackendInflight, KilledBackendsInflightRequestIsResumedOnce) {
  GuestSide guest;
  auto q = guest.queue(RingFormat::kSplit, 16, kSplitFeatures | bit(kFeatureProtocolFeatures));
  for (uint64_t i = 0; i < 5; ++i) {
    guest.fill(request(i).src, request(i).len, uint8_t(0x30 + i));
    guest.fill(request(i).dst, request(i).len, 0xee);
  }
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd pipe_r(pipe_fds[0]), pipe_w(pipe_fds[1]);
  auto pair = make_socket_pair();
  ASSERT_TRUE(pair.has_value());

  // The first back-end runs in a child process that will be killed.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    (*pair)[0].reset();
    RecordingDevice dev;
    dev.block_at = 2;
    dev.signal_fd = pipe_w.get();
    auto s = BackendSession::create(std::move((*pair)[1]), dev, kBypass);
    if (s) (void)(*s)->run();
    ::_exit(0);
  }
  (*pair)[1].reset();
  UniqueFd inflight_fd;
  {
    StubFrontend fe(std::move((*pair)[0]));
    fe.negotiate(kSplitFeatures, kProtocol);
    auto [area, fd] = get_inflight(fe, 1, 16);
    inflight_fd = *UniqueFd::duplicate(fd.get());
    ASSERT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, area, std::move(fd))), 0u);
    ASSERT_EQ(fe.set_mem_table(*guest.mem), 0u);
    UniqueFd kick_fd, call_fd;
    fe.setup_vring(0, *q, false, kick_fd, call_fd);
    for (uint64_t i = 0; i < 5; ++i) add_echo(*q, request(i).src, request(i).dst, request(i).len, i);
    kick(kick_fd);
    // Requests 0 and 1 complete; the back-end dies inside request 2.
    ASSERT_TRUE(readable_within(pipe_r.get(), 5000));
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status));
    for (uint64_t i = 0; i < 2; ++i) {
      auto used = q->get_used();
      ASSERT_TRUE(used.has_value() && used->has_value());
      EXPECT_EQ((*used)->cookie, i);
    }
    auto none = q->get_used();
    ASSERT_TRUE(none.has_value());
    EXPECT_FALSE(none->has_value());
  }
  // Request 2 was popped and never completed; 3 and 4 were never popped.
  EXPECT_EQ(guest.read(request(2).dst, 1)[0], std::byte{0xee});

  // A new back-end on the same memory and inflight area. Like QEMU after a
  // back-end crash, the front-end restores the base from the used idx (2).
  RecordingDevice dev2;
  StubFrontend fe2(dev2, kBypass);
  fe2.negotiate(kSplitFeatures, kProtocol);
  const InflightArea area{inflight_queue_region_size(RingFormat::kSplit, 16), 0, 1, 16};
  ASSERT_EQ(fe2.acked(encode_inflight_request(R::kSetInflightFd, area, *UniqueFd::duplicate(inflight_fd.get()))), 0u);
  ASSERT_EQ(fe2.set_mem_table(*guest.mem), 0u);
  UniqueFd kick2, call2;
  fe2.setup_vring(0, *q, false, kick2, call2, 2);
  kick(kick2);
  std::map<uint64_t, int> completions;
  for (int k = 0; k < 3; ++k) {
    auto used = wait_used(*q, call2);
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->cookie, uint64_t(2 + k));  // the inflight request first, then the new ones
    EXPECT_EQ(used->len, request(used->cookie).len);
    ++completions[used->cookie];
  }
  (void)wait_eventfd(call2.get(), 100);  // time for a duplicate to show up
  auto none = q->get_used();
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(dev2.calls.load(), 3);
  EXPECT_EQ(completions, (std::map<uint64_t, int>{{2, 1}, {3, 1}, {4, 1}}));
  for (uint64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(guest.read(request(i).dst, request(i).len), guest.read(request(i).src, request(i).len)) << i;
  }
  // Stopping the ring reports everything as processed, and the region has nothing in flight.
  fe2.send(encode_vring_state(R::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(fe2.recv(), 0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 5u);
  const auto region = file_bytes(inflight_fd.get());
  EXPECT_EQ(get<uint16_t>(region, inflight::kSplitVersionOff), 1u);
  EXPECT_EQ(get<uint16_t>(region, inflight::kSplitDescNumOff), 16u);
  EXPECT_EQ(get<uint16_t>(region, inflight::kSplitUsedIdxOff), 5u);
  for (size_t d = 0; d < 16; ++d) {
    EXPECT_EQ(get<uint8_t>(region, inflight::kSplitHeaderSize + d * 16 + inflight::kSplitDescInflightOff), 0u) << d;
  }
}

template <class T>
void put(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

// A version-1 split region header as a back-end that used it leaves it.
void put_split_header(std::byte* region, uint16_t desc_num, uint16_t used_idx) {
  put<uint16_t>(region + inflight::kSplitVersionOff, 1);
  put<uint16_t>(region + inflight::kSplitDescNumOff, desc_num);
  put<uint16_t>(region + inflight::kSplitUsedIdxOff, used_idx);
}

TEST(BackendInflight, RecoveryResubmitsInCounterOrderAndClearsTheLastBatch) {
  GuestSide guest;
  auto q = guest.queue(RingFormat::kSplit, 8, kSplitFeatures | bit(kFeatureProtocolFeatures));
  for (uint64_t i = 0; i < 4; ++i) {
    guest.fill(request(i).src, request(i).len, uint8_t(0x50 + i));
    add_echo(*q, request(i).src, request(i).dst, request(i).len, i);
  }
  // The heads the driver put in avail entries 0..3.
  const Gpa avail{q->ring_addresses().driver.value()};
  uint16_t head[4];
  for (int i = 0; i < 4; ++i) head[i] = get<uint16_t>(guest.read(avail, 12), 4 + 2 * size_t(i));

  EchoDevice dev(1);
  StubFrontend fe(dev, kBypass);
  fe.negotiate(kSplitFeatures, kProtocol);
  auto [area, fd] = get_inflight(fe, 1, 8);
  void* map = ::mmap(nullptr, area.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(map, MAP_FAILED);
  auto* region = static_cast<std::byte*>(map);
  // What a previous back-end left: it fetched requests 0, 1 and 3 (counters
  // 9, 4, 1) — 1 before 0, as an out-of-order back-end may — and had just
  // published request 3's used entry when it died (the ring's used idx 0 is
  // one past the region's 0xffff, and the last batch is head 3). Request 3's
  // inflight mark is therefore stale and must be cleared, not resubmitted.
  put_split_header(region, 8, 0xffff);
  put<uint16_t>(region + inflight::kSplitLastBatchHeadOff, head[3]);
  auto desc = [&](uint16_t h) { return region + inflight::kSplitHeaderSize + size_t{h} * inflight::kSplitDescSize; };
  const uint64_t counters[4] = {9, 4, 0, 1};
  for (int i : {0, 1, 3}) {
    put<uint8_t>(desc(head[i]) + inflight::kSplitDescInflightOff, 1);
    put<uint64_t>(desc(head[i]) + inflight::kSplitDescCounterOff, counters[i]);
  }
  ASSERT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, area, std::move(fd))), 0u);
  ASSERT_EQ(fe.set_mem_table(*guest.mem), 0u);
  UniqueFd kick_fd, call_fd;
  fe.setup_vring(0, *q, false, kick_fd, call_fd, 0);
  kick(kick_fd);
  // Requests 1 then 0 (counter order), then avail entries 2 and 3 are popped
  // (used idx 0 + 2 inflight): every request exactly once.
  for (uint64_t want : {1u, 0u, 2u, 3u}) {
    auto used = wait_used(*q, call_fd);
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->cookie, want);
    EXPECT_EQ(guest.read(request(want).dst, request(want).len), guest.read(request(want).src, request(want).len));
  }
  (void)wait_eventfd(call_fd.get(), 100);  // time for a duplicate to show up
  auto none = q->get_used();
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(dev.handled.load(), 4);
  EXPECT_EQ(get<uint16_t>(std::vector<std::byte>(region, region + 16), inflight::kSplitUsedIdxOff), 4u);
  ::munmap(map, area.mmap_size);
}

// The lost interrupt of a crash, split format: a back-end published request
// 0's used entry (used idx 1) and recorded it in the region, then was killed
// before it signalled the call fd. QEMU restores the base from the used idx.
// The driver adds nothing while it waits, so the next back-end signals once
// when it resumes the ring.
TEST(BackendInflight, ResumedRingSignalsTheDriverForUsedEntriesItMayNotHaveSeen) {
  GuestSide guest;
  auto q = guest.queue(RingFormat::kSplit, 8, kSplitFeatures | bit(kFeatureProtocolFeatures));
  guest.fill(request(0).src, request(0).len, 0x61);
  add_echo(*q, request(0).src, request(0).dst, request(0).len, 0);
  const Gpa avail{q->ring_addresses().driver.value()};
  const uint16_t head = get<uint16_t>(guest.read(avail, 6), 4);
  ASSERT_THAT(guest.mem->write(request(0).dst, guest.read(request(0).src, request(0).len)), IsOk());
  // used ring: flags, idx, then ring[0] = {id, len} (§2.7.8).
  std::byte used[12];
  put<uint16_t>(used, 0);
  put<uint16_t>(used + 2, 1);
  put<uint32_t>(used + 4, head);
  put<uint32_t>(used + 8, request(0).len);
  ASSERT_THAT(guest.mem->write(Gpa{q->ring_addresses().device.value()}, used), IsOk());

  EchoDevice dev(1);
  StubFrontend fe(dev, kBypass);
  fe.negotiate(kSplitFeatures, kProtocol);
  auto [area, fd] = get_inflight(fe, 1, 8);
  void* map = ::mmap(nullptr, area.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(map, MAP_FAILED);
  auto* region = static_cast<std::byte*>(map);
  put_split_header(region, 8, 1);
  ASSERT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, area, std::move(fd))), 0u);
  ASSERT_EQ(fe.set_mem_table(*guest.mem), 0u);
  UniqueFd kick_fd, call_fd;
  fe.setup_vring(0, *q, false, kick_fd, call_fd, 1);
  EXPECT_TRUE(wait_eventfd(call_fd.get(), 5000));  // no kick: the driver has nothing new
  auto got = q->get_used();
  ASSERT_TRUE(got.has_value() && got->has_value());
  EXPECT_EQ((*got)->cookie, 0u);
  EXPECT_EQ(dev.handled.load(), 0);
  ::munmap(map, area.mmap_size);
}

TEST(BackendInflight, HostileRegionIsRejectedAtRingStart) {
  GuestSide guest;
  auto q = guest.queue(RingFormat::kSplit, 8, kSplitFeatures | bit(kFeatureProtocolFeatures));
  EchoDevice dev(1);
  StubFrontend fe(dev, kBypass);
  fe.negotiate(kSplitFeatures, kProtocol);
  auto [area, fd] = get_inflight(fe, 1, 8);
  std::byte* region = static_cast<std::byte*>(::mmap(nullptr, area.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                                                     fd.get(), 0));
  ASSERT_NE(static_cast<void*>(region), MAP_FAILED);
  // desc_num says 64 for a ring of 8 descriptors.
  put<uint16_t>(region + inflight::kSplitVersionOff, 1);
  put<uint16_t>(region + inflight::kSplitDescNumOff, 64);
  ASSERT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, area, std::move(fd))), 0u);
  ASSERT_EQ(fe.set_mem_table(*guest.mem), 0u);
  const RingAddresses ra = q->ring_addresses();
  ASSERT_EQ(fe.acked(encode_vring_state(R::kSetVringNum, {0, 8})), 0u);
  VringAddress a;
  a.index = 0;
  a.desc = RingAddr(ra.desc.value() + kUserBase);
  a.avail = RingAddr(ra.driver.value() + kUserBase);
  a.used = RingAddr(ra.device.value() + kUserBase);
  ASSERT_EQ(fe.acked(encode_vring_addr(a)), 0u);
  // The ring starts once kicked and enabled: recovery fails, the request
  // that starts it gets the error.
  EXPECT_EQ(fe.acked(encode_vring_file(R::kSetVringKick, 0, make_eventfd())), 0u);
  EXPECT_EQ(fe.acked(encode_vring_state(R::kSetVringEnable, {0, 1})), 1u);
  ::munmap(region, area.mmap_size);
}

}  // namespace
}  // namespace vdma::vhost_user::testing
