#include "vdma/mem/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace vdma {

namespace {
constexpr uint64_t kPageSize = 4096;
}

GuestRegion::GuestRegion(Gpa base, uint64_t size, MemAttr attr, std::string name, int fd, std::byte* host)
    : base_(base), size_(size), attr_(attr), name_(std::move(name)), fd_(fd), host_(host) {}

GuestRegion::GuestRegion(GuestRegion&& o) noexcept
    : base_(o.base_), size_(o.size_), attr_(o.attr_), name_(std::move(o.name_)), fd_(o.fd_), host_(o.host_) {
  o.fd_ = -1;
  o.host_ = nullptr;
}

GuestRegion& GuestRegion::operator=(GuestRegion&& o) noexcept {
  if (this != &o) {
    this->~GuestRegion();
    new (this) GuestRegion(std::move(o));
  }
  return *this;
}

GuestRegion::~GuestRegion() {
  if (host_ != nullptr) ::munmap(host_, size_);
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<GuestMemory>> GuestMemory::create(std::vector<RegionSpec> specs) {
  std::sort(specs.begin(), specs.end(), [](const RegionSpec& a, const RegionSpec& b) { return a.base < b.base; });
  for (size_t i = 0; i < specs.size(); ++i) {
    const RegionSpec& s = specs[i];
    if (s.size == 0 || s.size % kPageSize != 0 || !s.base.is_aligned(kPageSize)) {
      return make_error(MemErrc::kInvalidRegion, "region '{}' at {} size {:#x}: base and size must be non-zero multiples of 4 KiB",
                        s.name, s.base, s.size);
    }
    if (!fits(s.base, s.size)) {
      return make_error(MemErrc::kInvalidRegion, "region '{}' at {} size {:#x} wraps past 2^64", s.name, s.base, s.size);
    }
    if (i > 0) {
      const RegionSpec& p = specs[i - 1];
      if (AddrRange<Gpa>{p.base, p.size}.overlaps({s.base, s.size})) {
        return make_error(MemErrc::kOverlap, "region '{}' [{}, +{:#x}) overlaps region '{}' [{}, +{:#x})", s.name, s.base,
                          s.size, p.name, p.base, p.size);
      }
    }
  }
  std::vector<GuestRegion> regions;
  regions.reserve(specs.size());
  for (RegionSpec& s : specs) {
    int fd = ::memfd_create(("vdma-" + s.name).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return system_error("memfd_create", errno);
    if (::ftruncate(fd, static_cast<off_t>(s.size)) != 0) {
      int err = errno;
      ::close(fd);
      return system_error(fmt::format("ftruncate region '{}' to {:#x}", s.name, s.size), err);
    }
    // Sealed at its size, as QEMU's memory-backend-memfd does: a back-end
    // that maps the region may rely on it never shrinking (no SIGBUS).
    if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
      int err = errno;
      ::close(fd);
      return system_error(fmt::format("sealing region '{}'", s.name), err);
    }
    void* p = ::mmap(nullptr, s.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return system_error(fmt::format("mmap region '{}' size {:#x}", s.name, s.size), err);
    }
    regions.push_back(GuestRegion(s.base, s.size, s.attr, std::move(s.name), fd, static_cast<std::byte*>(p)));
  }
  return std::unique_ptr<GuestMemory>(new GuestMemory(std::move(regions)));
}

const GuestRegion* GuestMemory::find_region(Gpa gpa) const noexcept {
  // First region whose base is > gpa; the candidate is the one before it.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](Gpa g, const GuestRegion& r) { return g < r.base(); });
  if (it == regions_.begin()) return nullptr;
  --it;
  return it->range().contains(gpa) ? &*it : nullptr;
}

template <class Fn>
Result<void> GuestMemory::for_each_piece(Gpa gpa, uint64_t len, Fn&& fn) const {
  if (!fits(gpa, len)) {
    return make_error(BaseErrc::kOverflow, "{} + len {:#x} wraps past 2^64", gpa, len);
  }
  // Validate the whole range before touching anything, so errors write nothing.
  uint64_t done = 0;
  while (done < len) {
    Gpa cur = gpa.unchecked_add(done);
    const GuestRegion* r = find_region(cur);
    if (r == nullptr) {
      return make_error(MemErrc::kNotMapped, "{} (in range {} + len {:#x}) is not in any guest memory region", cur, gpa, len);
    }
    uint64_t off = r->base().distance_to(cur);
    done += std::min(len - done, r->size() - off);
  }
  done = 0;
  while (done < len) {
    Gpa cur = gpa.unchecked_add(done);
    const GuestRegion* r = find_region(cur);
    uint64_t off = r->base().distance_to(cur);
    uint64_t chunk = std::min(len - done, r->size() - off);
    fn(*r, off, done, chunk);
    done += chunk;
  }
  return ok();
}

Result<std::span<std::byte>> GuestMemory::span(Gpa gpa, uint64_t len) const {
  if (!fits(gpa, len)) {
    return make_error(BaseErrc::kOverflow, "{} + len {:#x} wraps past 2^64", gpa, len);
  }
  const GuestRegion* r = find_region(gpa);
  if (r == nullptr || !r->range().contains(gpa, len)) {
    return make_error(MemErrc::kNotMapped, "{} + len {:#x} is not inside one guest memory region", gpa, len);
  }
  return r->host().subspan(r->base().distance_to(gpa), len);
}

Result<void> GuestMemory::read(Gpa gpa, std::span<std::byte> out) const {
  return for_each_piece(gpa, out.size(), [&](const GuestRegion& r, uint64_t off, uint64_t done, uint64_t n) {
    std::memcpy(out.data() + done, r.host().data() + off, n);
  });
}

Result<void> GuestMemory::write(Gpa gpa, std::span<const std::byte> in) const {
  return for_each_piece(gpa, in.size(), [&](const GuestRegion& r, uint64_t off, uint64_t done, uint64_t n) {
    std::memcpy(r.host().data() + off, in.data() + done, n);
  });
}

Result<void> GuestMemory::fill(Gpa gpa, uint64_t len, std::byte value) const {
  return for_each_piece(gpa, len, [&](const GuestRegion& r, uint64_t off, uint64_t, uint64_t n) {
    std::memset(r.host().data() + off, static_cast<int>(value), n);
  });
}

bool GuestMemory::contains(Gpa gpa, uint64_t len) const noexcept {
  return for_each_piece(gpa, len, [](auto&&...) {}).has_value();
}

bool GuestMemory::is_all(Gpa gpa, uint64_t len, MemAttr attr) const noexcept {
  if (!fits(gpa, len)) return false;
  uint64_t done = 0;
  while (done < len) {
    const GuestRegion* r = find_region(gpa.unchecked_add(done));
    if (r == nullptr || r->attr() != attr) return false;
    done += std::min(len - done, r->size() - r->base().distance_to(gpa.unchecked_add(done)));
  }
  return true;
}

}  // namespace vdma
