// libFuzzer target: IoAddressSpace + PagingDomain against the reference
// model, with operation sequences decoded from the input.
//
// Every byte of the input steers one decision of IoasModelHarness (the same
// operation generator as tests/iommu/ioas_model_test.cc): which IOAS, which
// operation, lengths, sources, fixed IOVAs, ranges, devices. Each operation
// runs on the implementation and on the model and the results must agree;
// after each one, two translations per IOAS are compared with the model's
// mappings, and at the end every mapping, usable range and page-table leaf.
// A disagreement prints the operation and aborts.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include "../tests/support/ioas_model_harness.h"

namespace {

constexpr int kMaxOps = 256;

[[noreturn]] void mismatch(const std::string& what) {
  std::fprintf(stderr, "ioas_fuzz: implementation and model disagree: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vdma::testing::IoasModelHarness h;
  vdma::testing::ByteChoices src(std::span<const uint8_t>(data, size));
  for (int i = 0; i < kMaxOps && !src.exhausted(); ++i) {
    if (auto bad = h.step(src)) mismatch(*bad);
    if (auto bad = h.sample(src, 2)) mismatch(h.last_op() + " then " + *bad);
  }
  if (auto bad = h.check_full()) mismatch(*bad);
  return 0;
}
