#include "split_ring_builder.h"

#include <gtest/gtest.h>


#include "vdma/virtio/le.h"

namespace vdma::testing {

SplitRingBuilder::SplitRingBuilder(const GuestMemory& mem, Gpa base, uint16_t size)
    : mem_(mem),
      size_(size),
      desc_(base),
      avail_(base.unchecked_add(split::desc_table_size(size))),
      used_(Gpa(align_up(avail_.value() + split::avail_size(size), split::kUsedAlign))) {
  EXPECT_TRUE(base.is_aligned(split::kDescAlign)) << "ring base " << fmt::format("{}", base);
  const uint64_t footprint = used_.value() + split::used_size(size) - base.value();
  if (auto r = mem_.fill(base, footprint, std::byte{0}); !r) ADD_FAILURE() << r.error().to_string();
}

SplitRingBuilder::SplitRingBuilder(const GuestMemory& mem, RingAddresses rings, uint16_t size)
    : mem_(mem),
      size_(size),
      desc_(rings.desc.value()),
      avail_(rings.driver.value()),
      used_(rings.device.value()) {}

RingAddresses SplitRingBuilder::addresses() const noexcept {
  return {DmaAddr(desc_.value()), DmaAddr(avail_.value()), DmaAddr(used_.value())};
}

template <class T>
T SplitRingBuilder::read_le(Gpa at) const {
  T raw{};
  if (auto r = mem_.read(at, std::as_writable_bytes(std::span(&raw, 1))); !r) ADD_FAILURE() << r.error().to_string();
  return from_le(raw);
}

template <class T>
void SplitRingBuilder::write_le(Gpa at, T v) const {
  const T raw = to_le(v);
  if (auto r = mem_.write(at, std::as_bytes(std::span(&raw, 1))); !r) ADD_FAILURE() << r.error().to_string();
}

void SplitRingBuilder::write_table(Gpa table, std::span<const RawDesc> descs) const {
  for (size_t i = 0; i < descs.size(); ++i) {
    const Gpa at = table.unchecked_add(16 * i);
    write_le<uint64_t>(at, descs[i].addr);
    write_le<uint32_t>(at.unchecked_add(8), descs[i].len);
    write_le<uint16_t>(at.unchecked_add(12), descs[i].flags);
    write_le<uint16_t>(at.unchecked_add(14), descs[i].next);
  }
}

RawDesc SplitRingBuilder::table_entry(Gpa table, uint16_t index) const {
  const Gpa at = table.unchecked_add(size_t{16} * index);
  return {read_le<uint64_t>(at), read_le<uint32_t>(at.unchecked_add(8)), read_le<uint16_t>(at.unchecked_add(12)),
          read_le<uint16_t>(at.unchecked_add(14))};
}

void SplitRingBuilder::set_desc(uint16_t index, RawDesc d) const {
  EXPECT_LT(index, size_) << "test writes a descriptor outside the table";
  write_table(desc_.unchecked_add(size_t{16} * index), std::span(&d, 1));
}

RawDesc SplitRingBuilder::desc(uint16_t index) const { return table_entry(desc_, index); }

void SplitRingBuilder::set_avail_flags(uint16_t flags) const { write_le<uint16_t>(avail_, flags); }
uint16_t SplitRingBuilder::avail_flags() const { return read_le<uint16_t>(avail_); }
void SplitRingBuilder::set_avail_idx(uint16_t idx) const { write_le<uint16_t>(avail_.unchecked_add(2), idx); }
uint16_t SplitRingBuilder::avail_idx() const { return read_le<uint16_t>(avail_.unchecked_add(2)); }

void SplitRingBuilder::set_avail_entry(uint16_t slot, uint16_t head) const {
  write_le<uint16_t>(avail_.unchecked_add(split::kAvailRingOff + size_t{2} * (slot % size_)), head);
}
uint16_t SplitRingBuilder::avail_entry(uint16_t slot) const {
  return read_le<uint16_t>(avail_.unchecked_add(split::kAvailRingOff + size_t{2} * (slot % size_)));
}
void SplitRingBuilder::set_used_event(uint16_t v) const {
  write_le<uint16_t>(avail_.unchecked_add(split::used_event_off(size_)), v);
}
uint16_t SplitRingBuilder::used_event() const {
  return read_le<uint16_t>(avail_.unchecked_add(split::used_event_off(size_)));
}

void SplitRingBuilder::make_available(uint16_t head) const {
  const uint16_t idx = avail_idx();
  set_avail_entry(idx, head);
  set_avail_idx(static_cast<uint16_t>(idx + 1));
}

void SplitRingBuilder::set_used_flags(uint16_t flags) const { write_le<uint16_t>(used_, flags); }
uint16_t SplitRingBuilder::used_flags() const { return read_le<uint16_t>(used_); }
void SplitRingBuilder::set_used_idx(uint16_t idx) const { write_le<uint16_t>(used_.unchecked_add(2), idx); }
uint16_t SplitRingBuilder::used_idx() const { return read_le<uint16_t>(used_.unchecked_add(2)); }

void SplitRingBuilder::set_used_entry(uint16_t slot, RawUsedElem e) const {
  const Gpa at = used_.unchecked_add(split::kUsedRingOff + size_t{8} * (slot % size_));
  write_le<uint32_t>(at, e.id);
  write_le<uint32_t>(at.unchecked_add(4), e.len);
}
RawUsedElem SplitRingBuilder::used_entry(uint16_t slot) const {
  const Gpa at = used_.unchecked_add(split::kUsedRingOff + size_t{8} * (slot % size_));
  return {read_le<uint32_t>(at), read_le<uint32_t>(at.unchecked_add(4))};
}
void SplitRingBuilder::set_avail_event(uint16_t v) const {
  write_le<uint16_t>(used_.unchecked_add(split::avail_event_off(size_)), v);
}
uint16_t SplitRingBuilder::avail_event() const {
  return read_le<uint16_t>(used_.unchecked_add(split::avail_event_off(size_)));
}

void SplitRingBuilder::push_used(uint32_t id, uint32_t len) const {
  const uint16_t idx = used_idx();
  set_used_entry(idx, {id, len});
  set_used_idx(static_cast<uint16_t>(idx + 1));
}

}  // namespace vdma::testing
