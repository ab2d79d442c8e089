#include "vdma/dma/topology.h"

#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "vdma/dma/bus_translation.h"

namespace vdma {

using nlohmann::json;

std::string_view to_string(DeviceDmaKind k) noexcept {
  switch (k) {
    case DeviceDmaKind::kBypass: return "bypass";
    case DeviceDmaKind::kDirect: return "direct";
    case DeviceDmaKind::kRestricted: return "restricted";
    case DeviceDmaKind::kIommu: return "iommu";
  }
  return "invalid";
}

std::string_view to_string(DmaQuirk q) noexcept {
  switch (q) {
    case DmaQuirk::kNone: return "none";
    case DmaQuirk::kUseDmaApi: return "use_dma_api";
    case DmaQuirk::kDeclineAccessPlatform: return "decline_access_platform";
  }
  return "invalid";
}

std::string DeviceTopology::path() const { return fmt::format("devices[{}] ({})", index, id); }

const DeviceTopology* PlatformTopology::find(std::string_view id) const noexcept {
  for (const DeviceTopology& d : devices) {
    if (d.id == id) return &d;
  }
  return nullptr;
}

namespace {

Error bad(const std::string& path, std::string reason) {
  return Error(DmaErrc::kInvalidConfig, fmt::format("{}: {}", path, reason));
}

// A JSON value with the path that leads to it ("devices[2].dma_mask").
class Node {
 public:
  Node(const json& j, std::string path) : j_(j), path_(std::move(path)) {}

  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] const json& value() const noexcept { return j_; }
  [[nodiscard]] std::string child_path(std::string_view key) const {
    return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
  }

  // An object whose fields are all in `allowed`.
  [[nodiscard]] Result<void> object(std::initializer_list<std::string_view> allowed) const {
    if (!j_.is_object()) return bad(where(), fmt::format("expected an object, got {}", j_.type_name()));
    for (const auto& [key, v] : j_.items()) {
      bool known = false;
      for (std::string_view a : allowed) known = known || a == key;
      if (!known) return bad(child_path(key), "unknown field");
    }
    return ok();
  }

  [[nodiscard]] bool has(std::string_view key) const { return j_.contains(key); }
  [[nodiscard]] Node child(std::string_view key) const { return Node(j_.at(key), child_path(key)); }

  [[nodiscard]] Result<Node> required(std::string_view key) const {
    if (!has(key)) return bad(child_path(key), "required field is missing");
    return child(key);
  }

  [[nodiscard]] Result<uint64_t> required_u64(std::string_view key) const {
    if (!has(key)) return bad(child_path(key), "required field is missing");
    return child(key).u64();
  }
  [[nodiscard]] Result<std::string> required_string(std::string_view key) const {
    if (!has(key)) return bad(child_path(key), "required field is missing");
    return child(key).string();
  }

  [[nodiscard]] Result<uint64_t> u64() const {
    if (j_.is_number_unsigned()) return j_.get<uint64_t>();
    if (j_.is_number_integer()) return bad(where(), fmt::format("{} is negative", j_.get<int64_t>()));
    if (j_.is_string()) {
      const std::string& s = j_.get_ref<const std::string&>();
      const bool hex = s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
      const char* first = s.data() + (hex ? 2 : 0);
      const char* last = s.data() + s.size();
      uint64_t v = 0;
      auto [ptr, ec] = std::from_chars(first, last, v, hex ? 16 : 10);
      if (ec == std::errc::result_out_of_range) return bad(where(), fmt::format("\"{}\" does not fit in 64 bits", s));
      if (ec != std::errc() || ptr != last || first == last) {
        return bad(where(), fmt::format("\"{}\" is not a number (use decimal or \"0x...\")", s));
      }
      return v;
    }
    return bad(where(), fmt::format("expected an unsigned integer or a \"0x...\" string, got {}", j_.type_name()));
  }

  [[nodiscard]] Result<bool> boolean() const {
    if (!j_.is_boolean()) return bad(where(), fmt::format("expected true or false, got {}", j_.type_name()));
    return j_.get<bool>();
  }

  [[nodiscard]] Result<std::string> string() const {
    if (!j_.is_string()) return bad(where(), fmt::format("expected a string, got {}", j_.type_name()));
    return j_.get<std::string>();
  }

  [[nodiscard]] Result<size_t> array_size() const {
    if (!j_.is_array()) return bad(where(), fmt::format("expected an array, got {}", j_.type_name()));
    return j_.size();
  }
  [[nodiscard]] Node element(size_t i) const { return Node(j_.at(i), fmt::format("{}[{}]", path_, i)); }

 private:
  [[nodiscard]] std::string where() const { return path_.empty() ? std::string("(top level)") : path_; }

  const json& j_;
  std::string path_;
};

Result<AddrRange<Gpa>> parse_window(const Node& n, std::initializer_list<std::string_view> extra_fields = {}) {
  std::vector<std::string_view> allowed{"base", "size"};
  allowed.insert(allowed.end(), extra_fields.begin(), extra_fields.end());
  if (!n.value().is_object()) return bad(n.path(), fmt::format("expected an object, got {}", n.value().type_name()));
  for (const auto& [key, v] : n.value().items()) {
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) return bad(n.child_path(key), "unknown field");
  }
  const uint64_t base = VDMA_TRY(n.required_u64("base"));
  const uint64_t size = VDMA_TRY(n.required_u64("size"));
  if (size == 0) return bad(n.child_path("size"), "must not be 0");
  if (!fits(Gpa{base}, size)) return bad(n.path(), fmt::format("base {:#x} + size {:#x} wraps past 2^64", base, size));
  return AddrRange<Gpa>{Gpa{base}, size};
}

Result<PoolSpec> parse_pool(const Node& n, bool allow_growth) {
  PoolSpec spec;
  if (allow_growth) {
    spec.window = VDMA_TRY(parse_window(n, {"areas", "growth"}));
  } else {
    spec.window = VDMA_TRY(parse_window(n, {"areas"}));
  }
  if (n.has("areas")) {
    const uint64_t areas = VDMA_TRY(n.child("areas").u64());
    if (areas > 65536) return bad(n.child_path("areas"), fmt::format("{} is more than 65536", areas));
    spec.areas = static_cast<uint32_t>(areas);
  }
  if (allow_growth && n.has("growth")) {
    const Node g = n.child("growth");
    spec.growth_window = VDMA_TRY(parse_window(g, {"pool_size"}));
    spec.growth_pool_size = VDMA_TRY(g.required_u64("pool_size"));
    if (spec.growth_pool_size == 0 || spec.growth_pool_size > spec.growth_window.len) {
      return bad(g.child_path("pool_size"),
                 fmt::format("{:#x} must be non-zero and at most the growth window size {:#x}", spec.growth_pool_size,
                             spec.growth_window.len));
    }
  }
  return spec;
}

Result<DeviceDmaKind> parse_kind(const Node& n) {
  const std::string s = VDMA_TRY(n.string());
  if (s == "bypass") return DeviceDmaKind::kBypass;
  if (s == "direct") return DeviceDmaKind::kDirect;
  if (s == "restricted") return DeviceDmaKind::kRestricted;
  if (s == "iommu") return DeviceDmaKind::kIommu;
  return bad(n.path(), fmt::format("\"{}\" is not one of bypass, direct, restricted, iommu", s));
}

Result<NotifyFlushKind> parse_notify_flush(const Node& n) {
  const std::string s = VDMA_TRY(n.string());
  if (s == "none") return NotifyFlushKind::kNone;
  if (s == "write_combining") return NotifyFlushKind::kWriteCombining;
  return bad(n.path(), fmt::format("\"{}\" is not one of none, write_combining", s));
}

Result<DmaQuirk> parse_quirk(const Node& n) {
  const std::string s = VDMA_TRY(n.string());
  if (s == "none") return DmaQuirk::kNone;
  if (s == "use_dma_api") return DmaQuirk::kUseDmaApi;
  if (s == "decline_access_platform") return DmaQuirk::kDeclineAccessPlatform;
  return bad(n.path(), fmt::format("\"{}\" is not one of none, use_dma_api, decline_access_platform", s));
}

// Which optional fields each kind accepts.
bool field_allowed(DeviceDmaKind kind, std::string_view field) {
  using K = DeviceDmaKind;
  if (field == "offset_ranges" || field == "encryption_bit") return kind == K::kDirect || kind == K::kRestricted;
  if (field == "force_bounce") return kind == K::kDirect;
  if (field == "restricted_pool") return kind == K::kRestricted;
  if (field == "iommu_domain") return kind == K::kIommu;
  if (field == "min_align_mask") return kind != K::kBypass;
  return true;
}

Result<DeviceTopology> parse_device(const Node& n, size_t index) {
  VDMA_TRY(n.object({"id", "kind", "offset_ranges", "encryption_bit", "dma_mask", "coherent", "force_bounce",
                     "min_align_mask", "restricted_pool", "iommu_domain", "quirk", "flush_before_notify"}));
  DeviceTopology d;
  d.index = index;
  d.id = VDMA_TRY(n.required_string("id"));
  if (d.id.empty()) return bad(n.child_path("id"), "must not be empty");
  const Node kind = VDMA_TRY(n.required("kind"));
  d.kind = VDMA_TRY(parse_kind(kind));
  for (const auto& [key, v] : n.value().items()) {
    if (!field_allowed(d.kind, key)) {
      return bad(n.child_path(key), fmt::format("not valid for kind \"{}\"", to_string(d.kind)));
    }
  }
  if (n.has("offset_ranges")) {
    const Node arr = n.child("offset_ranges");
    const size_t count = VDMA_TRY(arr.array_size());
    if (count == 0) return bad(arr.path(), "must list at least one range (omit the field for dma == gpa)");
    for (size_t i = 0; i < count; ++i) {
      const Node r = arr.element(i);
      VDMA_TRY(r.object({"cpu_start", "dma_start", "size"}));
      OffsetRange o;
      o.cpu = Gpa{VDMA_TRY(r.required_u64("cpu_start"))};
      o.dma = DmaAddr{VDMA_TRY(r.required_u64("dma_start"))};
      o.size = VDMA_TRY(r.required_u64("size"));
      d.offset_ranges.push_back(o);
    }
  }
  if (n.has("encryption_bit")) {
    const uint64_t bit = VDMA_TRY(n.child("encryption_bit").u64());
    if (bit < 1 || bit > 63) return bad(n.child_path("encryption_bit"), fmt::format("{} is outside 1..63", bit));
    d.encryption_bit = static_cast<unsigned>(bit);
  }
  if (n.has("dma_mask")) {
    d.dma_mask = VDMA_TRY(n.child("dma_mask").u64());
    if (!is_valid_dma_mask(d.dma_mask)) {
      return bad(n.child_path("dma_mask"), fmt::format("{:#x} is not of the form 2^n-1 with 12 <= n <= 64", d.dma_mask));
    }
  }
  if (n.has("coherent")) d.coherent = VDMA_TRY(n.child("coherent").boolean());
  if (n.has("force_bounce")) d.force_bounce = VDMA_TRY(n.child("force_bounce").boolean());
  if (n.has("min_align_mask")) {
    d.min_align_mask = VDMA_TRY(n.child("min_align_mask").u64());
    if ((d.min_align_mask & (d.min_align_mask + 1)) != 0 || d.min_align_mask >= (uint64_t{1} << 17)) {
      return bad(n.child_path("min_align_mask"),
                 fmt::format("{:#x} is not of the form 2^n-1 below 128 KiB", d.min_align_mask));
    }
  }
  if (n.has("restricted_pool")) d.restricted_pool = VDMA_TRY(parse_pool(n.child("restricted_pool"), false));
  if (n.has("iommu_domain")) {
    const uint64_t dom = VDMA_TRY(n.child("iommu_domain").u64());
    if (dom > UINT32_MAX) return bad(n.child_path("iommu_domain"), fmt::format("{} does not fit in 32 bits", dom));
    d.iommu_domain = static_cast<uint32_t>(dom);
  }
  if (n.has("quirk")) d.quirk = VDMA_TRY(parse_quirk(n.child("quirk")));
  if (n.has("flush_before_notify")) d.notify_flush = VDMA_TRY(parse_notify_flush(n.child("flush_before_notify")));

  if (d.kind == DeviceDmaKind::kRestricted && !d.restricted_pool) {
    return bad(n.child_path("restricted_pool"), "required field is missing (kind \"restricted\")");
  }
  if (d.kind == DeviceDmaKind::kIommu && !d.iommu_domain) {
    return bad(n.child_path("iommu_domain"), "required field is missing (kind \"iommu\")");
  }
  if (d.kind == DeviceDmaKind::kDirect || d.kind == DeviceDmaKind::kRestricted) {
    auto bus = BusTranslation::create({d.offset_ranges, d.encryption_bit, d.dma_mask});
    if (!bus) return bad(n.child_path("offset_ranges"), bus.error().message());
  }
  return d;
}

}  // namespace

Result<PlatformTopology> parse_topology(std::string_view text) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::parse_error& e) {
    return make_error(DmaErrc::kInvalidConfig, "topology: JSON syntax error at byte {}: {}", e.byte, e.what());
  }
  const Node root(doc, "");
  VDMA_TRY(root.object({"restricted_memory_access", "coherent_pool", "swiotlb", "devices"}));
  PlatformTopology t;
  if (root.has("restricted_memory_access")) {
    t.restricted_memory_access = VDMA_TRY(root.child("restricted_memory_access").boolean());
  }
  if (root.has("coherent_pool")) t.coherent_pool = VDMA_TRY(parse_window(root.child("coherent_pool")));
  if (root.has("swiotlb")) t.swiotlb = VDMA_TRY(parse_pool(root.child("swiotlb"), true));
  const Node devices = VDMA_TRY(root.required("devices"));
  const size_t count = VDMA_TRY(devices.array_size());
  for (size_t i = 0; i < count; ++i) {
    DeviceTopology d = VDMA_TRY(parse_device(devices.element(i), i));
    if (const DeviceTopology* other = t.find(d.id); other != nullptr) {
      return bad(fmt::format("devices[{}].id", i), fmt::format("\"{}\" is already used by devices[{}]", d.id, other->index));
    }
    const std::string at = fmt::format("devices[{}]", i);
    if (t.restricted_memory_access) {
      if (d.kind == DeviceDmaKind::kBypass) {
        return bad(at + ".kind",
                   "\"bypass\" is not allowed with restricted_memory_access: the device would be handed private memory");
      }
      if (d.kind == DeviceDmaKind::kDirect && !d.force_bounce) {
        return bad(at + ".force_bounce",
                   "must be true with restricted_memory_access: a direct device reaches shared memory only");
      }
    }
    if (d.force_bounce && !t.swiotlb) return bad(at + ".force_bounce", "needs the top-level \"swiotlb\" pool");
    if ((d.kind == DeviceDmaKind::kBypass || d.kind == DeviceDmaKind::kDirect) && !t.coherent_pool) {
      return bad("coherent_pool", fmt::format("required by {} (kind \"{}\") for its rings", at, to_string(d.kind)));
    }
    t.devices.push_back(std::move(d));
  }
  return t;
}

Result<PlatformTopology> load_topology(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return system_error(fmt::format("open topology {}", path.string()), errno);
  std::ostringstream buf;
  buf << in.rdbuf();
  auto t = parse_topology(buf.str());
  if (!t) return std::move(t).error().with_context(path.string());
  return t;
}

}  // namespace vdma
