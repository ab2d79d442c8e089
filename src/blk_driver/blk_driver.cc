// BlkDriver: create() and the asynchronous request path (virtio 1.2 §5.2.6).
#include "vdma/blk_driver/blk_driver.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <optional>

#include "blk_driver_impl.h"
#include "vdma/base/log.h"
#include "vdma/virtio/features.h"

namespace vdma::blk {

namespace {

// A status byte no device writes: a completion that still carries it tells
// the caller the device never wrote the status.
constexpr uint8_t kStatusUnwritten = 0xff;
// Largest indirect table a queue builds when the transport left
// QueueConfig::max_indirect at its default (min(size, 64), driver_queue.h).
constexpr uint32_t kDefaultMaxIndirect = 64;
// How many in-flight slots a timeout message lists.
constexpr uint32_t kSlotsNamed = 32;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

uint32_t request_type(BlkOp op) noexcept {
  switch (op) {
    case BlkOp::kRead: return kBlkTypeIn;
    case BlkOp::kWrite: return kBlkTypeOut;
    case BlkOp::kFlush: return kBlkTypeFlush;
    case BlkOp::kDiscard: return kBlkTypeDiscard;
    case BlkOp::kWriteZeroes: return kBlkTypeWriteZeroes;
    case BlkOp::kGetId: return kBlkTypeGetId;
  }
  return kBlkTypeIn;
}

uint64_t ceil_div(uint64_t a, uint64_t b) noexcept { return (a + b - 1) / b; }

}  // namespace

BlkDriver::BlkDriver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

BlkDriver::~BlkDriver() {
  for (const QueueState& q : impl_->queues) {
    // The device may still write into these buffers; the caller was meant
    // to reap (or reset the device) first. Say so: what follows frees them.
    if (q.in_flight != 0) {
      spdlog::error("blk driver: destroyed with {} requests in flight on queue {}", q.in_flight, q.index);
    }
  }
}

Result<std::unique_ptr<BlkDriver>> BlkDriver::create(VirtioTransport& transport, const BlkDriverOptions& options) {
  auto impl = std::make_unique<Impl>(transport);
  Impl& d = *impl;
  d.limits = VDMA_TRY(read_device_limits(transport));
  const DeviceLimits& l = d.limits;
  const uint32_t nq = transport.num_queues();
  if (nq == 0) return make_error(BlkErrc::kInvalidOption, "the transport has no queues");
  if (has_feature(l.features, kBlkFeatureMq) && nq > l.config_num_queues) {
    return make_error(BlkErrc::kInvalidOption, "the transport set up {} queues but the device's num_queues is {}", nq,
                      l.config_num_queues);
  }
  if (!has_feature(l.features, kBlkFeatureMq) && nq > 1) {
    return make_error(BlkErrc::kInvalidOption, "the transport set up {} queues but MQ was not negotiated", nq);
  }

  if (options.queue_depth == 0) return make_error(BlkErrc::kInvalidOption, "queue_depth 0");
  if (options.max_io_bytes == 0 || options.max_io_bytes % kSectorSize != 0) {
    return make_error(BlkErrc::kInvalidOption, "max_io_bytes {} is not a positive multiple of 512",
                      options.max_io_bytes);
  }
  DmaOps& dma = transport.dma();
  const bool premap = transport.premap_buffers();
  const uint64_t max_mapping = dma.max_mapping_size();
  // A premapped data buffer is one mapping; otherwise the queue maps each
  // segment on its own, so a segment must fit one mapping.
  if (premap && options.max_io_bytes > max_mapping) {
    return make_error(BlkErrc::kInvalidOption, "max_io_bytes {} is above the largest DMA mapping {} of the {} ops",
                      options.max_io_bytes, max_mapping, dma.kind());
  }
  d.segment_bytes = premap ? l.max_segment_bytes : std::min<uint64_t>(l.max_segment_bytes, max_mapping);
  if (d.segment_bytes == 0) {
    return make_error(BlkErrc::kInvalidOption, "the {} DMA ops map no byte at all", dma.kind());
  }
  const uint64_t data_segments = ceil_div(options.max_io_bytes, d.segment_bytes);
  if (data_segments > l.max_data_segments) {
    return make_error(BlkErrc::kInvalidOption,
                      "max_io_bytes {} needs {} data segments of at most {} bytes but the device takes {} (seg_max)",
                      options.max_io_bytes, data_segments, d.segment_bytes, l.max_data_segments);
  }
  d.depth = options.queue_depth;
  d.max_io_bytes = options.max_io_bytes;
  // Longest chain: header + data segments + status (a discard/write-zeroes
  // chain has 3 descriptors, which data_segments >= 1 already covers).
  const uint64_t max_chain = data_segments + 2;
  const bool indirect = has_feature(l.features, kFeatureIndirectDesc);

  d.queues.resize(nq);
  for (uint32_t i = 0; i < nq; ++i) {
    QueueState& q = d.queues[i];
    q.index = i;
    q.vq = &transport.queue(i);
    const uint32_t free_descs = q.vq->num_free();
    if (max_chain > q.vq->size()) {
      return make_error(BlkErrc::kInvalidOption, "a request of up to {} descriptors does not fit queue {} of size {}",
                        max_chain, i, q.vq->size());
    }
    // Every free slot must be submittable without VirtioErrc::kNoSpace: with
    // INDIRECT_DESC a chain takes one ring descriptor (when it fits the
    // queue's indirect table), otherwise one per segment.
    const uint64_t per_request =
        indirect && max_chain <= std::min<uint32_t>(q.vq->size(), kDefaultMaxIndirect) ? 1 : max_chain;
    if (uint64_t{d.depth} * per_request > free_descs) {
      return make_error(BlkErrc::kInvalidOption,
                        "queue_depth {} needs {} descriptors ({} per request) but queue {} has {} free (size {})",
                        d.depth, uint64_t{d.depth} * per_request, per_request, i, free_descs, q.vq->size());
    }
    q.slots = VDMA_TRY(QueueSlots::create(transport, i, {.depth = d.depth, .max_io_bytes = d.max_io_bytes,
                                                         .premap = premap}));
    q.slot_state.resize(d.depth);
    q.segs.resize(max_chain);
    q.used.resize(d.depth);
  }
  return std::unique_ptr<BlkDriver>(new BlkDriver(std::move(impl)));
}

uint64_t BlkDriver::capacity_sectors() const noexcept { return impl_->limits.capacity_sectors; }
uint32_t BlkDriver::block_size() const noexcept { return impl_->limits.blk_size; }
bool BlkDriver::read_only() const noexcept { return impl_->limits.read_only; }
uint32_t BlkDriver::num_queues() const noexcept { return static_cast<uint32_t>(impl_->queues.size()); }
uint32_t BlkDriver::queue_depth() const noexcept { return impl_->depth; }
uint32_t BlkDriver::max_io_bytes() const noexcept { return impl_->max_io_bytes; }

bool BlkDriver::supports(BlkOp op) const noexcept {
  switch (op) {
    case BlkOp::kRead:
    case BlkOp::kGetId: return true;
    case BlkOp::kWrite: return !impl_->limits.read_only;
    case BlkOp::kFlush: return impl_->limits.flush;
    case BlkOp::kDiscard: return impl_->limits.discard;
    case BlkOp::kWriteZeroes: return impl_->limits.write_zeroes;
  }
  return false;
}

std::span<std::byte> BlkDriver::buffer(uint32_t queue, uint32_t slot) noexcept {
  VDMA_CHECK(queue < impl_->queues.size() && slot < impl_->depth, "buffer(): queue or slot out of range");
  return impl_->queues[queue].slots->data(slot);
}

uint32_t BlkDriver::in_flight(uint32_t queue) const noexcept {
  VDMA_CHECK(queue < impl_->queues.size(), "in_flight(): queue out of range");
  return impl_->queues[queue].in_flight;
}

Result<void> BlkDriver::submit(uint32_t queue, uint32_t slot, BlkOp op, uint64_t sector, uint32_t bytes) {
  Impl& d = *impl_;
  if (queue >= d.queues.size()) {
    return make_error(BlkErrc::kInvalidOption, "queue {} out of range (the driver has {})", queue, d.queues.size());
  }
  QueueState& q = d.queues[queue];
  if (slot >= d.depth) {
    return make_error(BlkErrc::kInvalidOption, "queue {}: slot {} out of range (queue depth {})", queue, slot, d.depth);
  }
  SlotState& st = q.slot_state[slot];
  if (st.in_flight) return make_error(BlkErrc::kInvalidOption, "queue {}: slot {} is in flight", queue, slot);
  const DeviceLimits& l = d.limits;
  // The CPU writes the header, segment and status below, and the caller
  // filled the data buffer for a write (checked under --dma-debug).
  VDMA_TRY(d.cpu_access(q.slots->header_gpa(slot), QueueSlots::kRequestStride, CpuAccess::kWrite));
  VDMA_TRY(d.cpu_access(q.slots->status_gpa(slot), 1, CpuAccess::kWrite));
  if (op == BlkOp::kWrite && bytes != 0 && bytes <= d.max_io_bytes) {
    VDMA_TRY(d.cpu_access(q.slots->data_gpa(slot), bytes, CpuAccess::kWrite));
  }

  uint32_t data_bytes = 0;     // data buffer bytes in the chain
  bool data_readable = false;  // device-readable (write) or device-writable (read, get-id)
  bool with_segment = false;   // discard / write-zeroes segment
  uint64_t header_sector = 0;
  switch (op) {
    case BlkOp::kRead:
    case BlkOp::kWrite:
    case BlkOp::kDiscard:
    case BlkOp::kWriteZeroes: {
      if (bytes == 0 || bytes % kSectorSize != 0) {
        return make_error(BlkErrc::kInvalidOption, "queue {}: {} of length {} at sector {}: not a multiple of 512",
                          queue, to_string(op), bytes, sector);
      }
      const uint64_t sectors = bytes / kSectorSize;
      if (sector > l.capacity_sectors || sectors > l.capacity_sectors - sector) {
        return make_error(BlkErrc::kInvalidOption, "queue {}: {} of sectors [{}, {}+{}) is past the capacity of {} sectors",
                          queue, to_string(op), sector, sector, sectors, l.capacity_sectors);
      }
      if (op != BlkOp::kRead && l.read_only) {
        return make_error(BlkErrc::kInvalidOption, "queue {}: {} at sector {} on a read-only device", queue,
                          to_string(op), sector);
      }
      if (op == BlkOp::kRead || op == BlkOp::kWrite) {
        if (bytes > d.max_io_bytes) {
          return make_error(BlkErrc::kInvalidOption, "queue {}: {} of length {} is above max_io_bytes {}", queue,
                            to_string(op), bytes, d.max_io_bytes);
        }
        data_bytes = bytes;
        data_readable = op == BlkOp::kWrite;
        header_sector = sector;
        break;
      }
      const bool is_discard = op == BlkOp::kDiscard;
      if (is_discard ? !l.discard : !l.write_zeroes) {
        return make_error(BlkErrc::kInvalidOption, "queue {}: {} was not negotiated", queue, to_string(op));
      }
      const uint32_t limit = is_discard ? l.max_discard_sectors : l.max_write_zeroes_sectors;
      if (sectors > limit) {
        return make_error(BlkErrc::kInvalidOption, "queue {}: {} of {} sectors is above the device's limit of {}",
                          queue, to_string(op), sectors, limit);
      }
      with_segment = true;
      // virtio 1.2 §5.2.6: the sector field of the header is unused for
      // these; the range is in the segment.
      VirtioBlkDiscardWriteZeroes seg{};
      seg.sector.store(sector);
      seg.num_sectors.store(static_cast<uint32_t>(sectors));
      seg.flags.store(0);
      std::memcpy(q.slots->segment(slot), &seg, sizeof(seg));
      break;
    }
    case BlkOp::kFlush:
      if (!l.flush) return make_error(BlkErrc::kInvalidOption, "queue {}: flush was not negotiated", queue);
      break;
    case BlkOp::kGetId:
      if (bytes == 0 || bytes > kBlkIdBytes) {
        return make_error(BlkErrc::kInvalidOption, "queue {}: get-id length {} is not in 1..{}", queue, bytes,
                          kBlkIdBytes);
      }
      data_bytes = bytes;
      break;
  }

  VirtioBlkOutHeader h{};
  h.type.store(request_type(op));
  h.reserved.store(0);
  h.sector.store(header_sector);
  std::memcpy(q.slots->header(slot), &h, sizeof(h));
  *q.slots->status(slot) = std::byte{kStatusUnwritten};

  QueueSlots& s = *q.slots;
  const bool premapped = s.premapped();
  size_t n = 0;
  q.segs[n++] = DriverSegment{.addr = s.header_gpa(slot),
                              .len = sizeof(VirtioBlkOutHeader),
                              .type = BufferType::kDeviceReadable,
                              .premapped = premapped,
                              .dma = premapped ? s.header_dma(slot) : DmaAddr{}};
  // Data split into segments of at most segment_bytes (size_max, §5.2.4).
  for (uint64_t off = 0; off < data_bytes; off += d.segment_bytes) {
    const auto len = static_cast<uint32_t>(std::min<uint64_t>(d.segment_bytes, data_bytes - off));
    q.segs[n++] = DriverSegment{.addr = s.data_gpa(slot).unchecked_add(off),
                                .len = len,
                                .type = data_readable ? BufferType::kDeviceReadable : BufferType::kDeviceWritable,
                                .premapped = premapped,
                                .dma = premapped ? s.data_dma(slot).unchecked_add(off) : DmaAddr{}};
  }
  if (with_segment) {
    q.segs[n++] = DriverSegment{.addr = s.segment_gpa(slot),
                                .len = sizeof(VirtioBlkDiscardWriteZeroes),
                                .type = BufferType::kDeviceReadable,
                                .premapped = premapped,
                                .dma = premapped ? s.segment_dma(slot) : DmaAddr{}};
  }
  q.segs[n++] = DriverSegment{.addr = s.status_gpa(slot),
                              .len = 1,
                              .type = BufferType::kDeviceWritable,
                              .premapped = premapped,
                              .dma = premapped ? s.status_dma(slot) : DmaAddr{}};
  if (premapped) {
    // The CPU wrote header, segment, status and (for a write) data; hand
    // them to the device (a no-op unless the DmaOps bounces or is not coherent).
    VDMA_TRY(s.sync_request_for_device(slot, with_segment));
    VDMA_TRY(s.sync_status_for_device(slot));
    if (data_bytes != 0) VDMA_TRY(s.sync_data_for_device(slot, data_bytes));
  }
  VDMA_TRY(q.vq->add(std::span<const DriverSegment>(q.segs.data(), n), slot));
  st = SlotState{.in_flight = true, .op = op, .data_bytes = data_bytes};
  ++q.in_flight;
  return ok();
}

Result<void> BlkDriver::kick(uint32_t queue) {
  if (queue >= impl_->queues.size()) {
    return make_error(BlkErrc::kInvalidOption, "queue {} out of range (the driver has {})", queue,
                      impl_->queues.size());
  }
  if (!impl_->queues[queue].vq->kick_prepare()) return ok();
  return impl_->transport.notify(queue);
}

Result<size_t> BlkDriver::reap(uint32_t queue, std::span<BlkCompletion> out) {
  if (queue >= impl_->queues.size()) {
    return make_error(BlkErrc::kInvalidOption, "queue {} out of range (the driver has {})", queue,
                      impl_->queues.size());
  }
  QueueState& q = impl_->queues[queue];
  // The whole batch at once: its chains are unmapped together (one
  // invalidation round trip behind a strict IOMMU, not one per request).
  // get_used_batch() has unmapped them (a bounce copied the device's bytes
  // back), so the status and data are read only after it returned.
  const size_t taken =
      VDMA_TRY(q.vq->get_used_batch(std::span<UsedBuffer>(q.used.data(), std::min(out.size(), q.used.size()))));
  // Every slot taken is free whatever follows (the queue has given its chain
  // back), so a failure below still accounts for the whole batch and is
  // returned once it has.
  std::optional<Error> failure;
  const auto note = [&failure](Result<void> r) {
    if (!r && !failure) failure = std::move(r).error();
    return !failure;
  };
  size_t n = 0;
  for (size_t k = 0; k < taken; ++k) {
    const UsedBuffer& used = q.used[k];
    // The cookie is our own (the queue validated the device's used id
    // against its shadow state and returns what we gave add()).
    VDMA_CHECK(used.cookie < impl_->depth, "used cookie is not a slot");
    const auto slot = static_cast<uint32_t>(used.cookie);
    SlotState& st = q.slot_state[slot];
    VDMA_CHECK(st.in_flight, "used cookie names a slot that is not in flight");
    st.in_flight = false;
    --q.in_flight;
    if (failure) continue;
    if (q.slots->premapped()) {
      // Premapped buffers stay mapped: hand the device's bytes to the CPU.
      // Every premapped buffer of the slot goes back to the CPU, which
      // rewrites header, status and (for the next write) data before reuse.
      if (!note(q.slots->sync_request_for_cpu(slot)) || !note(q.slots->sync_status_for_cpu(slot))) continue;
      if (st.data_bytes != 0 && !note(q.slots->sync_data_for_cpu(slot, st.data_bytes))) continue;
    }
    if (!note(impl_->cpu_access(q.slots->status_gpa(slot), 1, CpuAccess::kRead))) continue;
    const auto status = std::to_integer<uint8_t>(*q.slots->status(slot));
    if ((st.op == BlkOp::kRead || st.op == BlkOp::kGetId) && st.data_bytes != 0) {
      if (status != kBlkStatusOk) {
        // virtio-blk devices (QEMU's and ours) claim the whole buffer in the
        // used length even when an error left the data unwritten, and the
        // queue copies a bounce buffer back as far as that claim
        // (DmaAttrs::kNoCopyIn): the bytes could be a bounce slot's stale
        // contents, another mapping's data. A failed read hands back zeros.
        if (!note(impl_->cpu_access(q.slots->data_gpa(slot), st.data_bytes, CpuAccess::kWrite))) continue;
        std::memset(q.slots->data(slot).data(), 0, st.data_bytes);
      } else if (!note(impl_->cpu_access(q.slots->data_gpa(slot), st.data_bytes, CpuAccess::kRead))) {
        continue;
      }
    }
    out[n++] = BlkCompletion{.slot = slot, .status = status, .used_len = used.len};
  }
  if (failure) return std::move(*failure);
  return n;
}

namespace {

Error timeout_error(const QueueState& q, std::chrono::nanoseconds timeout) {
  std::string slots;
  uint32_t named = 0;
  for (uint32_t s = 0; s < q.slot_state.size() && named < kSlotsNamed; ++s) {
    if (!q.slot_state[s].in_flight) continue;
    fmt::format_to(std::back_inserter(slots), "{}{}", named == 0 ? "" : ", ", s);
    ++named;
  }
  if (named < q.in_flight) fmt::format_to(std::back_inserter(slots), ", ...");
  return make_error(BaseErrc::kTimeout, "queue {}: no completion within {} us; {} requests in flight (slots {})",
                    q.index, std::chrono::duration_cast<std::chrono::microseconds>(timeout).count(), q.in_flight,
                    slots);
}

}  // namespace

Result<size_t> BlkDriver::wait(uint32_t queue, std::span<BlkCompletion> out, std::chrono::nanoseconds timeout) {
  if (queue >= impl_->queues.size()) {
    return make_error(BlkErrc::kInvalidOption, "queue {} out of range (the driver has {})", queue,
                      impl_->queues.size());
  }
  if (out.empty()) return make_error(BlkErrc::kInvalidOption, "queue {}: wait() with no room for a completion", queue);
  QueueState& q = impl_->queues[queue];
  // Nothing can complete: waiting out the timeout would only hide the bug.
  if (q.in_flight == 0) {
    return make_error(BaseErrc::kTimeout, "queue {}: nothing in flight to wait for", queue);
  }
  const auto start = std::chrono::steady_clock::now();
  // A timeout too long to add to the clock waits for ever.
  const auto deadline = timeout >= std::chrono::steady_clock::time_point::max() - start
                            ? std::chrono::steady_clock::time_point::max()
                            : start + timeout;
  size_t n = VDMA_TRY(reap(queue, out));
  if (n != 0) return n;

  const int fd = impl_->transport.interrupt_fd(queue);
  if (fd < 0) {
    // No interrupt: spin on the used ring until the deadline.
    for (uint32_t spins = 0;; ++spins) {
      n = VDMA_TRY(reap(queue, out));
      if (n != 0) return n;
      // The clock is read every 64 rounds; a reap is far cheaper than it.
      if ((spins & 63) == 63 && std::chrono::steady_clock::now() >= deadline) return timeout_error(q, timeout);
      cpu_relax();
    }
  }
  while (true) {
    // Race-free sleep (virtio 1.2 §2.7.10, Linux virtqueue_enable_cb): a
    // buffer used between our last reap and the re-enable is seen here
    // instead of being waited for.
    if (!q.vq->enable_callbacks()) {
      n = VDMA_TRY(reap(queue, out));
      if (n != 0) return n;
      if (q.vq->is_broken()) return *q.vq->broken_reason();
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return timeout_error(q, timeout);
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
    const timespec ts{.tv_sec = static_cast<time_t>(left.count() / 1'000'000'000),
                      .tv_nsec = static_cast<long>(left.count() % 1'000'000'000)};
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    const int r = ::ppoll(&p, 1, &ts, nullptr);
    if (r < 0 && errno != EINTR) return system_error(fmt::format("queue {}: poll interrupt fd", queue), errno);
    if (r > 0) {
      if ((p.revents & (POLLERR | POLLNVAL)) != 0) {
        return make_error(BaseErrc::kSystem, "queue {}: interrupt fd {} reports an error (revents {:#x})", queue, fd,
                          p.revents);
      }
      uint64_t count = 0;
      // The eventfd may have been cleared by another reader; EAGAIN is fine.
      if (::read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN && errno != EINTR) {
        return system_error(fmt::format("queue {}: read interrupt fd", queue), errno);
      }
    }
    // Busy now: no interrupts until the next wait() sleeps.
    q.vq->disable_callbacks();
    n = VDMA_TRY(reap(queue, out));
    if (n != 0) return n;
  }
}

}  // namespace vdma::blk
