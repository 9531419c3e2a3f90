// High masks, per-part weight scales (fixed or MSE-searched clip), RTN weight quantization and the
// per-token / KV-cache activation fake quantizers. Every formula mirrors resq/format/packed.h in fp32.
#include "resq/quant/quantizers.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include <string>
#include <tuple>
#include <utility>

#include "resq/common/error.h"
#include "resq/format/packed.h"

namespace resq {
namespace {

bool quantized(int bits) { return bits < 16; }

void check_clip(double clip, const char* what) {
  if (!(clip > 0.0 && clip <= 1.0)) {
    throw ConfigError(std::string(what) + ": clip ratio " + std::to_string(clip) +
                      " must be in (0, 1]");
  }
}

// Clip ratios are rounded to float first so that every torch op sees exactly the fp32 value the
// scalar reference (packed.h) multiplies by, whatever the op's internal scalar type.
at::Scalar f32(double v) { return at::Scalar(static_cast<double>(static_cast<float>(v))); }

// Symmetric scales of one part: w32 [N, K] float32, part [K] bool (device of w32) or undefined for
// "all columns" -> [N] float32: (amax * c) / qmax_pos, 1 where that is 0.
at::Tensor symmetric_scale(const at::Tensor& absw, const at::Tensor& other_cols, int bits,
                           double clip) {
  at::Tensor a = other_cols.defined() ? absw.masked_fill(other_cols, 0.0) : absw;
  at::Tensor amax = a.amax(1);  // [N]
  const double qmax_pos = static_cast<double>((1 << (bits - 1)) - 1);
  at::Tensor s = amax.mul(f32(clip)).div(qmax_pos);
  return at::where(s == 0, at::ones_like(s), s);
}

// Rounds w32 [N, K] with per-row scales s [N] on a symmetric b-bit grid -> q (float) [N, K].
at::Tensor round_symmetric(const at::Tensor& w32, const at::Tensor& s, int bits) {
  const double qmin = -static_cast<double>(1 << (bits - 1));
  const double qmax = static_cast<double>((1 << (bits - 1)) - 1);
  // `+ 0` turns the -0.0 that rounding a small negative value gives into the +0.0 of float(int 0).
  return at::clamp(at::round(w32.div(s.unsqueeze(1))), qmin, qmax).add_(0.0);
}

// Per-row scales [N] of one part minimizing sum_k |w - ŵ|^2.4 over the part's columns among the clip
// candidates 1, 0.975, ..., 0.5 (ties keep the larger clip). absw/w32 [N, K], other_cols [K] bool.
at::Tensor mse_scale(const at::Tensor& w32, const at::Tensor& absw, const at::Tensor& other_cols,
                     int bits) {
  at::Tensor best_err;
  at::Tensor best_scale;
  for (int i = 0; i <= 20; ++i) {
    const double c = 1.0 - 0.025 * i;
    at::Tensor s = symmetric_scale(absw, other_cols, bits, c);           // [N]
    at::Tensor deq = round_symmetric(w32, s, bits).mul(s.unsqueeze(1));  // [N, K]
    at::Tensor e = (w32 - deq).abs_().pow_(2.4);
    if (other_cols.defined()) e.masked_fill_(other_cols, 0.0);
    at::Tensor err = e.sum(1);  // [N]
    if (i == 0) {
      best_err = err;
      best_scale = s;
    } else {
      at::Tensor better = err < best_err;
      best_err = at::where(better, err, best_err);
      best_scale = at::where(better, s, best_scale);
    }
  }
  return best_scale;
}

void check_weight(const at::Tensor& w, const char* fn) {
  if (!w.defined() || w.dim() != 2) {
    throw ShapeError(std::string(fn) + ": weight must be a 2-D [N, K] tensor");
  }
  if (!at::isFloatingType(w.scalar_type())) {
    throw ShapeError(std::string(fn) + ": weight must be a floating-point tensor");
  }
}

}  // namespace

void check_quant_bits(int bits, const char* what) {
  if (!((bits >= 2 && bits <= 8) || bits >= 16)) {
    throw ConfigError(std::string(what) + ": bits = " + std::to_string(bits) +
                      " must be in 2..8 (quantized) or >= 16 (not quantized)");
  }
}

std::vector<bool> high_mask_to_vector(const at::Tensor& high_mask, int64_t K, const char* what) {
  if (!high_mask.defined() || high_mask.dim() != 1 || high_mask.size(0) != K ||
      high_mask.scalar_type() != at::kBool) {
    throw ShapeError(std::string(what) + ": high_mask must be a [" + std::to_string(K) +
                     "] bool tensor" +
                     (high_mask.defined() ? ", got " + std::to_string(high_mask.dim()) +
                                                "-D with " + std::to_string(high_mask.numel()) +
                                                " elements"
                                          : ", got an undefined tensor"));
  }
  at::Tensor m = high_mask.to(at::kCPU).contiguous();
  const bool* p = m.data_ptr<bool>();
  return std::vector<bool>(p, p + K);
}

at::Tensor high_mask(format::HighRule rule, int64_t K, int64_t group, int64_t count, const char* what) {
  const bool per_head = rule == format::HighRule::kPerHead;
  if (K < 0 || count < 0 || count > (per_head ? group : K) || (per_head && (group <= 0 ? K != 0 : K % group != 0))) {
    throw ShapeError(std::string(what) + ": need 0 <= count <= " + (per_head ? "group" : "K") +
                     (per_head ? " and a group that divides K" : "") + ", got K = " + std::to_string(K) +
                     (per_head ? ", group = " + std::to_string(group) : "") + ", count = " + std::to_string(count));
  }
  at::Tensor m = at::zeros({K}, at::TensorOptions().dtype(at::kBool));
  bool* p = m.data_ptr<bool>();
  for (int64_t k : format::high_columns(rule, K, group, count)) p[k] = true;
  return m;
}

at::Tensor site_weight_high_mask(const format::SiteSpec& s) {
  return high_mask(s.high_rule, s.K, s.high_group, s.high_count, format::site_name(s.kind));
}

at::Tensor site_activation_high_mask(const format::SiteSpec& s) {
  return high_mask(s.high_rule, s.K, s.high_group, s.activations.high_count, format::site_name(s.kind));
}

at::Tensor high_mask_last(int64_t K, int64_t r) {
  if (K < 0 || r < 0 || r > K) {
    throw ShapeError("high_mask_last: need 0 <= r <= K, got K = " + std::to_string(K) +
                     ", r = " + std::to_string(r));
  }
  return high_mask(format::HighRule::kLast, K, 0, r, "high_mask_last");
}

at::Tensor high_mask_per_head(int64_t num_heads, int64_t head_dim, int64_t r_h) {
  if (num_heads < 0 || head_dim < 0 || r_h < 0 || r_h > head_dim) {
    throw ShapeError("high_mask_per_head: need num_heads >= 0 and 0 <= r_h <= head_dim, got "
                     "num_heads = " + std::to_string(num_heads) + ", head_dim = " +
                     std::to_string(head_dim) + ", r_h = " + std::to_string(r_h));
  }
  return high_mask(format::HighRule::kPerHead, num_heads * head_dim, head_dim, r_h, "high_mask_per_head");
}

// ------------------------------------------------------------------ weights

namespace {

// CPU path of weight_scales for one part of w32 [N, K] (contiguous float32): the same fp32 scale
// formula, the MSE search with the error summed in double -> [N] float32.
at::Tensor part_scale_cpu(const at::Tensor& w32, const std::vector<int64_t>& cols, int bits,
                          double clip, bool mse) {
  const int64_t N = w32.size(0);
  const int64_t K = w32.size(1);
  at::Tensor out = at::empty({N}, w32.options());
  const float* wp = w32.data_ptr<float>();
  float* sp = out.data_ptr<float>();
  const float qmax_pos = static_cast<float>((1 << (bits - 1)) - 1);
  const float qmin = -static_cast<float>(1 << (bits - 1));
  const auto scale_for = [&](float amax, double c) {
    const float sc = (amax * static_cast<float>(c)) / qmax_pos;
    return sc == 0.0f ? 1.0f : sc;
  };
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 12) / std::max<int64_t>(K, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* row = wp + n * K;
      float amax = 0.0f;
      for (int64_t k : cols) amax = std::max(amax, std::fabs(row[k]));
      if (!mse) {
        sp[n] = scale_for(amax, clip);
        continue;
      }
      double best_err = 0.0;
      float best = 1.0f;
      for (int i = 0; i <= 20; ++i) {
        const float sc = scale_for(amax, 1.0 - 0.025 * i);
        double err = 0.0;
        for (int64_t k : cols) {
          float q = format::round_half_even(row[k] / sc);
          q = std::min(std::max(q, qmin), qmax_pos);
          err += std::pow(std::fabs(static_cast<double>(row[k] - sc * q)), 2.4);
        }
        if (i == 0 || err < best_err) {
          best_err = err;
          best = sc;
        }
      }
      sp[n] = best;
    }
  });
  return out;
}

std::pair<at::Tensor, at::Tensor> weight_scales_impl(const at::Tensor& w,
                                                     const at::Tensor& high_mask, int bits_low,
                                                     int bits_high, double clip_ratio,
                                                     bool mse_clip, bool cpu_fast_path) {
  const char* fn = "weight_scales";
  check_weight(w, fn);
  check_quant_bits(bits_low, "weight quantizer (bits_low)");
  check_quant_bits(bits_high, "weight quantizer (bits_high)");
  if (!mse_clip) check_clip(clip_ratio, "weight quantizer");
  const int64_t N = w.size(0);
  const int64_t K = w.size(1);
  const std::vector<bool> mask = high_mask_to_vector(high_mask, K, fn);
  int64_t n_high = 0;
  for (bool b : mask) n_high += b ? 1 : 0;
  const at::TensorOptions opts = at::TensorOptions().dtype(at::kFloat).device(w.device());
  at::Tensor ones = at::ones({N}, opts);
  if (K == 0) return {ones, ones.clone()};

  if (cpu_fast_path && w.device().is_cpu()) {
    at::Tensor w32 = w.to(at::kFloat).contiguous();
    std::vector<int64_t> cols[2];
    for (int64_t k = 0; k < K; ++k) cols[mask[static_cast<size_t>(k)] ? 1 : 0].push_back(k);
    auto part = [&](int p, int bits) {
      if (cols[p].empty() || !quantized(bits)) return ones.clone();
      return part_scale_cpu(w32, cols[p], bits, clip_ratio, mse_clip);
    };
    return {part(0, bits_low), part(1, bits_high)};
  }
  at::Tensor w32 = w.to(at::kFloat);
  at::Tensor absw = w32.abs();
  at::Tensor m = high_mask.to(w.device());
  // Columns outside each part are masked to 0 (undefined = the part has every column).
  at::Tensor not_low = n_high == 0 ? at::Tensor() : m;
  at::Tensor not_high = n_high == K ? at::Tensor() : m.logical_not();
  auto part_scale = [&](bool has_cols, const at::Tensor& other, int bits) -> at::Tensor {
    if (!has_cols || !quantized(bits)) return ones.clone();
    return mse_clip ? mse_scale(w32, absw, other, bits)
                    : symmetric_scale(absw, other, bits, clip_ratio);
  };
  return {part_scale(n_high < K, not_low, bits_low), part_scale(n_high > 0, not_high, bits_high)};
}

}  // namespace

std::pair<at::Tensor, at::Tensor> weight_scales(const at::Tensor& w, const at::Tensor& high_mask,
                                                int bits_low, int bits_high, double clip_ratio,
                                                bool mse_clip) {
  return weight_scales_impl(w, high_mask, bits_low, bits_high, clip_ratio, mse_clip, true);
}

namespace detail {
std::pair<at::Tensor, at::Tensor> weight_scales_torch(const at::Tensor& w,
                                                      const at::Tensor& high_mask, int bits_low,
                                                      int bits_high, double clip_ratio,
                                                      bool mse_clip) {
  return weight_scales_impl(w, high_mask, bits_low, bits_high, clip_ratio, mse_clip, false);
}
}  // namespace detail

QuantizedWeight rtn_quantize_weight(const at::Tensor& w, const at::Tensor& high_mask, int bits_low,
                                    int bits_high, double clip_ratio, bool mse_clip) {
  const char* fn = "rtn_quantize_weight";
  check_weight(w, fn);
  const int64_t K = w.size(1);
  const std::vector<bool> mask = high_mask_to_vector(high_mask, K, fn);
  auto [s_low, s_high] = weight_scales(w, high_mask, bits_low, bits_high, clip_ratio, mse_clip);

  at::Tensor w32 = w.to(at::kFloat);
  at::Tensor m = high_mask.to(w.device()).unsqueeze(0);  // [1, K]
  at::Tensor zero = at::zeros_like(w32);
  // Each part is rounded on its own grid over all columns, then the columns are picked by the mask;
  // a non-quantized part keeps w (dequant) and 0 (q).
  at::Tensor q_low = quantized(bits_low) ? round_symmetric(w32, s_low, bits_low) : zero;
  at::Tensor q_high = quantized(bits_high) ? round_symmetric(w32, s_high, bits_high) : zero;
  at::Tensor d_low = quantized(bits_low) ? q_low.mul(s_low.unsqueeze(1)) : w32;
  at::Tensor d_high = quantized(bits_high) ? q_high.mul(s_high.unsqueeze(1)) : w32;

  QuantizedWeight out;
  out.q = at::where(m, q_high, q_low).to(at::kChar);
  out.dequant = at::where(m, d_high, d_low).contiguous();
  out.scale_low = s_low;
  out.scale_high = s_high;
  out.high_mask = high_mask.to(at::kCPU).clone();
  out.bits_low = bits_low;
  out.bits_high = bits_high;
  return out;
}

// ------------------------------------------------------------------ activations

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
  at::Tensor lo = at::where(mn < 0, mn, zero).mul(f32(clip));
  at::Tensor hi = at::where(mx > 0, mx, zero).mul(f32(clip));
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
        if (!quantized(bits[p])) {
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
          orow[k] = scale * static_cast<float>(q - zero);
        }
      }
    }
  });
  return out;
}

}  // namespace

namespace {

at::Tensor fake_quant_impl(const at::Tensor& x, const at::Tensor& high_mask, int bits_low,
                           int bits_high, double clip_ratio, bool cpu_fast_path) {
  const char* fn = "fake_quant_per_token";
  if (!x.defined() || x.dim() < 1 || !at::isFloatingType(x.scalar_type())) {
    throw ShapeError(std::string(fn) + ": x must be a floating-point tensor [..., K]");
  }
  check_quant_bits(bits_low, "activation quantizer (bits_low)");
  check_quant_bits(bits_high, "activation quantizer (bits_high)");
  check_clip(clip_ratio, "activation quantizer");
  const int64_t K = x.size(-1);
  const std::vector<bool> mask = high_mask_to_vector(high_mask, K, fn);
  int64_t n_high = 0;
  for (bool b : mask) n_high += b ? 1 : 0;
  const bool has_low = n_high < K;
  const bool has_high = n_high > 0;
  const bool q_low = has_low && quantized(bits_low);
  const bool q_high = has_high && quantized(bits_high);
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
  check_clip(clip_ratio, "ActivationFakeQuant");
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
  check_clip(clip_ratio, "KvFakeQuant");
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
