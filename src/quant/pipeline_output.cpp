// The pipeline's checkpoint output (pipeline_parts.h): metadata from the layout, the tensors of
// the globals and of each layer, the finished directory and the size report.
#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>

#include "pipeline_parts.h"
#include "resq/common/error.h"

namespace resq::pipeline {
namespace fs = std::filesystem;

namespace {

std::vector<std::string> tokenizer_files(const std::string& from) {
  std::vector<std::string> files;
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json"}) {
    files.push_back((fs::path(from) / f).string());
  }
  return files;
}

at::ScalarType scalar_type_of(DType t) {
  switch (t) {
    case DType::F32: return at::kFloat;
    case DType::BF16: return at::kBFloat16;
    case DType::F16: return at::kHalf;
    case DType::F64: return at::kDouble;
    default: throw Error("scalar_type_of: not a float dtype");
  }
}

// Adds a float tensor in `dtype` (converted with torch's round-to-nearest-even).
void add_tensor(format::CheckpointWriter& writer, const std::string& name, const at::Tensor& t, DType dtype) {
  at::Tensor c = t.to(at::kCPU, scalar_type_of(dtype)).contiguous();
  writer.add(name, dtype, c.sizes().vec(), c.data_ptr(), static_cast<size_t>(c.numel() * c.element_size()));
}

// FNV-1a 64 over the integer weights (original column order) and both scale vectors of one linear:
// recorded in the report so a reader can prove the round trip is bit-exact.
std::string weight_checksum(const at::Tensor& q, const at::Tensor& s_low, const at::Tensor& s_high) {
  uint64_t h = 1469598103934665603ull;
  auto feed = [&](const at::Tensor& t) {
    at::Tensor c = t.cpu().contiguous();
    const auto* b = static_cast<const uint8_t*>(c.data_ptr());
    for (int64_t i = 0; i < c.numel() * static_cast<int64_t>(c.element_size()); ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  feed(q.to(at::kChar));
  feed(s_low.to(at::kFloat));
  feed(s_high.to(at::kFloat));
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

// The checkpoint metadata of a recipe applied to a model: the layout's per-site splits, bits and
// storage, the KV cache and online-transform settings.
format::CheckpointMeta checkpoint_meta(const ModelConfig& c, const Recipe& recipe, const format::ModelLayout& layout,
                                       const Rotations& R, DType globals_dtype) {
  format::CheckpointMeta meta;
  meta.model = c;
  meta.model.tie_word_embeddings = false;
  meta.r = layout.r;
  meta.r_h = layout.r_h;
  meta.globals_dtype = globals_dtype;
  meta.sites = layout.sites;
  meta.kv = {recipe.kv.enabled, recipe.kv.bits_low, recipe.kv.bits_high, recipe.kv.k_clip_ratio, recipe.kv.v_clip_ratio};
  meta.online.qk_rotation = !R.u_c.empty();
  if (R.u_d) {
    meta.online.down_hadamard = true;
    meta.online.hadamard_n = R.u_d->n;
    meta.online.hadamard_pow2 = R.u_d->pow2;
    meta.online.hadamard_block = R.u_d->block;
    meta.online.hadamard_construction = R.u_d->construction;
  }
  meta.recipe = recipe_to_json(recipe);
  return meta;
}

// Layer l's tensors: norms, each linear (packed integers + scales, or dense weights) and U_C.
// Returns {site: checksum} for the packed linears.
nlohmann::json write_layer_tensors(format::CheckpointWriter& writer, const Decoder& m, int64_t l, const Rotations& R,
                                   const format::CheckpointMeta& meta,
                                   const std::map<LinearKind, QuantizedWeight>& quantized) {
  const DecoderLayer& L = m.layers()[l];
  add_tensor(writer, format::input_norm_tensor(l), L.input_norm_weight, DType::F32);
  add_tensor(writer, format::post_attention_norm_tensor(l), L.post_attention_norm_weight, DType::F32);
  const std::shared_ptr<Linear>* linears[] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
  nlohmann::json checksums = nlohmann::json::object();
  for (int i = 0; i < format::kNumSites; ++i) {
    const format::SiteKind kind = format::kAllSites[i];
    const format::SiteSpec& spec = meta.sites.at(kind);
    const std::string prefix = format::site_prefix(l, kind);
    const DenseLinear& d = dense(*linears[i], prefix);
    at::Tensor bias = d.bias().defined() ? d.bias().to(at::kCPU, at::kFloat).contiguous() : at::Tensor();
    const float* bias_ptr = bias.defined() ? bias.data_ptr<float>() : nullptr;
    if (spec.storage == format::LinearStorage::kPacked) {
      const QuantizedWeight& q = quantized.at(static_cast<LinearKind>(i));
      at::Tensor qi = q.q.cpu().contiguous();
      at::Tensor sl = q.scale_low.to(at::kCPU, at::kFloat).contiguous(), sh = q.scale_high.to(at::kCPU, at::kFloat).contiguous();
      writer.add_packed_linear(l, spec, pack_quantized_weight(q, spec.packed_column_order(), bias, "checkpoint: " + prefix));
      checksums[prefix] = weight_checksum(qi, sl, sh);
    } else {
      // Not quantized (weights.method none: kept in the globals' dtype) or bit widths that do not
      // fit the packed containers (dequantized values, exact in float32).
      const DType dt = meta.sites.at(kind).weight_bits_low >= 16 ? meta.globals_dtype : DType::F32;
      at::Tensor w = d.weight().to(at::kCPU, scalar_type_of(dt)).contiguous();
      writer.add_dense_linear(l, spec, dt, w.data_ptr(), bias_ptr);
    }
  }
  if (!R.u_c.empty()) add_tensor(writer, format::qk_rotation_tensor(l), at::stack(R.u_c[l]), DType::F32);  // [Hkv, hd, hd]
  return checksums;
}

// The rotated embeddings, final norm and lm_head. Written (to disk: the writer does not buffer)
// before the layer loop so that the model can drop them (1 GiB in bf16 at 1B scale) for the rest.
void write_globals(format::CheckpointWriter& writer, const Decoder& m, const format::CheckpointMeta& meta) {
  add_tensor(writer, format::kEmbedTokensTensor, m.embed_weight, meta.globals_dtype);
  add_tensor(writer, format::kFinalNormTensor, m.final_norm_weight, DType::F32);
  add_tensor(writer, format::kLmHeadTensor, dense(m.lm_head, "lm_head").weight(), meta.globals_dtype);
}

// The online Hadamard, then config.json (untied), resq_config.json and tokenizer files; renames into
// place.
void finish_output(format::CheckpointWriter& writer, const Decoder& m, const QuantizeOptions& o, const Rotations& R,
                   const format::CheckpointMeta& meta) {
  if (R.u_d) {
    writer.add_f32(format::kDownHadamardSignsTensor, {R.u_d->n}, R.u_d->signs.data());
    writer.add(format::kDownHadamardBlockTensor, DType::F64, {R.u_d->block, R.u_d->block}, R.u_d->block_matrix.data(),
               R.u_d->block_matrix.size() * sizeof(double));
  }
  ModelConfig saved = m.config();
  saved.tie_word_embeddings = false;
  saved.torch_dtype = dtype_name(meta.globals_dtype) == "BF16" ? "bfloat16" : dtype_name(meta.globals_dtype) == "F16" ? "float16" : "float32";
  nlohmann::json config = model_config_to_json(saved);
  config["quantization_config"] = format::hf_quantization_config(meta);  // HF loaders refuse, loudly
  writer.commit(meta, config.dump(2) + "\n", tokenizer_files(o.model_dir));
}

// The dtype of embeddings / lm_head in the checkpoint: --globals-dtype, else the source model's
// 16-bit dtype, else float32 (an fp32 source keeps its exact values).
DType choose_globals_dtype(const std::string& requested, const ModelConfig& c) {
  const std::string name = requested.empty() ? c.torch_dtype : requested;
  if (name == "bfloat16" || name == "bf16") return DType::BF16;
  if (name == "float16" || name == "fp16" || name == "half") return DType::F16;
  if (name == "float32" || name == "fp32" || name == "float64" || requested.empty()) return DType::F32;
  throw UsageError("--globals-dtype: expected bfloat16, float16 or float32, got '" + requested + "'");
}

nlohmann::json checkpoint_report(const std::string& dir, const format::CheckpointMeta& meta, const format::CheckpointSizes& sizes) {
  const int64_t layers = meta.model.num_layers;
  double budget_bits = 0.0;  // container bits + two fp32 scales per row (+ o_proj's int32 perm), from the metadata
  int64_t budget_weights = 0;
  for (const auto& [kind, s] : meta.sites) {
    if (s.storage != format::LinearStorage::kPacked) continue;
    budget_weights += layers * s.N * s.K;
    budget_bits += static_cast<double>(layers) *
                   (s.N * (8.0 * format::packed4_row_bytes(s.K4()) + 8.0 * s.K8() + 64.0) + (s.permuted() ? 32.0 * s.K : 0.0));
  }
  nlohmann::json j = sizes.to_json();
  j["dir"] = dir;
  j["budget_bits_per_quantized_weight"] = budget_weights ? budget_bits / budget_weights : 0.0;
  return j;
}

}  // namespace resq::pipeline

namespace resq {

format::LayoutParams recipe_layout_params(const Recipe& recipe) {
  format::LayoutParams p;
  p.high_fraction = recipe.rotation.high_fraction;
  p.weights_quantized = recipe.weights.method != "none";
  p.weight_bits_low = recipe.weights.bits_low;
  p.weight_bits_high = recipe.weights.bits_high;
  p.weight_down_high = recipe.weights.down_high;
  p.activations_enabled = recipe.activations.enabled;
  p.activation_bits_low = recipe.activations.bits_low;
  p.activation_bits_high = recipe.activations.bits_high;
  p.activation_clip_ratio = recipe.activations.clip_ratio;
  p.activation_down_high = recipe.activations.down_high;
  return p;
}

}  // namespace resq
