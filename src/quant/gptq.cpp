// GPTQ weight quantization (Frantar et al., ICLR 2023), groupsize -1, no act-order, with a per-column
// bit width (ResQ mixed 4/8-bit along K) in a single pass: the host path (LAPACK + raw loops), the
// shared checks and damping schedule (gptq_parts.h), and the dispatch to the device path
// (gptq_torch.cpp). See quantizers.h for the contract.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "resq/common/env.h"
#include "resq/common/error.h"
#include "resq/linalg/lapack.h"
#include "resq/quant/quantizers.h"
#include "gptq_parts.h"

namespace resq {
namespace {

// Upper Cholesky factor U of (H + damp * I)^-1 (Hinv = Uᵀ U), float32 [K, K] with zeros below the
// diagonal, or an undefined tensor when the factorization fails or U is not finite.
// `a` [K, K] float64 row-major holds J H J (J the order-reversing permutation; H symmetric) in its
// strictly lower triangle at least; diag[k] is H[k, k]; dead columns (dead[k]) get H[k, k] := 1.
// Computed in float64 in that ONE buffer, without forming Hinv: with J H J = L Lᵀ (lower Cholesky),
// H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J) and J L⁻¹ J is upper triangular with a positive diagonal, so it IS the
// upper Cholesky factor of H⁻¹ (uniqueness). That is potrf + trtri (2/3 K³ flops) instead of
// potrf + potri + potrf (4/3 K³).
// A symmetric row-major matrix is its own column-major transpose; LAPACK runs column-major on the
// row-major buffer, so its lower factor L sits in the row-major upper triangle as Lᵀ, and LAPACK
// never writes the row-major strictly lower triangle: a retry with more damping restores the upper
// triangle from it (J H J is symmetric) and the diagonal from diag.
at::Tensor inverse_cholesky_upper(double* a, int64_t K, const std::vector<double>& diag, const std::vector<bool>& dead,
                                  double damp, bool restore_upper) {
  if (restore_upper) {
    at::parallel_for(0, K, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = r + 1; c < K; ++c) a[r * K + c] = a[c * K + r];
    });
  }
  for (int64_t k = 0; k < K; ++k) {
    const int64_t r = K - 1 - k;
    a[r * K + r] = (dead[static_cast<size_t>(k)] ? 1.0 : diag[static_cast<size_t>(k)]) + damp;
  }
  const lapack::Int n = static_cast<lapack::Int>(K);
  if (lapack::dpotrf('L', n, a, n) != 0) return at::Tensor();
  if (lapack::dtrtri('L', 'N', n, a, n) != 0) return at::Tensor();
  // Column-major lower M = L⁻¹ is stored row-major as Mᵀ: M[i][j] = a[j * K + i] (i >= j), and
  // U[r][c] = M[K-1-r][K-1-c] for c >= r.
  at::Tensor U = at::empty({K, K}, at::TensorOptions().dtype(at::kFloat));
  float* u = U.data_ptr<float>();
  std::atomic<bool> finite{true};
  at::parallel_for(0, K, 64, [&](int64_t r0, int64_t r1) {
    bool ok = true;
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < r; ++c) u[r * K + c] = 0.0f;
      const int64_t i = K - 1 - r;
      for (int64_t c = r; c < K; ++c) {
        const double v = a[(K - 1 - c) * K + i];
        ok = ok && std::isfinite(v);
        u[r * K + c] = static_cast<float>(v);
      }
    }
    if (!ok) finite = false;
  });
  return finite ? U : at::Tensor();
}

// J H J of H [K, K] (any float dtype): into the float64 buffer `work` when given, else in place when
// H itself is a contiguous float64 CPU tensor and may be overwritten (flat reversal of a row-major
// matrix is exactly J H J), else into a new float64 copy.
at::Tensor reversed_hessian(const at::Tensor& H, bool overwrite) {
  const int64_t K = H.size(0);
  if (overwrite && H.scalar_type() == at::kDouble && H.device().is_cpu() && H.is_contiguous()) {
    double* h = H.data_ptr<double>();
    const int64_t total = K * K;
    at::parallel_for(0, total / 2, 1 << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) std::swap(h[i], h[total - 1 - i]);
    });
    return H;
  }
  const at::Tensor Hd = H.to(at::kCPU, at::kDouble).contiguous();
  const double* h = Hd.data_ptr<double>();
  at::Tensor A = at::empty({K, K}, at::TensorOptions().dtype(at::kDouble));
  double* a = A.data_ptr<double>();
  at::parallel_for(0, K, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const double* src = h + (K - 1 - r) * K;
      double* dst = a + r * K;
      for (int64_t c = 0; c < K; ++c) dst[c] = src[K - 1 - c];
    }
  });
  return A;
}

}  // namespace

namespace detail {

std::vector<bool> gptq_check_arguments(const at::Tensor& w, const at::Tensor& hessian, const at::Tensor& high_mask,
                                       double percdamp, int64_t blocksize) {
  const char* fn = "gptq_quantize_weight";
  if (!w.defined() || w.dim() != 2 || !at::isFloatingType(w.scalar_type())) {
    throw ShapeError(std::string(fn) + ": weight must be a floating-point 2-D [N, K] tensor");
  }
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
  return high_mask_to_vector(high_mask, K, fn);
}

QuantizedWeight gptq_result_start(const at::Tensor& w, const at::Tensor& high_mask, int bits_low, int bits_high,
                                  double clip_ratio, bool mse_clip) {
  QuantizedWeight out;
  out.bits_low = bits_low;
  out.bits_high = bits_high;
  std::tie(out.scale_low, out.scale_high) = weight_scales(w, high_mask, bits_low, bits_high, clip_ratio, mse_clip);
  out.high_mask = high_mask.to(at::kCPU).clone();
  return out;
}

at::Tensor gptq_factor_with_retries(int64_t K, double percdamp,
                                    const std::function<at::Tensor(double frac, int attempt)>& try_factor,
                                    double* damp_fraction) {
  double frac = percdamp;
  for (int attempt = 0; attempt <= 6; ++attempt) {
    at::Tensor U = try_factor(frac, attempt);
    if (U.defined()) {
      *damp_fraction = frac;
      return U;
    }
    frac = frac > 0.0 ? frac * 10.0 : 0.01;
  }
  throw Error("gptq_quantize_weight: Cholesky factorization of the damped Hessian [" + std::to_string(K) + ", " +
              std::to_string(K) + "] failed even with dampening " + std::to_string(frac) +
              " * mean(diag H); the Hessian is not positive semi-definite or not finite");
}

}  // namespace detail

namespace {

// RESQ_GPTQ_TORCH=1 runs CPU tensors through the torch path too (tests, A/B checks); 0 or unset: the
// host path. Anything else is a UsageError naming the variable.
bool torch_path_forced() { return env_switch("RESQ_GPTQ_TORCH", false); }

}  // namespace

QuantizedWeight gptq_quantize_weight(const at::Tensor& w, const at::Tensor& hessian,
                                     const at::Tensor& high_mask, int bits_low, int bits_high,
                                     double percdamp, int64_t blocksize, double clip_ratio,
                                     bool mse_clip, bool hessian_is_workspace) {
  // Tensors off the CPU stay on their device: the torch path (gptq_torch.cpp).
  if ((w.defined() && !w.device().is_cpu()) || torch_path_forced()) {
    return detail::gptq_quantize_weight_torch(w, hessian, high_mask, bits_low, bits_high, percdamp, blocksize,
                                              clip_ratio, mse_clip, hessian_is_workspace);
  }
  const std::vector<bool> mask = detail::gptq_check_arguments(w, hessian, high_mask, percdamp, blocksize);
  const int64_t N = w.size(0);
  const int64_t K = w.size(1);
  QuantizedWeight out = detail::gptq_result_start(w, high_mask, bits_low, bits_high, clip_ratio, mse_clip);

  // The host path: LAPACK, raw loops + one sgemm per block (w is on the CPU unless a caller moved it
  // here; results go back to w's device).
  const at::Device device = w.device();
  at::Tensor W = w.to(at::kCPU, at::kFloat).clone().contiguous();  // [N, K] float32, updated in place

  // Dead inputs never seen by calibration: the weight is irrelevant there, so zero it (and H[k, k] := 1
  // inside inverse_cholesky_upper).
  std::vector<bool> dead(static_cast<size_t>(K));
  std::vector<double> diag_h(static_cast<size_t>(K));
  double diag_sum = 0.0;
  {
    at::Tensor diag = hessian.diagonal().to(at::kCPU, at::kDouble).contiguous();
    const double* dp = diag.data_ptr<double>();
    std::copy(dp, dp + K, diag_h.begin());
    float* wp = W.data_ptr<float>();
    for (int64_t k = 0; k < K; ++k) {
      dead[static_cast<size_t>(k)] = dp[k] == 0.0;
      diag_sum += dead[static_cast<size_t>(k)] ? 1.0 : dp[k];
      if (dead[static_cast<size_t>(k)]) {
        for (int64_t n = 0; n < N; ++n) wp[n * K + k] = 0.0f;
      }
    }
  }

  if (N == 0 || K == 0) {
    out.dequant = W.to(device);
    out.q = at::zeros({N, K}, W.options().dtype(at::kChar)).to(device);
    return out;
  }

  const double mean_diag = diag_sum / static_cast<double>(K);
  at::Tensor work = reversed_hessian(hessian, hessian_is_workspace);  // [K, K] float64 J H J
  // [K, K] float32, upper triangular
  const at::Tensor Hinv = detail::gptq_factor_with_retries(
      K, percdamp,
      [&](double frac, int attempt) {
        return inverse_cholesky_upper(work.data_ptr<double>(), K, diag_h, dead, frac * mean_diag, attempt > 0);
      },
      &out.damp_fraction);
  work = at::Tensor();

  const auto [lo_min, lo_max] = detail::gptq_grid(bits_low);
  const auto [hi_min, hi_max] = detail::gptq_grid(bits_high);
  const at::Tensor sl = out.scale_low.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor sh = out.scale_high.to(at::kCPU, at::kFloat).contiguous();
  const float* slp = sl.data_ptr<float>();
  const float* shp = sh.data_ptr<float>();

  at::Tensor Q = at::zeros({N, K}, W.options());  // q values (float), 0 on unquantized parts
  at::Tensor D = at::empty({N, K}, W.options());  // dequantized columns
  float* wp = W.data_ptr<float>();
  float* qp = Q.data_ptr<float>();
  float* dp = D.data_ptr<float>();
  const float* hp = Hinv.data_ptr<float>();
  const int64_t bs = std::min(blocksize, K);
  at::Tensor Err1_buf = at::empty({N, bs}, W.options());
  for (int64_t i1 = 0; i1 < K; i1 += blocksize) {
    const int64_t count = std::min(blocksize, K - i1);
    const int64_t i2 = i1 + count;
    at::Tensor Err1 = Err1_buf.narrow(1, 0, count);  // [N, count] (row stride bs)
    float* ep = Err1_buf.data_ptr<float>();
    // The block's column loop, row by row: within a block every row evolves independently (the
    // update W1[:, i:] -= err ⊗ U[k, k:] is a rank-1 update whose row n only involves row n), so
    // each row is one sequential pass over the block's columns with the same float32 arithmetic as
    // the reference column loop (quantize with the row's scale, err = (w - ŵ) / U[k, k],
    // w[j] -= err * U[k, j] for j > k).
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
      std::vector<float> row(static_cast<size_t>(count));
      for (int64_t n = n0; n < n1; ++n) {
        float* wr = wp + n * K + i1;
        std::copy(wr, wr + count, row.begin());
        for (int64_t i = 0; i < count; ++i) {
          const int64_t k = i1 + i;
          const bool high = mask[static_cast<size_t>(k)];
          const int bits = high ? bits_high : bits_low;
          const float wv = row[static_cast<size_t>(i)];
          float dq = wv;
          if (bits < 16) {
            const float s = high ? shp[n] : slp[n];
            float q = std::nearbyint(wv / s);  // round half to even (default rounding mode), as at::round
            q = std::min(std::max(q, high ? hi_min : lo_min), high ? hi_max : lo_max) + 0.0f;  // -0 -> +0
            qp[n * K + k] = q;
            dq = q * s;
          }
          dp[n * K + k] = dq;
          const float* hrow = hp + k * K;  // U[k, :]
          const float err = (wv - dq) / hrow[k];
          for (int64_t j = i + 1; j < count; ++j) row[static_cast<size_t>(j)] -= err * hrow[i1 + j];
          ep[n * bs + i] = err;
        }
      }
    });
    // Lazy batch update of all later columns: W[:, i2:] -= Err1 · U[i1:i2, i2:] (one sgemm).
    if (i2 < K) {
      W.narrow(1, i2, K - i2).addmm_(Err1, Hinv.narrow(0, i1, count).narrow(1, i2, K - i2), 1.0, -1.0);
    }
  }
  out.dequant = D.to(device);
  out.q = Q.to(at::kChar).to(device);
  return out;
}

}  // namespace resq
