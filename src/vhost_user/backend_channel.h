// BackendChannel: the back-end's side of the socket handed over by
// SET_BACKEND_REQ_FD, shared by the session thread (which installs it) and
// the queue workers (which send IOTLB MISS and ACCESS_FAIL on it).
//
//   if (auto r = channel.send(encode_iotlb_miss(iova, perm)); !r) {
//     if (r.error().is(VhostUserErrc::kWouldBlock)) { /* dropped: ask again later */ }
//   }
//   while (channel.has_pending()) {                  // wait for the front-end to read
//     pollfd p{channel.poll_fd(), POLLOUT, 0};
//     ::poll(&p, 1, timeout_ms);
//     channel.flush();
//   }
//
// send() never blocks. A front-end that stops reading its end of the channel
// must not wedge a worker (and through stop_worker() the whole session):
// QEMU answers GET_VRING_BASE on the same loop that reads the channel, so
// waiting for it to read would deadlock both. Each sendmsg uses
// MSG_DONTWAIT | MSG_NOSIGNAL. What the socket does not take at once goes to
// a bounded pending buffer and leaves, in order, ahead of any later message:
//   - the unsent tail of a message the socket took part of (it must follow,
//     or the stream would be torn);
//   - a whole message the socket took nothing of, or sent while earlier
//     bytes are still pending, if it fits in kPendingCapacity with them.
// Anything else is dropped whole before any of its bytes is written, and
// send() fails with kWouldBlock: the reader only ever sees whole messages.
// Pending bytes go out at the next send() or flush(); a caller that must get
// a message through waits for POLLOUT on poll_fd() and calls flush().
//
// The mutex serialises whole messages on the socket and guards the fd and
// the pending buffer. It is held only across non-blocking syscalls, and
// never by the message handler while it processes a request other than
// SET_BACKEND_REQ_FD, so a worker in send() cannot stall the IOTLB UPDATE
// that would resume it (DPDK sent MISS while holding the lock its UPDATE
// handler needed).
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/base/unique_fd.h"
#include "vdma/vhost_user/message.h"

namespace vdma::vhost_user {

class BackendChannel {
 public:
  // Bound of the pending buffer: a few dozen IOTLB messages (36 bytes each).
  // The tail of a message larger than this may still be kept, alone.
  static constexpr size_t kPendingCapacity = 4096;

  // Installs (or, with an invalid fd, drops) the channel socket. Pending
  // bytes of the previous socket are dropped: they belong to its stream.
  void set(UniqueFd fd);
  [[nodiscard]] bool connected() const {
    std::lock_guard lock(mutex_);
    return fd_.valid();
  }

  // Sends one back-end request without blocking: pending bytes first, then
  // the message; what the socket does not take is kept pending (see above).
  // Success means the message was sent, or is queued whole (or its tail) in
  // the pending buffer and leaves at a later send() or flush().
  // Errors:
  //   VhostUserErrc::kBadState    no channel (SET_BACKEND_REQ_FD).
  //   VhostUserErrc::kWouldBlock  the socket is full and the pending buffer
  //                               has no room for the message (the front-end
  //                               does not read the channel), or the message
  //                               carries fds and cannot leave at once: it
  //                               was dropped whole, nothing of it written.
  //   VhostUserErrc::kPeerClosed  the front-end closed the channel; pending
  //                               bytes are dropped.
  //   BaseErrc::kSystem           any other sendmsg failure.
  [[nodiscard]] Result<void> send(const Message& msg);

  // Whether bytes wait for the front-end to read (then poll_fd() becomes
  // writable once it does).
  [[nodiscard]] bool has_pending() const;
  // How many bytes wait (tests, logs). At most kPendingCapacity, or one
  // message's tail when that message alone was larger.
  [[nodiscard]] size_t pending_bytes() const;
  // The channel socket, to wait for POLLOUT while has_pending(); -1 without
  // a channel. Only for poll(): the fd may be replaced by set() at any time
  // (the session thread), so a stale number at worst gives a spurious wake-up.
  [[nodiscard]] int poll_fd() const;
  // Sends what the socket takes of the pending bytes, without blocking.
  // Errors are not reported here: the next send() reports them.
  void flush();

 private:
  // Sends pending bytes (mutex_ held); ok when the buffer is empty or the
  // socket is full.
  [[nodiscard]] Result<void> flush_locked();

  mutable std::mutex mutex_;
  UniqueFd fd_;                     // guarded by mutex_
  std::vector<std::byte> pending_;  // guarded by mutex_: bytes that must go out first, in order
};

}  // namespace vdma::vhost_user
