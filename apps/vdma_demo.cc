// vdma-demo: moves data through a driver-side and a device-side virtqueue in
// every ring format, in one process over shared guest memory, and prints what
// happened. The later vdma-blk / vdma-bench programs replace it as the demo.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "vdma/base/log.h"
#include "vdma/dma/dma_ops.h"
#include "vdma/mem/region_table.h"
#include "vdma/virtio/device_queue.h"
#include "vdma/virtio/driver_queue.h"
#include "vdma/virtio/features.h"

namespace {

using namespace vdma;

struct Options {
  uint64_t chains = 20000;
  uint16_t queue_size = 256;
  uint32_t segment_bytes = 4096;
  std::vector<std::string> formats{"split", "packed"};
  bool indirect = true;
  bool event_idx = true;
};

struct Report {
  uint64_t chains = 0;
  uint64_t bytes_to_device = 0;
  uint64_t bytes_from_device = 0;
  uint64_t kicks = 0;
  uint64_t interrupts = 0;
  uint64_t mismatches = 0;
  double seconds = 0;
};

constexpr uint64_t kRingWindow = 4 << 20;
constexpr uint64_t kDataBase = 8 << 20;

// One request = a readable segment the device reads and a writable segment of
// the same size the device fills with the bitwise complement.
Result<Report> run(RingFormat format, const Options& opt) {
  const uint64_t slots = opt.queue_size;
  const uint64_t data_size = align_up(2 * slots * opt.segment_bytes, 4096);
  auto mem = VDMA_TRY(GuestMemory::create({{Gpa{0}, kRingWindow, MemAttr::kShared, "rings"},
                                           {Gpa{kDataBase}, data_size, MemAttr::kPrivate, "data"}}));
  IdentityDmaOps dma(*mem, {Gpa{0}, kRingWindow});
  RegionTable dev_mem = RegionTable::bypass(*mem);
  uint64_t features = feature_bit(kFeatureVersion1);
  if (opt.indirect) features |= feature_bit(kFeatureIndirectDesc);
  if (opt.event_idx) features |= feature_bit(kFeatureEventIdx);
  const QueueConfig cfg{.size = opt.queue_size, .features = features};
  auto drv = VDMA_TRY(make_driver_queue(format, dma, cfg));
  auto dev = VDMA_TRY(make_device_queue(format, dev_mem, cfg, drv->ring_addresses()));

  // Slot i owns a readable and a writable buffer; its cookie is i.
  auto in_gpa = [&](uint64_t i) { return Gpa{kDataBase + 2 * i * opt.segment_bytes}; };
  auto out_gpa = [&](uint64_t i) { return Gpa{kDataBase + (2 * i + 1) * opt.segment_bytes}; };
  std::vector<uint64_t> free_slots;
  for (uint64_t i = 0; i < slots; ++i) free_slots.push_back(i);
  std::vector<uint8_t> seed(slots);
  std::mt19937 rng(1);
  std::vector<std::byte> buf(opt.segment_bytes);

  Report rep;
  DescriptorChain chain;
  uint64_t submitted = 0;
  const auto start = std::chrono::steady_clock::now();
  while (rep.chains < opt.chains) {
    // Driver: fill the queue.
    while (submitted < opt.chains && !free_slots.empty() && drv->num_free() >= 2) {
      const uint64_t s = free_slots.back();
      seed[s] = static_cast<uint8_t>(rng());
      for (uint32_t k = 0; k < opt.segment_bytes; ++k) buf[k] = std::byte(static_cast<uint8_t>(seed[s] + k));
      VDMA_TRY(mem->write(in_gpa(s), buf));
      const DriverSegment segs[] = {{.addr = in_gpa(s), .len = opt.segment_bytes, .type = BufferType::kDeviceReadable},
                                    {.addr = out_gpa(s), .len = opt.segment_bytes, .type = BufferType::kDeviceWritable}};
      VDMA_TRY(drv->add(segs, s));
      free_slots.pop_back();
      ++submitted;
    }
    if (drv->kick_prepare()) ++rep.kicks;
    // Device: serve everything available.
    while (VDMA_TRY(dev->pop(chain))) {
      if (chain.error) return *chain.error;
      uint64_t done = 0;
      size_t wi = 0, woff = 0;
      for (const Fragment& r : chain.readable) {
        for (uint64_t k = 0; k < r.len && wi < chain.writable.size(); ++k) {
          chain.writable[wi].host[woff] = ~r.host[k];
          ++done;
          if (++woff == chain.writable[wi].len) ++wi, woff = 0;
        }
      }
      rep.bytes_to_device += chain.readable_len;
      VDMA_TRY(dev->push_used(chain, static_cast<uint32_t>(done)));
    }
    if (dev->should_notify()) ++rep.interrupts;
    // Driver: collect and verify.
    while (auto used = VDMA_TRY(drv->get_used())) {
      const uint64_t s = used->cookie;
      VDMA_TRY(mem->read(out_gpa(s), buf));
      for (uint32_t k = 0; k < opt.segment_bytes; ++k) {
        if (buf[k] != ~std::byte(static_cast<uint8_t>(seed[s] + k))) {
          ++rep.mismatches;
          break;
        }
      }
      rep.bytes_from_device += used->len;
      free_slots.push_back(s);
      ++rep.chains;
    }
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return rep;
}

}  // namespace

int main(int argc, char** argv) {
  vdma::log::init();
  Options opt;
  std::string log_level;
  CLI::App app{
      "vdma-demo: moves data through a driver-side and a device-side virtqueue (split and packed rings)\n"
      "in one process over memfd-backed guest memory, verifies every byte, and prints what it did."};
  app.add_option("--chains", opt.chains, "requests per ring format")->check(CLI::Range(uint64_t{1}, uint64_t{1} << 32))
      ->capture_default_str();
  app.add_option("--queue-size", opt.queue_size, "descriptors per queue (a power of two for split)")
      ->check(CLI::Range(1, 32768))
      ->capture_default_str();
  app.add_option("--segment-bytes", opt.segment_bytes, "bytes per readable and per writable segment")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--format", opt.formats, "ring formats to run")
      ->check(CLI::IsMember({"split", "packed"}))
      ->capture_default_str();
  app.add_flag("!--no-indirect", opt.indirect, "do not negotiate INDIRECT_DESC");
  app.add_flag("!--no-event-idx", opt.event_idx, "do not negotiate EVENT_IDX");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off (default: $VDMA_LOG or info)");
  CLI11_PARSE(app, argc, argv);
  if (!log_level.empty()) {
    if (auto r = vdma::log::set_level(log_level); !r) {
      fmt::print(stderr, "vdma-demo: {}\n", r.error().message());
      return 2;
    }
  }

  fmt::print("vdma-demo: {} requests per format, queue size {}, {} B in + {} B out per request, indirect {}, event-idx {}\n",
             opt.chains, opt.queue_size, opt.segment_bytes, opt.segment_bytes, opt.indirect ? "on" : "off",
             opt.event_idx ? "on" : "off");
  fmt::print("{:<8} {:>10} {:>12} {:>12} {:>8} {:>11} {:>10} {:>9}  {}\n", "ring", "requests", "to device", "from device",
             "kicks", "interrupts", "req/s", "MB/s", "verify");
  int rc = 0;
  for (const std::string& name : opt.formats) {
    const vdma::RingFormat format = name == "split" ? vdma::RingFormat::kSplit : vdma::RingFormat::kPacked;
    auto rep = run(format, opt);
    if (!rep) {
      fmt::print(stderr, "vdma-demo: {} ring failed: {}\n", name, rep.error());
      rc = 1;
      continue;
    }
    const double mb = static_cast<double>(rep->bytes_to_device + rep->bytes_from_device) / 1e6;
    fmt::print("{:<8} {:>10} {:>12} {:>12} {:>8} {:>11} {:>10.0f} {:>9.1f}  {}\n", name, rep->chains, rep->bytes_to_device,
               rep->bytes_from_device, rep->kicks, rep->interrupts, static_cast<double>(rep->chains) / rep->seconds,
               mb / rep->seconds, rep->mismatches == 0 ? "ok" : fmt::format("{} MISMATCHES", rep->mismatches));
    if (rep->mismatches != 0) rc = 1;
  }
  return rc;
}
