// One decoder implementation for every supported family (Llama 2/3/3.1/3.2, Qwen2/2.5, Mistral),
// with per-linear observation hooks, swappable linears, online transforms and layer-by-layer execution.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "resq/model/attention.h"
#include "resq/model/config.h"
#include "resq/model/kv_cache.h"
#include "resq/model/linear.h"

namespace resq {

class TensorStore;

// A tensor -> tensor map applied at run time (online rotation, fake quantization of K/V, ...).
// Shape-preserving unless documented otherwise.
class TensorTransform {
 public:
  virtual ~TensorTransform() = default;
  virtual at::Tensor apply(const at::Tensor& x) const = 0;
};

// Observation hooks, called during forward passes. Default implementations do nothing.
class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  // x [B, T, in_features]: the exact input the linear at `site` receives (after online transforms).
  virtual void on_linear_input(const LinearSite& site, const at::Tensor& x) {}
  // k [B, num_kv_heads, T, head_dim] after RoPE (and after the layer's qk_transform, if any).
  virtual void on_keys(int64_t layer, const at::Tensor& k) {}
  // v [B, num_kv_heads, T, head_dim] as produced by v_proj.
  virtual void on_values(int64_t layer, const at::Tensor& v) {}
};

struct DecoderLayer {
  at::Tensor input_norm_weight;           // [d]
  at::Tensor post_attention_norm_weight;  // [d]
  std::shared_ptr<Linear> q, k, v, o;     // [q_size, d], [kv_size, d] x2, [d, q_size]
  std::shared_ptr<Linear> gate, up, down; // [ffn, d] x2, [d, ffn]
  // Online transforms (null = identity), set by quantization recipes:
  std::shared_ptr<TensorTransform> qk_transform;          // q, k [B, H, T, hd] after RoPE (U_C)
  std::shared_ptr<TensorTransform> k_cache_transform;     // k [B, Hkv, T, hd] (KV-cache quantizer)
  std::shared_ptr<TensorTransform> v_cache_transform;     // v [B, Hkv, T, hd] (KV-cache quantizer)
  std::shared_ptr<TensorTransform> down_input_transform;  // [B, T, ffn] before down_proj (U_D)
  bool loaded() const { return static_cast<bool>(q); }
};

struct LoadOptions {
  std::string dtype = "float32";  // compute dtype: float32 | bfloat16 | float64
  std::string device = "cpu";     // cpu | cuda | cuda:N | auto (resolve_device, model/device.h)
  bool load_layers = true;        // false: layers are loaded on demand with load_layer()
  // true: embed_tokens and lm_head keep the checkpoint's dtype (e.g. bf16) instead of `dtype`, so a
  // 128k-vocabulary model does not hold float32 copies of them (2 GiB at 1B scale); embed() casts
  // the looked-up rows to the compute dtype and head() casts its input to lm_head's dtype.
  bool keep_global_dtype = false;
};

// Cos/sin tables for RoPE in the HF rotate_half convention: [T, head_dim] each, in the compute dtype on
// the decoder's device (row p holds position p). The attention mask is attention_mask()'s.
struct RopeTables {
  at::Tensor cos;
  at::Tensor sin;
};

class Decoder {
 public:
  // Loads config.json and the safetensors weights of a HF model directory; validates every tensor
  // the config requires (presence, shape) and throws FormatError/ShapeError naming it.
  static Decoder load(const std::string& model_dir, const LoadOptions& options = {});

  // Builds an empty decoder shell (weights set by the caller: tests, make-model, quantize).
  Decoder(ModelConfig config, at::ScalarType dtype, at::Device device);

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }
  const std::string& model_dir() const { return model_dir_; }

  // ids [B, T] int64 -> logits [B, T, vocab] (float32).
  at::Tensor forward(const at::Tensor& ids, ForwardObserver* observer = nullptr);

  // Pieces of forward() for layer-by-layer execution on cached hidden states:
  at::Tensor embed(const at::Tensor& ids) const;  // [B, T] -> [B, T, d]
  at::Tensor run_layer(int64_t layer, const at::Tensor& hidden, const RopeTables& rope,
                       ForwardObserver* observer = nullptr) const;  // [B, T, d] -> [B, T, d]
  // The one layer forward behind run_layer above (which passes a TransientKvCache over the layer's
  // cache transforms) and DecodeSession (a persistent cache): hidden [B, t, d] of positions
  // [cache.length(), cache.length() + t), cos/sin [t, hd] the RoPE rows of those positions ->
  // [B, t, d]; the chunk's K/V go into `cache`, attention runs through it on attention_path().
  at::Tensor run_layer(int64_t layer, const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                       LayerKvCache& cache, ForwardObserver* observer = nullptr) const;
  at::Tensor head(const at::Tensor& hidden, ForwardObserver* observer = nullptr) const;  // -> logits
  RopeTables rope_tables(int64_t seq_len) const;  // cached per length

  // Matrix products of run_layer (the seven linears, q·kᵀ and p·v): kFloat (default) computes them
  // in the compute dtype; kBFloat16 (float32 models on the CPU only) rounds both operands to bf16 and
  // accumulates in float32 through oneDNN (gemm_nt_bf16), with float32 outputs, so RMSNorm, RoPE,
  // softmax and the residual stream stay float32. Dense float32 weights are converted once per
  // layer (cached until unload_layer or replacement); other Linear implementations run unchanged.
  // Measured ~5x faster than float32 on the 2-core Zen 4 machine (docs/PERF.md).
  void set_matmul_dtype(at::ScalarType dtype);
  at::ScalarType matmul_dtype() const { return matmul_dtype_; }

  // Attention path of run_layer: choose_attention_path() for the device, dtype and matmul dtype unless
  // set here (tests and benchmarks compare paths). kFused where fused_attention_compiled() is false
  // throws UnsupportedError.
  AttentionPath attention_path() const;
  void set_attention_path(AttentionPath path);

  // Layer storage (lazy loading keeps one layer's weights in memory at a time).
  void load_layer(int64_t layer);
  void unload_layer(int64_t layer);
  std::vector<DecoderLayer>& layers() { return layers_; }
  const std::vector<DecoderLayer>& layers() const { return layers_; }

  at::Tensor embed_weight;         // [vocab, d]
  at::Tensor final_norm_weight;    // [d]
  std::shared_ptr<Linear> lm_head; // [vocab, d]

 private:
  void load_or_check_layer(int64_t layer, bool materialize);
  // x [..., in] -> [..., out] through `lin`, in bf16 when matmul_dtype_ says so (see set_matmul_dtype).
  at::Tensor apply_linear(const std::shared_ptr<Linear>& lin, const at::Tensor& x) const;
  ModelConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  std::string model_dir_;
  std::shared_ptr<TensorStore> store_;
  std::vector<DecoderLayer> layers_;
  at::ScalarType matmul_dtype_ = at::kFloat;
  std::optional<AttentionPath> attention_path_;  // set_attention_path's choice, else automatic
  // bf16 copies of dense float32 weights [out, in], keyed by the Linear they were made from (the
  // shared_ptr keeps that address from being reused while it is cached).
  mutable std::map<const Linear*, std::pair<std::shared_ptr<Linear>, at::Tensor>> bf16_weights_;
  mutable int64_t rope_len_ = -1;
  mutable RopeTables rope_cache_;
};

// Parses "float32" | "bfloat16" | "float64" (also fp32/bf16/fp64); throws UsageError otherwise.
at::ScalarType parse_compute_dtype(const std::string& name);

// bf16 GEMMs with float32 accumulation and float32 output: oneDNN's gemm_bf16bf16f32, looked up at
// run time in the libdnnl that libtorch already links (no build dependency); when it is absent, a
// float32 at::mm of the bf16 operands (same products; only summation order differs). Products of two
// bf16 values are exact in float32. All operands are contiguous CPU tensors.
// c [M, N] float32 = alpha * a [M, K] · b [N, K]ᵀ + beta * c   (a, b bfloat16)
void gemm_nt_bf16(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, float alpha, float beta);
// c [M, N] float32 = a [M, K] · b [K, N] + beta * c   (a, b bfloat16)
void gemm_nn_bf16(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, float beta);
// c [F, F] float32 = xᵀ · x + beta * c for x [n, F] bfloat16 (Gram matrices: covariances, Hessians).
void gram_bf16(const at::Tensor& x, at::Tensor& c, float beta);

// Drops the resident pages of a memory-mapped checkpoint tensor after it has been copied out (the
// mapping is read-only and private, so later reads fault the file back in): touched mmap pages count
// in the process's RSS, and a 1B model's 2.3 GiB checkpoint would otherwise stay resident.
void release_mapped_pages(const void* data, size_t nbytes);

// y = x / rms(x) * weight over the last dimension, computed in float32 (or float64).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace resq
