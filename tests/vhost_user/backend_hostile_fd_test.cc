// Hostile fds handed to the back-end (issue 11): notification fds that are
// not eventfds, region fds without a checkable size, inflight fds that could
// shrink, and GET_INFLIGHT_FD beyond the device's queues. Exact error codes
// at the function that refuses, then the session's answer (an error reply
// and a session that goes on, or a closed connection).
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "../../src/vhost_user/notification_fd.h"
#include "backend_test_util.h"
#include "result_matchers.h"
#include "vdma/vhost_user/backend_memory.h"
#include "vdma/vhost_user/inflight.h"

namespace vdma::vhost_user::testing {
namespace {

using ::testing::HasSubstr;
using ::vdma::testing::IsErrorWith;
using R = FrontendRequest;

constexpr uint64_t kFeatures = bit(kFeatureVersion1) | bit(kFeatureProtocolFeatures);
constexpr uint64_t kProtocol = protocol_feature_bit(kProtocolFeatureReplyAck) |
                               protocol_feature_bit(kProtocolFeatureInflightShmfd);

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};
Pipe make_pipe() {
  int p[2] = {-1, -1};
  EXPECT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  return {UniqueFd(p[0]), UniqueFd(p[1])};
}

UniqueFd memfd(const char* name, unsigned flags, off_t size) {
  UniqueFd fd(::memfd_create(name, MFD_CLOEXEC | flags));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), size), 0);
  return fd;
}

// --- Notification fds -------------------------------------------------------------

TEST(NotificationFd, APipeIsRefusedNamingTheVringAndTheFdKind) {
  Pipe p = make_pipe();
  EXPECT_THAT(check_notification_fd(p.write.get(), R::kSetVringCall, 3),
              IsErrorWith(VhostUserErrc::kBadField,
                          AllOf(HasSubstr("SET_VRING_CALL: vring 3: the call fd"), HasSubstr("pipe:["),
                                HasSubstr("not an eventfd"))));
  EXPECT_THAT(check_notification_fd(p.write.get(), R::kSetVringErr, 0),
              IsErrorWith(VhostUserErrc::kBadField, HasSubstr("the err fd")));
}

TEST(NotificationFd, DevZeroARegularFileAndASemaphoreEventfdAreRefusedAsKick) {
  UniqueFd zero(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
  EXPECT_THAT(check_notification_fd(zero.get(), R::kSetVringKick, 0),
              IsErrorWith(VhostUserErrc::kBadField, AllOf(HasSubstr("the kick fd"), HasSubstr("/dev/zero"))));
  UniqueFd file = memfd("not-an-eventfd", 0, 8);
  EXPECT_THAT(check_notification_fd(file.get(), R::kSetVringKick, 0),
              IsErrorWith(VhostUserErrc::kBadField, HasSubstr("memfd:not-an-eventfd")));
  UniqueFd sem(::eventfd(5, EFD_CLOEXEC | EFD_SEMAPHORE));
  EXPECT_THAT(check_notification_fd(sem.get(), R::kSetVringKick, 1),
              IsErrorWith(VhostUserErrc::kBadField, HasSubstr("semaphore eventfd")));
  // As a call fd a semaphore eventfd is harmless: the back-end only writes it.
  EXPECT_THAT(check_notification_fd(sem.get(), R::kSetVringCall, 1), IsOk());
}

TEST(NotificationFd, AnAcceptedEventfdIsMadeNonBlocking) {
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
  ASSERT_EQ(::fcntl(efd.get(), F_GETFL) & O_NONBLOCK, 0);
  ASSERT_THAT(check_notification_fd(efd.get(), R::kSetVringCall, 0), IsOk());
  EXPECT_NE(::fcntl(efd.get(), F_GETFL) & O_NONBLOCK, 0);
  // At its maximum count a write now fails at once instead of blocking.
  const uint64_t max = 0xfffffffffffffffe;
  ASSERT_EQ(::write(efd.get(), &max, sizeof max), static_cast<ssize_t>(sizeof max));
  const uint64_t one = 1;
  errno = 0;
  EXPECT_EQ(::write(efd.get(), &one, sizeof one), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST(NotificationFd, TheSessionRefusesAPipeAndGoesOn) {
  EchoDevice dev(1);
  StubFrontend fe(dev);
  fe.negotiate(kFeatures, kProtocol);
  Pipe p = make_pipe();
  EXPECT_EQ(fe.acked(encode_vring_file(R::kSetVringCall, 0, std::move(p.write))), 1u);
  EXPECT_EQ(fe.acked(encode_vring_file(R::kSetVringCall, 0, make_eventfd())), 0u);
}

// --- Memory region fds -------------------------------------------------------------

MemoryRegion region(uint64_t size, uint64_t offset = 0) {
  return MemoryRegion{DmaAddr(0x100000), size, FrontVa(kUserBase), offset};
}

TEST(RegionFd, ACharacterDeviceOrAPipeIsRefused) {
  UniqueFd zero(::open("/dev/zero", O_RDWR | O_CLOEXEC));
  EXPECT_THAT(BackendRegion::map(region(0x10000), zero.get()),
              IsErrorWith(MemErrc::kInvalidRegion, HasSubstr("a character device")));
  Pipe p = make_pipe();
  EXPECT_THAT(BackendRegion::map(region(0x10000), p.read.get()),
              IsErrorWith(MemErrc::kInvalidRegion, HasSubstr("a pipe")));
}

TEST(RegionFd, AShortFileIsRefusedWithItsSize) {
  UniqueFd fd = memfd("short", MFD_ALLOW_SEALING, 0x8000);
  EXPECT_THAT(BackendRegion::map(region(0x8000, 0x1000), fd.get()),
              IsErrorWith(MemErrc::kInvalidRegion, HasSubstr("beyond the fd's 0x8000 bytes")));
  EXPECT_THAT(BackendRegion::map(region(0x8000), fd.get()), IsOk());
}

TEST(RegionFd, ASealableMemfdIsSealedAgainstShrinking) {
  UniqueFd fd = memfd("sealable", MFD_ALLOW_SEALING, 0x10000);
  auto r = BackendRegion::map(region(0x10000), fd.get());
  ASSERT_THAT(r, IsOk());
  EXPECT_NE(::fcntl(fd.get(), F_GET_SEALS) & F_SEAL_SHRINK, 0);
  errno = 0;
  EXPECT_EQ(::ftruncate(fd.get(), 0x1000), -1);
  EXPECT_EQ(errno, EPERM);
}

TEST(RegionFd, AnUnsealableMemfdIsAcceptedWithoutASeal) {
  // The documented residual risk: nothing can stop its owner truncating it.
  UniqueFd fd = memfd("unsealable", 0, 0x10000);
  EXPECT_THAT(BackendRegion::map(region(0x10000), fd.get()), IsOk());
  EXPECT_EQ(::fcntl(fd.get(), F_GET_SEALS) & F_SEAL_SHRINK, 0);
}

TEST(RegionFd, TheSessionRefusesDevZeroAndKeepsItsTable) {
  EchoDevice dev(1);
  StubFrontend fe(dev);
  fe.negotiate(kFeatures, kProtocol);
  const MemoryRegion r = region(0x10000);
  std::array<UniqueFd, 1> fds{UniqueFd(::open("/dev/zero", O_RDWR | O_CLOEXEC))};
  EXPECT_EQ(fe.acked(encode_mem_table(std::span<const MemoryRegion>(&r, 1), fds)), 1u);
  std::array<UniqueFd, 1> good{memfd("good", MFD_ALLOW_SEALING, 0x10000)};
  EXPECT_EQ(fe.acked(encode_mem_table(std::span<const MemoryRegion>(&r, 1), good)), 0u);
}

// --- Inflight areas -------------------------------------------------------------

TEST(InflightFd, TheAllocatedAreaIsSealed) {
  auto m = InflightMemory::allocate(RingFormat::kSplit, 1, 64);
  ASSERT_THAT(m, IsOk());
  const int seals = ::fcntl(m->fd(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_EQ(::ftruncate(m->fd(), 0), -1);
}

TEST(InflightFd, AMisalignedOffsetIsRefused) {
  UniqueFd fd = memfd("inflight", MFD_ALLOW_SEALING, 0x4000);
  const uint64_t need = inflight_queue_region_size(RingFormat::kSplit, 64);
  EXPECT_THAT(InflightMemory::map(fd.get(), InflightArea{need, 1, 1, 64}, RingFormat::kSplit),
              IsErrorWith(VhostUserErrc::kBadField, HasSubstr("mmap_offset 0x1 is not a multiple")));
  EXPECT_THAT(InflightMemory::map(fd.get(), InflightArea{need, 8, 1, 64}, RingFormat::kSplit),
              IsErrorWith(VhostUserErrc::kBadField, HasSubstr("mmap_offset 0x8")));
  EXPECT_THAT(InflightMemory::map(fd.get(), InflightArea{need, 0x1000, 1, 64}, RingFormat::kSplit), IsOk());
}

TEST(InflightFd, AnFdThatCouldShrinkIsRefused) {
  const uint64_t need = inflight_queue_region_size(RingFormat::kSplit, 64);
  UniqueFd unsealable = memfd("inflight", 0, 0x4000);
  EXPECT_THAT(InflightMemory::map(unsealable.get(), InflightArea{need, 0, 1, 64}, RingFormat::kSplit),
              IsErrorWith(VhostUserErrc::kBadField, HasSubstr("cannot be sealed")));
  Pipe p = make_pipe();
  EXPECT_THAT(InflightMemory::map(p.read.get(), InflightArea{need, 0, 1, 64}, RingFormat::kSplit),
              IsErrorWith(VhostUserErrc::kBadField, HasSubstr("not a memfd")));
  // A sealable one is sealed now and accepted.
  UniqueFd sealable = memfd("inflight", MFD_ALLOW_SEALING, 0x4000);
  EXPECT_THAT(InflightMemory::map(sealable.get(), InflightArea{need, 0, 1, 64}, RingFormat::kSplit), IsOk());
  EXPECT_EQ(::ftruncate(sealable.get(), 0), -1);
}

TEST(InflightFd, TheSessionBoundsGetInflightFdByTheDevicesQueues) {
  EchoDevice dev(2);
  StubFrontend fe(dev);
  fe.negotiate(kFeatures, kProtocol);
  // Two queues are fine...
  fe.send(encode_inflight_request(R::kGetInflightFd, InflightArea{0, 0, 2, 256}, UniqueFd()));
  Message reply = fe.recv();
  auto area = parse_inflight_reply(reply);
  ASSERT_THAT(area, IsOk());
  EXPECT_EQ(area->num_queues, 2u);
  // ...three are not: GET_INFLIGHT_FD has no failure reply, so the
  // connection closes.
  fe.send(encode_inflight_request(R::kGetInflightFd, InflightArea{0, 0, 3, 256}, UniqueFd()));
  EXPECT_TRUE(fe.closed_by_backend());
  fe.finish();
  ASSERT_TRUE(fe.end().has_value());
  EXPECT_THAT(*fe.end(), ::testing::Property(&Error::message, HasSubstr("GET_INFLIGHT_FD: 3 queues, the device has 2")));
}

TEST(InflightFd, ALaterGetInflightFdEmptiesTheEarlierOffer) {
  EchoDevice dev(1);
  StubFrontend fe(dev);
  fe.negotiate(kFeatures | bit(kFeatureRingPacked), kProtocol);
  auto get = [&] {
    fe.send(encode_inflight_request(R::kGetInflightFd, InflightArea{0, 0, 1, 1024}, UniqueFd()));
    Message reply = fe.recv();
    EXPECT_THAT(parse_inflight_reply(reply), IsOk());
    return reply.take_fd(0);
  };
  UniqueFd first = get();
  struct stat st {};
  ASSERT_EQ(::fstat(first.get(), &st), 0);
  EXPECT_GT(st.st_blocks, 0) << "a packed area's free list was written";
  UniqueFd second = get();
  ASSERT_EQ(::fstat(first.get(), &st), 0);
  EXPECT_EQ(st.st_blocks, 0) << "the first offer still holds memory";
  ASSERT_EQ(::fstat(second.get(), &st), 0);
  EXPECT_GT(st.st_blocks, 0);
}

}  // namespace
}  // namespace vdma::vhost_user::testing
