#include "chain_bytes.h"

#include <algorithm>
#include <cstring>

namespace vdma::blk {
namespace {

// Calls f(fragment, start_in_fragment, n) for the `len` bytes at `offset`;
// false when the fragments end first.
template <class F>
bool for_range(std::span<const Fragment> frags, uint64_t offset, uint64_t len, F&& f) noexcept {
  for (const Fragment& fr : frags) {
    if (len == 0) break;
    if (offset >= fr.len) {
      offset -= fr.len;
      continue;
    }
    const uint64_t n = std::min(fr.len - offset, len);
    f(fr, offset, n);
    len -= n;
    offset = 0;
  }
  return len == 0;
}

}  // namespace

uint64_t total_bytes(std::span<const Fragment> frags) noexcept {
  uint64_t sum = 0;
  for (const Fragment& f : frags) sum += f.len;
  return sum;
}

bool gather(std::span<const Fragment> frags, uint64_t offset, std::span<std::byte> out) noexcept {
  size_t done = 0;
  return for_range(frags, offset, out.size(), [&](const Fragment& fr, uint64_t at, uint64_t n) {
    std::memcpy(out.data() + done, fr.host + at, n);
    done += n;
  });
}

bool scatter(std::span<const Fragment> frags, uint64_t offset, std::span<const std::byte> in) noexcept {
  size_t done = 0;
  return for_range(frags, offset, in.size(), [&](const Fragment& fr, uint64_t at, uint64_t n) {
    std::memcpy(fr.host + at, in.data() + done, n);
    done += n;
  });
}

void zero_prefix(std::span<const Fragment> frags, uint64_t len) noexcept {
  len = std::min(len, total_bytes(frags));
  (void)for_range(frags, 0, len, [](const Fragment& fr, uint64_t at, uint64_t n) { std::memset(fr.host + at, 0, n); });
}

std::byte* last_byte(std::span<const Fragment> frags) noexcept {
  for (auto it = frags.rbegin(); it != frags.rend(); ++it) {
    if (it->len != 0 && it->host != nullptr) return it->host + (it->len - 1);
  }
  return nullptr;
}

}  // namespace vdma::blk
