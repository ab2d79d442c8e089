// EventFd and the eventfd helpers: signal adds one, drain returns and
// resets the count, a non-blocking drain of nothing is 0 without blocking,
// a saturated counter still counts as signalled, a foreign or closed fd
// does not.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "result_matchers.h"
#include "vdma/base/event_fd.h"

namespace vdma {
namespace {

using namespace vdma::testing;

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

TEST(EventFd, SignalsCountAndDrainResets) {
  auto e = EventFd::create();
  ASSERT_THAT(e, IsOk());
  EXPECT_TRUE(e->valid());
  EXPECT_FALSE(readable(e->fd()));
  EXPECT_EQ(e->drain(), 0u);  // non-blocking: nothing pending, no wait
  EXPECT_TRUE(e->signal());
  EXPECT_TRUE(e->signal());
  EXPECT_TRUE(e->signal());
  EXPECT_TRUE(readable(e->fd()));
  EXPECT_EQ(e->drain(), 3u);
  EXPECT_FALSE(readable(e->fd()));
  EXPECT_EQ(::fcntl(e->fd(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
}

TEST(EventFd, ASaturatedCounterStillCountsAsSignalled) {
  auto e = EventFd::create();
  ASSERT_THAT(e, IsOk());
  const uint64_t max = 0xfffffffffffffffe;
  ASSERT_EQ(::write(e->fd(), &max, sizeof max), static_cast<ssize_t>(sizeof max));
  EXPECT_TRUE(e->signal());  // EAGAIN: the reader sees it readable anyway
  EXPECT_EQ(e->drain(), max);
}

TEST(EventFd, AForeignOrClosedFdIsNotSignalled) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ::close(p[1]);
  EXPECT_FALSE(eventfd_signal(p[0]));  // the read end of a pipe: EBADF
  EXPECT_EQ(eventfd_drain(p[0]), 0u);  // end of file, not a count
  ::close(p[0]);
  EXPECT_FALSE(eventfd_signal(-1));
  EXPECT_EQ(eventfd_drain(-1), 0u);
  const EventFd none;
  EXPECT_FALSE(none.valid());
  EXPECT_FALSE(none.signal());
}

TEST(EventFd, ASemaphoreEventfdDrainsOneAtATime) {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(eventfd_signal(fd));
  EXPECT_TRUE(eventfd_signal(fd));
  EXPECT_EQ(eventfd_drain(fd), 1u);
  EXPECT_EQ(eventfd_drain(fd), 1u);
  EXPECT_EQ(eventfd_drain(fd), 0u);
  ::close(fd);
}

}  // namespace
}  // namespace vdma
