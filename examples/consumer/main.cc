// vdma-consumer: maps a buffer through the platform DMA ops of a confidential
// guest (every mapping bounces through a shared swiotlb pool) and checks what
// the device would see. Built against an installed vdma, with find_package
// (CMakeLists.txt) or pkg-config (Makefile). Exits 0 when every check holds.
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "vdma/dma/bounce_pool.h"
#include "vdma/dma/coherent_pool.h"
#include "vdma/dma/direct_dma_ops.h"
#include "vdma/mem/guest_memory.h"

namespace {

constexpr vdma::Gpa kRam{0};                // private guest RAM: 1 MiB
constexpr vdma::Gpa kShared{1ull << 20};    // shared with the host: 2 MiB
constexpr uint64_t kPoolSize = 1ull << 20;  // swiotlb window (first MiB of shared)

int fail(const char* what, const vdma::Error& e) {
  std::fprintf(stderr, "vdma-consumer: %s: %s\n", what, e.to_string().c_str());
  return 1;
}

}  // namespace

int main() {
  using namespace vdma;
  auto mem = GuestMemory::create({{.base = kRam, .size = 1ull << 20, .attr = MemAttr::kPrivate, .name = "ram"},
                                  {.base = kShared, .size = 2ull << 20, .attr = MemAttr::kShared, .name = "shared"}});
  if (!mem) return fail("guest memory", mem.error());
  BouncePool::Config swiotlb;
  swiotlb.window = {kShared, kPoolSize};
  swiotlb.min_areas = 1;
  auto pool = BouncePool::create(**mem, swiotlb);
  if (!pool) return fail("bounce pool", pool.error());
  auto coherent = CoherentPool::create(**mem, {Gpa{kShared.value() + kPoolSize}, 1ull << 20});
  if (!coherent) return fail("coherent pool", coherent.error());
  // A confidential guest's platform: every mapping bounces (swiotlb=force).
  DirectDmaConfig config;
  config.bounce_mode = BounceMode::kForce;
  config.bounce_pool = std::move(*pool);
  config.coherent = std::move(*coherent);
  auto ops = DirectDmaOps::create(**mem, std::move(config));
  if (!ops) return fail("dma ops", ops.error());

  // A request header in private RAM, mapped for the device to read.
  const char text[] = "hello from private memory";
  std::vector<std::byte> bytes(sizeof(text));
  std::memcpy(bytes.data(), text, sizeof(text));
  const Gpa buf{0x3000};
  if (auto r = (*mem)->write(buf, bytes); !r) return fail("write", r.error());
  auto dma = (*ops)->map(buf, bytes.size(), DmaDirection::kToDevice);
  if (!dma) return fail("map", dma.error());

  // What the device reads at the DMA address: a copy in shared memory.
  std::vector<std::byte> seen(bytes.size());
  if (auto r = (*mem)->read(Gpa{dma->value()}, seen); !r) return fail("read at the DMA address", r.error());
  const bool in_pool = dma->value() >= kShared.value() && dma->value() + bytes.size() <= kShared.value() + kPoolSize;
  const bool same = seen == bytes;
  std::printf("ops: %.*s\n", static_cast<int>((*ops)->kind().size()), (*ops)->kind().data());
  std::printf("mapped gpa 0x%llx (%zu bytes, private) -> dma 0x%llx (bounce slot in shared memory: %s)\n",
              static_cast<unsigned long long>(buf.value()), bytes.size(),
              static_cast<unsigned long long>(dma->value()), in_pool ? "yes" : "NO");
  std::printf("device reads: \"%s\" (%s)\n", reinterpret_cast<const char*>(seen.data()),
              same ? "same bytes" : "DIFFERENT");
  if (auto r = (*ops)->unmap(*dma, bytes.size(), DmaDirection::kToDevice); !r) return fail("unmap", r.error());
  std::printf("unmapped\n");
  return in_pool && same ? 0 : 1;
}
