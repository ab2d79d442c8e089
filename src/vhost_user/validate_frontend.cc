// Validation of front-end requests (vhost-user.rst "Front-end message types")
// and the header rules shared by every message.
#include <cstring>

#include "field_checks.h"
#include "vdma/vhost_user/validate.h"

namespace vdma::vhost_user {

using detail::check_fd_area;
using detail::check_region;
using detail::check_reserved_num;
using detail::check_vring_index;
using detail::expect_fds;
using detail::expect_size;

Result<void> check_header(const Message& msg, Channel channel, bool expect_reply) {
  const uint32_t flags = msg.flags();  // peer-controlled
  const RequestLabel label{msg.request(), channel};
  if ((flags & kFlagVersionMask) != kVersion) {
    return make_error(VhostUserErrc::kBadHeader, "{}: version {} in flags {:#x}, expected {}", label,
                      flags & kFlagVersionMask, flags, kVersion);
  }
  if ((flags & ~kFlagsDefined) != 0) {
    return make_error(VhostUserErrc::kBadHeader, "{}: reserved flag bits {:#x} set in flags {:#x}", label,
                      flags & ~kFlagsDefined, flags);
  }
  const bool is_reply = (flags & kFlagReply) != 0;
  if (is_reply && !expect_reply) {
    return make_error(VhostUserErrc::kBadHeader, "{}: REPLY flag set on a request", label);
  }
  if (!is_reply && expect_reply) {
    return make_error(VhostUserErrc::kBadHeader, "{}: reply without the REPLY flag", label);
  }
  if (is_reply && (flags & kFlagNeedReply) != 0) {
    return make_error(VhostUserErrc::kBadHeader, "{}: NEED_REPLY flag set on a reply", label);
  }
  return ok();
}

namespace {

Result<FrontendPayload> empty(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, 0));
  VDMA_TRY(expect_fds(msg, name, 0));
  return FrontendPayload(NoPayload{});
}

Result<WireU64> plain_u64(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireU64)));
  VDMA_TRY(expect_fds(msg, name, 0));
  return msg.read_payload<WireU64>();
}

Result<VringState> vring_state(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireVringState)));
  VDMA_TRY(expect_fds(msg, name, 0));
  const WireVringState w = msg.read_payload<WireVringState>();  // peer-controlled copy
  VDMA_TRY(check_vring_index(name, w.index));
  return VringState{w.index, w.num};
}

Result<FrontendPayload> zero_or_one(const Message& msg, std::string_view name) {
  const VringState s = VDMA_TRY(vring_state(msg, name));
  if (s.num > 1) return make_error(VhostUserErrc::kBadField, "{}: num {}, expected 0 or 1", name, s.num);
  return FrontendPayload(s);
}

Result<FrontendPayload> vring_file(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireU64)));
  const detail::VringFdWord w = VDMA_TRY(detail::parse_vring_fd_word(name, msg.read_payload<WireU64>().value));
  const size_t want = w.no_fd ? 0 : 1;
  if (msg.fd_count() != want) {
    return make_error(VhostUserErrc::kBadFdCount, "{}: fd count {}, expected {} ({})", name, msg.fd_count(), want,
                      w.no_fd ? "no-fd flag set" : "no-fd flag clear");
  }
  return FrontendPayload(VringFile{w.index, !w.no_fd});
}

Result<FrontendPayload> vring_addr(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireVringAddr)));
  VDMA_TRY(expect_fds(msg, name, 0));
  const WireVringAddr w = msg.read_payload<WireVringAddr>();  // peer-controlled copy
  VDMA_TRY(check_vring_index(name, w.index));
  if ((w.flags & ~kVringAddrFlagLog) != 0) {
    return make_error(VhostUserErrc::kBadField, "{}: flags {:#x}, only bit 0 (log) is defined", name, w.flags);
  }
  return FrontendPayload(VringAddress{w.index, (w.flags & kVringAddrFlagLog) != 0, RingAddr(w.desc_user_addr),
                                      RingAddr(w.used_user_addr), RingAddr(w.avail_user_addr),
                                      Gpa(w.log_guest_addr)});
}

Result<FrontendPayload> mem_table(const Message& msg, std::string_view name) {
  if (msg.size() < kMemoryTableHeaderSize) {
    return make_error(VhostUserErrc::kBadSize, "{}: payload size {}, expected at least {}", name, msg.size(),
                      kMemoryTableHeaderSize);
  }
  const uint32_t guest_count = msg.read_payload<uint32_t>();  // peer-controlled
  if (guest_count == 0 || guest_count > kMaxMemRegions) {
    return make_error(VhostUserErrc::kBadField, "{}: num_regions {}, expected 1..{}", name, guest_count,
                      kMaxMemRegions);
  }
  const size_t expected = kMemoryTableHeaderSize + size_t{guest_count} * sizeof(WireMemoryRegion);
  if (msg.size() != expected) {
    return make_error(VhostUserErrc::kBadSize, "{}: payload size {} for {} regions, expected {}", name, msg.size(),
                      guest_count, expected);
  }
  if (msg.fd_count() != guest_count) {
    return make_error(VhostUserErrc::kBadFdCount, "{}: {} regions but {} fds", name, guest_count, msg.fd_count());
  }
  MemoryTable t;
  t.count = guest_count;
  for (uint32_t i = 0; i < guest_count; ++i) {  // bounded by kMaxMemRegions above
    const auto w = msg.read_payload<WireMemoryRegion>(kMemoryTableHeaderSize + i * sizeof(WireMemoryRegion));
    t.regions[i] = VDMA_TRY(check_region(name, static_cast<int>(i), w));
  }
  return FrontendPayload(t);
}

Result<FrontendPayload> single_region(const Message& msg, std::string_view name, size_t min_fds, size_t max_fds) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireSingleMemoryRegion)));
  if (min_fds == max_fds) {
    VDMA_TRY(expect_fds(msg, name, min_fds));
  } else if (msg.fd_count() < min_fds || msg.fd_count() > max_fds) {
    return make_error(VhostUserErrc::kBadFdCount, "{}: fd count {}, expected {} or {}", name, msg.fd_count(), min_fds,
                      max_fds);
  }
  const auto w = msg.read_payload<WireSingleMemoryRegion>();
  return FrontendPayload(VDMA_TRY(check_region(name, detail::kSingleRegion, w.region)));
}

Result<FrontendPayload> log_base(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireLog)));
  VDMA_TRY(expect_fds(msg, name, 1));
  const WireLog w = msg.read_payload<WireLog>();
  VDMA_TRY(check_fd_area(name, "mmap", w.mmap_size, w.mmap_offset));
  return FrontendPayload(LogArea{w.mmap_size, w.mmap_offset});
}

Result<FrontendPayload> fd_only(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, 0));
  VDMA_TRY(expect_fds(msg, name, 1));
  return FrontendPayload(NoPayload{});
}

Result<FrontendPayload> inflight(const Message& msg, std::string_view name, bool is_set) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireInflight)));
  VDMA_TRY(expect_fds(msg, name, is_set ? 1 : 0));
  return FrontendPayload(VDMA_TRY(detail::parse_inflight(name, msg.read_payload<WireInflight>(), is_set)));
}

Result<FrontendPayload> shared_object(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireShared)));
  VDMA_TRY(expect_fds(msg, name, 0));
  const WireShared w = msg.read_payload<WireShared>();
  SharedObject s;
  std::memcpy(s.uuid.data(), w.uuid, sizeof w.uuid);
  return FrontendPayload(s);
}

Result<FrontendPayload> device_state_fd(const Message& msg, std::string_view name) {
  VDMA_TRY(expect_size(msg, name, sizeof(WireDeviceStateParams)));
  VDMA_TRY(expect_fds(msg, name, 1));
  const WireDeviceStateParams w = msg.read_payload<WireDeviceStateParams>();
  if (w.direction > static_cast<uint32_t>(TransferDirection::kLoad)) {
    return make_error(VhostUserErrc::kBadField, "{}: direction {}, expected 0 (save) or 1 (load)", name, w.direction);
  }
  if (w.phase != static_cast<uint32_t>(MigrationPhase::kStopped)) {
    return make_error(VhostUserErrc::kBadField, "{}: phase {}, expected 0 (stopped)", name, w.phase);
  }
  return FrontendPayload(
      DeviceStateTransfer{static_cast<TransferDirection>(w.direction), static_cast<MigrationPhase>(w.phase)});
}

Result<FrontendPayload> payload_of(FrontendRequest req, const Message& msg) {
  const std::string_view name = request_name(req);
  switch (req) {
    case FrontendRequest::kGetFeatures:
    case FrontendRequest::kSetOwner:
    case FrontendRequest::kResetOwner:
    case FrontendRequest::kGetProtocolFeatures:
    case FrontendRequest::kGetQueueNum:
    case FrontendRequest::kPostcopyAdvise:
    case FrontendRequest::kPostcopyListen:
    case FrontendRequest::kPostcopyEnd:
    case FrontendRequest::kResetDevice:
    case FrontendRequest::kGetMaxMemSlots:
    case FrontendRequest::kGetStatus:
    case FrontendRequest::kCheckDeviceState:
      return empty(msg, name);

    case FrontendRequest::kSetFeatures:
    case FrontendRequest::kSetProtocolFeatures:
    case FrontendRequest::kSendRarp:
    case FrontendRequest::kNetSetMtu:
    case FrontendRequest::kCloseCryptoSession:
      return FrontendPayload(U64Value{VDMA_TRY(plain_u64(msg, name)).value});
    case FrontendRequest::kSetStatus: {
      const uint64_t status = VDMA_TRY(plain_u64(msg, name)).value;
      if (status > 0xff) {
        return make_error(VhostUserErrc::kBadField, "{}: status {:#x} does not fit the 8-bit device status", name,
                          status);
      }
      return FrontendPayload(U64Value{status});
    }

    case FrontendRequest::kSetVringNum: {
      const VringState s = VDMA_TRY(vring_state(msg, name));
      if (s.num == 0 || s.num > kMaxQueueSize) {
        return make_error(VhostUserErrc::kBadField, "{}: queue size {}, expected 1..{}", name, s.num, kMaxQueueSize);
      }
      return FrontendPayload(s);
    }
    case FrontendRequest::kSetVringBase:
      return FrontendPayload(VDMA_TRY(vring_state(msg, name)));
    case FrontendRequest::kGetVringBase:
    case FrontendRequest::kVringKick: {
      const VringState s = VDMA_TRY(vring_state(msg, name));
      VDMA_TRY(check_reserved_num(name, s.num));
      return FrontendPayload(s);
    }
    case FrontendRequest::kSetVringEnable:
    case FrontendRequest::kSetVringEndian:
      return zero_or_one(msg, name);
    case FrontendRequest::kSetVringAddr:
      return vring_addr(msg, name);
    case FrontendRequest::kSetVringKick:
    case FrontendRequest::kSetVringCall:
    case FrontendRequest::kSetVringErr:
      return vring_file(msg, name);

    case FrontendRequest::kSetMemTable:
      return mem_table(msg, name);
    case FrontendRequest::kAddMemReg:
      return single_region(msg, name, 1, 1);
    case FrontendRequest::kRemMemReg:
      // vhost-user.rst: "the back-end MAY accept messages with one file
      // descriptor ... [and] MUST close it"; the Message closes it.
      return single_region(msg, name, 0, 1);

    case FrontendRequest::kSetLogBase:
      return log_base(msg, name);
    case FrontendRequest::kSetLogFd:
    case FrontendRequest::kSetBackendReqFd:
    case FrontendRequest::kGpuSetSocket:
      return fd_only(msg, name);

    case FrontendRequest::kIotlbMsg: {
      VDMA_TRY(expect_size(msg, name, sizeof(WireIotlbMsg)));
      VDMA_TRY(expect_fds(msg, name, 0));
      return FrontendPayload(VDMA_TRY(detail::parse_iotlb(name, msg.read_payload<WireIotlbMsg>(), true)));
    }

    case FrontendRequest::kGetConfig:
    case FrontendRequest::kSetConfig: {
      VDMA_TRY(expect_fds(msg, name, 0));
      return FrontendPayload(VDMA_TRY(detail::parse_config(msg, name)));
    }

    case FrontendRequest::kGetInflightFd:
      return inflight(msg, name, false);
    case FrontendRequest::kSetInflightFd:
      return inflight(msg, name, true);

    case FrontendRequest::kGetSharedObject:
      return shared_object(msg, name);
    case FrontendRequest::kSetDeviceStateFd:
      return device_state_fd(msg, name);

    case FrontendRequest::kCreateCryptoSession:
      return make_error(VhostUserErrc::kUnsupportedRequest, "{}: payload layout not implemented by vdma", name);
  }
  return make_error(VhostUserErrc::kUnknownRequest, "unknown front-end request {}", static_cast<uint32_t>(req));
}

}  // namespace

Result<FrontendRequestView> validate_frontend_request(const Message& msg) {
  VDMA_TRY(check_header(msg, Channel::kMain, false));
  const uint32_t code = msg.request();  // peer-controlled
  if (!is_known_frontend_request(code)) {
    return make_error(VhostUserErrc::kUnknownRequest, "unknown front-end request {}", code);
  }
  const auto req = static_cast<FrontendRequest>(code);
  FrontendRequestView view;
  view.request = req;
  view.need_reply = msg.needs_reply();
  view.payload = VDMA_TRY(payload_of(req, msg));
  return view;
}

}  // namespace vdma::vhost_user
