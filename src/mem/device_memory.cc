#include "vdma/mem/device_memory.h"

namespace vdma {

std::string_view to_string(Access a) noexcept {
  switch (a) {
    case Access::kNone: return "none";
    case Access::kRead: return "read";
    case Access::kWrite: return "write";
    case Access::kReadWrite: return "read-write";
  }
  return "invalid";
}

Result<std::vector<Fragment>> DeviceMemory::translate(DmaAddr addr, uint64_t len, Access access) const {
  std::vector<Fragment> out;
  VDMA_TRY(translate(addr, len, access, out));
  return out;
}

Result<std::span<std::byte>> DeviceMemory::translate_contiguous(DmaAddr addr, uint64_t len, Access access) const {
  std::vector<Fragment> out;
  VDMA_TRY(translate(addr, len, access, out));
  if (out.empty()) return std::span<std::byte>();
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i].host != out[i - 1].host + out[i - 1].len) {
      return make_error(MemErrc::kTooManyFragments,
                        "{} + len {:#x} is not contiguous in host memory ({} fragments)", addr, len, out.size());
    }
  }
  return std::span<std::byte>(out.front().host, static_cast<size_t>(len));
}

}  // namespace vdma
