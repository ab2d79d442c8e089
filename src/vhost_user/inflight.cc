#include "vdma/vhost_user/inflight.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "vdma/base/check.h"
#include "vdma/vhost_user/errors.h"
#include "vdma/virtio/le.h"

namespace vdma::vhost_user {

namespace {

uint64_t page_size() noexcept { return static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)); }

template <class T>
void put(std::byte* p, T v) noexcept {
  const T le = to_le(v);
  std::memcpy(p, &le, sizeof le);
}

// The packed algorithm takes descriptor states from a free list threaded
// through desc[].next; a fresh region starts with every entry free and the
// used wrap counters at 1 (virtio 1.2 §2.8.1), as DPDK initialises it.
void init_packed_region(std::byte* region, uint16_t queue_size) noexcept {
  put<uint8_t>(region + inflight::kPackedUsedWrapOff, 1);
  put<uint8_t>(region + inflight::kPackedOldUsedWrapOff, 1);
  for (uint32_t i = 0; i < queue_size; ++i) {
    std::byte* d = region + inflight::kPackedHeaderSize + size_t{i} * inflight::kPackedDescSize;
    put<uint16_t>(d + inflight::kPackedDescNextOff, static_cast<uint16_t>(i + 1));
  }
}

// The SET_INFLIGHT_FD fd must not be able to shrink under our mapping: a
// memfd sealed with F_SEAL_SHRINK (ours from GET_INFLIGHT_FD are), or one we
// can seal now. Anything else could be truncated by the front-end, and the
// next access to the area would raise SIGBUS.
Result<void> seal_inflight_fd(int fd) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    return make_error(VhostUserErrc::kBadField,
                      "SET_INFLIGHT_FD: the fd is not a memfd, so it cannot be sealed against truncation ({})",
                      std::strerror(errno));
  }
  if ((seals & F_SEAL_SHRINK) != 0) return ok();
  if ((seals & F_SEAL_SEAL) != 0 || ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
    return make_error(VhostUserErrc::kBadField,
                      "SET_INFLIGHT_FD: the memfd is not sealed against shrinking and cannot be sealed (seals 0x{:x})",
                      static_cast<unsigned>(seals));
  }
  return ok();
}

}  // namespace

InflightMemory::InflightMemory(UniqueFd fd, const InflightArea& area, RingFormat format, void* map_base,
                               size_t map_len, std::byte* base) noexcept
    : fd_(std::move(fd)), area_(area), format_(format), map_base_(map_base), map_len_(map_len), base_(base) {}

InflightMemory::InflightMemory(InflightMemory&& o) noexcept
    : fd_(std::move(o.fd_)),
      area_(o.area_),
      format_(o.format_),
      map_base_(std::exchange(o.map_base_, nullptr)),
      map_len_(std::exchange(o.map_len_, 0)),
      base_(std::exchange(o.base_, nullptr)) {}

InflightMemory& InflightMemory::operator=(InflightMemory&& o) noexcept {
  if (this != &o) {
    if (map_base_ != nullptr) ::munmap(map_base_, map_len_);
    fd_ = std::move(o.fd_);
    area_ = o.area_;
    format_ = o.format_;
    map_base_ = std::exchange(o.map_base_, nullptr);
    map_len_ = std::exchange(o.map_len_, 0);
    base_ = std::exchange(o.base_, nullptr);
  }
  return *this;
}

InflightMemory::~InflightMemory() {
  if (map_base_ != nullptr) ::munmap(map_base_, map_len_);
}

std::byte* InflightMemory::queue_region(uint32_t index) const {
  VDMA_CHECK(index < area_.num_queues, "inflight queue region index out of range");
  return base_ + index * inflight_queue_region_size(format_, area_.queue_size);
}

bool InflightMemory::same_file(int fd) const noexcept {
  struct stat a{};
  struct stat b{};
  if (!fd_.valid() || ::fstat(fd_.get(), &a) != 0 || ::fstat(fd, &b) != 0) return false;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

void InflightMemory::discard_contents() noexcept {
  if (!fd_.valid() || map_base_ == nullptr) return;
  // Punching a hole is allowed by the seals we set (only F_SEAL_WRITE forbids
  // it) and frees the shared memory even while the front-end keeps its fd.
  // Rounded up to a page: a partial last page would only be zeroed, not freed.
  const uint64_t page = page_size();
  const uint64_t end = (area_.mmap_offset + area_.mmap_size + page - 1) & ~(page - 1);
  [[maybe_unused]] const int r =
      ::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(end));
}

Result<InflightMemory> InflightMemory::allocate(RingFormat format, uint16_t num_queues, uint16_t queue_size) {
  const uint64_t size = uint64_t{num_queues} * inflight_queue_region_size(format, queue_size);
  UniqueFd fd(::memfd_create("vdma-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return system_error("memfd_create for the inflight area", errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return system_error(fmt::format("ftruncate of the inflight area to {} bytes", size), errno);
  }
  // The front-end gets this fd: sealed, it cannot truncate the area under
  // our mapping (SIGBUS) nor change its size at all.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return system_error("sealing the inflight area", errno);
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return system_error("mmap of the inflight area", errno);
  auto* base = static_cast<std::byte*>(p);
  const InflightArea area{size, 0, num_queues, queue_size};
  InflightMemory m(std::move(fd), area, format, p, size, base);
  if (format == RingFormat::kPacked) {
    for (uint32_t q = 0; q < num_queues; ++q) init_packed_region(m.queue_region(q), queue_size);
  }
  return m;
}

Result<InflightMemory> InflightMemory::map(int fd, const InflightArea& area, RingFormat format) {
  const uint64_t need = uint64_t{area.num_queues} * inflight_queue_region_size(format, area.queue_size);
  if (area.mmap_size < need) {
    return make_error(VhostUserErrc::kBadField,
                      "SET_INFLIGHT_FD: mmap_size {} is below the {} bytes of {} {} queues of size {}", area.mmap_size,
                      need, area.num_queues, format == RingFormat::kSplit ? "split" : "packed", area.queue_size);
  }
  // mmap needs a page-aligned offset, and the region layout needs 8-byte
  // aligned counters (atomics): an odd offset would map the area at an odd
  // address.
  if (area.mmap_offset % page_size() != 0) {
    return make_error(VhostUserErrc::kBadField, "SET_INFLIGHT_FD: mmap_offset 0x{:x} is not a multiple of the {}-byte page",
                      area.mmap_offset, page_size());
  }
  VDMA_TRY(seal_inflight_fd(fd));
  struct stat st{};
  if (::fstat(fd, &st) != 0) return system_error("fstat of the inflight fd", errno);
  // The codec checked that offset + size does not wrap. A file shorter than
  // the area would raise SIGBUS on the first access past its end; sealed,
  // it cannot become shorter later.
  if (!S_ISREG(st.st_mode) || st.st_size < 0 ||
      static_cast<uint64_t>(st.st_size) < area.mmap_offset + area.mmap_size) {
    return make_error(VhostUserErrc::kBadField, "SET_INFLIGHT_FD: fd of {} bytes, area ends at 0x{:x}",
                      static_cast<int64_t>(st.st_size), area.mmap_offset + area.mmap_size);
  }
  const uint64_t page = page_size();
  const uint64_t start = area.mmap_offset & ~(page - 1);
  const uint64_t len = area.mmap_offset - start + area.mmap_size;
  UniqueFd own = VDMA_TRY(UniqueFd::duplicate(fd));
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, own.get(), static_cast<off_t>(start));
  if (p == MAP_FAILED) return system_error("mmap of the inflight area", errno);
  return InflightMemory(std::move(own), area, format, p, len, static_cast<std::byte*>(p) + (area.mmap_offset - start));
}

}  // namespace vdma::vhost_user
