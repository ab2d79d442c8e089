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
#include <span>
#include <string>
#include <string_view>

#include "vdma/base/result.h"
#include "vdma/blk/errors.h"

namespace vdma::blk {

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
