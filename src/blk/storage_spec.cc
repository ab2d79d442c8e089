// Parsing of --blk-file specs and sizes, and the open_storage() dispatcher.
#include <charconv>
#include <limits>

#include "storage_impl.h"
#include "vdma/blk/virtio_blk.h"

namespace vdma::blk {

Result<uint64_t> parse_size(std::string_view text) {
  if (text.empty()) return make_error(BlkErrc::kInvalidSpec, "empty size");
  unsigned shift = 0;
  std::string_view digits = text;
  switch (text.back()) {
    case 'K': case 'k': shift = 10; break;
    case 'M': case 'm': shift = 20; break;
    case 'G': case 'g': shift = 30; break;
    case 'T': case 't': shift = 40; break;
    default: break;
  }
  if (shift != 0) digits.remove_suffix(1);
  uint64_t value = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) {
    return make_error(BlkErrc::kInvalidSpec, "size '{}' is not a number with an optional K/M/G/T suffix", text);
  }
  if (shift != 0 && value > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return make_error(BlkErrc::kInvalidSpec, "size '{}' overflows 64 bits", text);
  }
  return value << shift;
}

Result<StorageSpec> parse_storage_spec(std::string_view spec) {
  constexpr std::string_view kNullPrefix = "null:";
  if (spec.empty()) return make_error(BlkErrc::kInvalidSpec, "empty --blk-file spec");
  if (!spec.starts_with(kNullPrefix)) return StorageSpec{.kind = StorageSpec::Kind::kFile, .path = std::string(spec)};
  auto size = parse_size(spec.substr(kNullPrefix.size()));
  if (!size) return make_error(BlkErrc::kInvalidSpec, "'{}': {}", spec, size.error().message());
  if (*size == 0 || *size % kSectorSize != 0) {
    return make_error(BlkErrc::kInvalidSpec, "'{}': null disk size {} is not a non-zero multiple of 512", spec, *size);
  }
  return StorageSpec{.kind = StorageSpec::Kind::kNull, .null_size = *size};
}

Result<std::unique_ptr<StorageBackend>> open_storage(const StorageSpec& spec, const StorageOptions& options) {
  if (spec.kind == StorageSpec::Kind::kNull) {
    if (spec.null_size == 0 || spec.null_size % kSectorSize != 0) {
      return make_error(BlkErrc::kInvalidSpec, "null disk size {} is not a non-zero multiple of 512", spec.null_size);
    }
    return make_null_storage(spec.null_size, options.read_only);
  }
  return open_file_storage(spec.path, options);
}

}  // namespace vdma::blk
