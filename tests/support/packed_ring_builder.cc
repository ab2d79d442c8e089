#include "packed_ring_builder.h"

#include <array>
#include <cstring>

#include "vdma/base/check.h"

namespace vdma::testing {

namespace {

constexpr uint16_t kAvail = packed::kDescFAvail;
constexpr uint16_t kUsed = packed::kDescFUsed;

std::array<std::byte, 16> encode(const RawDesc& d) {
  packed::Desc le;
  le.addr.store(d.addr);
  le.len.store(d.len);
  le.id.store(d.id);
  le.flags.store(d.flags);
  std::array<std::byte, 16> out;
  std::memcpy(out.data(), &le, sizeof le);
  return out;
}

}  // namespace

PackedRingBuilder::PackedRingBuilder(const GuestMemory& mem, uint16_t size, Gpa desc, Gpa driver_event,
                                     Gpa device_event)
    : mem_(mem), size_(size), desc_(desc), driver_event_(driver_event), device_event_(device_event) {
  VDMA_CHECK(size >= 1 && size <= packed::kMaxQueueSize, "PackedRingBuilder: bad size");
}

PackedRingBuilder::PackedRingBuilder(const GuestMemory& mem, uint16_t size, RingAddresses rings)
    : PackedRingBuilder(mem, size, Gpa(rings.desc.value()), Gpa(rings.driver.value()), Gpa(rings.device.value())) {}

RingAddresses PackedRingBuilder::addresses() const {
  return {DmaAddr(desc_.value()), DmaAddr(driver_event_.value()), DmaAddr(device_event_.value())};
}

RawDesc PackedRingBuilder::decode(std::span<const std::byte, 16> bytes) {
  packed::Desc le;
  std::memcpy(&le, bytes.data(), sizeof le);
  return {le.addr.load(), le.len.load(), le.id.load(), le.flags.load()};
}

RawDesc PackedRingBuilder::read(uint16_t slot) const {
  VDMA_CHECK(slot < size_, "PackedRingBuilder::read: slot beyond the ring");
  std::array<std::byte, 16> b;
  VDMA_CHECK(mem_.read(desc_.unchecked_add(uint64_t{slot} * 16), b).has_value(), "PackedRingBuilder: read failed");
  return decode(b);
}

void PackedRingBuilder::write(uint16_t slot, const RawDesc& d) const {
  VDMA_CHECK(slot < size_, "PackedRingBuilder::write: slot beyond the ring");
  const auto b = encode(d);
  VDMA_CHECK(mem_.write(desc_.unchecked_add(uint64_t{slot} * 16), b).has_value(), "PackedRingBuilder: write failed");
}

uint16_t PackedRingBuilder::add_chain(std::span<const BufferDesc> descs, uint16_t id, Chaining chaining) {
  VDMA_CHECK(!descs.empty() && descs.size() <= size_, "PackedRingBuilder::add_chain: bad chain length");
  const uint16_t head = next_avail_;
  uint16_t slot = next_avail_;
  bool wrap = avail_wrap_;
  RawDesc head_desc;
  for (size_t k = 0; k < descs.size(); ++k) {
    uint16_t flags = descs[k].flags;
    if (chaining == Chaining::kAuto && k + 1 < descs.size()) flags |= packed::kDescFNext;
    flags |= wrap ? kAvail : kUsed;
    const RawDesc d{descs[k].addr, descs[k].len, id, flags};
    if (k == 0) {
      // The head goes in last, flags and all, as a driver publishes it.
      head_desc = d;
      write(slot, RawDesc{d.addr, d.len, d.id, read(slot).flags});
    } else {
      write(slot, d);
    }
    if (++slot == size_) {
      slot = 0;
      wrap = !wrap;
    }
  }
  write(head, head_desc);
  next_avail_ = slot;
  avail_wrap_ = wrap;
  return head;
}

void PackedRingBuilder::write_table(Gpa at, std::span<const RawDesc> entries) const {
  for (size_t k = 0; k < entries.size(); ++k) {
    const auto b = encode(entries[k]);
    VDMA_CHECK(mem_.write(at.unchecked_add(k * 16), b).has_value(), "PackedRingBuilder: table write failed");
  }
}

void PackedRingBuilder::set_avail_position(uint16_t index, bool wrap) {
  VDMA_CHECK(index < size_, "PackedRingBuilder: position beyond the ring");
  next_avail_ = next_used_ = index;
  avail_wrap_ = used_wrap_ = wrap;
}

void PackedRingBuilder::push_used(uint16_t id, uint32_t len, uint16_t slots) {
  RawDesc d = read(next_used_);
  d.id = id;
  d.len = len;
  d.flags = used_wrap_ ? static_cast<uint16_t>(kAvail | kUsed) : uint16_t{0};
  write(next_used_, d);
  const uint32_t next = uint32_t{next_used_} + slots;
  if (next >= size_) {
    next_used_ = static_cast<uint16_t>(next - size_);
    used_wrap_ = !used_wrap_;
  } else {
    next_used_ = static_cast<uint16_t>(next);
  }
}

bool PackedRingBuilder::has_available() const {
  const uint16_t f = read(next_used_).flags;
  return ((f & kAvail) != 0) == used_wrap_ && ((f & kUsed) != 0) != used_wrap_;
}

EventArea PackedRingBuilder::read_event(Gpa at) const {
  packed::EventSuppress le;
  VDMA_CHECK(mem_.read(at, std::as_writable_bytes(std::span(&le, 1))).has_value(), "PackedRingBuilder: event read");
  return {le.off_wrap.load(), le.flags.load()};
}

void PackedRingBuilder::write_event(Gpa at, EventArea e) const {
  packed::EventSuppress le;
  le.off_wrap.store(e.off_wrap);
  le.flags.store(e.flags);
  VDMA_CHECK(mem_.write(at, std::as_bytes(std::span(&le, 1))).has_value(), "PackedRingBuilder: event write");
}

EventArea PackedRingBuilder::driver_event() const { return read_event(driver_event_); }
void PackedRingBuilder::set_driver_event(EventArea e) const { write_event(driver_event_, e); }
EventArea PackedRingBuilder::device_event() const { return read_event(device_event_); }
void PackedRingBuilder::set_device_event(EventArea e) const { write_event(device_event_, e); }

PackedTestWorld PackedTestWorld::make() {
  PackedTestWorld w;
  auto m = GuestMemory::create({{Gpa{0}, kRingsSize, MemAttr::kShared, "rings"},
                                {Gpa{kDataBase}, kDataSize, MemAttr::kPrivate, "data"}});
  VDMA_CHECK(m.has_value(), "PackedTestWorld: GuestMemory::create failed");
  w.mem = std::move(m).value();
  w.dma = std::make_unique<IdentityDmaOps>(*w.mem, AddrRange<Gpa>{Gpa{0}, kRingsSize});
  w.table = RegionTable::bypass(*w.mem);
  return w;
}

std::vector<std::byte> PackedTestWorld::snapshot() const {
  std::vector<std::byte> out;
  for (const GuestRegion& r : mem->regions()) out.insert(out.end(), r.host().begin(), r.host().end());
  return out;
}

}  // namespace vdma::testing
