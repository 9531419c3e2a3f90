// The ResQ layout: site names and dims, checkpoint tensor names, the high-column rules and the
// per-site specs of a model under a recipe's parameters (include/resq/format/layout.h).
#include "resq/format/layout.h"

#include <cmath>
#include <tuple>

#include "resq/common/error.h"
#include "resq/format/packed.h"

namespace resq::format {

// ------------------------------------------------------------------ sites and tensor names

const char* site_name(SiteKind kind) {
  switch (kind) {
    case SiteKind::kQ: return "q_proj";
    case SiteKind::kK: return "k_proj";
    case SiteKind::kV: return "v_proj";
    case SiteKind::kO: return "o_proj";
    case SiteKind::kGate: return "gate_proj";
    case SiteKind::kUp: return "up_proj";
    case SiteKind::kDown: return "down_proj";
  }
  return "?";
}

SiteKind parse_site_name(const std::string& name, const std::string& source) {
  for (SiteKind k : kAllSites) {
    if (name == site_name(k)) return k;
  }
  throw FormatError(source + ": unknown linear site '" + name + "' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)");
}

std::pair<int64_t, int64_t> site_dims(const ModelConfig& c, SiteKind kind) {
  switch (kind) {
    case SiteKind::kQ: return {c.q_size(), c.hidden_size};
    case SiteKind::kK:
    case SiteKind::kV: return {c.kv_size(), c.hidden_size};
    case SiteKind::kO: return {c.hidden_size, c.q_size()};
    case SiteKind::kGate:
    case SiteKind::kUp: return {c.intermediate_size, c.hidden_size};
    case SiteKind::kDown: return {c.hidden_size, c.intermediate_size};
  }
  return {0, 0};
}

bool site_has_bias(const ModelConfig& c, SiteKind kind) {
  switch (kind) {
    case SiteKind::kQ:
    case SiteKind::kK:
    case SiteKind::kV: return c.qkv_bias;
    case SiteKind::kO: return c.o_bias;
    case SiteKind::kGate:
    case SiteKind::kUp:
    case SiteKind::kDown: return c.mlp_bias;
  }
  return false;
}

namespace {
std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }
}  // namespace

std::string site_prefix(int64_t layer, SiteKind kind) {
  const bool attn = kind == SiteKind::kQ || kind == SiteKind::kK || kind == SiteKind::kV || kind == SiteKind::kO;
  return layer_prefix(layer) + (attn ? "self_attn." : "mlp.") + site_name(kind);
}

std::string input_norm_tensor(int64_t layer) { return layer_prefix(layer) + "input_layernorm.weight"; }
std::string post_attention_norm_tensor(int64_t layer) { return layer_prefix(layer) + "post_attention_layernorm.weight"; }
std::string qk_rotation_tensor(int64_t layer) { return "resq.layers." + std::to_string(layer) + ".qk_rotation"; }

SiteTensorNames site_tensor_names(int64_t layer, SiteKind kind) {
  const std::string p = site_prefix(layer, kind);
  return {p + ".qweight4", p + ".qweight8", p + ".scale4", p + ".scale8", p + ".perm", p + ".weight", p + ".bias"};
}

// ------------------------------------------------------------------ the high columns of a site

const char* high_rule_name(HighRule rule) { return rule == HighRule::kPerHead ? "per_head" : "last"; }

std::optional<HighRule> parse_high_rule(const std::string& name) {
  if (name == "last") return HighRule::kLast;
  if (name == "per_head") return HighRule::kPerHead;
  return std::nullopt;
}

int64_t high_column_count(HighRule rule, int64_t K, int64_t group, int64_t count) {
  if (rule == HighRule::kLast) return count;
  return group > 0 ? (K / group) * count : 0;
}

std::vector<int64_t> high_columns(HighRule rule, int64_t K, int64_t group, int64_t count) {
  std::vector<int64_t> cols;
  if (rule == HighRule::kLast) {
    for (int64_t k = K - count; k < K; ++k) cols.push_back(k);
  } else if (group > 0) {
    for (int64_t g = 0; g < K / group; ++g) {
      for (int64_t k = (g + 1) * group - count; k < (g + 1) * group; ++k) cols.push_back(k);
    }
  }
  return cols;
}

std::vector<int32_t> packed_column_order(HighRule rule, int64_t K, int64_t group, int64_t count) {
  std::vector<char> high(static_cast<size_t>(K), 0);
  for (int64_t k : high_columns(rule, K, group, count)) high[static_cast<size_t>(k)] = 1;
  std::vector<int32_t> perm;
  perm.reserve(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k)
    if (!high[k]) perm.push_back(static_cast<int32_t>(k));
  for (int64_t k = 0; k < K; ++k)
    if (high[k]) perm.push_back(static_cast<int32_t>(k));
  return perm;
}

int64_t high_rank(double fraction, int64_t dim) { return static_cast<int64_t>(std::llround(fraction * static_cast<double>(dim))); }

bool high_rank_is_exact(double fraction, int64_t dim) {
  const double x = fraction * static_cast<double>(dim);
  return x == std::floor(x);
}

// ------------------------------------------------------------------ one site

std::vector<int64_t> SiteSpec::high_columns() const { return format::high_columns(high_rule, K, high_group, high_count); }

std::vector<int64_t> SiteSpec::activation_high_columns() const {
  return format::high_columns(high_rule, K, high_group, activations.high_count);
}

std::vector<int32_t> SiteSpec::packed_column_order() const {
  return format::packed_column_order(high_rule, K, high_group, high_count);
}

bool SiteSpec::permuted() const {
  const auto perm = packed_column_order();
  for (size_t j = 0; j < perm.size(); ++j)
    if (perm[j] != static_cast<int32_t>(j)) return true;
  return false;
}

std::string describe_high_columns(const SiteSpec& s) {
  if (s.K8() == 0) return "none";
  if (s.high_rule == HighRule::kLast) return "last " + std::to_string(s.high_count) + " of " + std::to_string(s.K);
  return "last " + std::to_string(s.high_count) + " of every " + std::to_string(s.high_group) + " (per head)" +
         (s.permuted() ? ", permuted" : "");
}

// ------------------------------------------------------------------ a model under a recipe

ModelLayout model_layout(const ModelConfig& c, const LayoutParams& p) {
  ModelLayout out;
  out.r = high_rank(p.high_fraction, c.hidden_size);
  out.r_h = high_rank(p.high_fraction, c.head_dim);
  out.r_ffn = high_rank(p.high_fraction, c.intermediate_size);
  // Packed storage needs a 4-bit container for the low part and an 8-bit one for the high part.
  const bool packable = p.weights_quantized && p.weight_bits_low <= kBits4 && p.weight_bits_high <= kBits8;
  for (SiteKind kind : kAllSites) {
    SiteSpec s;
    s.kind = kind;
    std::tie(s.N, s.K) = site_dims(c, kind);
    int64_t act_high = 0;
    if (kind == SiteKind::kO) {
      // o_proj's input is the concatenation of the heads' outputs, each rotated by its U_B.
      s.high_rule = HighRule::kPerHead;
      s.high_group = c.head_dim;
      s.high_count = out.r_h;
      act_high = out.r_h;
    } else if (kind == SiteKind::kDown) {
      s.high_count = p.weight_down_high ? out.r_ffn : 0;
      act_high = p.activation_down_high ? out.r_ffn : 0;
    } else {
      s.high_count = out.r;
      act_high = out.r;
    }
    s.has_bias = site_has_bias(c, kind);
    s.storage = packable ? LinearStorage::kPacked : LinearStorage::kDense;
    s.weight_bits_low = p.weights_quantized ? p.weight_bits_low : 16;
    s.weight_bits_high = p.weights_quantized ? p.weight_bits_high : 16;
    s.activations = {p.activations_enabled, p.activation_bits_low, p.activation_bits_high, p.activation_clip_ratio, act_high};
    out.sites[kind] = s;
  }
  return out;
}

}  // namespace resq::format
