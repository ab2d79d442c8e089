// libFuzzer target: the vhost-user message layer fed arbitrary bytes, both
// decoded directly and framed through a socketpair with fds attached.
//
// Input layout:
//   byte 0   bits 0-3: number of fds to attach (0..15; above 8 drives the
//                      excess-fd path of the socket mode)
//            bit 4:    socket mode (else direct decode of one message)
//            bit 5:    back-end channel (else the main socket)
//            bit 6:    socket mode: fds ride on the second chunk (else the first)
//            bit 7:    REPLY_ACK is negotiated (for the reply policy)
//   byte 1   socket mode: where to split the bytes into two sendmsg calls
//   the rest the wire bytes: one message (direct mode) or a stream of
//            messages (socket mode), at most 32 KiB
//
// For every message that decodes, the fuzzer runs the validator of its
// channel, all reply parsers and the reply policy, and checks what a view
// promises (ranges, fd counts, no wrap). Views that have an encoder are
// re-encoded and validated again, and must come back equal. After each input
// the fd table must be as it was: a leaked fd aborts.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "vdma/vhost_user/encode.h"
#include "vdma/vhost_user/reply_policy.h"
#include "vdma/vhost_user/socket_io.h"
#include "vdma/vhost_user/validate.h"

namespace {

using namespace vdma;
using namespace vdma::vhost_user;

constexpr size_t kMaxInput = 32 * 1024;
constexpr int kFdWindow = 96;

void fail(const char* what) {
  std::fprintf(stderr, "vhost_user_msg_fuzz: %s\n", what);
  std::abort();
}
void require(bool cond, const char* what) {
  if (!cond) fail(what);
}

// Which of the fds [base, base + kFdWindow) are open.
std::array<bool, kFdWindow> fd_snapshot(int base) {
  std::array<bool, kFdWindow> open{};
  for (int i = 0; i < kFdWindow; ++i) open[static_cast<size_t>(i)] = ::fcntl(base + i, F_GETFD) != -1;
  return open;
}

int fd_base() {
  static const int base = [] {
    const int probe = ::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 0);
    if (probe < 0) fail("cannot probe the fd table");
    ::close(probe);
    return probe;
  }();
  return base;
}

void check_region(const MemoryRegion& r) {
  require(r.size != 0 && fits(r.guest_addr, r.size) && fits(r.user_addr, r.size), "region wraps");
  require(r.mmap_offset + r.size >= r.mmap_offset, "mmap offset wraps");
}

void check_config(const ConfigSpace& c) {
  require(c.size >= 1 && c.size <= kMaxConfigSize && uint64_t{c.offset} + c.size <= kMaxConfigSize,
          "config outside 256 bytes");
}

void check_iotlb(const IotlbMessage& m) {
  if (m.size == 0) {
    require(m.type != IotlbType::kUpdate, "UPDATE of size 0");
    if (m.type == IotlbType::kInvalidate) require(m.iova == Iova{0}, "size-0 INVALIDATE not at 0");
  } else {
    require(fits(m.iova, m.size), "IOTLB range wraps");
  }
  require(static_cast<uint8_t>(m.perm) <= 3, "IOTLB perm");
}

// Re-encodes a view and validates it again; the second view must equal the first.
void check_reencode(const FrontendRequestView& v) {
  Message again;
  if (const auto* u = std::get_if<U64Value>(&v.payload)) {
    again = encode_u64_request(v.request, u->value);
  } else if (const auto* s = std::get_if<VringState>(&v.payload)) {
    again = encode_vring_state(v.request, *s);
  } else if (const auto* a = std::get_if<VringAddress>(&v.payload)) {
    again = encode_vring_addr(*a);
  } else if (const auto* m = std::get_if<IotlbMessage>(&v.payload)) {
    again = m->type == IotlbType::kUpdate ? encode_iotlb_update(m->iova, m->size, m->uaddr, m->perm)
                                          : encode_iotlb_invalidate(m->iova, m->size);
  } else if (const auto* c = std::get_if<ConfigSpace>(&v.payload)) {
    again = encode_config_request(v.request, *c);
  } else {
    return;
  }
  auto w = validate_frontend_request(again);
  require(w.has_value(), "a re-encoded view does not validate");
  require(w->request == v.request && w->payload.index() == v.payload.index(), "re-encoded request differs");
  require(w->payload == v.payload, "re-encoded payload differs");
}

void check_frontend_view(const Message& msg, const FrontendRequestView& v) {
  require(v.request == static_cast<FrontendRequest>(msg.request()), "view request differs");
  if (const auto* t = std::get_if<MemoryTable>(&v.payload)) {
    require(t->count >= 1 && t->count <= kMaxMemRegions && t->count == msg.fd_count(), "mem table count");
    for (const MemoryRegion& r : t->list()) check_region(r);
  } else if (const auto* r = std::get_if<MemoryRegion>(&v.payload)) {
    check_region(*r);
  } else if (const auto* f = std::get_if<VringFile>(&v.payload)) {
    require(f->index < kMaxVrings && msg.fd_count() == (f->has_fd ? 1u : 0u), "vring file");
  } else if (const auto* s = std::get_if<VringState>(&v.payload)) {
    require(s->index < kMaxVrings, "vring index");
  } else if (const auto* a = std::get_if<VringAddress>(&v.payload)) {
    require(a->index < kMaxVrings, "vring index");
  } else if (const auto* m = std::get_if<IotlbMessage>(&v.payload)) {
    require(m->type == IotlbType::kUpdate || m->type == IotlbType::kInvalidate, "front-end IOTLB type");
    check_iotlb(*m);
  } else if (const auto* c = std::get_if<ConfigSpace>(&v.payload)) {
    check_config(*c);
  }
  check_reencode(v);
}

void check_backend_view(const Message& msg, const BackendRequestView& v) {
  if (const auto* m = std::get_if<IotlbMessage>(&v.payload)) {
    require(m->type == IotlbType::kMiss || m->type == IotlbType::kAccessFail, "back-end IOTLB type");
    check_iotlb(*m);
  } else if (const auto* a = std::get_if<VringArea>(&v.payload)) {
    require(a->index < kMaxVrings && msg.fd_count() == (a->has_fd ? 1u : 0u), "vring area");
  }
}

// Everything the layer offers for one received message.
void exercise(Message& msg, Channel channel, uint64_t features) {
  Result<void> status = ok();
  if (channel == Channel::kMain) {
    auto v = validate_frontend_request(msg);
    if (v) check_frontend_view(msg, *v);
    else status = std::move(v).error();
  } else {
    auto v = validate_backend_request(msg);
    if (v) check_backend_view(msg, *v);
    else status = std::move(v).error();
  }
  if (!status) {
    const ErrorDisposition d = error_disposition(msg, channel, status.error(), features);
    require(!describe_disposition(msg, channel, status.error(), d).empty(), "empty log line");
    if (d.action == ErrorAction::kErrorReply) {
      const Message reply = encode_error_reply(msg, channel, features);
      require(reply.is_reply() && reply.request() == msg.request(), "error reply");
    }
  } else {
    (void)needs_ack(msg, channel, features);
  }

  // Reply parsers see the same bytes as a reply to the request they name.
  (void)parse_status_reply(msg, msg.request(), channel);
  if (channel == Channel::kMain && is_known_frontend_request(msg.request())) {
    (void)parse_u64_reply(msg, static_cast<FrontendRequest>(msg.request()));
  }
  (void)parse_vring_base_reply(msg, 0);
  if (auto c = parse_config_reply(msg, 0, 8); c) check_config(*c);
  (void)parse_inflight_reply(msg);
}

UniqueFd make_eventfd() {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC));
  if (!fd) fail("eventfd");
  return fd;
}

void send_chunk(int sock, std::span<const uint8_t> bytes, std::span<const int> fds) {
  if (bytes.empty()) return;  // fds need at least one byte to travel with
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * 16)] = {};
  if (!fds.empty()) {
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  if (::sendmsg(sock, &mh, MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size())) fail("sendmsg to the socketpair");
}

void run_direct(std::span<const uint8_t> wire, Channel channel, uint64_t features, size_t nfds) {
  Message msg;
  const auto bytes = std::as_bytes(wire);
  if (!decode_message(bytes, channel, msg)) return;
  for (size_t i = 0; i < nfds && i < kMaxFds; ++i) msg.add_fd(make_eventfd());
  exercise(msg, channel, features);
}

void run_socket(std::span<const uint8_t> wire, Channel channel, uint64_t features, size_t nfds, bool fds_late,
                uint8_t split_byte) {
  auto pair = make_socket_pair();
  if (!pair) fail("socketpair");
  std::vector<UniqueFd> owned;
  std::vector<int> raw;
  for (size_t i = 0; i < nfds; ++i) {
    owned.push_back(make_eventfd());
    raw.push_back(owned.back().get());
  }
  const size_t split = wire.empty() ? 0 : split_byte % (wire.size() + 1);
  const auto first = wire.first(split);
  const auto second = wire.subspan(split);
  const bool late = fds_late && !second.empty();
  send_chunk((*pair)[0].get(), first, late ? std::span<const int>() : std::span<const int>(raw));
  send_chunk((*pair)[0].get(), second, late ? std::span<const int>(raw) : std::span<const int>());
  ::shutdown((*pair)[0].get(), SHUT_WR);

  Message msg;
  // Each successful receive consumes at least the 12-byte header.
  for (size_t n = 0; n <= wire.size() / kHeaderSize + 1; ++n) {
    Result<void> r = recv_message((*pair)[1].get(), channel, msg);
    if (!r) {
      require(msg.fd_count() == 0, "fds kept after a receive error");
      if (is_connection_fatal(r.error())) return;
      require(r.error().is(VhostUserErrc::kTooManyFds), "unexpected receive error");
      continue;
    }
    exercise(msg, channel, features);
  }
  // Every byte was consumed, so the peer's shutdown must show now.
  require(recv_message((*pair)[1].get(), channel, msg).error().is(VhostUserErrc::kPeerClosed), "stream not at EOF");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int base = fd_base();
  const auto before = fd_snapshot(base);
  const uint8_t mode = data[0];
  const size_t nfds = mode & 0x0f;
  const Channel channel = (mode & 0x20) != 0 ? Channel::kBackend : Channel::kMain;
  const uint64_t features = (mode & 0x80) != 0 ? protocol_feature_bit(kProtocolFeatureReplyAck) : 0;
  const std::span<const uint8_t> wire(data + 2, std::min(size - 2, kMaxInput));
  if ((mode & 0x10) != 0) {
    run_socket(wire, channel, features, nfds, (mode & 0x40) != 0, data[1]);
  } else {
    run_direct(wire, channel, features, nfds);
  }
  if (fd_snapshot(base) != before) fail("fd leak: the fd table changed across one input");
  return 0;
}
