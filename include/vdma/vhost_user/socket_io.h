// Framing of vhost-user messages over a connected AF_UNIX stream socket, with
// fds passed as SCM_RIGHTS ancillary data.
//
//   auto [a, b] = VDMA_TRY(make_socket_pair());
//   Message out = encode_vring_file(FrontendRequest::kSetVringKick, 0, std::move(kick_eventfd));
//   VDMA_TRY(send_message(a.get(), Channel::kMain, out));
//   Message in;
//   Result<void> r = recv_message(b.get(), Channel::kMain, in);
//   if (!r && r.error().is(VhostUserErrc::kPeerClosed)) { /* session over */ }
//
// recv_message reads exactly one message: the 12-byte header, then the
// payload size it announces, no more. It loops over short reads and EINTR,
// and collects SCM_RIGHTS fds from every recvmsg that contributes to the
// message, wrapping each in a UniqueFd at once (received fds are
// close-on-exec). On a non-blocking socket it waits in poll() for the rest of
// a message, so call it once the socket is readable. A peer that stops in the
// middle of a message stalls the caller; that is why each connection gets its
// own thread or event source.
//
// Thread safety: one reader and one writer per socket at a time; the
// functions keep no state between calls.
#pragma once

#include <array>

#include "vdma/base/result.h"
#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/message.h"
#include "vdma/base/unique_fd.h"

namespace vdma::vhost_user {

// Receives one message into `out` (cleared first). `channel` only names
// requests in error messages.
// Errors:
//   kPeerClosed      EOF (or ECONNRESET) before the first byte of a message.
//   kTruncated       EOF after part of the header or payload; the message is
//                    lost and the session is over.
//   kPayloadTooLarge the header announces more than kMaxPayloadSize bytes.
//                    Nothing past the header is read (a peer cannot make us
//                    read an unbounded amount), so the stream is out of step
//                    and the connection must be closed.
//   kTooManyFds      more than kMaxFds fds came with the message. The message
//                    was read whole and every fd closed; `out` keeps header
//                    and payload, so an error reply is still possible.
//   BaseErrc::kSystem any other recvmsg/poll failure.
// On every error `out` keeps the header fields that were read (for log lines)
// and holds no fds.
[[nodiscard]] Result<void> recv_message(int sock, Channel channel, Message& out);

// Sends `msg` whole: header, payload and its fds (SCM_RIGHTS with the first
// bytes), looping over short writes and EINTR and waiting in poll() on a full
// non-blocking socket. SIGPIPE is never raised (MSG_NOSIGNAL). The fds stay
// owned by `msg`; the peer receives duplicates.
// Precondition: every fd slot of `msg` still holds its fd (none taken).
// `channel` only names the request in error messages.
// Errors: kPeerClosed (EPIPE/ECONNRESET; the message may be partly sent),
// BaseErrc::kSystem.
[[nodiscard]] Result<void> send_message(int sock, Channel channel, const Message& msg);

// A connected pair of close-on-exec AF_UNIX stream sockets.
// Errors: BaseErrc::kSystem.
[[nodiscard]] Result<std::array<UniqueFd, 2>> make_socket_pair();

}  // namespace vdma::vhost_user
