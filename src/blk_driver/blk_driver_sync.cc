// BlkDriver's synchronous helpers: one request on slot 0, waited for.
#include <algorithm>
#include <cstring>

#include "blk_driver_impl.h"

namespace vdma::blk {

std::string_view to_string(BlkOp op) noexcept {
  switch (op) {
    case BlkOp::kRead: return "read";
    case BlkOp::kWrite: return "write";
    case BlkOp::kFlush: return "flush";
    case BlkOp::kDiscard: return "discard";
    case BlkOp::kWriteZeroes: return "write-zeroes";
    case BlkOp::kGetId: return "get-id";
  }
  return "unknown";
}

namespace {

constexpr std::chrono::seconds kSyncTimeout{30};

std::string_view status_name(uint8_t status) noexcept {
  switch (status) {
    case kBlkStatusOk: return "OK";
    case kBlkStatusIoErr: return "IOERR";
    case kBlkStatusUnsupp: return "UNSUPP";
    default: return "invalid";
  }
}

// One request on slot 0 of an idle queue, waited for; a status other than
// OK is BlkErrc::kIo naming the request.
Result<void> run_sync(BlkDriver& drv, uint32_t queue, BlkOp op, uint64_t sector, uint32_t bytes) {
  if (queue < drv.num_queues() && drv.in_flight(queue) != 0) {
    return make_error(BlkErrc::kInvalidOption,
                      "queue {}: {} requests in flight; the synchronous helpers need an idle queue", queue,
                      drv.in_flight(queue));
  }
  VDMA_TRY(drv.submit(queue, 0, op, sector, bytes));
  VDMA_TRY(drv.kick(queue));
  BlkCompletion done;
  // The queue is otherwise idle, so the one completion is ours.
  VDMA_TRY(drv.wait(queue, std::span<BlkCompletion>(&done, 1), kSyncTimeout));
  if (done.status != kBlkStatusOk) {
    return make_error(BlkErrc::kIo, "queue {}: {} at sector {} ({} bytes): device status {} ({})", queue,
                      to_string(op), sector, bytes, status_name(done.status), done.status);
  }
  return ok();
}

}  // namespace

Result<void> BlkDriver::read(uint32_t queue, uint64_t sector, std::span<std::byte> out) {
  if (out.empty()) return make_error(BlkErrc::kInvalidOption, "queue {}: read of 0 bytes", queue);
  // Requests of at most max_io_bytes; submit() checks lengths and range.
  for (size_t off = 0; off < out.size(); off += impl_->max_io_bytes) {
    const auto len = static_cast<uint32_t>(std::min<size_t>(impl_->max_io_bytes, out.size() - off));
    VDMA_TRY(run_sync(*this, queue, BlkOp::kRead, sector + off / kSectorSize, len));
    std::memcpy(out.data() + off, buffer(queue, 0).data(), len);
  }
  return ok();
}

Result<void> BlkDriver::write(uint32_t queue, uint64_t sector, std::span<const std::byte> data) {
  if (data.empty()) return make_error(BlkErrc::kInvalidOption, "queue {}: write of 0 bytes", queue);
  for (size_t off = 0; off < data.size(); off += impl_->max_io_bytes) {
    const auto len = static_cast<uint32_t>(std::min<size_t>(impl_->max_io_bytes, data.size() - off));
    if (queue < num_queues()) std::memcpy(buffer(queue, 0).data(), data.data() + off, len);
    VDMA_TRY(run_sync(*this, queue, BlkOp::kWrite, sector + off / kSectorSize, len));
  }
  return ok();
}

Result<void> BlkDriver::flush(uint32_t queue) { return run_sync(*this, queue, BlkOp::kFlush, 0, 0); }

Result<void> BlkDriver::discard(uint32_t queue, uint64_t sector, uint32_t bytes) {
  return run_sync(*this, queue, BlkOp::kDiscard, sector, bytes);
}

Result<void> BlkDriver::write_zeroes(uint32_t queue, uint64_t sector, uint32_t bytes) {
  return run_sync(*this, queue, BlkOp::kWriteZeroes, sector, bytes);
}

Result<std::string> BlkDriver::get_id(uint32_t queue) {
  VDMA_TRY(run_sync(*this, queue, BlkOp::kGetId, 0, kBlkIdBytes));
  // virtio 1.2 §5.2.6: up to 20 bytes, NUL-padded when shorter.
  const std::span<const std::byte> raw = buffer(queue, 0).first(kBlkIdBytes);
  const auto end = std::find(raw.begin(), raw.end(), std::byte{0});
  std::string id(static_cast<size_t>(end - raw.begin()), '\0');
  std::memcpy(id.data(), raw.data(), id.size());
  return id;
}

}  // namespace vdma::blk
