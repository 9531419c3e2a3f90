// The decoder's attention core, owned here for every caller (full forward, incremental decoding,
// caches): causal (optionally sliding-window) GQA attention of a query chunk against its keys, on
// the path the device and libtorch make fastest, plus the additive mask every path agrees on.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace resq {

enum class AttentionPath {
  kReference,     // baddbmm + softmax + bmm in the compute dtype, scores in float32 (float64 models: float64)
  kBf16Products,  // CPU float32 models: q·kᵀ and p·v as bf16 products with float32 accumulation (oneDNN)
  kFused,         // libtorch's scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)
};

const char* attention_path_name(AttentionPath path);  // "reference", "bf16-products", "fused-sdpa"

// Whether this libtorch has at::scaled_dot_product_attention (PyTorch >= 2.0; Debian's 1.13 has not).
bool fused_attention_compiled();

// The path Decoder::run_layer takes: kBf16Products when the decoder's products are bf16 (CPU float32
// models, set_matmul_dtype), kFused on CUDA for float32/bfloat16 when fused_attention_compiled(), else
// kReference (the CPU keeps the reference path, fastest there for the small models run on it).
AttentionPath choose_attention_path(const at::Device& device, at::ScalarType dtype, at::ScalarType matmul_dtype);

// What a query chunk sees: queries take absolute positions [L - t, L) of the L keys (the chunk's own
// keys are the last t); key j is visible from query position p when j <= p and, with a window,
// p - j < window.
struct AttentionSpec {
  std::optional<int64_t> window;    // sliding window (Mistral / Qwen2 when enabled), or none
  at::ScalarType dtype = at::kFloat;  // compute dtype of q/k/v and of the result
  AttentionPath path = AttentionPath::kReference;
};

// Additive mask [t, L] (0 visible, -inf hidden) for queries at [L - t, L), in `stat_type` on `device`.
// The last mask is cached per thread and returned shared: read it, never write into it.
at::Tensor attention_mask(int64_t t, int64_t L, const std::optional<int64_t>& window, at::ScalarType stat_type,
                          const at::Device& device);

// Rows r of q3 [R, Tq, hd] against k3/v3 [R, L, hd]: scores = mask + q·kᵀ/√hd (one baddbmm) in float32
// (float64 when dtype is float64), softmax, probabilities cast to dtype, · v -> [R, Tq, hd] in dtype.
// mask: additive [1, Tq, L] in that statistics dtype. Runs in chunks of rows that keep each scores
// buffer under ~16 MiB, so glibc reuses heap memory instead of mmap()ing (and page-faulting) a fresh
// buffer per layer: measured 6x faster on stories260K than one buffer.
at::Tensor masked_attention_rows(const at::Tensor& q3, const at::Tensor& k3, const at::Tensor& v3, const at::Tensor& mask,
                                 at::ScalarType dtype);

// q [B, H, t, hd], k/v [B, Hkv, L, hd] (L >= t, H a multiple of Hkv; KV head j serves query heads
// [j*G, (j+1)*G) as HF's repeat_kv) -> [B, t, H*hd] in spec.dtype, on spec.path. kBf16Products needs a
// chunk that starts at position 0 (t == L) and falls back to kReference otherwise. Throws ShapeError
// for inconsistent shapes and UnsupportedError for kFused where fused_attention_compiled() is false.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionSpec& spec);

}  // namespace resq
