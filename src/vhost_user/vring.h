// Vring: one virtqueue of a BackendSession — its vhost-user configuration
// and the worker thread that serves it (kick eventfd -> pop chains -> device
// handle -> push used -> call eventfd).
//
// Ownership. The configuration fields are the session thread's. The worker
// owns `queue_`, the chain scratch and the parked-chain state while it runs;
// the session thread touches them only after stop_worker() joined it. So no
// field is shared between the two threads except stop_ (atomic) and the
// control eventfd, and the session never waits for a worker while holding a
// lock the worker needs.
//
// IOMMU mode (ACCESS_PLATFORM). Ring addresses are IOVAs; the queue runs on an
// IotlbQueueView (ring translation cache) of the session's DeviceIotlb, and
// every use of ring or chain memory happens inside a ReadSection of the
// worker's reader. A translation miss is never waited for inside a section:
// the worker finds the first missing IOVA (DeviceIotlb::lookup), leaves the
// section, sends BACKEND_IOTLB_MSG MISS on the back-end channel once for
// that (iova, perm), parks the chain (or, for a ring area, the whole queue)
// and sleeps on the control eventfd, which the session signals after each
// IOTLB UPDATE. It then walks the chain again; a miss for the same range is
// not sent again. A permission failure sends ACCESS_FAIL and returns the
// chain with used length 0.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>

#include "backend_channel.h"
#include "inflight_packed.h"
#include "inflight_split.h"
#include "vdma/iommu/device_iotlb.h"
#include "vdma/iommu/ring_cache.h"
#include "vdma/vhost_user/backend_device.h"
#include "vdma/vhost_user/backend_memory.h"
#include "vdma/vhost_user/payload_views.h"
#include "vdma/base/unique_fd.h"
#include "vdma/virtio/device_queue.h"

namespace vdma::vhost_user {

// What a worker uses besides its own ring. All outlive every worker.
struct WorkerServices {
  BackendDevice* device = nullptr;
  BackendChannel* channel = nullptr;
  const BackendMemoryTable* memory = nullptr;
  DeviceIotlb* iotlb = nullptr;  // non-null exactly in IOMMU mode
  // BackendOptions::poll: how long a drained ring is polled before the
  // worker re-enables notifications and sleeps on the kick eventfd.
  std::chrono::microseconds poll{0};
  // BackendOptions::iotlb_cache == kPerRequest: a completed chain's buffer
  // translations leave the IOTLB before its used entry is published.
  bool per_request_iotlb = false;
};

class Vring {
 public:
  // Errors: BaseErrc::kSystem (eventfd).
  [[nodiscard]] static Result<std::unique_ptr<Vring>> create(uint32_t index);
  ~Vring();
  Vring(const Vring&) = delete;
  Vring& operator=(const Vring&) = delete;

  // --- Configuration (session thread; the worker is stopped unless noted) ---
  uint32_t index = 0;
  uint16_t num = 0;  // SET_VRING_NUM; 0 = not set
  std::optional<VringAddress> addr;
  std::optional<uint16_t> base;  // SET_VRING_BASE, or the position saved at the last drop
  UniqueFd kick;
  UniqueFd call;
  UniqueFd err;
  bool started = false;  // a kick fd arrived; cleared by GET_VRING_BASE
  bool enabled = false;
  // This queue's region in the SET_INFLIGHT_FD area (null: no inflight
  // tracking), the queue size and the ring format the area was made for.
  std::byte* inflight_region = nullptr;
  uint16_t inflight_queue_size = 0;
  RingFormat inflight_format = RingFormat::kSplit;

  [[nodiscard]] bool running() const noexcept { return thread_.joinable(); }

  // Builds the device queue now (bypass; errors come back to the request
  // that started the ring) or leaves it to the worker (IOMMU: the rings may
  // need MISSes first), then starts the worker thread.
  // Precondition: !running(), num != 0, addr set, kick valid.
  // Errors: those of queue creation (bypass), BaseErrc::kSystem (thread), IommuErrc (reader limit).
  [[nodiscard]] Result<void> start(const WorkerServices& services, RingFormat format, uint64_t features);

  // Stops and joins the worker; the queue and any parked chain are kept, so
  // start() continues where it stopped. No-op when not running.
  void stop_worker();

  // Drops the device queue (the rings moved, the memory changed, or the ring
  // stopped), keeping its position in `base`; forgets the ring translation
  // cache and the parked chain. Precondition: !running().
  void drop_queue();

  // The position GET_VRING_BASE reports: the next avail index to process
  // (split), or next index | wrap counter << 15 (packed). A parked chain was
  // not processed, so it counts as available.
  [[nodiscard]] uint16_t position() const noexcept;

  // Wakes a running worker (after an IOTLB UPDATE). Any thread.
  void wake() noexcept;

 private:
  explicit Vring(UniqueFd control) noexcept : control_(std::move(control)) {}

  enum class Next : uint8_t {
    kWaitKick,     // ring drained: sleep until a kick (or control)
    kWaitControl,  // parked or broken: sleep until control (UPDATE, stop)
    kAgain,        // a concurrent IOTLB edit raced a lookup: run again now
  };
  struct Fault {
    Iova iova;
    Access access = Access::kNone;
    bool permission = false;  // entry exists but forbids access (ACCESS_FAIL), else MISS
  };

  // --- Inflight tracking (vring_inflight.cc) ---
  // Creates the device queue at `base`; with an inflight region, recovers it
  // (vhost-user.rst "When reconnecting"), moves the avail position past the
  // requests still in flight and queues them for resubmission.
  [[nodiscard]] Result<std::unique_ptr<DeviceQueue>> make_queue(const DeviceMemory& mem);
  [[nodiscard]] Result<std::unique_ptr<DeviceQueue>> make_queue_at(const DeviceMemory& mem, uint16_t position) const;
  [[nodiscard]] Result<std::unique_ptr<DeviceQueue>> recover_split(const DeviceMemory& mem,
                                                                   std::unique_ptr<DeviceQueue> q, uint16_t start);
  [[nodiscard]] Result<std::unique_ptr<DeviceQueue>> recover_packed(const DeviceMemory& mem,
                                                                    std::unique_ptr<DeviceQueue> q, uint16_t start);
  // The next chain: a resubmitted inflight one first, else pop() (marking it inflight).
  [[nodiscard]] Result<bool> next_chain();
  // Walks the parked chain_ again: from the ring, or from the region's
  // copies for a resubmitted packed chain (its ring slots may hold used elements).
  [[nodiscard]] Result<void> rewalk_current();
  // push_used() framed by the inflight bookkeeping.
  [[nodiscard]] Result<void> push(uint32_t written);
  void forget_inflight() noexcept;
  [[nodiscard]] Result<RingAddresses> ring_addresses() const;
  void worker_main();
  [[nodiscard]] Next step();
  [[nodiscard]] Next create_queue_iommu();
  // The four below return nullopt when the chain is done (its used entry
  // published) and the worker may go on with the next; otherwise how to wait.
  // resume_parked: walks the parked chain again and, when complete, hands
  // it to the device in the same read section.
  [[nodiscard]] std::optional<Next> resume_parked();
  // finish_chain: after handle() (which runs in the section of the walk):
  // stops the queue on a device error, else drops the chain's translations
  // (per-request policy) and publishes its completion. Outside any section.
  [[nodiscard]] std::optional<Next> finish_chain(Result<uint32_t> written);
  // publish_completion: pushes completion_; a used ring that lost its
  // translation keeps it pending (MISS) instead of losing it.
  [[nodiscard]] std::optional<Next> publish_completion();
  // A chain walked with an error: park it (MISS), or stop the queue
  // (ACCESS_FAIL, bad descriptor). `fault` is find_chain_fault()'s answer.
  [[nodiscard]] std::optional<Next> dispose_chain_error(const std::optional<Fault>& fault);
  [[nodiscard]] Next drain();
  // BackendOptions::iotlb_cache per-request: drops the IOTLB entries the
  // current chain's buffers used. Outside any section.
  void forget_request_translations();
  [[nodiscard]] std::optional<Fault> find_ring_fault(const ReadSection& section);
  [[nodiscard]] std::optional<Fault> find_chain_fault(const ReadSection& section);
  // Sends ACCESS_FAIL, or a MISS unless the same one was sent less than its
  // retransmission delay ago (then wait() wakes when the delay is over).
  void report_fault(const Fault& fault);
  void enter_broken(const Error& why);
  void notify_driver();
  void wait(Next next);

  UniqueFd control_;  // eventfd: stop and IOTLB-update wake-ups
  std::atomic<bool> stop_{false};
  std::thread thread_;

  // --- Worker state (owned by the worker while it runs) ---
  WorkerServices services_;
  RingFormat format_ = RingFormat::kSplit;
  uint64_t features_ = 0;
  std::unique_ptr<IotlbQueueView> view_;      // IOMMU mode; outlives queue_
  std::unique_ptr<DeviceQueue> queue_;
  std::optional<ReaderHandle> reader_;        // IOMMU mode
  DescriptorChain chain_;                      // scratch, reused: no allocation once warm
  bool parked_ = false;                        // chain_ waits for an IOTLB UPDATE
  bool broken_ = false;                        // NEEDS_RESET or unusable rings: wait for a stop
  // chain_ was handled with this used length; its used entry is not
  // published yet (the used ring lost its translation in between).
  std::optional<uint32_t> completion_;
  bool push_prepared_ = false;                 // the inflight region's before_push step is done for chain_
  // The last MISS sent, until the worker gets past it. Sent again when it is
  // still missing at resend_at (the UPDATE may have been taken away by an
  // INVALIDATE before this worker looked, or the MISS was dropped).
  struct OutstandingMiss {
    Iova iova;
    Access access = Access::kNone;
    std::chrono::steady_clock::time_point resend_at;
    std::chrono::milliseconds delay{0};
  };
  static constexpr std::chrono::milliseconds kMissResendDelay{1000};
  static constexpr std::chrono::milliseconds kMaxMissResendDelay{8000};
  std::optional<OutstandingMiss> outstanding_miss_;
  IotlbLookup lookup_;                         // scratch for fault lookups
  // Inflight tracking, with inflight_region, while queue_ exists: one of the two.
  std::optional<SplitInflight> inflight_;
  std::optional<PackedInflight> packed_inflight_;
  std::vector<uint16_t> resubmit_;                       // split: heads of a previous owner, counter order
  std::vector<PackedInflight::Chain> packed_resubmit_;  // packed: chains of a previous owner, counter order
  size_t resubmit_next_ = 0;  // first of resubmit_ / packed_resubmit_ not handed out yet
  bool resubmitted_ = false;  // chain_ came from resubmit_ / packed_resubmit_
  uint16_t packed_entry_ = 0; // packed: chain_'s head entry in the region
};

}  // namespace vdma::vhost_user
