// A hostile front-end against the real vdma-blk program (issue 11, "No
// front-end can crash it, wedge it, or make it spin"). Each case plays the
// hostile part with raw vhost-user messages over a real unix socket, then
// checks that
//   - the daemon is still alive (no SIGPIPE, no SIGBUS, no sanitizer abort),
//   - the hostile session ends when its front-end goes (bounded),
//   - a well-behaved front-end (the vdma front-end library, IOMMU mode)
//     then writes and reads back byte-exactly, with the host image checked,
//   - SIGTERM ends the daemon with status 0 within a few seconds.
// Every wait has a timeout, so a wedged daemon fails the case instead of
// hanging the suite.
#include <fcntl.h>
#include <linux/loop.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include <gmock/gmock.h>

#include "e2e_util.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/inflight.h"
#include "vdma/vhost_user/protocol.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"

namespace vdma::e2e {
namespace {

using namespace vdma::vhost_user;
using namespace std::chrono_literals;
using ::vdma::testing::IsOk;
using R = FrontendRequest;

constexpr uint64_t kDiskSize = 8 << 20;
constexpr int kReplyTimeoutMs = 5000;
constexpr uint64_t kUserBase = 0x7f3400000000;  // where the hostile front-end "maps" its memory
constexpr uint64_t kRamSize = 1 << 20;
constexpr uint64_t kRingWindow = 0x80000;  // [0x80000, 0xc0000): ring memory
constexpr uint16_t kQueueSize = 8;

constexpr uint64_t bit(unsigned b) { return uint64_t{1} << b; }
constexpr uint64_t kBypassFeatures = bit(kFeatureVersion1) | bit(kFeatureProtocolFeatures);
constexpr uint64_t kIommuFeatures = kBypassFeatures | bit(kFeatureAccessPlatform);
constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureBackendReq) |
                               protocol_feature_bit(kProtocolFeatureInflightShmfd);

UniqueFd connect_unix(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return UniqueFd();
  return fd;
}

bool readable_within(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

// A front-end that speaks raw vhost-user and never waits without a timeout.
class RawFrontend {
 public:
  explicit RawFrontend(UniqueFd fd) : fd_(std::move(fd)) {}
  [[nodiscard]] int fd() const { return fd_.get(); }
  void close() { fd_.reset(); }

  bool send(const Message& m) {
    // A daemon that stopped reading must fail the case, not hang it.
    pollfd p{fd_.get(), POLLOUT, 0};
    if (::poll(&p, 1, kReplyTimeoutMs) != 1) return false;
    return send_message(fd_.get(), Channel::kMain, m).has_value();
  }
  std::optional<Message> recv(int timeout_ms = kReplyTimeoutMs) {
    if (!readable_within(fd_.get(), timeout_ms)) return std::nullopt;
    Message m;
    if (!recv_message(fd_.get(), Channel::kMain, m)) return std::nullopt;
    return m;
  }
  // The REPLY_ACK status of `m`; nullopt when no reply came in time (or the
  // back-end closed the connection).
  std::optional<uint64_t> acked(Message m, int timeout_ms = kReplyTimeoutMs) {
    m.set_need_reply(true);
    if (!send(m)) return std::nullopt;
    auto reply = recv(timeout_ms);
    if (!reply || reply->size() != 8) return std::nullopt;
    return reply->read_payload<uint64_t>();
  }
  std::optional<uint64_t> get_u64(R r) {
    if (!send(encode_request(r))) return std::nullopt;
    auto reply = recv();
    if (!reply) return std::nullopt;
    auto v = parse_u64_reply(*reply, r);
    return v ? std::optional<uint64_t>(*v) : std::nullopt;
  }
  // The u64 status reply of an IOTLB_MSG.
  std::optional<uint64_t> iotlb(const Message& m) {
    if (!send(m)) return std::nullopt;
    auto reply = recv();
    if (!reply || reply->size() != 8) return std::nullopt;
    return reply->read_payload<uint64_t>();
  }
  void negotiate(uint64_t features, uint64_t protocol = kProtocol) {
    ASSERT_EQ(get_u64(R::kGetFeatures).value_or(0) & features, features);
    ASSERT_EQ(get_u64(R::kGetProtocolFeatures).value_or(0) & protocol, protocol);
    ASSERT_TRUE(send(encode_u64_request(R::kSetProtocolFeatures, protocol)));
    ASSERT_EQ(acked(encode_request(R::kSetOwner)), 0u);
    ASSERT_EQ(acked(encode_u64_request(R::kSetFeatures, features)), 0u);
  }
  // True when the back-end closes the connection within `timeout_ms`.
  bool closed_by_backend(int timeout_ms = kReplyTimeoutMs) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      if (!readable_within(fd_.get(), 100)) continue;
      Message m;
      auto r = recv_message(fd_.get(), Channel::kMain, m);
      if (!r) return r.error().is(VhostUserErrc::kPeerClosed);
    }
    return false;
  }

 private:
  UniqueFd fd_;
};

// Guest memory in this process, shared with the daemon by memfd, with a
// split driver queue whose rings live in it: enough to push virtio-blk
// requests through a ring by hand.
struct HandDriver {
  std::unique_ptr<GuestMemory> mem;
  std::unique_ptr<IdentityDmaOps> dma;
  std::unique_ptr<DriverQueue> q;

  HandDriver() {
    auto m = GuestMemory::create({RegionSpec{Gpa{0}, kRamSize, MemAttr::kShared, "ram"}});
    EXPECT_THAT(m, IsOk());
    mem = std::move(*m);
    dma = std::make_unique<IdentityDmaOps>(*mem, AddrRange<Gpa>{Gpa{kRingWindow}, 0x40000});
    auto dq = make_driver_queue(RingFormat::kSplit, *dma,
                                QueueConfig{.size = kQueueSize, .features = bit(kFeatureVersion1), .max_indirect = 0});
    EXPECT_THAT(dq, IsOk());
    q = std::move(*dq);
  }
  [[nodiscard]] MemoryRegion region() const { return {DmaAddr(0), kRamSize, FrontVa(kUserBase), 0}; }
  // SET_MEM_TABLE with the RAM region.
  std::optional<uint64_t> share(RawFrontend& fe) {
    const MemoryRegion r = region();
    std::array<UniqueFd, 1> fds{*UniqueFd::duplicate(mem->regions()[0].fd())};
    return fe.acked(encode_mem_table(std::span<const MemoryRegion>(&r, 1), fds));
  }
  // SET_VRING_NUM, _BASE and _ADDR of vring 0 (user addresses, or IOVAs
  // equal to the guest addresses).
  void configure(RawFrontend& fe, bool iova) {
    ASSERT_EQ(fe.acked(encode_vring_state(R::kSetVringNum, {0, kQueueSize})), 0u);
    ASSERT_EQ(fe.acked(encode_vring_state(R::kSetVringBase, {0, 0})), 0u);
    const RingAddresses ra = q->ring_addresses();
    const uint64_t off = iova ? 0 : kUserBase;
    VringAddress a;
    a.index = 0;
    a.desc = RingAddr(ra.desc.value() + off);
    a.avail = RingAddr(ra.driver.value() + off);
    a.used = RingAddr(ra.device.value() + off);
    ASSERT_EQ(fe.acked(encode_vring_addr(a)), 0u);
  }
  // One virtio-blk write of 512 bytes of `fill` to `sector`.
  void add_write(uint64_t sector, uint8_t fill, uint64_t cookie) {
    std::array<std::byte, 16> hdr{};
    const uint32_t type = blk::kBlkTypeOut;
    std::memcpy(hdr.data(), &type, 4);
    std::memcpy(hdr.data() + 8, &sector, 8);
    ASSERT_THAT(mem->write(Gpa{0x1000}, hdr), IsOk());
    std::vector<std::byte> data(512, std::byte{fill});
    ASSERT_THAT(mem->write(Gpa{0x2000}, data), IsOk());
    const std::array<std::byte, 1> status{std::byte{0xff}};
    ASSERT_THAT(mem->write(Gpa{0x3000}, status), IsOk());
    const DriverSegment segs[3] = {{Gpa{0x1000}, 16, BufferType::kDeviceReadable, false, DmaAddr{}},
                                   {Gpa{0x2000}, 512, BufferType::kDeviceReadable, false, DmaAddr{}},
                                   {Gpa{0x3000}, 1, BufferType::kDeviceWritable, false, DmaAddr{}}};
    ASSERT_THAT(q->add(segs, cookie), IsOk());
  }
  // Polls the used ring (no call eventfd needed) for up to 5 s.
  std::optional<UsedBuffer> wait_used() {
    for (int i = 0; i < 500; ++i) {
      auto u = q->get_used();
      if (!u) return std::nullopt;
      if (*u) return **u;
      std::this_thread::sleep_for(10ms);
    }
    return std::nullopt;
  }
  uint8_t status_byte() {
    std::array<std::byte, 1> s{};
    EXPECT_THAT(mem->read(Gpa{0x3000}, s), IsOk());
    return static_cast<uint8_t>(s[0]);
  }
};

void write_eventfd(int fd, uint64_t v) { [[maybe_unused]] const ssize_t n = ::write(fd, &v, sizeof v); }

// CPU time (user + system) of `pid` in clock ticks.
uint64_t cpu_ticks(pid_t pid) {
  const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  // Fields after the ")" that ends the command name: state is field 3,
  // utime 14 and stime 15.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  uint64_t utime = 0;
  uint64_t stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return utime + stime;
}

class HostileFrontend : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }

  void start(std::vector<std::string> extra) {
    image_ = make_image(dir_, kDiskSize);
    socket_ = dir_.file("blk.sock");
    std::vector<std::string> argv = {vdma_blk_binary(), "--socket-path", socket_, "--blk-file", image_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto be = spawn_backend(argv, socket_);
    ASSERT_THAT(be, IsOk());
    backend_.emplace(std::move(*be));
    hostile_.emplace(backend_->take_connection());
  }
  // Restarts the daemon with extra arguments (e.g. a quieter log level).
  void restart(std::vector<std::string> extra) {
    hostile_.reset();
    (void)backend_->stop();
    backend_.reset();
    start(std::move(extra));
  }

  RawFrontend& fe() { return *hostile_; }
  [[nodiscard]] pid_t pid() const { return backend_->pid(); }

  void expect_alive() {
    int status = 0;
    const pid_t r = ::waitpid(pid(), &status, WNOHANG);
    ASSERT_EQ(r, 0) << "vdma-blk " << describe_wait_status(status);
  }

  // The daemon answers a new front-end within a bound: it ended the hostile
  // session and went back to accepting.
  void expect_accepts_again() {
    const auto start = std::chrono::steady_clock::now();
    RawFrontend probe(connect_unix(socket_));
    ASSERT_GE(probe.fd(), 0);
    auto features = probe.get_u64(R::kGetFeatures);
    ASSERT_TRUE(features.has_value()) << "vdma-blk did not answer a new front-end within 5 s: wedged";
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  }

  // A well-behaved front-end writes and reads back byte-exactly, and the
  // bytes are on the host image.
  void expect_serves_well_behaved(DmaMode mode = DmaMode::kIommuStrict) {
    expect_accepts_again();
    if (::testing::Test::HasFatalFailure()) return;
    auto fe = VhostUserFrontend::create(connect_unix(socket_), frontend_options(mode));
    ASSERT_THAT(fe, IsOk());
    auto drv = blk::BlkDriver::create(**fe, {.queue_depth = 4, .max_io_bytes = 64 << 10});
    ASSERT_THAT(drv, IsOk());
    std::vector<std::byte> data(12288);
    for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte(static_cast<uint8_t>(i * 13 + ++salt_));
    const uint64_t sector = 24 + salt_ % 64;
    ASSERT_THAT((*drv)->write(0, sector, data), IsOk());
    ASSERT_THAT((*drv)->flush(0), IsOk());
    std::vector<std::byte> back(data.size());
    ASSERT_THAT((*drv)->read(0, sector, back), IsOk());
    EXPECT_EQ(back, data) << "read back";
    EXPECT_EQ(read_image(image_, sector * 512, data.size()), data) << "host image";
  }

  // SIGTERM ends the daemon with status 0 within a few seconds.
  void expect_sigterm_exits_cleanly() {
    const auto start = std::chrono::steady_clock::now();
    auto status = backend_->stop(10s);  // SIGKILL after 10 s
    ASSERT_THAT(status, IsOk());
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "vdma-blk " << describe_wait_status(*status);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s) << "SIGTERM took too long";
  }

  // The common end of every case: the hostile front-end goes away, the
  // daemon survived it and serves a good one, then stops on SIGTERM.
  void finish() {
    expect_alive();
    hostile_.reset();
    expect_serves_well_behaved();
    expect_alive();
    expect_sigterm_exits_cleanly();
  }

  ScratchDir dir_;
  std::string image_;
  std::string socket_;
  std::optional<BackendProcess> backend_;
  std::optional<RawFrontend> hostile_;
  unsigned salt_ = 0;
};

// --- Notification fds ----------------------------------------------------------

TEST_F(HostileFrontend, PipeAsCallOrErrFdIsRefusedAndCannotRaiseSigpipe) {
  fe().negotiate(kBypassFeatures);
  int p[2] = {-1, -1};
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  UniqueFd rd(p[0]);
  UniqueFd wr(p[1]);
  rd.reset();  // the reader is gone: a write would raise SIGPIPE
  EXPECT_EQ(fe().acked(encode_vring_file(R::kSetVringCall, 0, *UniqueFd::duplicate(wr.get()))), 1u);
  EXPECT_EQ(fe().acked(encode_vring_file(R::kSetVringErr, 0, *UniqueFd::duplicate(wr.get()))), 1u);
  // The session goes on: an eventfd is accepted.
  EXPECT_EQ(fe().acked(encode_vring_file(R::kSetVringCall, 0, UniqueFd(::eventfd(0, EFD_CLOEXEC)))), 0u);
  finish();
}

TEST_F(HostileFrontend, FullPipeAsErrFdIsRefused) {
  fe().negotiate(kBypassFeatures);
  int p[2] = {-1, -1};
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  UniqueFd rd(p[0]);
  UniqueFd wr(p[1]);
  std::vector<char> junk(65536, 'x');
  while (::write(wr.get(), junk.data(), junk.size()) > 0) {
  }
  ASSERT_EQ(::fcntl(wr.get(), F_SETFL, 0), 0);  // blocking: a write by the daemon would hang it
  EXPECT_EQ(fe().acked(encode_vring_file(R::kSetVringErr, 0, *UniqueFd::duplicate(wr.get()))), 1u);
  // SET_MEM_TABLE signals the err fd of a ring that cannot restart.
  HandDriver d;
  EXPECT_EQ(d.share(fe()), 0u);
  finish();
}

// A blocking eventfd at its maximum count as call fd: the worker's write
// after a completion would block forever, and stop_worker() with it.
TEST_F(HostileFrontend, BlockingEventfdAtMaxCountAsCallFdDoesNotWedgeTheWorker) {
  fe().negotiate(kBypassFeatures);
  HandDriver d;
  ASSERT_EQ(d.share(fe()), 0u);
  d.configure(fe(), false);
  UniqueFd call(::eventfd(0, EFD_CLOEXEC));  // blocking
  write_eventfd(call.get(), 0xfffffffffffffffe);
  ASSERT_EQ(fe().acked(encode_vring_file(R::kSetVringCall, 0, *UniqueFd::duplicate(call.get()))), 0u);
  // The daemon made the (shared) file description non-blocking.
  EXPECT_NE(::fcntl(call.get(), F_GETFL) & O_NONBLOCK, 0);
  UniqueFd kick(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_EQ(fe().acked(encode_vring_file(R::kSetVringKick, 0, *UniqueFd::duplicate(kick.get()))), 0u);
  ASSERT_EQ(fe().acked(encode_vring_state(R::kSetVringEnable, {0, 1})), 0u);
  for (uint64_t i = 0; i < 3; ++i) {
    d.add_write(100 + i, static_cast<uint8_t>(0x40 + i), i);
    write_eventfd(kick.get(), 1);
    auto used = d.wait_used();
    ASSERT_TRUE(used.has_value()) << "request " << i << " never completed";
    EXPECT_EQ(d.status_byte(), blk::kBlkStatusOk);
    EXPECT_EQ(read_image(image_, (100 + i) * 512, 512), std::vector<std::byte>(512, std::byte(0x40 + i)));
  }
  // GET_VRING_BASE joins the worker: it must not be stuck writing the call fd.
  ASSERT_TRUE(fe().send(encode_vring_state(R::kGetVringBase, {0, 0})));
  auto reply = fe().recv();
  ASSERT_TRUE(reply.has_value()) << "GET_VRING_BASE got no answer: the worker is wedged";
  auto base = parse_vring_base_reply(*reply, 0);
  ASSERT_THAT(base, IsOk());
  EXPECT_EQ(base->num, 3u);
  finish();
}

// A kick eventfd the front-end drains itself, racing the worker between its
// poll and its read: a blocking read there would wedge the worker.
TEST_F(HostileFrontend, KickEventfdDrainedByTheFrontendDoesNotWedgeTheWorker) {
  fe().negotiate(kBypassFeatures);
  HandDriver d;
  ASSERT_EQ(d.share(fe()), 0u);
  d.configure(fe(), false);
  UniqueFd kick(::eventfd(0, EFD_CLOEXEC));  // blocking
  ASSERT_EQ(fe().acked(encode_vring_file(R::kSetVringCall, 0, UniqueFd(::eventfd(0, EFD_CLOEXEC)))), 0u);
  ASSERT_EQ(fe().acked(encode_vring_file(R::kSetVringKick, 0, *UniqueFd::duplicate(kick.get()))), 0u);
  ASSERT_NE(::fcntl(kick.get(), F_GETFL) & O_NONBLOCK, 0) << "the kick fd was left blocking";
  ASSERT_EQ(fe().acked(encode_vring_state(R::kSetVringEnable, {0, 1})), 0u);
  for (int i = 0; i < 20000; ++i) {
    write_eventfd(kick.get(), 1);
    uint64_t v = 0;
    [[maybe_unused]] const ssize_t n = ::read(kick.get(), &v, sizeof v);  // non-blocking now
  }
  d.add_write(200, 0x5a, 1);
  write_eventfd(kick.get(), 1);
  ASSERT_TRUE(d.wait_used().has_value()) << "the worker stopped serving its ring";
  ASSERT_TRUE(fe().send(encode_vring_state(R::kGetVringBase, {0, 0})));
  ASSERT_TRUE(fe().recv().has_value()) << "GET_VRING_BASE got no answer: the worker is wedged";
  finish();
}

// Always-readable kick fds would spin the worker at 100% CPU; a semaphore
// eventfd stays readable for as many reads as its count.
TEST_F(HostileFrontend, AlwaysReadableKickFdsAreRefusedAndNothingSpins) {
  fe().negotiate(kBypassFeatures);
  HandDriver d;
  ASSERT_EQ(d.share(fe()), 0u);
  d.configure(fe(), false);
  ASSERT_EQ(fe().acked(encode_vring_file(R::kSetVringCall, 0, UniqueFd(::eventfd(0, EFD_CLOEXEC)))), 0u);
  ASSERT_EQ(fe().acked(encode_vring_state(R::kSetVringEnable, {0, 1})), 0u);

  UniqueFd zero(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(zero.valid());
  EXPECT_EQ(fe().acked(encode_vring_file(R::kSetVringKick, 0, std::move(zero))), 1u);
  const std::string path = dir_.file("kick-file");
  UniqueFd file(::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600));
  ASSERT_EQ(::write(file.get(), "01234567", 8), 8);
  EXPECT_EQ(fe().acked(encode_vring_file(R::kSetVringKick, 0, std::move(file))), 1u);
  UniqueFd sem(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE));
  write_eventfd(sem.get(), 0xfffffffffffffffe);
  EXPECT_EQ(fe().acked(encode_vring_file(R::kSetVringKick, 0, std::move(sem))), 1u);

  const uint64_t before = cpu_ticks(pid());
  std::this_thread::sleep_for(1s);
  const uint64_t used = cpu_ticks(pid()) - before;
  EXPECT_LT(used, static_cast<uint64_t>(::sysconf(_SC_CLK_TCK)) / 5) << "vdma-blk used CPU while idle (ticks)";
  finish();
}

// --- The back-end channel ------------------------------------------------------

// The front-end never reads the back-end channel while the ring keeps
// failing its permission check: each IOTLB UPDATE wakes the worker, which
// sends one more ACCESS_FAIL. The old back-end blocked in sendmsg after
// about 280 of them, holding the channel lock, and GET_VRING_BASE joined it
// forever.
TEST_F(HostileFrontend, BackendChannelNeverReadDoesNotWedgeGetVringBase) {
  restart({"--log-level", "error"});  // thousands of "cannot send ACCESS_FAIL" warnings otherwise
  fe().negotiate(kIommuFeatures);
  auto pair = make_socket_pair();
  ASSERT_THAT(pair, IsOk());
  UniqueFd never_read = std::move((*pair)[0]);
  const int small = 1;
  ASSERT_EQ(::setsockopt(never_read.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
  ASSERT_EQ(fe().acked(encode_fd_request(R::kSetBackendReqFd, std::move((*pair)[1]))), 0u);
  HandDriver d;
  ASSERT_EQ(d.share(fe()), 0u);
  d.configure(fe(), true);
  // The rings' IOVAs (= guest addresses) mapped read-only: the used ring
  // needs write access, so creating the queue fails with ACCESS_FAIL.
  const Message update = encode_iotlb_update(Iova{kRingWindow}, 0x40000, FrontVa{kUserBase + kRingWindow},
                                             IotlbPerm::kRead);
  ASSERT_EQ(fe().iotlb(update), 0u);
  ASSERT_EQ(fe().acked(encode_vring_file(R::kSetVringCall, 0, UniqueFd(::eventfd(0, EFD_CLOEXEC)))), 0u);
  ASSERT_EQ(fe().acked(encode_vring_file(R::kSetVringKick, 0, UniqueFd(::eventfd(0, EFD_CLOEXEC)))), 0u);
  ASSERT_EQ(fe().acked(encode_vring_state(R::kSetVringEnable, {0, 1})), 0u);
  for (int i = 0; i < 2000; ++i) {
    ASSERT_EQ(fe().iotlb(update), 0u) << "UPDATE " << i;
    if (i % 100 == 0) std::this_thread::sleep_for(1ms);  // let the worker run
  }
  // Something really was sent and not read.
  int queued = 0;
  ASSERT_EQ(::ioctl(never_read.get(), FIONREAD, &queued), 0);
  EXPECT_GT(queued, 0);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(fe().send(encode_vring_state(R::kGetVringBase, {0, 0})));
  ASSERT_TRUE(fe().recv().has_value()) << "GET_VRING_BASE got no answer: a worker is stuck on the channel";
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  // The channel is still in step: whatever arrived is whole ACCESS_FAIL messages.
  ASSERT_EQ(::fcntl(never_read.get(), F_SETFL, O_NONBLOCK), 0);
  int whole = 0;
  while (readable_within(never_read.get(), 0)) {
    Message m;
    ASSERT_THAT(recv_message(never_read.get(), Channel::kBackend, m), IsOk());
    auto v = validate_backend_request(m);
    ASSERT_THAT(v, IsOk());
    EXPECT_EQ(v->as<IotlbMessage>().type, IotlbType::kAccessFail);
    ++whole;
  }
  // The flood reached the point where the old back-end blocked (the socket
  // holds about 280 of them), so this case exercises the full channel.
  EXPECT_GE(whole, 250);
  finish();
}

// --- Memory regions ------------------------------------------------------------

TEST_F(HostileFrontend, CharacterDeviceAsRegionFdIsRefused) {
  fe().negotiate(kBypassFeatures);
  const MemoryRegion r{DmaAddr(0), kRamSize, FrontVa(kUserBase), 0};
  std::array<UniqueFd, 1> fds{UniqueFd(::open("/dev/zero", O_RDWR | O_CLOEXEC))};
  ASSERT_TRUE(fds[0].valid());
  EXPECT_EQ(fe().acked(encode_mem_table(std::span<const MemoryRegion>(&r, 1), fds)), 1u);
  finish();
}

// A loop device over a 64 KiB file, claimed as a 1 MiB region: touching the
// mapping past 64 KiB would raise SIGBUS.
TEST_F(HostileFrontend, BlockDeviceSmallerThanItsRegionIsRefused) {
  const std::string backing = dir_.file("small.img");
  UniqueFd file(::open(backing.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600));
  ASSERT_EQ(::ftruncate(file.get(), 64 << 10), 0);
  UniqueFd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  const int n = control ? ::ioctl(control.get(), LOOP_CTL_GET_FREE) : -1;
  UniqueFd loop;
  if (n >= 0) loop = UniqueFd(::open(("/dev/loop" + std::to_string(n)).c_str(), O_RDWR | O_CLOEXEC));
  if (!loop || ::ioctl(loop.get(), LOOP_SET_FD, file.get()) != 0) {
    GTEST_SKIP() << "no loop device available here (" << std::strerror(errno) << ")";
  }
  struct Detach {
    int fd;
    ~Detach() { ::ioctl(fd, LOOP_CLR_FD, 0); }
  } detach{loop.get()};
  fe().negotiate(kBypassFeatures);
  const MemoryRegion r{DmaAddr(0), kRamSize, FrontVa(kUserBase), 0};
  std::array<UniqueFd, 1> fds{*UniqueFd::duplicate(loop.get())};
  EXPECT_EQ(fe().acked(encode_mem_table(std::span<const MemoryRegion>(&r, 1), fds)), 1u);
  // The same device within its size is fine.
  const MemoryRegion fits{DmaAddr(0), 64 << 10, FrontVa(kUserBase), 0};
  std::array<UniqueFd, 1> fds2{*UniqueFd::duplicate(loop.get())};
  EXPECT_EQ(fe().acked(encode_mem_table(std::span<const MemoryRegion>(&fits, 1), fds2)), 0u);
  finish();
}

// What is guaranteed for guest memory: a memfd that allows sealing is sealed
// against shrinking when the table is set, so the hostile truncate fails.
TEST_F(HostileFrontend, SealableMemfdRegionCannotBeTruncatedAfterSetMemTable) {
  fe().negotiate(kBypassFeatures);
  UniqueFd memfd(::memfd_create("hostile-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  ASSERT_EQ(::ftruncate(memfd.get(), kRamSize), 0);
  const MemoryRegion r{DmaAddr(0), kRamSize, FrontVa(kUserBase), 0};
  std::array<UniqueFd, 1> fds{*UniqueFd::duplicate(memfd.get())};
  ASSERT_EQ(fe().acked(encode_mem_table(std::span<const MemoryRegion>(&r, 1), fds)), 0u);
  EXPECT_NE(::fcntl(memfd.get(), F_GET_SEALS) & F_SEAL_SHRINK, 0);
  errno = 0;
  EXPECT_EQ(::ftruncate(memfd.get(), 4096), -1);
  EXPECT_EQ(errno, EPERM);
  // Growing is still the front-end's business.
  EXPECT_EQ(::ftruncate(memfd.get(), 2 * kRamSize), 0);
  finish();
}

// A region shorter than it claims is refused before it is mapped.
TEST_F(HostileFrontend, MemfdShorterThanItsRegionIsRefused) {
  fe().negotiate(kBypassFeatures);
  UniqueFd memfd(::memfd_create("hostile-short", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(memfd.get(), 4096), 0);
  const MemoryRegion r{DmaAddr(0), kRamSize, FrontVa(kUserBase), 0};
  std::array<UniqueFd, 1> fds{std::move(memfd)};
  EXPECT_EQ(fe().acked(encode_mem_table(std::span<const MemoryRegion>(&r, 1), fds)), 1u);
  finish();
}

// --- Inflight areas -------------------------------------------------------------

std::optional<std::pair<InflightArea, UniqueFd>> get_inflight(RawFrontend& fe, uint16_t queues, uint16_t size) {
  if (!fe.send(encode_inflight_request(R::kGetInflightFd, InflightArea{0, 0, queues, size}, UniqueFd()))) {
    return std::nullopt;
  }
  auto reply = fe.recv();
  if (!reply) return std::nullopt;
  auto a = parse_inflight_reply(*reply);
  if (!a) return std::nullopt;
  return std::make_pair(*a, reply->take_fd(0));
}

TEST_F(HostileFrontend, InflightAreaCannotBeTruncatedAfterGetInflightFd) {
  fe().negotiate(kBypassFeatures);
  auto got = get_inflight(fe(), 1, 128);
  ASSERT_TRUE(got.has_value());
  auto& [area, fd] = *got;
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  errno = 0;
  EXPECT_EQ(::ftruncate(fd.get(), 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(fe().acked(encode_inflight_request(R::kSetInflightFd, area, std::move(fd))), 0u);
  finish();
}

TEST_F(HostileFrontend, SetInflightFdRefusesMisalignedOffsetsAndUnsealableFds) {
  fe().negotiate(kBypassFeatures);
  const uint64_t need = inflight_queue_region_size(RingFormat::kSplit, 128);
  UniqueFd sealable(::memfd_create("hostile-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  ASSERT_EQ(::ftruncate(sealable.get(), 8192), 0);
  // mmap_offset = 1: the area's atomics would be misaligned.
  EXPECT_EQ(fe().acked(encode_inflight_request(R::kSetInflightFd, InflightArea{need, 1, 1, 128},
                                               *UniqueFd::duplicate(sealable.get()))),
            1u);
  // A memfd without MFD_ALLOW_SEALING could be truncated under the mapping.
  UniqueFd unsealable(::memfd_create("hostile-inflight", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(unsealable.get(), 8192), 0);
  EXPECT_EQ(fe().acked(encode_inflight_request(R::kSetInflightFd, InflightArea{need, 0, 1, 128},
                                               std::move(unsealable))),
            1u);
  // A regular file, neither.
  const std::string path = dir_.file("inflight-file");
  UniqueFd file(::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600));
  ASSERT_EQ(::ftruncate(file.get(), 8192), 0);
  EXPECT_EQ(fe().acked(encode_inflight_request(R::kSetInflightFd, InflightArea{need, 0, 1, 128}, std::move(file))),
            1u);
  // A sealable memfd at offset 0 is accepted, and sealed now.
  EXPECT_EQ(fe().acked(encode_inflight_request(R::kSetInflightFd, InflightArea{need, 0, 1, 128},
                                               *UniqueFd::duplicate(sealable.get()))),
            0u);
  EXPECT_EQ(::ftruncate(sealable.get(), 0), -1);
  finish();
}

TEST_F(HostileFrontend, GetInflightFdIsBoundedByTheDevicesQueues) {
  fe().negotiate(kBypassFeatures);
  // 256 queues of 32768 for a one-queue device: refused (the connection
  // closes, GET_INFLIGHT_FD has no failure reply).
  ASSERT_TRUE(fe().send(encode_inflight_request(R::kGetInflightFd, InflightArea{0, 0, 256, 32768}, UniqueFd())));
  EXPECT_TRUE(fe().closed_by_backend());
  expect_alive();
  // Within the device's queues, many requests in a row are fine.
  hostile_.emplace(connect_unix(socket_));
  fe().negotiate(kBypassFeatures | bit(kFeatureRingPacked));
  std::vector<UniqueFd> kept;
  for (int i = 0; i < 20; ++i) {
    auto got = get_inflight(fe(), 1, 32768);
    ASSERT_TRUE(got.has_value()) << "request " << i;
    EXPECT_EQ(got->first.num_queues, 1u);
    kept.push_back(std::move(got->second));
  }
  finish();
}

// --- The main socket -------------------------------------------------------------

// Requests sent without ever reading a reply: the daemon blocks sending
// them. Disconnect must end that session, and SIGTERM the daemon.
TEST_F(HostileFrontend, FrontendThatNeverReadsRepliesCannotWedgeTheDaemon) {
  const Message get = encode_request(R::kGetFeatures);
  auto flood = [&](int fd) {
    const WireHeader h = get.header();
    size_t sent = 0;
    const auto deadline = std::chrono::steady_clock::now() + 2s;
    while (std::chrono::steady_clock::now() < deadline) {
      const ssize_t n = ::send(fd, &h, sizeof h, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n == static_cast<ssize_t>(sizeof h)) {
        sent += sizeof h;
        continue;
      }
      // Only whole headers go out (a short send would leave the stream
      // out of step, which the daemon must survive too, but is not the point).
      if (n > 0) break;
      std::this_thread::sleep_for(10ms);
    }
    return sent;
  };
  EXPECT_GT(flood(fe().fd()), 0u);
  expect_alive();
  hostile_.reset();  // disconnect while the daemon is stuck sending
  expect_serves_well_behaved();
  // Again, and this time SIGTERM while it is stuck; a second front-end waits
  // half-way through a message.
  RawFrontend again(connect_unix(socket_));
  EXPECT_GT(flood(again.fd()), 0u);
  expect_alive();
  expect_sigterm_exits_cleanly();
}

TEST_F(HostileFrontend, FrontendStalledInsideAMessageCannotBlockSigterm) {
  fe().negotiate(kBypassFeatures);
  const Message m = encode_request(R::kGetFeatures);
  const WireHeader h = m.header();
  ASSERT_EQ(::send(fe().fd(), &h, 6, MSG_NOSIGNAL), 6);  // half a header, then nothing
  std::this_thread::sleep_for(100ms);
  expect_alive();
  expect_sigterm_exits_cleanly();
}

}  // namespace
}  // namespace vdma::e2e
