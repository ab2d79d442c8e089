// Message: one vhost-user message as it travels — header fields, payload bytes
// and the fds that came with it.
//
//   Message msg;
//   VDMA_TRY(recv_message(sock, Channel::kMain, msg));          // socket_io.h
//   auto req = VDMA_TRY(validate_frontend_request(msg));        // validate.h
//   int kick = msg.fd(0);                                       // still owned by msg
//   UniqueFd mine = msg.take_fd(0);                             // now owned by the caller
//
// The payload lives in a fixed buffer inside the Message (kMaxPayloadSize
// bytes) and the fds in a fixed array of UniqueFd, so receiving a message
// never allocates. Only the first size() payload bytes are meaningful; the
// rest of the buffer is never read. A Message is reused by passing it to
// recv_message() again, which clears it first.
//
// A Message is a container, not a validated object: it may hold any bytes a
// peer sent. Read its payload only through validate.h, which checks the
// header, the size, the fd count and every field before handing out a typed
// view.
//
// Thread safety: none; owned by one thread at a time. Move-only (it owns fds).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "vdma/base/check.h"
#include "vdma/base/result.h"
#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/protocol.h"
#include "vdma/base/unique_fd.h"

namespace vdma::vhost_user {

// The largest payload the codec reads. It is far above every layout in
// vhost-user.rst (the largest fixed one, WireConfig, is 268 bytes), so a
// well-formed request that vdma does not implement is still read whole and
// can be answered; a larger size is taken as a broken or hostile peer.
inline constexpr size_t kMaxPayloadSize = 4096;

// Which socket a message travels on. It decides what a request code means,
// because the two request tables reuse the same numbers.
enum class Channel : uint8_t {
  kMain,     // the vhost-user socket: front-end requests and their replies (FrontendRequest codes)
  kBackend,  // the back-end channel (SET_BACKEND_REQ_FD): back-end requests and their replies (BackendRequest codes)
};

// "SET_MEM_TABLE" on kMain, "BACKEND_IOTLB_MSG" on kBackend, "UNKNOWN" otherwise.
[[nodiscard]] std::string_view request_name(uint32_t code, Channel channel) noexcept;

// Formats as the request's name, or "request 99" for a code the channel does
// not define: `fmt::format("{}", RequestLabel{code, channel})`.
struct RequestLabel {
  uint32_t code = 0;
  Channel channel = Channel::kMain;
};

class Message {
 public:
  // An empty message: request 0, flags = version 0x1, no payload, no fds.
  Message() noexcept = default;
  Message(uint32_t request, uint32_t flags) noexcept : request_(request), flags_(flags) {}
  Message(Message&& o) noexcept;
  Message& operator=(Message&& o) noexcept;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message() = default;

  // --- Header ---
  [[nodiscard]] uint32_t request() const noexcept { return request_; }
  [[nodiscard]] uint32_t flags() const noexcept { return flags_; }
  [[nodiscard]] uint32_t version() const noexcept { return flags_ & kFlagVersionMask; }
  [[nodiscard]] bool is_reply() const noexcept { return (flags_ & kFlagReply) != 0; }
  [[nodiscard]] bool needs_reply() const noexcept { return (flags_ & kFlagNeedReply) != 0; }
  [[nodiscard]] WireHeader header() const noexcept { return {request_, flags_, size_}; }
  void set_request(uint32_t request) noexcept { request_ = request; }
  void set_flags(uint32_t flags) noexcept { flags_ = flags; }
  void set_need_reply(bool on) noexcept { flags_ = on ? (flags_ | kFlagNeedReply) : (flags_ & ~kFlagNeedReply); }

  // --- Payload ---
  [[nodiscard]] uint32_t size() const noexcept { return size_; }
  [[nodiscard]] std::span<const std::byte> payload() const noexcept { return {payload_.data(), size_}; }
  // Sets the payload size and gives the bytes to fill (their old contents are
  // unspecified). Precondition: n <= kMaxPayloadSize (VDMA_CHECK); callers
  // bound peer-supplied sizes first.
  [[nodiscard]] std::span<std::byte> resize_payload(size_t n) noexcept {
    VDMA_CHECK(n <= kMaxPayloadSize, "payload above kMaxPayloadSize");
    size_ = static_cast<uint32_t>(n);
    return {payload_.data(), n};
  }
  void clear_payload() noexcept { size_ = 0; }
  void set_payload(std::span<const std::byte> bytes) noexcept {
    std::span<std::byte> dst = resize_payload(bytes.size());
    if (!bytes.empty()) std::memcpy(dst.data(), bytes.data(), bytes.size());
  }
  template <class T>
    requires std::is_trivially_copyable_v<T>
  void set_payload_struct(const T& v) noexcept {
    set_payload(std::as_bytes(std::span<const T, 1>(&v, 1)));
  }
  // The sizeof(T) payload bytes at `offset`, copied out (the buffer has no
  // alignment guarantee). Precondition: offset + sizeof(T) <= size()
  // (VDMA_CHECK) — validate.h checks sizes before reading.
  template <class T>
    requires std::is_trivially_copyable_v<T>
  [[nodiscard]] T read_payload(size_t offset = 0) const noexcept {
    VDMA_CHECK(offset <= size_ && sizeof(T) <= size_ - offset, "payload read past size()");
    T v;
    std::memcpy(&v, payload_.data() + offset, sizeof(T));
    return v;
  }

  // --- Fds ---
  [[nodiscard]] size_t fd_count() const noexcept { return fd_count_; }
  // The i-th fd, still owned by the message (-1 after take_fd(i)).
  // Precondition: i < fd_count() (VDMA_CHECK).
  [[nodiscard]] int fd(size_t i) const noexcept {
    VDMA_CHECK(i < fd_count_, "fd index out of range");
    return fds_[i].get();
  }
  // Moves the i-th fd out; the slot keeps counting in fd_count() but is empty.
  [[nodiscard]] UniqueFd take_fd(size_t i) noexcept {
    VDMA_CHECK(i < fd_count_, "fd index out of range");
    return std::move(fds_[i]);
  }
  // Precondition: fd_count() < kMaxFds (VDMA_CHECK); the receive path
  // enforces that limit on peer input and closes the excess.
  void add_fd(UniqueFd fd) noexcept {
    VDMA_CHECK(fd_count_ < kMaxFds, "more than kMaxFds fds in a message");
    fds_[fd_count_++] = std::move(fd);
  }
  // Closes every fd still held.
  void clear_fds() noexcept;
  // Back to the state of a default-constructed Message, closing held fds.
  void clear() noexcept;

 private:
  uint32_t request_ = 0;
  uint32_t flags_ = kVersion;
  uint32_t size_ = 0;
  // Left uninitialised on purpose: only [0, size_) is ever read, and zeroing
  // 4 KiB per message would be wasted work on the receive path.
  std::array<std::byte, kMaxPayloadSize> payload_;
  std::array<UniqueFd, kMaxFds> fds_{};
  uint8_t fd_count_ = 0;
};

// Parses one whole message from `wire` (header then payload; fds are not
// part of the bytes and can be added with add_fd()). `out` is cleared first.
// Only framing is checked here; validate.h checks the rest.
// Errors: kTruncated (fewer than 12 bytes, or fewer payload bytes than the
// header announces), kPayloadTooLarge (header size > kMaxPayloadSize),
// kBadSize (bytes left over after the announced payload).
[[nodiscard]] Result<void> decode_message(std::span<const std::byte> wire, Channel channel, Message& out);

// Header and payload bytes of `msg` as they go on the wire (fds aside). For
// tests, fuzzers and logs; the send path writes straight from the Message.
[[nodiscard]] std::vector<std::byte> to_wire(const Message& msg);

}  // namespace vdma::vhost_user

template <>
struct fmt::formatter<vdma::vhost_user::RequestLabel> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class Ctx>
  auto format(const vdma::vhost_user::RequestLabel& l, Ctx& ctx) const {
    const bool known = l.channel == vdma::vhost_user::Channel::kMain
                           ? vdma::vhost_user::is_known_frontend_request(l.code)
                           : vdma::vhost_user::is_known_backend_request(l.code);
    if (known) return fmt::format_to(ctx.out(), "{}", vdma::vhost_user::request_name(l.code, l.channel));
    return fmt::format_to(ctx.out(), "request {}", l.code);
  }
};
