#include "vdma/vhost_user/message.h"

namespace vdma::vhost_user {

std::string_view request_name(uint32_t code, Channel channel) noexcept {
  return channel == Channel::kMain ? frontend_request_name(code) : backend_request_name(code);
}

Message::Message(Message&& o) noexcept
    : request_(o.request_), flags_(o.flags_), size_(o.size_), fd_count_(o.fd_count_) {
  if (size_ != 0) std::memcpy(payload_.data(), o.payload_.data(), size_);
  for (size_t i = 0; i < fd_count_; ++i) fds_[i] = std::move(o.fds_[i]);
  o.clear();
}

Message& Message::operator=(Message&& o) noexcept {
  if (this == &o) return *this;
  clear_fds();
  request_ = o.request_;
  flags_ = o.flags_;
  size_ = o.size_;
  if (size_ != 0) std::memcpy(payload_.data(), o.payload_.data(), size_);
  fd_count_ = o.fd_count_;
  for (size_t i = 0; i < fd_count_; ++i) fds_[i] = std::move(o.fds_[i]);
  o.clear();
  return *this;
}

void Message::clear_fds() noexcept {
  for (size_t i = 0; i < fd_count_; ++i) fds_[i].reset();
  fd_count_ = 0;
}

void Message::clear() noexcept {
  clear_fds();
  request_ = 0;
  flags_ = kVersion;
  size_ = 0;
}

Result<void> decode_message(std::span<const std::byte> wire, Channel channel, Message& out) {
  out.clear();
  if (wire.size() < kHeaderSize) {
    return make_error(VhostUserErrc::kTruncated, "message of {} bytes is shorter than the {}-byte header", wire.size(),
                      kHeaderSize);
  }
  WireHeader h;
  std::memcpy(&h, wire.data(), kHeaderSize);
  // peer-controlled: h.size is checked against the buffer before any use.
  const uint32_t guest_size = h.size;
  const RequestLabel label{h.request, channel};
  if (guest_size > kMaxPayloadSize) {
    return make_error(VhostUserErrc::kPayloadTooLarge, "{}: payload size {} exceeds the maximum {}", label, guest_size,
                      kMaxPayloadSize);
  }
  const size_t present = wire.size() - kHeaderSize;
  if (present < guest_size) {
    return make_error(VhostUserErrc::kTruncated, "{}: header announces {} payload bytes, {} present", label, guest_size,
                      present);
  }
  if (present > guest_size) {
    return make_error(VhostUserErrc::kBadSize, "{}: {} bytes follow the {}-byte payload", label, present - guest_size,
                      guest_size);
  }
  out.set_request(h.request);
  out.set_flags(h.flags);
  out.set_payload(wire.subspan(kHeaderSize));
  return ok();
}

std::vector<std::byte> to_wire(const Message& msg) {
  std::vector<std::byte> out(kHeaderSize + msg.size());
  const WireHeader h = msg.header();
  std::memcpy(out.data(), &h, kHeaderSize);
  if (msg.size() != 0) std::memcpy(out.data() + kHeaderSize, msg.payload().data(), msg.size());
  return out;
}

}  // namespace vdma::vhost_user
