// libFuzzer target: the device-side chain walker fed arbitrary ring and
// descriptor memory, for both ring formats.
//
// Input layout:
//   byte 0      bit 0: packed ring; bit 1: INDIRECT_DESC; bit 2: EVENT_IDX
//   byte 1      log2(queue size) mod 9, so sizes 1..256
//   bytes 2-3   n, little-endian: the length of the memory image that follows
//   n bytes     copied to guest memory at gpa 0 (64 KiB, the rest zeroed)
//   the rest    4-byte driver actions (le16 offset, le16 value), one applied
//               between pops: a hostile driver changing the ring under the device
//
// Rings live at fixed addresses: descriptors at 0x0, driver area at 0x1000,
// device area at 0x2000; anything else is data. Every fragment the walker
// returns is checked to lie inside guest memory and is read (readable) or
// written (writable) so ASan sees any out-of-bounds access.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "vdma/mem/region_table.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/features.h"

namespace {

constexpr uint64_t kMemSize = 64 * 1024;

struct World {
  std::unique_ptr<vdma::GuestMemory> mem;
  vdma::RegionTable table;
};

World& world() {
  static World* w = [] {
    auto* nw = new World;
    auto m = vdma::GuestMemory::create({{vdma::Gpa{0}, kMemSize, vdma::MemAttr::kShared, "fuzz"}});
    if (!m) std::abort();
    nw->mem = std::move(m).value();
    nw->table = vdma::RegionTable::bypass(*nw->mem);
    return nw;
  }();
  return *w;
}

void check_inside(const vdma::Fragment& f, std::span<std::byte> all) {
  if (f.host < all.data() || f.len > all.size() || f.host + f.len > all.data() + all.size()) {
    std::fprintf(stderr, "fragment outside guest memory\n");
    std::abort();
  }
}

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  World& w = world();
  std::span<std::byte> ram = w.mem->regions()[0].host();
  const uint8_t flags = data[0];
  const uint16_t qsize = static_cast<uint16_t>(1u << (data[1] % 9));
  const size_t n = std::min<size_t>({size_t{le16(data + 2)}, size - 4, size_t{kMemSize}});
  std::memset(ram.data(), 0, ram.size());
  std::memcpy(ram.data(), data + 4, n);
  const uint8_t* actions = data + 4 + n;
  size_t actions_left = (size - 4 - n) / 4;

  const vdma::RingFormat format = (flags & 1) ? vdma::RingFormat::kPacked : vdma::RingFormat::kSplit;
  uint64_t features = vdma::feature_bit(vdma::kFeatureVersion1);
  if (flags & 2) features |= vdma::feature_bit(vdma::kFeatureIndirectDesc);
  if (flags & 4) features |= vdma::feature_bit(vdma::kFeatureEventIdx);
  const vdma::QueueConfig cfg{.size = qsize, .features = features};
  const vdma::RingAddresses rings{vdma::DmaAddr{0}, vdma::DmaAddr{0x1000}, vdma::DmaAddr{0x2000}};
  auto q = vdma::make_device_queue(format, w.table, cfg, rings);
  if (!q) return 0;

  vdma::DescriptorChain chain;
  // Bounded: a hostile ring must not keep the walker busy forever.
  for (int iter = 0; iter < 4 * qsize + 8; ++iter) {
    auto got = (*q)->pop(chain);
    if (!got) {
      // Sticky NEEDS_RESET: the next call must fail at once too.
      if ((*q)->state() == vdma::DeviceQueueState::kNeedsReset && (*q)->pop(chain).has_value()) std::abort();
      break;
    }
    if (!*got) {
      if (actions_left == 0) break;
    } else {
      uint32_t written = 0;
      if (!chain.error) {
        volatile uint8_t sink = 0;
        for (const auto& f : chain.readable) {
          check_inside(f, ram);
          for (uint64_t i = 0; i < f.len; ++i) sink = sink + static_cast<uint8_t>(f.host[i]);
        }
        for (const auto& f : chain.writable) {
          check_inside(f, ram);
          std::memset(f.host, 0xee, f.len);
          written += static_cast<uint32_t>(f.len);
        }
      }
      if (!(*q)->push_used(chain, written)) break;
      (void)(*q)->should_notify();
    }
    if (actions_left > 0) {
      const uint16_t off = le16(actions);
      const uint16_t val = le16(actions + 2);
      if (off + 2u <= kMemSize) std::memcpy(ram.data() + off, &val, 2);
      actions += 4;
      --actions_left;
    }
  }
  (void)(*q)->enable_notifications();
  return 0;
}
