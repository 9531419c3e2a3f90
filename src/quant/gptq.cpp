// GPTQ weight quantization (Frantar et al., ICLR 2023), groupsize -1, no act-order, with a per-column
// bit width (ResQ mixed 4/8-bit along K) in a single pass. See quantizers.h for the contract.
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "resq/common/error.h"
#include "resq/quant/quantizers.h"

namespace resq {
namespace {

// Upper Cholesky factor U (float64, [K, K]) of (H + damp * I)^-1, or an undefined tensor when either
// factorization fails. H [K, K] float64 with no zero diagonal entry.
at::Tensor inverse_cholesky_upper(const at::Tensor& H, double damp) {
  const int64_t K = H.size(0);
  at::Tensor Hd = H + at::eye(K, H.options()).mul(damp);
  auto [L, info] = at::linalg_cholesky_ex(Hd, /*upper=*/false);
  if (info.item<int64_t>() != 0) return at::Tensor();
  at::Tensor Hinv = at::cholesky_inverse(L, /*upper=*/false);
  auto [U, info2] = at::linalg_cholesky_ex(Hinv, /*upper=*/true);
  if (info2.item<int64_t>() != 0 || !at::isfinite(U).all().item<bool>()) return at::Tensor();
  return U;
}

}  // namespace

QuantizedWeight gptq_quantize_weight(const at::Tensor& w, const at::Tensor& hessian,
                                     const at::Tensor& high_mask, int bits_low, int bits_high,
                                     double percdamp, int64_t blocksize, double clip_ratio,
                                     bool mse_clip) {
  const char* fn = "gptq_quantize_weight";
  if (!w.defined() || w.dim() != 2 || !at::isFloatingType(w.scalar_type())) {
    throw ShapeError(std::string(fn) + ": weight must be a floating-point 2-D [N, K] tensor");
  }
  const int64_t N = w.size(0);
  const int64_t K = w.size(1);
  if (!hessian.defined() || hessian.dim() != 2 || hessian.size(0) != K || hessian.size(1) != K ||
      !at::isFloatingType(hessian.scalar_type())) {
    throw ShapeError(std::string(fn) + ": hessian must be a floating-point [" + std::to_string(K) +
                     ", " + std::to_string(K) + "] tensor for a weight with K = " +
                     std::to_string(K) + " input columns" +
                     (hessian.defined() && hessian.dim() == 2
                          ? ", got [" + std::to_string(hessian.size(0)) + ", " +
                                std::to_string(hessian.size(1)) + "]"
                          : ""));
  }
  if (!(percdamp >= 0.0)) {
    throw ConfigError(std::string(fn) + ": percdamp = " + std::to_string(percdamp) +
                      " must be >= 0");
  }
  if (blocksize < 1) {
    throw ConfigError(std::string(fn) + ": blocksize = " + std::to_string(blocksize) +
                      " must be >= 1");
  }
  const std::vector<bool> mask = high_mask_to_vector(high_mask, K, fn);
  // Scales once, from the original weights (GPTQ's find_params before the loop, groupsize -1).
  auto [s_low, s_high] = weight_scales(w, high_mask, bits_low, bits_high, clip_ratio, mse_clip);

  const at::Device device = w.device();
  at::Tensor W = w.to(at::kFloat).clone().contiguous();  // [N, K] float32, updated in place
  at::Tensor H = hessian.to(device, at::kDouble).clone();  // [K, K] float64

  // Dead inputs never seen by calibration: the weight is irrelevant there, so zero it.
  at::Tensor diag = H.diagonal();
  at::Tensor dead = diag == 0;
  diag.masked_fill_(dead, 1.0);
  W.masked_fill_(dead.unsqueeze(0), 0.0);

  QuantizedWeight out;
  out.bits_low = bits_low;
  out.bits_high = bits_high;
  out.scale_low = s_low;
  out.scale_high = s_high;
  out.high_mask = high_mask.to(at::kCPU).clone();
  if (N == 0 || K == 0) {
    out.dequant = W;
    out.q = at::zeros({N, K}, W.options().dtype(at::kChar));
    return out;
  }

  const double mean_diag = diag.mean().item<double>();
  double frac = percdamp;
  at::Tensor U;
  for (int attempt = 0; attempt <= 6; ++attempt) {
    U = inverse_cholesky_upper(H, frac * mean_diag);
    if (U.defined()) break;
    frac = frac > 0.0 ? frac * 10.0 : 0.01;
  }
  if (!U.defined()) {
    throw Error(std::string(fn) + ": Cholesky factorization of the damped Hessian [" +
                std::to_string(K) + ", " + std::to_string(K) + "] failed even with dampening " +
                std::to_string(frac) + " * mean(diag H); the Hessian is not positive semi-definite "
                "or not finite");
  }
  out.damp_fraction = frac;
  at::Tensor Hinv = U.to(at::kFloat);  // [K, K] float32, upper triangular

  const auto rounding = [](int bits) {
    return std::make_pair(-static_cast<double>(1 << (bits - 1)),
                          static_cast<double>((1 << (bits - 1)) - 1));
  };
  const auto [lo_min, lo_max] = rounding(bits_low < 16 ? bits_low : 8);
  const auto [hi_min, hi_max] = rounding(bits_high < 16 ? bits_high : 8);

  at::Tensor Q = at::zeros({N, K}, W.options());    // q values (float), 0 on unquantized parts
  at::Tensor D = at::empty({N, K}, W.options());    // dequantized columns
  for (int64_t i1 = 0; i1 < K; i1 += blocksize) {
    const int64_t count = std::min(blocksize, K - i1);
    const int64_t i2 = i1 + count;
    at::Tensor W1 = W.narrow(1, i1, count).clone();           // [N, count]
    at::Tensor Err1 = at::empty({N, count}, W.options());     // [N, count]
    at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);  // [count, count]
    for (int64_t i = 0; i < count; ++i) {
      const int64_t k = i1 + i;
      const bool high = mask[static_cast<size_t>(k)];
      const int bits = high ? bits_high : bits_low;
      at::Tensor wcol = W1.select(1, i);  // [N]
      at::Tensor dcol = D.select(1, k);
      if (bits < 16) {
        const at::Tensor& s = high ? s_high : s_low;
        at::Tensor q = at::clamp(at::round(wcol.div(s)), high ? hi_min : lo_min,
                                 high ? hi_max : lo_max)
                           .add_(0.0);  // -0.0 -> +0.0, as float(int8 q) in the packed runtime
        Q.select(1, k).copy_(q);
        dcol.copy_(q.mul(s));
      } else {
        dcol.copy_(wcol);
      }
      // err = (w - ŵ) / U[k, k]; propagate to the rest of the block: W1[:, i:] -= err ⊗ U[k, k:].
      at::Tensor err = (wcol - dcol).div_(Hinv1.select(0, i).select(0, i));
      W1.narrow(1, i, count - i).addr_(err, Hinv1.select(0, i).narrow(0, i, count - i), 1.0, -1.0);
      Err1.select(1, i).copy_(err);
    }
    // Lazy batch update of all later columns: W[:, i2:] -= Err1 · U[i1:i2, i2:].
    if (i2 < K) {
      W.narrow(1, i2, K - i2).addmm_(Err1, Hinv.narrow(0, i1, count).narrow(1, i2, K - i2), 1.0,
                                     -1.0);
    }
  }
  out.dequant = D;
  out.q = Q.to(at::kChar);
  return out;
}

}  // namespace resq
