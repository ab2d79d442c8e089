#include "vdma/vhost_user/backend_memory.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include <spdlog/spdlog.h>

namespace vdma::vhost_user {

namespace {

uint64_t page_size() noexcept {
  static const uint64_t size = [] {
    const long v = ::sysconf(_SC_PAGESIZE);
    return v > 0 ? static_cast<uint64_t>(v) : uint64_t{4096};
  }();
  return size;
}

// The size of the object behind a region fd: a regular file's (memfd,
// tmpfs, hugetlbfs) or a block device's. Anything else is refused: a char
// device or a pipe has no size to check, so nothing would stop a SIGBUS.
Result<uint64_t> region_fd_size(const MemoryRegion& spec, int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return system_error("fstat of a memory region fd", errno);
  if (S_ISREG(st.st_mode)) return st.st_size < 0 ? uint64_t{0} : static_cast<uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode)) {
    uint64_t bytes = 0;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) {
      return system_error(fmt::format("region {}: BLKGETSIZE64 of its block device fd", spec.guest_addr),
                                     errno);
    }
    return bytes;
  }
  const char* kind = S_ISCHR(st.st_mode)    ? "a character device"
                     : S_ISFIFO(st.st_mode) ? "a pipe"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                     : S_ISDIR(st.st_mode)  ? "a directory"
                                            : "not a file";
  return make_error(MemErrc::kInvalidRegion,
                    "region {}: its fd is {} (mode 0{:o}); only a regular file (memfd, tmpfs, hugetlbfs) or a block "
                    "device can back guest memory",
                    spec.guest_addr, kind, static_cast<unsigned>(st.st_mode));
}

// A memfd that can still shrink could be truncated by the front-end under
// our mapping (SIGBUS on the next access). Seal it when we may. QEMU's
// memory-backend-memfd seals by default (seal=on: F_SEAL_SHRINK included);
// other files cannot be sealed, and the header documents the remaining risk.
void seal_against_shrinking(const MemoryRegion& spec, int fd) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals >= 0 && (seals & F_SEAL_SHRINK) != 0) return;
  if (seals >= 0 && (seals & F_SEAL_SEAL) == 0 && ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0) return;
  spdlog::warn("vhost-user: memory region {} + 0x{:x}: its fd cannot be sealed against shrinking ({}); a front-end "
               "that truncates it can crash this back-end with SIGBUS",
               spec.guest_addr, spec.size,
               seals < 0 ? "not a memfd" : "a memfd created without MFD_ALLOW_SEALING, or sealed without F_SEAL_SHRINK");
}

}  // namespace

// --- BackendRegion -------------------------------------------------------------

Result<BackendRegion> BackendRegion::map(const MemoryRegion& spec, int fd) {
  // The codec guarantees size > 0 and that no address + size wraps; check the
  // sum we are about to rely on anyway, it costs nothing.
  const uint64_t guest_end_offset = spec.mmap_offset + spec.size;
  if (spec.size == 0 || guest_end_offset < spec.mmap_offset) {
    return make_error(MemErrc::kInvalidRegion, "region {}: size 0x{:x} at mmap offset 0x{:x} wraps", spec.guest_addr,
                      spec.size, spec.mmap_offset);
  }
  // Touching a shared mapping past the end of its object raises SIGBUS, so a
  // front-end must not be able to hand us anything shorter than the region.
  const uint64_t fd_size = VDMA_TRY(region_fd_size(spec, fd));
  if (fd_size < guest_end_offset) {
    return make_error(MemErrc::kInvalidRegion, "region {}: mmap offset 0x{:x} + size 0x{:x} beyond the fd's 0x{:x} bytes",
                      spec.guest_addr, spec.mmap_offset, spec.size, fd_size);
  }
  seal_against_shrinking(spec, fd);
  const uint64_t aligned_offset = align_down(spec.mmap_offset, page_size());
  const uint64_t lead = spec.mmap_offset - aligned_offset;
  const uint64_t map_len = spec.size + lead;
  if (map_len < spec.size || map_len > SIZE_MAX || aligned_offset > static_cast<uint64_t>(INT64_MAX)) {
    return make_error(MemErrc::kInvalidRegion, "region {}: size 0x{:x} cannot be mapped", spec.guest_addr, spec.size);
  }
  void* base = ::mmap(nullptr, static_cast<size_t>(map_len), PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                      static_cast<off_t>(aligned_offset));
  if (base == MAP_FAILED) return system_error("mmap of a memory region", errno);
  return BackendRegion(spec, base, static_cast<size_t>(map_len), static_cast<std::byte*>(base) + lead);
}

BackendRegion::BackendRegion(BackendRegion&& o) noexcept
    : spec_(o.spec_),
      map_base_(std::exchange(o.map_base_, nullptr)),
      map_len_(std::exchange(o.map_len_, 0)),
      host_(std::exchange(o.host_, nullptr)) {}

BackendRegion& BackendRegion::operator=(BackendRegion&& o) noexcept {
  if (this != &o) {
    unmap();
    spec_ = o.spec_;
    map_base_ = std::exchange(o.map_base_, nullptr);
    map_len_ = std::exchange(o.map_len_, 0);
    host_ = std::exchange(o.host_, nullptr);
  }
  return *this;
}

BackendRegion::~BackendRegion() { unmap(); }

void BackendRegion::unmap() noexcept {
  if (map_base_ != nullptr) ::munmap(map_base_, map_len_);
  map_base_ = nullptr;
  map_len_ = 0;
  host_ = nullptr;
}

// --- BackendMemoryTable --------------------------------------------------------

BackendMemoryTable::BackendMemoryTable(uint32_t max_regions) : max_regions_(max_regions) {
  VDMA_CHECK(max_regions >= 1, "BackendMemoryTable needs room for at least one region");
}

Result<void> BackendMemoryTable::check_no_overlap(const MemoryRegion& r, std::span<const BackendRegion> others) {
  for (const BackendRegion& o : others) {
    if (r.guest_range().overlaps(o.spec().guest_range())) {
      return make_error(MemErrc::kOverlap, "region {} + 0x{:x} overlaps region {} + 0x{:x} in guest space",
                        r.guest_addr, r.size, o.spec().guest_addr, o.size());
    }
    if (r.user_range().overlaps(o.spec().user_range())) {
      return make_error(MemErrc::kOverlap, "region {} + 0x{:x} overlaps region {} + 0x{:x} in front-end space",
                        r.user_addr, r.size, o.spec().user_addr, o.size());
    }
  }
  return ok();
}

void BackendMemoryTable::sort() noexcept {
  std::sort(regions_.begin(), regions_.end(),
            [](const BackendRegion& a, const BackendRegion& b) { return a.spec().guest_addr < b.spec().guest_addr; });
}

Result<void> BackendMemoryTable::replace(std::span<const MemoryRegion> regions, std::span<const int> fds) {
  if (regions.size() != fds.size()) {
    return make_error(BaseErrc::kInvalidArgument, "{} regions but {} fds", regions.size(), fds.size());
  }
  if (regions.size() > max_regions_) {
    return make_error(BaseErrc::kInvalidArgument, "{} regions, the table holds {}", regions.size(), max_regions_);
  }
  std::vector<BackendRegion> next;
  next.reserve(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    VDMA_TRY(check_no_overlap(regions[i], next));
    next.push_back(VDMA_TRY(BackendRegion::map(regions[i], fds[i])));
  }
  regions_ = std::move(next);
  sort();
  return ok();
}

Result<void> BackendMemoryTable::add(const MemoryRegion& region, int fd) {
  if (regions_.size() >= max_regions_) {
    return make_error(MemErrc::kNoSpace, "region {}: all {} memory slots are in use", region.guest_addr,
                      max_regions_);
  }
  VDMA_TRY(check_no_overlap(region, regions_));
  BackendRegion mapped = VDMA_TRY(BackendRegion::map(region, fd));
  regions_.push_back(std::move(mapped));
  sort();
  return ok();
}

Result<void> BackendMemoryTable::remove(const MemoryRegion& region) {
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    const MemoryRegion& s = it->spec();
    if (s.guest_addr == region.guest_addr && s.user_addr == region.user_addr && s.size == region.size) {
      regions_.erase(it);
      return ok();
    }
  }
  return make_error(MemErrc::kNotMapped, "no region {} + 0x{:x} at {} to remove", region.guest_addr, region.size,
                    region.user_addr);
}

const BackendRegion* BackendMemoryTable::find_user(FrontVa addr) const noexcept {
  // A handful of regions (at most max_regions): a linear scan is as fast as
  // anything and needs no second index.
  for (const BackendRegion& r : regions_) {
    if (r.spec().user_range().contains(addr)) return &r;
  }
  return nullptr;
}

const BackendRegion* BackendMemoryTable::find_guest(DmaAddr addr) const noexcept {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](DmaAddr a, const BackendRegion& r) { return a < r.spec().guest_addr; });
  if (it == regions_.begin()) return nullptr;
  --it;
  return it->spec().guest_range().contains(addr) ? &*it : nullptr;
}

Result<void> BackendMemoryTable::check_user_range(FrontVa addr, uint64_t len) const {
  if (len == 0) return make_error(BaseErrc::kInvalidArgument, "empty front-end range at {}", addr);
  if (!fits(addr, len)) return make_error(BaseErrc::kOverflow, "{} + 0x{:x} wraps past 2^64", addr, len);
  uint64_t done = 0;
  // Each step consumes at least one byte of a region, so the loop ends after
  // at most regions_.size() iterations plus one.
  while (done < len) {
    const FrontVa at = addr.unchecked_add(done);
    const BackendRegion* r = find_user(at);
    if (r == nullptr) {
      return make_error(MemErrc::kNotMapped, "{} + 0x{:x}: {} is outside the memory table", addr, len, at);
    }
    done += std::min(len - done, r->size() - r->spec().user_addr.distance_to(at));
  }
  return ok();
}

Result<std::byte*> BackendMemoryTable::user_to_host(FrontVa addr, uint64_t len) const {
  if (!fits(addr, len)) return make_error(BaseErrc::kOverflow, "{} + 0x{:x} wraps past 2^64", addr, len);
  const BackendRegion* r = find_user(addr);
  if (r == nullptr || !r->spec().user_range().contains(addr, len)) {
    return make_error(MemErrc::kNotMapped, "{} + 0x{:x} is not inside one region of the memory table", addr, len);
  }
  return r->host() + r->spec().user_addr.distance_to(addr);
}

Result<DmaAddr> BackendMemoryTable::user_to_guest(FrontVa addr, uint64_t len) const {
  if (!fits(addr, len)) return make_error(BaseErrc::kOverflow, "{} + 0x{:x} wraps past 2^64", addr, len);
  const BackendRegion* r = find_user(addr);
  if (r == nullptr || !r->spec().user_range().contains(addr, len)) {
    return make_error(MemErrc::kNotMapped, "{} + 0x{:x} is not inside one region of the memory table", addr, len);
  }
  return r->spec().guest_addr.unchecked_add(r->spec().user_addr.distance_to(addr));
}

Result<void> BackendMemoryTable::translate(DmaAddr addr, uint64_t len, Access /*access*/,
                                           std::vector<Fragment>& out) const {
  if (!fits(addr, len)) return make_error(BaseErrc::kOverflow, "{} + 0x{:x} wraps past 2^64", addr, len);
  const size_t first = out.size();
  uint64_t done = 0;
  do {
    const DmaAddr at = addr.unchecked_add(done);
    const BackendRegion* r = find_guest(at);
    if (r == nullptr) {
      out.resize(first);
      return make_error(MemErrc::kNotMapped, "{} + 0x{:x}: {} is outside the memory table", addr, len, at);
    }
    const uint64_t off = r->spec().guest_addr.distance_to(at);
    const uint64_t piece = std::min(len - done, r->size() - off);
    if (piece > 0) out.push_back(Fragment{r->host() + off, piece});
    done += piece;
  } while (done < len);
  return ok();
}

}  // namespace vdma::vhost_user
