// Storage behind a virtio-blk device: a file (or block device) driven through
// io_uring, or a null disk that stores nothing and reads zeroes.
//
//   auto spec = VDMA_TRY(parse_storage_spec("null:1G"));        // or a path
//   auto storage = VDMA_TRY(open_storage(spec, {.read_only = true}));
//   auto q = VDMA_TRY(storage->make_queue(128));                // one per worker thread
//   iovec v{buf, 4096};
//   VDMA_TRY(q->read(0, {&v, 1}));
//
// Offsets and lengths are bytes. The device model has checked every range
// against size_bytes() and the read-only flag before calling a queue; the
// storage still fails cleanly (BlkErrc::kIo) if the kernel refuses.
//
// Threads and lifetimes: a StorageBackend is immutable after open and may be
// shared; each StorageQueue belongs to one thread at a time (its io_uring is
// not shared) and must not outlive its backend. Queues of one backend may run
// concurrently.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "vdma/base/result.h"
#include "vdma/blk/errors.h"

namespace vdma::blk {

// Which way a data transfer goes: kRead from the disk into guest memory,
// kWrite from guest memory to the disk.
enum class IoDir : uint8_t { kRead, kWrite };
[[nodiscard]] constexpr std::string_view to_string(IoDir d) noexcept { return d == IoDir::kWrite ? "write" : "read"; }

class StorageQueue {
 public:
  virtual ~StorageQueue() = default;

  // Reads / writes exactly the bytes the iovecs describe at `offset`. Any
  // number of iovecs: more than IOV_MAX are issued in several operations.
  // Short transfers are continued. Errors: BlkErrc::kIo (names errno; a
  // transfer that makes no progress is an error too).
  [[nodiscard]] virtual Result<void> read(uint64_t offset, std::span<const iovec> iov) = 0;
  [[nodiscard]] virtual Result<void> write(uint64_t offset, std::span<const iovec> iov) = 0;
  // Makes completed writes durable (fdatasync).
  [[nodiscard]] virtual Result<void> flush() = 0;
  // Deallocates the range; it reads back as zeroes afterwards.
  [[nodiscard]] virtual Result<void> discard(uint64_t offset, uint64_t len) = 0;
  // Zeroes the range; `unmap` lets the storage deallocate it instead.
  [[nodiscard]] virtual Result<void> write_zeroes(uint64_t offset, uint64_t len, bool unmap) = 0;

  // --- Asynchronous operations (the data path of a virtqueue with many
  // requests in flight). ---
  //
  // Up to max_in_flight() operations run at once, each under a tag in
  // [0, max_in_flight()) that is not in use. start() copies the iovec array;
  // the memory the iovecs point at must stay valid until the operation's
  // completion is reaped. It returns nullopt when the operation runs in the
  // background (a later reap() reports it), or its result when it finished at
  // once (the storage has nothing to wait for, or cannot queue it). submit()
  // hands every operation started since the last call to the kernel in one
  // system call. reap() moves finished operations into `out` without
  // waiting and returns how many. completion_fd() is readable (POLLIN) while
  // a completion waits to be reaped; -1 when start() never defers.
  // Completions come in any order. FLUSH covers every write completed
  // before it was started, as fdatasync does; not writes still in flight.
  // Short transfers are continued, and a transfer O_DIRECT refuses (EINVAL:
  // unaligned guest buffers) is redone through the page cache, before the
  // completion is reported. The defaults run the operation synchronously.
  enum class Op : uint8_t { kRead, kWrite, kFlush };
  struct Completion {
    uint32_t tag = 0;
    std::optional<Error> error;  // BlkErrc::kIo naming the operation and errno
  };
  [[nodiscard]] virtual uint32_t max_in_flight() const noexcept { return 0; }
  [[nodiscard]] virtual std::optional<Result<void>> start(Op op, uint64_t offset, std::span<const iovec> iov,
                                                          uint32_t /*tag*/) {
    switch (op) {
      case Op::kRead:
        return read(offset, iov);
      case Op::kWrite:
        return write(offset, iov);
      case Op::kFlush:
        break;
    }
    return flush();
  }
  virtual void submit() {}
  [[nodiscard]] virtual size_t reap(std::span<Completion> /*out*/) { return 0; }
  [[nodiscard]] virtual int completion_fd() const noexcept { return -1; }
};

class StorageBackend {
 public:
  virtual ~StorageBackend() = default;
  // Bytes usable by the disk (a multiple of 512: a partial last sector is cut).
  [[nodiscard]] virtual uint64_t size_bytes() const noexcept = 0;
  [[nodiscard]] virtual bool read_only() const noexcept = 0;
  // A queue for one worker thread; `max_iovecs` sizes its preallocated iovec
  // scratch (requests with more are split, never reallocated).
  // Errors: BlkErrc::kIo (io_uring setup failed; names errno).
  [[nodiscard]] virtual Result<std::unique_ptr<StorageQueue>> make_queue(uint32_t max_iovecs) = 0;
  // "file /path (O_DIRECT, read-only)" or "null 1073741824 bytes", for logs.
  [[nodiscard]] virtual std::string describe() const = 0;
};

struct StorageSpec {
  enum class Kind : uint8_t { kFile, kNull };
  Kind kind = Kind::kFile;
  std::string path;     // kFile
  uint64_t null_size = 0;  // kNull, bytes
};

// "null:SIZE" (SIZE: decimal bytes with an optional K, M, G or T suffix,
// powers of 1024, non-zero, a multiple of 512) or a non-empty path.
// Errors: BlkErrc::kInvalidSpec naming the spec.
[[nodiscard]] Result<StorageSpec> parse_storage_spec(std::string_view spec);
// "512", "4K", "1G": bytes. Errors: BlkErrc::kInvalidSpec (empty, bad suffix,
// overflow past 2^64).
[[nodiscard]] Result<uint64_t> parse_size(std::string_view text);

struct StorageOptions {
  bool read_only = false;
  bool direct = false;  // O_DIRECT (files only)
};

// Opens a file (O_RDWR or O_RDONLY, O_CLOEXEC, optionally O_DIRECT; a block
// device's size comes from BLKGETSIZE64) or makes a null disk.
// Image locking, as QEMU does: a whole-file open-file-description lock
// (F_OFD_SETLK), exclusive for a writable disk and shared for a read-only
// one, held while the storage lives. So a second writer, or a reader beside
// a writer, is refused; any number of readers share an image. A file system
// without lock support only gets a warning.
// Errors: BlkErrc::kIo (open/stat failed, names the path and errno),
// BlkErrc::kInUse (the image is locked by another open: names the path and
// the lock that conflicts),
// BlkErrc::kInvalidSpec (a file smaller than one sector, not a regular file
// or block device).
[[nodiscard]] Result<std::unique_ptr<StorageBackend>> open_storage(const StorageSpec& spec,
                                                                   const StorageOptions& options);

}  // namespace vdma::blk
