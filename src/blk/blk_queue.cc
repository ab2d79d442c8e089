// Request processing (virtio 1.2 §5.2.6): parse, validate, run, complete.
#include "blk_queue.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "chain_bytes.h"
#include "vdma/base/log.h"
#include "vdma/virtio/features.h"

namespace vdma::blk {
namespace {

constexpr uint64_t kHeaderBytes = sizeof(VirtioBlkOutHeader);
constexpr uint64_t kSegmentBytes = sizeof(VirtioBlkDiscardWriteZeroes);

}  // namespace

BlkQueue::BlkQueue(const BlkDevice& device, std::unique_ptr<StorageQueue> storage, uint32_t max_iovecs)
    : device_(device),
      storage_(std::move(storage)),
      iov_(max_iovecs),
      segments_(std::max(device.options_.max_discard_seg, device.options_.max_write_zeroes_seg)) {}

Result<uint32_t> BlkQueue::handle(const DescriptorChain& chain) {
  // A chain the queue could not walk never carries a request.
  if (chain.error) {
    return make_error(BlkErrc::kBadChain, "virtio-blk: request {} was not walked: {}", chain.id, *chain.error);
  }
  // virtio 1.2 §5.2.6: the status is the last device-writable byte. Without
  // one the request cannot be completed in-band, and an empty completion
  // would look like success: a driver error (or a stale translation).
  std::byte* status = last_byte(chain.writable);
  if (status == nullptr) {
    return make_error(BlkErrc::kBadChain, "virtio-blk: request {} has no writable status byte ({} readable bytes)",
                      chain.id, chain.readable_len);
  }
  // Recomputed from the fragments rather than taken from the chain's totals:
  // every length below is then consistent with the memory actually reachable.
  const uint64_t readable = total_bytes(chain.readable);
  const uint64_t writable = total_bytes(chain.writable);
  const uint8_t result = execute(chain, readable, writable - 1);
  // The used length claims every writable byte, and §2.7.8.2 says the device
  // MUST have written that many: a failed request's data bytes are zeroed
  // rather than left as whatever the driver's buffer (or its bounce slot)
  // held before.
  if (result != kBlkStatusOk) zero_prefix(chain.writable, writable - 1);
  set_status(status, result);
  return static_cast<uint32_t>(std::min<uint64_t>(writable, std::numeric_limits<uint32_t>::max()));
}

std::optional<Result<uint32_t>> BlkQueue::start(const DescriptorChain& chain, uint32_t tag) {
  if (storage_->max_in_flight() == 0 || chain.error) return handle(chain);
  std::byte* status = last_byte(chain.writable);
  if (status == nullptr) return handle(chain);  // the same error
  const uint64_t readable = total_bytes(chain.readable);
  const uint64_t writable = total_bytes(chain.writable);
  VirtioBlkOutHeader header{};
  if (!gather(chain.readable, 0, std::as_writable_bytes(std::span(&header, 1)))) return handle(chain);
  const uint32_t guest_type = header.type.load();      // guest-controlled
  const uint64_t guest_sector = header.sector.load();  // guest-controlled; read once
  const uint64_t data_out = readable - kHeaderBytes;
  const uint64_t data_in = writable - 1;
  const auto used = static_cast<uint32_t>(std::min<uint64_t>(writable, std::numeric_limits<uint32_t>::max()));
  auto done_now = [&](uint8_t s) -> std::optional<Result<uint32_t>> {
    if (s != kBlkStatusOk) zero_prefix(chain.writable, data_in);  // as handle()
    set_status(status, s);
    return used;
  };
  StorageQueue::Op op = StorageQueue::Op::kFlush;
  uint64_t offset = 0;
  size_t n = 0;
  switch (guest_type) {
    case kBlkTypeIn:
    case kBlkTypeOut: {
      const bool is_write = guest_type == kBlkTypeOut;
      op = is_write ? StorageQueue::Op::kWrite : StorageQueue::Op::kRead;
      const uint64_t len = is_write ? data_out : data_in;
      if ((is_write ? data_in : data_out) != 0 || (is_write && device_.read_only())) return done_now(kBlkStatusIoErr);
      if (len % kSectorSize != 0 || !check_range(guest_sector, len, offset)) return done_now(kBlkStatusIoErr);
      if (len == 0) return done_now(kBlkStatusOk);
      IovCursor at{0, is_write ? kHeaderBytes : 0, len};
      n = fill_iov(is_write ? chain.readable : chain.writable, at);
      if (at.len != 0) return handle(chain);  // more segments than one operation takes
      break;
    }
    case kBlkTypeFlush:
      if (data_out != 0 || data_in != 0) return done_now(kBlkStatusIoErr);
      break;
    default:
      // GET_ID, DISCARD, WRITE_ZEROES, unknown types: done at once.
      return handle(chain);
  }
  if (in_flight_.size() <= tag) in_flight_.resize(tag + 1);
  InFlight& f = in_flight_[tag];
  f.status = status;
  f.used = used;
  f.op = op;
  f.flushing = false;
  f.data.clear();
  if (op == StorageQueue::Op::kRead) f.data.assign(iov_.begin(), iov_.begin() + static_cast<std::ptrdiff_t>(n));
  std::optional<Result<void>> r = storage_->start(op, offset, std::span<const iovec>(iov_.data(), n), tag);
  if (!r) return std::nullopt;
  std::optional<Error> error;
  if (!*r) error = std::move(*r).error();
  if (!complete(tag, error)) return std::nullopt;  // its writethrough flush runs
  return used;
}

size_t BlkQueue::fill_iov(const std::vector<Fragment>& frags, IovCursor& at) {
  size_t n = 0;
  for (; at.frag < frags.size() && at.len > 0; ++at.frag) {
    const Fragment& fr = frags[at.frag];
    if (at.skip >= fr.len) {
      at.skip -= fr.len;
      continue;
    }
    std::byte* base = fr.host + at.skip;
    const uint64_t take = std::min(fr.len - at.skip, at.len);
    // Fragments that continue each other in host memory become one iovec.
    if (n > 0 && static_cast<std::byte*>(iov_[n - 1].iov_base) + iov_[n - 1].iov_len == base) {
      iov_[n - 1].iov_len += take;
    } else {
      if (n == iov_.size()) break;  // full: the next call goes on from this fragment
      iov_[n++] = iovec{base, static_cast<size_t>(take)};
    }
    at.skip = 0;
    at.len -= take;
  }
  return n;
}

bool BlkQueue::complete(uint32_t tag, const std::optional<Error>& error) {
  InFlight& f = in_flight_[tag];
  if (error) {
    spdlog::warn("virtio-blk: {}", *error);
    // As handle(): the claimed data bytes are written, as zeros.
    for (const iovec& v : f.data) std::memset(v.iov_base, 0, v.iov_len);
    set_status(f.status, kBlkStatusIoErr);
    return true;
  }
  if (f.op == StorageQueue::Op::kWrite && !f.flushing && !device_.writeback_enabled()) {
    // Writethrough: the write is durable before the driver sees it complete.
    f.flushing = true;
    std::optional<Result<void>> r = storage_->start(StorageQueue::Op::kFlush, 0, {}, tag);
    if (!r) return false;
    if (!*r) {
      spdlog::warn("virtio-blk: writethrough flush: {}", r->error());
      set_status(f.status, kBlkStatusIoErr);
      return true;
    }
  }
  set_status(f.status, kBlkStatusOk);
  return true;
}

size_t BlkQueue::reap(std::span<BlkDeviceCompletion> out) {
  if (reaped_.size() < out.size()) reaped_.resize(out.size());
  const size_t got = storage_->reap(std::span(reaped_.data(), out.size()));
  size_t n = 0;
  for (size_t i = 0; i < got; ++i) {
    StorageQueue::Completion& c = reaped_[i];
    if (complete(c.tag, c.error)) out[n++] = BlkDeviceCompletion{c.tag, in_flight_[c.tag].used};
    c.error.reset();
  }
  storage_->submit();  // writethrough flushes complete() started
  return n;
}

uint8_t BlkQueue::execute(const DescriptorChain& chain, uint64_t readable, uint64_t data_in) {
  VirtioBlkOutHeader header{};
  if (!gather(chain.readable, 0, std::as_writable_bytes(std::span(&header, 1)))) {
    spdlog::debug("virtio-blk: request {}: {} readable bytes, no 16-byte header", chain.id, readable);
    return kBlkStatusIoErr;
  }
  const uint32_t guest_type = header.type.load();      // guest-controlled
  const uint64_t guest_sector = header.sector.load();  // guest-controlled
  const uint64_t data_out = readable - kHeaderBytes;
  switch (guest_type) {
    case kBlkTypeIn:
      if (data_out != 0) return kBlkStatusIoErr;
      return read_write(IoDir::kRead, guest_sector, chain.writable, 0, data_in);
    case kBlkTypeOut:
      if (data_in != 0 || device_.read_only()) return kBlkStatusIoErr;
      return read_write(IoDir::kWrite, guest_sector, chain.readable, kHeaderBytes, data_out);
    case kBlkTypeFlush:
      if (data_out != 0 || data_in != 0) return kBlkStatusIoErr;
      if (auto r = storage_->flush(); !r) {
        spdlog::warn("virtio-blk: flush failed: {}", r.error());
        return kBlkStatusIoErr;
      }
      return kBlkStatusOk;
    case kBlkTypeGetId:
      if (data_out != 0) return kBlkStatusIoErr;
      return get_id(chain, data_in);
    case kBlkTypeDiscard:
    case kBlkTypeWriteZeroes:
      return discard_or_zero(guest_type, chain, readable);
    default:
      spdlog::debug("virtio-blk: request {}: unsupported type {}", chain.id, guest_type);
      return kBlkStatusUnsupp;
  }
}

bool BlkQueue::check_range(uint64_t guest_sector, uint64_t len, uint64_t& offset) const {
  // sector * 512 and offset + len must not wrap before the capacity check.
  if (guest_sector > (std::numeric_limits<uint64_t>::max() >> kSectorShift)) return false;
  const uint64_t start = guest_sector << kSectorShift;
  const uint64_t capacity = device_.capacity_sectors() << kSectorShift;
  if (start > capacity || len > capacity - start) return false;
  const uint64_t block = device_.options_.blk_size;
  if (start % block != 0 || len % block != 0) return false;
  offset = start;
  return true;
}

uint8_t BlkQueue::read_write(IoDir dir, uint64_t guest_sector, const std::vector<Fragment>& frags,
                             uint64_t skip, uint64_t len) {
  uint64_t offset = 0;
  if (len % kSectorSize != 0 || !check_range(guest_sector, len, offset)) {
    spdlog::debug("virtio-blk: {} of {:#x} bytes at sector {:#x} rejected (capacity {:#x} sectors, blk_size {})",
                  to_string(dir), len, guest_sector, device_.capacity_sectors(),
                  device_.options_.blk_size);
    return kBlkStatusIoErr;
  }
  if (len == 0) return kBlkStatusOk;
  if (auto r = transfer(dir, offset, frags, skip, len); !r) {
    spdlog::warn("virtio-blk: {}", r.error());
    return kBlkStatusIoErr;
  }
  if (dir == IoDir::kWrite && !device_.writeback_enabled()) {
    // Writethrough: the write is durable before the driver sees it complete.
    if (auto r = storage_->flush(); !r) {
      spdlog::warn("virtio-blk: writethrough flush: {}", r.error());
      return kBlkStatusIoErr;
    }
  }
  return kBlkStatusOk;
}

Result<void> BlkQueue::transfer(IoDir dir, uint64_t offset, const std::vector<Fragment>& frags, uint64_t skip,
                                uint64_t len) {
  IovCursor at{0, skip, len};
  while (at.len > 0) {
    const uint64_t before = at.len;
    const size_t n = fill_iov(frags, at);
    if (n == 0) break;  // the fragments hold fewer bytes than len (checked by the caller)
    const std::span<const iovec> v(iov_.data(), n);
    VDMA_TRY(dir == IoDir::kWrite ? storage_->write(offset, v) : storage_->read(offset, v));
    offset += before - at.len;
  }
  return ok();
}

uint8_t BlkQueue::get_id(const DescriptorChain& chain, uint64_t data_in) {
  if (data_in == 0) return kBlkStatusIoErr;
  // NUL-padded, no terminator when all 20 bytes are used (virtio 1.2 §5.2.6).
  std::array<std::byte, kBlkIdBytes> id{};
  const std::string& serial = device_.options_.serial;
  std::memcpy(id.data(), serial.data(), std::min(serial.size(), id.size()));
  const size_t n = static_cast<size_t>(std::min<uint64_t>(data_in, id.size()));
  if (!scatter(chain.writable, 0, std::span(id.data(), n))) return kBlkStatusIoErr;
  return kBlkStatusOk;
}

uint8_t BlkQueue::discard_or_zero(uint32_t type, const DescriptorChain& chain, uint64_t readable) {
  const bool is_discard = type == kBlkTypeDiscard;
  const unsigned feature = is_discard ? kBlkFeatureDiscard : kBlkFeatureWriteZeroes;
  if (!has_feature(device_.acked_features(), feature)) return kBlkStatusUnsupp;
  if (device_.read_only()) return kBlkStatusIoErr;
  if (total_bytes(chain.writable) != 1) return kBlkStatusIoErr;
  const uint64_t data_out = readable - kHeaderBytes;
  if (data_out == 0 || data_out % kSegmentBytes != 0) return kBlkStatusIoErr;
  const uint64_t segments = data_out / kSegmentBytes;
  const BlkOptions& o = device_.options_;
  const uint32_t max_seg = is_discard ? o.max_discard_seg : o.max_write_zeroes_seg;
  const uint32_t max_sectors = is_discard ? o.max_discard_sectors : o.max_write_zeroes_sectors;
  if (segments > max_seg) return kBlkStatusUnsupp;

  // Each segment is copied out of guest memory once, then validated, then
  // used: the driver cannot change a segment between the check and the I/O.
  // Every segment is valid before any runs, so a bad request changes nothing.
  const uint32_t allowed_flags = is_discard ? 0 : kBlkDiscardFlagUnmap;
  for (uint64_t i = 0; i < segments; ++i) {
    VirtioBlkDiscardWriteZeroes& seg = segments_[i];
    if (!gather(chain.readable, kHeaderBytes + i * kSegmentBytes, std::as_writable_bytes(std::span(&seg, 1)))) {
      return kBlkStatusIoErr;
    }
    const uint32_t guest_flags = seg.flags.load();
    // virtio 1.2 §5.2.6.2: UNMAP on a DISCARD, or any reserved flag, is UNSUPP.
    if ((guest_flags & ~allowed_flags) != 0) return kBlkStatusUnsupp;
    const uint32_t guest_num = seg.num_sectors.load();
    if (guest_num > max_sectors) return kBlkStatusIoErr;
    uint64_t offset = 0;
    if (!check_range(seg.sector.load(), uint64_t{guest_num} << kSectorShift, offset)) return kBlkStatusIoErr;
  }
  for (uint64_t i = 0; i < segments; ++i) {
    const VirtioBlkDiscardWriteZeroes& seg = segments_[i];  // our copy, validated above
    const uint64_t len = uint64_t{seg.num_sectors.load()} << kSectorShift;
    if (len == 0) continue;
    const uint64_t offset = seg.sector.load() << kSectorShift;
    auto r = is_discard ? storage_->discard(offset, len)
                        : storage_->write_zeroes(offset, len, (seg.flags.load() & kBlkDiscardFlagUnmap) != 0);
    if (!r) {
      spdlog::warn("virtio-blk: {}", r.error());
      return kBlkStatusIoErr;
    }
  }
  return kBlkStatusOk;
}

}  // namespace vdma::blk
