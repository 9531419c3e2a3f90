// The Fisher-weighted expected quantization noise of activations and KV cache as a smooth function
// of the learned rotations: the objective "noise" of rotation.learn (src/quant/learned_rotation.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace resq {

// A contiguous block [offset, offset + size) of a site's channels rotated by the learned rotation
// `rotation` (an index into the rotations passed to expected_noise, each [size, size]).
struct NoiseBlock {
  int64_t offset = 0, size = 0;
  int rotation = 0;
};

// One quantized activation (or one KV head's cache) as recorded from the floating-point model with
// the learned rotations at the identity: x [M, K] float32 in the fixed (PCA + random) basis; fisher
// [M, 2] the squared norms of ∂(sampled log-likelihood)/∂x over the low and the high channels —
// per token the trace of the Fisher information restricted to each part, which a rotation inside a
// part does not change. Quantized per token (asymmetric, clip_ratio, bits_low on the low part and
// bits_high on high_mask [K] bool), as fake_quant_per_token; blocks tile the K channels.
// Or one weight matrix rotated on its input side: x = W [N, K] in the fixed basis, one row per output
// channel, quantized per row and part (symmetric, as weight_scales); fisher [N, 2] = Σ_t g_tn² ‖x_t,part‖²
// over the recorded tokens t (g = ∂(sampled log-likelihood)/∂ output, x_t the input): rounding noise
// of variance s²/12 in row n and part p adds s²/12 · fisher[n, p] to the output's Fisher-weighted error.
struct NoiseSite {
  std::string name;
  at::Tensor x, fisher, high_mask;
  int bits_low = 4, bits_high = 8;
  double clip_ratio = 1.0;
  bool symmetric = false;  // weights: step clip · max|x| / (2^(bits-1) - 1)
  std::vector<NoiseBlock> blocks;
};

// fisher [M, 2] of a gradient g [M, K]: Σ g² over the low (!high_mask) and over the high channels.
at::Tensor part_fisher(const at::Tensor& g, const at::Tensor& high_mask);

// Σ over sites, tokens (rows) and parts of fisher · s² / 24 with s = clip · (max(max x, 0) − min(min x, 0)) /
// (2^bits − 1) (symmetric: clip · max|x| / (2^(bits−1) − 1)) the per-row step of each part after
// rotating each block by its rotation: the
// second-order estimate of the KL(fp ‖ quantized) that uniform rounding noise of variance s²/12 per
// channel adds, summed over the recorded tokens (divide by the token count for a per-token figure).
// Differentiable in the rotations (through the per-token max/min); a part with bits >= 16 adds 0.
// rotations: float32 or float64 [size, size] (cast to x's dtype); returns a float64 scalar.
at::Tensor expected_noise(const std::vector<NoiseSite>& sites, const std::vector<at::Tensor>& rotations);

}  // namespace resq
