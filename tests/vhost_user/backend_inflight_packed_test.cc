// Inflight I/O tracking of packed rings (vhost-user.rst "Inflight I/O
// tracking", QueueRegionPacked): a back-end killed with a request in flight
// and the next one resuming it exactly once from the same area, although the
// front-end restores a stale base; chains completed out of order whose ring
// slots already hold used elements, resubmitted from the region's copies in
// counter order; a half-done used update committed or rolled back by looking
// at the ring; hostile regions rejected at ring start, and leaked entries
// reclaimed.
#include <sys/mman.h>
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
namespace in = inflight;

constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureMq) |
                               protocol_feature_bit(kProtocolFeatureInflightShmfd);
constexpr uint64_t kPackedFeatures = bit(kFeatureVersion1) | bit(kFeatureRingPacked);
constexpr BackendOptions kBypass{.offer_access_platform = false};
constexpr uint16_t kFresh = 0x8000;  // descriptor 0, wrap counter 1

std::pair<InflightArea, UniqueFd> get_inflight(StubFrontend& fe, uint16_t queues, uint16_t size) {
  fe.send(encode_inflight_request(R::kGetInflightFd, InflightArea{0, 0, queues, size}, UniqueFd()));
  Message reply = fe.recv();
  auto area = parse_inflight_reply(reply);
  EXPECT_TRUE(area.has_value());
  if (!area) return {};
  return {*area, reply.take_fd(0)};
}

template <class T>
void put(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}
template <class T>
T get(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// A mapping of the whole area, unmapped on scope exit.
class Mapped {
 public:
  Mapped(int fd, size_t size) : size_(size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    EXPECT_NE(p, MAP_FAILED);
    base_ = p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
  }
  ~Mapped() {
    if (base_ != nullptr) ::munmap(base_, size_);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
  std::byte* region() const { return base_; }
  std::byte* desc(uint16_t i) const { return base_ + in::kPackedHeaderSize + size_t{i} * in::kPackedDescSize; }

 private:
  std::byte* base_ = nullptr;
  size_t size_;
};

struct RawDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t id;
  uint16_t flags;
};

RawDesc ring_desc(GuestSide& g, const DriverQueue& q, uint16_t slot) {
  const auto b = g.read(Gpa{q.ring_addresses().desc.value() + slot * 16u}, 16);
  return {get<uint64_t>(b.data()), get<uint32_t>(b.data() + 8), get<uint16_t>(b.data() + 12),
          get<uint16_t>(b.data() + 14)};
}

// What a previous back-end wrote for a used element at `slot` (wrap counter 1).
void write_used(GuestSide& g, const DriverQueue& q, uint16_t slot, uint16_t id, uint32_t len) {
  std::byte b[8];
  put<uint32_t>(b, len);
  put<uint16_t>(b + 4, id);
  put<uint16_t>(b + 6, uint16_t{0x8080});  // AVAIL and USED = 1 (§2.8.1)
  ASSERT_THAT(g.mem->write(Gpa{q.ring_addresses().desc.value() + slot * 16u + 8}, b), IsOk());
}

// Logs the chain at ring slots [slot, slot + n) in region entries
// entries[0..n) as a back-end that popped it with `counter` would have.
void log_chain(GuestSide& g, const DriverQueue& q, const Mapped& m, uint16_t slot, std::initializer_list<uint16_t> entries,
               uint64_t counter) {
  const uint16_t head = *entries.begin();
  uint16_t k = 0;
  for (uint16_t e : entries) {
    const RawDesc d = ring_desc(g, q, static_cast<uint16_t>(slot + k));
    put<uint64_t>(m.desc(e) + in::kPackedDescAddrOff, d.addr);
    put<uint32_t>(m.desc(e) + in::kPackedDescLenOff, d.len);
    put<uint16_t>(m.desc(e) + in::kPackedDescIdOff, d.id);
    put<uint16_t>(m.desc(e) + in::kPackedDescFlagsOff, d.flags);
    if (size_t{k} + 1 < entries.size()) put<uint16_t>(m.desc(e) + in::kPackedDescNextOff, *(entries.begin() + k + 1));
    ++k;
  }
  put<uint8_t>(m.desc(head) + in::kPackedDescInflightOff, 1);
  put<uint16_t>(m.desc(head) + in::kPackedDescChainNumOff, k);
  put<uint16_t>(m.desc(head) + in::kPackedDescLastOff, *(entries.end() - 1));
  put<uint64_t>(m.desc(head) + in::kPackedDescCounterOff, counter);
}

void set_header(const Mapped& m, uint16_t desc_num, uint16_t free_head, uint16_t used_idx, uint8_t wrap) {
  put<uint16_t>(m.region() + in::kPackedVersionOff, 1);
  put<uint16_t>(m.region() + in::kPackedDescNumOff, desc_num);
  put<uint16_t>(m.region() + in::kPackedFreeHeadOff, free_head);
  put<uint16_t>(m.region() + in::kPackedOldFreeHeadOff, free_head);
  put<uint16_t>(m.region() + in::kPackedUsedIdxOff, used_idx);
  put<uint16_t>(m.region() + in::kPackedOldUsedIdxOff, used_idx);
  put<uint8_t>(m.region() + in::kPackedUsedWrapOff, wrap);
  put<uint8_t>(m.region() + in::kPackedOldUsedWrapOff, wrap);
}

struct Request {
  Gpa src;
  Gpa dst;
  uint32_t len;
};
Request request(uint64_t i) { return {Gpa{0x10000 + i * 0x1000}, Gpa{0x40000 + i * 0x1000}, 200 + uint32_t(i) * 13}; }

void fill_requests(GuestSide& g, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    g.fill(request(i).src, request(i).len, uint8_t(0x30 + i));
    g.fill(request(i).dst, request(i).len, 0xee);
  }
}
void add_request(DriverQueue& q, uint64_t i) { add_echo(q, request(i).src, request(i).dst, request(i).len, i); }
bool echoed(GuestSide& g, uint64_t i) {
  return g.read(request(i).dst, request(i).len) == g.read(request(i).src, request(i).len);
}

void expect_no_more_used(DriverQueue& q, const UniqueFd& call) {
  (void)wait_eventfd(call.get(), 100);  // time for a duplicate to show up
  auto none = q.get_used();
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value());
}

// Echo device that, in the "crashing" role, hangs inside handle() for the
// request numbered block_at and tells the test through signal_fd.
class HangingDevice final : public BackendDevice {
 public:
  uint64_t device_features() const override { return 0; }
  uint32_t num_queues() const override { return 1; }
  Result<uint32_t> handle(uint32_t queue, const DescriptorChain& chain) override {
    if (calls.fetch_add(1) == block_at) {
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

TEST(BackendInflightPacked, KilledBackendsInflightRequestIsResumedOnceDespiteAStaleBase) {
  GuestSide guest;
  auto q = guest.queue(RingFormat::kPacked, 16, kPackedFeatures | bit(kFeatureProtocolFeatures));
  fill_requests(guest, 5);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd pipe_r(pipe_fds[0]), pipe_w(pipe_fds[1]);
  auto pair = make_socket_pair();
  ASSERT_TRUE(pair.has_value());
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    (*pair)[0].reset();
    HangingDevice dev;
    dev.block_at = 2;
    dev.signal_fd = pipe_w.get();
    auto s = BackendSession::create(std::move((*pair)[1]), dev, kBypass);
    if (s) (void)(*s)->run();
    ::_exit(0);
  }
  (*pair)[1].reset();
  UniqueFd inflight_fd;
  InflightArea area;
  {
    StubFrontend fe(std::move((*pair)[0]));
    fe.negotiate(kPackedFeatures, kProtocol);
    auto [a, fd] = get_inflight(fe, 1, 16);
    area = a;
    inflight_fd = *UniqueFd::duplicate(fd.get());
    ASSERT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, area, std::move(fd))), 0u);
    ASSERT_EQ(fe.set_mem_table(*guest.mem), 0u);
    UniqueFd kick_fd, call_fd;
    fe.setup_vring(0, *q, false, kick_fd, call_fd, kFresh);
    for (uint64_t i = 0; i < 5; ++i) add_request(*q, i);
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
  EXPECT_EQ(guest.read(request(2).dst, 1)[0], std::byte{0xee});
  {
    // The region the dead back-end left: request 2 (ring slots 4-5) in
    // flight with counter 2, logged in entries 0-1 (each completed chain gave
    // them back to the head of the free list); used position 4.
    Mapped m(inflight_fd.get(), area.mmap_size);
    EXPECT_EQ(get<uint16_t>(m.region() + in::kPackedUsedIdxOff), 4u);
    EXPECT_EQ(get<uint16_t>(m.region() + in::kPackedOldUsedIdxOff), 4u);
    EXPECT_EQ(get<uint16_t>(m.region() + in::kPackedOldFreeHeadOff), 2u);
    EXPECT_EQ(get<uint8_t>(m.desc(0) + in::kPackedDescInflightOff), 1u);
    EXPECT_EQ(get<uint16_t>(m.desc(0) + in::kPackedDescChainNumOff), 2u);
    EXPECT_EQ(get<uint16_t>(m.desc(0) + in::kPackedDescLastOff), 1u);
    EXPECT_EQ(get<uint64_t>(m.desc(0) + in::kPackedDescCounterOff), 2u);
    EXPECT_EQ(get<uint64_t>(m.desc(0) + in::kPackedDescAddrOff), request(2).src.value());
    EXPECT_EQ(get<uint32_t>(m.desc(0) + in::kPackedDescLenOff), request(2).len);
    EXPECT_EQ(get<uint64_t>(m.desc(1) + in::kPackedDescAddrOff), request(2).dst.value());
    EXPECT_EQ(get<uint16_t>(m.desc(1) + in::kPackedDescFlagsOff) & 3u, 2u);  // WRITE, no NEXT
  }

  // A new back-end on the same memory and area. QEMU cannot read a packed
  // ring's position from a dead back-end, so it restores a stale base: here
  // the fresh one, with the used half QEMU 7.2 puts in bits 16-31 (avail
  // 0x8000, used 0x8000). The region decides.
  HangingDevice dev2;
  StubFrontend fe2(dev2, kBypass);
  fe2.negotiate(kPackedFeatures, kProtocol);
  ASSERT_EQ(fe2.acked(encode_inflight_request(R::kSetInflightFd, area, *UniqueFd::duplicate(inflight_fd.get()))), 0u);
  ASSERT_EQ(fe2.set_mem_table(*guest.mem), 0u);
  UniqueFd kick2, call2;
  ASSERT_EQ(fe2.acked(encode_vring_state(R::kSetVringBase, {0, 0x80008000u})), 0u);
  fe2.setup_vring(0, *q, false, kick2, call2, 0, /*set_base=*/false);
  kick(kick2);
  std::map<uint64_t, int> completions;
  for (int k = 0; k < 3; ++k) {
    auto used = wait_used(*q, call2);
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->cookie, uint64_t(2 + k));  // the inflight request first, then the new ones
    EXPECT_EQ(used->len, request(used->cookie).len);
    ++completions[used->cookie];
  }
  expect_no_more_used(*q, call2);
  EXPECT_EQ(dev2.calls.load(), 3);
  EXPECT_EQ(completions, (std::map<uint64_t, int>{{2, 1}, {3, 1}, {4, 1}}));
  for (uint64_t i = 0; i < 5; ++i) EXPECT_TRUE(echoed(guest, i)) << i;
  fe2.send(encode_vring_state(R::kGetVringBase, {0, 0}));
  auto base = parse_vring_base_reply(fe2.recv(), 0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 0x8000u | 10u);  // five chains of two descriptors
  Mapped m(inflight_fd.get(), area.mmap_size);
  EXPECT_EQ(get<uint16_t>(m.region() + in::kPackedUsedIdxOff), 10u);
  EXPECT_EQ(get<uint16_t>(m.region() + in::kPackedOldUsedIdxOff), 10u);
  EXPECT_EQ(get<uint8_t>(m.region() + in::kPackedOldUsedWrapOff), 1u);
  for (uint16_t d = 0; d < 16; ++d) EXPECT_EQ(get<uint8_t>(m.desc(d) + in::kPackedDescInflightOff), 0u) << d;
}

// A fixture for hand-written regions: a packed ring of 8, one area.
struct Handwritten {
  GuestSide guest;
  std::unique_ptr<DriverQueue> q = guest.queue(RingFormat::kPacked, 8, kPackedFeatures | bit(kFeatureProtocolFeatures));
  EchoDevice dev{1};
  StubFrontend fe{dev, kBypass};
  InflightArea area;
  UniqueFd fd;
  std::unique_ptr<Mapped> m;
  UniqueFd kick_fd, call_fd;

  Handwritten() {
    fe.negotiate(kPackedFeatures, kProtocol);
    auto [a, f] = get_inflight(fe, 1, 8);
    area = a;
    fd = std::move(f);
    m = std::make_unique<Mapped>(fd.get(), area.mmap_size);
  }
  // Hands the area over and starts the ring at `base`; returns the status of
  // the request that starts it (SET_VRING_ENABLE).
  uint64_t start(uint16_t base = kFresh) {
    EXPECT_EQ(fe.acked(encode_inflight_request(R::kSetInflightFd, area, *UniqueFd::duplicate(fd.get()))), 0u);
    EXPECT_EQ(fe.set_mem_table(*guest.mem), 0u);
    const RingAddresses ra = q->ring_addresses();
    EXPECT_EQ(fe.acked(encode_vring_state(R::kSetVringNum, {0, 8})), 0u);
    EXPECT_EQ(fe.acked(encode_vring_state(R::kSetVringBase, {0, base})), 0u);
    VringAddress a;
    a.index = 0;
    a.desc = RingAddr(ra.desc.value() + kUserBase);
    a.avail = RingAddr(ra.driver.value() + kUserBase);
    a.used = RingAddr(ra.device.value() + kUserBase);
    EXPECT_EQ(fe.acked(encode_vring_addr(a)), 0u);
    kick_fd = make_eventfd();
    call_fd = make_eventfd();
    EXPECT_EQ(fe.acked(encode_vring_file(R::kSetVringCall, 0, *UniqueFd::duplicate(call_fd.get()))), 0u);
    EXPECT_EQ(fe.acked(encode_vring_file(R::kSetVringKick, 0, *UniqueFd::duplicate(kick_fd.get()))), 0u);
    return fe.acked(encode_vring_state(R::kSetVringEnable, {0, 1}));
  }
  std::vector<uint64_t> used_cookies(size_t n) {
    std::vector<uint64_t> got;
    for (size_t k = 0; k < n; ++k) {
      auto used = wait_used(*q, call_fd);
      if (!used) break;
      EXPECT_EQ(used->len, request(used->cookie).len) << used->cookie;
      got.push_back(used->cookie);
    }
    return got;
  }
};

TEST(BackendInflightPacked, OutOfOrderChainsAreResubmittedFromTheirCopiesInCounterOrder) {
  Handwritten h;
  fill_requests(h.guest, 4);
  for (uint64_t i = 0; i < 3; ++i) add_request(*h.q, i);  // A, B, C at ring slots 0-1, 2-3, 4-5
  // A previous back-end popped A (counter 7), B (counter 3) and C (counter
  // 1), completed B first — its used element went to slot 0, over A's head
  // descriptor — and died. A and C are in flight; B's entries (2, 3) went back
  // to the free list. Counters put C before A.
  log_chain(h.guest, *h.q, *h.m, 0, {0, 1}, 7);
  log_chain(h.guest, *h.q, *h.m, 4, {4, 5}, 1);
  const RawDesc b_last = ring_desc(h.guest, *h.q, 3);
  h.guest.fill(request(1).dst, request(1).len, 0);
  ASSERT_THAT(h.guest.mem->write(request(1).dst, h.guest.read(request(1).src, request(1).len)), IsOk());
  write_used(h.guest, *h.q, 0, b_last.id, request(1).len);
  set_header(*h.m, 8, 2, 2, 1);
  put<uint16_t>(h.m->desc(2) + in::kPackedDescNextOff, 3);
  put<uint16_t>(h.m->desc(3) + in::kPackedDescNextOff, 6);
  put<uint16_t>(h.m->desc(6) + in::kPackedDescNextOff, 7);
  put<uint16_t>(h.m->desc(7) + in::kPackedDescNextOff, 8);
  // The driver sees B complete.
  auto b = h.q->get_used();
  ASSERT_TRUE(b.has_value() && b->has_value());
  EXPECT_EQ((*b)->cookie, 1u);

  ASSERT_EQ(h.start(kFresh), 0u);
  add_request(*h.q, 3);  // D at slots 6-7: popping continues after C
  kick(h.kick_fd);
  EXPECT_EQ(h.used_cookies(3), (std::vector<uint64_t>{2, 0, 3}));
  expect_no_more_used(*h.q, h.call_fd);
  EXPECT_EQ(h.dev.handled.load(), 3);
  for (uint64_t i = 0; i < 4; ++i) EXPECT_TRUE(echoed(h.guest, i)) << i;
  // Counters continue after the highest one recovered (7): D got 8, in
  // entry 0 (A, returned last, heads the free list).
  EXPECT_EQ(get<uint64_t>(h.m->desc(0) + in::kPackedDescCounterOff), 8u);
  EXPECT_EQ(get<uint16_t>(h.m->region() + in::kPackedUsedIdxOff), 0u);  // 8 descriptors later, wrapped
  EXPECT_EQ(get<uint8_t>(h.m->region() + in::kPackedUsedWrapOff), 0u);
}

// A back-end died in the middle of returning A (ring slots 0-1, entries
// 0-1): it had moved free_head and used_idx but not the old_* fields.
void half_done_push(bool used_element_written) {
  Handwritten h;
  fill_requests(h.guest, 2);
  add_request(*h.q, 0);
  log_chain(h.guest, *h.q, *h.m, 0, {0, 1}, 0);
  set_header(*h.m, 8, 2, 0, 1);
  put<uint16_t>(h.m->desc(1) + in::kPackedDescNextOff, 2);  // desc[last].next = old free_head
  put<uint16_t>(h.m->region() + in::kPackedFreeHeadOff, 0);
  put<uint16_t>(h.m->region() + in::kPackedUsedIdxOff, 2);
  if (used_element_written) {
    ASSERT_THAT(h.guest.mem->write(request(0).dst, h.guest.read(request(0).src, request(0).len)), IsOk());
    write_used(h.guest, *h.q, 0, ring_desc(h.guest, *h.q, 1).id, request(0).len);
  }
  ASSERT_EQ(h.start(kFresh), 0u);
  add_request(*h.q, 1);
  kick(h.kick_fd);
  // Committed: A completed once (by the dead back-end); rolled back: A is
  // processed again, once. B follows either way.
  EXPECT_EQ(h.used_cookies(2), (std::vector<uint64_t>{0, 1}));
  expect_no_more_used(*h.q, h.call_fd);
  EXPECT_EQ(h.dev.handled.load(), used_element_written ? 1 : 2);
  EXPECT_TRUE(echoed(h.guest, 0));
  EXPECT_TRUE(echoed(h.guest, 1));
}

TEST(BackendInflightPacked, HalfDoneUsedUpdateThatReachedTheRingIsCommitted) { half_done_push(true); }
TEST(BackendInflightPacked, HalfDoneUsedUpdateThatDidNotReachTheRingIsRolledBack) { half_done_push(false); }

// The lost interrupt of a crash: a back-end wrote A's used element (slot 0)
// and moved the region past it, nothing in flight, and was killed before it
// signalled the call fd. The driver waits for that interrupt and adds
// nothing, so the next back-end signals once when it resumes the ring, or the
// guest hangs (CI, guest case f: "resuming at avail index 34 (0 requests in
// flight)", then no I/O until the timeout).
TEST(BackendInflightPacked, ResumedRingSignalsTheDriverForUsedEntriesItMayNotHaveSeen) {
  Handwritten h;
  fill_requests(h.guest, 1);
  add_request(*h.q, 0);
  ASSERT_THAT(h.guest.mem->write(request(0).dst, h.guest.read(request(0).src, request(0).len)), IsOk());
  write_used(h.guest, *h.q, 0, ring_desc(h.guest, *h.q, 1).id, request(0).len);
  set_header(*h.m, 8, 0, 2, 1);  // entries 0-1 back at the head of the free list
  ASSERT_EQ(h.start(kFresh), 0u);
  EXPECT_TRUE(wait_eventfd(h.call_fd.get(), 5000));  // no kick: the driver has nothing new
  auto a = h.q->get_used();
  ASSERT_TRUE(a.has_value() && a->has_value());
  EXPECT_EQ((*a)->cookie, 0u);
  EXPECT_EQ(h.dev.handled.load(), 0);  // completed once, by the dead back-end
  // The ring goes on from slot 2.
  fill_requests(h.guest, 2);
  add_request(*h.q, 1);
  kick(h.kick_fd);
  EXPECT_EQ(h.used_cookies(1), (std::vector<uint64_t>{1}));
  EXPECT_TRUE(echoed(h.guest, 1));
}

// A fresh region and the fresh base: a first start, no interrupt.
TEST(BackendInflightPacked, FreshRingDoesNotSignalAtStart) {
  Handwritten h;
  ASSERT_EQ(h.start(kFresh), 0u);
  EXPECT_FALSE(wait_eventfd(h.call_fd.get(), 200));
}

TEST(BackendInflightPacked, LeakedEntriesAreReclaimedIntoTheFreeList) {
  Handwritten h;
  // Version 1, nothing in flight, but the free list holds only entry 0: the
  // others belong nowhere. A chain of two descriptors needs two entries.
  set_header(*h.m, 8, 0, 0, 1);
  put<uint16_t>(h.m->desc(0) + in::kPackedDescNextOff, 8);
  fill_requests(h.guest, 6);
  ASSERT_EQ(h.start(kFresh), 0u);
  std::vector<uint64_t> got;
  for (uint64_t i = 0; i < 6; ++i) {
    add_request(*h.q, i);
    kick(h.kick_fd);
    auto one = h.used_cookies(1);
    ASSERT_EQ(one.size(), 1u);
    got.push_back(one[0]);
  }
  EXPECT_EQ(got, (std::vector<uint64_t>{0, 1, 2, 3, 4, 5}));
  for (uint64_t i = 0; i < 6; ++i) EXPECT_TRUE(echoed(h.guest, i)) << i;
}

// Each corruption of an otherwise valid region (A in flight at entries 0-1,
// free list 2..7) fails the request that starts the ring; the session goes on.
struct Corruption {
  const char* name;
  void (*apply)(const Mapped&);
};

const Corruption kCorruptions[] = {
    {"version 7", [](const Mapped& m) { put<uint16_t>(m.region() + in::kPackedVersionOff, 7); }},
    {"desc_num 64", [](const Mapped& m) { put<uint16_t>(m.region() + in::kPackedDescNumOff, 64); }},
    {"old_used_idx 8", [](const Mapped& m) { put<uint16_t>(m.region() + in::kPackedOldUsedIdxOff, 8); }},
    {"used wrap 2", [](const Mapped& m) { put<uint8_t>(m.region() + in::kPackedUsedWrapOff, 2); }},
    {"free list loop",
     [](const Mapped& m) { put<uint16_t>(m.desc(5) + in::kPackedDescNextOff, 3); }},
    {"num 0", [](const Mapped& m) { put<uint16_t>(m.desc(0) + in::kPackedDescChainNumOff, 0); }},
    {"num 9", [](const Mapped& m) { put<uint16_t>(m.desc(0) + in::kPackedDescChainNumOff, 9); }},
    {"chain leaves the table", [](const Mapped& m) { put<uint16_t>(m.desc(0) + in::kPackedDescNextOff, 300); }},
    {"chain runs into the free list", [](const Mapped& m) { put<uint16_t>(m.desc(0) + in::kPackedDescNextOff, 4); }},
    {"chain loops onto itself", [](const Mapped& m) {
       put<uint16_t>(m.desc(0) + in::kPackedDescNextOff, 0);
     }},
    {"last disagrees", [](const Mapped& m) { put<uint16_t>(m.desc(0) + in::kPackedDescLastOff, 6); }},
    {"copy without NEXT before the end", [](const Mapped& m) { put<uint16_t>(m.desc(0) + in::kPackedDescFlagsOff, 0); }},
    {"last copy with NEXT", [](const Mapped& m) { put<uint16_t>(m.desc(1) + in::kPackedDescFlagsOff, 1); }},
    {"buffer id 8", [](const Mapped& m) { put<uint16_t>(m.desc(1) + in::kPackedDescIdOff, 8); }},
};

TEST(BackendInflightPacked, HostileRegionsAreRejectedAtRingStart) {
  for (const Corruption& c : kCorruptions) {
    SCOPED_TRACE(c.name);
    Handwritten h;
    fill_requests(h.guest, 1);
    add_request(*h.q, 0);
    log_chain(h.guest, *h.q, *h.m, 0, {0, 1}, 0);
    set_header(*h.m, 8, 2, 0, 1);
    for (uint16_t e = 2; e < 8; ++e) put<uint16_t>(h.m->desc(e) + in::kPackedDescNextOff, uint16_t(e + 1));
    c.apply(*h.m);
    EXPECT_EQ(h.start(kFresh), 1u);
    EXPECT_EQ(h.dev.handled.load(), 0);
    EXPECT_EQ(h.fe.get_u64(R::kGetQueueNum), 1u);  // the session goes on
  }
}

TEST(BackendInflightPacked, UncorruptedControlRegionResumes) {
  // The region the corruptions start from, untouched: A is resubmitted.
  Handwritten h;
  fill_requests(h.guest, 1);
  add_request(*h.q, 0);
  log_chain(h.guest, *h.q, *h.m, 0, {0, 1}, 0);
  set_header(*h.m, 8, 2, 0, 1);
  for (uint16_t e = 2; e < 8; ++e) put<uint16_t>(h.m->desc(e) + in::kPackedDescNextOff, uint16_t(e + 1));
  ASSERT_EQ(h.start(kFresh), 0u);
  EXPECT_EQ(h.used_cookies(1), (std::vector<uint64_t>{0}));
  EXPECT_TRUE(echoed(h.guest, 0));
}

TEST(BackendInflightPacked, EqualAndHugeCountersAreOrderedByEntry) {
  Handwritten h;
  fill_requests(h.guest, 3);
  for (uint64_t i = 0; i < 3; ++i) add_request(*h.q, i);
  // Chains at entries 4-5 (slots 0-1), 0-1 (slots 2-3), 2-3 (slots 4-5); counters
  // UINT64_MAX, 5, 5: the ties go by entry, the maximum does not crash the counter.
  log_chain(h.guest, *h.q, *h.m, 0, {4, 5}, UINT64_MAX);
  log_chain(h.guest, *h.q, *h.m, 2, {0, 1}, 5);
  log_chain(h.guest, *h.q, *h.m, 4, {2, 3}, 5);
  set_header(*h.m, 8, 6, 0, 1);
  put<uint16_t>(h.m->desc(6) + in::kPackedDescNextOff, 7);
  put<uint16_t>(h.m->desc(7) + in::kPackedDescNextOff, 8);
  ASSERT_EQ(h.start(kFresh), 0u);
  EXPECT_EQ(h.used_cookies(3), (std::vector<uint64_t>{1, 2, 0}));
  expect_no_more_used(*h.q, h.call_fd);
  for (uint64_t i = 0; i < 3; ++i) EXPECT_TRUE(echoed(h.guest, i)) << i;
}

}  // namespace
}  // namespace vdma::vhost_user::testing
