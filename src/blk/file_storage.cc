// A file or block device driven through io_uring, one ring per queue (never
// shared between threads).
//
// Asynchronous operations (start/submit/reap) keep up to kMaxInFlight
// transfers in flight, each tagged with the caller's tag in the SQE's
// user_data; a short transfer, EAGAIN, or O_DIRECT's EINVAL is continued
// or redone from reap() before the completion is reported. The synchronous
// operations (read/write/flush/discard/write_zeroes) submit one operation
// and wait for it; completions of asynchronous operations that arrive
// meanwhile are kept for the next reap().
#include <fcntl.h>
#include <linux/fs.h>
#include <liburing.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "storage_impl.h"
#include "vdma/base/log.h"
#include "vdma/blk/virtio_blk.h"
#include "vdma/base/unique_fd.h"

namespace vdma::blk {
namespace {


// QEMU's largest virtqueue (VIRTQUEUE_MAX_SIZE): a queue of that size can
// have every request in flight. Plus one entry for a synchronous operation.
constexpr uint32_t kMaxInFlight = 1024;
constexpr unsigned kRingEntries = kMaxInFlight + 1;
constexpr uint64_t kSyncTag = ~uint64_t{0};
constexpr size_t kZeroBufferBytes = 64 * 1024;
constexpr size_t kZeroIovecs = 16;  // 1 MiB of zeroes per write
constexpr size_t kDirectAlign = 4096;

Error io_error(std::string_view op, uint64_t offset, uint64_t len, int err) {
  return Error(BlkErrc::kIo, fmt::format("{} at byte {:#x} + {:#x}: {}", op, offset, len, std::strerror(err)));
}

class FileQueue final : public StorageQueue {
 public:
  FileQueue(int fd, int buffered_fd, uint32_t max_iovecs) : fd_(fd), buffered_fd_(buffered_fd) {
    scratch_.resize(std::clamp<uint32_t>(max_iovecs, 1, IOV_MAX));
  }
  ~FileQueue() override {
    if (ring_ready_) io_uring_queue_exit(&ring_);
    std::free(zeroes_);
  }
  FileQueue(const FileQueue&) = delete;
  FileQueue& operator=(const FileQueue&) = delete;

  [[nodiscard]] Result<void> init() {
    const int r = io_uring_queue_init(kRingEntries, &ring_, 0);
    if (r < 0) return make_error(BlkErrc::kIo, "io_uring_queue_init: {}", std::strerror(-r));
    ring_ready_ = true;
    // No registered files (io_uring_register_files): the ring's file table
    // holds the disk's open file, and the kernel drops it only when it tears
    // the ring down, asynchronously after the ring fd is closed (or the
    // process killed). Until then the image's lock is still held, so a disk
    // opened again at once (a restarted vdma-blk) is refused as "in use".
    // Measured against plain fds, they gained nothing here either.
    // Aligned so the zero-fill fallback also works on an O_DIRECT fd.
    zeroes_ = static_cast<std::byte*>(std::aligned_alloc(kDirectAlign, kZeroBufferBytes));
    if (zeroes_ == nullptr) return make_error(BlkErrc::kIo, "cannot allocate the zero buffer");
    std::memset(zeroes_, 0, kZeroBufferBytes);
    return ok();
  }

  Result<void> read(uint64_t offset, std::span<const iovec> iov) override { return transfer(IoDir::kRead, offset, iov); }
  Result<void> write(uint64_t offset, std::span<const iovec> iov) override { return transfer(IoDir::kWrite, offset, iov); }

  Result<void> flush() override {
    const int r = run([&](io_uring_sqe* sqe) { io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC); });
    if (r < 0) return io_error("fdatasync", 0, 0, -r);
    return ok();
  }

  Result<void> discard(uint64_t offset, uint64_t len) override {
    const int r = fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (r == 0) return ok();
    // Storage without hole punching still owes "reads back as zero" to
    // callers that rely on it, so fall back to zeroing.
    if (r == -EOPNOTSUPP) return write_zeroes(offset, len, false);
    return io_error("discard (punch hole)", offset, len, -r);
  }

  Result<void> write_zeroes(uint64_t offset, uint64_t len, bool unmap) override {
    if (unmap) {
      const int r = fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
      if (r == 0) return ok();
      if (r != -EOPNOTSUPP) return io_error("write zeroes (punch hole)", offset, len, -r);
    }
    const int r = fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (r == 0) return ok();
    if (r != -EOPNOTSUPP && r != -EINVAL) return io_error("write zeroes (zero range)", offset, len, -r);
    // No ZERO_RANGE on this file system / device: write zeroes.
    while (len > 0) {
      size_t n = 0;
      uint64_t chunk = 0;
      while (n < kZeroIovecs && chunk < len) {
        const uint64_t piece = std::min<uint64_t>(kZeroBufferBytes, len - chunk);
        zero_write_iov_[n++] = iovec{zeroes_, static_cast<size_t>(piece)};
        chunk += piece;
      }
      VDMA_TRY(transfer(IoDir::kWrite, offset, std::span<const iovec>(zero_write_iov_.data(), n)));
      offset += chunk;
      len -= chunk;
    }
    return ok();
  }


  uint32_t max_in_flight() const noexcept override { return kMaxInFlight; }
  int completion_fd() const noexcept override { return ring_.ring_fd; }

  std::optional<Result<void>> start(Op op, uint64_t offset, std::span<const iovec> iov, uint32_t tag) override {
    VDMA_CHECK(tag < kMaxInFlight, "storage operation tag out of range");
    if (ops_.size() <= tag) ops_.resize(tag + 1);
    Pending& p = ops_[tag];
    VDMA_CHECK(!p.active, "storage operation tag already in flight");
    if (iov.size() > scratch_.size()) {
      // More segments than one operation takes: the synchronous path splits it.
      return StorageQueue::start(op, offset, iov, tag);
    }
    p.op = op;
    p.offset = offset;
    p.fd = fd_;
    p.first = 0;
    p.left = 0;
    p.iov.assign(iov.begin(), iov.end());  // capacity kept: no allocation once warm
    for (const iovec& v : iov) p.left += v.iov_len;
    p.first = advance(p.iov, 0, 0);
    if (op != Op::kFlush && p.left == 0) return ok();
    p.active = true;
    queue(tag);
    return std::nullopt;
  }

  void submit() override {
    if (unsubmitted_ == 0) return;
    int r = io_uring_submit(&ring_);
    while (r == -EINTR || r == -EAGAIN) r = io_uring_submit(&ring_);
    // EBUSY (completions not reaped yet): they are submitted with the next call.
    if (r >= 0) unsubmitted_ = 0;
  }

  size_t reap(std::span<Completion> out) override {
    size_t n = 0;
    while (n < out.size() && !stashed_.empty()) {
      const RawCompletion c = stashed_.back();
      stashed_.pop_back();
      finish(c.tag, c.res, out, n);
    }
    while (n < out.size()) {
      io_uring_cqe* cqe = nullptr;
      if (io_uring_peek_cqe(&ring_, &cqe) != 0 || cqe == nullptr) break;
      const uint64_t tag = io_uring_cqe_get_data64(cqe);
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (tag == kSyncTag) continue;  // cannot happen: run() waits for its own
      finish(static_cast<uint32_t>(tag), res, out, n);
    }
    submit();  // continuations queued by finish()
    return n;
  }

 private:
  // Submits the operation `prep` fills in and waits for it; returns cqe->res.
  // Completions of asynchronous operations seen meanwhile are kept for reap().
  template <class Prep>
  int run(Prep&& prep) {
    io_uring_sqe* sqe = get_sqe();
    // At most kMaxInFlight asynchronous SQEs plus this one: never full.
    VDMA_CHECK(sqe != nullptr, "io_uring submission queue full");
    prep(sqe);
    io_uring_sqe_set_data64(sqe, kSyncTag);
    unsubmitted_ = 0;  // submitted below, with any asynchronous ones started before
    int r = io_uring_submit(&ring_);
    while (r == -EINTR || r == -EAGAIN) r = io_uring_submit(&ring_);
    if (r < 0) return r;
    for (;;) {
      io_uring_cqe* cqe = nullptr;
      r = io_uring_wait_cqe(&ring_, &cqe);
      if (r == -EINTR) continue;
      if (r < 0) return r;
      const uint64_t tag = io_uring_cqe_get_data64(cqe);
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (tag == kSyncTag) return res;
      stashed_.push_back(RawCompletion{static_cast<uint32_t>(tag), res});
    }
  }

  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      // Only when more than the ring holds were started without submit().
      (void)io_uring_submit(&ring_);
      unsubmitted_ = 0;
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  // Prepares the SQE for the next piece of operation `tag`.
  void queue(uint32_t tag) {
    Pending& p = ops_[tag];
    io_uring_sqe* sqe = get_sqe();
    VDMA_CHECK(sqe != nullptr, "io_uring submission queue full");
    const auto count = static_cast<unsigned>(p.iov.size() - p.first);
    switch (p.op) {
      case Op::kRead:
        io_uring_prep_readv(sqe, p.fd, p.iov.data() + p.first, count, p.offset);
        break;
      case Op::kWrite:
        io_uring_prep_writev(sqe, p.fd, p.iov.data() + p.first, count, p.offset);
        break;
      case Op::kFlush:
        io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC);
        break;
    }
    io_uring_sqe_set_data64(sqe, tag);
    ++unsubmitted_;
  }

  // One CQE of operation `tag`: continue it, or report it in out[n++].
  void finish(uint32_t tag, int res, std::span<Completion> out, size_t& n) {
    VDMA_CHECK(tag < ops_.size() && ops_[tag].active, "io_uring completion for a tag not in flight");
    Pending& p = ops_[tag];
    auto report = [&](std::optional<Error> error) {
      p.active = false;
      out[n++] = Completion{tag, std::move(error)};
    };
    if (p.op == Op::kFlush) {
      if (res < 0) return report(io_error("fdatasync", 0, 0, -res));
      return report(std::nullopt);
    }
    if (res == -EAGAIN || res == -EINTR) return queue(tag);
    // O_DIRECT refuses buffers or offsets that are not aligned to the
    // device's logical block; such a transfer goes through the page cache.
    if (res == -EINVAL && p.fd != buffered_fd_) {
      p.fd = buffered_fd_;
      return queue(tag);
    }
    const std::string_view op = p.op == Op::kWrite ? "write" : "read";
    if (res < 0) return report(io_error(op, p.offset, p.left, -res));
    if (res == 0) return report(io_error(op, p.offset, p.left, EIO));
    const auto done = std::min<uint64_t>(static_cast<uint64_t>(res), p.left);
    p.first = advance(p.iov, p.first, done);
    p.offset += done;
    p.left -= done;
    if (p.left == 0) return report(std::nullopt);
    queue(tag);  // a short transfer: the rest
  }

  int fallocate(int mode, uint64_t offset, uint64_t len) {
    return run([&](io_uring_sqe* sqe) { io_uring_prep_fallocate(sqe, fd_, mode, offset, len); });
  }

  // Moves the iovecs in `chunk` forward by `done` bytes; returns the index of
  // the first iovec with bytes left.
  static size_t advance(std::span<iovec> chunk, size_t first, uint64_t done) {
    while (first < chunk.size() && done >= chunk[first].iov_len) {
      done -= chunk[first].iov_len;
      ++first;
    }
    if (first < chunk.size() && done > 0) {
      chunk[first].iov_base = static_cast<std::byte*>(chunk[first].iov_base) + done;
      chunk[first].iov_len -= done;
    }
    return first;
  }

  Result<void> transfer(IoDir dir, uint64_t offset, std::span<const iovec> iov) {
    const std::string_view op = to_string(dir);
    size_t pos = 0;
    while (pos < iov.size()) {
      const size_t n = std::min(iov.size() - pos, scratch_.size());
      std::copy_n(iov.begin() + static_cast<std::ptrdiff_t>(pos), n, scratch_.begin());
      uint64_t chunk_bytes = 0;
      for (size_t i = 0; i < n; ++i) chunk_bytes += scratch_[i].iov_len;
      const std::span<iovec> chunk(scratch_.data(), n);
      size_t first = advance(chunk, 0, 0);
      uint64_t left = chunk_bytes;
      int fd = fd_;
      while (left > 0) {
        const auto count = static_cast<unsigned>(n - first);
        const int r = run([&](io_uring_sqe* sqe) {
          if (dir == IoDir::kWrite) io_uring_prep_writev(sqe, fd, chunk.data() + first, count, offset);
          else io_uring_prep_readv(sqe, fd, chunk.data() + first, count, offset);
        });
        if (r == -EAGAIN || r == -EINTR) continue;
        // O_DIRECT refuses buffers or offsets that are not aligned to the
        // device's logical block; the guest's buffers need not be, so such
        // a transfer goes through the page cache instead.
        if (r == -EINVAL && fd != buffered_fd_) {
          fd = buffered_fd_;
          continue;
        }
        if (r < 0) return io_error(op, offset, left, -r);
        if (r == 0) return io_error(op, offset, left, EIO);
        const auto done = static_cast<uint64_t>(r);
        first = advance(chunk, first, done);
        offset += done;
        left -= done;
      }
      pos += n;
    }
    return ok();
  }

  io_uring ring_{};
  bool ring_ready_ = false;
  int fd_;
  int buffered_fd_;
  std::vector<iovec> scratch_;  // preallocated: a request never allocates
  std::byte* zeroes_ = nullptr;
  std::array<iovec, kZeroIovecs> zero_write_iov_{};

  // Asynchronous operations, by tag.
  struct Pending {
    Op op = Op::kRead;
    bool active = false;
    int fd = -1;
    uint64_t offset = 0;
    uint64_t left = 0;
    size_t first = 0;
    std::vector<iovec> iov;
  };
  struct RawCompletion {
    uint32_t tag;
    int res;
  };
  std::vector<Pending> ops_;
  std::vector<RawCompletion> stashed_;  // seen by run() while it waited for its own
  uint32_t unsubmitted_ = 0;            // SQEs prepared since the last submit
};

class FileStorage final : public StorageBackend {
 public:
  FileStorage(std::string path, UniqueFd fd, UniqueFd buffered_fd, uint64_t size, const StorageOptions& options)
      : path_(std::move(path)), fd_(std::move(fd)), buffered_fd_(std::move(buffered_fd)), size_(size),
        options_(options) {}

  uint64_t size_bytes() const noexcept override { return size_; }
  bool read_only() const noexcept override { return options_.read_only; }
  Result<std::unique_ptr<StorageQueue>> make_queue(uint32_t max_iovecs) override {
    const int buffered = buffered_fd_.valid() ? buffered_fd_.get() : fd_.get();
    auto q = std::make_unique<FileQueue>(fd_.get(), buffered, max_iovecs);
    VDMA_TRY(q->init());
    return std::unique_ptr<StorageQueue>(std::move(q));
  }
  std::string describe() const override {
    return fmt::format("file {} ({} bytes{}{})", path_, size_, options_.direct ? ", O_DIRECT" : "",
                       options_.read_only ? ", read-only" : "");
  }

 private:
  std::string path_;
  UniqueFd fd_;
  UniqueFd buffered_fd_;  // only with O_DIRECT: for unaligned transfers
  uint64_t size_;
  StorageOptions options_;
};

Result<UniqueFd> open_fd(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return make_error(BlkErrc::kIo, "open {}{}: {}", path, (flags & O_DIRECT) != 0 ? " (O_DIRECT)" : "",
                      std::strerror(err));
  }
  return UniqueFd(fd);
}

// QEMU's image locking (file-posix.c raw_apply_lock_bytes) in its simplest
// form: one open-file-description lock over the whole file. It belongs to
// the open file, not the process, so two opens in one process conflict too,
// and it goes away with the last fd of that open.
Result<void> lock_image(const UniqueFd& fd, const std::string& path, bool read_only) {
  struct flock fl {};
  fl.l_type = read_only ? F_RDLCK : F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;  // the whole file, however it grows
  if (::fcntl(fd.get(), F_OFD_SETLK, &fl) == 0) return ok();
  const int err = errno;
  if (err == EAGAIN || err == EACCES) {
    if (read_only) {
      return make_error(BlkErrc::kInUse,
                        "{} is in use: another process (QEMU, another vdma-blk) has it open for writing; a read-only "
                        "disk shares an image with readers only",
                        path);
    }
    return make_error(BlkErrc::kInUse,
                      "{} is in use: another process (QEMU, another vdma-blk) has it open; a writable disk needs it "
                      "to itself",
                      path);
  }
  // NFS without lockd, some FUSE file systems: serve, but say so.
  spdlog::warn("vdma-blk: cannot lock {} ({}); nothing stops a second process from writing it", path,
               std::strerror(err));
  return ok();
}

}  // namespace

Result<std::unique_ptr<StorageBackend>> open_file_storage(const std::string& path, const StorageOptions& options) {
  const int access = options.read_only ? O_RDONLY : O_RDWR;
  UniqueFd fd = VDMA_TRY(open_fd(path, access | (options.direct ? O_DIRECT : 0)));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return make_error(BlkErrc::kIo, "stat {}: {}", path, std::strerror(errno));
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd.get(), BLKGETSIZE64, &size) != 0) {
      return make_error(BlkErrc::kIo, "BLKGETSIZE64 {}: {}", path, std::strerror(errno));
    }
  } else {
    return make_error(BlkErrc::kInvalidSpec, "{} is neither a regular file nor a block device", path);
  }
  size &= ~(kSectorSize - 1);
  if (size == 0) return make_error(BlkErrc::kInvalidSpec, "{} is smaller than one 512-byte sector", path);
  VDMA_TRY(lock_image(fd, path, options.read_only));
  UniqueFd buffered;
  if (options.direct) buffered = VDMA_TRY(open_fd(path, access));
  return std::unique_ptr<StorageBackend>(
      std::make_unique<FileStorage>(path, std::move(fd), std::move(buffered), size, options));
}

}  // namespace vdma::blk
