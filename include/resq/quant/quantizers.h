// ResQ weight quantizers: mixed 4/8-bit weight quantization (RTN and GPTQ, one pass over K with a
// per-column bit width). Number conventions are exactly those of resq/format/packed.h, so packing the
// result and running the integer kernels reproduces these dequantized values (up to fp32 GEMM
// rounding). The bit checks and high masks are resq/transforms/masks.h; the activation and KV-cache
// fake quantizers resq/transforms/fake_quant.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "resq/format/packed_linear.h"
#include "resq/transforms/masks.h"

namespace resq {

// ------------------------------------------------------------------ weights

// Result of quantizing one linear weight W [N, K]. Column k belongs to the high part when
// high_mask[k] is true (bits_high), to the low part otherwise (bits_low).
//   dequant[n, k] = scale_part(k)[n] * float(q[n, k])     (fp32 product, as the packed runtime computes)
// A part with bits >= 16 is not quantized: its dequant columns hold the (GPTQ-updated) float weights,
// its q columns are 0 and its scale is 1. A part with no columns has scale 1.
struct QuantizedWeight {
  at::Tensor dequant;     // [N, K] float32
  at::Tensor q;           // [N, K] int8, in [-2^(b-1), 2^(b-1) - 1] of the column's part
  at::Tensor scale_low;   // [N] float32
  at::Tensor scale_high;  // [N] float32
  at::Tensor high_mask;   // [K] bool (CPU)
  int bits_low = 4;
  int bits_high = 8;
  double damp_fraction = 0.0;  // GPTQ only: the dampening actually used (after any retries)
};

// THE conversion of a quantizer's result to the packed linear the checkpoint stores and the runtime
// runs (format::PackedLinear, row sums included): qw.q [N, K] (any device, original column order),
// its scales and bits, and bias ([N] float, or undefined for none) through format::pack_linear with
// `column_order` [K] (packed column j = column column_order[j]: the site's order, low columns of
// qw.high_mask first, e.g. SiteSpec::packed_column_order()). Errors are prefixed by `what`. Throws
// ShapeError when the order does not match qw's shapes and mask or a code is out of range,
// UsageError when qw's bit widths do not fit the 4/8-bit containers.
format::PackedLinear pack_quantized_weight(const QuantizedWeight& qw, const std::vector<int32_t>& column_order,
                                           const at::Tensor& bias, const std::string& what);

// Symmetric per-output-channel scales of each part, computed from w [N, K] (any float dtype, on any
// device) in float32 exactly as format/quantize_weights_rtn_reference does:
//   scale = (max_{k in part} |w[n, k]| * c) / (2^(b-1) - 1),  scale = 1 for an all-zero/empty part.
// c = clip_ratio when mse_clip is false. When mse_clip is true, c is searched per row and part over
// the 21 candidates c_i = 1 - 0.025 i (i = 0..20, i.e. [0.5, 1] in 20 steps) minimizing
// sum_k |w - ŵ|^2.4 over the part (GPTQ/QuaRot find_params(mse=True) with norm 2.4); clip_ratio is
// then ignored. Returns {scale_low [N], scale_high [N]} float32 on w's device.
std::pair<at::Tensor, at::Tensor> weight_scales(const at::Tensor& w, const at::Tensor& high_mask,
                                                int bits_low, int bits_high, double clip_ratio,
                                                bool mse_clip);

namespace detail {
// weight_scales as whole-tensor torch ops (the path for non-CPU tensors; CPU tensors take a per-row
// loop). Same fp32 formula; the MSE search may break near-ties differently (float vs double sums).
std::pair<at::Tensor, at::Tensor> weight_scales_torch(const at::Tensor& w,
                                                      const at::Tensor& high_mask, int bits_low,
                                                      int bits_high, double clip_ratio,
                                                      bool mse_clip);

// gptq_quantize_weight as torch ops on w's device (Cholesky via at::linalg_cholesky_ex, the column
// loop as per-column vector ops on the transposed weights): the path for non-CPU tensors, and for
// CPU tensors when RESQ_GPTQ_TORCH=1. Same contract, checks, damping retries and messages; results
// match the host path up to fp32 summation order / FMA contraction (a rare code flips by one step
// near a rounding tie). hessian_is_workspace: a contiguous float64 Hessian on w's device serves as
// the damped matrix's buffer (garbage afterwards); otherwise the Hessian is left intact.
QuantizedWeight gptq_quantize_weight_torch(const at::Tensor& w, const at::Tensor& hessian,
                                           const at::Tensor& high_mask, int bits_low, int bits_high,
                                           double percdamp, int64_t blocksize, double clip_ratio,
                                           bool mse_clip, bool hessian_is_workspace = false);
}  // namespace detail

// Round-to-nearest: q = clamp(round_half_even(w / scale), -2^(b-1), 2^(b-1) - 1) with the scales of
// weight_scales. w [N, K] float (float32/float64/bf16; computed in float32 on w's device),
// high_mask [K] bool. Throws ShapeError on bad shapes, ConfigError on bad bits / clip_ratio.
QuantizedWeight rtn_quantize_weight(const at::Tensor& w, const at::Tensor& high_mask, int bits_low,
                                    int bits_high, double clip_ratio, bool mse_clip);

// GPTQ (Frantar et al. 2023) with groupsize -1 and no act-order, mixed precision along K in ONE pass:
// column k is rounded on the grid of its part. w [N, K]; hessian [K, K] symmetric PSD, any positive
// multiple of X^T X (e.g. 2/n sum x^T x or the unnormalized X^T X: only relative damping is used).
//   - scales: weight_scales() of the ORIGINAL w, computed once before the loop;
//   - dead columns (H[k, k] == 0): w[:, k] = 0 and H[k, k] = 1;
//   - H += percdamp * mean(diag H) * I; U = upper Cholesky factor of H^-1; on a failed Cholesky the
//     damping is multiplied by 10 and retried (up to 6 times), then resq::Error is thrown;
//   - lazy batch updates in blocks of `blocksize` columns.
// Precision: H, its inverse and Cholesky factor in float64; the column loop (weights, errors and
// updates) in float32 like the reference implementation, on w's device: CPU tensors take the host
// path (LAPACK + raw loops), others detail::gptq_quantize_weight_torch (RESQ_GPTQ_TORCH=1 forces it
// for CPU tensors too; 0 or unset: the default; anything else throws UsageError). Rounding itself is the fp32
// formula of rtn_quantize_weight, so dequant == scale * q exactly.
// hessian_is_workspace: when hessian is a contiguous float64 CPU tensor, its buffer becomes the
// factorization's workspace and holds garbage afterwards (the caller's last use of it): saves a
// [K, K] float64 copy, 512 MiB for an 8192-wide down_proj. Results are identical either way (the
// torch path: see there).
// Throws ShapeError on bad shapes, ConfigError on bad bits / clip / percdamp / blocksize.
QuantizedWeight gptq_quantize_weight(const at::Tensor& w, const at::Tensor& hessian,
                                     const at::Tensor& high_mask, int bits_low, int bits_high,
                                     double percdamp, int64_t blocksize, double clip_ratio,
                                     bool mse_clip, bool hessian_is_workspace = false);

}  // namespace resq
