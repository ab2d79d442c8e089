// libFuzzer target: DeviceIotlb (and one IotlbQueueView) driven by operation
// sequences from arbitrary bytes, checked after every operation against a
// byte-granular reference model of a 256-byte IOVA window.
//
// Input layout:
//   byte 0      bits 0-5: max_entries - 1 (1..64, so the search tree has one
//               or two levels); bit 6: the window is the top of the address
//               space [2^64 - 256, 2^64), else [0x1000, 0x1100)
//   then ops    one op byte (kind = op % 8) and up to 5 argument bytes:
//     0,1 insert          off, len, perms, host offset, uaddr page
//     2   invalidate      off, len
//     3   lookup          off, len (0 allowed), access
//     4   translate       off, len (0 allowed), access
//     5   translate_ring  off, len, access (recorded ring range of the view)
//     6   invalidate_all  (only when the op byte is 6 mod 16; else a lookup
//                          that wraps past 2^64 in the top window)
//     7   insert or invalidate reaching beyond the window's end (wraps at the top)
//
// The model keeps, per byte, the id of the insert that maps it (0: none);
// an insert's translation is linear, so a byte's uaddr and host follow from
// its id. Entries are the maximal runs of one id. Eviction is modelled as
// specified: the run of the smallest id (oldest insert), lowest address
// first, never the id being inserted.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "vdma/iommu/device_iotlb.h"
#include "vdma/iommu/ring_cache.h"

namespace {

using namespace vdma;

constexpr uint64_t kWindow = 256;
constexpr uint64_t kHostSize = 1024;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "iotlb_fuzz: model mismatch: %s\n", what.c_str());
  std::abort();
}
void expect(bool ok, const char* what) {
  if (!ok) fail(what);
}

struct Insert {
  uint64_t first = 0;  // iova of the insert's first byte
  uint64_t uaddr = 0;
  uint64_t host_off = 0;
  Access perms = Access::kNone;
};

struct Model {
  uint64_t base = 0;
  size_t max_entries = 1;
  std::array<uint32_t, kWindow> id{};  // per byte: the insert mapping it, 0 = none
  std::vector<Insert> inserts{Insert{}};  // inserts[id]
  std::vector<std::pair<uint64_t, uint64_t>> rings;  // recorded [first, last] offsets
  uint64_t epoch_bumps = 0;
  uint64_t hits = 0, misses = 0, denials = 0, evictions = 0;

  struct Run {
    uint64_t off = 0;
    uint64_t len = 0;
    uint32_t id = 0;
  };
  std::vector<Run> runs() const {
    std::vector<Run> out;
    for (uint64_t i = 0; i < kWindow; ++i) {
      if (id[i] == 0) continue;
      if (!out.empty() && out.back().id == id[i] && out.back().off + out.back().len == i) {
        ++out.back().len;
      } else {
        out.push_back(Run{i, 1, id[i]});
      }
    }
    return out;
  }
  void evict(uint32_t keep) {
    for (std::vector<Run> r = runs(); r.size() > max_entries; r = runs()) {
      const Run* victim = nullptr;
      for (const Run& x : r) {
        if (x.id != keep && (victim == nullptr || x.id < victim->id)) victim = &x;
      }
      for (uint64_t i = victim->off; i < victim->off + victim->len; ++i) id[i] = 0;
      ++evictions;
    }
  }
  bool overlaps_ring(uint64_t first, uint64_t last) const {
    for (const auto& [a, b] : rings) {
      if (a <= last && first <= b) return true;
    }
    return false;
  }
};

std::byte* host_buf() {
  static std::vector<std::byte> buf(kHostSize);
  return buf.data();
}

Iova at(const Model& m, uint64_t off) { return Iova(m.base + off); }

// The expected translation of window byte `off` (mapped).
std::byte* host_of(const Model& m, uint64_t off) {
  const Insert& in = m.inserts[m.id[off]];
  return host_buf() + in.host_off + (m.base + off - in.first);
}
uint64_t uaddr_of(const Model& m, uint64_t off) {
  const Insert& in = m.inserts[m.id[off]];
  return in.uaddr + (m.base + off - in.first);
}

void check_entries(const DeviceIotlb& iotlb, const Model& m) {
  const std::vector<IotlbFragment> got = iotlb.entries();
  const std::vector<Model::Run> want = m.runs();
  expect(got.size() == want.size(), "entry count");
  expect(iotlb.size() == want.size(), "size()");
  for (size_t i = 0; i < want.size(); ++i) {
    const Model::Run& r = want[i];
    const IotlbFragment& g = got[i];
    expect(g.iova == at(m, r.off) && g.len == r.len, "entry bounds");
    expect(g.uaddr == FrontVa(uaddr_of(m, r.off)) && g.host == host_of(m, r.off), "entry translation");
    expect(g.perms == m.inserts[r.id].perms, "entry perms");
  }
}

// Lookup over [off, off+len) inside the window.
void check_lookup(const DeviceIotlb& iotlb, ReaderHandle& reader, Model& m, uint64_t off, uint64_t len,
                  Access access, IotlbLookup& found) {
  ReadSection section(reader);
  auto r = iotlb.lookup(section, at(m, off), len, access, found);
  expect(r.has_value(), "lookup error");
  IotlbLookup want;
  for (uint64_t i = off; i < off + len;) {
    // A run of one id is one entry (or one gap): the pieces of a cut entry
    // are never adjacent.
    uint64_t j = i + 1;
    while (j < off + len && m.id[j] == m.id[i]) ++j;
    if (m.id[i] == 0) {
      want.misses.push_back(AddrRange<Iova>{at(m, i), j - i});
    } else if (permits(m.inserts[m.id[i]].perms, access)) {
      want.fragments.push_back(
          IotlbFragment{at(m, i), j - i, FrontVa(uaddr_of(m, i)), host_of(m, i), m.inserts[m.id[i]].perms});
    } else {
      want.permission_failures.push_back(AddrRange<Iova>{at(m, i), j - i});
    }
    i = j;
  }
  expect(found.fragments == want.fragments, "lookup fragments");
  expect(found.misses == want.misses, "lookup misses");
  expect(found.permission_failures == want.permission_failures, "lookup permission failures");
  expect(*r == want.complete(), "lookup result");
  if (len == 0) return;
  if (!want.misses.empty()) {
    ++m.misses;
  } else if (!want.permission_failures.empty()) {
    ++m.denials;
  } else {
    ++m.hits;
  }
}

void check_translate(const DeviceMemory& dm, Model& m, uint64_t off, uint64_t len, Access access) {
  std::vector<Fragment> out{Fragment{host_buf(), 1}};  // earlier content must survive
  auto r = dm.translate(DmaAddr(m.base + off), len, access, out);
  // Expected: the first failing byte in address order, or merged fragments.
  std::vector<Fragment> want{Fragment{host_buf(), 1}};
  const uint64_t n = len == 0 ? 1 : len;
  for (uint64_t i = off; i < off + n; ++i) {
    if (i >= kWindow || m.id[i] == 0) {
      expect(!r && r.error().is(MemErrc::kNotMapped), "translate: expected kNotMapped");
      expect(r.error().message().find(fmt::format("{} is not mapped", at(m, i))) != std::string::npos,
             "translate: kNotMapped names the first missing iova");
      expect(out.size() == 1, "translate: appended on error");
      ++m.misses;
      return;
    }
    if (!permits(m.inserts[m.id[i]].perms, access)) {
      expect(!r && r.error().is(MemErrc::kPermissionDenied), "translate: expected kPermissionDenied");
      expect(out.size() == 1, "translate: appended on error");
      ++m.denials;
      return;
    }
    if (len == 0) break;
    std::byte* h = host_of(m, i);
    if (want.size() > 1 && want.back().host + want.back().len == h) {
      ++want.back().len;
    } else {
      want.push_back(Fragment{h, 1});
    }
  }
  expect(r.has_value(), "translate: unexpected error");
  expect(out.size() == want.size(), "translate: fragment count");
  for (size_t i = 0; i < want.size(); ++i) {
    expect(out[i].host == want[i].host && out[i].len == want[i].len, "translate: fragment");
  }
  ++m.hits;
}

Access access_from(uint8_t b) { return static_cast<Access>(1 + b % 3); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Model m;
  m.max_entries = 1 + (data[0] & 63);
  const bool top = (data[0] & 64) != 0;
  m.base = top ? 0 - kWindow : 0x1000;

  DeviceIotlb iotlb({.max_entries = m.max_entries, .max_readers = 1});
  ReaderHandle reader = *iotlb.register_reader();
  IotlbLookup found;
  {
    IotlbQueueView view(iotlb);
    size_t pos = 1;
    auto arg = [&]() -> uint8_t { return pos < size ? data[pos++] : 0; };
    while (pos < size) {
      const uint8_t op = data[pos++];
      const uint64_t off = arg() % kWindow;
      switch (op % 8) {
        case 0:
        case 1:
        case 7: {
          const bool invalidate = op % 8 == 7 && (op & 8) != 0;
          const uint64_t room = kWindow - off;
          // op 7: the range runs past the window's end (wraps past 2^64 at the top).
          const uint64_t len = op % 8 == 7 ? room + 1 + arg() % 16 : 1 + arg() % room;
          const Access perms = access_from(arg());
          const uint64_t host_off = arg() % (kHostSize - kWindow - 16);
          const uint64_t uaddr = uint64_t{arg()} << 20;
          const bool wraps = op % 8 == 7 && top;
          if (invalidate) {
            auto r = iotlb.invalidate(at(m, off), len);
            if (wraps) {
              expect(!r && r.error().is(BaseErrc::kOverflow), "invalidate: expected kOverflow");
              break;
            }
            expect(r.has_value(), "invalidate beyond window failed");
            for (uint64_t i = off; i < kWindow; ++i) m.id[i] = 0;
            m.evict(0);
            if (m.overlaps_ring(off, off + len - 1)) ++m.epoch_bumps;
            break;
          }
          auto r = iotlb.insert(at(m, off), len, FrontVa(uaddr), host_buf() + host_off, perms);
          if (wraps) {
            expect(!r && r.error().is(BaseErrc::kOverflow), "insert: expected kOverflow");
            break;
          }
          expect(r.has_value(), "insert failed");
          const uint32_t new_id = static_cast<uint32_t>(m.inserts.size());
          m.inserts.push_back(Insert{m.base + off, uaddr, host_off, perms});
          if (op % 8 == 7) {
            // Only the window part is modelled; bytes beyond it are removed
            // again so the window stays the whole mapped space.
            for (uint64_t i = off; i < kWindow; ++i) m.id[i] = new_id;
            m.evict(new_id);
            if (m.overlaps_ring(off, off + len - 1)) ++m.epoch_bumps;
            expect(iotlb.invalidate(at(m, kWindow), len - (kWindow - off)).has_value(), "cleanup invalidate");
            // The cleanup cuts the new entry: no extra entry, no eviction.
            break;
          }
          for (uint64_t i = off; i < off + len; ++i) m.id[i] = new_id;
          m.evict(new_id);
          if (m.overlaps_ring(off, off + len - 1)) ++m.epoch_bumps;
          break;
        }
        case 2: {
          const uint64_t len = 1 + arg() % (kWindow - off);
          expect(iotlb.invalidate(at(m, off), len).has_value(), "invalidate failed");
          for (uint64_t i = off; i < off + len; ++i) m.id[i] = 0;
          m.evict(0);
          if (m.overlaps_ring(off, off + len - 1)) ++m.epoch_bumps;
          break;
        }
        case 3: {
          const uint64_t len = arg() % (kWindow - off + 1);
          check_lookup(iotlb, reader, m, off, len, access_from(arg()), found);
          break;
        }
        case 4: {
          const uint64_t len = arg() % (kWindow - off + 1);
          const Access access = access_from(arg());
          if ((op & 8) != 0) {
            ReadSection section(reader);  // the in-section path
            check_translate(iotlb, m, off, len, access);
          } else {
            check_translate(view, m, off, len, access);
          }
          break;
        }
        case 5: {
          const uint64_t len = 1 + arg() % (kWindow - off);
          const Access access = access_from(arg());
          const std::pair<uint64_t, uint64_t> range{off, off + len - 1};
          const bool known = std::find(m.rings.begin(), m.rings.end(), range) != m.rings.end();
          if (!known && m.rings.size() == IotlbQueueView::kMaxRanges) break;  // merging is not modelled
          auto span = view.translate_ring(DmaAddr(m.base + off), len, access);
          if (!known) m.rings.push_back(range);
          bool contiguous = true;
          for (uint64_t i = off; i < off + len && contiguous; ++i) {
            contiguous = m.id[i] != 0 && permits(m.inserts[m.id[i]].perms, access) &&
                         (i == off || host_of(m, i) == host_of(m, i - 1) + 1);
          }
          if (contiguous) {
            expect(span.has_value() && span->data() == host_of(m, off) && span->size() == len, "translate_ring span");
            ++m.hits;
          } else {
            expect(!span.has_value(), "translate_ring: expected an error");
            // A miss/denial is counted by the inner translate; a split span is a hit.
            bool failed = false;
            for (uint64_t i = off; i < off + len && !failed; ++i) {
              if (m.id[i] == 0) {
                ++m.misses;
                failed = true;
              } else if (!permits(m.inserts[m.id[i]].perms, access)) {
                ++m.denials;
                failed = true;
              }
            }
            if (!failed) {
              expect(span.error().is(MemErrc::kTooManyFragments), "translate_ring: expected kTooManyFragments");
              ++m.hits;
            }
          }
          break;
        }
        case 6: {
          if (op % 16 == 6) {
            iotlb.invalidate_all();
            m.id.fill(0);
            ++m.epoch_bumps;
          } else if (top) {
            const uint64_t len = kWindow - off + 1 + arg();
            auto r = iotlb.lookup(ReadSection(reader), at(m, off), len, Access::kRead, found);
            expect(!r && r.error().is(BaseErrc::kOverflow) && found.fragments.empty(), "lookup: expected kOverflow");
          }
          break;
        }
      }
      check_entries(iotlb, m);
      expect(view.epoch() == m.epoch_bumps, "view epoch");
      const IotlbStats s = iotlb.stats();
      expect(s.hits == m.hits && s.misses == m.misses && s.permission_failures == m.denials, "stats");
      expect(s.evictions == m.evictions, "evictions");
    }
  }
  return 0;
}
