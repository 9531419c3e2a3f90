// Scale-aware straight-through fake quantizers (ste_quant.h): differentiable surrogates whose forward
// value is the exact quantizer's and whose gradient flows through the per-row / per-token scales.
#include "resq/quant/ste_quant.h"

#include <ATen/ATen.h>

#include "resq/common/error.h"

namespace resq {

namespace {

bool quantized_bits(int bits) { return bits < 16; }

// v in the forward pass, the gradient of the identity in the backward pass of round(v).
at::Tensor round_ste(const at::Tensor& v) { return v + (at::round(v) - v).detach(); }

// The surrogate's value replaced by the exact one, its gradient kept.
at::Tensor with_value(const at::Tensor& surrogate, const at::Tensor& exact) {
  return surrogate + (exact.to(surrogate.scalar_type()) - surrogate).detach();
}

at::Tensor guard_zero(const at::Tensor& s) { return at::where(s == 0, at::ones_like(s), s); }

}  // namespace

at::Tensor ste_weight_quant(const at::Tensor& w, const at::Tensor& exact, const at::Tensor& high_mask,
                            int bits_low, int bits_high, double clip_ratio) {
  if (w.dim() != 2 || high_mask.numel() != w.size(1)) throw ShapeError("ste_weight_quant: expected w [N, K] and a [K] mask");
  const at::Tensor m = high_mask.to(w.device(), at::kBool).view({1, -1});  // [1, K] on w's device
  const at::Tensor absw = w.abs();
  auto part = [&](const at::Tensor& other, int bits) {  // [N, K] on this part's grid
    if (!quantized_bits(bits)) return w;
    const double qmax = (1 << (bits - 1)) - 1, qmin = -(1 << (bits - 1));
    const at::Tensor s = guard_zero(absw.masked_fill(other, 0).amax(1, true) * (clip_ratio / qmax));  // [N, 1]
    return at::clamp(round_ste(w / s), qmin, qmax) * s;
  };
  const at::Tensor out = at::where(m, part(m.logical_not(), bits_high), part(m, bits_low));
  return with_value(out, exact);
}

at::Tensor ste_activation_quant(const at::Tensor& x, const at::Tensor& exact, const at::Tensor& high_mask,
                                int bits_low, int bits_high, double clip_ratio) {
  if (x.dim() < 1 || high_mask.numel() != x.size(-1)) throw ShapeError("ste_activation_quant: expected x [..., K] and a [K] mask");
  const at::Tensor m = high_mask.to(x.device(), at::kBool);  // [K] on x's device
  auto part = [&](const at::Tensor& other, int bits) {
    if (!quantized_bits(bits)) return x;
    const double qmax = (1 << bits) - 1;
    const at::Tensor xp = x.masked_fill(other, 0);  // 0 leaves min(min x, 0) and max(max x, 0) unchanged
    const at::Tensor lo = at::clamp_max(xp.amin(-1, true), 0) * clip_ratio, hi = at::clamp_min(xp.amax(-1, true), 0) * clip_ratio;
    const at::Tensor s = guard_zero((hi - lo) / qmax);
    const at::Tensor z = at::round(-lo / s).detach();
    return (at::clamp(round_ste(x / s) + z, 0, qmax) - z) * s;
  };
  const at::Tensor out = at::where(m, part(m.logical_not(), bits_high), part(m, bits_low));
  return with_value(out, exact);
}

}  // namespace resq
