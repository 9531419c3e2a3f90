// The decoder forward pass (embedding, RMSNorm, RoPE, GQA attention, SwiGLU MLP, lm_head) and
// weight loading from a HuggingFace model directory.
#include "resq/model/decoder.h"
#include "resq/model/device.h"

#include <ATen/ATen.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "resq/common/error.h"
#include "resq/io/safetensors.h"

namespace resq {

at::ScalarType parse_compute_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "f32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float64" || name == "fp64" || name == "f64") return at::kDouble;
  throw UsageError("--dtype: expected float32, bfloat16 or float64, got '" + name + "'");
}

namespace {

// oneDNN's row-major C = alpha * op(A) · op(B) + beta * C with bf16 A/B and float32 C (dnnl.h,
// DNNL_API since oneDNN 1.x; returns dnnl_status_t, 0 = success).
using DnnlGemmBf16 = int (*)(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                             const void* A, int64_t lda, const void* B, int64_t ldb, float beta, float* C,
                             int64_t ldc);

DnnlGemmBf16 dnnl_gemm_bf16() {
  static const DnnlGemmBf16 fn = [] {
    void* sym = ::dlsym(RTLD_DEFAULT, "dnnl_gemm_bf16bf16f32");
    if (!sym) {
      if (void* lib = ::dlopen("libdnnl.so.2", RTLD_NOW | RTLD_NOLOAD)) sym = ::dlsym(lib, "dnnl_gemm_bf16bf16f32");
    }
    return reinterpret_cast<DnnlGemmBf16>(sym);
  }();
  return fn;
}

void check_bf16_operand(const at::Tensor& t, const char* what) {
  if (t.scalar_type() != at::kBFloat16 || t.dim() != 2 || !t.is_contiguous() || !t.device().is_cpu()) {
    throw ShapeError(std::string(what) + ": expected a contiguous 2-D bfloat16 CPU tensor");
  }
}

void check_f32_result(const at::Tensor& c, int64_t M, int64_t N, const char* what) {
  if (c.scalar_type() != at::kFloat || c.dim() != 2 || c.size(0) != M || c.size(1) != N || !c.is_contiguous()) {
    throw ShapeError(std::string(what) + ": result must be a contiguous float32 [" + std::to_string(M) + ", " +
                     std::to_string(N) + "] tensor");
  }
}

// op(A) [M, K] · op(B) [K, N] into c with the row-major conventions of dnnl; fallback in float32.
void gemm_bf16(char ta, char tb, const at::Tensor& a, const at::Tensor& b, at::Tensor& c, int64_t M, int64_t N,
               int64_t K, float alpha, float beta) {
  if (M == 0 || N == 0) return;
  if (DnnlGemmBf16 fn = dnnl_gemm_bf16()) {
    const int status = fn(ta, tb, M, N, K, alpha, a.data_ptr(), a.size(1), b.data_ptr(), b.size(1), beta,
                          c.data_ptr<float>(), N);
    if (status == 0) return;
  }
  at::Tensor a32 = a.to(at::kFloat), b32 = b.to(at::kFloat);
  if (ta == 'T') a32 = a32.t();
  if (tb == 'T') b32 = b32.t();
  if (beta == 0.0f) {
    at::mm_out(c, a32, b32);
    if (alpha != 1.0f) c.mul_(alpha);
  } else {
    c.mul_(beta).addmm_(a32, b32, 1.0, alpha);
  }
}

}  // namespace

void gemm_nt_bf16(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, float alpha, float beta) {
  check_bf16_operand(a, "gemm_nt_bf16 (a)");
  check_bf16_operand(b, "gemm_nt_bf16 (b)");
  if (a.size(1) != b.size(1)) throw ShapeError("gemm_nt_bf16: inner dimensions differ");
  check_f32_result(c, a.size(0), b.size(0), "gemm_nt_bf16");
  gemm_bf16('N', 'T', a, b, c, a.size(0), b.size(0), a.size(1), alpha, beta);
}

void gemm_nn_bf16(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, float beta) {
  check_bf16_operand(a, "gemm_nn_bf16 (a)");
  check_bf16_operand(b, "gemm_nn_bf16 (b)");
  if (a.size(1) != b.size(0)) throw ShapeError("gemm_nn_bf16: inner dimensions differ");
  check_f32_result(c, a.size(0), b.size(1), "gemm_nn_bf16");
  gemm_bf16('N', 'N', a, b, c, a.size(0), b.size(1), a.size(1), 1.0f, beta);
}

void gram_bf16(const at::Tensor& x, at::Tensor& c, float beta) {
  check_bf16_operand(x, "gram_bf16");
  check_f32_result(c, x.size(1), x.size(1), "gram_bf16");
  gemm_bf16('T', 'N', x, x, c, x.size(1), x.size(1), x.size(0), 1.0f, beta);
}

void release_mapped_pages(const void* data, size_t nbytes) {
  if (data == nullptr || nbytes == 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  // Whole pages around the tensor: a neighbour sharing an edge page is simply re-read on its next use.
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + nbytes + page - 1) & ~(page - 1);
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // advisory: errors ignored
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // x [..., d], weight [d]. Statistics in float32 (float64 when x is float64), as HF does.
  const auto stat_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor xf = x.to(stat_type);
  at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor normed = (xf * at::rsqrt(variance + eps)).to(x.scalar_type());
  return normed * weight;
}

namespace {

// HF rotate_half: [x1, x2] -> [-x2, x1] over the last dimension split in halves.
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  return at::cat({-x2, x1}, -1);
}

// RoPE inverse frequencies [head_dim / 2] in float64, with Llama-3.1 scaling when configured.
std::vector<double> rope_inverse_frequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    inv[i] = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
  }
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    const auto& s = c.rope_scaling;
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_freq_wavelen = old_len / s.low_freq_factor;
    const double high_freq_wavelen = old_len / s.high_freq_factor;
    for (auto& f : inv) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_freq_wavelen) {
        f = f / s.factor;  // low frequencies: fully scaled
      } else if (wavelen >= high_freq_wavelen) {
        // medium band: smooth interpolation between scaled and unscaled
        const double smooth = (old_len / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
  }
  return inv;
}

at::Tensor to_device_dtype(at::Tensor t, at::ScalarType dtype, at::Device device) {
  return t.to(device, dtype);
}

// Copies a safetensors view into a new tensor of `dtype` on `device` (float64 staging for f64), then
// drops the view's mapped pages (see release_mapped_pages).
at::Tensor tensor_from_view(const TensorView& view, at::ScalarType dtype, at::Device device) {
  std::vector<int64_t> shape = view.shape;
  at::Tensor out;
  if (dtype == at::kDouble) {
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kDouble));
    tensor_to_float64(view, t.data_ptr<double>());
    out = t.to(device);
  } else if (dtype == at::kBFloat16 && view.dtype == DType::BF16) {
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kBFloat16));  // exact copy, no float32 staging
    std::memcpy(t.data_ptr(), view.data, view.nbytes);
    out = t.to(device);
  } else {
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
    tensor_to_float32(view, t.data_ptr<float>());
    out = to_device_dtype(t, dtype, device);
  }
  release_mapped_pages(view.data, view.nbytes);
  return out;
}

// The checkpoint's own floating dtype (bf16/f16/f32/f64) as a torch dtype; float32 for anything else.
at::ScalarType stored_dtype(const TensorView& view) {
  switch (view.dtype) {
    case DType::BF16: return at::kBFloat16;
    case DType::F16: return at::kHalf;
    case DType::F64: return at::kDouble;
    default: return at::kFloat;
  }
}

}  // namespace

Decoder::Decoder(ModelConfig config, at::ScalarType dtype, at::Device device)
    : config_(std::move(config)), dtype_(dtype), device_(device) {
  layers_.resize(config_.num_layers);
}

RopeTables Decoder::rope_tables(int64_t seq_len) const {
  if (rope_len_ == seq_len) return rope_cache_;
  const auto inv = rope_inverse_frequencies(config_);
  const int64_t half = config_.head_dim / 2;
  // angles [T, head_dim] = positions x cat(inv, inv), computed in float64 then cast.
  at::Tensor angles = at::empty({seq_len, config_.head_dim}, at::TensorOptions().dtype(at::kDouble));
  double* a = angles.data_ptr<double>();
  for (int64_t t = 0; t < seq_len; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(t) * inv[i];
      a[t * config_.head_dim + i] = angle;
      a[t * config_.head_dim + half + i] = angle;
    }
  }
  rope_cache_.cos = angles.cos().to(device_, dtype_);
  rope_cache_.sin = angles.sin().to(device_, dtype_);
  rope_len_ = seq_len;
  return rope_cache_;
}

at::Tensor Decoder::embed(const at::Tensor& ids) const {
  // ids [B, T] int64 -> [B, T, d]
  if (ids.dim() != 2) throw ShapeError("Decoder::embed: ids must be [batch, seq], got dim " +
                                       std::to_string(ids.dim()));
  const int64_t max_id = ids.numel() ? ids.max().item<int64_t>() : 0;
  const int64_t min_id = ids.numel() ? ids.min().item<int64_t>() : 0;
  if (min_id < 0 || max_id >= config_.vocab_size) {
    throw ShapeError("token id " + std::to_string(min_id < 0 ? min_id : max_id) +
                     " is outside the model's vocabulary [0, " + std::to_string(config_.vocab_size) + ")");
  }
  at::Tensor rows = at::embedding(embed_weight, ids.to(device_));
  return rows.scalar_type() == dtype_ ? rows : rows.to(dtype_);  // keep_global_dtype: stored -> compute
}

void Decoder::set_matmul_dtype(at::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16) {
    throw UsageError("Decoder::set_matmul_dtype: expected float32 or bfloat16");
  }
  if (dtype == at::kBFloat16 && (dtype_ != at::kFloat || !device_.is_cpu())) {
    throw UsageError("Decoder::set_matmul_dtype: bf16 products need a float32 model on the CPU");
  }
  matmul_dtype_ = dtype;
  bf16_weights_.clear();
}

at::Tensor Decoder::apply_linear(const std::shared_ptr<Linear>& lin, const at::Tensor& x) const {
  const auto* d = dynamic_cast<const DenseLinear*>(lin.get());
  if (matmul_dtype_ != at::kBFloat16 || !d || d->weight().scalar_type() != at::kFloat ||
      x.scalar_type() != at::kFloat) {
    return lin->forward(x);
  }
  // Drop cached copies whose Linear was replaced (fusion, quantization): only the cache holds them.
  for (auto it = bf16_weights_.begin(); it != bf16_weights_.end();) {
    it = it->second.first.use_count() == 1 ? bf16_weights_.erase(it) : std::next(it);
  }
  auto it = bf16_weights_.find(lin.get());
  if (it == bf16_weights_.end()) {
    it = bf16_weights_.emplace(lin.get(), std::make_pair(lin, d->weight().to(at::kBFloat16).contiguous())).first;
  }
  const at::Tensor& w = it->second.second;  // [out, in] bf16
  const int64_t in = w.size(1), out = w.size(0);
  if (x.size(-1) != in) {
    throw ShapeError("DenseLinear: input has " + std::to_string(x.size(-1)) + " features, weight expects " +
                     std::to_string(in));
  }
  at::Tensor x2 = x.reshape({-1, in}).to(at::kBFloat16).contiguous();  // [rows, in]
  at::Tensor y = at::empty({x2.size(0), out}, x.options());            // [rows, out] float32
  gemm_nt_bf16(x2, w, y, 1.0f, 0.0f);
  if (d->bias().defined()) y.add_(d->bias());
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  return y.view(shape);
}

AttentionPath Decoder::attention_path() const {
  return attention_path_ ? *attention_path_ : choose_attention_path(device_, dtype_, matmul_dtype_);
}

void Decoder::set_attention_path(AttentionPath path) {
  if (path == AttentionPath::kFused && !fused_attention_compiled()) {
    throw UnsupportedError("Decoder::set_attention_path: this libtorch has no fused scaled_dot_product_attention");
  }
  attention_path_ = path;
}

at::Tensor Decoder::run_layer(int64_t index, const at::Tensor& hidden, const RopeTables& rope,
                              ForwardObserver* observer) const {
  const DecoderLayer& layer = layers_.at(index);
  TransientKvCache cache(layer.k_cache_transform, layer.v_cache_transform);
  const int64_t T = hidden.size(1);
  return run_layer(index, hidden, rope.cos.narrow(0, 0, T), rope.sin.narrow(0, 0, T), cache, observer);
}

at::Tensor Decoder::run_layer(int64_t index, const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                              LayerKvCache& cache, ForwardObserver* observer) const {
  const DecoderLayer& layer = layers_.at(index);
  if (!layer.loaded()) {
    throw Error("Decoder::run_layer: layer " + std::to_string(index) + " is not loaded");
  }
  const ModelConfig& c = config_;
  const int64_t B = hidden.size(0), T = hidden.size(1);
  const int64_t H = c.num_heads, Hkv = c.num_kv_heads, hd = c.head_dim;
  if (cos.size(0) != T || sin.size(0) != T) {
    throw ShapeError("Decoder::run_layer: " + std::to_string(cos.size(0)) + " RoPE rows for a chunk of " +
                     std::to_string(T) + " tokens");
  }

  // ---- attention block: hidden [B, T, d]
  at::Tensor x = rms_norm(hidden, layer.input_norm_weight, c.rms_norm_eps);
  if (observer) {
    observer->on_linear_input({index, LinearKind::kQ}, x);
    observer->on_linear_input({index, LinearKind::kK}, x);
    observer->on_linear_input({index, LinearKind::kV}, x);
  }
  // q [B, H, T, hd], k/v [B, Hkv, T, hd]
  at::Tensor q = apply_linear(layer.q, x).view({B, T, H, hd}).transpose(1, 2);
  at::Tensor k = apply_linear(layer.k, x).view({B, T, Hkv, hd}).transpose(1, 2);
  at::Tensor v = apply_linear(layer.v, x).view({B, T, Hkv, hd}).transpose(1, 2);

  q = q * cos + rotate_half(q) * sin;  // cos/sin [T, hd] broadcast over [B, H]
  k = k * cos + rotate_half(k) * sin;
  if (layer.qk_transform) {
    q = layer.qk_transform->apply(q);
    k = layer.qk_transform->apply(k);
  }
  if (observer) {
    observer->on_keys(index, k);
    observer->on_values(index, v);
  }
  AttentionSpec spec;
  spec.window = c.sliding_window;
  spec.dtype = dtype_;
  spec.path = attention_path();
  const at::Tensor attn = cache.append_and_attend(q, k, v, spec);  // [B, T, H*hd]
  if (observer) observer->on_linear_input({index, LinearKind::kO}, attn);
  at::Tensor h = hidden + apply_linear(layer.o, attn);

  // ---- MLP block (SwiGLU)
  at::Tensor y = rms_norm(h, layer.post_attention_norm_weight, c.rms_norm_eps);
  if (observer) {
    observer->on_linear_input({index, LinearKind::kGate}, y);
    observer->on_linear_input({index, LinearKind::kUp}, y);
  }
  // The MLP is per token: on the CPU, long inputs go through it in blocks of rows so that every
  // [rows, ffn] intermediate stays <= 16 MiB. Larger buffers are mmap()ed fresh by glibc on every
  // call, and their page faults cost more than the arithmetic here (measured: silu·up on a fresh
  // [2048, 8192] float32 buffer 2.0 s vs 0.06 s into a reused one). The down_proj observer then sees
  // [1, rows, ffn] blocks. On CUDA the caching allocator reuses memory and one large GEMM per linear
  // is fastest, so the MLP runs whole.
  const int64_t ffn = c.intermediate_size, rows_total = B * T;
  const int64_t block = device_.is_cpu()
                            ? std::max<int64_t>(64, (int64_t{16} << 20) / (4 * std::max<int64_t>(ffn, 1)))
                            : rows_total;
  if (rows_total <= block) {
    at::Tensor act = at::silu(apply_linear(layer.gate, y)) * apply_linear(layer.up, y);  // [B, T, ffn]
    if (layer.down_input_transform) act = layer.down_input_transform->apply(act);
    if (observer) observer->on_linear_input({index, LinearKind::kDown}, act);
    return h + apply_linear(layer.down, act);
  }
  at::Tensor y2 = y.reshape({rows_total, y.size(-1)});
  at::Tensor out = h.reshape({rows_total, h.size(-1)}).clone();  // residual + down_proj, [B*T, d]
  for (int64_t r0 = 0; r0 < rows_total; r0 += block) {
    const int64_t n = std::min(block, rows_total - r0);
    at::Tensor yb = y2.narrow(0, r0, n).unsqueeze(0);  // [1, n, d]
    at::Tensor act = apply_linear(layer.gate, yb);    // [1, n, ffn]
    at::silu_(act);
    act.mul_(apply_linear(layer.up, yb));
    if (layer.down_input_transform) act = layer.down_input_transform->apply(act);
    if (observer) observer->on_linear_input({index, LinearKind::kDown}, act);
    out.narrow(0, r0, n).add_(apply_linear(layer.down, act).view({n, -1}));
  }
  return out.view(h.sizes());
}

at::Tensor Decoder::head(const at::Tensor& hidden, ForwardObserver* observer) const {
  at::Tensor x = rms_norm(hidden, final_norm_weight, config_.rms_norm_eps);
  if (observer) observer->on_linear_input({-1, LinearKind::kLmHead}, x);
  const auto* dense_head = dynamic_cast<const DenseLinear*>(lm_head.get());
  if (dense_head && dense_head->weight().scalar_type() != x.scalar_type()) {
    x = x.to(dense_head->weight().scalar_type());  // keep_global_dtype: lm_head stays in its stored dtype
  }
  at::Tensor logits = lm_head->forward(x);
  return dtype_ == at::kDouble ? logits : logits.to(at::kFloat);
}

at::Tensor Decoder::forward(const at::Tensor& ids, ForwardObserver* observer) {
  const int64_t T = ids.size(1);
  RopeTables rope = rope_tables(T);
  at::Tensor h = embed(ids);
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const bool lazy = !layers_[i].loaded();
    if (lazy) load_layer(i);
    h = run_layer(i, h, rope, observer);
    if (lazy) unload_layer(i);
  }
  return head(h, observer);
}

// ------------------------------------------------------------------------------- loading

namespace {

std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

}  // namespace

void Decoder::load_layer(int64_t i) { load_or_check_layer(i, /*materialize=*/true); }

void Decoder::load_or_check_layer(int64_t i, bool materialize) {
  if (!store_) throw Error("Decoder::load_layer: decoder was not loaded from a model directory");
  if (i < 0 || i >= config_.num_layers) throw ShapeError("layer index " + std::to_string(i) + " out of range");
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, ffn = c.intermediate_size;
  auto load = [&](const std::string& name, std::vector<int64_t> shape) {
    return tensor_from_view(store_->require(name, shape), dtype_, device_);
  };
  if (!materialize) {
    // Presence and shape checks only (no conversion): a broken checkpoint fails before a long run.
    auto check_linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
      store_->require(name + ".weight", {out, in});
      if (bias) store_->require(name + ".bias", {out});
    };
    const std::string p = layer_prefix(i);
    store_->require(p + "input_layernorm.weight", {d});
    store_->require(p + "post_attention_layernorm.weight", {d});
    check_linear(p + "self_attn.q_proj", c.q_size(), d, c.qkv_bias);
    check_linear(p + "self_attn.k_proj", c.kv_size(), d, c.qkv_bias);
    check_linear(p + "self_attn.v_proj", c.kv_size(), d, c.qkv_bias);
    check_linear(p + "self_attn.o_proj", d, c.q_size(), c.o_bias);
    check_linear(p + "mlp.gate_proj", ffn, d, c.mlp_bias);
    check_linear(p + "mlp.up_proj", ffn, d, c.mlp_bias);
    check_linear(p + "mlp.down_proj", d, ffn, c.mlp_bias);
    return;
  }
  auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
    at::Tensor w = load(name + ".weight", {out, in});
    at::Tensor b = bias ? load(name + ".bias", {out}) : at::Tensor();
    return std::make_shared<DenseLinear>(w, b);
  };
  const std::string p = layer_prefix(i);
  DecoderLayer& L = layers_[i];
  L.input_norm_weight = load(p + "input_layernorm.weight", {d});
  L.post_attention_norm_weight = load(p + "post_attention_layernorm.weight", {d});
  L.q = linear(p + "self_attn.q_proj", c.q_size(), d, c.qkv_bias);
  L.k = linear(p + "self_attn.k_proj", c.kv_size(), d, c.qkv_bias);
  L.v = linear(p + "self_attn.v_proj", c.kv_size(), d, c.qkv_bias);
  L.o = linear(p + "self_attn.o_proj", d, c.q_size(), c.o_bias);
  L.gate = linear(p + "mlp.gate_proj", ffn, d, c.mlp_bias);
  L.up = linear(p + "mlp.up_proj", ffn, d, c.mlp_bias);
  L.down = linear(p + "mlp.down_proj", d, ffn, c.mlp_bias);
}

void Decoder::unload_layer(int64_t i) {
  DecoderLayer& L = layers_.at(i);
  L.input_norm_weight = at::Tensor();
  L.post_attention_norm_weight = at::Tensor();
  L.q.reset(); L.k.reset(); L.v.reset(); L.o.reset();
  L.gate.reset(); L.up.reset(); L.down.reset();
  for (auto it = bf16_weights_.begin(); it != bf16_weights_.end();) {  // copies of this layer's weights
    it = it->second.first.use_count() == 1 ? bf16_weights_.erase(it) : std::next(it);
  }
}

Decoder Decoder::load(const std::string& model_dir, const LoadOptions& options) {
  ModelConfig config = load_model_config(model_dir + "/config.json");
  const at::ScalarType dtype = parse_compute_dtype(options.dtype);
  const at::Device device = resolve_device("--device", options.device);
  Decoder decoder(config, dtype, device);
  decoder.model_dir_ = model_dir;
  decoder.store_ = std::make_shared<TensorStore>(TensorStore::open_model_dir(model_dir));
  const int64_t d = config.hidden_size, V = config.vocab_size;
  auto global = [&](const std::string& name) {
    const TensorView& view = decoder.store_->require(name, {V, d});
    return tensor_from_view(view, options.keep_global_dtype ? stored_dtype(view) : dtype, device);
  };
  decoder.embed_weight = global("model.embed_tokens.weight");
  decoder.final_norm_weight =
      tensor_from_view(decoder.store_->require("model.norm.weight", {d}), dtype, device);
  if (config.tie_word_embeddings) {
    decoder.lm_head = std::make_shared<DenseLinear>(decoder.embed_weight, at::Tensor());
  } else {
    decoder.lm_head = std::make_shared<DenseLinear>(global("lm_head.weight"), at::Tensor());
  }
  // Validate every layer's tensors up front (presence and shape) even when loading lazily, so a
  // broken checkpoint fails before a long run starts.
  for (int64_t i = 0; i < config.num_layers; ++i) {
    decoder.load_or_check_layer(i, /*materialize=*/options.load_layers);
  }
  return decoder;
}

}  // namespace resq
