// BackendChannelServer: the thread that serves the back-end channel (the
// socket handed over with SET_BACKEND_REQ_FD) and watches the main socket
// for a hang-up. Private to the frontend module.
//
//   auto server = VDMA_TRY(BackendChannelServer::start(std::move(our_end), main_fd, handler, 10ms));
//   ...                                   // handler.on_iotlb_miss() runs on the server's thread
//   server.reset();                       // stops and joins
//
// Requests (vhost-user.rst "Back-end message types"): IOTLB MISS goes to
// the handler; ACCESS_FAIL, CONFIG_CHANGE_MSG and every other request are
// logged. When a request carries NEED_REPLY it is answered with a u64
// status: 0 when the handler served a MISS, 1 for everything else (a
// malformed request with a sound header included). A framing error or EOF
// closes the channel (logged); the main socket is still watched.
//
// on_tick() runs every `tick` (when given) for periodic work such as the
// lazy flush queue's age limit; on_main_hangup() runs once when the main
// socket reports a hang-up.
//
// Thread safety: the handler is called from the server thread only.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>

#include "vdma/base/address.h"
#include "vdma/base/result.h"
#include "vdma/base/event_fd.h"
#include "vdma/base/unique_fd.h"
#include "vdma/vhost_user/protocol.h"

namespace vdma::frontend_detail {

class BackendRequestHandler {
 public:
  virtual ~BackendRequestHandler() = default;
  // Errors are logged by the handler; they decide the reply status.
  [[nodiscard]] virtual Result<void> on_iotlb_miss(Iova iova, vhost_user::IotlbPerm perm) = 0;
  virtual void on_access_fail(Iova iova, vhost_user::IotlbPerm perm) = 0;
  virtual void on_tick() = 0;
  virtual void on_main_hangup() = 0;
};

class BackendChannelServer {
 public:
  // `channel` may be invalid (no back-end channel: only the watch and the
  // tick). `main_fd` must stay open until the server is destroyed.
  // Errors: BaseErrc::kSystem (eventfd).
  [[nodiscard]] static Result<std::unique_ptr<BackendChannelServer>> start(
      UniqueFd channel, int main_fd, BackendRequestHandler& handler, std::optional<std::chrono::milliseconds> tick);
  ~BackendChannelServer();
  BackendChannelServer(const BackendChannelServer&) = delete;
  BackendChannelServer& operator=(const BackendChannelServer&) = delete;

  [[nodiscard]] uint64_t requests_seen() const noexcept { return requests_.load(std::memory_order_relaxed); }

 private:
  BackendChannelServer(UniqueFd channel, EventFd stop, int main_fd, BackendRequestHandler& handler,
                       std::optional<std::chrono::milliseconds> tick);
  void run();
  // Reads and serves one request; false when the channel must close.
  bool serve_one();
  void reply(uint32_t request, bool need_reply, bool success);

  UniqueFd channel_;  // owned by the thread once it runs
  const EventFd stop_;
  const int main_fd_;
  BackendRequestHandler& handler_;
  const std::optional<std::chrono::milliseconds> tick_;
  std::atomic<uint64_t> requests_{0};
  std::thread thread_;
};

}  // namespace vdma::frontend_detail
