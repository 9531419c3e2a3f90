// resq_config.json of a packed checkpoint: CheckpointMeta <-> JSON with strict validation (every
// key, type and range; unknown keys are errors) and the size summary (docs/FORMAT.md 2.2).
#include <set>
#include <string>

#include "resq/common/error.h"
#include "resq/format/checkpoint.h"

namespace resq::format {
using nlohmann::json;

namespace {

// Strict JSON field access: every accessor names the file and the key path on error.
class Fields {
 public:
  Fields(const json& j, std::string source, std::string path) : j_(j), source_(std::move(source)), path_(std::move(path)) {
    if (!j_.is_object()) fail(path_, "expected an object");
  }
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw FormatError(source_ + ": '" + key + "': " + what);
  }
  std::string key(const std::string& k) const { return path_.empty() ? k : path_ + "." + k; }
  const json& at(const std::string& k) const {
    used_.insert(k);
    auto it = j_.find(k);
    if (it == j_.end()) fail(key(k), "missing");
    return *it;
  }
  bool has(const std::string& k) const { return j_.contains(k); }
  int64_t integer(const std::string& k, int64_t lo, int64_t hi) const {
    const json& v = at(k);
    if (!v.is_number_integer()) fail(key(k), "expected an integer");
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi) fail(key(k), "value " + std::to_string(x) + " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
  }
  double number(const std::string& k, double lo, double hi) const {
    const json& v = at(k);
    if (!v.is_number()) fail(key(k), "expected a number");
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi)) fail(key(k), "value " + std::to_string(x) + " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
  }
  bool boolean(const std::string& k) const {
    const json& v = at(k);
    if (!v.is_boolean()) fail(key(k), "expected true or false");
    return v.get<bool>();
  }
  std::string string(const std::string& k) const {
    const json& v = at(k);
    if (!v.is_string()) fail(key(k), "expected a string");
    return v.get<std::string>();
  }
  Fields object(const std::string& k) const { return Fields(at(k), source_, key(k)); }
  // Unknown keys are errors: a misspelled field must not be silently ignored.
  void no_unknown_keys() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (!used_.count(it.key())) fail(key(it.key()), "unknown key");
    }
  }

 private:
  const json& j_;
  std::string source_;
  std::string path_;
  mutable std::set<std::string> used_;
};

}  // namespace

// ------------------------------------------------------------------ sizes

double CheckpointSizes::bits_per_quantized_weight() const {
  if (quantized_weights == 0) return 0.0;
  return 8.0 * static_cast<double>(packed_weight_bytes + packed_scale_bytes) / static_cast<double>(quantized_weights);
}

double CheckpointSizes::compression_vs_bf16() const {
  if (file_bytes == 0) return 0.0;
  return 2.0 * static_cast<double>(parameters) / static_cast<double>(file_bytes);
}

// ------------------------------------------------------------------ metadata

json CheckpointMeta::to_json() const {
  json sites_json = json::object();
  for (const auto& [kind, s] : sites) {
    json high = {{"rule", high_rule_name(s.high_rule)}, {"count", s.high_count}};
    if (s.high_rule == HighRule::kPerHead) high["group"] = s.high_group;
    sites_json[site_name(kind)] = {
        {"out_features", s.N},
        {"in_features", s.K},
        {"high", high},
        {"bias", s.has_bias},
        {"storage", s.storage == LinearStorage::kPacked ? "packed" : "dense"},
        {"weight_bits", {{"low", s.weight_bits_low}, {"high", s.weight_bits_high}}},
        {"activations",
         {{"enabled", s.activations.enabled},
          {"bits_low", s.activations.bits_low},
          {"bits_high", s.activations.bits_high},
          {"clip_ratio", s.activations.clip_ratio},
          {"high_count", s.activations.high_count}}}};
  }
  json online_json = {{"qk_rotation", online.qk_rotation}, {"down_hadamard", online.down_hadamard}};
  if (online.down_hadamard) {
    online_json["hadamard"] = {{"n", online.hadamard_n},
                               {"pow2", online.hadamard_pow2},
                               {"block", online.hadamard_block},
                               {"construction", online.hadamard_construction}};
  }
  return {{"format", kCheckpointFormatName},
          {"format_version", format_version},
          {"kernel_layout_version", kernel_layout_version},
          {"nibble_order", "low_first"},
          {"r", r},
          {"r_h", r_h},
          {"globals_dtype", dtype_name(globals_dtype)},
          {"sites", sites_json},
          {"kv_cache",
           {{"enabled", kv.enabled},
            {"bits_low", kv.bits_low},
            {"bits_high", kv.bits_high},
            {"high_count", r_h},
            {"k_clip_ratio", kv.k_clip_ratio},
            {"v_clip_ratio", kv.v_clip_ratio}}},
          {"online", online_json},
          {"recipe", recipe.is_null() ? json::object() : recipe},
          {"provenance", provenance.is_null() ? json::object() : provenance}};
}

CheckpointMeta CheckpointMeta::from_json(const json& j, const ModelConfig& model, const std::string& src) {
  CheckpointMeta m;
  m.model = model;
  Fields f(j, src, "");
  const std::string name = f.string("format");
  if (name != kCheckpointFormatName) f.fail("format", "expected \"" + std::string(kCheckpointFormatName) + "\", got \"" + name + "\"");
  m.format_version = static_cast<int>(f.integer("format_version", 0, 1 << 30));
  if (m.format_version != kCheckpointVersion) {
    throw FormatError(src + ": checkpoint format_version " + std::to_string(m.format_version) + " is not supported (this resq reads version " +
                      std::to_string(kCheckpointVersion) + ")");
  }
  m.kernel_layout_version = static_cast<int>(f.integer("kernel_layout_version", 0, 1 << 30));
  if (m.kernel_layout_version != kFormatVersion) {
    throw FormatError(src + ": kernel_layout_version " + std::to_string(m.kernel_layout_version) + " is not supported (expected " +
                      std::to_string(kFormatVersion) + ")");
  }
  if (f.string("nibble_order") != "low_first") f.fail("nibble_order", "expected \"low_first\"");
  const ModelConfig& c = model;
  m.r = f.integer("r", 0, c.hidden_size);
  m.r_h = f.integer("r_h", 0, c.head_dim);
  try {
    m.globals_dtype = parse_dtype(f.string("globals_dtype"));
  } catch (const FormatError& e) {
    f.fail("globals_dtype", e.what());
  }
  if (!dtype_is_floating(m.globals_dtype) || m.globals_dtype == DType::F64) f.fail("globals_dtype", "expected F32, BF16 or F16");

  const Fields sites = f.object("sites");
  for (SiteKind kind : kAllSites) {
    const std::string sname = site_name(kind);
    const Fields s = sites.object(sname);
    SiteSpec spec;
    spec.kind = kind;
    const auto [N, K] = site_dims(c, kind);
    spec.N = s.integer("out_features", N, N);
    spec.K = s.integer("in_features", K, K);
    const Fields high = s.object("high");
    const std::string rule = high.string("rule");
    const std::optional<HighRule> parsed = parse_high_rule(rule);
    if (!parsed) high.fail(high.key("rule"), "expected \"last\" or \"per_head\", got \"" + rule + "\"");
    spec.high_rule = *parsed;
    if (spec.high_rule == HighRule::kLast) {
      spec.high_count = high.integer("count", 0, K);
    } else {
      spec.high_group = high.integer("group", 1, K);
      if (K % spec.high_group != 0) high.fail(high.key("group"), "does not divide in_features " + std::to_string(K));
      spec.high_count = high.integer("count", 0, spec.high_group);
    }
    high.no_unknown_keys();
    spec.has_bias = s.boolean("bias");
    const bool bias_expected = site_has_bias(c, kind);
    if (spec.has_bias != bias_expected) s.fail(s.key("bias"), std::string("config.json says ") + (bias_expected ? "true" : "false"));
    const std::string storage = s.string("storage");
    if (storage == "packed") {
      spec.storage = LinearStorage::kPacked;
    } else if (storage == "dense") {
      spec.storage = LinearStorage::kDense;
    } else {
      s.fail(s.key("storage"), "expected \"packed\" or \"dense\", got \"" + storage + "\"");
    }
    const Fields wb = s.object("weight_bits");
    spec.weight_bits_low = static_cast<int>(wb.integer("low", 2, 16));
    spec.weight_bits_high = static_cast<int>(wb.integer("high", 2, 16));
    wb.no_unknown_keys();
    if (spec.storage == LinearStorage::kPacked && (spec.weight_bits_low > kBits4 || spec.weight_bits_high > kBits8)) {
      s.fail(s.key("weight_bits"), "packed storage holds at most 4 (low) and 8 (high) bits");
    }
    if (spec.K4() > kMaxPartDim || spec.K8() > kMaxPartDim) s.fail(s.key("in_features"), "a part exceeds kMaxPartDim = 65536 columns");
    const Fields a = s.object("activations");
    spec.activations.enabled = a.boolean("enabled");
    spec.activations.bits_low = static_cast<int>(a.integer("bits_low", 2, 16));
    spec.activations.bits_high = static_cast<int>(a.integer("bits_high", 2, 16));
    spec.activations.clip_ratio = a.number("clip_ratio", 1e-6, 1.0);
    spec.activations.high_count = a.integer("high_count", 0, spec.high_rule == HighRule::kPerHead ? spec.high_group : K);
    a.no_unknown_keys();
    s.no_unknown_keys();
    m.sites[kind] = spec;
  }
  sites.no_unknown_keys();

  const Fields kv = f.object("kv_cache");
  m.kv.enabled = kv.boolean("enabled");
  m.kv.bits_low = static_cast<int>(kv.integer("bits_low", 2, 16));
  m.kv.bits_high = static_cast<int>(kv.integer("bits_high", 2, 16));
  if (kv.integer("high_count", 0, c.head_dim) != m.r_h) kv.fail(kv.key("high_count"), "must equal r_h");
  m.kv.k_clip_ratio = kv.number("k_clip_ratio", 1e-6, 1.0);
  m.kv.v_clip_ratio = kv.number("v_clip_ratio", 1e-6, 1.0);
  kv.no_unknown_keys();

  const Fields on = f.object("online");
  m.online.qk_rotation = on.boolean("qk_rotation");
  m.online.down_hadamard = on.boolean("down_hadamard");
  if (m.online.down_hadamard) {
    const Fields h = on.object("hadamard");
    m.online.hadamard_n = h.integer("n", c.intermediate_size, c.intermediate_size);
    m.online.hadamard_pow2 = h.integer("pow2", 1, c.intermediate_size);
    m.online.hadamard_block = h.integer("block", 1, c.intermediate_size);
    m.online.hadamard_construction = h.string("construction");
    h.no_unknown_keys();
    const int64_t p = m.online.hadamard_pow2;
    if ((p & (p - 1)) != 0) h.fail(h.key("pow2"), "must be a power of two");
    if (p * m.online.hadamard_block != m.online.hadamard_n) h.fail(h.key("block"), "pow2 x block must equal n");
  }
  on.no_unknown_keys();
  m.recipe = f.at("recipe");
  m.provenance = f.at("provenance");
  if (!m.recipe.is_object()) f.fail("recipe", "expected an object");
  if (!m.provenance.is_object()) f.fail("provenance", "expected an object");
  f.no_unknown_keys();
  return m;
}

}  // namespace resq::format
