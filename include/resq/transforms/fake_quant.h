// Activation and KV-cache fake quantization, shared by the quantization pipeline (resq/quant) and the
// simulated runtime (resq/runtime): per-token asymmetric 4/8-bit rounding, returned dequantized.
// Number conventions are exactly those of resq/format/packed.h, so the integer runtime's quantized
// activations and KV cache dequantize to these values bit for bit.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "resq/model/decoder.h"
#include "resq/transforms/masks.h"

namespace resq {

// Per-token asymmetric fake quantization over the last dim, separately for the columns where
// high_mask is false (bits_low) and true (bits_high); a mask with no true entry gives one group, and
// equal bit widths still give two groups (two scales) when both parts are non-empty. Per token and part,
// in float32 exactly as format::activation_scale_zero / quantize_activation_value:
//   lo = min(min x, 0) * c; hi = max(max x, 0) * c; s = (hi - lo) / (2^b - 1); z = rne(-lo / s)
//   (s == 0 -> s = 1, z = 0); q = clamp(rne(x / s) + z, 0, 2^b - 1); x̂ = s * (q - z).
// x [..., K] any float dtype on any device (float64/bf16 are quantized in float32 and cast back);
// high_mask [K] bool; returns x̂ with x's shape and dtype. A part with bits >= 16 passes through.
// Throws ShapeError on a mask length != K, ConfigError on bad bits or clip outside (0, 1].
at::Tensor fake_quant_per_token(const at::Tensor& x, const at::Tensor& high_mask, int bits_low,
                                int bits_high, double clip_ratio);

namespace detail {
// fake_quant_per_token as whole-tensor torch ops (the path taken for non-CPU tensors; CPU tensors
// take a per-token loop over packed.h's scalar functions). Exposed so that the tests can check on
// the CPU that both paths agree bit for bit.
at::Tensor fake_quant_per_token_torch(const at::Tensor& x, const at::Tensor& high_mask,
                                      int bits_low, int bits_high, double clip_ratio);
}  // namespace detail

// TensorTransform wrapper of fake_quant_per_token with a fixed mask (for linear inputs).
class ActivationFakeQuant : public TensorTransform {
 public:
  ActivationFakeQuant(at::Tensor high_mask, int bits_low, int bits_high, double clip_ratio);
  // x [..., K] -> same shape and dtype.
  at::Tensor apply(const at::Tensor& x) const override;
  const at::Tensor& high_mask() const { return high_mask_; }

 private:
  at::Tensor high_mask_;  // [K] bool (CPU; moved to x's device on use)
  int bits_low_;
  int bits_high_;
  double clip_ratio_;
};

// KV-cache fake quantization: x [B, H, T, head_dim]; one group per (b, h, t) over head_dim, split
// into the first head_dim - r_h channels (bits_low) and the last r_h channels (bits_high);
// r_h = 0 -> one group at bits_low. Same formulas as fake_quant_per_token.
class KvFakeQuant : public TensorTransform {
 public:
  KvFakeQuant(int64_t head_dim, int64_t r_h, int bits_low, int bits_high, double clip_ratio);
  at::Tensor apply(const at::Tensor& x) const override;

 private:
  int64_t head_dim_;
  at::Tensor high_mask_;  // [head_dim] bool
  int bits_low_;
  int bits_high_;
  double clip_ratio_;
};

}  // namespace resq
