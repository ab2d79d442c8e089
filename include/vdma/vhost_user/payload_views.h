// Typed, validated views of vhost-user payloads.
//
//   auto req = VDMA_TRY(validate_frontend_request(msg));   // validate.h
//   switch (req.request) {
//     case FrontendRequest::kSetMemTable:
//       for (const MemoryRegion& r : req.as<MemoryTable>().list()) map(r, msg.fd(i++));
//       break;
//     case FrontendRequest::kIotlbMsg: {
//       const IotlbMessage& m = req.as<IotlbMessage>();   // type, perm, iova..last() checked
//       ...
//
// A view is produced only by validate.h, after every check that does not
// need connection state: size, fd count, field ranges, address wrap. Its
// fields are copies, so a view outlives the Message it came from; the fds,
// though, stay in the Message (the view says which index holds which fd) so
// that ownership is always in one place.
//
// Addresses carry their address space: memory-table guest addresses are what
// descriptors hold when ACCESS_PLATFORM is off (DmaAddr: guest physical in
// plain bypass, a bus address with offsets), user addresses are the
// front-end's (FrontVa), IOTLB addresses are IOVAs, and ring addresses are
// either user addresses or IOVAs depending on ACCESS_PLATFORM, which only the
// back-end knows (RingAddr makes the caller say which).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <variant>

#include "vdma/base/address.h"
#include "vdma/base/check.h"
#include "vdma/vhost_user/protocol.h"

namespace vdma::vhost_user {

// Requests without a payload.
struct NoPayload {
  bool operator==(const NoPayload&) const = default;
};

// SET_FEATURES, SET_PROTOCOL_FEATURES, SEND_RARP, NET_SET_MTU, SET_STATUS
// (value <= 0xff), CLOSE_CRYPTO_SESSION.
struct U64Value {
  uint64_t value = 0;
  bool operator==(const U64Value&) const = default;
};

// A vring address from SET_VRING_ADDR: "an IOVA if VIRTIO_F_IOMMU_PLATFORM
// has been negotiated. Otherwise it is a user address" (vhost-user.rst). The
// codec cannot know which, so the back-end names the space when it reads it.
class RingAddr {
 public:
  constexpr RingAddr() noexcept = default;
  constexpr explicit RingAddr(uint64_t bits) noexcept : bits_(bits) {}
  [[nodiscard]] constexpr FrontVa as_user() const noexcept { return FrontVa(bits_); }
  [[nodiscard]] constexpr Iova as_iova() const noexcept { return Iova(bits_); }
  // The wire value, for encoders.
  [[nodiscard]] constexpr uint64_t wire_value() const noexcept { return bits_; }
  constexpr bool operator==(const RingAddr&) const noexcept = default;

 private:
  uint64_t bits_ = 0;
};

// SET_VRING_NUM (num 1..32768), SET_VRING_BASE (num: split or packed
// indices, see vhost-user.rst), GET_VRING_BASE (num 0), SET_VRING_ENABLE
// (num 0/1), SET_VRING_ENDIAN (num 0/1), VRING_KICK (num 0),
// BACKEND_VRING_CALL/ERR (num 0). index < kMaxVrings in all of them.
struct VringState {
  uint32_t index = 0;
  uint32_t num = 0;
  bool operator==(const VringState&) const = default;
};

// SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR. When has_fd, the eventfd
// is msg.fd(0); otherwise the front-end asked for polling (bit 8 of the u64).
struct VringFile {
  uint32_t index = 0;
  bool has_fd = false;
  bool operator==(const VringFile&) const = default;
};

// SET_VRING_ADDR. Only flag bit 0 (log used-ring writes) exists.
struct VringAddress {
  uint32_t index = 0;
  bool log_used = false;
  RingAddr desc;
  RingAddr used;
  RingAddr avail;
  Gpa log_guest_addr;  // where used-ring writes are logged; meaningful when log_used
  bool operator==(const VringAddress&) const = default;
};

// One region of SET_MEM_TABLE, ADD_MEM_REG or REM_MEM_REG. Validated: size
// non-zero, and none of guest_addr+size, user_addr+size, mmap_offset+size
// wraps past 2^64.
struct MemoryRegion {
  DmaAddr guest_addr;  // unused by the back-end when ACCESS_PLATFORM is negotiated
  uint64_t size = 0;
  FrontVa user_addr;
  uint64_t mmap_offset = 0;  // offset of guest_addr inside the region's fd
  [[nodiscard]] AddrRange<DmaAddr> guest_range() const noexcept { return {guest_addr, size}; }
  [[nodiscard]] AddrRange<FrontVa> user_range() const noexcept { return {user_addr, size}; }
  bool operator==(const MemoryRegion&) const = default;
};

// SET_MEM_TABLE: 1..8 regions; region i is mapped from msg.fd(i).
struct MemoryTable {
  uint32_t count = 0;
  std::array<MemoryRegion, kMaxMemRegions> regions{};
  [[nodiscard]] std::span<const MemoryRegion> list() const noexcept { return {regions.data(), count}; }
  // Equal when the regions in use are; unused slots do not count.
  bool operator==(const MemoryTable& o) const noexcept {
    return count == o.count && std::equal(list().begin(), list().end(), o.list().begin());
  }
};

// SET_LOG_BASE: the dirty log is mmap_size bytes at mmap_offset of msg.fd(0).
struct LogArea {
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
  bool operator==(const LogArea&) const = default;
};

// IOTLB_MSG (front-end: UPDATE, INVALIDATE) and BACKEND_IOTLB_MSG (back-end:
// MISS, ACCESS_FAIL). Fields a type does not use are zero in the view
// whatever the wire held: UPDATE uses all; INVALIDATE uses iova and size;
// MISS and ACCESS_FAIL use iova and perm.
//
// INVALIDATE with size 0 is accepted only at iova 0 and means the whole
// 2^64 space: that is what QEMU sends when a guest flushes its whole device
// TLB (an address mask of ~0 plus one wraps to 0). last() handles it.
struct IotlbMessage {
  IotlbType type = IotlbType::kMiss;
  IotlbPerm perm = IotlbPerm::kNone;
  Iova iova;
  uint64_t size = 0;
  FrontVa uaddr;
  // The last IOVA covered, inclusive. Validation guarantees that either
  // size > 0 and [iova, iova+size) does not wrap, or size == 0 and iova == 0;
  // the modular arithmetic gives the right answer in both cases.
  [[nodiscard]] Iova last() const noexcept { return Iova(iova.value() + (size - 1)); }
  bool operator==(const IotlbMessage&) const = default;
};

// GET_CONFIG / SET_CONFIG (and the GET_CONFIG reply): size 1..256 bytes at
// offset, with offset + size <= 256.
struct ConfigSpace {
  uint32_t offset = 0;
  uint32_t size = 0;
  ConfigFlags flags = ConfigFlags::kWritable;
  std::array<std::byte, kMaxConfigSize> data{};
  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data.data(), size}; }
  // Equal when offset, size, flags and the first `size` bytes are.
  bool operator==(const ConfigSpace& o) const noexcept {
    return offset == o.offset && size == o.size && flags == o.flags &&
           std::equal(bytes().begin(), bytes().end(), o.bytes().begin());
  }
};

// GET_INFLIGHT_FD request (num_queues, queue_size), SET_INFLIGHT_FD and the
// GET_INFLIGHT_FD reply (all fields; the area is at msg.fd(0)).
struct InflightArea {
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
  uint16_t num_queues = 0;
  uint16_t queue_size = 0;
  bool operator==(const InflightArea&) const = default;
};

// GET_SHARED_OBJECT, BACKEND_SHARED_OBJECT_ADD/REMOVE/LOOKUP.
struct SharedObject {
  std::array<uint8_t, 16> uuid{};
  bool operator==(const SharedObject&) const = default;
};

// SET_DEVICE_STATE_FD; the transfer fd is msg.fd(0).
struct DeviceStateTransfer {
  TransferDirection direction = TransferDirection::kSave;
  MigrationPhase phase = MigrationPhase::kStopped;
  bool operator==(const DeviceStateTransfer&) const = default;
};

// BACKEND_VRING_HOST_NOTIFIER_MSG. When has_fd, size bytes at offset of
// msg.fd(0) are the notify area (size non-zero, offset+size no wrap);
// without an fd the front-end drops the queue's notifier.
struct VringArea {
  uint32_t index = 0;
  bool has_fd = false;
  uint64_t size = 0;
  uint64_t offset = 0;
  bool operator==(const VringArea&) const = default;
};

using FrontendPayload = std::variant<NoPayload, U64Value, VringState, VringFile, VringAddress, MemoryTable,
                                     MemoryRegion, LogArea, IotlbMessage, ConfigSpace, InflightArea, SharedObject,
                                     DeviceStateTransfer>;
using BackendPayload = std::variant<NoPayload, IotlbMessage, VringArea, VringState, SharedObject>;

// A front-end request that passed validate_frontend_request().
struct FrontendRequestView {
  FrontendRequest request = FrontendRequest::kGetFeatures;
  bool need_reply = false;  // the NEED_REPLY flag (meaningful with REPLY_ACK negotiated)
  FrontendPayload payload;

  // The payload as the type the request carries (see the comments on each
  // view type). Asking for another type is a bug in the caller (VDMA_CHECK).
  template <class T>
  [[nodiscard]] const T& as() const noexcept {
    VDMA_CHECK(std::holds_alternative<T>(payload), "FrontendRequestView::as<T>() with the wrong payload type");
    return *std::get_if<T>(&payload);
  }
};

// A back-end request that passed validate_backend_request().
struct BackendRequestView {
  BackendRequest request = BackendRequest::kIotlbMsg;
  bool need_reply = false;
  BackendPayload payload;

  template <class T>
  [[nodiscard]] const T& as() const noexcept {
    VDMA_CHECK(std::holds_alternative<T>(payload), "BackendRequestView::as<T>() with the wrong payload type");
    return *std::get_if<T>(&payload);
  }
};

}  // namespace vdma::vhost_user
