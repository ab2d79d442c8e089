// BackendDevice: what a device model (virtio-blk, ...) implements to be served
// by a vhost-user BackendSession.
//
//   class EchoDevice final : public BackendDevice {
//    public:
//     uint64_t device_features() const override { return 0; }
//     uint32_t num_queues() const override { return 1; }
//     Result<uint32_t> handle(uint32_t queue, const DescriptorChain& chain) override {
//       return copy(chain.readable, chain.writable);   // bytes written
//     }
//   };
//   EchoDevice dev;
//   auto session = VDMA_TRY(BackendSession::create(std::move(sock), dev));
//   Error end = session->run();
//
// The session owns the protocol, the memory table, the IOTLB and the rings;
// the device sees only descriptor chains whose fragments are host memory it
// may read (chain.readable) and write (chain.writable), and its config space.
//
// Threads and lifetimes:
//   - handle() (and the asynchronous calls below) run on the worker thread of `queue_index`, one worker per
//     queue, so calls for different queues are concurrent and calls for one
//     queue are serial. The fragments are valid only during the call (behind
//     an IOMMU they are covered by the worker's IOTLB read section); the
//     device must not keep them, and must not wait for the front-end inside
//     handle() (an IOTLB writer would wait for the section in turn).
//   - set_features(), read_config(), write_config() and reset() run on the
//     session thread. set_features() and reset() are only called while no
//     worker runs; read_config()/write_config() may run while workers call
//     handle(), and the device synchronises its config space itself.
//   - The device must outlive every session that serves it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "vdma/base/result.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/vhost_user/errors.h"
#include "vdma/vhost_user/protocol.h"

namespace vdma::vhost_user {

class BackendDevice {
 public:
  virtual ~BackendDevice() = default;

  // Virtio feature bits the device model offers: its device-specific bits
  // (0-23) and any reserved bits it needs beyond those the session adds
  // itself (VERSION_1, INDIRECT_DESC, EVENT_IDX, RING_PACKED, the vhost-user
  // PROTOCOL_FEATURES bit, and ACCESS_PLATFORM when the session's options
  // allow it).
  [[nodiscard]] virtual uint64_t device_features() const = 0;

  // Number of virtqueues, 1..256 (GET_QUEUE_NUM). Constant for the device's life.
  [[nodiscard]] virtual uint32_t num_queues() const = 0;

  // The features the front-end acked (SET_FEATURES), a subset of what the
  // session offered. Errors reject the request (VhostUserErrc::kBadState
  // is customary); the session keeps its previous features then.
  [[nodiscard]] virtual Result<void> set_features(uint64_t /*acked*/) { return ok(); }

  // Size of the config space in bytes, 0..256. Zero: the session does not
  // offer VHOST_USER_PROTOCOL_F_CONFIG.
  [[nodiscard]] virtual uint32_t config_size() const { return 0; }

  // GET_CONFIG: fills `out` with the config bytes at `offset`. The session
  // has checked offset + out.size() <= config_size(). Errors give the empty
  // GET_CONFIG failure reply.
  [[nodiscard]] virtual Result<void> read_config(uint32_t /*offset*/, std::span<std::byte> /*out*/) {
    return make_error(VhostUserErrc::kBadState, "device has no config space");
  }

  // SET_CONFIG: `data` at `offset` (checked against config_size()). Errors
  // give an error reply where REPLY_ACK allows, else the connection closes.
  [[nodiscard]] virtual Result<void> write_config(uint32_t /*offset*/, std::span<const std::byte> /*data*/,
                                                  ConfigFlags /*flags*/) {
    return make_error(VhostUserErrc::kBadState, "device config space is read-only");
  }

  // Processes one request of queue `queue_index` and returns the number of
  // bytes written into chain.writable (the used length). Requests are
  // completed in-band: a device reports a failed request in its own status
  // field (virtio-blk's status byte). An error means the chain cannot carry
  // a request at all (e.g. no status byte): a driver error, which must not
  // look like a completion, so the queue enters NEEDS_RESET (the err eventfd
  // is signalled) and the chain is never returned. Chains the session could
  // not translate never reach handle(): a MISS parks them until the UPDATE,
  // and a permission failure (ACCESS_FAIL) or a bad descriptor puts the
  // queue in NEEDS_RESET the same way.
  [[nodiscard]] virtual Result<uint32_t> handle(uint32_t queue_index, const DescriptorChain& chain) = 0;

  // --- Asynchronous requests (optional). ---
  //
  // A device whose requests wait for I/O lets the worker keep many in
  // flight: max_in_flight(q) > 0 says how many tags [0, max_in_flight(q))
  // queue q takes. The worker then calls start() instead of handle(): it
  // returns handle()'s answer when the request finished at once, or nullopt
  // when it runs on; reap() later reports it (tag, used length), in any
  // order. submit() is called once after each batch of start()s (one system
  // call for the batch). completion_fd(q) must be readable (POLLIN) while
  // reap() has something to report; the worker sleeps on it.
  //
  // A started request's fragments stay valid until reap() reports it: the
  // worker pins their translations (an IOTLB INVALIDATE waits for them), and
  // the memory table does not change while requests are in flight (the
  // session stops the workers, which wait for every request, first). The
  // device must not wait for the front-end inside start() either.
  struct Completion {
    uint32_t tag = 0;
    uint32_t used = 0;
  };
  [[nodiscard]] virtual uint32_t max_in_flight(uint32_t /*queue_index*/) const { return 0; }
  [[nodiscard]] virtual std::optional<Result<uint32_t>> start(uint32_t queue_index, const DescriptorChain& chain,
                                                              uint32_t /*tag*/) {
    return handle(queue_index, chain);
  }
  virtual void submit(uint32_t /*queue_index*/) {}
  [[nodiscard]] virtual size_t reap(uint32_t /*queue_index*/, std::span<Completion> /*out*/) { return 0; }
  [[nodiscard]] virtual int completion_fd(uint32_t /*queue_index*/) const { return -1; }

  // RESET_DEVICE / RESET_OWNER: the session stopped every ring and forgot
  // the negotiated features; the device drops its per-connection state.
  virtual void reset() {}
};

}  // namespace vdma::vhost_user
