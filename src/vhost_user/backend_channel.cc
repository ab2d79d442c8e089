#include "backend_channel.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "vdma/vhost_user/socket_io.h"

namespace vdma::vhost_user {

namespace {

constexpr int kSendFlags = MSG_DONTWAIT | MSG_NOSIGNAL;

bool is_peer_gone(int err) noexcept { return err == EPIPE || err == ECONNRESET; }

// One non-blocking sendmsg of `iov`, with `msg`'s fds attached when
// `with_fds`, retried over EINTR. Returns the bytes sent; 0 with *again set
// when the socket is full.
Result<size_t> send_some(int sock, iovec* iov, int iovcnt, const Message* with_fds, bool* again) {
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = static_cast<size_t>(iovcnt);
  if (with_fds != nullptr && with_fds->fd_count() > 0) {
    const size_t nfds = with_fds->fd_count();
    // Message::add_fd() keeps fd_count() <= kMaxFds; stating it here also
    // bounds the copy into `control` below for the optimiser (g++ 12 -O3
    // warns of an overflow otherwise).
    VDMA_CHECK(nfds <= kMaxFds, "BackendChannel::send: more than kMaxFds fds in a message");
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    for (size_t i = 0; i < nfds; ++i) {
      const int fd = with_fds->fd(i);
      VDMA_CHECK(fd >= 0, "BackendChannel::send: an fd slot of the message was taken");
      std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
    }
  }
  *again = false;
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &mh, kSendFlags);
    if (n >= 0) return static_cast<size_t>(n);
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      *again = true;
      return size_t{0};
    }
    if (is_peer_gone(err)) return make_error(VhostUserErrc::kPeerClosed, "the front-end closed the back-end channel");
    return system_error("sendmsg on the back-end channel", err);
  }
}

}  // namespace

void BackendChannel::set(UniqueFd fd) {
  std::lock_guard lock(mutex_);
  fd_ = std::move(fd);
  pending_.clear();
  // One allocation here rather than in a worker's send().
  pending_.reserve(kPendingCapacity + kHeaderSize + kMaxPayloadSize);
}

bool BackendChannel::has_pending() const {
  std::lock_guard lock(mutex_);
  return !pending_.empty();
}

size_t BackendChannel::pending_bytes() const {
  std::lock_guard lock(mutex_);
  return pending_.size();
}

int BackendChannel::poll_fd() const {
  std::lock_guard lock(mutex_);
  return fd_.valid() ? fd_.get() : -1;
}

void BackendChannel::flush() {
  std::lock_guard lock(mutex_);
  if (!fd_.valid()) return;
  (void)flush_locked();
}

Result<void> BackendChannel::flush_locked() {
  // Bounded: each round sends at least one byte or stops.
  while (!pending_.empty()) {
    iovec iov{pending_.data(), pending_.size()};
    bool again = false;
    Result<size_t> n = send_some(fd_.get(), &iov, 1, nullptr, &again);
    if (!n) {
      pending_.clear();
      return std::move(n).error();
    }
    if (again) return ok();
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(*n));
  }
  return ok();
}

Result<void> BackendChannel::send(const Message& msg) {
  const RequestLabel label{msg.request(), Channel::kBackend};
  const WireHeader h = msg.header();
  const std::span<const std::byte> payload = msg.payload();
  const size_t total = kHeaderSize + payload.size();

  std::lock_guard lock(mutex_);
  if (!fd_.valid()) {
    return make_error(VhostUserErrc::kBadState, "no back-end channel (SET_BACKEND_REQ_FD) to send {} on", label);
  }
  if (auto r = flush_locked(); !r) {
    return Error(std::move(r).error()).with_context(fmt::format("{}", label));
  }
  const auto* hb = reinterpret_cast<const std::byte*>(&h);
  // Queues the whole message behind the pending bytes, within the bound.
  // Fds cannot wait in a byte buffer, so a message with fds is dropped.
  auto queue_whole = [&]() -> Result<void> {
    if (msg.fd_count() > 0 || pending_.size() + total > kPendingCapacity) {
      return make_error(VhostUserErrc::kWouldBlock,
                        "{}: dropped, the front-end is not reading the back-end channel ({} bytes already pending)",
                        label, pending_.size());
    }
    pending_.insert(pending_.end(), hb, hb + kHeaderSize);
    pending_.insert(pending_.end(), payload.begin(), payload.end());
    return ok();
  };
  // Earlier bytes still wait for the front-end: this message goes behind them.
  if (!pending_.empty()) return queue_whole();
  iovec iov[2] = {{const_cast<WireHeader*>(&h), kHeaderSize},
                  {const_cast<std::byte*>(payload.data()), payload.size()}};
  bool again = false;
  Result<size_t> n = send_some(fd_.get(), iov, payload.empty() ? 1 : 2, &msg, &again);
  if (!n) return Error(std::move(n).error()).with_context(fmt::format("{}", label));
  if (again) return queue_whole();  // the socket is full; nothing of the message left
  const size_t sent = *n;
  if (sent < total) {
    // The first bytes (and the fds) left: the rest must follow before any
    // other message, or the front-end would read a torn stream.
    if (sent < kHeaderSize) {
      pending_.insert(pending_.end(), hb + sent, hb + kHeaderSize);
      pending_.insert(pending_.end(), payload.begin(), payload.end());
    } else {
      pending_.insert(pending_.end(), payload.begin() + static_cast<std::ptrdiff_t>(sent - kHeaderSize),
                      payload.end());
    }
  }
  return ok();
}

}  // namespace vdma::vhost_user
