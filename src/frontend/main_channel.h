// MainChannel: the front-end's end of the vhost-user socket. One mutex
// serialises "send a request, wait for its reply", so the driver threads
// (invalidations), the back-end channel thread (IOTLB updates) and the
// control path share the socket. Private to the frontend module.
//
//   auto ex = channel.lock();                       // holds the mutex
//   uint64_t f = VDMA_TRY(ex.get_u64(FrontendRequest::kGetFeatures));
//   VDMA_TRY(ex.request(encode_u64_request(FrontendRequest::kSetFeatures, f)));   // acked under REPLY_ACK
//   VDMA_TRY(ex.post_iotlb(encode_iotlb_update(...)));   // its ack is read later, before the next reply
//
// Replies are awaited at most reply_timeout. A transport failure (hang-up,
// framing error, timeout) leaves the stream out of step, so the channel is
// then disconnected for good: every later call fails at once with
// FrontendErrc::kDisconnected, naming the first failure. A non-zero status
// from the back-end is a kRemoteError and the channel stays usable.
//
// Thread safety: lock() may be called from any thread; an Exchange belongs
// to the thread that took it. disconnected()/reason are safe anywhere.
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <span>
#include <string>

#include "vdma/base/result.h"
#include "vdma/base/unique_fd.h"
#include "vdma/vhost_user/message.h"
#include "vdma/vhost_user/payload_views.h"

namespace vdma::frontend_detail {

class MainChannel {
 public:
  MainChannel(UniqueFd sock, std::chrono::milliseconds reply_timeout);

  [[nodiscard]] int fd() const noexcept { return sock_.get(); }
  // From now on state-changing requests carry NEED_REPLY and wait for the ack.
  void enable_reply_ack() noexcept { reply_ack_.store(true, std::memory_order_relaxed); }
  [[nodiscard]] bool reply_ack() const noexcept { return reply_ack_.load(std::memory_order_relaxed); }
  [[nodiscard]] bool disconnected() const noexcept { return disconnected_.load(std::memory_order_acquire); }
  // Marks the channel dead (the back-end hung up); waiting callers time out
  // or see the hang-up themselves.
  void mark_disconnected(std::string why);

  class Exchange {
   public:
    // GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_STATUS, ...
    [[nodiscard]] Result<uint64_t> get_u64(vhost_user::FrontendRequest request);
    // A request without a spec reply; acked (NEED_REPLY) under REPLY_ACK.
    [[nodiscard]] Result<void> request(vhost_user::Message msg);
    // A request sent without NEED_REPLY whatever REPLY_ACK says.
    [[nodiscard]] Result<void> send_only(const vhost_user::Message& msg);
    // IOTLB_MSG requests, pipelined: all sent (NEED_REPLY), then every u64
    // status collected. Errors: the first failure (all replies are read).
    [[nodiscard]] Result<void> iotlb(std::span<vhost_user::Message> msgs);
    // An IOTLB_MSG sent with NEED_REPLY whose reply is not waited for: it is
    // read (and a failure status logged and counted in posted_failures())
    // before the reply of the next request that waits, or once
    // kMaxPostedReplies are unread, so the back-end never blocks on a full
    // socket. Errors: transport failures only.
    [[nodiscard]] Result<void> post_iotlb(vhost_user::Message msg);
    [[nodiscard]] Result<vhost_user::VringState> get_vring_base(uint32_t index);
    [[nodiscard]] Result<vhost_user::ConfigSpace> get_config(uint32_t offset, uint32_t size);

   private:
    friend class MainChannel;
    explicit Exchange(MainChannel& ch) : ch_(ch), lock_(ch.mu_) {}
    [[nodiscard]] Result<void> check_open() const;
    [[nodiscard]] Result<void> send(const vhost_user::Message& msg);
    // The reply to `request`: the replies of posted requests first
    // (drain_posted), then the next message, awaited at most reply_timeout.
    [[nodiscard]] Result<void> recv(vhost_user::Message& out, uint32_t request);
    // The next message, awaited at most reply_timeout.
    [[nodiscard]] Result<void> recv_next(vhost_user::Message& out, uint32_t request);
    // Reads the replies of every posted request.
    [[nodiscard]] Result<void> drain_posted();
    [[nodiscard]] Error fail(uint32_t request, const Error& e);

    MainChannel& ch_;
    std::unique_lock<std::mutex> lock_;
  };

  [[nodiscard]] Exchange lock() { return Exchange(*this); }

  // Posted requests whose reply said failure (post_iotlb).
  [[nodiscard]] uint64_t posted_failures() const noexcept { return posted_failures_.load(std::memory_order_relaxed); }

  // Replies of posted requests left unread at most; 20-byte replies, far
  // below a socket buffer.
  static constexpr uint32_t kMaxPostedReplies = 128;

 private:
  const UniqueFd sock_;
  const std::chrono::milliseconds reply_timeout_;
  std::atomic<bool> reply_ack_{false};
  std::atomic<bool> disconnected_{false};
  std::mutex mu_;          // serialises exchanges on sock_
  std::mutex reason_mu_;
  std::string reason_;     // guarded by reason_mu_: why the channel is disconnected
  vhost_user::Message reply_;  // guarded by mu_
  uint32_t unread_posted_ = 0;  // guarded by mu_: replies of posted requests not read yet
  std::atomic<uint64_t> posted_failures_{0};
};

}  // namespace vdma::frontend_detail
