// Checks shared by the request and reply validators (validate.h). Private to
// the vhost_user module.
//
// Every function takes the request's name for its error messages and reads
// peer-controlled values only from its arguments, so a caller reads each wire
// field once, into a local or a Wire* struct copy, and validates that copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "vdma/base/result.h"
#include "vdma/vhost_user/message.h"
#include "vdma/vhost_user/payload_views.h"

namespace vdma::vhost_user::detail {

// kBadSize "NAME: payload size 7, expected 8".
[[nodiscard]] Result<void> expect_size(const Message& msg, std::string_view name, size_t expected);
// kBadFdCount "NAME: fd count 2, expected 1".
[[nodiscard]] Result<void> expect_fds(const Message& msg, std::string_view name, size_t expected);
// kBadField "NAME: vring index 256, expected < 256".
[[nodiscard]] Result<void> check_vring_index(std::string_view name, uint32_t index);
// kBadField "NAME: num 5 is reserved and must be 0".
[[nodiscard]] Result<void> check_reserved_num(std::string_view name, uint32_t num);
// A u64 holding a vring index in bits 0-7 and the no-fd flag in bit 8 (the
// SET_VRING_KICK/CALL/ERR payload and the host-notifier area's first field).
// kBadField when bits 9-63 are set.
struct VringFdWord {
  uint32_t index = 0;
  bool no_fd = false;
};
[[nodiscard]] Result<VringFdWord> parse_vring_fd_word(std::string_view name, uint64_t word);
// A memory region: size non-zero, and guest address, user address and mmap
// offset plus size do not wrap. Errors name "region <index>", or "region"
// when index is kSingleRegion (ADD_MEM_REG, REM_MEM_REG).
inline constexpr int kSingleRegion = -1;
[[nodiscard]] Result<MemoryRegion> check_region(std::string_view name, int index, const WireMemoryRegion& wire);
// An fd-backed area (log, inflight, host notifier): size non-zero, offset +
// size does not wrap. `what` is "mmap" or "notifier area".
[[nodiscard]] Result<void> check_fd_area(std::string_view name, std::string_view what, uint64_t size,
                                         uint64_t offset);
// The VhostUserConfig payload of GET_CONFIG, SET_CONFIG and the GET_CONFIG
// reply: header, config size 1..256, payload size 12 + size, offset + size
// <= 256, flags 0 or 1.
[[nodiscard]] Result<ConfigSpace> parse_config(const Message& msg, std::string_view name);
// An IOTLB message sent by the front-end (UPDATE, INVALIDATE) or by the
// back-end (MISS, ACCESS_FAIL); see IotlbMessage for the rules.
[[nodiscard]] Result<IotlbMessage> parse_iotlb(std::string_view name, const WireIotlbMsg& wire, bool from_frontend);
// The inflight description; `with_area` requires a non-zero mmap area that
// does not wrap (SET_INFLIGHT_FD, the GET_INFLIGHT_FD reply).
[[nodiscard]] Result<InflightArea> parse_inflight(std::string_view name, const WireInflight& wire, bool with_area);

}  // namespace vdma::vhost_user::detail
