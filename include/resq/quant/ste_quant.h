// Scale-aware straight-through fake quantizers for learning rotations (src/quant/learned_rotation.cpp):
// the forward value is the exact quantizer's, the gradient flows through the scales (LSQ/SpinQuant).
#pragma once

#include <ATen/core/Tensor.h>

namespace resq {

// The surrogate of a fake quantizer: value `exact` (the real quantizer's output, no grad) and the
// gradient of s · (clamp(round_ste(x / s) + z, lo, hi) − z) with round_ste the identity in the
// backward pass and the scale s a differentiable function of x (its max/min), z detached. So the
// gradient says how the rounding error moves when a rotation moves the range — the signal a plain
// straight-through estimator (gradient of the identity) lacks, since the fp function does not depend
// on the rotations. A part with bits >= 16 passes x through.

// Symmetric per output row, two parts along K as rtn_quantize_weight (no MSE clip search):
// s = clip · max_k∈part |w[n, k]| / (2^(b−1) − 1), z = 0, clamp to [−2^(b−1), 2^(b−1) − 1].
// w [N, K] float32 (with grad), exact [N, K], high_mask [K] bool -> [N, K].
at::Tensor ste_weight_quant(const at::Tensor& w, const at::Tensor& exact, const at::Tensor& high_mask,
                            int bits_low, int bits_high, double clip_ratio);

// Asymmetric per token over the last dim, two parts, as fake_quant_per_token:
// lo = clip · min(min x, 0), hi = clip · max(max x, 0), s = (hi − lo) / (2^b − 1), z = round(−lo / s),
// clamp to [0, 2^b − 1]. x [..., K] float32 (with grad), exact like x, high_mask [K] bool -> like x.
at::Tensor ste_activation_quant(const at::Tensor& x, const at::Tensor& exact, const at::Tensor& high_mask,
                                int bits_low, int bits_high, double clip_ratio);

}  // namespace resq
