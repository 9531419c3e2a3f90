// resq_config.json of a packed checkpoint: CheckpointMeta <-> JSON with strict validation (every
// key, type and range; unknown keys are errors) and the size summary (docs/FORMAT.md 2.2).
#include <string>

#include "resq/common/error.h"
#include "resq/common/json_fields.h"
#include "checkpoint_checksums.h"
#include "resq/format/checkpoint.h"

namespace resq::format {
using nlohmann::json;

// ------------------------------------------------------------------ sizes

double CheckpointSizes::bits_per_quantized_weight() const {
  if (quantized_weights == 0) return 0.0;
  return 8.0 * static_cast<double>(packed_weight_bytes + packed_scale_bytes) / static_cast<double>(quantized_weights);
}

double CheckpointSizes::compression_vs_bf16() const {
  if (file_bytes == 0) return 0.0;
  return 2.0 * static_cast<double>(parameters) / static_cast<double>(file_bytes);
}

json CheckpointSizes::to_json() const {
  return {{"file_bytes", file_bytes},
          {"parameters", parameters},
          {"quantized_weights", quantized_weights},
          {"packed_weight_bytes", packed_weight_bytes},
          {"packed_scale_bytes", packed_scale_bytes},
          {"dense_linear_weights", dense_linear_weights},
          {"dense_linear_bytes", dense_linear_bytes},
          {"global_bytes", global_bytes},
          {"bits_per_quantized_weight", bits_per_quantized_weight()},
          {"compression_vs_bf16", compression_vs_bf16()}};
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
  json j = {{"format", kCheckpointFormatName},
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
  if (format_minor_version >= 1) {
    j["format_minor_version"] = format_minor_version;
    j["checksums"] = checksums_to_json(checksums);
  }
  return j;
}

CheckpointMeta CheckpointMeta::from_json(const json& j, const ModelConfig& model, const std::string& src) {
  CheckpointMeta m;
  m.model = model;
  const JsonFields f(j, src, {JsonErrorKind::kFormat});
  const std::string name = f.string("format");
  if (name != kCheckpointFormatName) {
    f.fail("format", "must be \"" + std::string(kCheckpointFormatName) + "\", got \"" + name + "\"");
  }
  m.format_version = static_cast<int>(f.integer("format_version", IntRange::between(0, 1 << 30)));
  if (m.format_version != kCheckpointVersion) {
    throw FormatError(src + ": checkpoint format_version " + std::to_string(m.format_version) + " is not supported (this resq reads version " +
                      std::to_string(kCheckpointVersion) + ")");
  }
  m.kernel_layout_version = static_cast<int>(f.integer("kernel_layout_version", IntRange::between(0, 1 << 30)));
  if (m.kernel_layout_version != kFormatVersion) {
    throw FormatError(src + ": kernel_layout_version " + std::to_string(m.kernel_layout_version) + " is not supported (expected " +
                      std::to_string(kFormatVersion) + ")");
  }
  // Minor version 0 (no key) has no checksums; 1 lists one for every tensor (checkpoint_verify.cpp).
  m.format_minor_version = static_cast<int>(f.optional_integer("format_minor_version", IntRange::between(1, 1 << 30)).value_or(0));
  if (m.format_minor_version > kCheckpointMinorVersion) {
    throw FormatError(src + ": checkpoint format version 1." + std::to_string(m.format_minor_version) +
                      " is newer than this resq reads (1." + std::to_string(kCheckpointMinorVersion) + ")");
  }
  if (m.format_minor_version >= 1) m.checksums = checksums_from_json(f, "checksums");
  f.one_of("nibble_order", {"low_first"});
  const ModelConfig& c = model;
  m.r = f.integer("r", IntRange::between(0, c.hidden_size));
  m.r_h = f.integer("r_h", IntRange::between(0, c.head_dim));
  m.globals_dtype = parse_dtype(f.one_of("globals_dtype", {"F32", "BF16", "F16"}));

  const JsonFields sites = f.object("sites");
  for (SiteKind kind : kAllSites) {
    const JsonFields s = sites.object(site_name(kind));
    SiteSpec spec;
    spec.kind = kind;
    const auto [N, K] = site_dims(c, kind);
    spec.N = s.integer("out_features", IntRange::between(N, N));
    spec.K = s.integer("in_features", IntRange::between(K, K));
    const JsonFields high = s.object("high");
    spec.high_rule = *parse_high_rule(high.one_of("rule", {"last", "per_head"}));
    if (spec.high_rule == HighRule::kLast) {
      spec.high_count = high.integer("count", IntRange::between(0, K));
    } else {
      spec.high_group = high.integer("group", IntRange::between(1, K));
      if (K % spec.high_group != 0) high.fail("group", "must divide in_features " + std::to_string(K));
      spec.high_count = high.integer("count", IntRange::between(0, spec.high_group));
    }
    high.reject_unknown_keys();
    spec.has_bias = s.boolean("bias");
    const bool bias_expected = site_has_bias(c, kind);
    if (spec.has_bias != bias_expected) {
      s.fail("bias", std::string("must be ") + (bias_expected ? "true" : "false") + " as config.json says");
    }
    spec.storage = s.one_of("storage", {"packed", "dense"}) == "packed" ? LinearStorage::kPacked : LinearStorage::kDense;
    const JsonFields wb = s.object("weight_bits");
    spec.weight_bits_low = static_cast<int>(wb.integer("low", IntRange::between(2, 16)));
    spec.weight_bits_high = static_cast<int>(wb.integer("high", IntRange::between(2, 16)));
    wb.reject_unknown_keys();
    if (spec.storage == LinearStorage::kPacked && (spec.weight_bits_low > kBits4 || spec.weight_bits_high > kBits8)) {
      s.fail("weight_bits", "must be at most 4 (low) and 8 (high) bits for packed storage");
    }
    if (spec.K4() > kMaxPartDim || spec.K8() > kMaxPartDim) s.fail("in_features", "has a part over kMaxPartDim = 65536 columns");
    const JsonFields a = s.object("activations");
    spec.activations.enabled = a.boolean("enabled");
    spec.activations.bits_low = static_cast<int>(a.integer("bits_low", IntRange::between(2, 16)));
    spec.activations.bits_high = static_cast<int>(a.integer("bits_high", IntRange::between(2, 16)));
    spec.activations.clip_ratio = a.number("clip_ratio", NumberRange::closed(1e-6, 1.0));
    spec.activations.high_count =
        a.integer("high_count", IntRange::between(0, spec.high_rule == HighRule::kPerHead ? spec.high_group : K));
    a.reject_unknown_keys();
    s.reject_unknown_keys();
    m.sites[kind] = spec;
  }
  sites.reject_unknown_keys();

  const JsonFields kv = f.object("kv_cache");
  m.kv.enabled = kv.boolean("enabled");
  m.kv.bits_low = static_cast<int>(kv.integer("bits_low", IntRange::between(2, 16)));
  m.kv.bits_high = static_cast<int>(kv.integer("bits_high", IntRange::between(2, 16)));
  if (kv.integer("high_count", IntRange::between(0, c.head_dim)) != m.r_h) kv.fail("high_count", "must equal r_h");
  m.kv.k_clip_ratio = kv.number("k_clip_ratio", NumberRange::closed(1e-6, 1.0));
  m.kv.v_clip_ratio = kv.number("v_clip_ratio", NumberRange::closed(1e-6, 1.0));
  kv.reject_unknown_keys();

  const JsonFields on = f.object("online");
  m.online.qk_rotation = on.boolean("qk_rotation");
  m.online.down_hadamard = on.boolean("down_hadamard");
  if (m.online.down_hadamard) {
    const JsonFields h = on.object("hadamard");
    const int64_t n = c.intermediate_size;
    m.online.hadamard_n = h.integer("n", IntRange::between(n, n));
    m.online.hadamard_pow2 = h.integer("pow2", IntRange::between(1, n));
    m.online.hadamard_block = h.integer("block", IntRange::between(1, n));
    m.online.hadamard_construction = h.string("construction");
    h.reject_unknown_keys();
    const int64_t p = m.online.hadamard_pow2;
    if ((p & (p - 1)) != 0) h.fail("pow2", "must be a power of two");
    if (p * m.online.hadamard_block != m.online.hadamard_n) h.fail("block", "must make pow2 x block equal n");
  }
  on.reject_unknown_keys();
  // Free-form objects, kept as written.
  m.recipe = f.object("recipe").raw();
  m.provenance = f.object("provenance").raw();
  f.reject_unknown_keys();
  return m;
}

std::vector<int64_t> qk_rotation_shape(const CheckpointMeta& m) {
  const int64_t hd = m.model.head_dim;
  if (m.format_minor_version >= 2) return {m.model.num_kv_heads, hd, hd};
  return {hd, hd};
}

json hf_quantization_config(const CheckpointMeta& m) {
  // The q_proj site stands for the linears' bits (every site of one recipe shares them, down_proj's
  // high part aside); the per-site truth is resq_config.json.
  const SiteSpec& q = m.sites.at(SiteKind::kQ);
  json activations = nullptr;
  if (q.activations.enabled) activations = {{"bits_low", q.activations.bits_low}, {"bits_high", q.activations.bits_high}};
  json kv = nullptr;
  if (m.kv.enabled) kv = {{"bits_low", m.kv.bits_low}, {"bits_high", m.kv.bits_high}};
  const std::string recipe = m.recipe.is_object() && m.recipe.contains("name") && m.recipe["name"].is_string()
                                 ? m.recipe["name"].get<std::string>()
                                 : "";
  return {{"quant_method", "resq"},
          {"format", kCheckpointFormatName},
          {"format_version", m.format_version},
          {"kernel_layout_version", m.kernel_layout_version},
          {"recipe", recipe},
          {"bits",
           {{"weights", {{"bits_low", q.weight_bits_low}, {"bits_high", q.weight_bits_high}}},
            {"activations", activations},
            {"kv_cache", kv}}},
          {"high_subspace", {{"hidden", m.r}, {"head", m.r_h}}},
          {"note", "resq packed mixed 4/8-bit checkpoint (resq_config.json): run it with resq; "
                   "`resq export --format hf-bf16` writes a plain HF directory"}};
}

}  // namespace resq::format
