// A plain-libtorch Llama decoder layer (plain_layer.h): the baseline of `resq bench --layer`, and
// the random weights every bench layer is built from.
#include "resq/bench/plain_layer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <c10/core/GradMode.h>
#include <torch/version.h>

#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "resq/common/error.h"
#include "resq/linalg/random.h"

namespace resq {

// SDPA exists from libtorch 2.0, its `scale` argument from 2.1, `enable_gqa` from 2.5.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
#define RESQ_PLAIN_SDPA_GQA 1
#elif TORCH_VERSION_MAJOR == 2
#define RESQ_PLAIN_SDPA_EXPAND 1
#endif

at::Generator bench_generator(const std::string& device, uint64_t seed) {
  const at::Device dev(device);
  if (dev.is_cpu()) return at::make_generator<at::CPUGeneratorImpl>(seed);
  if (!dev.is_cuda() || !at::hasCUDA()) {
    throw UnsupportedError("bench weights: cannot draw on " + device + " (draws run on cpu or on cuda with a CUDA libtorch)");
  }
  at::Generator global = at::globalContext().defaultGenerator(dev.has_index() ? dev : at::Device(at::kCUDA, 0));
  at::Generator gen;
  {
    std::lock_guard<std::mutex> lock(global.mutex());  // build threads clone it concurrently
    gen = global.clone();
  }
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
  return gen;
}

PlainLayerWeights draw_bench_layer_weights(const ModelConfig& c, uint64_t seed, int64_t layer, const std::string& device) {
  const at::Device dev(device);
  at::Generator gen = bench_generator(device, Rng::derive_seed(seed, "bench_layer_weights", {layer}));
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(dev);
  auto draw = [&](int64_t n, int64_t k) { return at::randn({n, k}, gen, f32).mul_(0.02); };  // [N, K]
  const int64_t d = c.hidden_size, ffn = c.intermediate_size;
  PlainLayerWeights w;
  w.input_norm = at::ones({d}, f32);
  w.post_attention_norm = at::ones({d}, f32);
  // The order fixes which numbers each linear gets: q, k, v, o, gate, up, down.
  w.q = draw(c.q_size(), d);
  w.k = draw(c.kv_size(), d);
  w.v = draw(c.kv_size(), d);
  w.o = draw(d, c.q_size());
  w.gate = draw(ffn, d);
  w.up = draw(ffn, d);
  w.down = draw(d, ffn);
  return w;
}

PlainLayerWeights to_device(const PlainLayerWeights& w, at::ScalarType dtype, at::Device device) {
  auto cv = [&](const at::Tensor& t) { return t.to(device, dtype); };
  return {cv(w.input_norm), cv(w.post_attention_norm), cv(w.q),  cv(w.k),   cv(w.v),
          cv(w.o),          cv(w.gate),                cv(w.up), cv(w.down)};
}

namespace {

// HF LlamaRMSNorm: x [..., d] -> weight * (x / sqrt(mean(x^2) + eps)) with float32 statistics.
at::Tensor rms_norm_plain(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto stat = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xf = x.to(stat);
  const at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

// HF rotate_half: [x1, x2] -> [-x2, x1] over the last dimension.
at::Tensor rotate_half_plain(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

// Inverse frequencies [hd / 2] float64: theta^(-2i/hd), with HF's "llama3" rope scaling if configured.
at::Tensor inverse_frequencies(const ModelConfig& c) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor inv = at::pow(c.rope_theta, at::arange(0, c.head_dim, 2, f64).div(static_cast<double>(c.head_dim))).reciprocal();
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    const auto& s = c.rope_scaling;
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
    const at::Tensor wavelen = inv.reciprocal().mul(2.0 * M_PI);
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv / s.factor, inv);
    const at::Tensor smooth = (wavelen.reciprocal().mul(old_len) - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    const at::Tensor smoothed = (1.0 - smooth) * scaled / s.factor + smooth * scaled;
    const at::Tensor medium = at::logical_and(wavelen >= high_wavelen, wavelen <= low_wavelen);
    inv = at::where(medium, smoothed, scaled);
  }
  return inv;
}

// Causal GQA attention: q [B, H, T, hd], k/v [B, Hkv, T, hd] -> [B, H, T, hd] in q's dtype.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
#if defined(RESQ_PLAIN_SDPA_GQA)
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale, /*enable_gqa=*/true);
#else
  // Before enable_gqa: KV head j repeated for its G query heads (HF repeat_kv).
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), Hkv = k.size(1), G = H / Hkv;
  const at::Tensor ke = G == 1 ? k : k.unsqueeze(2).expand({B, Hkv, G, T, hd}).reshape({B, H, T, hd});
  const at::Tensor ve = G == 1 ? v : v.unsqueeze(2).expand({B, Hkv, G, T, hd}).reshape({B, H, T, hd});
#if defined(RESQ_PLAIN_SDPA_EXPAND)
#if TORCH_VERSION_MINOR >= 1
  return at::scaled_dot_product_attention(q, ke, ve, {}, 0.0, /*is_causal=*/true, scale);
#else
  (void)scale;  // 2.0 has no scale argument; its default is 1/sqrt(hd), the same value
  return at::scaled_dot_product_attention(q, ke, ve, {}, 0.0, /*is_causal=*/true);
#endif
#else
  // libtorch 1.x: HF's eager attention. Scores [B, H, T, T] in the compute dtype, + causal mask,
  // softmax in float32 (float64 for float64), probabilities cast back, times V.
  const auto stat = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor scores = at::matmul(q, ke.transpose(-1, -2)).mul(scale);
  const at::Tensor future = at::ones({T, T}, at::TensorOptions().dtype(at::kBool).device(q.device())).triu(1);
  const at::Tensor masked = scores.to(stat).masked_fill(future, -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(masked, -1).to(q.scalar_type()), ve);
#endif
#endif
}

}  // namespace

PlainTorchLayer::PlainTorchLayer(const ModelConfig& config, PlainLayerWeights weights) : c_(config), w_(std::move(weights)) {
  if (c_.sliding_window) throw UnsupportedError("PlainTorchLayer: sliding-window attention is not implemented");
  if (c_.num_heads <= 0 || c_.num_kv_heads <= 0 || c_.num_heads % c_.num_kv_heads != 0 || c_.head_dim % 2 != 0) {
    throw ShapeError("PlainTorchLayer: need num_heads a positive multiple of num_kv_heads and an even head_dim");
  }
  const int64_t d = c_.hidden_size, ffn = c_.intermediate_size;
  auto check = [](const at::Tensor& t, std::vector<int64_t> shape, const char* name) {
    if (!t.defined() || t.sizes() != at::IntArrayRef(shape)) {
      throw ShapeError(std::string("PlainTorchLayer: weight ") + name + " is missing or has the wrong shape");
    }
  };
  check(w_.input_norm, {d}, "input_norm");
  check(w_.post_attention_norm, {d}, "post_attention_norm");
  check(w_.q, {c_.q_size(), d}, "q");
  check(w_.k, {c_.kv_size(), d}, "k");
  check(w_.v, {c_.kv_size(), d}, "v");
  check(w_.o, {d, c_.q_size()}, "o");
  check(w_.gate, {ffn, d}, "gate");
  check(w_.up, {ffn, d}, "up");
  check(w_.down, {d, ffn}, "down");
}

const char* PlainTorchLayer::attention_path() {
#if defined(RESQ_PLAIN_SDPA_GQA)
  return "sdpa-gqa";
#elif defined(RESQ_PLAIN_SDPA_EXPAND)
  return "sdpa-expand-kv";
#else
  return "explicit-softmax";
#endif
}

std::string PlainTorchLayer::torch_version() { return TORCH_VERSION; }

at::Tensor PlainTorchLayer::forward(const at::Tensor& x) const {
  c10::NoGradGuard no_grad;
  if (x.dim() != 3 || x.size(2) != c_.hidden_size) {
    throw ShapeError("PlainTorchLayer::forward: x must be [B, T, " + std::to_string(c_.hidden_size) + "]");
  }
  const int64_t B = x.size(0), T = x.size(1), H = c_.num_heads, Hkv = c_.num_kv_heads, hd = c_.head_dim;
  if (rope_len_ < T || cos_.scalar_type() != x.scalar_type() || cos_.device() != x.device()) {
    // angles [T, hd] = position x cat(inv, inv) in float64, then cos/sin in the compute dtype.
    const at::Tensor inv = inverse_frequencies(c_);
    const at::Tensor pos = at::arange(T, at::TensorOptions().dtype(at::kDouble));
    const at::Tensor angles = at::outer(pos, at::cat({inv, inv}));
    cos_ = angles.cos().to(x.device(), x.scalar_type());
    sin_ = angles.sin().to(x.device(), x.scalar_type());
    rope_len_ = T;
  }
  const at::Tensor cos = cos_.narrow(0, 0, T), sin = sin_.narrow(0, 0, T);  // [T, hd]

  const at::Tensor n1 = rms_norm_plain(x, w_.input_norm, c_.rms_norm_eps);  // [B, T, d]
  at::Tensor q = at::linear(n1, w_.q).view({B, T, H, hd}).transpose(1, 2);      // [B, H, T, hd]
  at::Tensor k = at::linear(n1, w_.k).view({B, T, Hkv, hd}).transpose(1, 2);    // [B, Hkv, T, hd]
  const at::Tensor v = at::linear(n1, w_.v).view({B, T, Hkv, hd}).transpose(1, 2);
  q = q * cos + rotate_half_plain(q) * sin;
  k = k * cos + rotate_half_plain(k) * sin;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const at::Tensor attn = causal_attention(q, k, v, scale).transpose(1, 2).reshape({B, T, H * hd});
  const at::Tensor h = x + at::linear(attn, w_.o);

  const at::Tensor n2 = rms_norm_plain(h, w_.post_attention_norm, c_.rms_norm_eps);
  return h + at::linear(at::silu(at::linear(n2, w_.gate)) * at::linear(n2, w_.up), w_.down);
}

}  // namespace resq
