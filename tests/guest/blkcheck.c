// blkcheck: end-to-end data check of a virtio-blk disk, run inside a real Linux guest, and the
// host-side verifier of the disk image the back-end wrote, sharing one pattern definition.
//
// Guest mode (run by the initramfs /init, see scripts/guest/build-initramfs):
//   blkcheck --device /dev/vda --seed 1234 [--expect-size BYTES] [--jobs N]
//     1. opens the disk with O_DIRECT so every access is a real virtio request;
//     2. writes the pattern over the whole disk, request sizes rotating 4K/16K/64K/256K/1M
//        (the pattern is generated ahead, 64 MiB at a time, so the writes follow back to back);
//        with --jobs N (1..64), N writer processes share each chunk's requests round-robin, so
//        up to N of them (and the virtio requests each splits into) are in flight at once;
//     3. fsync, which sends VIRTIO_BLK_T_FLUSH whenever the device negotiated
//        VIRTIO_BLK_F_FLUSH (see arrange_flush);
//     4. reads everything back with a different rotation (so read and write request
//        boundaries differ) and checks every byte;
//     5. BLKDISCARD on a 1 MiB range (reports "discard=unsupported" if the device lacks it),
//        then checks each sector there is either still the pattern or zeroes;
//     6. BLKZEROOUT on an unaligned range, which must read back as zeroes, and checks the
//        sectors around both ranges are untouched.
//   Before the write pass, the read pass and the discard/zero-out stage it prints a progress
//   marker, "BLKCHECK PHASE write", "BLKCHECK PHASE read" and "BLKCHECK PHASE discard", so a
//   host script can time an event (e.g. killing the back-end) to land inside one phase.
//   It ends with exactly one result line:
//     BLKCHECK PASS bytes=N seed=S requests=N flush=device|wce-set|forced|...
//                   discard=zeroed|kept|mixed|unsupported zeroout=device|emulated write_ms= read_ms=
//     BLKCHECK FAIL stage=STAGE [lba=L offset=O expected=0x.. got=0x..] [errno=..] ...
//   and exits 0 on PASS, 1 on FAIL.
//
// Host mode (run by scripts/guest/run-guest after the guest powered off):
//   blkcheck --verify-image disk.img --seed 1234 --discard-state zeroed
//     checks the image byte for byte against the final state the guest left: pattern
//     everywhere, the discard range as the guest reported it, the zero-out range zero.
//   Prints "BLKVERIFY PASS ..." or "BLKVERIFY FAIL ..." and exits 0 or 1.
//
// Pattern: every 512-byte sector is 64 little-endian 64-bit words; word 0 is the LBA, word 1
// the seed, words 2..63 splitmix64(seed, lba, word). A misplaced sector, a stale one, a torn
// one or a zeroed one is therefore told apart from a correct one.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
  kSector = 512,
  kWordsPerSector = kSector / 8,
  kAlign = 4096,
  kMaxRequest = 1 << 20,
  kWriteChunk = 64 << 20,  // pattern generated ahead of the write pass (see run_guest)
  kRangeSectors = (1 << 20) / kSector,  // discard range: 1 MiB
  kZeroOffsetSectors = 8,               // zero-out range starts 4 KiB into its MiB...
  kZeroSectors = 136,                   // ...and is 68 KiB long, so neither edge is MiB-aligned
  kMinDiskBytes = 8 << 20,  // keeps the discard and zero-out ranges and their neighbours apart
};

static const size_t kRequestSizes[] = {4096, 16384, 65536, 262144, 1048576};
static const size_t kNumRequestSizes = sizeof kRequestSizes / sizeof kRequestSizes[0];

// The disk regions the check touches after the whole-disk pass. Both modes derive them from
// the disk size alone so the host verifier expects exactly what the guest did.
struct Layout {
  uint64_t sectors;
  uint64_t discard_lba;
  uint64_t zero_lba;
};

static struct Layout layout_for(uint64_t bytes) {
  struct Layout l;
  l.sectors = bytes / kSector;
  l.discard_lba = (l.sectors / 4) / kRangeSectors * kRangeSectors;
  l.zero_lba = (l.sectors / 2) / kRangeSectors * kRangeSectors + kZeroOffsetSectors;
  return l;
}

static uint64_t splitmix64(uint64_t x) {
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

static uint64_t pattern_word(uint64_t seed, uint64_t lba, unsigned word) {
  if (word == 0) return lba;
  if (word == 1) return seed;
  return splitmix64(seed ^ (lba * kWordsPerSector + word) * UINT64_C(0xd1b54a32d192ed03));
}

// Words are stored little-endian explicitly so the image format does not depend on the host.
static void put_le64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static void fill_sector(unsigned char* s, uint64_t seed, uint64_t lba) {
  for (unsigned w = 0; w < kWordsPerSector; ++w) put_le64(s + 8 * w, pattern_word(seed, lba, w));
}

// Index of the first word of the sector that differs from the pattern, or -1.
static int pattern_mismatch(const unsigned char* s, uint64_t seed, uint64_t lba) {
  for (unsigned w = 0; w < kWordsPerSector; ++w) {
    if (get_le64(s + 8 * w) != pattern_word(seed, lba, w)) return (int)w;
  }
  return -1;
}

static int zero_mismatch(const unsigned char* s) {
  for (unsigned w = 0; w < kWordsPerSector; ++w) {
    if (get_le64(s + 8 * w) != 0) return (int)w;
  }
  return -1;
}

// What a sector is expected to hold at the end of the check.
enum Expect { kExpectPattern, kExpectZero, kExpectPatternOrZero };

static const char* g_tag = "BLKCHECK";

static void report_mismatch(const char* stage, uint64_t lba, int word, uint64_t expected,
                            const unsigned char* sector) {
  printf("%s FAIL stage=%s lba=%" PRIu64 " offset=%" PRIu64 " expected=0x%016" PRIx64
         " got=0x%016" PRIx64 "\n",
         g_tag, stage, lba, lba * kSector + (uint64_t)word * 8, expected,
         get_le64(sector + 8 * word));
}

// Checks one sector against its expectation; prints the FAIL line and returns false on a
// mismatch. *zeroed counts sectors that read back as zeroes where either state was allowed.
static bool check_sector(const char* stage, const unsigned char* s, uint64_t seed, uint64_t lba,
                         enum Expect e, uint64_t* zeroed) {
  int w;
  switch (e) {
    case kExpectPattern:
      w = pattern_mismatch(s, seed, lba);
      if (w < 0) return true;
      report_mismatch(stage, lba, w, pattern_word(seed, lba, (unsigned)w), s);
      return false;
    case kExpectZero:
      w = zero_mismatch(s);
      if (w < 0) return true;
      report_mismatch(stage, lba, w, 0, s);
      return false;
    case kExpectPatternOrZero:
      if (pattern_mismatch(s, seed, lba) < 0) return true;
      if (zero_mismatch(s) < 0) {
        ++*zeroed;
        return true;
      }
      w = pattern_mismatch(s, seed, lba);
      report_mismatch(stage, lba, w, pattern_word(seed, lba, (unsigned)w), s);
      return false;
  }
  return false;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

// Prints a progress marker and pushes it to the console at once (stdout is line-buffered, the
// explicit flush keeps that true even if the buffering changes).
static void phase(const char* name) {
  printf("%s PHASE %s\n", g_tag, name);
  fflush(stdout);
}

static bool full_pwrite(int fd, const unsigned char* buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      printf("%s FAIL stage=write offset=%" PRIu64 " len=%zu errno=%d (%s)\n", g_tag, off + done,
             len - done, n < 0 ? errno : 0, n < 0 ? strerror(errno) : "short write");
      return false;
    }
    done += (size_t)n;
  }
  return true;
}

static bool full_pread(int fd, unsigned char* buf, size_t len, uint64_t off, const char* stage) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      printf("%s FAIL stage=%s offset=%" PRIu64 " len=%zu errno=%d (%s)\n", g_tag, stage,
             off + done, len - done, n < 0 ? errno : 0, n < 0 ? strerror(errno) : "short read");
      return false;
    }
    done += (size_t)n;
  }
  return true;
}

static bool do_fsync(int fd, const char* after) {
  if (fsync(fd) == 0) return true;
  printf("%s FAIL stage=flush after=%s errno=%d (%s)\n", g_tag, after, errno, strerror(errno));
  return false;
}

// Reads [lba, lba + count) in requests of at most 1 MiB and checks each sector.
static bool read_and_check(int fd, unsigned char* buf, uint64_t seed, uint64_t lba,
                           uint64_t count, enum Expect e, const char* stage, uint64_t* zeroed) {
  while (count > 0) {
    uint64_t n = count < kMaxRequest / kSector ? count : kMaxRequest / kSector;
    if (!full_pread(fd, buf, n * kSector, lba * kSector, stage)) return false;
    for (uint64_t i = 0; i < n; ++i) {
      if (!check_sector(stage, buf + i * kSector, seed, lba + i, e, zeroed)) return false;
    }
    lba += n;
    count -= n;
  }
  return true;
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

// Checks that the sectors on both sides of [lba, lba + count) still carry the pattern, up to
// `window` sectors each way, so a device that writes or discards too much is caught.
static bool check_neighbours(int fd, unsigned char* buf, uint64_t seed, const struct Layout* l,
                             uint64_t lba, uint64_t count, const char* stage) {
  const uint64_t window = 64;
  uint64_t before = min_u64(window, lba);
  uint64_t after = min_u64(window, l->sectors - (lba + count));
  return read_and_check(fd, buf, seed, lba - before, before, kExpectPattern, stage, NULL) &&
         read_and_check(fd, buf, seed, lba + count, after, kExpectPattern, stage, NULL);
}

// Reads the first line of /sys/block/<disk>/<attr> without its newline; false if unreadable.
static bool read_sysfs(const char* dev_path, const char* attr, char* out, size_t len) {
  const char* base = strrchr(dev_path, '/');
  base = base ? base + 1 : dev_path;
  char path[256];
  snprintf(path, sizeof path, "/sys/block/%s/%s", base, attr);
  FILE* f = fopen(path, "r");
  bool ok = f != NULL && fgets(out, (int)len, f) != NULL;
  if (f) fclose(f);
  if (!ok) {
    snprintf(out, len, "unknown");
    return false;
  }
  out[strcspn(out, "\n")] = '\0';
  return true;
}

static bool write_sysfs(const char* dev_path, const char* attr, const char* value) {
  const char* base = strrchr(dev_path, '/');
  base = base ? base + 1 : dev_path;
  char path[256];
  snprintf(path, sizeof path, "/sys/block/%s/%s", base, attr);
  FILE* f = fopen(path, "w");
  if (f == NULL) return false;
  bool ok = fputs(value, f) >= 0;
  return fclose(f) == 0 && ok;
}

// Makes fsync reach the device as VIRTIO_BLK_T_FLUSH whenever the device negotiated
// VIRTIO_BLK_F_FLUSH (bit 9): a device that announces a write-through cache would otherwise
// never see a flush, and the flush path would go untested. With VIRTIO_BLK_F_CONFIG_WCE
// (bit 11) the cache is switched to write-back through the device's config space (virtio
// 1.2 §5.2.6.1), otherwise the kernel is asked to send flushes anyway. Returns what the check
// exercises: "device" (write-back cache announced), "wce-set" (switched via config),
// "forced" (kernel flag set), "write-through" (neither was possible: fsync sends no flush),
// "not-negotiated" or "unknown".
static const char* arrange_flush(const char* device, char* features, size_t len) {
  enum { kFeatureFlush = 9, kFeatureConfigWce = 11 };
  bool have_features = read_sysfs(device, "device/features", features, len);
  if (!have_features || strlen(features) <= kFeatureConfigWce) return "unknown";
  if (features[kFeatureFlush] != '1') return "not-negotiated";
  char cache[32];
  read_sysfs(device, "queue/write_cache", cache, sizeof cache);
  if (strcmp(cache, "write back") == 0) return "device";
  if (features[kFeatureConfigWce] == '1' && write_sysfs(device, "cache_type", "write back") &&
      read_sysfs(device, "queue/write_cache", cache, sizeof cache) &&
      strcmp(cache, "write back") == 0)
    return "wce-set";
  if (write_sysfs(device, "queue/write_cache", "write back")) return "forced";
  return "write-through";
}

enum { kMaxJobs = 64 };

// Writes the requests of [chunk, chunk_end) whose index (counted from first_i) is j modulo
// jobs. Returns false after printing the FAIL line.
static bool write_share(int fd, const unsigned char* wbuf, uint64_t chunk, uint64_t chunk_end,
                        uint64_t first_i, uint64_t j, uint64_t jobs) {
  uint64_t i = first_i;
  for (uint64_t off = chunk; off < chunk_end; ++i) {
    size_t len = (size_t)min_u64(kRequestSizes[i % kNumRequestSizes], chunk_end - off);
    if (i % jobs == j && !full_pwrite(fd, wbuf + (off - chunk), len, off)) return false;
    off += len;
  }
  return true;
}

// The chunk's requests split among `jobs` writer processes. Returns false after one FAIL line.
static bool write_parallel(int fd, const unsigned char* wbuf, uint64_t chunk, uint64_t chunk_end,
                           uint64_t first_i, uint64_t jobs) {
  pid_t kids[kMaxJobs];
  uint64_t started = 0;
  bool ok = true;
  for (; started < jobs; ++started) {
    const pid_t pid = fork();
    if (pid < 0) {
      printf("%s FAIL stage=write reason=fork errno=%d (%s)\n", g_tag, errno, strerror(errno));
      ok = false;
      break;
    }
    if (pid == 0) _exit(write_share(fd, wbuf, chunk, chunk_end, first_i, started, jobs) ? 0 : 1);
    kids[started] = pid;
  }
  bool child_reported = false;
  for (uint64_t k = 0; k < started; ++k) {
    int status = 0;
    if (waitpid(kids[k], &status, 0) != kids[k] || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      // A writer that failed printed its FAIL line; one that died did not.
      if (ok && !child_reported && !(WIFEXITED(status) && WEXITSTATUS(status) == 1)) {
        printf("%s FAIL stage=write reason=writer-died status=%d\n", g_tag, status);
      }
      child_reported = true;
      ok = false;
    }
  }
  return ok;
}

static int run_guest(const char* device, uint64_t seed, uint64_t expect_size, uint64_t jobs) {
  int fd = open(device, O_RDWR | O_DIRECT | O_CLOEXEC);
  if (fd < 0) {
    printf("%s FAIL stage=open device=%s errno=%d (%s)\n", g_tag, device, errno, strerror(errno));
    return 1;
  }
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
    printf("%s FAIL stage=size errno=%d (%s)\n", g_tag, errno, strerror(errno));
    return 1;
  }
  if (expect_size != 0 && size != expect_size) {
    printf("%s FAIL stage=size expected=%" PRIu64 " got=%" PRIu64 "\n", g_tag, expect_size, size);
    return 1;
  }
  if (size < kMinDiskBytes || size % kAlign != 0) {
    printf("%s FAIL stage=size got=%" PRIu64 " reason=need-a-multiple-of-4KiB-of-at-least-8MiB\n",
           g_tag, size);
    return 1;
  }
  int lbs = 0;
  if (ioctl(fd, BLKSSZGET, &lbs) != 0) lbs = -1;
  char features[80];
  const char* flush = arrange_flush(device, features, sizeof features);
  printf("%s INFO device=%s bytes=%" PRIu64 " logical_block=%d features=%s flush=%s seed=%" PRIu64
         "\n",
         g_tag, device, size, lbs, features, flush, seed);
  fflush(stdout);

  unsigned char* buf = NULL;
  if (posix_memalign((void**)&buf, kAlign, kMaxRequest) != 0) {
    printf("%s FAIL stage=alloc\n", g_tag);
    return 1;
  }
  const struct Layout l = layout_for(size);

  // Write pass: sizes rotate 4K, 16K, 64K, 256K, 1M, ... The pattern is generated ahead, up to
  // kWriteChunk at a time, so the requests follow each other back to back: under TCG the
  // generation costs more than the I/O, and an event timed on the "write" marker (a back-end
  // killed and restarted) then finds requests in flight rather than an idle queue.
  const size_t chunk_bytes = (size_t)min_u64(size, kWriteChunk);
  unsigned char* wbuf = NULL;
  if (posix_memalign((void**)&wbuf, kAlign, chunk_bytes) != 0) {
    printf("%s FAIL stage=alloc bytes=%zu\n", g_tag, chunk_bytes);
    return 1;
  }
  double t0 = 0;
  uint64_t requests = 0;
  for (uint64_t chunk = 0, i = 0; chunk < size; chunk += chunk_bytes) {
    const uint64_t chunk_end = min_u64(size, chunk + chunk_bytes);
    for (uint64_t lba = chunk / kSector; lba < chunk_end / kSector; ++lba)
      fill_sector(wbuf + (lba * kSector - chunk), seed, lba);
    if (chunk == 0) {
      phase("write");
      t0 = now_ms();
    }
    if (jobs > 1 && !write_parallel(fd, wbuf, chunk, chunk_end, i, jobs)) return 1;
    for (uint64_t off = chunk; off < chunk_end; ++i) {
      size_t len = (size_t)min_u64(kRequestSizes[i % kNumRequestSizes], chunk_end - off);
      if (jobs <= 1 && !full_pwrite(fd, wbuf + (off - chunk), len, off)) return 1;
      off += len;
      ++requests;
    }
  }
  free(wbuf);
  if (!do_fsync(fd, "write")) return 1;
  double t1 = now_ms();

  phase("read");
  // Read pass: the rotation runs the other way and starts at 1M, so no read request
  // coincides with a write request except by accident of size.
  for (uint64_t off = 0, i = 0; off < size; ++i) {
    size_t len =
        (size_t)min_u64(kRequestSizes[kNumRequestSizes - 1 - i % kNumRequestSizes], size - off);
    if (!full_pread(fd, buf, len, off, "read")) return 1;
    for (size_t s = 0; s < len / kSector; ++s) {
      if (!check_sector("verify", buf + s * kSector, seed, off / kSector + s, kExpectPattern, NULL))
        return 1;
    }
    off += len;
    ++requests;
  }
  double t2 = now_ms();

  phase("discard");
  // Discard: the device may drop the data or keep it; either is allowed, garbage is not.
  const char* discard_state;
  uint64_t range[2] = {l.discard_lba * kSector, (uint64_t)kRangeSectors * kSector};
  if (ioctl(fd, BLKDISCARD, range) != 0) {
    if (errno != EOPNOTSUPP) {
      printf("%s FAIL stage=discard errno=%d (%s)\n", g_tag, errno, strerror(errno));
      return 1;
    }
    discard_state = "unsupported";
    if (!read_and_check(fd, buf, seed, l.discard_lba, kRangeSectors, kExpectPattern,
                        "discard-unsupported", NULL))
      return 1;
  } else {
    if (!do_fsync(fd, "discard")) return 1;
    uint64_t zeroed = 0;
    if (!read_and_check(fd, buf, seed, l.discard_lba, kRangeSectors, kExpectPatternOrZero,
                        "discard", &zeroed))
      return 1;
    discard_state = zeroed == kRangeSectors ? "zeroed" : zeroed == 0 ? "kept" : "mixed";
  }
  if (!check_neighbours(fd, buf, seed, &l, l.discard_lba, kRangeSectors, "discard-neighbour"))
    return 1;

  // Zero-out: must read back as zeroes, whether the device does WRITE_ZEROES or the kernel
  // emulates it with writes of zero pages.
  char wz_max[32];
  bool wz_known = read_sysfs(device, "queue/write_zeroes_max_bytes", wz_max, sizeof wz_max);
  const char* zeroout_kind = !wz_known ? "unknown" : strcmp(wz_max, "0") == 0 ? "emulated" : "device";
  range[0] = l.zero_lba * kSector;
  range[1] = (uint64_t)kZeroSectors * kSector;
  if (ioctl(fd, BLKZEROOUT, range) != 0) {
    printf("%s FAIL stage=zeroout errno=%d (%s)\n", g_tag, errno, strerror(errno));
    return 1;
  }
  if (!do_fsync(fd, "zeroout")) return 1;
  if (!read_and_check(fd, buf, seed, l.zero_lba, kZeroSectors, kExpectZero, "zeroout", NULL) ||
      !check_neighbours(fd, buf, seed, &l, l.zero_lba, kZeroSectors, "zeroout-neighbour"))
    return 1;

  close(fd);
  free(buf);
  printf("%s PASS bytes=%" PRIu64 " seed=%" PRIu64 " requests=%" PRIu64
         " flush=%s discard=%s zeroout=%s write_ms=%.0f read_ms=%.0f\n",
         g_tag, size, seed, requests, flush, discard_state, zeroout_kind, t1 - t0, t2 - t1);
  return 0;
}

static int verify_image(const char* path, uint64_t seed, const char* discard_state) {
  g_tag = "BLKVERIFY";
  enum Expect discard_expect;
  if (strcmp(discard_state, "zeroed") == 0) {
    discard_expect = kExpectZero;
  } else if (strcmp(discard_state, "kept") == 0 || strcmp(discard_state, "unsupported") == 0) {
    discard_expect = kExpectPattern;
  } else if (strcmp(discard_state, "mixed") == 0) {
    discard_expect = kExpectPatternOrZero;
  } else {
    printf("%s FAIL stage=usage reason=bad-discard-state value=%s\n", g_tag, discard_state);
    return 1;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    printf("%s FAIL stage=open image=%s errno=%d (%s)\n", g_tag, path, errno, strerror(errno));
    return 1;
  }
  uint64_t size = (uint64_t)st.st_size;
  if (size < kMinDiskBytes || size % kAlign != 0) {
    printf("%s FAIL stage=size got=%" PRIu64 "\n", g_tag, size);
    return 1;
  }
  const struct Layout l = layout_for(size);
  unsigned char* buf = malloc(kMaxRequest);
  if (buf == NULL) {
    printf("%s FAIL stage=alloc\n", g_tag);
    return 1;
  }
  uint64_t zeroed = 0;
  for (uint64_t lba = 0; lba < l.sectors;) {
    uint64_t n = min_u64(kMaxRequest / kSector, l.sectors - lba);
    if (!full_pread(fd, buf, n * kSector, lba * kSector, "read")) return 1;
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t s = lba + i;
      enum Expect e = kExpectPattern;
      if (s >= l.discard_lba && s < l.discard_lba + kRangeSectors) e = discard_expect;
      if (s >= l.zero_lba && s < l.zero_lba + kZeroSectors) e = kExpectZero;
      if (!check_sector("image", buf + i * kSector, seed, s, e, &zeroed)) return 1;
    }
    lba += n;
  }
  close(fd);
  free(buf);
  printf("%s PASS image=%s bytes=%" PRIu64 " seed=%" PRIu64 " discard=%s\n", g_tag, path, size,
         seed, discard_state);
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: blkcheck --device DEV --seed N [--expect-size BYTES] [--jobs 1..64]\n"
          "       blkcheck --verify-image FILE --seed N --discard-state "
          "zeroed|kept|mixed|unsupported\n");
}

static bool parse_u64(const char* s, uint64_t* out) {
  char* end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || end == s || *end != '\0') return false;
  *out = v;
  return true;
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char* device = NULL;
  const char* image = NULL;
  const char* discard_state = NULL;
  uint64_t seed = 0, expect_size = 0, jobs = 1;
  bool have_seed = false;
  // Every option takes a value.
  for (int i = 1; i < argc; i += 2) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL) {
      usage();
      return 2;
    }
    if (strcmp(a, "--device") == 0) {
      device = v;
    } else if (strcmp(a, "--verify-image") == 0) {
      image = v;
    } else if (strcmp(a, "--discard-state") == 0) {
      discard_state = v;
    } else if (strcmp(a, "--seed") == 0) {
      if (!parse_u64(v, &seed)) {
        usage();
        return 2;
      }
      have_seed = true;
    } else if (strcmp(a, "--jobs") == 0) {
      if (!parse_u64(v, &jobs) || jobs < 1 || jobs > kMaxJobs) {
        usage();
        return 2;
      }
    } else if (strcmp(a, "--expect-size") == 0) {
      if (!parse_u64(v, &expect_size)) {
        usage();
        return 2;
      }
    } else {
      usage();
      return 2;
    }
  }
  if (!have_seed || (device == NULL) == (image == NULL) || (image && !discard_state)) {
    usage();
    return 2;
  }
  return image ? verify_image(image, seed, discard_state) : run_guest(device, seed, expect_size, jobs);
}
