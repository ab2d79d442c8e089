// PackedRingBuilder: plays the other side of a packed virtqueue, byte by byte,
// in GuestMemory: the driver for a PackedDeviceQueue under test (well-formed or
// hostile chains), or the device for a PackedDriverQueue under test (honest or
// hostile used descriptors).
//
//   PackedRingBuilder ring(*mem, 8, Gpa{0x0}, Gpa{0x1000}, Gpa{0x1004});
//   ring.add_chain({{.addr = 0x100000, .len = 64}, {.addr = 0x200000, .len = 128, .flags = kDescFWrite}}, /*id=*/3);
//   auto dev = *PackedDeviceQueue::create(table, cfg, ring.addresses());
//   ... dev->pop(chain); dev->push_used(chain, n) ...
//   RawDesc used = ring.read(0);     // what the device wrote, exactly
//
// Addresses are identity (DmaAddr == Gpa): pair it with RegionTable::bypass
// and IdentityDmaOps. The builder's own arguments are test code, not hostile
// input, so a GuestMemory access that fails aborts the test (VDMA_CHECK).
//
// Thread safety: none.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vdma/base/address.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/mem/guest_memory.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/packed_layout.h"
#include "vdma/virtio/queue.h"

namespace vdma::testing {

// One descriptor exactly as it sits in memory (host-endian values).
struct RawDesc {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t id = 0;
  uint16_t flags = 0;
  bool operator==(const RawDesc&) const = default;
};

// One buffer of a chain to add; flags may hold WRITE, INDIRECT and (with
// Chaining::kAsGiven) NEXT; the builder adds the AVAIL/USED bits.
struct BufferDesc {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
};

// kAuto sets NEXT on every descriptor but the last; kAsGiven writes the
// caller's flags unchanged (for chains that never end, and the like).
enum class Chaining : uint8_t { kAuto, kAsGiven };

struct EventArea {
  uint16_t off_wrap = 0;
  uint16_t flags = 0;
  bool operator==(const EventArea&) const = default;
};

class PackedRingBuilder {
 public:
  PackedRingBuilder(const GuestMemory& mem, uint16_t size, Gpa desc, Gpa driver_event, Gpa device_event);
  // Over rings a PackedDriverQueue allocated through IdentityDmaOps.
  PackedRingBuilder(const GuestMemory& mem, uint16_t size, RingAddresses rings);

  [[nodiscard]] RingAddresses addresses() const;
  [[nodiscard]] uint16_t size() const { return size_; }

  // ---- as a driver ----
  [[nodiscard]] uint16_t next_avail() const { return next_avail_; }
  [[nodiscard]] bool avail_wrap() const { return avail_wrap_; }
  // Writes the chain at next_avail() (wrapping), every descriptor with `id`
  // and the AVAIL/USED bits of the wrap counter at its slot, the head's flags
  // last; advances next_avail(). Returns the head's slot.
  uint16_t add_chain(std::span<const BufferDesc> descs, uint16_t id, Chaining chaining = Chaining::kAuto);
  uint16_t add_chain(std::initializer_list<BufferDesc> descs, uint16_t id, Chaining chaining = Chaining::kAuto) {
    return add_chain(std::span<const BufferDesc>(descs.begin(), descs.size()), id, chaining);
  }
  // Writes an indirect table of raw entries at `at`.
  void write_table(Gpa at, std::span<const RawDesc> entries) const;
  // Moves the driver position (to mirror a restored device position).
  void set_avail_position(uint16_t index, bool wrap);

  // ---- as a device ----
  [[nodiscard]] uint16_t next_used() const { return next_used_; }
  [[nodiscard]] bool used_wrap() const { return used_wrap_; }
  // Writes id and len at next_used(), then flags with AVAIL and USED equal to
  // the used wrap counter; advances next_used() by `slots`.
  void push_used(uint16_t id, uint32_t len, uint16_t slots);
  // Whether the descriptor at next_used() is available to a device (the
  // driver under test has published a chain there).
  [[nodiscard]] bool has_available() const;

  // ---- raw ----
  [[nodiscard]] RawDesc read(uint16_t slot) const;
  void write(uint16_t slot, const RawDesc& d) const;
  [[nodiscard]] EventArea driver_event() const;
  void set_driver_event(EventArea e) const;
  [[nodiscard]] EventArea device_event() const;
  void set_device_event(EventArea e) const;

  [[nodiscard]] static RawDesc decode(std::span<const std::byte, 16> bytes);

 private:
  [[nodiscard]] EventArea read_event(Gpa at) const;
  void write_event(Gpa at, EventArea e) const;

  const GuestMemory& mem_;
  uint16_t size_;
  Gpa desc_, driver_event_, device_event_;
  uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;
  uint16_t next_used_ = 0;
  bool used_wrap_ = true;
};

// The memory most packed-ring tests use: "rings" [0, 1 MiB) shared (the
// coherent window of `dma`), a hole, "data" [16 MiB, 17 MiB) private, and the
// bypass table over both.
struct PackedTestWorld {
  static constexpr uint64_t kRingsSize = 1 << 20;
  static constexpr uint64_t kDataBase = 16 << 20;
  static constexpr uint64_t kDataSize = 1 << 20;
  static constexpr Gpa kHole{8 << 20};

  std::unique_ptr<GuestMemory> mem;
  std::unique_ptr<IdentityDmaOps> dma;
  RegionTable table;

  // Aborts when the memory cannot be created.
  static PackedTestWorld make();
  // A copy of every byte of guest memory, for "nothing else changed" checks.
  [[nodiscard]] std::vector<std::byte> snapshot() const;
  [[nodiscard]] static Gpa data(uint64_t off) { return Gpa{kDataBase + off}; }
};

}  // namespace vdma::testing
