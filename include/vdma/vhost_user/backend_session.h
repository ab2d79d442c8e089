// BackendSession: the device-independent vhost-user back-end for one
// front-end connection — negotiation, the memory table, the vrings and their
// worker threads, the IOTLB and the back-end channel.
//
//   MyDevice dev;                                             // a BackendDevice
//   auto session = VDMA_TRY(BackendSession::create(std::move(conn_fd), dev));
//   Error end = session->run();   // until the front-end hangs up or misbehaves
//   if (!end.is(VhostUserErrc::kPeerClosed)) spdlog::warn("session closed: {}", end);
//
// Requests (vhost-user.rst "Front-end message types"). Handled:
// GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER, RESET_OWNER,
// SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG, GET_MAX_MEM_SLOTS,
// SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR/ENABLE, GET_VRING_BASE,
// GET_QUEUE_NUM, SET_BACKEND_REQ_FD, GET/SET_CONFIG, SET/GET_STATUS,
// RESET_DEVICE, IOTLB_MSG, GET/SET_INFLIGHT_FD. Every other request, and
// every request whose protocol feature was not negotiated, fails with
// VhostUserErrc::kBadState. A failing,
// malformed or unknown request gets the reply_policy.h treatment: an error
// reply where the protocol allows one (REPLY_ACK with NEED_REPLY, IOTLB_MSG's
// status, GET_CONFIG's empty reply), otherwise a log line naming the request
// and the reason, and the connection is closed. Successful requests without a
// spec reply are acked when REPLY_ACK and NEED_REPLY ask for it.
//
// Offered features: the device's device_features(), plus VERSION_1,
// INDIRECT_DESC, EVENT_IDX, RING_PACKED, VHOST_USER_F_PROTOCOL_FEATURES, and
// ACCESS_PLATFORM when options.offer_access_platform. Protocol features: MQ,
// REPLY_ACK, BACKEND_REQ, BACKEND_SEND_FD, CONFIG (when the device has a
// config space), CONFIGURE_MEM_SLOTS, RESET_DEVICE, STATUS, INFLIGHT_SHMFD. With
// ACCESS_PLATFORM acked, SET_FEATURES requires REPLY_ACK and BACKEND_REQ to be
// negotiated already (vhost-user.rst "IOMMU support": misses travel on the
// back-end channel and IOTLB messages are acknowledged).
//
// Rings (vhost-user.rst "Ring states"). A ring is started by SET_VRING_KICK
// (polling without a kick fd is not supported: kBadField) and stopped by
// GET_VRING_BASE, which joins its worker and replies with the next avail
// index to process (packed: index | avail wrap counter << 15; SET_VRING_BASE
// of a packed ring takes that in bits 0-15 and ignores the used position in
// bits 16-31, which equals it after a stop). A ring is
// enabled at start when PROTOCOL_FEATURES was not negotiated, else by
// SET_VRING_ENABLE. Its worker runs while it is started, enabled and
// configured (num, addresses, kick). Each running ring has one worker thread:
// kick eventfd -> pop -> BackendDevice::handle -> push used -> call eventfd.
// Ring addresses are front-end user addresses (bypass), checked against the
// memory table at SET_VRING_ADDR and translated to guest addresses when the
// ring starts, or IOVAs (ACCESS_PLATFORM), translated through the IOTLB.
//
// Memory. Changing the memory table (SET_MEM_TABLE, ADD/REM_MEM_REG) stops
// every worker, drops the device queues (keeping their positions), flushes
// the IOTLB (its host pointers point into the old mappings), applies the
// change and restarts the rings. A ring that cannot restart (its rings are no
// longer in the table) is left stopped, signalled on its err eventfd and
// logged. Stopping a ring forgets its ring translation cache and flushes the
// IOTLB: once the front-end stops a device it no longer forwards the guest's
// invalidations, so kept entries could go stale (DPDK's bug).
//
// IOTLB_MSG (ACCESS_PLATFORM acked): UPDATE maps [iova, iova+size) to the
// front-end range [uaddr, uaddr+size), which must lie inside the memory table
// (else the reply status is 1); INVALIDATE removes a range (size 0 at iova 0:
// everything). Both reply with a u64 status. After an UPDATE every worker
// parked on a miss walks its request again.
//
// Inflight I/O tracking (vhost-user.rst "Inflight I/O tracking", split and
// packed rings).
// GET_INFLIGHT_FD allocates a zeroed memfd laid out as in inflight.h for the
// requested num_queues x queue_size (in the format of the acked RING_PACKED
// bit; QEMU sets features first for this reason) and replies with it; it is
// not used until SET_INFLIGHT_FD hands an area over (refused while a ring is
// started: kBadState; the area is read in the format acked at that time). With
// an area, every popped request is marked inflight and cleared when its used
// entry is published; when a ring's queue is created, a region left by a
// previous back-end is recovered: its inflight requests are processed again
// first, in the order they were fetched, and the avail position becomes the
// used position + what they occupy (split: used idx + their number; packed:
// the region's used position + their descriptors, whatever base the
// front-end restored). A region that cannot be right fails the request that
// starts the ring (kBadField).
// RESET_DEVICE / RESET_OWNER forget the area.
//
// Threads. run()/handle_next() and every other method belong to one thread
// (the session thread); workers are internal. The session must be destroyed
// on that thread after run() returned; destruction stops every worker.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "vdma/base/error.h"
#include "vdma/base/result.h"
#include "vdma/iommu/device_iotlb.h"
#include "vdma/vhost_user/backend_device.h"
#include "vdma/vhost_user/backend_memory.h"
#include "vdma/vhost_user/inflight.h"
#include "vdma/vhost_user/message.h"
#include "vdma/vhost_user/payload_views.h"
#include "vdma/base/unique_fd.h"

namespace vdma::vhost_user {

class BackendChannel;
class Vring;
class IoThread;

struct BackendOptions {
  // GET_MAX_MEM_SLOTS, and the bound of the memory table. >= 8, because
  // SET_MEM_TABLE may always carry 8 regions.
  uint32_t max_mem_slots = 32;
  // Offer VIRTIO_F_ACCESS_PLATFORM (IOMMU mode with a device IOTLB).
  bool offer_access_platform = true;
  size_t iotlb_max_entries = 2048;
  // Busy polling: a worker that drained its ring keeps looking at it (with
  // driver notifications still suppressed) for this long before it
  // re-enables notifications, re-checks the ring (virtio 1.2 §2.7.10 /
  // §2.8.21.2) and sleeps on the kick eventfd. Costs a CPU per busy queue for
  // lower latency; 0 (the default) sleeps at once.
  std::chrono::microseconds poll{0};
  // Adaptive polling (used when `poll` is 0), in the spirit of QEMU's
  // poll-max-ns: each worker's window starts at 0, doubles (from 4 us) when
  // a chain arrived after the worker went to sleep but within poll_max of
  // the ring running empty, and halves (to 0 below 4 us) when the gap was
  // longer than poll_max. 0 disables it.
  std::chrono::microseconds poll_max{0};
  // How long the device IOTLB keeps the translations of a request's buffers
  // (IOMMU mode). kPerRequest (the default) drops them when the request
  // completes, before its used entry is published: the driver may not unmap
  // a buffer while the device owns it, so this is correct whatever
  // invalidations the front-end forwards, at the cost of a MISS per buffer
  // page per request. kPersistent keeps them until an INVALIDATE, which is
  // safe only with a front-end that forwards every unmap (QEMU 8.0 or later;
  // QEMU 7.2 with the disk behind a root port with ATS enabled; vdma-bench).
  // Ring translations are cached in both.
  enum class IotlbCache : uint8_t { kPerRequest, kPersistent };
  IotlbCache iotlb_cache = IotlbCache::kPerRequest;
  // Event-loop threads serving the queues, in the spirit of QEMU's
  // iothreads: queue q is served by thread q % iothreads, which polls all of
  // its queues at once (each queue keeps its own device I/O, used by that
  // thread only). 0 (the default): every queue gets a thread of its own.
  // At most the device's queue count.
  uint32_t iothreads = 0;
};

// What a session has done so far, readable from any thread while it runs
// (BackendSession::stats()).
struct QueueStats {
  uint32_t index = 0;
  bool running = false;       // its worker runs
  bool needs_reset = false;   // stopped on a driver error until the front-end resets it
  uint64_t requests = 0;      // used entries published
  uint64_t bytes = 0;         // bytes of those requests: readable + used length
  uint32_t in_flight = 0;     // started on the device, not yet published
  uint64_t access_fails = 0;  // IOTLB ACCESS_FAIL sent
  uint64_t misses_sent = 0;   // IOTLB MISS sent (every range of a missing chain, resends too)
  uint64_t misses_deferred = 0;  // misses held back while front-end messages were unread
};
struct SessionStats {
  std::vector<QueueStats> queues;
  bool iommu = false;             // ACCESS_PLATFORM negotiated
  IotlbStats iotlb;               // meaningful with iommu
  uint64_t iotlb_updates = 0;     // IOTLB UPDATE messages
  uint64_t iotlb_invalidations = 0;  // IOTLB INVALIDATE messages
};

class BackendSession {
 public:
  // `device` must outlive the session; device.num_queues() must be 1..256.
  // Errors: BaseErrc::kInvalidArgument (bad socket, queue count, options),
  // BaseErrc::kSystem (eventfds).
  [[nodiscard]] static Result<std::unique_ptr<BackendSession>> create(UniqueFd socket, BackendDevice& device,
                                                                      BackendOptions options = {});
  ~BackendSession();
  BackendSession(const BackendSession&) = delete;
  BackendSession& operator=(const BackendSession&) = delete;

  // Reads one request, handles it and sends its reply (or error reply).
  // Returns an error when the connection is over: VhostUserErrc::kPeerClosed
  // when the front-end hung up between messages, otherwise the error that
  // made the session close it (already logged). After an error every ring is
  // stopped and the socket closed; later calls fail at once.
  [[nodiscard]] Result<void> handle_next();

  // handle_next() until it fails; returns why the session ended. When the
  // session ran in IOMMU mode it then logs, at info level, one line that
  // scripts parse: "vhost-user IOTLB stats: hits=H misses=M
  // permission_failures=P evictions=E grace_periods=G entries=N".
  [[nodiscard]] Error run();

  [[nodiscard]] bool closed() const noexcept { return !socket_.valid(); }
  [[nodiscard]] uint64_t offered_features() const noexcept { return offered_features_; }
  [[nodiscard]] uint64_t offered_protocol_features() const noexcept { return offered_protocol_features_; }
  [[nodiscard]] uint64_t acked_features() const noexcept { return acked_features_; }
  [[nodiscard]] uint64_t acked_protocol_features() const noexcept { return protocol_features_; }
  [[nodiscard]] bool iommu_mode() const noexcept;
  [[nodiscard]] const BackendMemoryTable& memory() const noexcept { return memory_; }
  [[nodiscard]] const DeviceIotlb& iotlb() const noexcept { return iotlb_; }
  // Counters of every queue and of the IOTLB. Any thread, while the session
  // lives (relaxed atomics: a consistent snapshot is not promised).
  [[nodiscard]] SessionStats stats() const;

 private:
  BackendSession(UniqueFd socket, BackendDevice& device, const BackendOptions& options);

  // Handles a validated request; sends its spec reply on success.
  [[nodiscard]] Result<void> dispatch(const FrontendRequestView& req);
  [[nodiscard]] Result<void> require_protocol_feature(unsigned bit, FrontendRequest req) const;
  [[nodiscard]] Result<void> send_reply(const Message& reply);

  // Negotiation, ownership, status, config (backend_session.cc).
  [[nodiscard]] Result<void> set_features(uint64_t value);
  [[nodiscard]] Result<void> set_protocol_features(uint64_t value);
  [[nodiscard]] Result<void> get_config(const ConfigSpace& req);
  [[nodiscard]] Result<void> set_config(const ConfigSpace& req);
  void reset_device();

  // Inflight I/O tracking (backend_session_inflight.cc).
  [[nodiscard]] Result<void> get_inflight_fd(const InflightArea& req);
  [[nodiscard]] Result<void> set_inflight_fd(const InflightArea& area);

  // Memory table and IOTLB (backend_session_memory.cc).
  [[nodiscard]] Result<void> set_mem_table(const MemoryTable& table);
  [[nodiscard]] Result<void> add_mem_region(const MemoryRegion& region);
  [[nodiscard]] Result<void> remove_mem_region(const MemoryRegion& region);
  [[nodiscard]] Result<void> iotlb_message(const IotlbMessage& m);
  // Stops every worker and drops every device queue, for a memory change.
  void quiesce_rings();
  // Restarts every ring that should run; failures are logged, not returned.
  void resume_rings();

  // Vrings (backend_session_vring.cc).
  [[nodiscard]] Result<Vring*> vring(uint32_t index, FrontendRequest req);
  [[nodiscard]] Result<void> set_vring_num(const VringState& s);
  [[nodiscard]] Result<void> set_vring_addr(const VringAddress& a);
  [[nodiscard]] Result<void> set_vring_base(const VringState& s);
  [[nodiscard]] Result<void> get_vring_base(const VringState& s);
  [[nodiscard]] Result<void> set_vring_file(FrontendRequest req, const VringFile& f);
  [[nodiscard]] Result<void> set_vring_enable(const VringState& s);
  // Starts the ring's worker when it is started, enabled and configured.
  [[nodiscard]] Result<void> maybe_start(Vring& v);
  // Stops the ring: joins its worker, drops its queue, flushes the IOTLB.
  void stop_ring(Vring& v);
  [[nodiscard]] bool any_ring_started() const noexcept;
  [[nodiscard]] RingFormat ring_format() const noexcept;

  void close(const Error& why);

  BackendDevice& device_;
  const BackendOptions options_;
  UniqueFd socket_;
  uint64_t offered_features_ = 0;
  uint64_t offered_protocol_features_ = 0;
  uint64_t acked_features_ = 0;
  uint64_t protocol_features_ = 0;
  bool features_set_ = false;
  bool iommu_used_ = false;  // ACCESS_PLATFORM was acked at some point: run() logs the IOTLB stats
  bool owner_set_ = false;
  uint8_t status_ = 0;

  Message msg_;    // the request being handled
  Message reply_;  // its reply
  BackendMemoryTable memory_;
  // Declared before the vrings: their IOTLB views and readers must be
  // destroyed first.
  DeviceIotlb iotlb_;
  std::atomic<uint64_t> iotlb_updates_{0};
  // UPDATEs inserted (after the insert, release): workers that missed see
  // whether one arrived since their walk (Vring::wait).
  std::atomic<uint64_t> iotlb_inserted_{0};
  // Set from the moment a front-end message was read until it is handled:
  // with the socket's readability, whether messages are still to be
  // applied (a worker that misses then waits for them before it asks).
  std::atomic<bool> handling_{false};
  std::atomic<uint64_t> iotlb_invalidations_{0};
  std::unique_ptr<BackendChannel> channel_;
  // SET_INFLIGHT_FD's area; the vrings point into it, so it outlives them
  // (declared before them).
  std::optional<InflightMemory> inflight_;
  // The last area GET_INFLIGHT_FD offered; a later offer empties it (unless
  // it is inflight_'s file), so repeated requests cannot pile up memory.
  std::optional<InflightMemory> offered_inflight_;
  // BackendOptions::iothreads of them (none: a thread per ring); declared
  // before the vrings, which they serve.
  std::vector<std::unique_ptr<IoThread>> iothreads_;
  std::vector<std::unique_ptr<Vring>> vrings_;
};

}  // namespace vdma::vhost_user
