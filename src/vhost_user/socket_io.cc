#include "vdma/vhost_user/socket_io.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

namespace vdma::vhost_user {

namespace {

// The kernel's per-message limit on passed fds (SCM_MAX_FD). Sizing the
// control buffer for it means a peer that attaches too many fds still has
// every one of them handed to us — and closed — instead of the kernel
// truncating the list, so the count in the error is exact.
constexpr size_t kScmMaxFd = 253;

// Receives fds for one message: the first kMaxFds go into the Message, the
// rest are closed on arrival and counted.
class FdCollector {
 public:
  explicit FdCollector(Message& msg) noexcept : msg_(msg) {}

  void take(int raw) noexcept {
    UniqueFd fd(raw);
    ++seen_;
    if (msg_.fd_count() < kMaxFds) msg_.add_fd(std::move(fd));
    // else: fd closes here.
  }
  void note_truncated() noexcept { truncated_ = true; }
  [[nodiscard]] size_t seen() const noexcept { return seen_; }
  [[nodiscard]] bool too_many() const noexcept { return truncated_ || seen_ > kMaxFds; }

 private:
  Message& msg_;
  size_t seen_ = 0;
  bool truncated_ = false;
};

Result<void> wait_for(int sock, short events) {
  pollfd p{sock, events, 0};
  for (;;) {
    int r = ::poll(&p, 1, -1);
    if (r >= 0) return ok();
    if (errno != EINTR) return system_error("poll on vhost-user socket", errno);
  }
}

// Hands every SCM_RIGHTS fd in `mh` to `fds`; other control messages are
// ignored (vdma never enables SO_PASSCRED and the like).
void collect_fds(msghdr& mh, FdCollector& fds) {
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(c);
    for (size_t i = 0; i < n; ++i) {  // bounded by the control buffer size
      int fd = -1;
      std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
      fds.take(fd);
    }
  }
  if ((mh.msg_flags & MSG_CTRUNC) != 0) fds.note_truncated();
}

// One successful recvmsg of at most `len` bytes; 0 means EOF.
Result<size_t> recv_some(int sock, std::byte* buf, size_t len, FdCollector& fds) {
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * kScmMaxFd)];
  for (;;) {
    iovec iov{buf, len};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    if (n >= 0) {
      collect_fds(mh, fds);
      return static_cast<size_t>(n);
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      VDMA_TRY(wait_for(sock, POLLIN));
      continue;
    }
    // A reset peer is gone just like one that closed; the caller words it.
    if (err == ECONNRESET) return size_t{0};
    return system_error("recvmsg on vhost-user socket", err);
  }
}

// Reads exactly buf.size() bytes; returns how many arrived before EOF.
Result<size_t> recv_exact(int sock, std::span<std::byte> buf, FdCollector& fds) {
  size_t got = 0;
  while (got < buf.size()) {
    const size_t n = VDMA_TRY(recv_some(sock, buf.data() + got, buf.size() - got, fds));
    if (n == 0) break;
    got += n;
  }
  return got;
}

}  // namespace

Result<void> recv_message(int sock, Channel channel, Message& out) {
  out.clear();
  FdCollector fds(out);
  // Every error path drops the payload and fds but keeps the header fields.
  auto fail = [&out](Error e) {
    out.clear_payload();
    out.clear_fds();
    return e;
  };

  std::array<std::byte, kHeaderSize> hb;
  Result<size_t> hgot = recv_exact(sock, hb, fds);
  if (!hgot) return fail(std::move(hgot).error());
  if (*hgot == 0) return fail(Error(VhostUserErrc::kPeerClosed, "peer closed the connection"));
  if (*hgot < kHeaderSize) {
    return fail(Error(VhostUserErrc::kTruncated, fmt::format("peer closed the connection after {} of {} header bytes",
                                                             *hgot, kHeaderSize)));
  }
  WireHeader h;
  std::memcpy(&h, hb.data(), kHeaderSize);
  out.set_request(h.request);
  out.set_flags(h.flags);
  const RequestLabel label{h.request, channel};

  const uint32_t guest_size = h.size;  // peer-controlled: bounded before any read
  if (guest_size > kMaxPayloadSize) {
    return fail(Error(VhostUserErrc::kPayloadTooLarge,
                      fmt::format("{}: payload size {} exceeds the maximum {}; the payload was not read, so the "
                                  "stream is out of step and the connection must be closed",
                                  label, guest_size, kMaxPayloadSize)));
  }
  Result<size_t> pgot = recv_exact(sock, out.resize_payload(guest_size), fds);
  if (!pgot) return fail(std::move(pgot).error());
  if (*pgot < guest_size) {
    return fail(Error(VhostUserErrc::kTruncated,
                      fmt::format("{}: peer closed the connection after {} of {} payload bytes", label, *pgot,
                                  guest_size)));
  }
  if (fds.too_many()) {
    out.clear_fds();
    return make_error(VhostUserErrc::kTooManyFds, "{}: {} fds attached, at most {}; all of them were closed", label,
                      fds.seen(), kMaxFds);
  }
  return ok();
}

Result<void> send_message(int sock, Channel channel, const Message& msg) {
  const WireHeader h = msg.header();
  const std::span<const std::byte> payload = msg.payload();
  const size_t total = kHeaderSize + payload.size();

  const size_t nfds = msg.fd_count();
  // Message::add_fd() keeps fd_count() <= kMaxFds; stating it here also bounds
  // the copy into `control` below for the optimiser.
  VDMA_CHECK(nfds <= kMaxFds, "send_message: more than kMaxFds fds in a message");
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  for (size_t i = 0; i < nfds; ++i) {
    VDMA_CHECK(msg.fd(i) >= 0, "send_message: an fd slot of the message was taken");
  }

  size_t sent = 0;
  while (sent < total) {
    // Rebuild the iovecs for the bytes still to go.
    iovec iov[2];
    int iovcnt = 0;
    if (sent < kHeaderSize) {
      iov[iovcnt++] = {const_cast<char*>(reinterpret_cast<const char*>(&h)) + sent, kHeaderSize - sent};
      if (!payload.empty()) iov[iovcnt++] = {const_cast<std::byte*>(payload.data()), payload.size()};
    } else {
      const size_t off = sent - kHeaderSize;
      iov[iovcnt++] = {const_cast<std::byte*>(payload.data()) + off, payload.size() - off};
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = static_cast<size_t>(iovcnt);
    // The fds travel with the first bytes that actually leave; a failed
    // attempt sent nothing, so they are attached again.
    if (sent == 0 && nfds > 0) {
      mh.msg_control = control;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
      for (size_t i = 0; i < nfds; ++i) {
        const int fd = msg.fd(i);
        std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
      }
    }
    const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      VDMA_TRY(wait_for(sock, POLLOUT));
      continue;
    }
    if (err == EPIPE || err == ECONNRESET) {
      return make_error(VhostUserErrc::kPeerClosed, "{}: peer closed the connection after {} of {} bytes were sent",
                        RequestLabel{h.request, channel}, sent, total);
    }
    return system_error("sendmsg on vhost-user socket", err);
  }
  return ok();
}

Result<std::array<UniqueFd, 2>> make_socket_pair() {
  int sv[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return system_error("socketpair(AF_UNIX, SOCK_STREAM)", errno);
  }
  return std::array<UniqueFd, 2>{UniqueFd(sv[0]), UniqueFd(sv[1])};
}

}  // namespace vdma::vhost_user
