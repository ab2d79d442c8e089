#include "field_checks.h"

#include <cstring>
#include <string>

namespace vdma::vhost_user::detail {

Result<void> expect_size(const Message& msg, std::string_view name, size_t expected) {
  if (msg.size() != expected) {
    return make_error(VhostUserErrc::kBadSize, "{}: payload size {}, expected {}", name, msg.size(), expected);
  }
  return ok();
}

Result<void> expect_fds(const Message& msg, std::string_view name, size_t expected) {
  if (msg.fd_count() != expected) {
    return make_error(VhostUserErrc::kBadFdCount, "{}: fd count {}, expected {}", name, msg.fd_count(), expected);
  }
  return ok();
}

Result<void> check_vring_index(std::string_view name, uint32_t index) {
  if (index >= kMaxVrings) {
    return make_error(VhostUserErrc::kBadField, "{}: vring index {}, expected < {}", name, index, kMaxVrings);
  }
  return ok();
}

Result<void> check_reserved_num(std::string_view name, uint32_t num) {
  if (num != 0) return make_error(VhostUserErrc::kBadField, "{}: num {} is reserved and must be 0", name, num);
  return ok();
}

Result<VringFdWord> parse_vring_fd_word(std::string_view name, uint64_t word) {
  const uint64_t reserved = word & ~(kVringIndexMask | kVringNoFdFlag);
  if (reserved != 0) {
    return make_error(VhostUserErrc::kBadField, "{}: reserved bits {:#x} set in {:#x} (only bits 0-8 are defined)",
                      name, reserved, word);
  }
  return VringFdWord{static_cast<uint32_t>(word & kVringIndexMask), (word & kVringNoFdFlag) != 0};
}

Result<MemoryRegion> check_region(std::string_view name, int index, const WireMemoryRegion& wire) {
  const MemoryRegion r{DmaAddr(wire.guest_phys_addr), wire.memory_size, FrontVa(wire.userspace_addr),
                       wire.mmap_offset};
  // Formatted only on the error paths, so a valid table costs no allocation.
  const auto which = [index] {
    return index == kSingleRegion ? std::string("region") : fmt::format("region {}", index);
  };
  if (r.size == 0) return make_error(VhostUserErrc::kBadField, "{}: {} has size 0", name, which());
  if (!fits(r.guest_addr, r.size)) {
    return make_error(VhostUserErrc::kBadField, "{}: {} guest address {} + size {:#x} wraps past 2^64", name, which(),
                      r.guest_addr, r.size);
  }
  if (!fits(r.user_addr, r.size)) {
    return make_error(VhostUserErrc::kBadField, "{}: {} user address {} + size {:#x} wraps past 2^64", name, which(),
                      r.user_addr, r.size);
  }
  uint64_t end = 0;
  if (__builtin_add_overflow(r.mmap_offset, r.size, &end)) {
    return make_error(VhostUserErrc::kBadField, "{}: {} mmap offset {:#x} + size {:#x} wraps past 2^64", name, which(),
                      r.mmap_offset, r.size);
  }
  return r;
}

Result<void> check_fd_area(std::string_view name, std::string_view what, uint64_t size, uint64_t offset) {
  if (size == 0) return make_error(VhostUserErrc::kBadField, "{}: {} size 0", name, what);
  uint64_t end = 0;
  if (__builtin_add_overflow(offset, size, &end)) {
    return make_error(VhostUserErrc::kBadField, "{}: {} offset {:#x} + size {:#x} wraps past 2^64", name, what, offset,
                      size);
  }
  return ok();
}

Result<ConfigSpace> parse_config(const Message& msg, std::string_view name) {
  if (msg.size() < sizeof(WireConfigHeader)) {
    return make_error(VhostUserErrc::kBadSize, "{}: payload size {}, expected at least {}", name, msg.size(),
                      sizeof(WireConfigHeader));
  }
  const WireConfigHeader h = msg.read_payload<WireConfigHeader>();  // peer-controlled copy
  if (h.size == 0 || h.size > kMaxConfigSize) {
    return make_error(VhostUserErrc::kBadField, "{}: config size {}, expected 1..{}", name, h.size, kMaxConfigSize);
  }
  const size_t expected = sizeof(WireConfigHeader) + h.size;
  if (msg.size() != expected) {
    return make_error(VhostUserErrc::kBadSize, "{}: payload size {} for config size {}, expected {}", name, msg.size(),
                      h.size, expected);
  }
  // Both are at most 2^32-1, so the sum cannot wrap in 64 bits.
  if (uint64_t{h.offset} + h.size > kMaxConfigSize) {
    return make_error(VhostUserErrc::kBadField, "{}: offset {} + size {} exceeds the {}-byte config space", name,
                      h.offset, h.size, kMaxConfigSize);
  }
  if (h.flags != static_cast<uint32_t>(ConfigFlags::kWritable) &&
      h.flags != static_cast<uint32_t>(ConfigFlags::kLiveMigration)) {
    return make_error(VhostUserErrc::kBadField, "{}: flags {}, expected 0 (writable) or 1 (live migration)", name,
                      h.flags);
  }
  ConfigSpace c;
  c.offset = h.offset;
  c.size = h.size;
  c.flags = static_cast<ConfigFlags>(h.flags);
  std::memcpy(c.data.data(), msg.payload().data() + sizeof(WireConfigHeader), h.size);
  return c;
}

Result<IotlbMessage> parse_iotlb(std::string_view name, const WireIotlbMsg& wire, bool from_frontend) {
  const uint8_t type = wire.type;
  const uint8_t perm = wire.perm;
  IotlbMessage m;
  m.iova = Iova(wire.iova);
  if (from_frontend) {
    if (type != static_cast<uint8_t>(IotlbType::kUpdate) && type != static_cast<uint8_t>(IotlbType::kInvalidate)) {
      return make_error(VhostUserErrc::kBadField, "{}: type {}, expected UPDATE (2) or INVALIDATE (3)", name, type);
    }
  } else if (type != static_cast<uint8_t>(IotlbType::kMiss) && type != static_cast<uint8_t>(IotlbType::kAccessFail)) {
    return make_error(VhostUserErrc::kBadField, "{}: type {}, expected MISS (1) or ACCESS_FAIL (4)", name, type);
  }
  m.type = static_cast<IotlbType>(type);

  switch (m.type) {
    case IotlbType::kUpdate:
      if (perm > static_cast<uint8_t>(IotlbPerm::kReadWrite)) {
        return make_error(VhostUserErrc::kBadField, "{}: UPDATE perm {}, expected 0..3", name, perm);
      }
      m.perm = static_cast<IotlbPerm>(perm);
      m.size = wire.size;
      m.uaddr = FrontVa(wire.uaddr);
      if (m.size == 0) return make_error(VhostUserErrc::kBadField, "{}: UPDATE of size 0 at {}", name, m.iova);
      if (!fits(m.iova, m.size)) {
        return make_error(VhostUserErrc::kBadField, "{}: UPDATE {} + size {:#x} wraps past 2^64", name, m.iova, m.size);
      }
      if (!fits(m.uaddr, m.size)) {
        return make_error(VhostUserErrc::kBadField, "{}: UPDATE {} + size {:#x} wraps past 2^64", name, m.uaddr,
                          m.size);
      }
      return m;
    case IotlbType::kInvalidate:
      m.size = wire.size;
      // Size 0 is "mask ~0 plus one": the whole space, which only makes
      // sense from address 0 (see IotlbMessage).
      if (m.size == 0 && m.iova != Iova{0}) {
        return make_error(VhostUserErrc::kBadField,
                          "{}: INVALIDATE of size 0 at {} (size 0 means all of 2^64 and needs iova 0)", name, m.iova);
      }
      if (!fits(m.iova, m.size)) {
        return make_error(VhostUserErrc::kBadField, "{}: INVALIDATE {} + size {:#x} wraps past 2^64", name, m.iova,
                          m.size);
      }
      return m;
    case IotlbType::kMiss:
    case IotlbType::kAccessFail:
      if (perm == static_cast<uint8_t>(IotlbPerm::kNone) || perm > static_cast<uint8_t>(IotlbPerm::kReadWrite)) {
        return make_error(VhostUserErrc::kBadField, "{}: perm {}, expected 1..3 (read, write or both)", name, perm);
      }
      m.perm = static_cast<IotlbPerm>(perm);
      return m;
  }
  return make_error(VhostUserErrc::kBadField, "{}: type {}", name, type);
}

Result<InflightArea> parse_inflight(std::string_view name, const WireInflight& wire, bool with_area) {
  const InflightArea a{wire.mmap_size, wire.mmap_offset, wire.num_queues, wire.queue_size};
  if (a.num_queues == 0 || a.num_queues > kMaxVrings) {
    return make_error(VhostUserErrc::kBadField, "{}: num_queues {}, expected 1..{}", name, a.num_queues, kMaxVrings);
  }
  if (a.queue_size == 0 || a.queue_size > kMaxQueueSize) {
    return make_error(VhostUserErrc::kBadField, "{}: queue_size {}, expected 1..{}", name, a.queue_size,
                      kMaxQueueSize);
  }
  if (with_area) VDMA_TRY(check_fd_area(name, "mmap", a.mmap_size, a.mmap_offset));
  return a;
}

}  // namespace vdma::vhost_user::detail
