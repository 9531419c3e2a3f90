// Export of a packed checkpoint to a plain HF directory (include/resq/export/hf_export.h): per layer
// and site, the dequantized weights (down_proj with the online Hadamard folded back), streamed through
// the sharded safetensors writer into a staging directory renamed into place when complete.
#include "resq/export/hf_export.h"

#include <cmath>
#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/log.h"
#include "resq/format/checkpoint.h"
#include "resq/format/layout.h"
#include "resq/io/dtype.h"
#include "resq/io/safetensors_writer.h"
#include "resq/linalg/rotation.h"
#include "resq/model/config.h"

namespace resq {
namespace fs = std::filesystem;
using format::SiteKind;

namespace {

// HF tensor name of a site: "model.layers.3.self_attn.q_proj" (+ ".weight" / ".bias").
std::string hf_site_name(int64_t layer, SiteKind kind) {
  const bool attention = kind == SiteKind::kQ || kind == SiteKind::kK || kind == SiteKind::kV || kind == SiteKind::kO;
  return "model.layers." + std::to_string(layer) + (attention ? ".self_attn." : ".mlp.") + format::site_name(kind);
}

// Writes tensors in the output dtype (bf16 by round-to-nearest-even, or float32).
class TensorSink {
 public:
  TensorSink(ShardedSafetensorsWriter& writer, DType dtype) : writer_(writer), dtype_(dtype) {}
  template <typename T>
  void add(const std::string& name, const std::vector<int64_t>& shape, const std::vector<T>& values) {
    if (dtype_ == DType::BF16) {
      std::vector<uint16_t> out(values.size());
      for (size_t i = 0; i < values.size(); ++i) out[i] = float_to_bf16(static_cast<float>(values[i]));
      writer_.add(name, dtype_, shape, out.data(), out.size() * sizeof(uint16_t));
    } else {
      std::vector<float> out(values.begin(), values.end());
      writer_.add(name, dtype_, shape, out.data(), out.size() * sizeof(float));
    }
    ++count_;
  }
  int64_t count() const { return count_; }

 private:
  ShardedSafetensorsWriter& writer_;
  DType dtype_;
  int64_t count_ = 0;
};

// The online Hadamard U_D the checkpoint stores (resq_config.json "online" + its two tensors).
OnlineHadamard stored_down_hadamard(const format::PackedCheckpoint& ck) {
  const format::OnlineSpec& on = ck.meta().online;
  OnlineHadamard t;
  t.n = on.hadamard_n;
  t.pow2 = on.hadamard_pow2;
  t.block = on.hadamard_block;
  t.construction = on.hadamard_construction;
  const auto signs = ck.float_tensor(format::kDownHadamardSignsTensor);
  t.signs.assign(signs.begin(), signs.end());
  t.block_matrix = ck.double_tensor(format::kDownHadamardBlockTensor);
  return t;
}

// The worst |UᵀU − I| over the [n][n] matrices stored back to back in u (one per KV head).
double orthogonality_error(const std::vector<float>& u, int64_t n) {
  double worst = 0.0;
  for (size_t base = 0; base + static_cast<size_t>(n * n) <= u.size(); base += static_cast<size_t>(n * n)) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double dot = 0.0;
        for (int64_t k = 0; k < n; ++k) dot += static_cast<double>(u[base + k * n + i]) * u[base + k * n + j];
        worst = std::max(worst, std::abs(dot - (i == j ? 1.0 : 0.0)));
      }
    }
  }
  return worst;
}

}  // namespace

std::string hf_export_formats() { return "hf-bf16, hf-f32"; }

HfExportReport export_hf(const HfExportOptions& o) {
  DType dtype;
  HfExportReport rep;
  if (o.format == "hf-bf16") {
    dtype = DType::BF16;
    rep.dtype = "bfloat16";
  } else if (o.format == "hf-f32") {
    dtype = DType::F32;
    rep.dtype = "float32";
  } else {
    throw UsageError("--format: expected one of " + hf_export_formats() + ", got '" + o.format + "'");
  }
  if (!format::PackedCheckpoint::is_checkpoint_dir(o.checkpoint_dir)) {
    throw UsageError(o.checkpoint_dir + ": not a resq packed checkpoint (no resq_config.json); a HF directory needs no export");
  }
  const format::PackedCheckpoint ck = format::PackedCheckpoint::open(o.checkpoint_dir);
  const format::CheckpointMeta& meta = ck.meta();
  const ModelConfig& c = meta.model;

  // Check every online transform before anything is written: refuse what cannot be folded exactly.
  if (meta.online.qk_rotation) {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const double err = orthogonality_error(ck.float_tensor(format::qk_rotation_tensor(l)), c.head_dim);
      if (err > 1e-4) {
        throw UnsupportedError(o.checkpoint_dir + ": " + format::qk_rotation_tensor(l) + " is not orthogonal (max |UᵀU − I| = " +
                               std::to_string(err) + "): dropping it would change the attention scores, so it cannot be "
                               "exported to a plain HF architecture");
      }
    }
    rep.dropped.push_back("U_C (q/k rotation after RoPE): (qU)(kU)ᵀ = qkᵀ for orthogonal U, exact without KV quantization");
  }
  std::optional<OnlineHadamard> hadamard;
  if (meta.online.down_hadamard) {
    hadamard = stored_down_hadamard(ck);
    rep.folded.push_back("U_D (online Hadamard before down_proj, " + hadamard->construction +
                         "): down_proj = dequant(W) Tᵀ in float64");
  }
  rep.folded.push_back("U_A, U_B and the RMSNorm weights: already fused into the stored weights (norms are 1)");
  bool any_activations = false;
  for (const auto& [kind, s] : meta.sites) any_activations = any_activations || s.activations.enabled;
  if (any_activations) rep.not_preserved.push_back("activation quantization (the exported linears read unquantized inputs)");
  if (meta.kv.enabled) rep.not_preserved.push_back("KV-cache quantization (the exported model keeps K/V unquantized)");

  StagingDirectory staging(o.out_dir);  // UsageError when out_dir exists
  {
    ShardedSafetensorsWriter writer(staging.path(), format::kDefaultMaxShardBytes, TensorOrder::kHuggingFace, {{"format", "pt"}});
    TensorSink sink(writer, dtype);
    const int64_t d = c.hidden_size;
    sink.add(format::kEmbedTokensTensor, {c.vocab_size, d}, ck.float_tensor(format::kEmbedTokensTensor));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      // The checkpoint's global tensor names are already the HF ones.
      sink.add(format::input_norm_tensor(l), {d}, ck.float_tensor(format::input_norm_tensor(l)));
      sink.add(format::post_attention_norm_tensor(l), {d}, ck.float_tensor(format::post_attention_norm_tensor(l)));
      for (SiteKind kind : format::kAllSites) {
        const format::LinearData data = ck.linear(l, kind);
        const int64_t N = data.spec.N, K = data.spec.K;
        const std::vector<float> w = data.dequantized();  // [N][K], original column order
        const std::string name = hf_site_name(l, kind);
        if (kind == SiteKind::kDown && hadamard) {
          std::vector<double> wd(w.begin(), w.end());
          apply_online_hadamard_transpose(*hadamard, wd.data(), N);  // rows of W' times Tᵀ
          sink.add(name + ".weight", {N, K}, wd);
        } else {
          sink.add(name + ".weight", {N, K}, w);
        }
        if (!data.bias().empty()) sink.add(name + ".bias", {N}, data.bias());
      }
    }
    sink.add(format::kFinalNormTensor, {d}, ck.float_tensor(format::kFinalNormTensor));
    sink.add(format::kLmHeadTensor, {c.vocab_size, d}, ck.float_tensor(format::kLmHeadTensor));
    rep.tensors = sink.count();
    writer.finish();
  }
  ModelConfig plain = c;
  plain.tie_word_embeddings = false;  // the checkpoint always stores lm_head
  plain.torch_dtype = rep.dtype;
  // model_config_to_json writes the architecture only: no quantization_config, so HF loads it as fp.
  write_file_atomically((fs::path(staging.path()) / "config.json").string(), model_config_to_json(plain).dump(2) + "\n",
                        "config.json");
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json"}) {
    const fs::path from = fs::path(o.checkpoint_dir) / f;
    std::error_code ec;
    if (!fs::is_regular_file(from, ec)) continue;
    fs::copy_file(from, fs::path(staging.path()) / f, ec);
    if (ec) throw IoError(from.string() + ": cannot copy into " + staging.path() + ": " + ec.message());
    rep.copied_files.push_back(f);
  }
  staging.commit();
  rep.out_dir = o.out_dir;
  return rep;
}

}  // namespace resq
