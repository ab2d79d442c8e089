#include "loopback_transport.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "vdma/base/log.h"
#include "vdma/blk/storage.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/features.h"

namespace vdma::testing {

struct LoopbackTransport::Queue {
  uint32_t index = 0;
  std::unique_ptr<DriverQueue> driver;
  std::unique_ptr<DeviceQueue> device;
  UniqueFd kick;  // blocking: the device thread sleeps in read()
  UniqueFd call;  // non-blocking; invalid when polling
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> kicks{0};
  std::atomic<uint64_t> completed{0};
  std::atomic<uint64_t> interrupts{0};
  mutable std::mutex error_mu;
  std::optional<Error> error;  // guarded by error_mu
  // Out-of-order completion: one batch of chains and their used lengths,
  // sized to the queue so the device thread never allocates.
  std::vector<DescriptorChain> batch;
  std::vector<uint32_t> used_len;
  std::thread thread;
};

namespace {

Result<UniqueFd> make_eventfd(int flags) {
  const int fd = ::eventfd(0, EFD_CLOEXEC | flags);
  if (fd < 0) return system_error("eventfd", errno);
  return UniqueFd(fd);
}

void signal(int fd) {
  const uint64_t one = 1;
  // An eventfd write fails only when the counter would overflow 2^64-2,
  // which a test never reaches.
  while (::write(fd, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

}  // namespace

Result<std::unique_ptr<LoopbackTransport>> LoopbackTransport::create(LoopbackOptions options) {
  std::unique_ptr<LoopbackTransport> t(new LoopbackTransport());
  const uint64_t shared_base = options.ram_size;
  t->layout_ = LoopbackLayout{.ram = {Gpa{0}, options.ram_size},
                              .coherent = {Gpa{shared_base}, options.coherent_size},
                              .bounce = {Gpa{shared_base + options.coherent_size}, options.bounce_size}};
  t->mem_ = VDMA_TRY(GuestMemory::create(
      {{.base = Gpa{0}, .size = options.ram_size, .attr = MemAttr::kPrivate, .name = "ram"},
       {.base = Gpa{shared_base},
        .size = options.coherent_size + options.bounce_size,
        .attr = MemAttr::kShared,
        .name = "shared"}}));
  t->ram_alloc_ = std::make_unique<GpaAllocator>(t->layout_.ram);
  if (options.make_dma) {
    t->dma_ = VDMA_TRY(options.make_dma(*t->mem_, t->layout_));
  } else {
    t->dma_ = std::make_unique<IdentityDmaOps>(*t->mem_, t->layout_.coherent);
  }
  if (options.make_device_memory) {
    t->dev_mem_ = VDMA_TRY(options.make_device_memory(*t->mem_, *t->dma_));
  } else {
    t->dev_mem_ = std::make_unique<RegionTable>(RegionTable::bypass(*t->mem_));
  }

  const blk::StorageSpec spec = VDMA_TRY(blk::parse_storage_spec(options.storage));
  auto storage = VDMA_TRY(blk::open_storage(spec, {.read_only = options.read_only}));
  blk::BlkOptions blk_options = options.blk;
  blk_options.num_queues = options.num_queues;
  t->device_ = VDMA_TRY(blk::BlkDevice::create(std::move(storage), blk_options));

  t->offered_ = t->device_->offered_features() | feature_bit(kFeatureVersion1) | feature_bit(kFeatureEventIdx) |
                feature_bit(kFeatureIndirectDesc) | feature_bit(kFeatureRingPacked) |
                feature_bit(kFeatureAccessPlatform);
  uint64_t wanted = options.features.value_or(t->offered_ & ~feature_bit(kFeatureAccessPlatform));
  wanted &= ~feature_bit(kFeatureRingPacked);
  if (options.format == RingFormat::kPacked) wanted |= feature_bit(kFeatureRingPacked);
  t->features_ = VDMA_TRY(negotiate_features(t->offered_, wanted));
  VDMA_TRY(t->device_->set_features(t->features_));
  t->premap_ = options.premap_buffers;
  t->polling_ = options.polling;
  t->out_of_order_ = options.complete_out_of_order;

  const QueueConfig config{.size = options.queue_size, .features = t->features_, .notify_flush = options.notify_flush};
  for (uint32_t i = 0; i < options.num_queues; ++i) {
    auto q = std::make_unique<Queue>();
    q->index = i;
    q->driver = VDMA_TRY(make_driver_queue(options.format, *t->dma_, config));
    q->device = VDMA_TRY(make_device_queue(options.format, *t->dev_mem_, config, q->driver->ring_addresses()));
    q->kick = VDMA_TRY(make_eventfd(0));
    if (!options.polling) q->call = VDMA_TRY(make_eventfd(EFD_NONBLOCK));
    q->batch.resize(options.queue_size);
    q->used_len.resize(options.queue_size);
    t->queues_.push_back(std::move(q));
  }
  // Threads start last: every queue they serve exists.
  for (auto& q : t->queues_) {
    Queue* raw = q.get();
    q->thread = std::thread([tp = t.get(), raw] { tp->serve(*raw); });
  }
  return t;
}

LoopbackTransport::~LoopbackTransport() {
  for (auto& q : queues_) {
    q->stop.store(true, std::memory_order_release);
    signal(q->kick.get());
  }
  for (auto& q : queues_) {
    if (q->thread.joinable()) q->thread.join();
  }
}

void LoopbackTransport::serve(Queue& q) {
  DescriptorChain chain;
  auto fail = [&q](Error e) {
    spdlog::error("loopback queue {}: {}", q.index, e);
    std::lock_guard lock(q.error_mu);
    if (!q.error) q.error = std::move(e);
  };
  while (true) {
    uint64_t count = 0;
    if (::read(q.kick.get(), &count, sizeof(count)) < 0) {
      if (errno == EINTR) continue;
      fail(system_error("read kick eventfd", errno));
      return;
    }
    if (q.stop.load(std::memory_order_acquire)) return;
    // Drain, then re-enable notifications; enable() says whether chains
    // arrived in between (poll again before sleeping).
    while (true) {
      q.device->disable_notifications();
      size_t n = 0;
      while (true) {
        DescriptorChain& c = out_of_order_ ? q.batch[n] : chain;
        auto got = q.device->pop(c);
        if (!got) {
          fail(std::move(got).error());
          return;
        }
        if (!*got) break;
        auto handled = device_->handle(q.index, c);
        if (!handled) {
          fail(std::move(handled).error());
          return;
        }
        const uint32_t used = *handled;
        if (out_of_order_) {
          q.used_len[n++] = used;
          if (n == q.batch.size()) break;
          continue;
        }
        if (auto r = q.device->push_used(c, used); !r) {
          fail(std::move(r).error());
          return;
        }
        q.completed.fetch_add(1, std::memory_order_relaxed);
      }
      // The batch goes back last-popped first: completions overtake.
      for (size_t k = n; k-- > 0;) {
        if (auto r = q.device->push_used(q.batch[k], q.used_len[k]); !r) {
          fail(std::move(r).error());
          return;
        }
        q.completed.fetch_add(1, std::memory_order_relaxed);
      }
      if (q.device->should_notify() && q.call) {
        q.interrupts.fetch_add(1, std::memory_order_relaxed);
        signal(q.call.get());
      }
      if (q.device->enable_notifications()) break;
    }
  }
}

DriverQueue& LoopbackTransport::queue(uint32_t index) noexcept {
  VDMA_CHECK(index < queues_.size(), "loopback: queue index out of range");
  return *queues_[index]->driver;
}

Result<void> LoopbackTransport::notify(uint32_t index) {
  if (index >= queues_.size()) {
    return make_error(BaseErrc::kInvalidArgument, "notify: queue {} out of range ({} queues)", index, queues_.size());
  }
  queues_[index]->kicks.fetch_add(1, std::memory_order_relaxed);
  signal(queues_[index]->kick.get());
  return ok();
}

int LoopbackTransport::interrupt_fd(uint32_t index) const noexcept {
  VDMA_CHECK(index < queues_.size(), "loopback: queue index out of range");
  return queues_[index]->call.get();
}

Result<void> LoopbackTransport::read_config(uint32_t offset, std::span<std::byte> out) {
  return device_->read_config(offset, out);
}

Result<Gpa> LoopbackTransport::alloc_buffer(uint64_t size, uint64_t align) {
  std::lock_guard lock(alloc_mu_);
  const Gpa gpa = VDMA_TRY(ram_alloc_->allocate(size, align));
  VDMA_TRY(mem_->fill(gpa, size, std::byte{0}));
  ram_in_use_ += size;
  return gpa;
}

Result<void> LoopbackTransport::free_buffer(Gpa gpa, uint64_t size) {
  std::lock_guard lock(alloc_mu_);
  VDMA_TRY(ram_alloc_->free(gpa, size));
  ram_in_use_ -= size;
  return ok();
}

uint64_t LoopbackTransport::buffer_bytes_in_use() const {
  std::lock_guard lock(alloc_mu_);
  return ram_in_use_;
}

uint64_t LoopbackTransport::kicks(uint32_t index) const noexcept {
  return queues_.at(index)->kicks.load(std::memory_order_relaxed);
}
uint64_t LoopbackTransport::completed(uint32_t index) const noexcept {
  return queues_.at(index)->completed.load(std::memory_order_relaxed);
}
uint64_t LoopbackTransport::interrupts(uint32_t index) const noexcept {
  return queues_.at(index)->interrupts.load(std::memory_order_relaxed);
}

std::optional<Error> LoopbackTransport::device_error(uint32_t index) const {
  const Queue& q = *queues_.at(index);
  std::lock_guard lock(q.error_mu);
  return q.error;
}

}  // namespace vdma::testing
