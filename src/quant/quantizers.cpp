// Per-part weight scales (fixed or MSE-searched clip) and RTN weight quantization (quantizers.h).
// Every formula mirrors resq/format/packed.h in fp32.
#include "resq/quant/quantizers.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include <string>
#include <tuple>
#include <utility>

#include "resq/common/error.h"
#include "resq/io/safetensors.h"  // format_shape
#include "resq/format/packed.h"

namespace resq {
namespace {

// Symmetric scales of one part: w32 [N, K] float32, part [K] bool (device of w32) or undefined for
// "all columns" -> [N] float32: (amax * c) / qmax_pos, 1 where that is 0.
at::Tensor symmetric_scale(const at::Tensor& absw, const at::Tensor& other_cols, int bits,
                           double clip) {
  at::Tensor a = other_cols.defined() ? absw.masked_fill(other_cols, 0.0) : absw;
  at::Tensor amax = a.amax(1);  // [N]
  const double qmax_pos = static_cast<double>((1 << (bits - 1)) - 1);
  at::Tensor s = amax.mul(detail::fp32_scalar(clip)).div(qmax_pos);
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
  if (!mse_clip) check_clip_ratio(clip_ratio, "weight quantizer");
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
      if (cols[p].empty() || !is_quantized_bits(bits)) return ones.clone();
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
    if (!has_cols || !is_quantized_bits(bits)) return ones.clone();
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
  at::Tensor q_low = is_quantized_bits(bits_low) ? round_symmetric(w32, s_low, bits_low) : zero;
  at::Tensor q_high = is_quantized_bits(bits_high) ? round_symmetric(w32, s_high, bits_high) : zero;
  at::Tensor d_low = is_quantized_bits(bits_low) ? q_low.mul(s_low.unsqueeze(1)) : w32;
  at::Tensor d_high = is_quantized_bits(bits_high) ? q_high.mul(s_high.unsqueeze(1)) : w32;

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

format::PackedLinear pack_quantized_weight(const QuantizedWeight& qw, const std::vector<int32_t>& column_order,
                                           const at::Tensor& bias, const std::string& what) {
  const at::Tensor mask = qw.high_mask.to(at::kCPU, at::kBool).contiguous();  // [K]
  const int64_t K = static_cast<int64_t>(column_order.size());
  if (qw.q.dim() != 2 || qw.q.size(1) != K || mask.numel() != K) {
    throw ShapeError(what + ": q has shape " + format_shape(qw.q.sizes().vec()) + " and high_mask " +
                     std::to_string(mask.numel()) + " columns, the column order " + std::to_string(K));
  }
  const int64_t N = qw.q.size(0), K8 = mask.sum().item<int64_t>(), K4 = K - K8;
  const bool* high = mask.data_ptr<bool>();
  for (int64_t j = 0; j < K; ++j) {
    const int32_t c = column_order[static_cast<size_t>(j)];
    if (c >= 0 && c < K && high[c] != (j >= K4)) {
      throw ShapeError(what + ": packed column " + std::to_string(j) + " = column " + std::to_string(c) + " is " +
                       (high[c] ? "high" : "low") + ", but the order must put the " + std::to_string(K4) +
                       " low columns first");
    }
  }
  const at::Tensor q = qw.q.to(at::kCPU, at::kChar).contiguous();  // [N, K] int8
  const at::Tensor sl = qw.scale_low.to(at::kCPU, at::kFloat).contiguous(), sh = qw.scale_high.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor b = bias.defined() ? bias.to(at::kCPU, at::kFloat).contiguous() : at::Tensor();
  if (sl.numel() != N || sh.numel() != N || (b.defined() && b.numel() != N)) {
    throw ShapeError(what + ": scales / bias are not [N = " + std::to_string(N) + "]");
  }
  format::PackOptions o;
  o.column_order = column_order.data();
  o.bits_low = qw.bits_low;
  o.bits_high = qw.bits_high;
  o.what = what;
  return format::pack_linear(q.data_ptr<int8_t>(), sl.data_ptr<float>(), sh.data_ptr<float>(),
                             b.defined() ? b.data_ptr<float>() : nullptr, {N, K4, K8}, o);
}

}  // namespace resq
