// The bench layer's random weights and a plain-libtorch Llama decoder layer over them: the baseline
// of `resq bench --layer`, written independently of resq's Decoder (only at:: ops, cuBLAS, SDPA).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "resq/model/config.h"

namespace resq {

// One Llama decoder layer's parameters in the HF layout (no biases).
struct PlainLayerWeights {
  at::Tensor input_norm;           // [d]
  at::Tensor post_attention_norm;  // [d]
  at::Tensor q, k, v, o;           // [H*hd, d], [Hkv*hd, d], [Hkv*hd, d], [d, H*hd]
  at::Tensor gate, up, down;       // [ffn, d], [ffn, d], [d, ffn]
};

// The random weights of layer `layer` of a bench model (make_bench_layer / make_bench_model in
// layer_bench.h take theirs from here): each linear N(0, 0.02^2) drawn as float32 [N, K] in the order
// q, k, v, o, gate, up, down from one generator seeded with Rng::derive_seed(seed,
// "bench_layer_weights", {layer}); RMSNorm weights 1. `device` is where the numbers are drawn and
// returned: "cpu" uses a CPU generator (the same numbers everywhere), "cuda[:N]" a clone of that
// device's default generator (fast for whole models; other numbers than the CPU draw, equally random).
PlainLayerWeights draw_bench_layer_weights(const ModelConfig& config, uint64_t seed, int64_t layer,
                                           const std::string& device);

// A generator for bench draws on `device` seeded with `seed`: a CPU generator for "cpu", a private
// clone of the device's default generator for "cuda[:N]" (torch's global state is left alone).
// UnsupportedError for other devices or cuda without a CUDA libtorch.
at::Generator bench_generator(const std::string& device, uint64_t seed);

// Every tensor of w converted to `dtype` on `device` (shared storage where nothing changes).
PlainLayerWeights to_device(const PlainLayerWeights& w, at::ScalarType dtype, at::Device device);

// One decoder layer the way a straightforward PyTorch program writes it (HF LlamaDecoderLayer):
//   h = x + o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))));   y = h + down(silu(gate(n2(h))) * up(n2(h)))
// - n1, n2: RMSNorm with float32 statistics (float64 for float64 inputs), cast back, times weight;
// - linears: at::linear (cuBLAS on CUDA);
// - RoPE: HF rotate_half with cos/sin [T, hd] computed in float64 and cast to the compute dtype
//   (Llama-3.1 frequency scaling when the config has it);
// - attention, causal, GQA (query head h uses KV head h / (H / Hkv)), scale 1/sqrt(hd), by the
//   libtorch this was built against: >= 2.5 at::scaled_dot_product_attention(..., is_causal = true,
//   scale, enable_gqa = true); 2.0-2.4 the same with K/V expanded to H heads; 1.x an explicit
//   softmax(q·kᵀ·scale + causal mask, float32) · v with the expansion (see attention_path()).
// Weights (PlainLayerWeights) define the compute dtype and device. No KV cache, no sliding window
// (UnsupportedError for a config with one), no biases (the bench layers have none).
class PlainTorchLayer {
 public:
  PlainTorchLayer(const ModelConfig& config, PlainLayerWeights weights);
  // x [B, T, d] in the weights' dtype and device, positions 0..T-1 -> [B, T, d].
  at::Tensor forward(const at::Tensor& x) const;
  const PlainLayerWeights& weights() const { return w_; }

  // "sdpa-gqa" (>= 2.5), "sdpa-expand-kv" (2.0-2.4) or "explicit-softmax" (1.x).
  static const char* attention_path();
  // The libtorch version this binary was compiled against, e.g. "2.11.0".
  static std::string torch_version();

 private:
  ModelConfig c_;
  PlainLayerWeights w_;
  mutable int64_t rope_len_ = -1;
  mutable at::Tensor cos_, sin_;  // [rope_len_, hd] in the compute dtype
};

}  // namespace resq
