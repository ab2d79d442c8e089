#include "vdma/dma/debug_dma_ops.h"

#include <algorithm>

#include <spdlog/spdlog.h>

namespace vdma {

std::string_view to_string(DmaMisuse m) noexcept {
  switch (m) {
    case DmaMisuse::kUnknownAddress: return "unknown-address";
    case DmaMisuse::kDoubleUnmap: return "double-unmap";
    case DmaMisuse::kSizeMismatch: return "size-mismatch";
    case DmaMisuse::kDirectionMismatch: return "direction-mismatch";
    case DmaMisuse::kSyncOutsideMapping: return "sync-outside-mapping";
    case DmaMisuse::kCpuReadWithoutSync: return "cpu-read-without-sync";
    case DmaMisuse::kCpuWriteWhileDeviceOwns: return "cpu-write-while-device-owns";
    case DmaMisuse::kUnknownCoherentFree: return "unknown-coherent-free";
    case DmaMisuse::kLeakAtTeardown: return "leak-at-teardown";
  }
  return "invalid";
}

namespace {

// [lo, hi) ∪= intervals, kept sorted and merged.
void add_interval(std::vector<std::pair<uint64_t, uint64_t>>& v, uint64_t lo, uint64_t hi) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(v.size() + 1);
  bool placed = false;
  for (const auto& [a, b] : v) {
    if (b < lo) {
      out.emplace_back(a, b);
    } else if (hi < a) {
      if (!placed) out.emplace_back(lo, hi);
      placed = true;
      out.emplace_back(a, b);
    } else {
      lo = std::min(lo, a);
      hi = std::max(hi, b);
    }
  }
  if (!placed) out.emplace_back(lo, hi);
  v = std::move(out);
}

void remove_interval(std::vector<std::pair<uint64_t, uint64_t>>& v, uint64_t lo, uint64_t hi) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(v.size() + 1);
  for (const auto& [a, b] : v) {
    if (b <= lo || hi <= a) {
      out.emplace_back(a, b);
      continue;
    }
    if (a < lo) out.emplace_back(a, lo);
    if (hi < b) out.emplace_back(hi, b);
  }
  v = std::move(out);
}

bool covers(const std::vector<std::pair<uint64_t, uint64_t>>& v, uint64_t lo, uint64_t hi) {
  for (const auto& [a, b] : v) {
    if (a <= lo && hi <= b) return true;
  }
  return false;
}

}  // namespace

DebugDmaOps::DebugDmaOps(DmaOps& inner, std::string device) : inner_(inner), device_(std::move(device)) {}

DebugDmaOps::~DebugDmaOps() {
  std::lock_guard lock(mu_);
  for (const auto& [addr, m] : live_) {
    if (m.leak_reported) continue;
    spdlog::error("dma debug: device {}: destroyed with {} + len {:#x} ({}, {}) still mapped", device_, m.dma, m.len,
                  m.gpa, to_string(m.dir));
  }
  for (const auto& [gpa, c] : coherent_) {
    if (c.leak_reported) continue;
    spdlog::error("dma debug: device {}: destroyed with coherent buffer {} ({:#x} bytes) still allocated", device_,
                  c.buf.cpu, c.buf.host.size());
  }
}

Error DebugDmaOps::report(DmaMisuse kind, std::string message) {
  std::string text = fmt::format("device {}: {}", device_, message);
  spdlog::error("dma debug: {}: {}", to_string(kind), text);
  reports_.push_back({kind, text});
  return Error(DmaErrc::kMisuse, std::move(text));
}

void DebugDmaOps::erase(MapIt it) {
  auto [b, e] = by_gpa_.equal_range(it->second.gpa.value());
  for (auto g = b; g != e; ++g) {
    if (g->second == it) {
      by_gpa_.erase(g);
      break;
    }
  }
  const Mapping& m = it->second;
  unmapped_.push_back({m.dma, m.len, m.gpa, m.dir});
  if (unmapped_.size() > kUnmappedHistory) unmapped_.pop_front();
  live_.erase(it);
}

DebugDmaOps::MapIt DebugDmaOps::find_containing(DmaAddr addr) {
  // Only mappings starting in [addr - max_len_ + 1, addr] can contain addr.
  const uint64_t lo = addr.value() >= max_len_ ? addr.value() - max_len_ : 0;
  auto it = live_.upper_bound(addr.value());
  while (it != live_.begin()) {
    --it;
    if (it->first < lo) break;
    if (AddrRange<DmaAddr>{it->second.dma, it->second.len}.contains(addr)) return it;
  }
  return live_.end();
}

const DebugDmaOps::Unmapped* DebugDmaOps::find_unmapped(DmaAddr addr) const {
  for (auto it = unmapped_.rbegin(); it != unmapped_.rend(); ++it) {
    if (AddrRange<DmaAddr>{it->dma, it->len}.contains(addr)) return &*it;
  }
  return nullptr;
}

Result<DmaAddr> DebugDmaOps::map(Gpa gpa, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  const DmaAddr dma = VDMA_TRY(inner_.map(gpa, len, dir, attrs));
  std::lock_guard lock(mu_);
  auto it = live_.emplace(dma.value(), Mapping{dma, len, gpa, dir, {}, false});
  by_gpa_.emplace(gpa.value(), it);
  max_len_ = std::max(max_len_, len);
  return dma;
}

Result<void> DebugDmaOps::unmap(DmaAddr addr, uint64_t len, DmaDirection dir, DmaAttrs attrs) {
  {
    std::lock_guard lock(mu_);
    auto [b, e] = live_.equal_range(addr.value());
    MapIt exact = live_.end();
    for (auto it = b; it != e; ++it) {
      if (it->second.len == len && it->second.dir == dir) {
        exact = it;
        break;
      }
    }
    if (exact == live_.end()) {
      if (b != e) {
        const Mapping& m = b->second;
        if (m.len != len) {
          return report(DmaMisuse::kSizeMismatch,
                                   fmt::format("unmap of {} with len {:#x}, but it was mapped with len {:#x} ({}, {})",
                                               addr, len, m.len, m.gpa, to_string(m.dir)));
        }
        return report(DmaMisuse::kDirectionMismatch,
                                 fmt::format("unmap of {} + len {:#x} as {}, but it was mapped {} ({})", addr, len,
                                             to_string(dir), to_string(m.dir), m.gpa));
      }
      if (auto c = find_containing(addr); c != live_.end()) {
        return report(DmaMisuse::kUnknownAddress,
                                 fmt::format("unmap of {} + len {:#x}: not the start of a mapping (it lies inside {} + "
                                             "len {:#x})",
                                             addr, len, c->second.dma, c->second.len));
      }
      if (const Unmapped* u = find_unmapped(addr); u != nullptr && u->dma == addr) {
        return report(DmaMisuse::kDoubleUnmap,
                                 fmt::format("unmap of {} + len {:#x}: already unmapped (was {} + len {:#x}, {})", addr,
                                             len, u->gpa, u->len, to_string(u->dir)));
      }
      return report(DmaMisuse::kUnknownAddress, fmt::format("unmap of {} + len {:#x}: this address was never mapped", addr, len));
    }
    // Forget the mapping before the wrapped ops can hand the address out again.
    erase(exact);
  }
  return inner_.unmap(addr, len, dir, attrs);
}

Result<void> DebugDmaOps::check_sync(DmaAddr addr, uint64_t len, DmaDirection dir, bool for_cpu) {
  const char* op = for_cpu ? "sync_for_cpu" : "sync_for_device";
  MapIt it = find_containing(addr);
  if (it == live_.end()) {
    if (const Unmapped* u = find_unmapped(addr); u != nullptr) {
      return report(DmaMisuse::kDoubleUnmap,
                               fmt::format("{} of {} + len {:#x}: the mapping {} + len {:#x} was already unmapped", op,
                                           addr, len, u->dma, u->len));
    }
    return report(DmaMisuse::kUnknownAddress, fmt::format("{} of {} + len {:#x}: no live mapping there", op, addr, len));
  }
  const Mapping& m = it->second;
  if (!AddrRange<DmaAddr>{m.dma, m.len}.contains(addr, len)) {
    return report(DmaMisuse::kSyncOutsideMapping,
                             fmt::format("{} of {} + len {:#x} leaves the mapping {} + len {:#x}", op, addr, len, m.dma,
                                         m.len));
  }
  if (m.dir != DmaDirection::kBidirectional && m.dir != dir) {
    return report(DmaMisuse::kDirectionMismatch,
                             fmt::format("{} of {} + len {:#x} as {}, but it was mapped {}", op, addr, len,
                                         to_string(dir), to_string(m.dir)));
  }
  return ok();
}

void DebugDmaOps::set_owner(DmaAddr addr, uint64_t len, bool cpu) {
  MapIt it = find_containing(addr);
  if (it == live_.end()) return;  // unmapped meanwhile by another thread: nothing to own
  Mapping& m = it->second;
  const uint64_t lo = m.dma.distance_to(addr);
  if (cpu) {
    add_interval(m.cpu_owned, lo, lo + len);
  } else {
    remove_interval(m.cpu_owned, lo, lo + len);
  }
}

Result<void> DebugDmaOps::sync_for_cpu(DmaAddr addr, uint64_t len, DmaDirection dir) {
  {
    std::lock_guard lock(mu_);
    VDMA_TRY(check_sync(addr, len, dir, true));
  }
  VDMA_TRY(inner_.sync_for_cpu(addr, len, dir));
  std::lock_guard lock(mu_);
  set_owner(addr, len, true);
  return ok();
}

Result<void> DebugDmaOps::sync_for_device(DmaAddr addr, uint64_t len, DmaDirection dir) {
  {
    std::lock_guard lock(mu_);
    VDMA_TRY(check_sync(addr, len, dir, false));
    // The CPU gives the range up before the device may see it.
    set_owner(addr, len, false);
  }
  return inner_.sync_for_device(addr, len, dir);
}

Result<void> DebugDmaOps::cpu_access(Gpa gpa, uint64_t len, CpuAccess access) {
  if (len == 0) return ok();
  std::lock_guard lock(mu_);
  const uint64_t lo = gpa.value() >= max_len_ ? gpa.value() - max_len_ : 0;
  const AddrRange<Gpa> want{gpa, len};
  for (auto it = by_gpa_.lower_bound(lo); it != by_gpa_.end() && it->first <= want.last().value(); ++it) {
    const Mapping& m = it->second->second;
    const AddrRange<Gpa> mine{m.gpa, m.len};
    if (!mine.overlaps(want)) continue;
    const uint64_t first = std::max(gpa.value(), m.gpa.value());
    const uint64_t last = std::min(want.last().value(), mine.last().value());
    const uint64_t off_lo = first - m.gpa.value();
    const uint64_t off_hi = last - m.gpa.value() + 1;
    if (covers(m.cpu_owned, off_lo, off_hi)) continue;
    if (access == CpuAccess::kRead && device_writes(m.dir)) {
      return report(DmaMisuse::kCpuReadWithoutSync,
                               fmt::format("CPU reads {} + len {:#x} while it is mapped {} at {} + len {:#x} without "
                                           "sync_for_cpu: the device may still be writing it",
                                           Gpa(first), last - first + 1, to_string(m.dir), m.dma, m.len));
    }
    if (access == CpuAccess::kWrite) {
      return report(DmaMisuse::kCpuWriteWhileDeviceOwns,
                               fmt::format("CPU writes {} + len {:#x} while it is mapped {} at {} + len {:#x} and owned "
                                           "by the device (sync_for_cpu first, sync_for_device after)",
                                           Gpa(first), last - first + 1, to_string(m.dir), m.dma, m.len));
    }
  }
  return ok();
}

Result<CoherentBuffer> DebugDmaOps::alloc_coherent(uint64_t size) {
  const CoherentBuffer buf = VDMA_TRY(inner_.alloc_coherent(size));
  std::lock_guard lock(mu_);
  coherent_[buf.cpu.value()] = Coherent{buf, false};
  return buf;
}

Result<void> DebugDmaOps::free_coherent(const CoherentBuffer& buf) {
  {
    std::lock_guard lock(mu_);
    auto it = coherent_.find(buf.cpu.value());
    if (it == coherent_.end() || it->second.buf.dma != buf.dma || it->second.buf.host.size() != buf.host.size()) {
      return report(DmaMisuse::kUnknownCoherentFree,
                               fmt::format("free_coherent of {} / {} ({:#x} bytes): not a live coherent buffer of this "
                                           "device",
                                           buf.cpu, buf.dma, buf.host.size()));
    }
    coherent_.erase(it);
  }
  return inner_.free_coherent(buf);
}

Result<void> DebugDmaOps::check_teardown() {
  std::lock_guard lock(mu_);
  size_t leaks = 0;
  std::string first;
  for (auto& [addr, m] : live_) {
    ++leaks;
    if (m.leak_reported) continue;
    m.leak_reported = true;
    Error e = report(DmaMisuse::kLeakAtTeardown,
                     fmt::format("mapping {} + len {:#x} ({}, {}) still live at teardown", m.dma, m.len, m.gpa,
                                 to_string(m.dir)));
    if (first.empty()) first = e.message();
  }
  for (auto& [gpa, c] : coherent_) {
    ++leaks;
    if (c.leak_reported) continue;
    c.leak_reported = true;
    Error e = report(DmaMisuse::kLeakAtTeardown,
                     fmt::format("coherent buffer {} / {} ({:#x} bytes) still allocated at teardown", c.buf.cpu,
                                 c.buf.dma, c.buf.host.size()));
    if (first.empty()) first = e.message();
  }
  if (leaks == 0) return ok();
  return make_error(DmaErrc::kMisuse, "device {}: {} DMA mapping(s)/buffer(s) live at teardown{}{}", device_, leaks,
                    first.empty() ? "" : "; first: ", first);
}

std::vector<DmaMisuseReport> DebugDmaOps::reports() const {
  std::lock_guard lock(mu_);
  return reports_;
}

size_t DebugDmaOps::count(DmaMisuse kind) const {
  std::lock_guard lock(mu_);
  return static_cast<size_t>(
      std::count_if(reports_.begin(), reports_.end(), [&](const DmaMisuseReport& r) { return r.kind == kind; }));
}

void DebugDmaOps::clear_reports() {
  std::lock_guard lock(mu_);
  reports_.clear();
}

size_t DebugDmaOps::live_mappings() const {
  std::lock_guard lock(mu_);
  return live_.size();
}

size_t DebugDmaOps::live_coherent() const {
  std::lock_guard lock(mu_);
  return coherent_.size();
}

}  // namespace vdma
