// GPTQ on w's device with torch ops only (the path for CUDA tensors; RESQ_GPTQ_TORCH=1 on CPU ones):
// the contract of gptq_quantize_weight (quantizers.h), device-generic, no host sync in the loops.
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "gptq_parts.h"
#include "resq/common/error.h"
#include "resq/quant/quantizers.h"

namespace resq {
namespace {

// Upper Cholesky factor U of (H' + damp I)^-1 (Hinv = Uᵀ U) as float32 [K, K] on hr's device, zeros
// below the diagonal, or an undefined tensor when the factorization fails or U is not finite.
// hr [K, K] float64 is J H J (J the order-reversing permutation), diag_r [K] its diagonal with dead
// entries already 1 (H'), damp a 0-dim float64 tensor (frac * mean diag, on the device). The same
// algebra as the host path: J H' J + damp I = L Lᵀ, and J L⁻¹ J is upper triangular with a positive
// diagonal and (J L⁻¹ J)ᵀ (J L⁻¹ J) = H'⁻¹, so it IS U (uniqueness): one Cholesky and one
// triangular solve, K³ flops less than cholesky → cholesky_inverse → cholesky(upper).
// `work` [K, K] float64 on the device is overwritten (the damped matrix, then the identity). Peak:
// hr, work, L and L⁻¹ (4 [K, K] float64). Two host syncs per call (info, finiteness): outside the
// column loop.
at::Tensor inverse_cholesky_upper(const at::Tensor& hr, const at::Tensor& diag_r, const at::Tensor& damp,
                                  at::Tensor& work) {
  work.copy_(hr);
  work.diagonal().copy_(diag_r + damp);
  at::Tensor L, info;
  std::tie(L, info) = at::linalg_cholesky_ex(work, /*upper=*/false, /*check_errors=*/false);
  if (info.item<int64_t>() != 0) return at::Tensor();
  // L⁻¹ = solve(L, I); its strictly upper part is exactly 0 (forward substitution on I), triu_ makes
  // sure whatever the backend.
  work.zero_().diagonal().fill_(1.0);
  at::Tensor M = at::linalg_solve_triangular(L, work, /*upper=*/false);
  L = at::Tensor();
  at::Tensor U = M.flip({0, 1}).triu_();  // J L⁻¹ J
  M = at::Tensor();
  if (!at::isfinite(U).all().item<bool>()) return at::Tensor();
  return U.to(at::kFloat);
}

}  // namespace

namespace detail {

QuantizedWeight gptq_quantize_weight_torch(const at::Tensor& w, const at::Tensor& hessian,
                                           const at::Tensor& high_mask, int bits_low, int bits_high,
                                           double percdamp, int64_t blocksize, double clip_ratio,
                                           bool mse_clip, bool hessian_is_workspace) {
  const std::vector<bool> mask = gptq_check_arguments(w, hessian, high_mask, percdamp, blocksize);
  const int64_t N = w.size(0);
  const int64_t K = w.size(1);
  QuantizedWeight out = gptq_result_start(w, high_mask, bits_low, bits_high, clip_ratio, mse_clip);

  const at::Device device = w.device();
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  // Wt [K, N] float32: W transposed, so that column k of W (what the column loop reads and updates)
  // is the contiguous row Wt[k]. Always a fresh buffer (never aliases w, whatever w's strides).
  at::Tensor Wt = at::empty({K, N}, f32);
  Wt.copy_(w.t());

  // Dead inputs never seen by calibration: the weight is irrelevant there, so zero it, and H[k, k] := 1.
  const at::Tensor Hd = hessian.to(device, at::kDouble);  // [K, K], aliases hessian when already so
  at::Tensor diag = Hd.diagonal();                        // [K]
  const at::Tensor dead = diag.eq(0.0);                   // [K] bool
  diag = at::where(dead, at::ones_like(diag), diag);
  Wt.masked_fill_(dead.unsqueeze(1), 0.0);

  if (N == 0 || K == 0) {
    out.dequant = at::empty({N, K}, f32).copy_(Wt.t());
    out.q = at::zeros({N, K}, f32.dtype(at::kChar));
    return out;
  }

  // U [K, K] float32 upper triangular on the device, with the host path's damping schedule.
  at::Tensor U;
  {
    const at::Tensor mean_diag = diag.mean();  // 0-dim float64 on the device
    const at::Tensor hr = Hd.flip({0, 1});     // J H J [K, K] float64
    const at::Tensor diag_r = diag.flip(0);
    // The Hessian's own buffer as the damped matrix when the caller gave it up (saves [K, K] float64).
    const bool own = hessian_is_workspace && hessian.device() == device && hessian.scalar_type() == at::kDouble &&
                     hessian.is_contiguous();
    at::Tensor work = own ? hessian : at::empty_like(hr);
    U = gptq_factor_with_retries(
        K, percdamp,
        [&](double frac, int) { return inverse_cholesky_upper(hr, diag_r, mean_diag * frac, work); },
        &out.damp_fraction);
  }

  const auto [lo_min, lo_max] = gptq_grid(bits_low);
  const auto [hi_min, hi_max] = gptq_grid(bits_high);
  const at::Tensor sl = out.scale_low.to(f32);   // [N]
  const at::Tensor sh = out.scale_high.to(f32);  // [N]

  at::Tensor Qt = at::zeros({K, N}, f32);  // codes (float) per column = row, 0 on unquantized parts
  const int64_t bs = std::min(blocksize, K);
  at::Tensor Err_buf = at::empty({bs, N}, f32);  // the block's scaled errors, one row per column
  // The column loop. Which part column k belongs to is known on the host (mask), so the branch is
  // taken here and every op below is a device launch with no sync. Per quantized column 6 kernels
  // (5 on a block's last column): q = w / s (div_out), round_, clamp_, e = w - q s (addcmul_out),
  // e /= U[k, k] (div_), then the in-block update of the block's later columns (addr_). A column of
  // an unquantized part (bits >= 16) takes none: its error is 0, nothing changes, and its row of Wt
  // is its dequant value. Per block: zero_ + one addmm_ (the lazy update).
  // The arithmetic is the host path's in fp32 (same ops, same order); differences come only from
  // FMA contraction (addcmul/addr may fuse a product and a sum) and the gemm's summation order.
  for (int64_t i1 = 0; i1 < K; i1 += blocksize) {
    const int64_t count = std::min(blocksize, K - i1);
    const int64_t i2 = i1 + count;
    at::Tensor Err1 = Err_buf.narrow(0, 0, count);  // [count, N]
    Err1.zero_();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t k = i1 + i;
      const bool high = mask[static_cast<size_t>(k)];
      if (!is_quantized_bits(high ? bits_high : bits_low)) continue;
      const at::Tensor& s = high ? sh : sl;
      at::Tensor wk = Wt.select(0, k);     // [N] current (updated) column k of W
      at::Tensor qk = Qt.select(0, k);     // [N]
      at::Tensor ek = Err1.select(0, i);   // [N]
      at::div_out(qk, wk, s);
      qk.round_();  // half to even, as the host path's nearbyint
      qk.clamp_(high ? hi_min : lo_min, high ? hi_max : lo_max);
      at::addcmul_out(ek, wk, qk, s, -1.0);  // w - ŵ (a -0.0 code is harmless here)
      ek.div_(U.select(0, k).select(0, k));  // 0-dim device tensor: no sync
      if (i + 1 < count) {
        // W[:, k+1:i2] -= err ⊗ U[k, k+1:i2]  (rows k+1..i2-1 of Wt)
        Wt.narrow(0, k + 1, count - i - 1).addr_(U.select(0, k).narrow(0, k + 1, count - i - 1), ek, 1.0, -1.0);
      }
    }
    // Lazy batch update of all later columns, W[:, i2:] -= Err [N, count] · U[i1:i2, i2:], transposed:
    // Wt[i2:] -= U[i1:i2, i2:]ᵀ · Err1 (one gemm).
    if (i2 < K) {
      Wt.narrow(0, i2, K - i2).addmm_(U.narrow(0, i1, count).narrow(1, i2, K - i2).t(), Err1, 1.0, -1.0);
    }
  }

  // q [N, K] int8; dequant [N, K] = s · q on quantized columns (+0.0 first: rounding a small negative
  // value gives -0.0, the packed runtime's float(int8 0) is +0.0), the final Wt row elsewhere.
  out.q = at::empty({N, K}, f32.dtype(at::kChar)).copy_(Qt.t());
  const at::Tensor high_k = high_mask.to(device, at::kBool).unsqueeze(1);  // [K, 1]
  at::Tensor Dt = Qt.add_(0.0).mul_(at::where(high_k, sh.unsqueeze(0), sl.unsqueeze(0)));  // [K, N]
  if (!is_quantized_bits(bits_low) || !is_quantized_bits(bits_high)) {
    const at::Tensor quantized = is_quantized_bits(bits_low) ? high_k.logical_not() : high_k;
    Dt = is_quantized_bits(bits_low) || is_quantized_bits(bits_high) ? at::where(quantized, Dt, Wt) : Wt;
  }
  out.dequant = at::empty({N, K}, f32).copy_(Dt.t());
  return out;
}

}  // namespace detail
}  // namespace resq
