// The one owner of ResQ's 8-bit subspace convention and of the checkpoint's tensor names: which
// input columns of each linear are high precision (rank, rule, per-head group), the packed column
// permutation, the KV cache's r_h, and the per-site specs of a model under a recipe's quantization
// parameters. Torch-free and independent of resq/quant (the recipe's values come in as LayoutParams).
// Spec: docs/FORMAT.md 2.2.1 and 2.3; docs/QUANTIZE.md steps 5 and 6.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "resq/model/config.h"

namespace resq::format {

// ------------------------------------------------------------------ sites and tensor names

// The seven linears of a decoder layer, in checkpoint order.
enum class SiteKind { kQ, kK, kV, kO, kGate, kUp, kDown };
constexpr int kNumSites = 7;
constexpr SiteKind kAllSites[kNumSites] = {SiteKind::kQ,    SiteKind::kK,  SiteKind::kV,   SiteKind::kO,
                                           SiteKind::kGate, SiteKind::kUp, SiteKind::kDown};
const char* site_name(SiteKind kind);                   // "q_proj", ..., "down_proj"
// Throws FormatError naming `source` for an unknown name.
SiteKind parse_site_name(const std::string& name, const std::string& source);
// {N, K} (out, in features) of a site in a model: q [q_size, d], k/v [kv_size, d], o [d, q_size],
// gate/up [ffn, d], down [d, ffn].
std::pair<int64_t, int64_t> site_dims(const ModelConfig& config, SiteKind kind);
// Whether the site has a bias in this model (Qwen2 q/k/v, Llama attention_bias / mlp_bias).
bool site_has_bias(const ModelConfig& config, SiteKind kind);

// Tensor names of a checkpoint (FORMAT.md 2.3).
constexpr const char* kEmbedTokensTensor = "model.embed_tokens.weight";  // [vocab][d]
constexpr const char* kLmHeadTensor = "lm_head.weight";                  // [vocab][d]
constexpr const char* kFinalNormTensor = "model.norm.weight";            // [d]
constexpr const char* kDownHadamardSignsTensor = "resq.down_hadamard.signs";  // F32 [n]
constexpr const char* kDownHadamardBlockTensor = "resq.down_hadamard.block";  // F64 [block][block]
std::string site_prefix(int64_t layer, SiteKind kind);  // "model.layers.3.self_attn.q_proj"
std::string input_norm_tensor(int64_t layer);           // "model.layers.3.input_layernorm.weight"
std::string post_attention_norm_tensor(int64_t layer);  // "model.layers.3.post_attention_layernorm.weight"
std::string qk_rotation_tensor(int64_t layer);          // "resq.layers.3.qk_rotation" F32 [hd][hd]
// The tensors of one site: <prefix>.qweight4, .qweight8, .scale4, .scale8, .perm (packed storage),
// .weight (dense storage), .bias.
struct SiteTensorNames {
  std::string qweight4, qweight8, scale4, scale8, perm, weight, bias;
};
SiteTensorNames site_tensor_names(int64_t layer, SiteKind kind);

// ------------------------------------------------------------------ the high columns of a site

// Which input columns (original order) form the high-precision part of a K-wide input:
//   kLast:    the last `count` columns (q/k/v, gate/up, down_proj): [K - count, K);
//   kPerHead: the last `count` columns of every group of `group` columns (o_proj: r_h of every
//             head of head_dim): [(g + 1) * group - count, (g + 1) * group) for each g.
// The ResQ rotation puts the high-variance subspace there; this is the whole convention.
enum class HighRule { kLast, kPerHead };
const char* high_rule_name(HighRule rule);  // "last" | "per_head" (resq_config.json spelling)
std::optional<HighRule> parse_high_rule(const std::string& name);

// Number of high columns (K8): kLast -> count; kPerHead -> (K / group) * count (0 when group <= 0).
int64_t high_column_count(HighRule rule, int64_t K, int64_t group, int64_t count);
// The high columns, ascending.
std::vector<int64_t> high_columns(HighRule rule, int64_t K, int64_t group, int64_t count);
// The packed column order [K]: the low columns ascending, then the high columns ascending, so that
// packed column j is original column order[j] (the identity for kLast).
std::vector<int32_t> packed_column_order(HighRule rule, int64_t K, int64_t group, int64_t count);

// The size of the high-variance subspace of a `dim`-wide space: round(fraction * dim) (half away
// from zero, std::llround). r = high_rank(f, hidden), r_h = high_rank(f, head_dim).
int64_t high_rank(double fraction, int64_t dim);
// True when fraction * dim is an integer (the split needs no rounding).
bool high_rank_is_exact(double fraction, int64_t dim);

// ------------------------------------------------------------------ one site

// How one site's weights are stored.
//   kPacked: <prefix>.qweight4 U8 [N][ceil(K4/2)], .qweight8 I8 [N][K8], .scale4 F32 [N],
//            .scale8 F32 [N], optional .perm I32 [K], optional .bias F32 [N].
//   kDense:  <prefix>.weight (F32/BF16/F16) [N][K], optional .bias F32 [N] (weights that are not
//            quantized, or whose bit widths do not fit the 4/8-bit containers).
enum class LinearStorage { kPacked, kDense };

// Activation / KV quantization settings the runtime needs (copied from the recipe at write time).
struct ActivationQuantSpec {
  bool enabled = false;
  int bits_low = 4;
  int bits_high = 8;
  double clip_ratio = 1.0;
  // High columns of the input under the site's high_rule/high_group (usually the weights' count;
  // down_proj may differ when the recipe's weights.down_high != activations.down_high).
  int64_t high_count = 0;
};
struct KvQuantSpec {
  bool enabled = false;
  int bits_low = 4;
  int bits_high = 8;
  double k_clip_ratio = 1.0;
  double v_clip_ratio = 1.0;
};

// The range of a signed `bits`-bit weight code: [-2^(bits-1), 2^(bits-1) - 1].
constexpr int weight_code_min(int bits) { return -(1 << (bits - 1)); }
constexpr int weight_code_max(int bits) { return (1 << (bits - 1)) - 1; }

// One site (the same for every layer). The packed column order is [low columns ascending..., high
// columns ascending...]; when that is not the identity the checkpoint holds <prefix>.perm with
// perm[j] = original column of packed column j.
struct SiteSpec {
  SiteKind kind = SiteKind::kQ;
  int64_t N = 0;  // output features
  int64_t K = 0;  // input features
  HighRule high_rule = HighRule::kLast;
  int64_t high_group = 0;  // kPerHead only
  int64_t high_count = 0;  // high columns (per group for kPerHead) of the weights
  bool has_bias = false;
  LinearStorage storage = LinearStorage::kPacked;
  int weight_bits_low = 4;  // values of the low part lie in [-2^(b-1), 2^(b-1) - 1]
  int weight_bits_high = 8;
  // Activation quantization of this site's input (its high part: activations.high_count columns
  // under the same rule and group).
  ActivationQuantSpec activations;

  int64_t K8() const { return high_column_count(high_rule, K, high_group, high_count); }
  int64_t K4() const { return K - K8(); }
  std::vector<int64_t> high_columns() const;             // of the weights, ascending
  std::vector<int64_t> activation_high_columns() const;  // of the activations, ascending
  std::vector<int32_t> packed_column_order() const;      // perm [K] (identity when !permuted())
  bool permuted() const;                                 // packed order != identity
};
// The site's high columns in words, for `resq inspect`: "last 8 of 64", "last 1 of every 8
// (per head), permuted", "none".
std::string describe_high_columns(const SiteSpec& spec);

// ------------------------------------------------------------------ a model under a recipe

// The recipe's quantization parameters the layout depends on (plain values: format does not depend
// on resq/quant; quant/pipeline fills this from a Recipe). The defaults are the paper's (configs/resq.json).
struct LayoutParams {
  double high_fraction = 0.125;   // r = high_rank(high_fraction, dim)
  bool weights_quantized = true;  // false (weights.method "none"): dense storage, 16 bits
  int weight_bits_low = 4;
  int weight_bits_high = 8;
  bool weight_down_high = false;  // down_proj's weights: all low unless true
  bool activations_enabled = true;
  int activation_bits_low = 4;
  int activation_bits_high = 8;
  double activation_clip_ratio = 1.0;
  bool activation_down_high = false;  // down_proj's input: all low unless true
};

// The per-site specs of a model: q/k/v/gate/up keep the last r of d columns high, o_proj the last
// r_h of every head (kPerHead, group head_dim: a permutation), down_proj the last r_ffn of ffn when
// down_high (else none); the KV cache keeps the last r_h channels of every head high. Storage is
// packed when the weights are quantized and fit the 4/8-bit containers, else dense.
struct ModelLayout {
  int64_t r = 0;      // high subspace of the hidden size (U_A)
  int64_t r_h = 0;    // high subspace of the head dim (U_B, U_C, o_proj per head, KV cache)
  int64_t r_ffn = 0;  // high subspace of the FFN size (down_proj when down_high)
  std::map<SiteKind, SiteSpec> sites;
};
ModelLayout model_layout(const ModelConfig& config, const LayoutParams& params);

}  // namespace resq::format
