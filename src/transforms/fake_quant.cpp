// Per-token activation and per-(token, head) KV-cache fake quantization (fake_quant.h): a CPU path
// over packed.h's scalar functions and a whole-tensor torch path for other devices, bit-identical.
#include "resq/transforms/fake_quant.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <utility>

#include "resq/common/error.h"
#include "resq/format/packed.h"

namespace resq {

namespace {

// Scale and zero point [..., 1] of one part of x32 [..., K] (other columns masked to 0, which leaves
// min(min x, 0) and max(max x, 0) unchanged), exactly as format::activation_scale_zero.
std::pair<at::Tensor, at::Tensor> asym_scale_zero(const at::Tensor& x32, const at::Tensor& other_cols,
                                                  int bits, double clip) {
  at::Tensor xp = other_cols.defined() ? x32.masked_fill(other_cols, 0.0) : x32;
  at::Tensor mn = xp.amin(-1, /*keepdim=*/true);
  at::Tensor mx = xp.amax(-1, /*keepdim=*/true);
  at::Tensor zero = at::zeros_like(mn);
  // `x < 0 ? x : 0` as in packed.h (so that -0.0 becomes +0.0 exactly like there).
  at::Tensor lo = at::where(mn < 0, mn, zero).mul(detail::fp32_scalar(clip));
  at::Tensor hi = at::where(mx > 0, mx, zero).mul(detail::fp32_scalar(clip));
  const double qmax = static_cast<double>((1 << bits) - 1);
  at::Tensor s = (hi - lo).div(qmax);
  at::Tensor is_zero = s == 0;
  s = at::where(is_zero, at::ones_like(s), s);
  at::Tensor z = at::where(is_zero, zero, at::round(lo.neg().div(s)));
  return {s, z};
}

// CPU fast path of fake_quant_per_token: x32 [M, K] contiguous float32 on the CPU, one pass per
// token with the scalar functions of packed.h (bit-identical to the torch path by construction).
at::Tensor fake_quant_rows_cpu(const at::Tensor& x32, const std::vector<bool>& mask, int bits_low,
                               int bits_high, float clip) {
  const int64_t M = x32.size(0);
  const int64_t K = x32.size(1);
  std::vector<int64_t> cols[2];  // [0]: low columns, [1]: high columns
  for (int64_t k = 0; k < K; ++k) cols[mask[static_cast<size_t>(k)] ? 1 : 0].push_back(k);
  const int bits[2] = {bits_low, bits_high};
  at::Tensor out = at::empty_like(x32);
  const float* xp = x32.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(K, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float* xr = xp + m * K;
      float* orow = op + m * K;
      for (int p = 0; p < 2; ++p) {
        const std::vector<int64_t>& c = cols[p];
        if (c.empty()) continue;
        if (!is_quantized_bits(bits[p])) {
          for (int64_t k : c) orow[k] = xr[k];
          continue;
        }
        const int qmax = (1 << bits[p]) - 1;
        float mn = 0.0f, mx = 0.0f;
        for (int64_t k : c) {
          mn = std::min(mn, xr[k]);
          mx = std::max(mx, xr[k]);
        }
        float scale;
        int32_t zero;
        format::activation_scale_zero(mn, mx, clip, qmax, &scale, &zero);
        for (int64_t k : c) {
          const int q = format::quantize_activation_value(xr[k], scale, zero, qmax);
          orow[k] = format::dequantize_activation_value(q, scale, zero);
        }
      }
    }
  });
  return out;
}

at::Tensor fake_quant_impl(const at::Tensor& x, const at::Tensor& high_mask, int bits_low,
                           int bits_high, double clip_ratio, bool cpu_fast_path) {
  const char* fn = "fake_quant_per_token";
  if (!x.defined() || x.dim() < 1 || !at::isFloatingType(x.scalar_type())) {
    throw ShapeError(std::string(fn) + ": x must be a floating-point tensor [..., K]");
  }
  check_quant_bits(bits_low, "activation quantizer (bits_low)");
  check_quant_bits(bits_high, "activation quantizer (bits_high)");
  check_clip_ratio(clip_ratio, "activation quantizer");
  const int64_t K = x.size(-1);
  const std::vector<bool> mask = high_mask_to_vector(high_mask, K, fn);
  int64_t n_high = 0;
  for (bool b : mask) n_high += b ? 1 : 0;
  const bool has_low = n_high < K;
  const bool has_high = n_high > 0;
  const bool q_low = has_low && is_quantized_bits(bits_low);
  const bool q_high = has_high && is_quantized_bits(bits_high);
  if (x.numel() == 0 || (!q_low && !q_high)) return x.clone();

  if (cpu_fast_path && x.device().is_cpu()) {
    at::Tensor x32 = x.to(at::kFloat).contiguous();
    at::Tensor out = fake_quant_rows_cpu(x32.view({-1, K}), mask, bits_low, bits_high,
                                         static_cast<float>(clip_ratio));
    return out.view(x.sizes()).to(x.scalar_type());
  }
  // Device path: the same formulas as whole-tensor torch ops (IEEE fp32, round = half to even).
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor m = high_mask.to(x.device());
  at::Tensor not_low = has_high ? m : at::Tensor();
  at::Tensor not_high = has_low ? m.logical_not() : at::Tensor();

  at::Tensor s, z, qmax_t;
  double qmax = 0.0;
  bool per_column_qmax = false;
  if (q_low && q_high) {
    auto [sl, zl] = asym_scale_zero(x32, not_low, bits_low, clip_ratio);
    auto [sh, zh] = asym_scale_zero(x32, not_high, bits_high, clip_ratio);
    s = at::where(m, sh, sl);  // [..., K]
    z = at::where(m, zh, zl);
    if (bits_low == bits_high) {
      qmax = static_cast<double>((1 << bits_low) - 1);
    } else {
      per_column_qmax = true;
      at::Tensor ql = at::full({K}, static_cast<double>((1 << bits_low) - 1), x32.options());
      at::Tensor qh = at::full({K}, static_cast<double>((1 << bits_high) - 1), x32.options());
      qmax_t = at::where(m, qh, ql);
    }
  } else if (q_low) {
    std::tie(s, z) = asym_scale_zero(x32, not_low, bits_low, clip_ratio);
    qmax = static_cast<double>((1 << bits_low) - 1);
  } else {
    std::tie(s, z) = asym_scale_zero(x32, not_high, bits_high, clip_ratio);
    qmax = static_cast<double>((1 << bits_high) - 1);
  }
  // q = clamp(rne(x / s) + z, 0, qmax), then x̂ = s * (q - z): the order of packed.h.
  at::Tensor q = at::round(x32.div(s)).add_(z).clamp_min_(0.0);
  q = per_column_qmax ? at::minimum(q, qmax_t) : q.clamp_max_(qmax);
  at::Tensor out = q.sub_(z).mul_(s);
  // A part left in floating point keeps x.
  if (has_low && !q_low) out = at::where(m, out, x32);
  if (has_high && !q_high) out = at::where(m, x32, out);
  return out.to(x.scalar_type());
}

}  // namespace

at::Tensor fake_quant_per_token(const at::Tensor& x, const at::Tensor& high_mask, int bits_low,
                                int bits_high, double clip_ratio) {
  return fake_quant_impl(x, high_mask, bits_low, bits_high, clip_ratio, /*cpu_fast_path=*/true);
}

namespace detail {
at::Tensor fake_quant_per_token_torch(const at::Tensor& x, const at::Tensor& high_mask,
                                      int bits_low, int bits_high, double clip_ratio) {
  return fake_quant_impl(x, high_mask, bits_low, bits_high, clip_ratio, /*cpu_fast_path=*/false);
}
}  // namespace detail

ActivationFakeQuant::ActivationFakeQuant(at::Tensor high_mask, int bits_low, int bits_high,
                                         double clip_ratio)
    : high_mask_(std::move(high_mask)),
      bits_low_(bits_low),
      bits_high_(bits_high),
      clip_ratio_(clip_ratio) {
  if (!high_mask_.defined() || high_mask_.dim() != 1) {
    throw ShapeError("ActivationFakeQuant: high_mask must be a 1-D [K] bool tensor");
  }
  high_mask_to_vector(high_mask_, high_mask_.size(0), "ActivationFakeQuant");
  high_mask_ = high_mask_.to(at::kCPU).clone();
  check_quant_bits(bits_low, "ActivationFakeQuant (bits_low)");
  check_quant_bits(bits_high, "ActivationFakeQuant (bits_high)");
  check_clip_ratio(clip_ratio, "ActivationFakeQuant");
}

at::Tensor ActivationFakeQuant::apply(const at::Tensor& x) const {
  return fake_quant_per_token(x, high_mask_, bits_low_, bits_high_, clip_ratio_);
}

KvFakeQuant::KvFakeQuant(int64_t head_dim, int64_t r_h, int bits_low, int bits_high,
                         double clip_ratio)
    : head_dim_(head_dim),
      high_mask_(high_mask_last(head_dim, r_h)),
      bits_low_(bits_low),
      bits_high_(bits_high),
      clip_ratio_(clip_ratio) {
  check_quant_bits(bits_low, "KvFakeQuant (bits_low)");
  check_quant_bits(bits_high, "KvFakeQuant (bits_high)");
  check_clip_ratio(clip_ratio, "KvFakeQuant");
}

at::Tensor KvFakeQuant::apply(const at::Tensor& x) const {
  // x [B, H, T, head_dim]: the groups are (b, h, t) rows over the last dim.
  if (!x.defined() || x.dim() != 4 || x.size(3) != head_dim_) {
    throw ShapeError("KvFakeQuant: expected [B, H, T, " + std::to_string(head_dim_) +
                     "] keys/values" +
                     (x.defined() ? ", got " + std::to_string(x.dim()) + "-D with last dim " +
                                        (x.dim() > 0 ? std::to_string(x.size(-1)) : "-")
                                  : ""));
  }
  return fake_quant_per_token(x, high_mask_, bits_low_, bits_high_, clip_ratio_);
}

}  // namespace resq
