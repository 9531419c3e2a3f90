// What both GPTQ paths share, private to src/quant: the argument checks, the damping retry schedule
// and its failure message (owner: gptq.cpp; gptq.cpp runs on the host, gptq_torch.cpp on w's device).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "resq/quant/quantizers.h"

namespace resq::detail {

// Checks gptq_quantize_weight's arguments (w [N, K] float, hessian [K, K] float, high_mask [K] bool,
// percdamp >= 0, blocksize >= 1; bits and clip are checked by weight_scales) and returns the mask
// as a host vector [K]. Throws ShapeError / ConfigError naming gptq_quantize_weight.
std::vector<bool> gptq_check_arguments(const at::Tensor& w, const at::Tensor& hessian, const at::Tensor& high_mask,
                                       double percdamp, int64_t blocksize);

// The rounding grid {qmin, qmax} = {-2^(b-1), 2^(b-1) - 1} of a part's bits (bits >= 16: the part is
// not rounded, the 8-bit grid returned is unused).
inline std::pair<float, float> gptq_grid(int bits) {
  const int b = bits < 16 ? bits : 8;
  return {-static_cast<float>(1 << (b - 1)), static_cast<float>((1 << (b - 1)) - 1)};
}

// The part of a GPTQ result fixed before the column loop: bits, the scales of weight_scales() on the
// ORIGINAL w (GPTQ's find_params before the loop, groupsize -1; float32 [N] on w's device) and a CPU
// copy of the mask. dequant, q and damp_fraction are the caller's to fill.
QuantizedWeight gptq_result_start(const at::Tensor& w, const at::Tensor& high_mask, int bits_low, int bits_high,
                                  double clip_ratio, bool mse_clip);

// The damping schedule: try_factor(frac, attempt) for attempt 0..6 with frac = percdamp first, then
// ×10 per retry (0.01 when it was 0), until it returns a defined tensor (the factor; undefined = the
// Cholesky failed or was not finite). Returns that tensor and sets *damp_fraction to the frac used;
// throws resq::Error naming the [K, K] Hessian when every attempt fails.
at::Tensor gptq_factor_with_retries(int64_t K, double percdamp,
                                    const std::function<at::Tensor(double frac, int attempt)>& try_factor,
                                    double* damp_fraction);

}  // namespace resq::detail
