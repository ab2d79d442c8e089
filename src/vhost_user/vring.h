// Vring: one virtqueue of a BackendSession — its vhost-user configuration
// and the worker that serves it (kick eventfd -> pop chains -> device
// start -> reap completions -> push used -> call eventfd). The worker is
// either the ring's own thread, or an IoThread (io_thread.h) that serves
// several rings with one poll() loop (BackendOptions::iothreads).
//
// Ownership. The configuration fields are the session thread's. The worker
// owns `queue_`, the requests and the parked-chain state while it runs; the
// session thread touches them only after stop_worker() joined it (or its
// IoThread let it go). So no field is shared between the two threads except
// stop_ (atomic) and the control eventfd, and the session never waits for a
// worker while holding a lock the worker needs.
//
// Requests in flight. The worker pops every available chain, starts each on
// the device (BackendDevice::start) under a free tag, and hands the batch to
// the device's I/O in one submit(). Up to min(queue size,
// device->max_in_flight()) requests run at once (one for a synchronous
// device). Completions are reaped as they come, in any order; their used
// entries are published in batches, oldest completion first, with one
// notification per batch (EVENT_IDX / NO_NOTIFY decide whether it is sent).
// Inflight tracking records each request from pop to push, so a killed
// back-end's successor resubmits exactly those not completed. stop_worker()
// waits for every request in flight before it returns: the memory table,
// rings and IOTLB may change only once no I/O uses them.
//
// IOMMU mode (ACCESS_PLATFORM). Ring addresses are IOVAs; the queue runs on an
// IotlbQueueView (ring translation cache) of the session's DeviceIotlb, and
// every walk of ring or chain memory happens inside a ReadSection of the
// worker's reader. A request pins what its walk translated
// (ReadSection::pin) in that section and releases the pin when its I/O has
// completed and its status is written, so no section is held across I/O and
// an INVALIDATE waits for the requests pinned before it (an epoch grace
// period, DeviceIotlb). A translation miss is never waited for inside a
// section: the worker finds the first missing IOVA (DeviceIotlb::lookup)
// and, for a chain, every other range the chain misses (the walk lists the
// descriptors after the first miss that miss too), leaves the section, sends
// BACKEND_IOTLB_MSG MISS on the back-end channel once for each (iova, perm),
// all at once, parks the chain (or, for a ring area, the whole queue) and
// sleeps on the control eventfd, which the session signals after an IOTLB
// UPDATE while the worker waits for one; requests in flight go on completing
// meanwhile. It then walks the chain again; a miss already asked for is not
// sent again before its resend delay. A new miss found while front-end
// messages are still unread (they may hold its announced UPDATE) waits for
// them, at most kMissDeferral, before it is sent. A permission failure
// sends ACCESS_FAIL and stops the queue (NEEDS_RESET).
#pragma once

#include <poll.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "backend_channel.h"
#include "inflight_packed.h"
#include "inflight_split.h"
#include "vdma/iommu/device_iotlb.h"
#include "vdma/iommu/ring_cache.h"
#include "vdma/vhost_user/backend_device.h"
#include "vdma/vhost_user/backend_memory.h"
#include "vdma/vhost_user/backend_session.h"
#include "vdma/vhost_user/payload_views.h"
#include "vdma/base/event_fd.h"
#include "vdma/base/unique_fd.h"
#include "vdma/virtio/device_queue.h"

namespace vdma::vhost_user {

class IoThread;

// What a worker uses besides its own ring. All outlive every worker.
struct WorkerServices {
  BackendDevice* device = nullptr;
  BackendChannel* channel = nullptr;
  const BackendMemoryTable* memory = nullptr;
  DeviceIotlb* iotlb = nullptr;  // non-null exactly in IOMMU mode
  // IOTLB UPDATEs inserted so far (the session counts after each insert);
  // null: wake-ups for UPDATEs are not filtered.
  const std::atomic<uint64_t>* iotlb_inserted = nullptr;
  // The session's socket (only polled, never read) and its "handling a
  // message" flag: a miss while front-end messages are unread waits for
  // them (they may be its UPDATE) before the MISS goes out. -1 / null: never.
  int frontend_socket = -1;
  const std::atomic<bool>* frontend_handling = nullptr;
  // BackendOptions::poll: how long a drained ring is polled before the
  // worker re-enables notifications and sleeps on the kick eventfd.
  std::chrono::microseconds poll{0};
  // BackendOptions::poll_max: the bound of the adaptive window (poll == 0).
  std::chrono::microseconds poll_max{0};
  // BackendOptions::iotlb_cache == kPerRequest: a completed chain's buffer
  // translations leave the IOTLB before its used entry is published.
  bool per_request_iotlb = false;
  // The event-loop thread that serves this ring with others
  // (BackendOptions::iothreads); null: the ring gets a thread of its own.
  IoThread* io_thread = nullptr;
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

  [[nodiscard]] bool running() const noexcept { return thread_.joinable() || attached_; }

  // Builds the device queue now (bypass; errors come back to the request
  // that started the ring) or leaves it to the worker (IOMMU: the rings may
  // need MISSes first), then starts the worker thread, or hands the ring to
  // services.io_thread.
  // Precondition: !running(), num != 0, addr set, kick valid.
  // Errors: those of queue creation (bypass), BaseErrc::kSystem (thread), IommuErrc (reader limit).
  [[nodiscard]] Result<void> start(const WorkerServices& services, RingFormat format, uint64_t features);

  // Stops and joins the worker (or takes the ring back from its IoThread,
  // once that waited for its requests in flight); the queue and any parked
  // chain are kept, so start() continues where it stopped. No-op when not
  // running.
  void stop_worker();

  // Drops the device queue (the rings moved, the memory changed, or the ring
  // stopped), keeping its position in `base`; forgets the ring translation
  // cache and the parked chain. Precondition: !running().
  void drop_queue();

  // The position GET_VRING_BASE reports: the next avail index to process
  // (split), or next index | wrap counter << 15 (packed). A parked chain was
  // not processed, so it counts as available.
  [[nodiscard]] uint16_t position() const noexcept;

  // Wakes a running worker (a stop). Any thread.
  void wake() noexcept;
  // After an IOTLB UPDATE was inserted (and WorkerServices::iotlb_inserted
  // counted it, then a seq_cst fence): wakes the worker if it waits on
  // control and is not broken (a MISS outstanding, a ring permission an
  // UPDATE may fix), not while it waits for a kick. Session thread.
  void update_arrived() noexcept;

  // Its counters (BackendSession::stats). Any thread.
  [[nodiscard]] QueueStats stats() const noexcept;

 private:
  friend class IoThread;
  explicit Vring(EventFd control) noexcept : control_(std::move(control)) {}

  enum class Next : uint8_t {
    kWaitKick,     // ring drained: sleep until a kick (or control)
    kWaitControl,  // parked or broken: sleep until control (UPDATE, stop)
    kAgain,        // a concurrent IOTLB edit raced a lookup: run again now
    kRetrySoon,    // an IOTLB writer holds the table: reap meanwhile, retry in 1 ms
    kPoll,         // IoThread only: the ring is empty inside its poll window; step again soon
  };
  // What a worker sleeps on after a step (wait()): built by prepare_wait(),
  // handed to poll(), read back by finish_wait(). An IoThread polls the
  // sets of all its rings at once.
  struct WaitSet {
    // [0] control, [1] kick (only when waiting for one), [2] the back-end
    // channel while it holds bytes it could not send without blocking, [3]
    // the device's completions while requests are in flight.
    pollfd fds[4] = {};
    int timeout_ms = -1;  // -1: no timeout
    bool want_kick = false;
    bool awaits_update = false;
  };
  // Fills `w` for sleeping after `next`. False: an UPDATE came in since the
  // step began, so the worker must not sleep (nothing to finish then).
  [[nodiscard]] bool prepare_wait(Next next, WaitSet& w);
  // After the poll of `w` returned `poll_result` (its revents filled in).
  void finish_wait(WaitSet& w, int poll_result);
  // One turn of the worker: the IOTLB insert count noted, then step().
  [[nodiscard]] Next turn();
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
  [[nodiscard]] Result<std::unique_ptr<DeviceQueue>> make_queue_inner(const DeviceMemory& mem);
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
  struct Request;
  // push_used() of `r` framed by the inflight bookkeeping.
  [[nodiscard]] Result<void> push(Request& r);
  void forget_inflight() noexcept;
  [[nodiscard]] Result<RingAddresses> ring_addresses() const;
  void worker_main();
  [[nodiscard]] Next step();
  [[nodiscard]] Next create_queue_iommu();
  // The ones below return nullopt when the worker may go on, otherwise how to wait.
  // resume_parked: walks the parked chain again and, when complete, starts
  // it on the device in the same read section.
  [[nodiscard]] std::optional<Next> resume_parked();
  // Starts chain_ (walked without error) on the device under a free tag, in
  // the section of its walk: moves the chain into the request, pins its
  // translations, and queues it in done_ when it finished at once. An
  // error from the device (no request in the chain) stops the queue.
  [[nodiscard]] std::optional<Next> start_request(const ReadSection* section);
  // Reaps the device's completions (without waiting): releases their pins
  // and queues them in done_.
  void reap();
  // Publishes done_, oldest first: drops the batch's translations
  // (per-request policy, outside any section), then pushes the used entries
  // in one section. A used ring that lost its translation keeps the rest
  // pending (MISS) instead of losing them.
  [[nodiscard]] std::optional<Next> publish_done();
  // A chain walked with an error: park it (MISS), or stop the queue
  // (ACCESS_FAIL, bad descriptor). `fault` is find_chain_fault()'s answer.
  [[nodiscard]] std::optional<Next> dispose_chain_error(const std::optional<Fault>& fault);
  [[nodiscard]] Next drain();
  // The poll window now: BackendOptions::poll, or the adaptive one.
  [[nodiscard]] std::chrono::nanoseconds poll_window() const noexcept {
    return services_.poll.count() != 0 ? std::chrono::nanoseconds(services_.poll) : adaptive_window_;
  }
  // Adaptive polling: a chain arrived `gap` after the ring ran empty.
  void adapt_poll_window(std::chrono::nanoseconds gap) noexcept;
  // On stop: waits for every request in flight, then publishes what it can.
  void quiesce();
  // Sizes requests_ for this start (only while none is in use).
  void size_requests();
  [[nodiscard]] uint32_t requests_in_use() const noexcept {
    return static_cast<uint32_t>(requests_.size() - free_tags_.size());
  }
  [[nodiscard]] std::optional<Fault> find_ring_fault(const ReadSection& section);
  [[nodiscard]] std::optional<Fault> find_chain_fault(const ReadSection& section);
  // Sends ACCESS_FAIL, or a MISS unless the same one was sent less than its
  // retransmission delay ago (then wait() wakes when the delay is over).
  void report_fault(const Fault& fault);
  void enter_broken(const Error& why);
  void notify_driver();
  void wait(Next next);

  EventFd control_;  // stop and IOTLB-update wake-ups
  // Statistics: written by the worker (relaxed stores), read by stats().
  std::atomic<uint64_t> stat_requests_{0};
  std::atomic<uint64_t> stat_bytes_{0};
  std::atomic<uint32_t> stat_in_flight_{0};
  std::atomic<uint64_t> stat_access_fails_{0};
  std::atomic<uint64_t> stat_misses_sent_{0};
  std::atomic<uint64_t> stat_misses_deferred_{0};
  std::atomic<bool> stat_running_{false};
  std::atomic<bool> stat_broken_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> awaiting_update_{false};  // the worker sleeps until an UPDATE (wait())
  std::thread thread_;
  bool attached_ = false;  // session thread: handed to services_.io_thread

  // --- Worker state (owned by the worker while it runs) ---
  WorkerServices services_;
  RingFormat format_ = RingFormat::kSplit;
  uint64_t features_ = 0;
  std::unique_ptr<IotlbQueueView> view_;      // IOMMU mode; outlives queue_
  std::unique_ptr<DeviceQueue> queue_;
  std::optional<ReaderHandle> reader_;        // IOMMU mode
  DescriptorChain chain_;                      // the chain being walked (or parked)
  bool parked_ = false;                        // chain_ waits for an IOTLB UPDATE
  bool broken_ = false;                        // NEEDS_RESET or unusable rings: wait for a stop
  // make_queue() resumed a ring an earlier owner used: the worker signals the
  // call fd once before anything else (see make_queue()).
  bool signal_resumed_ = false;
  // A request: from its start on the device until its used entry is
  // published. Indexed by tag; its vectors keep their capacity, so a warm
  // worker does not allocate.
  struct Request {
    DescriptorChain chain;
    std::vector<AddrRange<Iova>> translated;  // per-request policy: the ranges its walk translated
    ReadPin pin;                               // IOMMU mode, while the device uses its memory
    bool resubmitted = false;                  // came from the inflight region's resubmit list
    uint16_t packed_entry = 0;                 // packed inflight: its head entry in the region
    bool push_prepared = false;                // the region's before_push step is done
    uint32_t used = 0;                         // its used length, once done
    uint64_t pop_seq = 0;                      // pop order, for position()
  };
  std::vector<Request> requests_;
  std::vector<uint32_t> free_tags_;
  std::vector<uint32_t> done_;                 // finished, used entry not published; oldest first
  uint32_t in_flight_ = 0;                     // started on the device, not reaped
  uint64_t pops_ = 0;                          // chains handed out by next_chain()
  uint64_t last_published_seq_ = 0;            // pop_seq of the last request published
  std::vector<BackendDevice::Completion> reaped_;  // reap() scratch
  std::chrono::nanoseconds adaptive_window_{0};     // BackendOptions::poll_max
  std::chrono::steady_clock::time_point empty_since_{};  // the ring ran empty then...
  bool empty_ = false;                                   // ...and no chain came since
  // IoThread: drain() returned kPoll inside a poll window ending then.
  bool polling_ = false;
  std::chrono::steady_clock::time_point poll_deadline_{};
  std::vector<AddrRange<Iova>> forget_batch_;      // publish_done() scratch
  // The last MISS sent, until the worker gets past it. Sent again when it is
  // still missing at resend_at (the UPDATE may have been taken away by an
  // INVALIDATE before this worker looked, or the MISS was dropped).
  struct OutstandingMiss {
    Iova iova;
    Access access = Access::kNone;
    std::chrono::steady_clock::time_point resend_at;
    std::chrono::milliseconds delay{0};
    // Not sent yet: front-end messages were unread when it was found (a
    // front-end that announces its mappings has the UPDATE on its way).
    // Sent once they are read and it still misses, or at resend_at.
    bool deferred = false;
    // DeviceIotlb::next_insert_seq() when it was asked: the answer gets
    // this number or a later one (see answer_taken_away).
    uint64_t asked_seq = 0;
  };
  static constexpr std::chrono::milliseconds kMissDeferral{2};
  static constexpr std::chrono::milliseconds kMissResendDelay{1000};
  static constexpr std::chrono::milliseconds kMaxMissResendDelay{8000};
  std::optional<OutstandingMiss> outstanding_miss_;
  // The chain's other misses, found with the fault report_fault() gets
  // (find_chain_fault), and those sent along with outstanding_miss_ (not
  // asked again before their resend delay). Cleared with it.
  struct SentMiss {
    Iova iova;
    Access access = Access::kNone;
    std::chrono::steady_clock::time_point at;
    uint64_t asked_seq = 0;  // as OutstandingMiss::asked_seq
  };
  static constexpr size_t kMaxMoreMisses = 32;
  std::vector<Fault> more_faults_;
  std::vector<SentMiss> also_sent_;
  void clear_misses() noexcept;  // outstanding_miss_ and also_sent_
  // Whether an entry inserted since an ask noted `asked_seq` has lost
  // translations since (DeviceIotlb::removed_since): its answer may have
  // come and gone, so a range that still misses is not on its way any more.
  [[nodiscard]] bool answer_taken_away(uint64_t asked_seq) const noexcept;
  // Whether the front-end's messages are not all applied yet: the session
  // handles one, or the socket holds more.
  [[nodiscard]] bool frontend_pending() const noexcept;
  uint64_t seen_inserted_ = 0;                 // *iotlb_inserted before the last step()
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
